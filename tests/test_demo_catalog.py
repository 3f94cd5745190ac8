"""The built-in TNG300-like catalog: determinism, TNG300 moments, paper calibration, clustering."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.catalogs import validate
from app.core.schema import (CUTS, FEATURE_NAMES, PAPER_BIN_EDGES, PAPER_PEARSON_R, TARGET_NAMES,
                        TNG300_FEATURE_MOMENTS)
from training.demo_catalog import make_demo_catalog


def test_deterministic_for_a_seed():
    a = make_demo_catalog(n=2000, seed=11)
    b = make_demo_catalog(n=2000, seed=11)
    c = make_demo_catalog(n=2000, seed=12)
    assert a.equals(b)
    assert not np.allclose(a["M_h"], c["M_h"])


def test_schema_valid_cuts_and_box(demo_small):
    df = demo_small
    assert len(df) == 30_000
    validate(df, require=FEATURE_NAMES + TARGET_NAMES)
    assert (df["M_h"] > CUTS["M_h"]).all() and (df["smass"] > CUTS["smass"]).all()
    assert df[["x", "y", "z"]].min().min() >= 0 and df[["x", "y", "z"]].max().max() < 205.0
    assert df["ID"].is_unique


@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_feature_moments_match_tng300_within_10_percent(demo_small, name):
    mean, std = TNG300_FEATURE_MOMENTS[name]
    assert demo_small[name].mean() == pytest.approx(mean, rel=0.10)
    assert demo_small[name].std() == pytest.approx(std, rel=0.10)


def test_bimodal_star_formation_and_zero_sfr_fraction(demo_small):
    df = demo_small
    zero = df["_zero_sfr"].to_numpy()
    assert 0.11 < zero.mean() < 0.17  # TNG300: ~14% of centrals have SFR = 0
    # SFR=0 galaxies follow the paper's N(-13.5, 0.5)
    assert df.loc[zero, "sSFR"].mean() == pytest.approx(-13.5, abs=0.05)
    assert df.loc[zero, "sSFR"].std() == pytest.approx(0.5, abs=0.05)
    # red sequence and blue cloud: two peaks in g-i with a dip between them
    hist, edges = np.histogram(df["color"], bins=np.arange(0.2, 1.3, 0.05))
    centres = 0.5 * (edges[1:] + edges[:-1])
    blue_peak = hist[(centres > 0.4) & (centres < 0.85)].max()
    red_peak = hist[centres > 1.0].max()
    valley = hist[(centres > 0.9) & (centres < 1.0)].min()
    assert valley < 0.6 * red_peak and valley < 0.6 * blue_peak
    # quenched galaxies live in massive haloes
    assert df.loc[df["sSFR"] < -11, "M_h"].median() > df.loc[df["sSFR"] > -11, "M_h"].median() + 0.4


@pytest.mark.slow
def test_lightgbm_reaches_paper_pearson_r_and_importance_order(demo_small):
    lgb = pytest.importorskip("lightgbm")
    inspection = pytest.importorskip("sklearn.inspection")
    df = demo_small
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(df))
    train, test = idx[: int(0.6 * len(df))], idx[int(0.6 * len(df)):]
    x = df[list(FEATURE_NAMES)].to_numpy()
    for target in TARGET_NAMES:
        y = df[target].to_numpy()
        model = lgb.LGBMRegressor(n_estimators=300, learning_rate=0.05, num_leaves=31, min_child_samples=40,
                                  verbose=-1, random_state=0, n_jobs=2)
        model.fit(x[train], y[train])
        r = np.corrcoef(model.predict(x[test]), y[test])[0, 1]
        assert r == pytest.approx(PAPER_PEARSON_R[target], abs=0.04), target
        imp = inspection.permutation_importance(model, x[test], y[test], n_repeats=3, random_state=0,
                                                scoring="neg_mean_squared_error").importances_mean
        order = [FEATURE_NAMES[i] for i in np.argsort(-imp)]
        assert order[0] == "M_h", (target, order)
        if target in ("sSFR", "color"):
            assert order[1] == "z_h", (target, order)
        assert imp[FEATURE_NAMES.index("Delta3_h")] < 0.02 * imp[0], (target, imp)


def test_bins_cluster_differently_on_large_scales():
    from app.science.power_spectrum import power_spectrum

    df = make_demo_catalog(n=80_000, seed=3)
    pos = df[["x", "y", "z"]].to_numpy()
    ratios = {}
    for target, (lo, mid, hi) in PAPER_BIN_EDGES.items():
        amp = []
        for a, b in ((lo, mid), (mid, hi)):
            sel = (df[target] >= a) & (df[target] < b)
            ps = power_spectrum(pos[sel.to_numpy()], 205.0, nmesh=64, scheme="cic", interlacing=True,
                                subtract_shot_noise=True)
            m = ps.k < 0.1
            amp.append(np.sum(ps.power[m] * ps.modes[m]) / np.sum(ps.modes[m]))
        ratios[target] = np.sqrt(amp[1] / amp[0])
    # massive, large and red galaxies cluster more; star-forming ones (upper sSFR bin) less
    assert ratios["smass"] > 1.2, ratios
    assert ratios["radius"] > 1.2, ratios
    assert ratios["color"] > 1.1, ratios
    assert ratios["sSFR"] < 0.9, ratios
