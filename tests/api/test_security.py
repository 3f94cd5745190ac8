"""The service attacked: a live uvicorn on 127.0.0.1, hostile inputs, crashes, concurrency, tokens."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

from app.core.catalogs import write_table
from app.core.registry import Registry
from app.core.schema import FEATURE_NAMES

from .conftest import SUBMIT_TOKEN, TOKEN, start_server, stop_server, wait_job

HALO = {"M_h": 12.0, "C_h": 1.0, "S_h": 0.04, "z_h": 1.2, "Delta3_h": 3.0}


@pytest.fixture(scope="module")
def live(trained_registry, tmp_path_factory):
    """A server on a private copy of the registry (tests here move aliases and corrupt files)."""
    import shutil

    root, df = trained_registry
    here = tmp_path_factory.mktemp("security")
    shutil.copytree(root / "models", here / "models")
    shutil.copytree(root / "data", here / "data")
    proc, url = start_server(here / "models", here / "data", submit_token=SUBMIT_TOKEN,
                             GALAXYPAINT_MAX_LOADED_MODELS="4", GALAXYPAINT_MAX_JSON_BYTES="200000",
                             GALAXYPAINT_MAX_UPLOAD_BYTES="2000000", GALAXYPAINT_MAX_PK_NMESH="64")
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client, here, df, proc
    stop_server(proc)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _raw(url: str, request: bytes, read_timeout: float = 10) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks) and b'"request_id"' in b"".join(chunks):
                break
        return b"".join(chunks)


# ----------------------------------------------------------------------------- HDF5 uploads


def _hdf5_with(kind: str, path: Path, secret: Path, n: int = 200) -> None:
    cols = {f: np.full(n, v) for f, v in HALO.items()}
    with h5py.File(path, "w") as f:
        for name, values in cols.items():
            if name == "Delta3_h":
                continue
            f.create_dataset(name, data=values)
        if kind == "external-storage":
            f.create_dataset("Delta3_h", shape=(n,), dtype="f8", external=[(str(secret), 0, n * 8)])
        elif kind == "external-link":
            with h5py.File(path.with_suffix(".other.h5"), "w") as other:
                other.create_dataset("d", data=np.frombuffer(secret.read_bytes()[: n * 8], dtype="f8"))
            f["Delta3_h"] = h5py.ExternalLink(str(path.with_suffix(".other.h5")), "d")
        elif kind == "virtual":
            with h5py.File(path.with_suffix(".src.h5"), "w") as src:
                src.create_dataset("d", data=np.frombuffer(secret.read_bytes()[: n * 8], dtype="f8"))
            layout = h5py.VirtualLayout(shape=(n,), dtype="f8")
            layout[:] = h5py.VirtualSource(str(path.with_suffix(".src.h5")), "d", shape=(n,))
            f.create_virtual_dataset("Delta3_h", layout)


@pytest.mark.parametrize("kind", ["external-storage", "external-link", "virtual"])
def test_hdf5_upload_reading_outside_the_file_is_refused(live, tmp_path, kind):
    client, here, _, _ = live
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(1000, dtype="f8").tobytes())
    upload = tmp_path / "halos.hdf5"
    _hdf5_with(kind, upload, secret)
    before = {p.name for p in (here / "data" / "jobs").glob("*")} if (here / "data" / "jobs").exists() else set()
    r = client.post("/v1/jobs/paint", files={"file": ("halos.hdf5", upload.read_bytes(), "application/x-hdf5")})
    assert r.status_code == 422, r.text
    assert "Delta3_h" in r.json()["detail"] and r.json()["request_id"]
    after = {p.name for p in (here / "data" / "jobs").glob("*")} if (here / "data" / "jobs").exists() else set()
    assert after == before  # no job row, no files left behind
    # (P(k) jobs other tests submitted to the same server have no "source")
    assert all(j["params"].get("source") != "halos.hdf5" for j in client.get("/v1/jobs").json()["jobs"])


def test_hdf5_server_side_catalog_with_external_storage_is_refused(live, tmp_path):
    client, here, _, _ = live
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(1000, dtype="f8").tobytes())
    _hdf5_with("external-storage", here / "data" / "sneaky.hdf5", secret)
    r = client.post("/v1/jobs/paint", data={"catalog": "sneaky.hdf5"})
    assert r.status_code == 422 and "Delta3_h" in r.json()["detail"], r.text


# ----------------------------------------------------------------------------- sizes


def test_huge_content_length_is_refused_before_the_body_is_read(live):
    client, _, _, proc = live
    rss0 = _rss_kb(proc.pid)
    url = str(client.base_url)
    t0 = time.perf_counter()
    answer = _raw(url, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 84000000\r\n\r\n{\"halos\": [")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"limit" in answer and time.perf_counter() - t0 < 5
    upload = _raw(url, b"POST /v1/jobs/paint HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                  + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 60000000\r\n\r\n--b\r\n")
    assert upload.startswith(b"HTTP/1.1 413"), upload[:200]
    assert _rss_kb(proc.pid) - rss0 < 50_000  # nothing was buffered


def test_streamed_body_without_length_is_cut_at_the_limit(live):
    client, _, _, _ = live

    def body():
        yield b'{"halos": ['
        for _ in range(20_000):  # ~1.5 MB, the JSON limit of this server is 200 kB
            yield (json.dumps(HALO) + ",").encode()

    r = client.post("/v1/predict", content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_gzip_bodies_are_inflated_and_bounded(live):
    client, _, _, _ = live
    ok = client.post("/v1/predict", content=gzip.compress(json.dumps({"halos": [HALO]}).encode()),
                     headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert ok.status_code == 200 and len(ok.json()["predictions"]["smass"]) == 1
    bomb = gzip.compress(b'{"halos": [' + b" " * 50_000_000 + b"]}")  # 50 kB on the wire
    r = client.post("/v1/predict", content=bomb, headers={"content-type": "application/json",
                                                          "content-encoding": "gzip"})
    assert r.status_code == 413 and "inflated" in r.json()["detail"]
    r = client.post("/v1/predict", content=b"x", headers={"content-type": "application/json",
                                                          "content-encoding": "br"})
    assert r.status_code == 415


def test_gzip_csv_upload_bounded_after_decompression(live, tmp_path):
    client, _, df, _ = live
    big = df[list(FEATURE_NAMES)].iloc[:50].to_csv(index=False) + "\n".join(["12,1,0.04,1.2,3"] * 400_000)
    blob = gzip.compress(big.encode())
    assert len(blob) < 2_000_000 < len(big)
    r = client.post("/v1/jobs/paint", files={"file": ("halos.csv.gz", blob, "application/gzip")})
    assert r.status_code == 422 and "decompress" in r.json()["detail"].lower(), r.text


def test_pk_mesh_is_bounded(live):
    client, _, _, _ = live
    r = client.post("/v1/jobs/pk", json={"path": "halos.parquet", "nmesh": 128})
    assert r.status_code == 422 and "nmesh" in r.json()["detail"]


# ----------------------------------------------------------------------------- bad input -> 4xx JSON


@pytest.mark.parametrize("method,path,kwargs,status,field", [
    ("post", "/v1/predict", {"json": {"halos": [HALO], "model": "²"}}, 422, "model"),
    ("post", "/v1/predict", {"json": {"halos": [HALO], "model": "smass-raw-stack/99999999999999999999999"}},
     422, "model"),
    ("post", "/v1/predict", {"json": {"halos": [{**HALO, "M_h": 1e308}]}}, 422, "M_h"),
    ("post", "/v1/predict", {"content": b'{"halos": [{"M_h": 1e400, "C_h": 1, "S_h": 0.04, "z_h": 1, "Delta3_h": 2}]}',
                             "headers": {"content-type": "application/json"}}, 422, "M_h"),
    ("post", "/v1/models/smass-raw-stack/aliases", {"json": {"alias": "x", "version": 2**70}}, 422, "version"),
    ("post", "/v1/models/smass-raw-stack/aliases", {"json": {"alias": "bad alias", "version": 1}}, 422, "alias"),
    ("get", "/v1/jobs?limit=-1", {}, 422, "limit"),
    ("get", "/v1/jobs?limit=100000000000000000000000000", {}, 422, "limit"),
    ("get", "/v1/jobs?cursor=zzz", {}, 422, "cursor"),
    ("post", "/v2/models/smass-raw-stack/infer",
     {"json": {"inputs": [{"name": "halo_features", "shape": [1, 5], "datatype": "FP64", "data": "a"}]}}, 422, "data"),
    ("post", "/v2/models/smass-raw-stack/infer",
     {"json": {"inputs": [{"name": "halo_features", "shape": [1, 5], "datatype": "FP64", "data": {}}]}}, 422, "data"),
    ("post", "/v2/models/smass-raw-stack/infer",
     {"json": {"inputs": [{"name": "halo_features", "shape": [2, 5], "datatype": "FP64",
                           "data": [[12, 1, 0.04, 1, 2], [12, 1]]}]}}, 400, "data"),
    ("post", "/v2/models/smass-raw-stack/infer",
     {"json": {"inputs": [{"name": "halo_features", "shape": [1, 5], "datatype": "FP64", "data": ["a"] * 5}]}},
     400, "data"),
    ("post", "/v2/models/smass-raw-stack/infer",
     {"content": b'{"inputs": [{"name": "halo_features", "shape": [1, 5], "datatype": "FP64", "data": [1' + b"0" * 400
                 + b', 1, 0.04, 1, 2]}]}', "headers": {"content-type": "application/json"}}, 400, "data"),
    ("post", "/v2/models/smass-raw-stack/infer",
     {"json": {"inputs": [{"name": "halo_features", "shape": [1, 5], "datatype": "FP64", "data": [1e308] * 5}]}},
     422, "M_h"),
    ("get", "/v2/models/smass-raw-stack/versions/²", {}, 400, "version"),
    ("get", "/v2/models/smass-raw-stack/versions/99999999999999999999", {}, 422, "version"),
    ("post", "/v1/jobs/pk", {"json": {"path": "a\u0000b.parquet", "nmesh": 32}}, 422, "path"),
    ("post", "/v1/jobs/pk", {"json": {"path": "x" * 300 + ".parquet", "nmesh": 32}}, 422, "path"),
    ("post", "/v1/jobs/pk", {"json": {"path": "../../etc/passwd", "nmesh": 32}}, 403, "path"),
    ("post", "/v1/jobs/pk", {"json": {"path": ".galaxypaint-token", "nmesh": 32}}, 403, "path"),
    ("post", "/v1/jobs/paint", {"data": {"catalog": "/etc/passwd"}}, 403, "catalog"),
    ("get", "/v1/jobs/job-000000000000/result?part=path", {}, 404, "job_id"),
])
def test_bad_input_is_a_4xx_json_naming_the_field(live, method, path, kwargs, status, field):
    client, _, _, _ = live
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    message = body.get("detail") or body.get("error")
    assert field in message and body["request_id"] == r.headers["x-request-id"], body


def test_result_part_names_are_checked(live):
    client, _, _, _ = live
    done = wait_job(client, client.post("/v1/jobs/paint", data={"catalog": "halos.parquet",
                                                                "targets": "smass"}).json()["id"])
    assert done["status"] == "succeeded", done
    r = client.get(f"/v1/jobs/{done['id']}/result", params={"part": "path"})
    assert r.status_code == 422 and "part" in r.json()["detail"]
    assert client.get(f"/v1/jobs/{done['id']}/result").status_code == 200
    assert done["params"]["input"] == "halos.parquet"  # relative to the data directory, not the server's path


def test_request_ids_are_echoed_and_logged_with_an_audit_line(live):
    client, _, _, proc = live
    r = client.post("/v1/models/smass-raw-stack/aliases", json={"alias": "audited", "version": 1},
                    headers={"X-Request-ID": "trace-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
    junk = client.get("/v1/schema", headers={"X-Request-ID": "x" * 500})
    assert len(junk.headers["x-request-id"]) == 32  # junk is replaced, never echoed
    time.sleep(0.5)
    lines = [json.loads(line) for line in proc.log_path.read_text().splitlines() if line.startswith("{")]
    mine = [entry for entry in lines if entry.get("request_id") == "trace-42"]
    assert any(e.get("audit") and e["event"] == "alias.move" and e["scope"] == "admin" for e in mine), mine
    assert any(e.get("path") == "/v1/models/smass-raw-stack/aliases" and e.get("status") == 200 for e in mine)
    assert all("ts" in e and "level" in e for e in lines)


def test_metrics_endpoint(live):
    client, _, _, _ = live
    client.post("/v1/predict", json={"halos": [HALO] * 3, "targets": ["smass"]})
    text = client.get("/metrics").text
    assert 'galaxypaint_http_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert "galaxypaint_predictions_total" in text and "galaxypaint_jobs{" in text
    assert "galaxypaint_loaded_models" in text and "galaxypaint_http_request_seconds_bucket" in text


def test_cross_origin_state_changes_are_refused(live):
    client, _, _, _ = live
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        r = client.post("/v1/jobs/paint", data={"catalog": "halos.parquet"}, headers=headers)
        assert r.status_code == 403 and "origin" in r.json()["detail"], r.text
    same = client.post("/v1/predict", json={"halos": [HALO]}, headers={"Origin": str(client.base_url)})
    assert same.status_code == 200


def test_scopes_separate_painting_from_promotion(live):
    client, _, _, _ = live
    base = str(client.base_url)
    submit = {"Authorization": f"Bearer {SUBMIT_TOKEN}"}
    assert httpx.post(f"{base}/v1/jobs/paint", data={"catalog": "halos.parquet"}, headers=submit).status_code == 202
    assert httpx.get(f"{base}/v1/jobs", headers=submit).status_code == 200
    r = httpx.post(f"{base}/v1/models/smass-raw-stack/aliases", json={"alias": "x", "version": 1}, headers=submit)
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert httpx.get(f"{base}/v1/jobs").status_code == 401
    assert httpx.post(f"{base}/v1/predict", json={"halos": [HALO]}).status_code == 200  # prediction stays open


# ----------------------------------------------------------------------------- registry consistency


def test_concurrent_creation_of_a_new_alias(live):
    client, _, _, _ = live
    base, results = str(client.base_url), []

    def move():
        r = httpx.post(f"{base}/v1/models/sSFR-raw-stack/aliases", json={"alias": "race", "version": 1},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        results.append(r.status_code)

    threads = [threading.Thread(target=move) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 40


def test_alias_move_to_a_corrupt_version_is_refused_and_broken_models_answer_503(live):
    client, here, _, _ = live
    reg = Registry(here / "models", create=False)
    art = reg.get("smass-raw-lgbm").artefact
    art.write_bytes(art.read_bytes()[:-4] + b"XXXX")
    r = client.post("/v1/models/smass-raw-lgbm/aliases", json={"alias": "canary", "version": 1})
    assert r.status_code == 409 and "sha256" in r.json()["detail"]
    assert "canary" not in reg.get("smass-raw-lgbm", version=1).aliases
    v2 = client.post("/v2/models/smass-raw-lgbm/infer", json={"inputs": [
        {"name": "halo_features", "shape": [1, 5], "datatype": "FP64", "data": list(HALO.values())}]})
    assert v2.status_code == 503 and "sha256" in v2.json()["error"]


def test_loaded_sessions_are_capped(live):
    client, _, _, _ = live
    names = [m["name"] for m in client.get("/v1/models").json()["models"] if m["name"] != "smass-raw-lgbm"]
    assert len(names) >= 8
    for name in names:
        assert client.get(f"/v2/models/{name}/ready").status_code == 200
    text = client.get("/metrics").text
    loaded = float(next(line.split()[-1] for line in text.splitlines() if line.startswith("galaxypaint_loaded_models")))
    assert loaded <= 4 + 3  # the cap, plus the three production stacks, which stay loaded


# ----------------------------------------------------------------------------- jobs and crashes


def _job_workers(pid: int) -> list[int]:
    """Child processes of the server that run jobs (multiprocessing's spawned workers)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                out.append(int(child))
    return out


def test_a_killed_job_worker_fails_its_job_and_the_next_job_runs(live):
    client, _, _, proc = live
    before = set(_job_workers(proc.pid))
    job = client.post("/v1/jobs/paint", data={"catalog": "halos.parquet"})
    assert job.status_code == 202, job.text
    worker = None
    for _ in range(200):
        new = [c for c in _job_workers(proc.pid) if c not in before]
        if new:
            worker = new[0]
            break
        time.sleep(0.05)
    assert worker is not None, "no job worker process appeared"
    os.kill(worker, signal.SIGKILL)  # what the out-of-memory killer does
    failed = wait_job(client, job.json()["id"])
    assert failed["status"] == "failed" and "signal 9" in failed["error"], failed
    ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    ok = wait_job(client, client.post("/v1/jobs/paint", data={"catalog": "halos.parquet",
                                                              "targets": "smass"}).json()["id"])
    assert ok["status"] == "succeeded", ok


def test_token_is_generated_when_none_is_configured(trained_registry, tmp_path):
    root, _ = trained_registry
    data = tmp_path / "data"
    data.mkdir()
    write_table(trained_registry[1].iloc[:100], data / "h.parquet")
    proc, url = start_server(root / "models", data, token=None)
    try:
        token_file = data / ".galaxypaint-token"
        token = token_file.read_text().strip()
        assert len(token) >= 32 and stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert not any(p.name.endswith("token") for p in (root / "models").iterdir())
        anonymous = httpx.post(f"{url}/v1/jobs/paint", data={"catalog": "h.parquet"})
        assert anonymous.status_code == 401
        ok = httpx.post(f"{url}/v1/jobs/paint", data={"catalog": "h.parquet"},
                        headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 202, ok.text
    finally:
        stop_server(proc)
    assert token in proc.log_path.read_text()  # printed at start, as Jupyter does
    again, url = start_server(root / "models", data, token=None)  # the file is reused at the next start
    try:
        assert httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        stop_server(again)
