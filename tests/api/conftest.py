"""A trained registry shared by the service tests, and a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

TOKEN = "s3cret-admin-token"
SUBMIT_TOKEN = "s3cret-submit-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(registry: Path, data_dir: Path, token: str | None = TOKEN, submit_token: str | None = None,
                 **env: str) -> tuple[subprocess.Popen, str]:
    """``galaxypaint serve`` in a subprocess; returns it once /health/live answers.  Its output (JSON log
    lines) goes to ``<data_dir>/../server-<port>.log``."""
    port = free_port()
    full_env = {**os.environ, "GALAXYPAINT_MAX_BATCH_HALOS": "1000", **env}
    for var in ("GALAXYPAINT_API_TOKEN", "GALAXYPAINT_ADMIN_TOKEN", "GALAXYPAINT_ALLOW_ANONYMOUS_WRITES"):
        if var not in env:
            full_env.pop(var, None)
    if token:
        full_env["GALAXYPAINT_ADMIN_TOKEN"] = token
    if submit_token:
        full_env["GALAXYPAINT_API_TOKEN"] = submit_token
    log = open(Path(data_dir).parent / f"server-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--registry",
                             str(registry), "--data-dir", str(data_dir), "--log-level", "info"],
                            env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health/live", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(Path(log.name).read_text())
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def trained_registry(trained):
    """The session's trained registry (``tests/conftest.py``) and its data directory."""
    return trained


def wait_job(client, job_id: str, timeout: float = 120) -> dict:
    t0 = time.time()
    job = {}
    while time.time() - t0 < timeout:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.get('status')}")
