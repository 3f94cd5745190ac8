"""SMOGN augmentation for imbalanced regression (Branco, Torgo & Ribeiro 2017), vectorized.

The reference is the ``smogn`` package (Kunz 2019, version 0.1.2, ``smogn.smoter``), which the paper
used.  This module runs the same algorithm with the same parameters, in array operations:

1. relevance φ(y): automatic (box-plot extremes with ``rel_coef``) or manual control points
   ``rel_ctrl_pts_rg`` ([y, φ, slope] rows), interpolated by the package's monotone piecewise-cubic
   (PCHIP) code — values below the first control point get φ=1 and beyond the last one the cubic is
   extrapolated linearly, as in the package;
2. the target-sorted rows are cut into bins wherever φ crosses ``rel_thres``;
3. each bin gets a sampling ratio ``b / len(bin)`` with ``b = round(n / n_bins)`` (``balance``) or the
   package's ``extreme`` formula; bins with ratio < 1 are randomly under-sampled, bins with ratio > 1
   are over-sampled: each seed row draws one of its ``k`` nearest neighbours *within its bin*
   (Euclidean over the features and the target, in their own units); a neighbour closer than half the
   median distance of the seed to the bin's rows is "safe" and the new row is interpolated between
   them (SMOTER), otherwise it is the seed plus Gaussian noise of ``min(pert, that half median)``
   times each column's standard deviation (GN).

Differences from the package, each deliberate (``variant="smogn-0.1.2"`` reproduces the first three,
for comparison runs against the reference):

- Synthetic target of a SMOTER row.  Branco et al. (2017, Alg. 2) weight the two targets by the
  inverse distances of the new row to the seed and to the neighbour; with the shared interpolation
  factor u that is ``y_seed + u (y_nn - y_seed)``, which we use.  The package accumulates those
  distances in a loop that overwrites them at every feature, so only the last column counts — the
  target column itself, read from an uninitialised buffer (zero in practice) — and its tie branch
  reads ``y_seed + y_nn / 2``.
- Under-sampling.  The package keeps ``data.drop(sampled rows)``: the *whole* table minus the sample,
  once per under-sampled bin (rare rows come back through it; with two normal bins the table is
  added twice).  We keep the random sample of ``int(ratio * len(bin))`` rows of each normal bin and
  every original row of the other bins.
- Clipping.  The package clips to zero every synthetic column that has *any* positive value (so
  negative colours and radii become 0); we clip only columns whose bin values are all non-negative.
- Control points with two columns get PCHIP slopes from the mean secant (the package's code for this
  case cannot run); the package's other checks are kept as clear ``ValueError`` messages.
- The half-median "safe" distance uses the exact median for bins up to ``median_rows`` rows and, for
  larger bins, the median over a seeded random subset of that many rows (relative error ~1/sqrt(m)).
- Randomness comes from one seeded ``numpy.random.Generator``; rows with NaN are dropped first
  (``drop_na_row``); the result never contains NaN; any index is accepted.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

VARIANTS = ("branco2017", "smogn-0.1.2")

#: The paper's per-target configurations (de Santi et al. 2022, published notebooks).
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
    "smass": {"rel_method": "auto", "k": 5, "pert": 0.02, "samp_method": "balance", "rel_thres": 0.5},
    "sSFR": {"rel_method": "manual", "rel_ctrl_pts_rg": [[-15.68, 1, 1], [-14.5, 0, 1], [-9.0, 1, 1]],
             "rel_thres": 0.2, "k": 7, "pert": 0.04, "samp_method": "balance"},
    "radius": {"rel_method": "manual",
               "rel_ctrl_pts_rg": [[0.06, 1, 1], [0.32, 0, 1], [0.7, 1, 1], [1.0, 1, 1], [2.1, 0, 1]],
               "rel_thres": 0.3, "k": 7, "pert": 0.04, "samp_method": "balance"},
    "color": {"rel_method": "manual",
              "rel_ctrl_pts_rg": [[-0.296, 1, 1], [-0.05, 1, 1], [-0.1, 0, 1], [1.14, 1, 1]],
              "rel_thres": 0.8, "k": 7, "pert": 0.04, "samp_method": "balance"},
}


# ----------------------------------------------------------------------------- relevance function


def box_plot_stats(x: np.ndarray, coef: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """R's ``boxplot.stats``: (lower whisker, Q1, median, Q3, upper whisker) and the values beyond."""
    if coef <= 0:
        raise ValueError("rel_coef must be greater than zero")
    x = np.asarray(x, dtype=np.float64)
    q1, med, q3 = np.quantile(x, [0.25, 0.5, 0.75], method="midpoint")
    iqr = q3 - q1
    lo = x[x >= q1 - coef * iqr].min()
    hi = x[x <= q3 + coef * iqr].max()
    return np.array([lo, q1, med, q3, hi]), x[(x < lo) | (x > hi)]


def control_points(y: np.ndarray, method: str = "auto", xtrm_type: str = "both", coef: float = 1.5,
                   ctrl_pts: Sequence[Sequence[float]] | None = None) -> np.ndarray:
    """Relevance control points [[y, φ, slope], ...] (sorted by y), as ``smogn.phi_ctrl_pts``."""
    if method not in ("auto", "manual"):
        raise ValueError("rel_method must be 'auto' or 'manual'")
    if xtrm_type not in ("high", "low", "both"):
        raise ValueError("rel_xtrm_type must be 'high', 'low' or 'both'")
    if method == "auto":
        y = np.asarray(y, dtype=np.float64)
        stats, xtrms = box_plot_stats(y, coef)
        pts = []
        if xtrm_type in ("both", "low") and (xtrms < stats[0]).any():
            pts.append([stats[0], 1.0, 0.0])
        else:
            pts.append([y.min(), 0.0, 0.0])
        if stats[2] != y.min():
            pts.append([stats[2], 0.0, 0.0])
        if xtrm_type in ("both", "high") and (xtrms > stats[4]).any():
            pts.append([stats[4], 1.0, 0.0])
        elif stats[2] != y.max():
            pts.append([y.max(), 0.0, 0.0])
        return np.array(pts)
    if ctrl_pts is None:
        raise ValueError("rel_method='manual' needs rel_ctrl_pts_rg, rows of [y, relevance(, slope)]")
    pts = np.array(ctrl_pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3) or len(pts) < 2 or np.isnan(pts).any():
        raise ValueError("rel_ctrl_pts_rg must be at least two rows of [y, relevance] or [y, relevance, slope]")
    if (pts[:, 1] > 1).any() or (pts[:, 1] < 0).any():
        raise ValueError("rel_ctrl_pts_rg relevance values must lie in [0, 1]")
    pts = pts[np.argsort(pts[:, 0], kind="stable")]
    if (np.diff(pts[:, 0]) == 0).any():
        raise ValueError("rel_ctrl_pts_rg y values must be distinct")
    if pts.shape[1] == 2:
        secant = np.diff(pts[:, 1]) / np.diff(pts[:, 0])
        slope = np.concatenate([[0.0], (secant[1:] + secant[:-1]) / 2, [0.0]])
        pts = np.column_stack([pts, slope])
    return pts


def _monotone_slopes(m: list[float], delta: list[float]) -> list[float]:
    """Fritsch–Carlson slope adjustment, exactly as the package's ``pchip_slope_mono_fc``."""
    m = list(m)
    for k in range(len(delta)):
        sk = delta[k]
        if abs(sk) == 0:
            m[k] = m[k + 1] = 0.0
            continue
        alpha, beta = m[k] / sk, m[k + 1] / sk
        if abs(m[k]) != 0 and alpha < 0:
            m[k] = -m[k]
            alpha = m[k] / sk
        if abs(m[k + 1]) != 0 and beta < 0:
            m[k + 1] = -m[k + 1]
            beta = m[k + 1] / sk
        a2b3, ab23 = 2 * alpha + beta - 3, alpha + 2 * beta - 3
        if a2b3 > 0 and ab23 > 0 and alpha * (a2b3 + ab23) < a2b3 * a2b3:
            taus = 3 * sk / np.sqrt(alpha * alpha + beta * beta)
            m[k], m[k + 1] = taus * alpha, taus * beta
    return m


def relevance(y: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """φ(y) in [0, 1] from control points (the package's PCHIP, vectorized)."""
    y = np.asarray(y, dtype=np.float64)
    x, a = pts[:, 0], pts[:, 1]
    h = np.diff(x)
    delta = np.diff(a) / h
    b = np.array(_monotone_slopes(pts[:, 2].tolist(), delta.tolist()))
    c = (3 * delta - 2 * b[:-1] - b[1:]) / h
    d = (b[:-1] - 2 * delta + b[1:]) / (h * h)
    i = np.searchsorted(x, y, side="right") - 1
    out = np.ones_like(y)  # below the first control point: 1, as in the package
    last = i == len(x) - 1
    out[last] = a[-1] + b[-1] * (y[last] - x[-1])
    mid = (i >= 0) & ~last
    j = i[mid]
    s = y[mid] - x[j]
    out[mid] = a[j] + s * (b[j] + s * (c[j] + s * d[j]))
    return out


# ----------------------------------------------------------------------------- bins and ratios


def relevance_bins(y_sorted_phi: np.ndarray, rel_thres: float) -> list[tuple[int, int]]:
    """[start, stop) ranges of the target-sorted rows, cut wherever φ crosses ``rel_thres``."""
    above = y_sorted_phi >= rel_thres
    cuts = np.flatnonzero(above[1:] != above[:-1]) + 1
    edges = [0, *cuts.tolist(), len(y_sorted_phi)]
    return list(zip(edges[:-1], edges[1:]))


def sampling_ratios(sizes: Sequence[int], samp_method: str) -> list[float]:
    """Per-bin ratio of output to input rows (>1 over-sample, <1 under-sample), as the package."""
    n, nb = sum(sizes), len(sizes)
    b = round(n / nb)
    if samp_method == "balance":
        return [b / s for s in sizes]
    if samp_method == "extreme":
        scale = nb * b / sum(b ** 2 / s for s in sizes)
        return [round(round(b ** 2 / s * scale, 2) / s, 1) for s in sizes]
    raise ValueError("samp_method must be 'balance' or 'extreme'")


# ----------------------------------------------------------------------------- over-sampling


def _half_median_distance(data: np.ndarray, rng: np.random.Generator, median_rows: int,
                          chunk_bytes: int = 256 * 2**20) -> np.ndarray:
    """Half the median Euclidean distance of every row to the rows of ``data`` (midpoint median)."""
    n = len(data)
    ref = data if n <= median_rows else data[np.sort(rng.choice(n, median_rows, replace=False))]
    ref_sq = (ref ** 2).sum(1)
    out = np.empty(n)
    step = max(1, chunk_bytes // (8 * len(ref)))
    for i in range(0, n, step):
        q = data[i:i + step]
        d2 = (q ** 2).sum(1)[:, None] + ref_sq[None, :] - 2.0 * q @ ref.T
        out[i:i + step] = np.quantile(np.sqrt(np.maximum(d2, 0.0)), 0.5, axis=1, method="midpoint")
    return out / 2.0


def _neighbours(data: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances [n, k] of each row's k nearest other rows (self excluded)."""
    dist, idx = cKDTree(data).query(data, k=k + 1)
    self_col = idx == np.arange(len(data))[:, None]
    # the row itself is normally first; with exact duplicates it may sit elsewhere or be absent
    keep = ~self_col
    keep[~self_col.any(axis=1), k] = False
    return idx[keep].reshape(len(data), k), dist[keep].reshape(len(data), k)


def over_sample(data: np.ndarray, ratio: float, k: int, pert: float, rng: np.random.Generator,
                variant: str = "branco2017", median_rows: int = 20_000) -> np.ndarray:
    """Synthetic rows for one bin; ``data`` is [n, d] with the target in the last column.

    Returns ``int(ratio - 1) * n + int(n * frac(ratio - 1))`` rows (the package's count): every row
    seeds ``int(ratio - 1)`` new rows, and a random subset (without replacement) one more.  Neighbours
    are searched within the bin; bins of at most ``k`` rows use what they have.
    """
    n, d = data.shape
    per_row = int(ratio - 1)
    extra = int(n * (ratio - 1 - per_row))
    seeds = np.concatenate([np.repeat(np.arange(n), per_row), rng.choice(n, extra, replace=False)])
    m = len(seeds)
    # a bin of n <= k rows has only n - 1 neighbours; a draw beyond them is "unsafe" (noise), as in the package
    kk = min(k, n - 1)
    nn_idx, nn_dist = _neighbours(data, kk) if kk > 0 else (np.zeros((n, 1), int), np.full((n, 1), np.inf))
    max_dist = _half_median_distance(data, rng, median_rows)
    pick = rng.integers(0, k, size=m)
    have = pick < kk
    pick = np.where(have, pick, 0)
    nn = nn_idx[seeds, pick]
    safe = have & (nn_dist[seeds, pick] < max_dist[seeds])
    u = rng.random(m)
    noise = rng.standard_normal((m, d))

    x_seed, x_nn = data[seeds], data[nn]
    out = np.empty((m, d))
    # SMOTER: interpolate the features, then the target
    out[:, :-1] = x_seed[:, :-1] + u[:, None] * (x_nn[:, :-1] - x_seed[:, :-1])
    y_seed, y_nn = x_seed[:, -1], x_nn[:, -1]
    if variant == "branco2017":
        out[:, -1] = y_seed + u * (y_nn - y_seed)
    else:  # the package: distances from an uninitialised (zero) target, and its tie branch
        y_range = np.ptp(data[:, -1])
        a = np.abs(y_seed) / y_range if y_range > 0 else np.zeros(m)
        b = np.abs(y_nn) / y_range if y_range > 0 else np.zeros(m)
        tie = a == b
        out[:, -1] = np.where(tie, y_seed + y_nn / 2, (b * y_seed + a * y_nn) / np.where(tie, 1.0, a + b))
    # GN: seed plus noise for unsafe neighbours
    t_pert = np.minimum(pert, max_dist[seeds])
    gn = x_seed + noise * data.std(axis=0)[None, :] * t_pert[:, None]
    out[~safe] = gn[~safe]

    if variant == "branco2017":
        clip = (data >= 0).all(axis=0)
    else:
        clip = (data > 0).any(axis=0)
    out[:, clip] = np.maximum(out[:, clip], 0.0)
    return out


# ----------------------------------------------------------------------------- the sampler


class SMOGN:
    """SMOGN resampler with the ``smogn.smoter`` parameters (scikit-learn estimator conventions).

    ``fit(X, y)`` learns the relevance function and the bins (``ctrl_pts_``, ``phi_``, ``bins_``,
    ``ratios_``); ``fit_resample(X, y)`` returns the augmented ``(X_new, y_new)``.  Parameters
    keep the package's names and defaults; ``random_state`` seeds every random draw.
    """

    def __init__(self, k: int = 5, pert: float = 0.02, samp_method: str = "balance", under_samp: bool = True,
                 drop_na_row: bool = True, replace: bool = False, rel_thres: float = 0.5,
                 rel_method: str = "auto", rel_xtrm_type: str = "both", rel_coef: float = 1.5,
                 rel_ctrl_pts_rg: Sequence[Sequence[float]] | None = None, variant: str = "branco2017",
                 median_rows: int = 20_000, random_state: int | None = None):
        self.k = k
        self.pert = pert
        self.samp_method = samp_method
        self.under_samp = under_samp
        self.drop_na_row = drop_na_row
        self.replace = replace
        self.rel_thres = rel_thres
        self.rel_method = rel_method
        self.rel_xtrm_type = rel_xtrm_type
        self.rel_coef = rel_coef
        self.rel_ctrl_pts_rg = rel_ctrl_pts_rg
        self.variant = variant
        self.median_rows = median_rows
        self.random_state = random_state

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (
            "k", "pert", "samp_method", "under_samp", "drop_na_row", "replace", "rel_thres", "rel_method",
            "rel_xtrm_type", "rel_coef", "rel_ctrl_pts_rg", "variant", "median_rows", "random_state")}

    def _check(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not 0 < self.pert <= 1:
            raise ValueError("pert must be in (0, 1]")
        if not 0 < self.rel_thres <= 1:
            raise ValueError("rel_thres must be in (0, 1]")
        if self.samp_method not in ("balance", "extreme"):
            raise ValueError("samp_method must be 'balance' or 'extreme'")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}")
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError("X must be 2-D with one row per target value")
        bad = ~np.isfinite(x).all(axis=1) | ~np.isfinite(y)
        if bad.any():
            if not self.drop_na_row:
                raise ValueError("X or y contains NaN or infinite values")
            x, y = x[~bad], y[~bad]
        if self.k >= len(y):
            raise ValueError(f"k={self.k} is not smaller than the number of rows ({len(y)})")
        return x, y

    def fit(self, x: np.ndarray, y: np.ndarray) -> "SMOGN":
        x, y = self._check(x, y)
        order = np.argsort(y, kind="stable")
        self.ctrl_pts_ = control_points(y[order], self.rel_method, self.rel_xtrm_type, self.rel_coef,
                                        self.rel_ctrl_pts_rg)
        self.phi_ = relevance(y, self.ctrl_pts_)
        phi_sorted = self.phi_[order]
        if (phi_sorted == 0).all():
            raise ValueError("the relevance function is 0 for every target value: redefine rel_ctrl_pts_rg")
        if (phi_sorted == 1).all():
            raise ValueError("the relevance function is 1 for every target value: redefine rel_ctrl_pts_rg")
        spans = relevance_bins(phi_sorted, self.rel_thres)
        self.order_ = order
        self.bins_ = [order[a:b] for a, b in spans]
        self.ratios_ = sampling_ratios([len(b) for b in self.bins_], self.samp_method)
        self.n_features_in_ = x.shape[1]
        return self

    def fit_resample(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Augmented ``(X_new, y_new)``: under-sampled normal bins, originals plus synthetic rare rows."""
        self.fit(x, y)
        x, y = self._check(x, y)
        data = np.column_stack([x, y])
        rng = np.random.default_rng(self.random_state)
        parts = []
        self.n_synthetic_ = 0
        for rows, ratio in zip(self.bins_, self.ratios_):
            if ratio > 1:
                synth = over_sample(data[rows], ratio, self.k, self.pert, rng, self.variant, self.median_rows)
                self.n_synthetic_ += len(synth)
                parts.append(synth)
                if self.variant == "branco2017":
                    parts.append(data[rows])
            elif ratio < 1 and self.under_samp:
                keep = rng.choice(rows, size=int(ratio * len(rows)), replace=self.replace)
                if self.variant == "branco2017":
                    parts.append(data[keep])
                else:  # the package keeps the whole table minus the sample
                    parts.append(np.delete(data, keep, axis=0))
            elif ratio == 1 or self.variant == "branco2017":
                parts.append(data[rows])
        out = np.concatenate(parts) if parts else data[:0]
        if not np.isfinite(out).all():  # cannot happen with finite input; never hand NaN to training
            raise ValueError("SMOGN produced non-finite rows")
        return out[:, :-1], out[:, -1]


def smoter(data: pd.DataFrame, y: str, seed: int | None = None, **params: Any) -> pd.DataFrame:
    """DataFrame front end with ``smogn.smoter``'s call shape: numeric columns, target named ``y``."""
    if y not in data.columns:
        raise ValueError(f"target column {y!r} is not in the table")
    features = [c for c in data.columns if c != y]
    x_new, y_new = SMOGN(random_state=seed, **params).fit_resample(data[features].to_numpy(np.float64),
                                                                  data[y].to_numpy(np.float64))
    out = pd.DataFrame(x_new, columns=features)
    out[y] = y_new
    return out[list(data.columns)]


def paper_sampler(target: str, seed: int, **overrides: Any) -> SMOGN:
    """The paper's SMOGN configuration for ``target`` (``PAPER_DEFAULTS``), with overrides."""
    params = {**PAPER_DEFAULTS.get(target, {}), **overrides}
    return SMOGN(random_state=seed, **params)
