"""The HTTP service end to end: a real uvicorn server on 127.0.0.1, a real registry and real ONNX models."""

from __future__ import annotations

import socket
import subprocess

import httpx
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("lightgbm")

from app.core.catalogs import read_table, write_table  # noqa: E402
from app.core.model import GalaxyModel  # noqa: E402
from app.api.jobs import JobStore  # noqa: E402
from app.core.registry import Registry  # noqa: E402
from app.core.schema import FEATURE_NAMES  # noqa: E402
from training.demo_catalog import make_demo_catalog  # noqa: E402

from .conftest import TOKEN, start_server, stop_server, wait_job  # noqa: E402



@pytest.fixture(scope="module")
def server(trained_registry):
    root, df = trained_registry
    proc, url = start_server(root / "models", root / "data")
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client, root, df
    stop_server(proc)


_wait = wait_job


def test_health_and_openapi(server):
    client, _, _ = server
    assert client.get("/health/live").json() == {"live": True}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and "models:/smass-raw-stack/1" in ready.json()["models_loaded"]
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_predict_rows_and_columns_match_local_onnx(server):
    client, root, df = server
    x = df[list(FEATURE_NAMES)].to_numpy()[:50]
    rows = client.post("/v1/predict", json={"halos": [dict(zip(FEATURE_NAMES, r)) for r in x.tolist()]})
    cols = client.post("/v1/predict", json={"columns": {f: x[:, j].tolist() for j, f in enumerate(FEATURE_NAMES)},
                                            "targets": ["sSFR"]})
    assert rows.status_code == 200 and cols.status_code == 200, rows.text + cols.text
    body = rows.json()
    local = GalaxyModel.from_registry(Registry(root / "models", create=False)).predict(x)
    np.testing.assert_allclose(body["predictions"]["smass"], local["smass"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(cols.json()["predictions"]["sSFR"], local["sSFR"], rtol=0, atol=1e-12)
    assert list(cols.json()["predictions"]) == ["sSFR"]
    assert {m["name"] for m in body["models"]} == {"smass-raw-stack", "sSFR-raw-stack", "color-raw-stack"}
    assert body["units"]["smass"] == "log10 Msun/h"
    domains = [Registry(root / "models", create=False).get(f"{t}-raw-stack").training_domain
               for t in ("smass", "sSFR", "color")]
    lo = np.max([[d[f]["min"] for f in FEATURE_NAMES] for d in domains], axis=0)
    hi = np.min([[d[f]["max"] for f in FEATURE_NAMES] for d in domains], axis=0)
    outside = np.flatnonzero(((x < lo) | (x > hi)).any(axis=1))
    assert [w["index"] for w in body["warnings"]] == outside.tolist()


def test_extrapolation_is_flagged_per_halo(server):
    client, _, _ = server
    halo = {"M_h": 12.0, "C_h": 1.0, "S_h": 0.04, "z_h": 1.2, "Delta3_h": 3.0}
    body = client.post("/v1/predict", json={"halos": [halo, {**halo, "M_h": 16.2}]}).json()
    assert [w["index"] for w in body["warnings"]] == [1]
    assert "M_h=16.2 outside the training range" in body["warnings"][0]["messages"][0]


@pytest.mark.parametrize("payload,status,field", [
    ({"halos": [{"M_h": 12, "C_h": 1, "S_h": 0.04, "z_h": 1}]}, 422, "halos.0.Delta3_h"),
    ({"halos": [{"M_h": "big", "C_h": 1, "S_h": 0.04, "z_h": 1, "Delta3_h": 2}]}, 422, "halos.0.M_h"),
    ({"columns": {"M_h": [12, "NaN"], "C_h": [1, 1], "S_h": [0.1, 0.1], "z_h": [1, 1], "Delta3_h": [1, 1]}}, 422,
     "M_h: halo 1"),
    ({"halos": [], "columns": {}}, 422, "exactly one of 'halos'"),
    ({"halos": [{"M_h": 12, "C_h": 1, "S_h": 0.04, "z_h": 1, "Delta3_h": 2}], "targets": ["mass"]}, 422, "targets"),
    ({"halos": [{"M_h": 12, "C_h": 1, "S_h": 0.04, "z_h": 1, "Delta3_h": 2}], "path": "smogn"}, 404, "smogn"),
    ({"halos": [{"M_h": 12, "C_h": 1, "S_h": 0.04, "z_h": 1, "Delta3_h": 2}] * 1001}, 413, "limit is 1,000"),
])
def test_bad_requests_name_the_field(server, payload, status, field):
    client, _, _ = server
    r = client.post("/v1/predict", json=payload)
    assert r.status_code == status and field in r.json()["detail"], r.text


def test_open_inference_protocol_v2(server):
    client, root, df = server
    assert client.get("/v2").json()["name"] == "galaxypaint"
    meta = client.get("/v2/models/smass-raw-stack").json()
    assert meta["inputs"][0] == {"name": "halo_features", "datatype": "FP64", "shape": [-1, 5]}
    assert client.get("/v2/models/smass-raw-stack/versions/1/ready").json()["ready"] is True
    x = df[list(FEATURE_NAMES)].to_numpy()[:7]
    req = {"id": "r1", "inputs": [{"name": "halo_features", "shape": [7, 5], "datatype": "FP32",
                                   "data": x.astype(np.float32).ravel().tolist()}]}
    r = client.post("/v2/models/smass-raw-stack/versions/1/infer", json=req)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "r1" and out["model_version"] == "1" and out["outputs"][0]["shape"] == [7, 1]
    local = GalaxyModel.from_registry(Registry(root / "models", create=False), targets=["smass"]).predict(
        x.astype(np.float32).astype(np.float64))["smass"]
    np.testing.assert_allclose(out["outputs"][0]["data"], local, atol=1e-12)
    bad = client.post("/v2/models/smass-raw-stack/infer",
                      json={"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP64", "data": [1] * 5}]})
    assert bad.status_code == 400 and "halo_features" in bad.json()["error"]
    bad = client.post("/v2/models/smass-raw-stack/infer",
                      json={"inputs": [{"name": "halo_features", "shape": [1, 4], "datatype": "FP64", "data": [1] * 4}]})
    assert bad.status_code == 400 and "shape" in bad.json()["error"]
    missing = client.get("/v2/models/nope-raw-stack")
    assert missing.status_code == 404 and "nope-raw-stack" in missing.json()["error"]


def test_registry_endpoints_and_alias_moves_need_the_token(server):
    client, root, _ = server
    names = {m["name"] for m in client.get("/v1/models").json()["models"]}
    assert {"smass-raw-stack", "sSFR-raw-lgbm"} <= names
    show = client.get("/v1/models/smass-raw-stack").json()
    # the paper's stack and, if member selection dropped one, the selected stack as the next version
    prod = show["aliases"]["production"]
    assert show["aliases"]["selected"] == prod and show["aliases"]["paper"] == 1
    assert "training_domain" in show["versions"][0]
    assert "artefact" not in show["versions"][0]
    body = {"alias": "staging", "version": 1}
    url = f"{client.base_url}/v1/models/smass-raw-stack/aliases"
    assert httpx.post(url, json=body).status_code == 401
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "bearer token" in wrong.json()["detail"] and wrong.json()["request_id"]
    ok = client.post("/v1/models/smass-raw-stack/aliases", json=body)
    assert ok.status_code == 200 and ok.json()["uri"] == "models:/smass-raw-stack/1"
    assert Registry(root / "models", create=False).get("smass-raw-stack", alias="staging").version == 1
    halo = {"M_h": 12.0, "C_h": 1.0, "S_h": 0.04, "z_h": 1.2, "Delta3_h": 3.0}
    staged = client.post("/v1/predict", json={"halos": [halo], "targets": ["smass"], "model": "staging"}).json()
    assert "staging" in staged["models"][0]["aliases"] and staged["models"][0]["version"] == 1
    nope = client.post("/v1/models/smass-raw-stack/aliases", json={"alias": "staging", "version": 9})
    assert nope.status_code == 404 and nope.json()["detail"].startswith("version:")


def test_paint_job_upload_then_pk_job(server, tmp_path):
    client, root, df = server
    sample = df.iloc[:2500]
    upload = write_table(sample, tmp_path / "halos.csv")
    with open(upload, "rb") as fh:
        r = client.post("/v1/jobs/paint", files={"file": ("halos.csv", fh, "text/csv")},
                        data={"targets": "smass", "output_format": "hdf5"})
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["id"])
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["result"]["rows"] == 2500
    res = client.get(f"/v1/jobs/{job['id']}/result")
    assert res.status_code == 200
    (tmp_path / "painted.hdf5").write_bytes(res.content)
    painted = read_table(tmp_path / "painted.hdf5")
    local = GalaxyModel.from_registry(Registry(root / "models", create=False), targets=["smass"]).predict(
        sample[list(FEATURE_NAMES)].to_numpy())["smass"]
    np.testing.assert_allclose(painted["smass_pred"].to_numpy(), local, atol=1e-12)
    pd.testing.assert_series_equal(painted["M_h"], sample["M_h"].reset_index(drop=True), check_names=False)

    pk = client.post("/v1/jobs/pk", json={"job_id": job["id"], "nmesh": 32})
    assert pk.status_code == 422 and pk.json()["detail"].startswith("box: ")  # a CSV records no box
    pk = client.post("/v1/jobs/pk", json={"job_id": job["id"], "nmesh": 32, "box": 205})
    assert pk.status_code == 202, pk.text
    pk_job = _wait(client, pk.json()["id"])
    assert pk_job["status"] == "succeeded", pk_job["error"]
    assert [(s["target"], s["bin"]) for s in pk_job["result"]["summary"]] == [("smass", 1), ("smass", 2)]
    figure = client.get(f"/v1/jobs/{pk_job['id']}/result", params={"part": "figure"})
    assert figure.status_code == 200 and figure.content[:4] == b"\x89PNG"
    assert any(j["id"] == pk_job["id"] for j in client.get("/v1/jobs").json()["jobs"])


def test_job_requests_are_checked(server):
    client, _, _ = server
    base = str(client.base_url)
    assert httpx.post(f"{base}/v1/jobs/paint", data={"catalog": "halos.parquet"}).status_code == 401
    assert httpx.post(f"{base}/v1/jobs/pk", json={"path": "halos.parquet"}).status_code == 401
    assert httpx.delete(f"{base}/v1/jobs/job-x").status_code == 401
    assert httpx.get(f"{base}/v1/jobs").status_code == 401  # job listings and results are guarded too
    r = client.post("/v1/jobs/paint", data={"catalog": "../../etc/passwd"})
    assert r.status_code == 403 and "outside the server's data directory" in r.json()["detail"]
    r = client.post("/v1/jobs/paint", data={"catalog": "absent.parquet"})
    assert r.status_code == 404 and "catalog" in r.json()["detail"]
    r = client.post("/v1/jobs/paint", files={"file": ("halos.xlsx", b"x", "application/octet-stream")})
    assert r.status_code == 415 and "file" in r.json()["detail"]
    r = client.post("/v1/jobs/paint", data={"catalog": "halos.parquet", "path": "both"})
    assert r.status_code == 422 and "path" in r.json()["detail"]
    r = client.post("/v1/jobs/pk", json={"path": "halos.parquet", "job_id": "job-x"})
    assert r.status_code == 422 and "exactly one of" in r.json()["detail"]
    assert client.get("/v1/jobs/job-missing").status_code == 404
    assert client.get("/v1/jobs/job-missing/result").status_code == 404


def test_server_side_paint_job_and_cancel(server):
    client, root, _ = server
    r = client.post("/v1/jobs/paint", data={"catalog": "halos.parquet"})
    assert r.status_code == 202
    done = _wait(client, r.json()["id"])
    assert done["status"] == "succeeded" and done["result"]["rows"] == 3000
    # a P(k) job on a large mesh, canceled at once: it ends canceled, with no result
    pk = client.post("/v1/jobs/pk", json={"job_id": done["id"], "nmesh": 512}).json()
    canceled = client.delete(f"/v1/jobs/{pk['id']}").json()
    assert canceled["status"] == "canceled"
    final = _wait(client, pk["id"])
    assert final["status"] == "canceled" and final["result"] is None
    assert client.get(f"/v1/jobs/{pk['id']}/result").status_code == 409


def test_jobs_left_running_by_a_crash_fail_at_restart(trained_registry, tmp_path):
    root, _ = trained_registry
    store = JobStore(root / "models" / "registry.sqlite")
    job = store.create("paint", {"input": "x"})
    assert store.start(job["id"])  # a worker took it ... and died with the server
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its process id no longer runs
    store.update(job["id"], worker=f"{socket.gethostname()}:{gone.pid}")
    running = store.create("paint", {"input": "y"})
    assert store.start(running["id"])  # taken by a live process (this one): left alone
    (tmp_path / "data").mkdir()
    write_table(make_demo_catalog(n=500, seed=3), tmp_path / "data" / "h.parquet")
    proc, url = start_server(root / "models", tmp_path / "data", token=None,
                             GALAXYPAINT_ALLOW_ANONYMOUS_WRITES="true")
    try:
        after = httpx.get(f"{url}/v1/jobs/{job['id']}").json()
        open_server = httpx.post(f"{url}/v1/jobs/paint", data={"catalog": "h.parquet"})  # explicitly anonymous
    finally:
        stop_server(proc)
    assert after["status"] == "failed" and "server stopped while this job was running" in after["error"]
    assert store.get(running["id"])["status"] == "running"
    assert open_server.status_code == 202


def test_tampered_model_keeps_the_server_unready(tmp_path, trained_registry):
    root, _ = trained_registry
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(root / "models", copy)
    reg = Registry(copy, create=False)
    art = reg.get("smass-raw-stack").artefact
    art.write_bytes(art.read_bytes()[:-10] + b"0123456789")
    proc, url = start_server(copy, tmp_path / "data")
    try:
        ready = httpx.get(f"{url}/health/ready")
        pred = httpx.post(f"{url}/v1/predict", json={"halos": [{"M_h": 12, "C_h": 1, "S_h": 0.04, "z_h": 1,
                                                                 "Delta3_h": 2}], "targets": ["smass"]})
    finally:
        stop_server(proc)
    assert ready.status_code == 503 and "sha256" in ready.json()["reason"]
    assert pred.status_code == 503 and "sha256" in pred.json()["detail"]  # unavailable, not a server bug


def test_model_store_sees_alias_moves_from_other_connections(trained_registry, tmp_path):
    import shutil

    from app.api.dataplane import ModelStore

    root, _ = trained_registry
    shutil.copytree(root / "models", tmp_path / "models")
    store = ModelStore(Registry(tmp_path / "models", create=False))
    assert "canary" not in store.version("smass-raw-stack").aliases
    other = Registry(tmp_path / "models", create=False)  # e.g. `galaxypaint models promote` elsewhere
    other.set_alias("smass-raw-stack", "canary", 1)
    assert store.version("smass-raw-stack", alias="canary").version == 1
    assert "canary" in store.version("smass-raw-stack").aliases  # the cached resolution was refreshed
