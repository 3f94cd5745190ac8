"""The galaxypaint console script, run as a user would (a real subprocess)."""

from __future__ import annotations

import subprocess
import sys

from app.core.catalogs import read_table


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_demo_data_writes_summarized_catalog_with_metadata(tmp_path):
    out = tmp_path / "demo.parquet"
    res = run("demo-data", "--out", str(out), "--n", "3000", "--seed", "5")
    assert res.returncode == 0, res.stderr
    assert "3,000 central galaxies" in res.stdout and "TNG300" in res.stdout
    df = read_table(out)
    assert len(df) == 3000
    assert df.attrs["galaxypaint"]["seed"] == 5 and df.attrs["galaxypaint"]["kind"] == "demo-catalog"
    assert {"x", "y", "z", "M_h", "smass"} <= set(df.columns)


def test_inspect_reports_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("M_h,C_h,S_h,z_h\n11.2,1.0,0.04,1.0\n")
    res = run("inspect", str(bad))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("galaxypaint: error: missing column Delta3_h")
    assert "Traceback" not in res.stderr


def test_inspect_real_rows_with_mapping(tmp_path, shared_dir):
    res = run("inspect", str(shared_dir / "data" / "tng300_sample10.csv"), "--targets")
    assert res.returncode == 0, res.stderr
    assert "10 rows" in res.stdout


def test_usage_errors_exit_2():
    res = run("demo-data")
    assert res.returncode == 2 and "--out" in res.stderr
    res = run("demo-data", "--out", "x.parquet", "--n", "0")
    assert res.returncode == 1 and "--n must be a positive" in res.stderr
    res = run("demo-data", "--out", "x.xlsx")
    assert res.returncode == 1 and "cannot tell the format" in res.stderr
