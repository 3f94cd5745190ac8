from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.core import catalog_inspect
from app.core.catalog_inspect import inspect_catalog, inspect_catalog_isolated
from app.core.catalog_stream import ChunkReader
from app.core.catalogs import (CatalogError, canonicalize, load_catalog, parse_column_mapping, read_table,
                          validate, write_table)
from app.core.schema import FEATURE_NAMES, TARGET_NAMES


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


# --- Untrusted files: HDF5 must not read outside itself; decompressed sizes are bounded. -------

_SECRET = b"hunter2!"  # 8 bytes: one float64 per copy


def _upload_reaching_outside(tmp_path, kind):
    """A catalog whose M_h column is not stored in the file (``kind`` says how it gets out)."""
    n = 20
    path = write_table(_halos(n), tmp_path / "upload.hdf5")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(_SECRET * n)
    outside = tmp_path / "other.h5"
    with h5py.File(outside, "w") as g:
        g["M_h"] = np.frombuffer(_SECRET * n, dtype="f8")
    with h5py.File(path, "a") as f:
        del f["M_h"]
        if kind == "external_storage":
            f.create_dataset("M_h", shape=(n,), dtype="f8", external=[(str(secret), 0, n * 8)])
        elif kind == "external_link":
            f["M_h"] = h5py.ExternalLink(str(outside), "/M_h")
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(n,), dtype="f8")
            layout[:] = h5py.VirtualSource(str(outside), "M_h", shape=(n,))
            f.create_virtual_dataset("M_h", layout)
        else:  # a soft link: it stays in the file, but only hard links are followed
            f["hidden/M_h"] = np.full(n, 12.0)
            f["M_h"] = h5py.SoftLink("/hidden/M_h")
    return path


_OUTSIDE = {
    "external_storage": r"dataset 'M_h' in upload.hdf5 keeps its data in the external file .*secret.bin",
    "external_link": r"member 'M_h' in upload.hdf5 is an external link to .*other.h5",
    "virtual": r"dataset 'M_h' in upload.hdf5 is a virtual dataset",
    "soft_link": r"member 'M_h' in upload.hdf5 is a soft link to /hidden/M_h",
}


@pytest.mark.parametrize("kind", list(_OUTSIDE))
def test_hdf5_data_outside_the_file_is_refused(tmp_path, kind):
    path = _upload_reaching_outside(tmp_path, kind)
    why = _OUTSIDE[kind]
    readers = [lambda: read_table(path), lambda: ChunkReader(path),
               lambda: inspect_catalog(path, max_bytes=1 << 20)]
    for read in readers:
        with pytest.raises(CatalogError, match=why) as exc:
            read()
        assert "hunter2" not in str(exc.value)


def test_hdf5_plugin_filter_is_refused(tmp_path):
    path = write_table(_halos(20), tmp_path / "upload.hdf5")
    with h5py.File(path, "a") as f:
        del f["C_h"]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((20,))
        # Optional and not installed, so HDF5 writes the data unfiltered; a reader would still
        # look the filter up, which for an unknown id means loading a plugin library.
        dcpl.set_filter(307, h5py.h5z.FLAG_OPTIONAL)
        space = h5py.h5s.create_simple((20,))
        h5py.h5d.create(f.id, b"C_h", h5py.h5t.IEEE_F64LE, space, dcpl=dcpl).write(
            h5py.h5s.ALL, h5py.h5s.ALL, np.ones(20))
    for read in (lambda: read_table(path), lambda: ChunkReader(path)):
        with pytest.raises(CatalogError, match=r"dataset 'C_h' in upload.hdf5 uses HDF5 filter 307"):
            read()


def test_compressed_hdf5_reads_and_its_decompressed_size_is_bounded(tmp_path):
    df = _halos(5000)
    path = tmp_path / "cat.hdf5"
    with h5py.File(path, "w") as f:
        g = f.create_group("halos")
        for i, name in enumerate(df.columns):
            opts = ({"compression": "lzf"} if i % 2 else
                    {"compression": "gzip", "shuffle": True, "fletcher32": True})
            g.create_dataset(name, data=df[name].to_numpy(), chunks=(1000,), **opts)
    assert path.stat().st_size < 5000 * 8 * len(df.columns)
    pd.testing.assert_frame_equal(read_table(path)[list(df.columns)], df, check_dtype=False)
    with ChunkReader(path) as reader:
        assert reader.n_rows == 5000
        assert sum(len(c) for _, c in reader.chunks(1500)) == 5000
    decoded = 5000 * 8 * len(df.columns)
    summary = inspect_catalog(path, max_bytes=decoded)
    assert summary == {"format": "hdf5", "rows": 5000, "columns": sorted(df.columns), "bytes": decoded,
                       "box": None}
    too_big = f"decompressed size of cat.hdf5 \\({decoded:,} bytes\\) exceeds the limit of {decoded - 1:,} bytes"
    with pytest.raises(CatalogError, match=too_big):
        inspect_catalog(path, max_bytes=decoded - 1)
    with pytest.raises(CatalogError, match=too_big):
        ChunkReader(path, max_bytes=decoded - 1)
    # a file written by write_table (chunked datasets in a group) passes the checks too
    written = write_table(df, tmp_path / "written.hdf5", hdf5_key="halos")
    assert inspect_catalog(written, max_bytes=decoded)["columns"] == list(df.columns)


def _gzip_csv(path, rows):
    with gzip.open(path, "wt") as fh:
        fh.write("M_h,C_h,S_h\n" + "11.5,1.0,0.05\n" * rows)
    return path


def test_inspect_refuses_a_gzip_csv_that_decompresses_beyond_the_limit(tmp_path):
    bomb = _gzip_csv(tmp_path / "bomb.csv.gz", 200_000)  # 2.8 MB of text, a few kB on disk
    assert bomb.stat().st_size < 50_000
    with pytest.raises(CatalogError, match=r"decompressed size of bomb.csv.gz \(at least [\d,]+ bytes\) "
                                           r"exceeds the limit of 1,000,000 bytes"):
        inspect_catalog(bomb, max_bytes=1_000_000)
    with pytest.raises(CatalogError, match="exceeds the limit of 1,000,000 bytes"):
        ChunkReader(bomb, max_bytes=1_000_000)
    disguised = tmp_path / "plain.csv"  # gzip found by its magic bytes, not its name
    disguised.write_bytes(bomb.read_bytes())
    with pytest.raises(CatalogError, match="exceeds the limit"):
        inspect_catalog(disguised, max_bytes=1_000_000)
    small = _gzip_csv(tmp_path / "small.csv.gz", 10)
    summary = inspect_catalog(small, max_bytes=1_000_000)
    assert summary == {"format": "csv", "rows": 10, "columns": ["M_h", "C_h", "S_h"], "bytes": 12 + 14 * 10, "box": None}
    with ChunkReader(small, max_bytes=1_000_000) as reader:
        assert reader.n_rows == 10 and len(reader.read_columns(["M_h"])) == 10


def test_inspect_refuses_parquet_whose_decoded_size_exceeds_the_limit(tmp_path):
    path = tmp_path / "cat.parquet"
    pq.write_table(pa.table({"M_h": np.full(100_000, 11.5)}), path, compression="zstd")
    # Dictionary/RLE encoding makes the footer's "uncompressed" size tiny; decoding gives 800 kB.
    assert pq.ParquetFile(path).metadata.row_group(0).total_byte_size < 10_000
    with pytest.raises(CatalogError, match=r"decompressed size of cat.parquet \(800,000 bytes\) "
                                           r"exceeds the limit of 500,000 bytes"):
        inspect_catalog(path, max_bytes=500_000)
    with pytest.raises(CatalogError, match="exceeds the limit of 500,000 bytes"):
        ChunkReader(path, max_bytes=500_000)
    assert inspect_catalog(path, max_bytes=800_000) == {
        "format": "parquet", "rows": 100_000, "columns": ["M_h"], "bytes": 800_000, "box": None}


def test_inspect_isolated_gives_the_same_answers_as_in_process(tmp_path):
    good = write_table(_halos(30), tmp_path / "cat.hdf5")
    assert inspect_catalog_isolated(good, 1 << 20) == inspect_catalog(good, 1 << 20)
    bomb = _gzip_csv(tmp_path / "bomb.csv.gz", 200_000)
    with pytest.raises(CatalogError) as in_process:
        inspect_catalog(bomb, 1_000_000)
    with pytest.raises(CatalogError) as isolated:
        inspect_catalog_isolated(bomb, 1_000_000)
    assert str(isolated.value) == str(in_process.value)


def test_inspect_isolated_turns_a_crash_or_a_hang_into_a_readable_error(tmp_path, monkeypatch):
    good = write_table(_halos(5), tmp_path / "cat.csv")
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    monkeypatch.setattr(catalog_inspect, "_inspector_command", lambda path, max_bytes: crash)
    with pytest.raises(CatalogError, match=r"^the file could not be inspected safely "
                                           r"\(the inspector crashed: signal SIGKILL\)$"):
        inspect_catalog_isolated(good, 1 << 20)
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    monkeypatch.setattr(catalog_inspect, "_inspector_command", lambda path, max_bytes: hang)
    with pytest.raises(CatalogError, match=r"inspector took longer than 0.5 s"):
        inspect_catalog_isolated(good, 1 << 20, timeout=0.5)


def test_inspect_command_line_exit_codes(tmp_path):
    good = write_table(_halos(5), tmp_path / "cat.parquet")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "app.core.catalog_inspect", *map(str, args)],
                              capture_output=True, text=True)

    ok = run(good, "--max-bytes", 1 << 20)
    assert ok.returncode == 0 and ok.stdout.count("\n") == 1
    assert json.loads(ok.stdout)["rows"] == 5
    refused = run(good, "--max-bytes", 10)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "exceeds the limit of 10 bytes" in refused.stderr
    assert run(good).returncode == 2
