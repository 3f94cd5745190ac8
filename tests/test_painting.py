"""Painting large catalogs: streaming I/O, Delta3_h from positions, the CLI, and the Dask engine."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

pytest.importorskip("lightgbm")

from app.core.catalog_stream import ChunkReader, ChunkWriter  # noqa: E402
from app.core.catalogs import CatalogError, read_table, write_table  # noqa: E402
from app.core.environment import delta3, delta3_slabs  # noqa: E402
from app.core.model import GalaxyModel  # noqa: E402
from app.painting.local import paint_file  # noqa: E402
from app.painting.spec import PaintSpec  # noqa: E402
from app.core.registry import Registry  # noqa: E402
from app.core.schema import FEATURE_NAMES  # noqa: E402
from training.demo_catalog import make_demo_catalog  # noqa: E402


from tests.conftest import run_cli as cli  # noqa: E402


@pytest.fixture(scope="module")
def registry(trained):
    return Registry(trained[0] / "models", create=False)


@pytest.mark.parametrize("ext", ["parquet", "hdf5", "csv"])
def test_streamed_paint_equals_whole_table_prediction(tmp_path, registry, demo_small, ext):
    cat = demo_small.drop(columns=["smass", "sSFR", "radius", "color"]).iloc[:7000]
    src = write_table(cat, tmp_path / f"halos.{ext}")
    out = tmp_path / f"painted.{ext}"
    seen = []
    summary = paint_file(PaintSpec.create(registry, src, out, chunk_rows=1000), registry,
                         progress=lambda d, n: seen.append((d, n)))
    painted = read_table(out)
    expected = GalaxyModel.from_registry(registry).predict(cat[list(FEATURE_NAMES)].to_numpy())
    assert summary["rows"] == 7000 and len(painted) == 7000 and seen[-1] == (7000, 7000) and len(seen) == 8
    for t in ("smass", "color"):
        np.testing.assert_allclose(painted[f"{t}_pred"].to_numpy(), expected[t], atol=1e-12)
    pd.testing.assert_frame_equal(painted[list(cat.columns)], cat.reset_index(drop=True), check_dtype=False)
    if ext != "csv":
        assert painted.attrs["galaxypaint"]["kind"] == "painted"


def test_bad_chunk_leaves_no_output_and_names_the_rows(tmp_path, registry, demo_small):
    cat = demo_small.iloc[:5000].copy()
    cat.loc[3456, "C_h"] = np.nan
    src = write_table(cat, tmp_path / "bad.parquet")
    out = tmp_path / "out.parquet"
    # rows are numbered in the file (as the --drop-invalid listing numbers them), not within the chunk
    with pytest.raises(CatalogError, match=r"rows 3,000-3,999: column C_h .* row 3456 .*--drop-invalid"):
        paint_file(PaintSpec.create(registry, src, out, chunk_rows=1000), registry)
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))
    res = cli("paint", "--catalog", str(src), "--out", str(out), "--registry", str(registry.root), "--chunk-rows", "1000")
    assert res.returncode == 1 and "rows 3,000-3,999" in res.stderr and "Traceback" not in res.stderr


def test_delta3_slabs_equal_one_global_tree():
    rng = np.random.default_rng(3)
    box = 100.0
    pos = rng.random((40_000, 3)) * box
    pos[:5000] = np.mod(rng.normal(50.0, 2.0, (5000, 3)), box)  # a cluster
    pos[5000:5100, 0] = rng.random(100) * 0.5  # haloes next to the periodic faces
    pos[5100:5200, 0] = box - rng.random(100) * 0.5
    expected = delta3(pos, pos, box)
    for slabs in (1, 4, 16):
        np.testing.assert_array_equal(delta3_slabs(pos, box, n_slabs=slabs), expected)


def test_compute_delta3_paints_a_catalog_without_it(tmp_path, registry, demo_small):
    cat = demo_small.iloc[:6000].drop(columns=["Delta3_h"])
    src = write_table(cat, tmp_path / "nodelta.parquet")
    res = cli("paint", "--catalog", str(src), "--out", str(tmp_path / "p.parquet"), "--registry", str(registry.root))
    assert res.returncode == 1 and "--compute-delta3" in res.stderr
    res = cli("paint", "--catalog", str(src), "--out", str(tmp_path / "p.parquet"), "--registry", str(registry.root),
              "--compute-delta3", "--box", "205", "--chunk-rows", "2000")
    assert res.returncode == 0, res.stderr[-1500:]
    painted = read_table(tmp_path / "p.parquet")
    np.testing.assert_allclose(painted["Delta3_h"], delta3(cat[["x", "y", "z"]].to_numpy(), cat[["x", "y", "z"]].to_numpy(), 205.0))
    assert "halos/s" in res.stdout and {"smass_pred", "color_pred"} <= set(painted.columns)


def test_chunk_writer_is_atomic_and_reader_maps_columns(tmp_path):
    out = tmp_path / "t.parquet"
    with pytest.raises(RuntimeError):
        with ChunkWriter(out) as w:
            w.write(pd.DataFrame({"a": [1.0, 2.0]}))
            raise RuntimeError("boom")
    assert not out.exists() and not list(tmp_path.iterdir())
    df = pd.DataFrame({"logM": [12.0, 13.0], "conc": [1.0, 1.1], "X_h": [1.0, 2.0]})
    src = write_table(df, tmp_path / "m.hdf5")
    with ChunkReader(src, "M_h=logM,C_h=conc") as r:
        assert r.columns == ["M_h", "C_h", "x"] and r.n_rows == 2
        assert r.read_rows(1, 2)["M_h"].tolist() == [13.0]


@pytest.mark.slow
def test_dask_local_cluster_paints_a_million_rows_like_the_local_engine(tmp_path, registry):
    pytest.importorskip("dask.distributed")
    rng = np.random.default_rng(4)
    n = 1_000_000
    base = make_demo_catalog(n=20_000, seed=5)
    cat = base.iloc[rng.integers(0, len(base), n)][list(FEATURE_NAMES) + ["x", "y", "z"]].reset_index(drop=True)
    src = write_table(cat, tmp_path / "big.parquet")
    local = paint_file(PaintSpec.create(registry, src, tmp_path / "local.parquet", targets=["smass", "color"]),
                       registry)
    res = cli("paint", "--catalog", str(src), "--out", str(tmp_path / "dask_out"), "--registry", str(registry.root),
              "--engine", "dask", "--dask-workers", "2", "--chunk-rows", "250000", "--targets", "smass,color")
    assert res.returncode == 0, res.stderr[-2000:]
    parts = sorted((tmp_path / "dask_out").glob("part-*.parquet"))
    assert len(parts) == 4
    dask_df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    local_df = read_table(local["output"])
    pd.testing.assert_frame_equal(dask_df, local_df, check_exact=True)


def test_out_of_range_features_are_refused_by_paint_and_predict_alike(tmp_path, registry, demo_small):
    """One policy for invalid inputs: refused by default (as the HTTP API does), painted with a warning
    under --lenient, in both `paint` and `predict`."""
    cat = demo_small.iloc[:2000].copy()
    cat.loc[1234, "C_h"] = 3.84  # above the schema's valid range [-1, 3]
    src = write_table(cat, tmp_path / "odd.parquet")
    root = str(registry.root)
    for command in (["paint", "--catalog", str(src), "--out", str(tmp_path / "p.parquet")],
                    ["predict", "--data", str(src), "--out", str(tmp_path / "q.parquet")]):
        strict = cli(*command, "--registry", root)
        assert strict.returncode == 1 and "C_h" in strict.stderr and "1234" in strict.stderr, strict.stderr
        last = strict.stderr.strip().splitlines()[-1]
        assert "Traceback" not in strict.stderr and last.startswith("galaxypaint: error:") and "C_h" in last
        lenient = cli(*command, "--registry", root, "--lenient")
        assert lenient.returncode == 0 and "warning" in lenient.stderr and "C_h" in lenient.stderr, lenient.stderr
    assert len(read_table(tmp_path / "p.parquet")) == len(read_table(tmp_path / "q.parquet")) == 2000
