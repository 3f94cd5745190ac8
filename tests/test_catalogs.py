from __future__ import annotations

import os

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from app.catalogs import (CatalogError, canonicalize, load_catalog, parse_column_mapping, read_table,
                          validate, write_table)
from app.schema import FEATURE_NAMES, TARGET_NAMES


def _halos(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "ID": np.arange(n), "x": rng.random(n) * 100, "y": rng.random(n) * 100, "z": rng.random(n) * 100,
        "M_h": 11 + rng.random(n), "C_h": 1 + 0.1 * rng.standard_normal(n), "S_h": 0.05 * rng.random(n) + 0.01,
        "z_h": 1 + rng.random(n), "Delta3_h": 3 * rng.random(n),
        "smass": 9.5 + rng.random(n), "sSFR": -10 - rng.random(n), "radius": 0.5 + 0.1 * rng.random(n),
        "color": 0.7 + 0.1 * rng.random(n),
    })


@pytest.mark.parametrize("ext", ["csv", "parquet", "hdf5", "h5"])
def test_roundtrip_every_format(tmp_path, ext):
    df = _halos()
    path = write_table(df, tmp_path / f"cat.{ext}", metadata={"seed": 3, "kind": "test"})
    back = read_table(path)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    if ext != "csv":
        assert back.attrs["galaxypaint"] == {"seed": 3, "kind": "test"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_hdf5_layout_is_one_dataset_per_column(tmp_path):
    path = write_table(_halos(), tmp_path / "cat.hdf5", hdf5_key="halos")
    with h5py.File(path) as f:
        assert set(f["halos"].keys()) >= set(FEATURE_NAMES)
        assert f["halos/M_h"].shape == (50,)
    assert len(read_table(path)) == 50  # single group found without a key
    assert len(read_table(path, hdf5_key="halos")) == 50
    with pytest.raises(CatalogError, match="no group 'nope'"):
        read_table(path, hdf5_key="nope")


def test_real_tng300_rows_load_with_published_names(shared_dir):
    df, report = load_catalog(shared_dir / "data" / "tng300_sample10.csv",
                              require=FEATURE_NAMES + TARGET_NAMES)
    assert len(df) == 10 and report.warnings == []
    for col in ("x", "y", "z"):
        assert col in df.columns
    assert "x_g" in df.columns  # galaxy positions are not mistaken for halo positions
    assert df.loc[0, "x"] == pytest.approx(37.15546484375)
    assert df["smass"].between(8.75, 12).all()


def test_column_mapping_and_aliases(tmp_path):
    df = _halos().rename(columns={"M_h": "logMvir", "smass": "stellar_mass", "x": "X_h"})
    path = write_table(df, tmp_path / "cat.parquet")
    out = read_table(path, mapping="M_h=logMvir")
    assert {"M_h", "smass", "x"} <= set(out.columns)
    assert parse_column_mapping(["M_h=a", "c_h=b"]) == {"M_h": "a", "C_h": "b"}
    with pytest.raises(CatalogError, match="not of the form"):
        parse_column_mapping("M_h")
    with pytest.raises(CatalogError, match="'bogus'"):
        parse_column_mapping("bogus=a")
    with pytest.raises(CatalogError, match="'nothere'.*not in the table"):
        read_table(path, mapping={"M_h": "nothere"})


def test_exact_canonical_name_wins_over_alias():
    df = pd.DataFrame({"X_h": [1.0], "x": [2.0]})
    out = canonicalize(df)
    assert out["x"].iloc[0] == 2.0 and "X_h" in out.columns


def test_missing_column_is_named(tmp_path):
    path = write_table(_halos().drop(columns=["C_h", "z_h"]), tmp_path / "cat.csv")
    with pytest.raises(CatalogError, match="missing columns C_h, z_h"):
        load_catalog(path)


def test_non_numeric_value_is_located(tmp_path):
    df = _halos().astype({"S_h": object})
    df.loc[3, "S_h"] = "high"
    path = write_table(df, tmp_path / "cat.csv")
    with pytest.raises(CatalogError, match=r"column S_h is not numeric: row 3 \(0-based\), e.g. 'high'"):
        load_catalog(path)


def test_nan_and_inf_are_counted_and_located(tmp_path):
    df = _halos()
    df.loc[[4, 7], "z_h"] = np.nan
    df.loc[9, "z_h"] = np.inf
    with pytest.raises(CatalogError, match=r"column z_h has 3 missing or non-finite values .* rows 4, 7, 9"):
        validate(df)


def test_out_of_range_error_or_warning():
    df = _halos()
    df.loc[2, "M_h"] = 17.5
    with pytest.raises(CatalogError, match=r"M_h has 1 value outside the valid range \[8, 16.5\].*17.5"):
        validate(df)
    report = validate(df, range_policy="warn")
    assert len(report.warnings) == 1 and "M_h" in report.warnings[0]
    assert validate(df, range_policy="ignore").warnings == []


def test_bad_split_values():
    df = _halos()
    df["split"] = ["train"] * 40 + ["validation"] * 10
    with pytest.raises(CatalogError, match="split must hold train, val, test"):
        validate(df)


def test_unreadable_and_empty_files(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not a parquet file")
    with pytest.raises(CatalogError, match="cannot read .*bad.parquet as parquet"):
        read_table(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("M_h,C_h\n")
    with pytest.raises(CatalogError, match="holds no rows"):
        read_table(empty)
    with pytest.raises(CatalogError, match="cannot tell the format"):
        read_table(write_table(_halos(), tmp_path / "x.csv").rename(tmp_path / "x.dat"))


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    path = write_table(_halos(10), tmp_path / "cat.parquet")
    before = path.read_bytes()

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    df = _halos(10)
    df["bad"] = [Boom()] * 10  # pyarrow cannot convert this column
    with pytest.raises(Exception):
        write_table(df, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.parquet"]
    assert pq.read_table(path).num_rows == 10
    assert os.access(path, os.R_OK)
