"""The statistics that judge a sampled galaxy catalog (``app.science.populations``) on cases with known
answers, and the exact redraw of the built-in catalog's galaxies (``training.demo_catalog.redraw_galaxies``)
that gives their null distribution (``bench/sampler_null.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from app.core.schema import CUTS, PAPER_BIN_EDGES, TARGET_NAMES
from app.science import populations as pop
from app.science.clustering import compare_bin
from app.science.power_spectrum import default_k_edges
from app.core.sampling import crps_gaussian
from training.demo_catalog import DEFAULT_MODEL, TNG300_BOX, _smass_mean, recover_latents, redraw_galaxies

REPO = Path(__file__).resolve().parents[1]
TARGETS = list(TARGET_NAMES)

#: column sums of make_demo_catalog(n=30_000, seed=7, with_latent=True), measured before the galaxy part
#: of the generator became a function shared with redraw_galaxies
PINNED_SUMS_N30000_SEED7 = {
    "ID": 449985000.0, "x": 3121833.479113913, "y": 3040521.792246064, "z": 3160656.3005949436,
    "M_h": 347102.8758380946, "C_h": 30796.88124834146, "S_h": 1459.8388148903941, "z_h": 40225.64408386457,
    "Delta3_h": 88916.5190534749, "smass": 288040.0033646731, "sSFR": -311034.75028403406,
    "radius": 15881.146970029167, "color": 19530.32738676535, "_age": 1224.966725431464,
    "_quenched": 5649.0, "_zero_sfr": 4517.0,
}


def _normal_catalog(n: int, seed: int):
    """Haloes with a known heteroscedastic normal law per property: m_h [N], mean and sd [N, 4], one draw."""
    rng = np.random.default_rng(seed)
    m_h = rng.uniform(10.5, 14.0, n)
    mu = np.stack([m_h - 2.0, -10.0 - 0.3 * (m_h - 12), 0.5 + 0.1 * m_h, np.full(n, 0.7)], axis=1)
    sd = np.stack([0.1 + 0.05 * (m_h - 10.5), np.full(n, 0.4), 0.2 - 0.02 * (m_h - 10.5), np.full(n, 0.25)], axis=1)
    return m_h, mu, sd, mu + sd * rng.standard_normal((n, 4))


# ----------------------------------------------------------------------------- the generator


def test_make_demo_catalog_is_unchanged_for_a_seed(demo_small):
    assert list(demo_small.columns) == list(PINNED_SUMS_N30000_SEED7)
    for col, total in PINNED_SUMS_N30000_SEED7.items():
        assert float(demo_small[col].astype(float).sum()) == pytest.approx(total, rel=1e-9, abs=0), col


def test_latents_are_recovered_from_the_features(demo_small):
    latents = recover_latents(demo_small)
    np.testing.assert_allclose(latents.age, demo_small["_age"], rtol=0, atol=1e-9)
    # the spin deviation and the concentration deviation give back the features they made
    m = DEFAULT_MODEL
    s_h = m.spin_median * np.exp(m.spin_sigma * latents.spin_dev - m.spin_age_coupling * latents.age)
    np.testing.assert_allclose(s_h, demo_small["S_h"], rtol=1e-12)
    c_h = m.c0 + m.c_mass_slope * (latents.log_m - 12.0) + m.c_sigma * latents.conc_dev
    np.testing.assert_allclose(c_h, demo_small["C_h"], rtol=1e-12)


def _joint_law_checks(y, y_true) -> dict[str, bool]:
    """The three checks of "the same joint distribution": K-S D per property within the two-sample critical
    value at alpha = 0.001, the correlation matrix within 0.03, the 8 bin fractions within 4 standard errors of
    the difference of two binomial fractions (sqrt(2 p (1 - p) / n))."""
    n = len(y_true)
    crit = pop.ks_critical_value(n, len(y), 0.001)
    p_true, p = pop.bin_counts(y_true) / n, pop.bin_counts(y) / len(y)
    return {"ks": all(d <= crit for d in pop.ks_per_property(y, y_true).values()),
            "corr": bool(np.abs(np.corrcoef(y.T) - np.corrcoef(y_true.T)).max() <= 0.03),
            "bins": bool(np.all(np.abs(p - p_true) <= 4.0 * np.sqrt(2.0) * pop.binomial_se(p_true, n)))}


def test_redraw_reproduces_the_catalogs_joint_distribution(demo_small):
    y_true = demo_small[TARGETS].to_numpy()
    redrawn = redraw_galaxies(demo_small, seed=1)
    assert list(redrawn.columns) == TARGETS and redrawn.index.equals(demo_small.index)
    assert (redrawn["smass"] > CUTS["smass"]).all()  # the catalog's selection, by rejection
    assert _joint_law_checks(redrawn.to_numpy(), y_true) == {"ks": True, "corr": True, "bins": True}
    # a new galaxy per halo, not a copy: same law, other values
    assert not np.any(np.isclose(redrawn["color"].to_numpy(), y_true[:, 3], rtol=0, atol=1e-12))


def test_the_joint_law_checks_catch_a_slightly_wrong_law(demo_small):
    """The same checks fail for a generator whose blue-cloud colour scatter is 0.20 mag instead of 0.23."""
    wrong = replace(DEFAULT_MODEL, blue_color_scatter=0.20)
    checks = _joint_law_checks(redraw_galaxies(demo_small, 1, wrong).to_numpy(), demo_small[TARGETS].to_numpy())
    assert not checks["ks"] and not checks["corr"]


def test_redraw_is_deterministic_and_conditional_on_the_halo(demo_small):
    halos = demo_small.iloc[:2000]
    a, b = redraw_galaxies(halos, 5), redraw_galaxies(halos, 5)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not np.allclose(a["sSFR"], redraw_galaxies(halos, 6)["sSFR"])
    # positions and Delta3_h carry no information once the latents are known: the law reads M_h, C_h, S_h, z_h
    pd.testing.assert_frame_equal(a, redraw_galaxies(halos[["M_h", "C_h", "S_h", "z_h"]], 5), check_exact=True)
    # many draws for one halo whose E[smass] sits at the cut: its stellar mass is the truncated normal
    # N(E[smass | halo], 0.155^2) above 8.75, whose mean is ~0.8 sigma above the untruncated one
    mean_all = _smass_mean(recover_latents(demo_small), DEFAULT_MODEL)
    row = int(np.argmin(np.abs(mean_all - CUTS["smass"])))
    draws = redraw_galaxies(demo_small.iloc[np.full(20_000, row)], 9)["smass"].to_numpy()
    sigma = DEFAULT_MODEL.smass_scatter
    law = stats.truncnorm((CUTS["smass"] - mean_all[row]) / sigma, np.inf, loc=mean_all[row], scale=sigma)
    assert draws.min() > CUTS["smass"]
    assert draws.mean() == pytest.approx(law.mean(), abs=4 * law.std() / np.sqrt(draws.size))
    assert draws.std() == pytest.approx(law.std(), rel=0.03)


def test_redraw_refuses_haloes_that_cannot_pass_the_cut():
    far_below = pd.DataFrame({"M_h": [10.6], "C_h": [1.0], "S_h": [0.04], "z_h": [0.5]})  # E[smass] ~ 7.5
    with pytest.raises(ValueError, match="not those of a catalog halo"):
        redraw_galaxies(far_below, 0)


# ----------------------------------------------------------------------------- marginals and the joint law


def test_ks_distance_known_answers():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(40_000), rng.standard_normal(30_000) + 0.5
    assert pop.ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-15)
    # two normals shifted by delta: sup |F_a - F_b| = Phi(delta / 2) - Phi(-delta / 2)
    assert pop.ks_statistic(a, b) == pytest.approx(2 * special.ndtr(0.25) - 1, abs=0.02)
    assert pop.ks_statistic([1.0, 2.0], [3.0, 4.0]) == 1.0
    y = np.column_stack([a[:1000], a[1000:2000], b[:1000], b[1000:2000]])
    assert pop.ks_per_property(y, y) == {t: 0.0 for t in TARGET_NAMES}
    assert pop.ks_critical_value(1000, 1000, 0.05) == pytest.approx(1.358 * np.sqrt(2 / 1000), rel=1e-3)


def test_correlations_by_mass_quartile_known_answer():
    """Equicorrelated normals whose correlation rises with the mass quartile: 0.1, 0.3, 0.5, 0.7."""
    rng = np.random.default_rng(1)
    n = 80_000
    m_h = rng.uniform(11.0, 13.0, n)
    rho = 0.1 + 0.2 * np.floor((m_h - 11.0) / 0.5)
    common, own = rng.standard_normal(n), rng.standard_normal((n, 4))
    y = np.sqrt(rho)[:, None] * common[:, None] + np.sqrt(1 - rho)[:, None] * own
    corr = pop.correlations_by_mass_quartile(y, m_h)
    assert corr.shape == (4, 6) and len(pop.PAIR_NAMES) == 6
    np.testing.assert_allclose(corr, np.repeat([[0.1], [0.3], [0.5], [0.7]], 6, axis=1), atol=0.03)
    same = pop.correlation_difference(y, y, m_h)
    assert same["max_abs_overall"] == 0.0 and np.all(same["max_abs"] == 0.0)
    shifted = pop.correlation_difference(y, np.column_stack([y[:, :3], own[:, 3]]), m_h)
    assert shifted["max_abs"] == pytest.approx([0.1, 0.3, 0.5, 0.7], abs=0.03)


# ----------------------------------------------------------------------------- calibration


def test_intervals_of_the_true_normal_law_cover_68_and_95_percent():
    n = 60_000
    m_h, mu, sd, y = _normal_catalog(n, 2)
    levels = [*pop.central_levels(0.68), *pop.central_levels(0.95)]
    q = mu[:, :, None] + sd[:, :, None] * special.ndtri(np.array(levels))  # [N, 4, 4]
    cov = pop.interval_coverage(q[:, :, [0, 2]], q[:, :, [1, 3]], y, m_h)
    nominal = np.array([0.68, 0.95])
    assert cov["overall"].shape == (4, 2) and cov["by_quartile"].shape == (4, 4, 2)
    assert np.all(np.abs(cov["overall"] - nominal) <= 4 * pop.binomial_se(nominal, n))
    se_q = pop.binomial_se(nominal, cov["n_by_quartile"][:, None, None])
    assert np.all(np.abs(cov["by_quartile"] - nominal) <= 4 * se_q)
    # [N, 4] intervals, one level; intervals 20 % too narrow cover too little
    narrow = pop.interval_coverage(mu - 0.8 * sd, mu + 0.8 * sd, y, m_h)
    assert narrow["overall"] == pytest.approx(np.full(4, 2 * special.ndtr(0.8) - 1), abs=4 * np.sqrt(0.25 / n))
    assert np.all(narrow["overall"] < 0.68 - 4 * pop.binomial_se(0.68, n))


def test_pit_histogram_is_flat_for_the_true_law_and_u_shaped_when_too_narrow():
    m_h, mu, sd, y = _normal_catalog(50_000, 3)
    good = pop.pit_values(special.ndtr((y - mu) / sd))
    assert good["fractions"].shape == (4, 10) and np.allclose(good["fractions"].sum(axis=1), 1.0)
    assert np.all(good["p_value"] > 1e-4) and np.all(good["max_dev"] < 0.006)
    narrow = pop.pit_values(special.ndtr((y - mu) / (0.7 * sd)))
    assert np.all(narrow["fractions"][:, 0] > 0.13) and np.all(narrow["fractions"][:, -1] > 0.13)
    assert np.all(narrow["p_value"] < 1e-10)
    with pytest.raises(ValueError):
        pop.pit_values(np.full((3, 4), 1.5))


def test_crps_of_the_true_law_and_of_the_homoscedastic_baseline():
    n = 60_000
    m_h, mu, sd, y = _normal_catalog(n, 4)
    model = crps_gaussian(mu, sd, y)
    # expected CRPS of a calibrated normal forecast: sigma / sqrt(pi)
    np.testing.assert_allclose(model.mean(axis=0), sd.mean(axis=0) / np.sqrt(np.pi), rtol=0.02)
    scatter = pop.residual_scatter(mu, y)
    np.testing.assert_allclose(scatter, np.sqrt(np.mean(sd**2, axis=0)), rtol=0.02)
    baseline = pop.homoscedastic_crps(mu, scatter, y)
    summary = pop.crps_summary(model, baseline)
    assert list(summary) == TARGETS
    for d, t in enumerate(TARGETS):
        assert summary[t]["model"] == pytest.approx(model[:, d].mean())
        assert summary[t]["ratio"] == pytest.approx(summary[t]["model"] / summary[t]["baseline"])
    # expected CRPS of N(mu, b^2) for y ~ N(mu, s^2): E|X - Y| - E|X - X'| / 2 = sqrt(2 (b^2 + s^2) / pi) - b / sqrt(pi)
    expected = np.mean(np.sqrt(2 * (scatter**2 + sd**2) / np.pi) - scatter / np.sqrt(np.pi), axis=0)
    np.testing.assert_allclose([summary[t]["baseline"] for t in TARGETS], expected, rtol=0.02)
    # the per-halo width gains where the scatter varies (smass, radius), not where it is constant
    assert summary["smass"]["ratio"] < 0.99 and summary["radius"]["ratio"] < 1.0
    assert summary["sSFR"]["ratio"] == pytest.approx(1.0, abs=0.005)
    assert summary["color"]["ratio"] == pytest.approx(1.0, abs=0.005)
    assert pop.crps_summary(model, model)["color"]["ratio"] == 1.0


# ----------------------------------------------------------------------------- populations


def test_bin_counts_use_the_papers_half_open_bins():
    rows = []
    for lo, mid, hi in PAPER_BIN_EDGES.values():
        rows.append([lo, np.nextafter(mid, -np.inf), mid, np.nextafter(hi, -np.inf), hi, np.nextafter(lo, -np.inf)])
    y = np.array(rows).T  # 6 galaxies: [lo, mid) holds 2, [mid, hi) holds 2, hi and below lo are out
    counts = pop.bin_counts(y)
    assert counts.shape == (4, 2) and np.all(counts == 2)
    assert np.all(pop.bin_counts(y, {"smass": (0.0, 50.0, 100.0)})[0] == [6, 0])


def test_consistency_statistic_of_a_gaussian_toy():
    """Truth and S realizations drawn from one Gaussian law per k bin: the mean over k of
    (P_true - <P_s>)^2 / (var_s (1 + 1/S)) is a squared Student t with S - 1 dof, mean (S - 1)/(S - 3)."""
    rng = np.random.default_rng(5)
    s, nk = 20, 40_000
    k = np.linspace(0.01, 0.29, nk)
    mean, sigma = 1e4 * k**-1.0, 1e3 * (1 + k)
    p_true = mean + sigma * rng.standard_normal(nk)
    p_s = mean + sigma * rng.standard_normal((s, nk))
    st = pop.ensemble_statistics(p_true, p_s, k)
    assert float(st["consistency"]) == pytest.approx((s - 1) / (s - 3), abs=5 * np.sqrt(3.0 / nk))
    # a truth offset by 3 sigma is not a member of the ensemble; k >= kmax is ignored
    assert float(pop.ensemble_statistics(p_true + 3 * sigma, p_s, k)["consistency"]) > 8
    assert float(pop.ensemble_statistics(p_true + 3 * sigma, p_s, k + 0.05, kmax=0.3)["consistency"]) > 8
    # an ensemble whose mean is 10 % high
    z = rng.standard_normal((s, 1))
    ratio = 1.1 + 0.01 * (z - z.mean()) / z.std()
    assert float(pop.ensemble_statistics(p_true, p_true * ratio, k)["rel_bias"]) == pytest.approx(0.1, rel=1e-9)
    with pytest.raises(ValueError):
        pop.ensemble_statistics(p_true, p_s, k + 1.0)


def test_ensemble_clustering_of_exact_redraws_and_of_shuffled_galaxies(demo_small):
    pos = demo_small[["x", "y", "z"]].to_numpy()
    y_true = demo_small[TARGETS].to_numpy()
    nmesh = 64
    exact = [redraw_galaxies(demo_small, s).to_numpy() for s in range(1, 9)]
    res = pop.ensemble_clustering(pos, y_true, exact, TNG300_BOX, nmesh)
    assert [(r.target, r.bin) for r in res] == [(t, b) for t in TARGETS for b in (0, 1)]
    # the measurement is galaxypaint pk's: TSC + interlacing, shot noise subtracted, default k bins
    sel = (y_true[:, 0] >= PAPER_BIN_EDGES["smass"][1]) & (y_true[:, 0] < PAPER_BIN_EDGES["smass"][2])
    ref = compare_bin(pos[sel], pos[sel], TNG300_BOX, nmesh, default_k_edges(TNG300_BOX, nmesh))
    np.testing.assert_array_equal(res[1].power_true, ref.power_true)
    assert res[1].n_true == int(sel.sum()) and res[1].n_samples == 8
    json.dumps([r.as_dict() for r in res])
    # exact redraws: the truth is one more member of the ensemble (expectation per k bin (S-1)/(S-3) = 1.4)
    consistency = np.array([r.consistency for r in res])
    assert np.all(consistency < 8) and 0.5 < np.median(consistency) < 3
    assert max(r.rel_bias for r in res) < 0.15
    # galaxies drawn for other haloes (features shuffled among the positions) cluster differently
    perm = np.random.default_rng(0).permutation(len(demo_small))
    shuffled = [redraw_galaxies(demo_small.iloc[perm], s).to_numpy() for s in range(1, 9)]
    bad = pop.ensemble_clustering(pos, y_true, shuffled, TNG300_BOX, nmesh)
    assert min(r.consistency for r in bad) > 20
    assert bad[1].rel_bias > 0.3  # massive galaxies lose their halo bias


def test_null_bench_small_run(tmp_path):
    out = tmp_path / "null.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "sampler_null.py"), "--n", "6000", "--redraws", "8",
                          "--ensembles", "2", "--ensemble-size", "4", "--nmesh", "32", "--quantile-draws", "39",
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "took" in run.stdout and "ks_D.smass" in run.stdout
    null = json.loads(out.read_text())
    assert null["meta"]["n_test"] == 2400 and null["meta"]["interval_order_statistics"] == {"0.68": [6, 34],
                                                                                             "0.95": [1, 39]}
    st = null["statistics"]
    assert st["ks_D.smass"]["n"] == 8 and st["pk_consistency.color.bin2"]["n"] == 2
    assert st["coverage68.smass.all"]["median"] == pytest.approx(0.7, abs=0.05)  # (40 - 12) / 40
    assert all(0.8 < st[f"bin_ratio.{t}.bin1"]["median"] < 1.2 for t in TARGETS)
