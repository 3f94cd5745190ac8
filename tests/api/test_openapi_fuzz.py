"""The OpenAPI schema tells the truth: schemathesis fuzzes a live server from it (bounded, seeded).

Zero server errors and zero responses that do not match the declared schema are the bar; documented
4xx answers (413, 404, 422, ...) are correct answers to hostile input, not failures.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TOKEN, start_server, stop_server


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_undocumented_response(trained_registry, tmp_path):
    pytest.importorskip("schemathesis")
    root, _ = trained_registry
    shutil.copytree(root / "models", tmp_path / "models")
    shutil.copytree(root / "data", tmp_path / "data")
    proc, url = start_server(tmp_path / "models", tmp_path / "data", GALAXYPAINT_MAX_PK_NMESH="32")
    try:
        cli = Path(sys.executable).with_name("schemathesis")
        run = subprocess.run(
            [str(cli), "run", f"{url}/openapi.json", "--checks", "not_a_server_error,response_schema_conformance",
             "--max-examples", "30", "--seed", "20261129", "--workers", "1", "--generation-database", "none",
             "--request-timeout", "60", "--no-color", "-H", f"Authorization: Bearer {TOKEN}",
             "--exclude-path", "/metrics"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    finally:
        stop_server(proc)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
