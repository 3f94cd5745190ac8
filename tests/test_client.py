"""The Python client (``app.client``) and ``galaxypaint predict/paint --server`` against a REAL uvicorn on
127.0.0.1 serving a small trained registry with the joint sampler: predictions equal to the local
``GalaxyModel`` to 1e-12 (Arrow on the wire), paint jobs equal to local painting, readable errors,
token discovery, and the example script ``examples/paint_through_the_service.py`` run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("lightgbm")

from app.client import ARROW_STREAM, Client, GalaxypaintError, find_token  # noqa: E402
from app.core.catalogs import read_table, write_table  # noqa: E402
from app.core.model import GalaxyModel, Mode  # noqa: E402
from app.core.registry import Registry  # noqa: E402
from app.core.schema import FEATURE_NAMES, TARGET_NAMES  # noqa: E402
from tests.api.conftest import TOKEN, start_server, stop_server  # noqa: E402
from tests.conftest import REPO, registry_copy, run_cli  # noqa: E402

TOKEN_VARS = ("GALAXYPAINT_API_TOKEN", "GALAXYPAINT_ADMIN_TOKEN", "GALAXYPAINT_DATA_DIR")
N_PAINT = 1500


@pytest.fixture(scope="module")
def live(tmp_path_factory, small_sampler_run):
    """(url, models directory, the catalog, a halo file): a server (max_batch_halos 1000) on a private copy
    of the session's sampler registry."""
    root = tmp_path_factory.mktemp("client")
    models = registry_copy(small_sampler_run, root / "models")
    (root / "data").mkdir()
    df = small_sampler_run[1]
    halos = write_table(df.iloc[:N_PAINT].reset_index(drop=True), root / "halos.parquet")
    proc, url = start_server(models, root / "data")
    try:
        yield url, models, df, Path(halos)
    finally:
        stop_server(proc)


@pytest.fixture()
def no_token_env(monkeypatch, tmp_path):
    """No token in the environment, and a data directory without a token file."""
    for var in TOKEN_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GALAXYPAINT_DATA_DIR", str(tmp_path / "empty-data"))


def _local(models: Path, mode: Mode = Mode()) -> GalaxyModel:
    return GalaxyModel.from_registry(Registry(models, create=False), mode=mode)


def _content_types(seen: list[str]):
    def hook(request):
        if request.url.path == "/v1/predict":
            seen.append(request.headers.get("content-type", ""))
    return {"request": [hook]}


def test_predict_mean_and_sample_equal_the_local_model_over_arrow_in_batches(live):
    url, models, df, _ = live
    frame = df.iloc[:2500].reset_index(drop=True)  # above the server's max_batch_halos (1000)
    x = frame[list(FEATURE_NAMES)].to_numpy(np.float64)
    seen: list[str] = []
    with Client(url, token=TOKEN, event_hooks=_content_types(seen)) as gp:
        out = gp.predict(frame)
        assert gp.batch_halos == 1000  # learned from the server's 413
        # the input untouched, one <target>_pred column per target
        assert list(out.columns) == list(frame.columns) + [f"{t}_pred" for t in TARGET_NAMES]
        pd.testing.assert_frame_equal(out[frame.columns], frame)
        local = _local(models).predict(x)
        for t in TARGET_NAMES:
            np.testing.assert_allclose(out[f"{t}_pred"].to_numpy(), local[t], rtol=0, atol=1e-12, err_msg=t)

        ids = np.arange(len(frame), dtype=np.int64) * 7919 - 10**9
        sampled = gp.predict(frame, mode="sample", seed=11, ids=ids, targets=["smass", "color"])
        local = _local(models, Mode("sample", 11)).predict(x, Mode("sample", 11), ids)
        assert [c for c in sampled.columns if c.endswith("_pred")] == ["smass_pred", "color_pred"]
        for t in ("smass", "color"):
            np.testing.assert_allclose(sampled[f"{t}_pred"].to_numpy(), local[t], rtol=0, atol=1e-12, err_msg=t)

        # default ids: the frame's ID column, as galaxypaint predict does
        by_id = gp.predict(frame.iloc[:200], mode="sample", seed=11)
        local = _local(models, Mode("sample", 11)).predict(x[:200], Mode("sample", 11),
                                                           frame["ID"].to_numpy()[:200].astype(np.int64))
        np.testing.assert_allclose(by_id["sSFR_pred"].to_numpy(), local["sSFR"], rtol=0, atol=1e-12)

        q = gp.predict(frame.iloc[:50], mode="quantiles", quantiles=[16, 84], targets="smass")
        assert [c for c in q.columns if c not in frame.columns] == ["smass_q16", "smass_q84"]
    assert seen and set(seen) == {ARROW_STREAM}, seen


def test_paint_waits_and_equals_local_painting(live, tmp_path):
    url, models, _, halos = live
    local_out = tmp_path / "local.parquet"
    r = run_cli("paint", "--catalog", str(halos), "--out", str(local_out), "--registry", str(models))
    assert r.returncode == 0, r.stderr
    local = read_table(local_out)
    with Client(url, token=TOKEN, poll_interval=0.1) as gp:
        remote = gp.paint(halos, progress=False)
        assert list(remote.columns) == list(local.columns)
        for c in [c for c in local.columns if c.endswith("_pred")]:
            np.testing.assert_allclose(remote[c].to_numpy(), local[c].to_numpy(), rtol=0, atol=1e-12, err_msg=c)

        # a DataFrame is uploaded as Parquet; out= receives the file; wait=False hands back the job
        frame = read_table(halos).iloc[:300]
        saved = gp.paint(frame, out=tmp_path / "remote.csv", progress=False)
        assert saved == tmp_path / "remote.csv" and len(read_table(saved)) == 300
        # the frame's metadata goes with it: the painted file records the catalog's box for P(k)
        assert gp.paint(frame, out=tmp_path / "remote.parquet", progress=False) == tmp_path / "remote.parquet"
        assert read_table(tmp_path / "remote.parquet").attrs["galaxypaint"]["box"] == frame.attrs["galaxypaint"]["box"]
        job = gp.paint(halos, wait=False, targets=["smass"])
        assert job["id"].startswith("job-") and job["status"] in ("pending", "running", "succeeded")
        done = gp.wait(job, progress=False)
        assert done["status"] == "succeeded" and done["params"]["targets"] == ["smass"]

        # P(k) of that paint job: the result summary, and every part downloaded into out
        result = gp.pk(done, nmesh=16, out=tmp_path / "pk", progress=False)
        assert set(result["files"]) >= {"file", "csv"} and all(p.is_file() for p in result["files"].values())
        with pytest.raises(GalaxypaintError) as err:
            gp.pk("no/such/catalog.parquet", progress=False)
        assert err.value.status == 404 and err.value.field == "path"


def test_errors_are_galaxypaint_errors_naming_the_field(live, no_token_env):
    url, _, df, halos = live
    frame = df.iloc[:20].reset_index(drop=True)
    bad = frame.copy()
    bad.loc[3, "C_h"] = np.nan
    with Client(url, token=TOKEN) as gp:
        with pytest.raises(GalaxypaintError) as err:
            gp.predict(bad)
        assert err.value.status == 422 and err.value.field == "C_h" and "finite" in err.value.message
        with pytest.raises(GalaxypaintError) as err:
            gp.predict(frame.drop(columns=["S_h"]))
        assert err.value.field == "S_h"
        with pytest.raises(GalaxypaintError) as err:
            gp.predict(frame, targets=["mass"])
        assert err.value.status == 422 and err.value.field == "targets"
        with pytest.raises(GalaxypaintError) as err:
            gp.paint(halos, targets="nope", progress=False)
        assert err.value.status == 422 and err.value.field == "targets"
        with pytest.raises(GalaxypaintError) as err:
            gp.promote("smass-raw-stack", 99)
        assert err.value.status == 404 and err.value.field == "version"
    with Client(url, token="wrong-token") as gp:
        with pytest.raises(GalaxypaintError) as err:
            gp.paint(halos, progress=False)
        assert err.value.status == 401 and err.value.field == "authorization"
        assert "bearer token" in str(err.value)
    with Client(url) as gp:  # no token anywhere
        assert gp.token is None
        with pytest.raises(GalaxypaintError) as err:
            gp.promote("smass-raw-stack", 1)
        assert err.value.status == 401
    with pytest.raises(GalaxypaintError) as err:  # nobody listening: no raw httpx traceback either
        Client("http://127.0.0.1:9", timeout=2).models()
    assert err.value.status is None


def test_models_and_promote(live):
    url, _, _, _ = live
    with Client(url, token=TOKEN) as gp:
        names = {m["name"]: m for m in gp.models()}
        assert "smass-raw-stack" in names and "raw-sampler" in names
        moved = gp.promote("smass-raw-stack", 1, "staging")
        assert moved["alias"] == "staging" and moved["version"] == 1
        assert {m["name"]: m for m in gp.models()}["smass-raw-stack"]["aliases"]["staging"] == 1


def test_token_discovery_env_then_token_file(live, no_token_env, monkeypatch, tmp_path):
    url = live[0]
    assert find_token() is None
    data = tmp_path / "server-data"
    data.mkdir()
    (data / ".galaxypaint-token").write_text(TOKEN + "\n")
    monkeypatch.setenv("GALAXYPAINT_DATA_DIR", str(data))
    assert find_token() == TOKEN
    monkeypatch.setenv("GALAXYPAINT_ADMIN_TOKEN", "from-admin-env")
    assert find_token() == "from-admin-env"
    monkeypatch.setenv("GALAXYPAINT_API_TOKEN", TOKEN)
    assert find_token() == TOKEN  # the API token first
    with Client(url) as gp:
        with pytest.raises(GalaxypaintError) as err:
            gp.job("job-000000000000")
        assert err.value.status == 404  # authorized: the job just does not exist
    monkeypatch.setenv("GALAXYPAINT_API_TOKEN", "wrong")
    monkeypatch.delenv("GALAXYPAINT_ADMIN_TOKEN")
    with Client(url) as gp:
        with pytest.raises(GalaxypaintError) as err:
            gp.job("job-000000000000")
        assert err.value.status == 401
    with Client(url, token_file=data / ".galaxypaint-token") as gp:  # an explicit token file wins
        assert gp.token == TOKEN
        with pytest.raises(GalaxypaintError) as err:
            gp.job("job-000000000000")
        assert err.value.status == 404
    with pytest.raises(GalaxypaintError) as err:
        Client(url, token_file=tmp_path / "missing")
    assert err.value.field == "token_file"


def test_cli_predict_and_paint_through_the_server(live, tmp_path):
    url, models, _, halos = live
    local, remote = tmp_path / "local.parquet", tmp_path / "remote.parquet"
    for extra in ((), ("--mode", "sample", "--seed", "5")):
        r = run_cli("predict", "--data", str(halos), "--out", str(local), "--registry", str(models), *extra)
        assert r.returncode == 0, r.stderr
        r = run_cli("predict", "--data", str(halos), "--out", str(remote), "--server", url, "--token", TOKEN, *extra)
        assert r.returncode == 0, r.stderr
        a, b = read_table(local), read_table(remote)
        assert list(a.columns) == list(b.columns)
        for t in TARGET_NAMES:
            np.testing.assert_allclose(b[f"{t}_pred"].to_numpy(), a[f"{t}_pred"].to_numpy(), rtol=0, atol=1e-12)

    painted = tmp_path / "painted.parquet"
    r = run_cli("paint", "--catalog", str(halos), "--out", str(painted), "--server", url, "--token", TOKEN)
    assert r.returncode == 0, r.stderr
    out = read_table(painted)
    want = _local(models).predict(out[list(FEATURE_NAMES)].to_numpy(np.float64))
    for t in TARGET_NAMES:
        np.testing.assert_allclose(out[f"{t}_pred"].to_numpy(), want[t], rtol=0, atol=1e-12, err_msg=t)

    # local-only options are refused in one line; server errors are one line too
    r = run_cli("paint", "--catalog", str(halos), "--out", str(painted), "--server", url, "--engine", "dask")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "--engine" in r.stderr
    r = run_cli("paint", "--catalog", str(halos), "--out", str(painted), "--server", url, "--token", "wrong")
    assert r.returncode == 1 and "401" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("predict", "--data", str(halos), "--out", str(remote), "--server", url, "--model", "v99")
    assert r.returncode == 1 and "model" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr


def test_the_example_script_paints_through_the_service(live):
    url, models, _, _ = live
    env = {k: v for k, v in os.environ.items() if k not in TOKEN_VARS}
    env["GALAXYPAINT_ADMIN_TOKEN"] = TOKEN
    r = subprocess.run([sys.executable, str(REPO / "examples" / "paint_through_the_service.py"), url,
                        "--registry", str(models), "--n", "2000"], capture_output=True, text=True, timeout=600,
                       env=env, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: the service paints exactly" in r.stdout
