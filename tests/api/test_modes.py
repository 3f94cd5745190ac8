"""Modes over HTTP: /v1/predict, OIP v2 infer and paint jobs draw galaxies from the joint sampler (mode
sample, keyed by seed and halo id) or give its quantiles, exactly as the local ``GalaxyModel`` and
``galaxypaint paint`` do.  A real uvicorn on 127.0.0.1 and a small registry that has the sampler."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest

pytest.importorskip("lightgbm")

from app.core.catalogs import read_table, write_table  # noqa: E402
from app.core.model import MEAN, GalaxyModel, Mode  # noqa: E402
from app.core.registry import Registry  # noqa: E402
from app.core.schema import COLUMNS, FEATURE_NAMES, TARGET_NAMES  # noqa: E402

from .conftest import TOKEN, start_server, stop_server, wait_job  # noqa: E402

SEED = 7
N_DATA = 1200


@pytest.fixture(scope="module")
def sampler_registry(tmp_path_factory, small_sampler_run):
    """A fast registry with all four raw stacks (LightGBM only) and the joint sampler, and a data directory
    holding part of its catalog with an extra integer column ``halo_key``."""
    from tests.conftest import registry_copy

    root = tmp_path_factory.mktemp("modes")
    df = small_sampler_run[1]
    registry = Registry(registry_copy(small_sampler_run, root / "models"))
    assert registry.get("raw-sampler").kind == "sampler"
    (root / "data").mkdir()
    part = df.iloc[:N_DATA].copy()
    part["halo_key"] = (part["ID"].to_numpy() * 7919 + 3).astype(np.int64)
    write_table(part, root / "data" / "halos.parquet")
    return root, df


@pytest.fixture(scope="module")
def server(sampler_registry):
    root, df = sampler_registry
    proc, url = start_server(root / "models", root / "data")
    try:
        with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            yield client, root, df
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def sampler_model(sampler_registry):
    root, _ = sampler_registry
    return GalaxyModel.from_registry(Registry(root / "models", create=False), mode=Mode("sample"))


def _features(df, rows) -> np.ndarray:
    return df[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)[rows]


def _columns(x: np.ndarray) -> dict:
    return {f: x[:, j].tolist() for j, f in enumerate(FEATURE_NAMES)}


def _predict(client, x, **fields) -> httpx.Response:
    return client.post("/v1/predict", json={"columns": _columns(x), **fields})


def _field_of(r: httpx.Response) -> str:
    body = r.json()
    return body.get("detail") or body.get("error")


def test_the_service_warms_the_sampler(server):
    client, _, _ = server
    ready = client.get("/health/ready").json()
    assert "models:/raw-sampler/1" in ready["models_loaded"], ready
    assert "models:/smass-raw-stack/1" in ready["models_loaded"]


def test_sample_mode_equals_the_local_model_for_the_same_ids_and_seed(server, sampler_model):
    client, _, df = server
    x = _features(df, np.arange(2000, 2040))
    ids = [-5, 0, 2**62, 2**63 - 1, -(2**63)] + [10**12 + 7919 * i for i in range(35)]
    r = _predict(client, x, mode="sample", seed=SEED, ids=ids)
    assert r.status_code == 200, r.text
    body = r.json()
    local = sampler_model.predict(x, Mode("sample", SEED), np.array(ids, dtype=np.int64))
    assert list(body["predictions"]) == list(TARGET_NAMES)
    for t in TARGET_NAMES:
        np.testing.assert_allclose(body["predictions"][t], local[t], rtol=0, atol=1e-12)
    assert body["mode"] == "sample" and body["seed"] == SEED and "quantiles" not in body
    assert body["units"] == {t: COLUMNS[t].unit for t in TARGET_NAMES}
    assert [(m["target"], m["name"]) for m in body["models"]] == [(t, "raw-sampler") for t in TARGET_NAMES]
    assert body["n_halos"] == 40 and isinstance(body["warnings"], list)

    # uint64 ids (above 2**63) key the draws as the local model's uint64 ids do
    big = [2**64 - 1, 2**63 + 12]
    r = _predict(client, x[:2], mode="sample", seed=SEED, ids=big)
    assert r.status_code == 200, r.text
    local = sampler_model.predict(x[:2], Mode("sample", SEED), np.array(big, dtype=np.uint64))
    for t in TARGET_NAMES:
        np.testing.assert_allclose(r.json()["predictions"][t], local[t], rtol=0, atol=1e-12)

    # a subset of targets: the same draws for those targets
    r = _predict(client, x, mode="sample", seed=SEED, ids=ids[:40], targets=["color", "smass"])
    assert r.status_code == 200, r.text
    assert list(r.json()["predictions"]) == ["color", "smass"]
    np.testing.assert_allclose(r.json()["predictions"]["smass"], body["predictions"]["smass"], rtol=0, atol=0)


def test_a_draw_depends_on_the_seed_and_the_id_only(server):
    client, _, df = server
    x = _features(df, np.arange(100, 110))
    ids = list(range(500, 510))
    batch = _predict(client, x, mode="sample", seed=SEED, ids=ids).json()["predictions"]
    alone = _predict(client, x[3:4], mode="sample", seed=SEED, ids=[503]).json()["predictions"]
    shuffled = _predict(client, x[::-1], mode="sample", seed=SEED, ids=ids[::-1]).json()["predictions"]
    for t in TARGET_NAMES:  # to 1e-12: a halo's network outputs alone and in a batch differ in the last bits
        np.testing.assert_allclose(alone[t], [batch[t][3]], rtol=0, atol=1e-12)
        np.testing.assert_allclose(shuffled[t][::-1], batch[t], rtol=0, atol=1e-12)
    # the same halo under other ids, or another seed: other draws
    other_ids = _predict(client, np.repeat(x[3:4], 3, axis=0), mode="sample", seed=SEED,
                         ids=[1, 2, 3]).json()["predictions"]
    other_seed = _predict(client, x[3:4], mode="sample", seed=SEED + 1, ids=[503]).json()["predictions"]
    for t in TARGET_NAMES:
        assert len(set(other_ids[t])) == 3
        assert other_seed[t] != alone[t]
    # default seed 0 is a seed like any other: answered, and reported
    zero = _predict(client, x[3:4], mode="sample", ids=[503]).json()
    assert zero["seed"] == 0 and zero["predictions"]["smass"] != alone["smass"]


def test_an_offset_is_ids_offset_onwards(server):
    client, _, df = server
    x = _features(df, np.arange(300, 325))
    for offset in (1000, -3, 0):
        by_offset = _predict(client, x, mode="sample", seed=SEED, offset=offset)
        by_ids = _predict(client, x, mode="sample", seed=SEED, ids=list(range(offset, offset + 25)))
        assert by_offset.status_code == 200 and by_ids.status_code == 200, by_offset.text + by_ids.text
        assert by_offset.json()["predictions"] == by_ids.json()["predictions"]
    near_top = _predict(client, x[:3], mode="sample", seed=SEED, offset=2**64 - 3).json()["predictions"]
    assert near_top == _predict(client, x[:3], mode="sample", seed=SEED, ids=[2**64 - 3, 2**64 - 2, -1]).json()[
        "predictions"]


def test_quantiles_are_ordered_and_equal_the_local_model(server, sampler_model):
    client, _, df = server
    x = _features(df, np.arange(40, 70))
    r = _predict(client, x, mode="quantiles")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "quantiles" and body["quantiles"] == [16.0, 50.0, 84.0] and "seed" not in body
    local = sampler_model.predict(x, Mode("quantiles"))
    assert list(body["predictions"]) == list(local) == [f"{t}_q{lv}" for t in TARGET_NAMES for lv in (16, 50, 84)]
    for name, values in local.items():
        np.testing.assert_allclose(body["predictions"][name], values, rtol=0, atol=1e-12)
    for t in TARGET_NAMES:
        q16, q50, q84 = (np.array(body["predictions"][f"{t}_q{lv}"]) for lv in (16, 50, 84))
        assert np.all(q16 <= q50) and np.all(q50 <= q84) and np.any(q16 < q84)
        assert body["units"][f"{t}_q50"] == COLUMNS[t].unit

    levels = [97.5, 2.5, 50]
    r = _predict(client, x, mode="quantiles", quantiles=levels, targets=["sSFR"])
    assert r.status_code == 200, r.text
    assert r.json()["quantiles"] == [2.5, 50.0, 97.5]
    assert list(r.json()["predictions"]) == ["sSFR_q2.5", "sSFR_q50", "sSFR_q97.5"]
    local = sampler_model.predict(x, Mode("quantiles", levels=levels))
    np.testing.assert_allclose(r.json()["predictions"]["sSFR_q97.5"], local["sSFR_q97.5"], rtol=0, atol=1e-12)


def test_mean_mode_is_unchanged(server, sampler_registry):
    client, root, df = server
    x = _features(df, np.arange(0, 30))
    default = _predict(client, x)
    explicit = _predict(client, x, mode="mean")
    assert default.status_code == 200 and explicit.status_code == 200, default.text
    assert default.json() == explicit.json()
    body = default.json()
    assert set(body) == {"n_halos", "variant", "path", "predictions", "units", "models", "warnings", "mode"}
    assert body["mode"] == "mean"
    local = GalaxyModel.from_registry(Registry(root / "models", create=False)).predict(x, MEAN)
    for t in TARGET_NAMES:
        np.testing.assert_allclose(body["predictions"][t], local[t], rtol=0, atol=1e-12)
    assert {m["name"] for m in body["models"]} == {f"{t}-raw-stack" for t in TARGET_NAMES}


HALO = {"M_h": 12.0, "C_h": 1.0, "S_h": 0.04, "z_h": 1.2, "Delta3_h": 3.0}


@pytest.mark.parametrize("extra,status,field", [
    ({"mode": "sample"}, 422, "ids"),
    ({"mode": "sample", "seed": 3}, 422, "ids"),
    ({"mode": "sample", "ids": [1, 1]}, 422, "ids"),
    ({"mode": "sample", "ids": [-1, 2**64 - 1]}, 422, "ids"),  # one 64-bit counter
    ({"mode": "sample", "ids": [1]}, 422, "ids"),
    ({"mode": "sample", "ids": [1, 2, 3]}, 422, "ids"),
    ({"mode": "sample", "ids": [1.0, 2.0]}, 422, "ids"),
    ({"mode": "sample", "ids": ["1", "2"]}, 422, "ids"),
    ({"mode": "sample", "ids": [1, 2**64]}, 422, "ids"),
    ({"mode": "sample", "ids": [1, -(2**63) - 1]}, 422, "ids"),
    ({"mode": "sample", "ids": [1, 2], "offset": 5}, 422, "ids"),
    ({"mode": "sample", "offset": 2**64 - 1}, 422, "offset"),
    ({"mode": "sample", "offset": 1.5}, 422, "offset"),
    ({"mode": "sample", "ids": [1, 2], "variant": "smogn"}, 422, "variant"),
    ({"mode": "quantiles", "variant": "smogn"}, 422, "variant"),
    ({"mode": "sample", "ids": [1, 2], "model": "smass-raw-stack"}, 422, "model"),
    ({"mode": "sample", "ids": [1, 2], "seed": -1}, 422, "seed"),
    ({"mode": "sample", "ids": [1, 2], "seed": 2**63}, 422, "seed"),
    ({"mode": "sample", "ids": [1, 2], "quantiles": [16]}, 422, "quantiles"),
    ({"mode": "quantiles", "quantiles": [0]}, 422, "quantiles"),
    ({"mode": "quantiles", "quantiles": [16, 16]}, 422, "quantiles"),
    ({"mode": "quantiles", "quantiles": []}, 422, "quantiles"),
    ({"mode": "quantiles", "seed": 1}, 422, "seed"),
    ({"mode": "quantiles", "ids": [1, 2]}, 422, "ids"),
    ({"mode": "draw"}, 422, "mode"),
    ({"seed": 4}, 422, "seed"),
    ({"ids": [1, 2]}, 422, "ids"),
    ({"offset": 0}, 422, "offset"),
    ({"model": "raw-sampler"}, 422, "model"),
])
def test_bad_mode_requests_are_a_4xx_naming_the_field(server, extra, status, field):
    client, _, _ = server
    r = client.post("/v1/predict", json={"halos": [HALO, {**HALO, "M_h": 12.5}], **extra})
    assert r.status_code == status, r.text
    assert _field_of(r).startswith((field + ":", field + ".")), r.text  # ids.0: ... from the protocol types
    assert r.json()["request_id"] == r.headers["x-request-id"]


def _v2(client, name: str, x: np.ndarray, **parameters) -> httpx.Response:
    body = {"inputs": [{"name": "halo_features", "shape": list(x.shape), "datatype": "FP64",
                        "data": x.reshape(-1).tolist()}]}
    if parameters:
        body["parameters"] = parameters
    return client.post(f"/v2/models/{name}/infer", json=body)


def test_v2_infer_with_the_sampler(server, sampler_model):
    client, _, df = server
    x = _features(df, np.arange(500, 512))
    ids = list(range(9000, 9012))
    r = _v2(client, "raw-sampler", x, mode="sample", seed=SEED, ids=ids)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "raw-sampler" and body["parameters"] == {"mode": "sample", "seed": SEED}
    assert [o["name"] for o in body["outputs"]] == list(TARGET_NAMES)
    local = sampler_model.predict(x, Mode("sample", SEED), np.array(ids))
    v1 = _predict(client, x, mode="sample", seed=SEED, ids=ids).json()["predictions"]
    for out in body["outputs"]:
        assert out["shape"] == [12, 1] and out["datatype"] == "FP64"
        np.testing.assert_allclose(out["data"], local[out["name"]], rtol=0, atol=1e-12)
        assert out["data"] == v1[out["name"]]
    by_offset = _v2(client, "raw-sampler", x, mode="sample", seed=SEED, offset=9000).json()
    assert by_offset["outputs"] == body["outputs"]
    versioned = client.post("/v2/models/raw-sampler/versions/1/infer", json={
        "inputs": [{"name": "halo_features", "shape": [12, 5], "datatype": "FP64", "data": x.tolist()}],
        "parameters": {"mode": "sample", "seed": SEED, "ids": ids}, "outputs": [{"name": "color"}]})
    assert versioned.status_code == 200, versioned.text
    assert versioned.json()["outputs"] == [o for o in body["outputs"] if o["name"] == "color"]

    q = _v2(client, "raw-sampler", x, mode="quantiles", quantiles=[5, 95])
    assert q.status_code == 200, q.text
    local_q = sampler_model.predict(x, Mode("quantiles", levels=(5, 95)))
    assert [o["name"] for o in q.json()["outputs"]] == list(local_q)
    for out in q.json()["outputs"]:
        np.testing.assert_allclose(out["data"], local_q[out["name"]], rtol=0, atol=1e-12)

    meta = client.get("/v2/models/raw-sampler").json()
    assert [o["name"] for o in meta["outputs"]] == list(TARGET_NAMES)
    assert meta["parameters"]["modes"] == ["sample", "quantiles"]
    bad_output = client.post("/v2/models/raw-sampler/infer", json={
        "inputs": [{"name": "halo_features", "shape": [12, 5], "datatype": "FP64", "data": x.tolist()}],
        "parameters": {"mode": "quantiles"}, "outputs": [{"name": "prediction"}]})
    assert bad_output.status_code == 400 and _field_of(bad_output).startswith("outputs:"), bad_output.text
    # a stack is unchanged: one "prediction" output, mode mean
    stack = _v2(client, "smass-raw-stack", x)
    assert stack.status_code == 200 and [o["name"] for o in stack.json()["outputs"]] == ["prediction"]
    assert "parameters" not in stack.json()


@pytest.mark.parametrize("name,parameters,status,field", [
    ("smass-raw-stack", {"mode": "sample", "ids": [1, 2]}, 422, "parameters.mode"),
    ("smass-raw-stack", {"mode": "quantiles"}, 422, "parameters.mode"),
    ("raw-sampler", {}, 422, "parameters.mode"),
    ("raw-sampler", {"mode": "sample"}, 422, "parameters.ids"),
    ("raw-sampler", {"mode": "sample", "ids": [1, 1]}, 422, "parameters.ids"),
    ("raw-sampler", {"mode": "sample", "ids": "12"}, 422, "parameters.ids"),
    ("raw-sampler", {"mode": "sample", "ids": [1, True]}, 422, "parameters.ids"),
    ("raw-sampler", {"mode": "sample", "offset": "3"}, 422, "parameters.offset"),
    ("raw-sampler", {"mode": "sample", "ids": [1, 2], "seed": 1.5}, 422, "parameters.seed"),
    ("raw-sampler", {"mode": "sample", "ids": [1, 2], "seed": [1]}, 422, "parameters.seed"),
    ("raw-sampler", {"mode": "quantiles", "quantiles": {"a": 1}}, 422, "parameters.quantiles"),
    ("raw-sampler", {"mode": "quantiles", "quantiles": [10**400]}, 422, "parameters.quantiles"),
    ("raw-sampler", {"mode": ["sample"]}, 422, "parameters.mode"),
    ("smass-raw-stack", {"seed": 3}, 422, "parameters.seed"),
])
def test_v2_mode_parameters_are_checked(server, name, parameters, status, field):
    client, _, _ = server
    x = np.array([[12.0, 1.0, 0.04, 1.2, 3.0], [12.5, 1.0, 0.04, 1.2, 3.0]])
    r = _v2(client, name, x, **parameters) if parameters else _v2(client, name, x)
    assert r.status_code == status, r.text
    assert _field_of(r).startswith(field + ":"), r.text


def test_paint_job_in_sample_mode_equals_the_cli(server, sampler_model, cli, tmp_path):
    client, root, _ = server
    r = client.post("/v1/jobs/paint", data={"catalog": "halos.parquet", "mode": "sample", "seed": str(SEED),
                                            "id_column": "halo_key"})
    assert r.status_code == 202, r.text
    params = r.json()["params"]
    assert params["mode"] == "sample" and params["seed"] == SEED and params["id_column"] == "halo_key"
    assert {m["name"] for m in params["models"]} == {"raw-sampler"} and params["targets"] == list(TARGET_NAMES)
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["mode"] == "sample" and job["result"]["seed"] == SEED
    res = client.get(f"/v1/jobs/{job['id']}/result")
    assert res.status_code == 200
    (tmp_path / "served.parquet").write_bytes(res.content)
    served = read_table(tmp_path / "served.parquet")

    run = cli("paint", "--catalog", str(root / "data" / "halos.parquet"), "--out", str(tmp_path / "local.parquet"),
              "--registry", str(root / "models"), "--mode", "sample", "--seed", str(SEED), "--id-column", "halo_key")
    assert run.returncode == 0, run.stderr
    local = read_table(tmp_path / "local.parquet")
    assert len(served) == len(local) == N_DATA
    for t in TARGET_NAMES:
        np.testing.assert_allclose(served[f"{t}_pred"].to_numpy(), local[f"{t}_pred"].to_numpy(), rtol=0, atol=1e-12)
    draws = sampler_model.predict(served[list(FEATURE_NAMES)].to_numpy(), Mode("sample", SEED),
                                  served["halo_key"].to_numpy())
    np.testing.assert_allclose(served["smass_pred"].to_numpy(), draws["smass"], rtol=0, atol=1e-12)
    meta = served.attrs["galaxypaint"]
    assert meta["mode"] == "sample" and meta["seed"] == SEED and meta["id_column"] == "halo_key"
    assert {m["name"] for m in meta["models"]} == {"raw-sampler"}


def test_paint_job_in_quantiles_mode(server, sampler_model, tmp_path):
    client, _, _ = server
    r = client.post("/v1/jobs/paint", data={"catalog": "halos.parquet", "mode": "quantiles",
                                            "quantiles": "50,2.5", "targets": "color", "output_format": "csv"})
    assert r.status_code == 202, r.text
    assert r.json()["params"]["quantiles"] == [2.5, 50.0] and "seed" not in r.json()["params"]
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    (tmp_path / "q.csv").write_bytes(client.get(f"/v1/jobs/{job['id']}/result").content)
    painted = read_table(tmp_path / "q.csv")
    local = sampler_model.predict(painted[list(FEATURE_NAMES)].to_numpy(), Mode("quantiles", levels=(2.5, 50)))
    np.testing.assert_allclose(painted["color_q2.5"].to_numpy(), local["color_q2.5"], rtol=0, atol=1e-9)
    assert "color_pred" not in painted.columns and "smass_q50" not in painted.columns


@pytest.mark.parametrize("data,status,field", [
    ({"mode": "sample", "variant": "smogn"}, 422, "variant"),
    ({"mode": "draw"}, 422, "mode"),
    ({"mode": "sample", "seed": "-1"}, 422, "seed"),
    ({"mode": "sample", "seed": "x"}, 422, "seed"),
    ({"mode": "sample", "seed": str(2**63)}, 422, "seed"),
    ({"seed": "3"}, 422, "seed"),
    ({"mode": "quantiles", "quantiles": "16,abc"}, 422, "quantiles"),
    ({"mode": "sample", "quantiles": "16"}, 422, "quantiles"),
    ({"mode": "sample", "model": "smass-raw-stack"}, 422, "model"),
])
def test_paint_job_mode_fields_are_checked(server, data, status, field):
    client, _, _ = server
    r = client.post("/v1/jobs/paint", data={"catalog": "halos.parquet", **data})
    assert r.status_code == status, r.text
    assert _field_of(r).startswith(field + ":"), r.text


def test_without_a_sampler_sample_mode_is_a_404_naming_the_model(trained_registry, tmp_path):
    root, _ = trained_registry
    shutil.copytree(root / "models", tmp_path / "models")  # the server adds its job tables: work on a copy
    (tmp_path / "data").mkdir()
    proc, url = start_server(tmp_path / "models", tmp_path / "data")
    try:
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            for extra in ({"mode": "sample", "ids": [1]}, {"mode": "quantiles"}):
                r = client.post("/v1/predict", json={"halos": [HALO], **extra})
                assert r.status_code == 404, r.text
                assert _field_of(r).startswith("model:") and "sampler" in _field_of(r)
            assert client.post("/v1/predict", json={"halos": [HALO]}).status_code == 200
            (tmp_path / "data" / "h.csv").write_text("M_h,C_h,S_h,z_h,Delta3_h\n12,1,0.04,1.2,3\n")
            r = client.post("/v1/jobs/paint", data={"catalog": "h.csv", "mode": "sample"})
            assert r.status_code == 404 and _field_of(r).startswith("model:"), r.text
    finally:
        stop_server(proc)
