"""Predicted-vs-true clustering: the comparison functions and the `galaxypaint pk` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from app.core.catalogs import write_table
from app.science.clustering import bin_edges, compare_bin, compare_catalog, summary_table
from app.science.power_spectrum import default_k_edges, gaussian_error, power_spectrum


from tests.conftest import run_cli as cli  # noqa: E402


def test_identical_populations_have_zero_chi2(demo_small):
    pos = demo_small[["x", "y", "z"]].to_numpy()[:20_000]
    edges = default_k_edges(205.0, 32)
    r = compare_bin(pos, pos, 205.0, 32, edges, target="smass", bin_index=0, edges=(8.8, 10.6))
    assert r.chi2 == 0.0 and r.rel_diff_pct == 0.0 and r.n_pred == r.n_true == 20_000
    ps = power_spectrum(pos, 205.0, 32, k_edges=edges, subtract_shot_noise=True)
    np.testing.assert_allclose(r.power_true, ps.power)
    np.testing.assert_allclose(r.sigma, gaussian_error(ps.power, edges, 205.0, 20_000 / 205.0**3))


def test_a_random_subsample_is_consistent_and_a_biased_one_is_not(demo_small):
    rng = np.random.default_rng(0)
    df = demo_small
    pos = df[["x", "y", "z"]].to_numpy()
    massive = df["M_h"].to_numpy() > np.quantile(df["M_h"], 0.8)
    random_pick = rng.random(len(df)) < 0.2
    edges = default_k_edges(205.0, 64, kmax=0.3)
    truth = pos[massive]
    same = compare_bin(pos[massive & (rng.random(len(df)) < 0.9)], truth, 205.0, 64, edges)
    other = compare_bin(pos[random_pick], truth, 205.0, 64, edges)
    assert same.chi2_dof < 1.0
    assert other.chi2_dof > 3.0  # unbiased randoms of all haloes cluster less than the massive ones


def test_compare_catalog_bins_by_predicted_and_true_values(demo_small):
    df = demo_small.copy()
    rng = np.random.default_rng(1)
    df["smass_pred"] = df["smass"] + rng.normal(0, 0.15, len(df))
    res = compare_catalog(df, 205.0, nmesh=32)
    assert [(r.target, r.bin) for r in res] == [("smass", 0), ("smass", 1)]
    lo, mid, hi = bin_edges()["smass"]
    assert res[0].n_true == int(((df.smass >= lo) & (df.smass < mid)).sum())
    assert res[1].n_pred == int(((df.smass_pred >= mid) & (df.smass_pred < hi)).sum())
    table = summary_table(res)
    assert list(table["bin"]) == [1, 2] and table["chi2_dof"].notna().all()
    with pytest.raises(ValueError, match="no predicted property column"):
        compare_catalog(demo_small, 205.0, nmesh=32)
    with pytest.raises(ValueError, match="lacks halo positions z"):
        compare_catalog(df.drop(columns="z"), 205.0, nmesh=32)
    with pytest.raises(ValueError, match="three increasing values"):
        bin_edges({"smass": [10, 9, 12]})


def test_pk_cli_writes_json_csv_and_figure(tmp_path, demo_small):
    df = demo_small.iloc[:15_000].copy()
    df["color_pred"] = df["color"] + np.random.default_rng(2).normal(0, 0.05, len(df))
    data = write_table(df, tmp_path / "painted.parquet")
    res = cli("pk", "--catalog", str(data), "--out", str(tmp_path / "pk"), "--nmesh", "32")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "color" in res.stdout and "chi2_dof" in res.stdout
    payload = json.loads((tmp_path / "pk" / "pk.json").read_text())
    assert [r["target"] for r in payload["results"]] == ["color", "color"]
    first = payload["results"][0]
    assert len(first["k"]) == len(first["power_pred"]) == len(first["sigma"]) > 5
    assert first["chi2"] is not None and first["n_true"] > 0
    assert (tmp_path / "pk" / "pk.png").stat().st_size > 10_000
    assert len(pd.read_csv(tmp_path / "pk" / "pk.csv")) == 2 * len(first["k"])


def test_pk_cli_failures_are_one_readable_line(tmp_path, demo_small):
    df = demo_small.iloc[:2000].copy()
    data = write_table(df, tmp_path / "nopred.parquet")
    res = cli("pk", "--catalog", str(data), "--out", str(tmp_path / "o"), "--nmesh", "16")
    assert res.returncode == 1 and "no predicted property column" in res.stderr and "Traceback" not in res.stderr
    df["smass_pred"] = df["smass"]
    data = write_table(df, tmp_path / "p.parquet")
    res = cli("pk", "--catalog", str(data), "--out", str(tmp_path / "o"), "--box", "100")
    assert res.returncode == 1 and "outside the box" in res.stderr
    res = cli("pk", "--catalog", str(data), "--out", str(tmp_path / "o"), "--bins", "smass=1:x:3")
    assert res.returncode == 1 and "NAME=LO:MID:HI" in res.stderr
