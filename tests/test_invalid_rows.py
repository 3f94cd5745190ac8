"""Messy real catalogs: one invalid-row policy (refuse / --lenient / --drop-invalid, on_invalid in paint jobs),
split columns without test rows (--ignore-split), and --model naming the target.  Real files, the real CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.core.catalogs import CatalogError, validate
from tests.conftest import run_cli as cli

pytest.importorskip("lightgbm")

FAST = ("--targets", "smass", "--models", "lgbm", "--no-sampler", "--no-report")
#: the planted bad rows: (0-based data row, column, value)
BAD = ((5, "C_h", 3.84), (17, "z_h", np.nan), (42, "M_h", np.inf))


def _run_record(models) -> dict:
    from app.core.registry import Registry

    reg = Registry(models, create=False)
    return reg.get_run(reg.list_runs()[-1])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A clean and a messy table (the 3 planted bad rows), and a registry trained on the clean one."""
    from training.demo_catalog import make_demo_catalog

    root = tmp_path_factory.mktemp("invalid")
    df = make_demo_catalog(n=3000, seed=11)
    clean = root / "clean.parquet"
    df.to_parquet(clean, index=False)
    bad = df.copy()
    for row, col, value in BAD:
        bad.loc[row, col] = value
    bad.to_csv(root / "bad.csv", index=False)
    bad.to_parquet(root / "bad.parquet", index=False)
    res = cli("train", "--data", str(clean), *FAST, "--registry", str(root / "models"))
    assert res.returncode == 0, res.stderr[-2000:]
    return root, df


def _listing(path) -> list[tuple[int, str]]:
    got = pd.read_csv(path)
    assert list(got.columns) == ["row", "column", "value", "problem"]
    return list(zip(got["row"].tolist(), got["column"].tolist()))


def test_validate_lists_each_bad_cell_once():
    df = pd.DataFrame({"M_h": [12.0, np.inf, 11.0, 12.0], "C_h": [1.0, 1.0, 3.84, "x"], "S_h": 0.05, "z_h": 1.0,
                       "Delta3_h": 1.0})
    report = validate(df, on_invalid="drop")
    assert report.dropped.tolist() == [1, 2, 3]
    assert report.invalid[["row", "column", "value"]].values.tolist() == [[1, "M_h", "inf"], [2, "C_h", "3.84"],
                                                                           [3, "C_h", "x"]]
    with pytest.raises(CatalogError, match="--drop-invalid"):
        validate(df)
    with pytest.raises(CatalogError, match="on_invalid must be one of error, warn, drop"):
        validate(df, on_invalid="skip")


def test_train_refuses_by_default_naming_the_option(files):
    root, _ = files
    res = cli("train", "--data", str(root / "bad.csv"), *FAST, "--registry", str(root / "refused"))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("galaxypaint: error:") and "--drop-invalid" in lines[0]
    # the two options exclude each other
    res = cli("train", "--data", str(root / "bad.csv"), *FAST, "--lenient", "--drop-invalid")
    assert res.returncode == 2 and "not allowed with" in res.stderr


def test_train_drop_invalid_trains_on_the_rest_and_records_the_rows(files):
    root, _ = files
    models = root / "dropped"
    res = cli("train", "--data", str(root / "bad.csv"), *FAST, "--drop-invalid", "--registry", str(models))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "dropped 3 invalid rows of 3,000" in res.stdout
    run = _run_record(models)
    invalid = run["config"]["invalid_rows"]
    assert run["config"]["on_invalid"] == "drop" and invalid["dropped"] == 3 and invalid["rows_in"] == 3000
    assert [(c["row"], c["column"]) for c in invalid["cells"]] == [(r, c) for r, c, _ in BAD]
    assert [c["value"] for c in invalid["cells"]] == ["3.84", "nan", "inf"]
    assert sum(run["metrics"]["smass"]["raw"]["n_" + s] for s in ("train", "val", "test")) == 2997


def test_train_lenient_warns_and_keeps_out_of_range_rows(files):
    root, df = files
    one = df.copy()
    one.loc[5, "C_h"] = 3.84  # out of range only: kept, with a warning
    one.to_csv(root / "one.csv", index=False)
    res = cli("train", "--data", str(root / "one.csv"), *FAST, "--lenient", "--registry", str(root / "lenient"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "warning: column C_h has 1 value outside the valid range" in res.stderr
    assert sum(_run_record(root / "lenient")["metrics"]["smass"]["raw"]["n_" + s]
               for s in ("train", "val", "test")) == 3000
    # non-finite values cannot be kept for a model: refused even under --lenient, naming --drop-invalid
    res = cli("train", "--data", str(root / "bad.csv"), *FAST, "--lenient", "--registry", str(root / "lenient"))
    assert res.returncode == 1 and "non-finite" in res.stderr and "--drop-invalid" in res.stderr


@pytest.mark.parametrize("command", ["paint", "predict"])
def test_drop_invalid_writes_the_sidecar_listing(files, command):
    root, _ = files
    out = root / f"{command}-out.parquet"
    source = ["--catalog", str(root / "bad.csv"), "--chunk-rows", "10"] if command == "paint" else \
        ["--data", str(root / "bad.parquet")]
    res = cli(command, *source, "--out", str(out), "--registry", str(root / "models"), "--drop-invalid")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "dropped 3 invalid rows of 3,000" in res.stdout
    assert _listing(f"{out}.invalid.csv") == [(r, c) for r, c, _ in BAD]
    painted = pd.read_parquet(out)
    assert len(painted) == 2997 and painted["smass_pred"].notna().all()
    # default: refused, no output, one line naming the option
    out2 = root / f"{command}-refused.parquet"
    res = cli(command, *source, "--out", str(out2), "--registry", str(root / "models"))
    assert res.returncode == 1 and not out2.exists() and "--drop-invalid" in res.stderr
    assert len(res.stderr.strip().splitlines()[-1:]) == 1 and "Traceback" not in res.stderr


def test_split_without_test_rows_trains_on_validation_metrics_or_resplits(files):
    root, df = files
    split = df.copy()
    split["split"] = np.where(np.arange(len(df)) % 5 == 0, "val", "train")
    data = root / "split.parquet"
    split.to_parquet(data, index=False)
    res = cli("train", "--data", str(data), *FAST, "--registry", str(root / "split-models"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "warning: the split column has train and validation rows only" in res.stderr
    run = _run_record(root / "split-models")
    assert run["config"]["evaluated_on"] == "val" and run["config"]["split_source"] == "column"
    assert run["metrics"]["smass"]["raw"]["n_test"] == 600
    res = cli("train", "--data", str(data), *FAST, "--ignore-split", "--registry", str(root / "split-models"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "split column has train and validation rows only" not in res.stderr
    run = _run_record(root / "split-models")
    assert run["config"]["ignore_split"] and run["config"]["evaluated_on"] == "test"
    assert run["config"]["split_source"].startswith("seeded")
    assert run["metrics"]["smass"]["raw"]["n_test"] == 1200  # the seeded 48/12/40 split of 3,000 rows


def test_model_reference_names_the_target(files):
    root, _ = files
    out = root / "by-model.csv"
    res = cli("predict", "--data", str(root / "clean.parquet"), "--out", str(out), "--registry", str(root / "models"),
              "--model", "smass-raw-stack@production")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "smass_pred" in pd.read_csv(out).columns
    out = root / "by-model-paint.parquet"
    res = cli("paint", "--catalog", str(root / "clean.parquet"), "--out", str(out), "--registry",
              str(root / "models"), "--model", "smass-raw-stack/1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "smass_pred" in pd.read_parquet(out).columns


def test_paint_job_on_invalid(files, tmp_path):
    import httpx

    from tests.api.conftest import TOKEN, start_server, stop_server, wait_job

    root, _ = files
    data = tmp_path / "data"
    data.mkdir()
    (data / "bad.parquet").write_bytes((root / "bad.parquet").read_bytes())
    proc, url = start_server(root / "models", data)
    try:
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            r = client.post("/v1/jobs/paint", data={"catalog": "bad.parquet", "on_invalid": "skip"})
            assert r.status_code == 422 and r.json()["detail"].startswith("on_invalid:"), r.text
            r = client.post("/v1/jobs/paint", data={"catalog": "bad.parquet"})
            job = wait_job(client, r.json()["id"])
            assert job["status"] == "failed" and "on_invalid=drop" in str(job), job
            r = client.post("/v1/jobs/paint", data={"catalog": "bad.parquet", "on_invalid": "drop"})
            assert r.status_code == 202, r.text
            job = wait_job(client, r.json()["id"])
            assert job["status"] == "succeeded", job
            assert job["result"]["rows"] == 2997 and job["result"]["dropped_rows"] == 3
            listing = client.get(f"/v1/jobs/{job['id']}/result", params={"part": "invalid"})
            assert listing.status_code == 200
            (tmp_path / "invalid.csv").write_bytes(listing.content)
            assert _listing(tmp_path / "invalid.csv") == [(r, c) for r, c, _ in BAD]
    finally:
        stop_server(proc)
