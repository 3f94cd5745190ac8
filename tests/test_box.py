"""The box size comes from the catalog: recorded by the files galaxypaint writes, read back by every
command measuring clustering, required (``--box``, the API's ``box``) only where a catalog has none."""

from __future__ import annotations

import json
import httpx
import numpy as np
import pytest

from app.core.box import BoxError, recorded_box, resolve_box
from app.core.catalog_inspect import inspect_catalog
from app.core.catalog_stream import ChunkReader
from app.core.catalogs import read_table, write_table
from tests.api.conftest import TOKEN, start_server, stop_server, wait_job
from tests.conftest import run_cli


def test_resolve_box_prefers_the_given_box_and_says_when_it_overrides_the_recorded_one():
    assert resolve_box(None, {"galaxypaint": {"box": 100.0}}, "cat") == (100.0, [])
    assert resolve_box(None, {"box": 75.0, "redshift": 0.0}, "cat") == (75.0, [])  # ingest-tng's attrs
    assert resolve_box(100.0, {"galaxypaint": {"box": 100.0}}, "cat") == (100.0, [])
    box, warnings = resolve_box(205.0, {"galaxypaint": {"box": 100.0}}, "cat.parquet")
    assert box == 205.0 and warnings == ["--box 205 Mpc/h overrides the box cat.parquet records (100 Mpc/h)"]
    with pytest.raises(BoxError, match=r"^--box: cat.csv records no box size in its metadata: give --box L"):
        resolve_box(None, {}, "cat.csv")
    with pytest.raises(BoxError, match=r"^box: .*give box L"):
        resolve_box(None, {"galaxypaint": {"box": "n/a"}}, "x", option="box")
    with pytest.raises(BoxError, match="positive"):
        resolve_box(-1.0, {}, "x")
    for bad in (None, {}, {"galaxypaint": {"box": 0}}, {"galaxypaint": {"box": float("nan")}}, {"box": "205x"}):
        assert recorded_box(bad) is None


@pytest.fixture(scope="module")
def small_box_catalog():
    from training.demo_catalog import make_demo_catalog

    df = make_demo_catalog(n=3000, box=100.0, seed=3)
    df["smass_pred"] = df["smass"] + np.random.default_rng(0).normal(0, 0.1, len(df))
    return df


@pytest.mark.parametrize("ext", ["parquet", "hdf5", "csv"])
def test_written_catalogs_carry_their_box_and_every_reader_finds_it(tmp_path, small_box_catalog, ext):
    path = write_table(small_box_catalog, tmp_path / f"cat.{ext}")
    expected = None if ext == "csv" else 100.0  # CSV files carry no metadata
    assert recorded_box(read_table(path).attrs) == expected
    assert inspect_catalog(path, 10**9)["box"] == expected
    with ChunkReader(path) as reader:
        assert recorded_box(reader.metadata) == expected


def test_pk_reads_the_box_from_the_catalog_and_requires_box_without_one(tmp_path, small_box_catalog):
    parquet = write_table(small_box_catalog, tmp_path / "painted.parquet")
    res = run_cli("pk", "--catalog", str(parquet), "--out", str(tmp_path / "a"), "--nmesh", "16", "--targets", "smass")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "a" / "pk.json").read_text())["box"] == 100.0

    csv = write_table(small_box_catalog, tmp_path / "painted.csv")
    res = run_cli("pk", "--catalog", str(csv), "--out", str(tmp_path / "b"), "--nmesh", "16", "--targets", "smass")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (f"galaxypaint: error: --box: {csv} records no box size in its "
                                                   "metadata: give --box L (the periodic box side in Mpc/h)")
    res = run_cli("pk", "--catalog", str(csv), "--out", str(tmp_path / "b"), "--nmesh", "16", "--targets", "smass",
                  "--box", "100")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "b" / "pk.json").read_text())["box"] == 100.0

    res = run_cli("pk", "--catalog", str(parquet), "--out", str(tmp_path / "c"), "--nmesh", "16", "--targets",
                  "smass", "--box", "120")
    assert res.returncode == 0 and "--box 120 Mpc/h overrides the box" in res.stderr
    assert json.loads((tmp_path / "c" / "pk.json").read_text())["box"] == 120.0


def test_painted_and_predicted_files_record_the_box_so_their_pk_needs_none(tmp_path, trained):
    root, _ = trained
    registry, halos = root / "models", root / "data" / "halos.parquet"  # the demo catalog's box, 205
    out = tmp_path / "painted.parquet"
    res = run_cli("paint", "--catalog", str(halos), "--registry", str(registry), "--out", str(out),
                  "--targets", "smass")
    assert res.returncode == 0, res.stderr[-2000:]
    assert read_table(out).attrs["galaxypaint"]["box"] == 205.0
    res = run_cli("pk", "--catalog", str(out), "--out", str(tmp_path / "pk"), "--nmesh", "16", "--targets", "smass")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "pk" / "pk.json").read_text())["box"] == 205.0

    # so do predicted tables
    res = run_cli("predict", "--data", str(halos), "--registry", str(registry), "--out", str(tmp_path / "pred.parquet"),
                  "--targets", "smass")
    assert res.returncode == 0, res.stderr[-2000:]
    assert read_table(tmp_path / "pred.parquet").attrs["galaxypaint"]["box"] == 205.0

    # --compute-delta3 takes the recorded box; a CSV (no metadata) needs --box
    res = run_cli("paint", "--catalog", str(halos), "--registry", str(registry), "--out", str(tmp_path / "d3.parquet"),
                  "--targets", "smass", "--compute-delta3")
    assert res.returncode == 0, res.stderr[-2000:]
    meta = read_table(tmp_path / "d3.parquet").attrs["galaxypaint"]
    assert meta["box"] == 205.0 and meta["delta3"].startswith("computed")
    csv = write_table(read_table(halos), tmp_path / "halos.csv")
    res = run_cli("paint", "--catalog", str(csv), "--registry", str(registry), "--out", str(tmp_path / "x.parquet"),
                  "--targets", "smass", "--compute-delta3")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "--box" in res.stderr.strip().splitlines()[-1] and "records no box size" in res.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_train_without_a_recorded_box_asks_for_one_before_training(tmp_path, small_box_catalog):
    csv = write_table(small_box_catalog.drop(columns=["smass_pred"]), tmp_path / "train.csv")
    res = run_cli("train", "--data", str(csv), "--registry", str(tmp_path / "models"), "--targets", "smass",
                  "--models", "knn", "--no-sampler")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "--box" in last and "records no box size" in last and "--no-report" in last
    assert not (tmp_path / "models" / "registry.sqlite").exists()  # refused before any work


def test_pk_job_reads_the_box_from_the_catalog_or_refuses_without_one(tmp_path, trained):
    root, _ = trained
    data = tmp_path / "data"
    data.mkdir()
    painted = read_table(root / "data" / "halos.parquet")
    painted["smass_pred"] = painted["smass"]
    write_table(painted, data / "painted.parquet")  # carries the demo catalog's box (205)
    write_table(painted, data / "painted.csv")
    proc, url = start_server(root / "models", data)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            r = client.post("/v1/jobs/pk", json={"path": "painted.csv", "nmesh": 16, "targets": ["smass"]})
            assert r.status_code == 422 and r.json()["detail"].startswith("box: painted.csv records no box size")
            r = client.post("/v1/jobs/pk", json={"path": "painted.csv", "nmesh": 16, "targets": ["smass"], "box": 205})
            assert r.status_code == 202, r.text
            r2 = client.post("/v1/jobs/pk", json={"path": "painted.parquet", "nmesh": 16, "targets": ["smass"]})
            assert r2.status_code == 202, r2.text
            for job in (r.json(), r2.json()):
                done = wait_job(client, job["id"])
                assert done["status"] == "succeeded", done
                pk = client.get(f"/v1/jobs/{job['id']}/result", params={"part": "file"})
                assert pk.status_code == 200 and pk.json()["box"] == 205.0
    finally:
        stop_server(proc)
