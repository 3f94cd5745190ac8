"""The layers' import contracts (pyproject.toml, ``[tool.importlinter]``) hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (dev extra)")
    run = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "0 broken" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]


def test_no_repeated_logic_across_the_tree():
    """pylint's duplicate-code check (8 similar lines, imports, comments and docstrings ignored)."""
    exe = shutil.which("pylint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("pylint is not installed (dev extra)")
    run = subprocess.run([exe, "--disable=all", "--enable=duplicate-code", "--rcfile", str(REPO / "pyproject.toml"),
                          "app", "training", "bench", "tests"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


RELEASE_0_1 = "41a97a7"  # the last commit of release 0.1.0 (the registry layout before migrations)


def _linear_graph(weights) -> bytes:
    """A tiny ``halo_features`` [N, 5] -> ``prediction`` [N, 1] graph: x @ weights."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.asarray(weights, dtype=np.float64).reshape(5, 1), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["halo_features", "w"], ["prediction"])], "linear",
                              [helper.make_tensor_value_info("halo_features", TensorProto.DOUBLE, [None, 5])],
                              [helper.make_tensor_value_info("prediction", TensorProto.DOUBLE, [None, 1])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8).SerializeToString()


def _old_module(path: str, name: str):
    shown = subprocess.run(["git", "-C", str(REPO), "show", f"{RELEASE_0_1}:{path}"], capture_output=True, text=True)
    if shown.returncode != 0:
        pytest.skip(f"release 0.1.0's {path} is not in this clone's history")
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    try:
        exec(compile(shown.stdout, f"{name}.py", "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module


def test_a_registry_written_by_release_0_1_opens_migrates_and_serves(tmp_path):
    """Written by 0.1.0's own code (from git history), opened by today's: migrated in place, then served."""
    pytest.importorskip("onnx")
    from fastapi.testclient import TestClient

    from app.api.jobs import JobStore
    from app.api.main import create_app
    from app.core.model import GalaxyModel
    from app.core.registry import MIGRATIONS, Registry
    from app.core.settings import Settings

    old_registry = _old_module("app/registry.py", "registry_0_1")
    old_jobs = _old_module("app/jobs.py", "jobs_0_1")
    root = tmp_path / "models"
    old = old_registry.Registry(root)
    old.record_run("run-0", 1, "f" * 64, {"targets": ["smass"]}, {}, {})
    w = [0.5, 0.1, 1.0, 0.2, 0.01]
    domain = {"M_h": {"min": 10.5, "max": 15.0}}
    old.publish("smass-raw-stack", _linear_graph(w), target="smass", path="raw", kind="stack", run_id="run-0",
                training_domain=domain, extra={"max_batch_rows": 4096}, aliases=("production",))
    old_job = old_jobs.JobStore(root / "registry.sqlite").create("paint", {"input": "x.parquet"})

    reg = Registry(root, create=False)
    mv = reg.get("smass-raw-stack")
    assert (mv.variant, mv.targets, mv.version, mv.aliases) == ("raw", ("smass",), 1, ("production",))
    with reg.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version FROM schema_version WHERE component='registry'").scalar() \
            == len(MIGRATIONS)
    x = np.array([[12.0, 1.0, 0.04, 1.2, 3.0], [11.0, 0.9, 0.05, 1.5, 1.0]])
    expected = x @ np.array(w)
    np.testing.assert_allclose(GalaxyModel.from_registry(reg).predict(x)["smass"], expected, rtol=0, atol=1e-12)
    assert JobStore(root / "registry.sqlite").get(old_job["id"])["status"] == "pending"
    Registry(root, create=False)  # opening again applies nothing twice
    settings = Settings(registry=root, data_dir=tmp_path / "data", admin_token="t")
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/predict", json={"columns": {f: x[:, j].tolist() for j, f in enumerate(
            ["M_h", "C_h", "S_h", "z_h", "Delta3_h"])}})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["predictions"]["smass"], expected, rtol=0, atol=1e-12)
        assert r.json()["variant"] == "raw" and r.json()["models"][0]["name"] == "smass-raw-stack"


def test_a_paint_job_uses_the_versions_it_was_accepted_with(tmp_path):
    """The route pins (name, version, sha256); moving the alias afterwards does not change the output."""
    pytest.importorskip("onnx")
    import time

    from fastapi.testclient import TestClient

    from app.api.main import create_app
    from app.core.catalogs import read_table, write_table
    from app.core.registry import Registry
    from app.core.settings import Settings

    reg = Registry(tmp_path / "models")
    v1 = reg.publish("smass-raw-stack", _linear_graph([1, 0, 0, 0, 0]), target="smass", variant="raw", kind="stack",
                     aliases=("production",))
    v2 = reg.publish("smass-raw-stack", _linear_graph([2, 0, 0, 0, 0]), target="smass", variant="raw", kind="stack")
    data = tmp_path / "data"
    halos = pd.DataFrame({"M_h": [11.0, 12.0, 13.0], "C_h": 1.0, "S_h": 0.04, "z_h": 1.0, "Delta3_h": 2.0})
    write_table(halos, data / "halos.parquet")
    settings = Settings(registry=tmp_path / "models", data_dir=data, admin_token="t")
    with TestClient(create_app(settings), headers={"Authorization": "Bearer t"}) as client:
        job = client.post("/v1/jobs/paint", data={"catalog": "halos.parquet"}).json()
        reg.set_alias("smass-raw-stack", "production", v2.version)  # moved right after acceptance
        assert job["params"]["models"] == [{"target": "smass", "name": "smass-raw-stack", "version": v1.version,
                                            "sha256": v1.sha256}]
        for _ in range(600):
            job = client.get(f"/v1/jobs/{job['id']}").json()
            if job["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.1)
        assert job["status"] == "succeeded", job
        painted = client.get(f"/v1/jobs/{job['id']}/result").content
    (tmp_path / "painted.parquet").write_bytes(painted)
    out = read_table(tmp_path / "painted.parquet")
    np.testing.assert_allclose(out["smass_pred"], halos["M_h"], rtol=0, atol=1e-12)  # v1: 1 x M_h, not 2 x
    meta = out.attrs["galaxypaint"]
    assert meta["models"][0]["version"] == v1.version and meta["models"][0]["sha256"] == v1.sha256
    assert meta["mode"] == "mean" and meta["id_column"] == "row number in the input file" and meta["galaxypaint"]
