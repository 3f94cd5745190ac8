"""SMOGN: the vectorized sampler against the ``smogn`` package (the reference) and its own contract."""

from __future__ import annotations

import importlib
import random
import types
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from app.core.schema import FEATURE_NAMES
from training import smogn as ours
from training.demo_catalog import make_demo_catalog

COLS = list(FEATURE_NAMES)


@pytest.fixture(scope="module")
def halos():
    return make_demo_catalog(n=20_000, seed=11)


def _sample(halos, target, n, seed=1):
    return halos[COLS + [target]].sample(n, random_state=seed).reset_index(drop=True)


@pytest.mark.parametrize("target", ["smass", "sSFR", "radius", "color"])
def test_relevance_matches_the_package_exactly(halos, target):
    ref_phi_ctrl = pytest.importorskip("smogn.phi_ctrl_pts")
    ref_phi = pytest.importorskip("smogn.phi")
    d = _sample(halos, target, 5000)
    p = ours.PAPER_DEFAULTS[target]
    y_sorted = d[target].sort_values()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = ref_phi_ctrl.phi_ctrl_pts(y=y_sorted, method=p["rel_method"], xtrm_type="both", coef=1.5,
                                           ctrl_pts=p.get("rel_ctrl_pts_rg"))
        expected = np.array(ref_phi.phi(y_sorted, params))
    pts = ours.control_points(y_sorted.to_numpy(), p["rel_method"], "both", 1.5, p.get("rel_ctrl_pts_rg"))
    np.testing.assert_array_equal(pts.ravel(), np.asarray(params["ctrl_pts"], dtype=float))
    np.testing.assert_allclose(ours.relevance(y_sorted.to_numpy(), pts), expected, rtol=0, atol=1e-14)


class _ZeroFilledNumpy(types.ModuleType):
    """``numpy`` as seen by ``smogn.over_sampling``, except that ``ndarray(shape)`` is zero-filled.

    The package allocates ``synth_matrix = np.ndarray(shape=...)`` (uninitialised memory) and, for every
    SMOTER row, computes the distances ``a``/``b`` in a loop over the numeric columns that keeps only the
    last one: the target column, which it has not written yet.  The synthetic target therefore depends on
    whatever the heap held before: zeros when the block comes fresh from the OS, leftovers of earlier
    arrays otherwise (then ``a == b`` for huge values and the tie branch ``y_seed + y_nn / 2`` throws
    sSFR targets from -14 to -21).  The heap's history changes with ``PYTHONHASHSEED``, test order and
    anything allocated before; the random draws and every feature column do not.  Zero is the value our
    ``variant="smogn-0.1.2"`` documents and reproduces, so the reference is pinned to it.
    """

    def __init__(self) -> None:
        super().__init__("numpy")
        self.allocations = 0

    def __getattr__(self, name: str):
        return getattr(np, name)

    def ndarray(self, shape, *args, **kwargs):  # the package calls np.ndarray(shape=...)
        self.allocations += 1
        return np.zeros(shape, *args, **kwargs)


@pytest.fixture
def zero_filled_reference(monkeypatch):
    """The ``smogn`` package with its uninitialised synthetic buffer pinned to zeros (see above)."""
    pytest.importorskip("smogn")
    # ``import_module``: the package's ``__init__`` rebinds some submodule names to functions
    over_sampling = importlib.import_module("smogn.over_sampling")
    zeroed = _ZeroFilledNumpy()
    monkeypatch.setattr(over_sampling, "np", zeroed)
    return zeroed


def _rows_and_synthetic_per_bin(table, original, target, edges):
    """Output rows and rows not in ``original`` (synthetic) per target bin, as two integer arrays."""
    orig = {tuple(r) for r in original.to_numpy()}
    synth = np.array([tuple(r) not in orig for r in table.to_numpy()])
    which = np.searchsorted(edges, table[target].to_numpy(), side="right")
    n_bins = len(edges) + 1
    return np.bincount(which, minlength=n_bins), np.bincount(which, weights=synth, minlength=n_bins).astype(int)


#: z for the per-bin synthetic fractions: two-sided 6e-5 per bin, ~1e-3 over the 11 bins of the 4 targets
_Z = 4.0


@pytest.mark.slow
@pytest.mark.parametrize("target", ["smass", "sSFR", "radius", "color"])
def test_package_variant_reproduces_the_reference(halos, target, zero_filled_reference):
    smogn = pytest.importorskip("smogn")
    ref_phi_ctrl = pytest.importorskip("smogn.phi_ctrl_pts")
    ref_phi = pytest.importorskip("smogn.phi")
    d = _sample(halos, target, 1500, seed=2)
    p = ours.PAPER_DEFAULTS[target]
    np.random.seed(0)
    random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = smogn.smoter(data=d, y=target, **p)
        y_sorted = d[target].sort_values()
        phi = np.array(ref_phi.phi(y_sorted, ref_phi_ctrl.phi_ctrl_pts(
            y=y_sorted, method=p["rel_method"], xtrm_type="both", coef=1.5, ctrl_pts=p.get("rel_ctrl_pts_rg"))))
    assert zero_filled_reference.allocations > 0  # the pin reached the package's buffers
    sampler = ours.SMOGN(variant="smogn-0.1.2", random_state=0, **p).fit(d[COLS].to_numpy(), d[target].to_numpy())
    # identical bins: the reference's bumps (where its phi crosses rel_thres) against ours
    crossing = np.flatnonzero((phi[1:] >= p["rel_thres"]) != (phi[:-1] >= p["rel_thres"])) + 1
    ref_sizes = np.diff([0, *crossing, len(phi)]).tolist()
    assert [len(b) for b in sampler.bins_] == ref_sizes
    np.testing.assert_allclose(np.sort(sampler.phi_), np.sort(phi), rtol=0, atol=1e-12)

    mine = ours.smoter(d, target, seed=0, variant="smogn-0.1.2", **p)
    assert list(mine.columns) == list(d.columns)
    # sizes are not random: int(ratio - 1) * n + int(n * frac) new rows per over-sampled bin, and the
    # whole table minus int(ratio * n) distinct rows (replace=False) per under-sampled bin
    assert len(mine) == len(ref)
    # two-sample KS critical value at alpha = 0.05 for these sizes (0.043-0.053); the tables share their
    # original rows, so the statistic is well below its independent-sample law (seed pairs: mean 0.02)
    ks_bound = 1.358 * np.sqrt((len(ref) + len(mine)) / (len(ref) * len(mine)))
    for col in d.columns:
        assert ks_2samp(ref[col], mine[col]).statistic < ks_bound, col

    edges = np.sort(d[target].to_numpy())[np.cumsum(ref_sizes)[:-1]]
    n_ref, s_ref = _rows_and_synthetic_per_bin(ref, d, target, edges)
    n_mine, s_mine = _rows_and_synthetic_per_bin(mine, d, target, edges)
    assert (n_ref > 0).all() and (n_mine > 0).all()
    # not random either: how many original rows each bin keeps, and how many rows are new
    np.testing.assert_array_equal(n_mine - s_mine, n_ref - s_ref)
    assert s_mine.sum() == s_ref.sum()
    # random: the bin a new row lands in (Gaussian noise and clipping move some across a bin edge), so
    # the per-bin synthetic fractions agree within _Z binomial standard errors of their difference
    f_ref, f_mine = s_ref / n_ref, s_mine / n_mine
    pooled = (s_ref + s_mine) / (n_ref + n_mine)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_ref + 1 / n_mine))
    assert (np.abs(f_mine - f_ref) <= _Z * se).all(), (f_mine, f_ref, se)


def test_paper_variant_keeps_rare_originals_and_samples_normal_rows(halos):
    d = _sample(halos, "radius", 4000, seed=3)
    sampler = ours.paper_sampler("radius", seed=4)
    x_new, y_new = sampler.fit_resample(d[COLS].to_numpy(), d["radius"].to_numpy())
    original = {tuple(r) for r in d.to_numpy()}
    new_rows = np.column_stack([x_new, y_new])
    is_orig = np.array([tuple(r) in original for r in new_rows])
    assert (~is_orig).sum() == sampler.n_synthetic_ > 0
    expected = 0
    for rows, ratio in zip(sampler.bins_, sampler.ratios_):
        n = len(rows)
        if ratio > 1:
            expected += n + int(ratio - 1) * n + int(n * (ratio - 1 - int(ratio - 1)))
        else:
            expected += int(ratio * n) if ratio < 1 else n
    assert len(y_new) == expected
    # rare bins keep every original row
    rare = max(zip(sampler.ratios_, range(len(sampler.bins_))))[1]
    rare_rows = {tuple(r) for r in d.to_numpy()[sampler.bins_[rare]]}
    assert rare_rows <= {tuple(r) for r in new_rows[is_orig]}
    assert np.isfinite(new_rows).all()


def test_seeded_deterministic_and_any_index(halos):
    d = _sample(halos, "sSFR", 3000, seed=5)
    d.index = np.arange(len(d))[::-1] * 7 + 1000  # not a RangeIndex
    a = ours.smoter(d, "sSFR", seed=9, **ours.PAPER_DEFAULTS["sSFR"])
    b = ours.smoter(d, "sSFR", seed=9, **ours.PAPER_DEFAULTS["sSFR"])
    c = ours.smoter(d, "sSFR", seed=10, **ours.PAPER_DEFAULTS["sSFR"])
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    assert np.isfinite(a.to_numpy()).all()


def test_nan_rows_dropped_or_refused(halos):
    d = _sample(halos, "sSFR", 1000, seed=6)
    d.loc[3, "C_h"] = np.nan
    out = ours.smoter(d, "sSFR", seed=0, **ours.PAPER_DEFAULTS["sSFR"])
    assert np.isfinite(out.to_numpy()).all()
    with pytest.raises(ValueError, match="NaN"):
        ours.smoter(d, "sSFR", seed=0, drop_na_row=False, **ours.PAPER_DEFAULTS["sSFR"])


def test_small_rare_bin_uses_noise_copies():
    # one extreme row forms its own rare bin: the package copies it with zero noise (half-median of {0})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = rng.normal(size=300)
    y[0] = 40.0
    s = ours.SMOGN(k=5, rel_method="manual", rel_ctrl_pts_rg=[[-5, 0, 0], [10, 0, 0], [30, 1, 0]],
                   rel_thres=0.5, random_state=1)
    x_new, y_new = s.fit_resample(x, y)
    assert [len(b) for b in s.bins_] == [299, 1]
    copies = y_new == 40.0
    assert copies.sum() == 150 and np.allclose(x_new[copies], x[0])


def test_half_median_subset_estimate_is_close():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(3000, 4))
    exact = ours._half_median_distance(data, np.random.default_rng(0), median_rows=5000)
    from scipy.spatial.distance import cdist

    brute = np.median(cdist(data, data), axis=1) / 2
    np.testing.assert_allclose(exact, brute, rtol=1e-9)
    approx = ours._half_median_distance(data, np.random.default_rng(0), median_rows=1000)
    assert np.abs(approx / exact - 1).max() < 0.1


def test_bad_parameters_are_refused(halos):
    d = _sample(halos, "color", 500)
    x, y = d[COLS].to_numpy(), d["color"].to_numpy()
    with pytest.raises(ValueError, match="pert"):
        ours.SMOGN(pert=1.5).fit(x, y)
    with pytest.raises(ValueError, match="relevance values must lie in"):
        ours.SMOGN(rel_method="manual", rel_ctrl_pts_rg=[[0, 2, 0], [1, 0, 0]]).fit(x, y)
    with pytest.raises(ValueError, match="distinct"):
        ours.SMOGN(rel_method="manual", rel_ctrl_pts_rg=[[0, 1, 0], [0, 0, 0]]).fit(x, y)
    with pytest.raises(ValueError, match="is 0 for every target"):
        ours.SMOGN(rel_method="manual", rel_ctrl_pts_rg=[[-9, 0, 0], [9, 0, 0]]).fit(x, y)
    with pytest.raises(ValueError, match="samp_method"):
        ours.SMOGN(samp_method="half").fit(x, y)
    with pytest.raises(ValueError, match="not in the table"):
        ours.smoter(d, "mass")


def test_estimator_contract():
    s = ours.SMOGN(k=7, random_state=3)
    assert s.get_params()["k"] == 7 and not hasattr(s, "bins_")
    x = np.random.default_rng(0).normal(size=(200, 2))
    assert s.fit(x, x[:, 0] ** 3) is s and hasattr(s, "phi_") and s.n_features_in_ == 2
