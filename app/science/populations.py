"""Statistics that judge a catalog of *sampled* galaxies against the true one ("populations, not means").

A catalog painted by a joint sampler holds galaxies drawn from p(galaxy | halo); it is right when its
galaxies are distributed like the true ones, halo by halo, not when each is close to its true value.
These functions measure that on the arrays of one catalog, in plain numpy/scipy:

* marginals: the two-sample K-S distance per property (``ks_per_property``);
* the joint law: the 6 Pearson correlations between properties in each quartile of halo mass
  (``correlations_by_mass_quartile``, ``correlation_difference``);
* calibration: how often the true value falls in the sampler's central 68 % and 95 % intervals, over
  all haloes and per M_h quartile (``interval_coverage``), the PIT histogram (``pit_values``) and the
  CRPS against a homoscedastic baseline (``homoscedastic_crps``, ``crps_summary``);
* populations: the counts in the paper's two bins per property (``bin_counts``) and, for an
  ensemble of S sampled catalogs, the clustering of each bin's population against the true one
  (``ensemble_clustering``).

What a *perfect* sampler scores on each is not zero: ``bench/sampler_null.py`` measures the null
distribution of every statistic by redrawing the built-in catalog's galaxies from the generator's exact
law (``training.demo_catalog.redraw_galaxies``).

Conventions.  ``y``, ``y_true``, ``y_sample`` are [N, 4] in ``app.core.schema.TARGET_NAMES`` order and
schema units (smass log10 Msun/h, sSFR log10 h/yr, radius log10 kpc/h, color mag); ``m_h`` [N] is the
halo mass (log10 Msun/h); positions ``pos`` [N, 3] and ``box`` in Mpc/h, k in h/Mpc, P(k) in (Mpc/h)^3.
M_h quartiles are those of the ``m_h`` given (the same haloes carry the true and the sampled galaxies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats

from app.core.schema import PAPER_BIN_EDGES, TARGET_NAMES
from app.science.clustering import bin_edges as _checked_bin_edges
from app.science.power_spectrum import default_k_edges, power_spectrum
from app.core.sampling import crps_gaussian

#: the 6 property pairs (indices into TARGET_NAMES) of ``correlations_by_mass_quartile``'s columns
PAIRS: tuple[tuple[int, int], ...] = tuple(combinations(range(len(TARGET_NAMES)), 2))
PAIR_NAMES: tuple[str, ...] = tuple(f"{TARGET_NAMES[i]}-{TARGET_NAMES[j]}" for i, j in PAIRS)
N_QUARTILES = 4
#: the bin (0: lower, 1: upper) of each property's tail population, the one a catalog of means lacks:
#: massive, quenched (low sSFR), large and red galaxies
TAIL_BIN: dict[str, int] = {"smass": 1, "sSFR": 0, "radius": 1, "color": 1}
TAIL_NAME: dict[str, str] = {"smass": "massive", "sSFR": "quenched", "radius": "large", "color": "red"}
#: the ensemble clustering statistics average over the k bins whose mean |k| is below this [h/Mpc]
DEFAULT_KMAX = 0.3


def _targets(y, name: str = "y") -> np.ndarray:
    a = np.asarray(y, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != len(TARGET_NAMES):
        raise ValueError(f"{name} must be [N, {len(TARGET_NAMES)}] in the order {', '.join(TARGET_NAMES)}; "
                         f"got shape {a.shape}")
    return a


# ----------------------------------------------------------------------------- marginals


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov distance sup_x |F_a(x) - F_b(x)| (dimensionless, 0..1); the same
    number as ``scipy.stats.ks_2samp(a, b).statistic``, without its p-value (slow for large samples)."""
    a = np.sort(np.asarray(a, dtype=np.float64).ravel())
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples must be non-empty")
    both = np.concatenate([a, b])
    fa = np.searchsorted(a, both, side="right") / a.size
    fb = np.searchsorted(b, both, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def ks_critical_value(n: int, m: int, alpha: float = 0.001) -> float:
    """Asymptotic two-sample K-S critical distance at level ``alpha`` for independent samples of sizes
    ``n`` and ``m``: sqrt(-ln(alpha / 2) / 2) sqrt((n + m) / (n m)).  Galaxies sampled for the *same*
    haloes as the truth are not independent of it and vary less: see ``bench/sampler_null.py``."""
    return float(np.sqrt(-np.log(alpha / 2.0) / 2.0) * np.sqrt((n + m) / (n * m)))


def ks_per_property(y_sample, y_true) -> dict[str, float]:
    """K-S distance D between the sampled and the true marginal distribution of each property."""
    ys, yt = _targets(y_sample, "y_sample"), _targets(y_true, "y_true")
    return {t: ks_statistic(ys[:, d], yt[:, d]) for d, t in enumerate(TARGET_NAMES)}


# ----------------------------------------------------------------------------- joint law


def mass_quartile_index(m_h) -> np.ndarray:
    """Quartile of halo mass (0..3) of each halo [N]: edges at the 25/50/75 % quantiles of ``m_h``."""
    m = np.asarray(m_h, dtype=np.float64).ravel()
    if m.size < N_QUARTILES:
        raise ValueError(f"need at least {N_QUARTILES} haloes for M_h quartiles")
    edges = np.quantile(m, [0.25, 0.5, 0.75])
    return np.searchsorted(edges, m, side="right")


def correlations_by_mass_quartile(y, m_h) -> np.ndarray:
    """Pearson correlation of each property pair (``PAIR_NAMES`` columns) in each M_h quartile:
    [4 quartiles (lowest mass first), 6 pairs]."""
    y = _targets(y)
    q = mass_quartile_index(m_h)
    if len(q) != len(y):
        raise ValueError(f"m_h has {len(q)} haloes, y {len(y)}")
    rows, cols = zip(*PAIRS)
    out = np.empty((N_QUARTILES, len(PAIRS)))
    for k in range(N_QUARTILES):
        out[k] = np.corrcoef(y[q == k].T)[rows, cols]
    return out


def correlation_difference(y_sample, y_true, m_h) -> dict[str, np.ndarray | float]:
    """Sampled minus true correlations per M_h quartile: ``delta`` [4, 6], ``max_abs`` [4] (max |delta|
    over the pairs of each quartile) and ``max_abs_overall`` (over every quartile and pair)."""
    delta = correlations_by_mass_quartile(y_sample, m_h) - correlations_by_mass_quartile(y_true, m_h)
    return {"delta": delta, "max_abs": np.max(np.abs(delta), axis=1), "max_abs_overall": float(np.max(np.abs(delta)))}


# ----------------------------------------------------------------------------- calibration


def central_levels(coverage: float) -> tuple[float, float]:
    """Quantile levels of the central interval holding ``coverage`` (0.68 -> (0.16, 0.84))."""
    if not 0.0 < coverage < 1.0:
        raise ValueError("coverage must lie in (0, 1)")
    return 0.5 * (1.0 - coverage), 0.5 * (1.0 + coverage)


def binomial_se(p, n) -> np.ndarray:
    """Standard error sqrt(p (1 - p) / n) of a fraction p measured on n independent trials."""
    p, n = np.asarray(p, dtype=np.float64), np.asarray(n, dtype=np.float64)
    return np.sqrt(p * (1.0 - p) / n)


def interval_coverage(lower, upper, y_true, m_h) -> dict[str, np.ndarray]:
    """Fraction of true values inside [lower, upper] (bounds included), per property.

    ``lower``/``upper`` are [N, 4] (one interval per halo and property, e.g. the 0.16 and 0.84 quantiles
    of the sampler's marginal for a 68 % interval) or [N, 4, L] for L intervals at once.  Returns
    ``overall`` [4(, L)], ``by_quartile`` [4 M_h quartiles, 4(, L)] and ``n_by_quartile`` [4] (haloes
    per quartile, for ``binomial_se``).
    """
    lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    y = _targets(y_true, "y_true")
    if lo.shape != hi.shape or lo.shape[:2] != y.shape or lo.ndim not in (2, 3):
        raise ValueError(f"lower and upper must be [N, 4] or [N, 4, L] for y_true {y.shape}; got {lo.shape}, {hi.shape}")
    yy = y if lo.ndim == 2 else y[:, :, None]
    inside = (lo <= yy) & (yy <= hi)
    q = mass_quartile_index(m_h)
    if len(q) != len(y):
        raise ValueError(f"m_h has {len(q)} haloes, y_true {len(y)}")
    by_q = np.stack([inside[q == k].mean(axis=0) for k in range(N_QUARTILES)])
    return {"overall": inside.mean(axis=0), "by_quartile": by_q,
            "n_by_quartile": np.bincount(q, minlength=N_QUARTILES)}


def pit_values(cdf_at_truth, bins: int = 10) -> dict[str, np.ndarray]:
    """Probability integral transform: the sampler's CDF at each true value, [N, 4] in [0, 1] (e.g.
    ``app.core.sampling.mixture_cdf`` per property), and its calibration histogram.

    A calibrated sampler gives uniform PITs: ``fractions`` [4, bins] ~ 1/bins (too many at both ends:
    too narrow; a hump: too wide; a slope: biased).  Also ``edges`` [bins + 1], ``chi2`` [4] of the
    counts against uniform (``bins - 1`` degrees of freedom), its ``p_value`` [4] and ``max_dev`` [4]
    = max |fraction - 1/bins|.
    """
    pit = _targets(cdf_at_truth, "cdf_at_truth")
    if np.any(~np.isfinite(pit)) or pit.min() < 0.0 or pit.max() > 1.0:
        raise ValueError("PIT values must be finite and within [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.minimum((pit * bins).astype(np.int64), bins - 1)  # 1.0 goes to the last bin
    counts = np.stack([np.bincount(idx[:, d], minlength=bins) for d in range(pit.shape[1])]).astype(np.float64)
    expected = len(pit) / bins
    chi2 = np.sum((counts - expected) ** 2, axis=1) / expected
    fractions = counts / len(pit)
    return {"pit": pit, "edges": edges, "fractions": fractions, "chi2": chi2,
            "p_value": stats.chi2.sf(chi2, bins - 1), "max_dev": np.max(np.abs(fractions - 1.0 / bins), axis=1)}


def residual_scatter(prediction, y) -> np.ndarray:
    """RMS residual [4] of point predictions (e.g. the stack's on the validation split), in target units:
    the sigma of the homoscedastic baseline N(prediction, sigma^2)."""
    return np.sqrt(np.mean((_targets(y) - _targets(prediction, "prediction")) ** 2, axis=0))


def homoscedastic_crps(prediction, scatter, y_true) -> np.ndarray:
    """CRPS [N, 4] (target units) of the baseline N(prediction, scatter^2): the stack's mean with one
    residual scatter per property (``residual_scatter`` on the validation split)."""
    mu = _targets(prediction, "prediction")
    sigma = np.broadcast_to(np.asarray(scatter, dtype=np.float64), mu.shape)
    return crps_gaussian(mu, sigma, _targets(y_true, "y_true"))


def crps_summary(crps_model, crps_baseline) -> dict[str, dict[str, float]]:
    """Mean CRPS per property of the model and of the baseline ([N, 4] each, target units), and their
    ratio model / baseline (< 1: the sampler's distributions beat a Gaussian of fixed width)."""
    cm, cb = _targets(crps_model, "crps_model"), _targets(crps_baseline, "crps_baseline")
    out = {}
    for d, t in enumerate(TARGET_NAMES):
        m, b = float(np.mean(cm[:, d])), float(np.mean(cb[:, d]))
        out[t] = {"model": m, "baseline": b, "ratio": m / b}
    return out


# ----------------------------------------------------------------------------- populations


def bin_masks(y, edges: Mapping[str, Sequence[float]] = PAPER_BIN_EDGES) -> np.ndarray:
    """Membership [4 properties, 2 bins, N] of each galaxy in the bins [lo, mid) and [mid, hi) of each
    property (the paper's Table 1 by default; the same half-open bins as ``galaxypaint pk``)."""
    y = _targets(y)
    all_edges = _checked_bin_edges(edges)
    out = np.empty((len(TARGET_NAMES), 2, len(y)), dtype=bool)
    for d, t in enumerate(TARGET_NAMES):
        lo, mid, hi = all_edges[t]
        out[d, 0] = (y[:, d] >= lo) & (y[:, d] < mid)
        out[d, 1] = (y[:, d] >= mid) & (y[:, d] < hi)
    return out


def bin_counts(y, edges: Mapping[str, Sequence[float]] = PAPER_BIN_EDGES) -> np.ndarray:
    """Galaxies in each of the 8 property bins: int [4 properties (TARGET_NAMES order), 2 bins]."""
    return bin_masks(y, edges).sum(axis=2)


@dataclass
class BinSpectra:
    """Shot-noise-subtracted P(k) of the 8 bin populations of one catalog: ``power`` [4, 2, nk]
    (Mpc/h)^3 (NaN for an empty bin), ``counts`` [4, 2], ``k`` [nk] mean |k| per bin (h/Mpc)."""

    k: np.ndarray
    k_edges: np.ndarray
    power: np.ndarray
    counts: np.ndarray


def bin_spectra(pos, y, box: float, nmesh: int = 256, edges: Mapping[str, Sequence[float]] = PAPER_BIN_EDGES,
                k_edges: np.ndarray | None = None) -> BinSpectra:
    """P(k) of each property bin's galaxies at their halo positions: TSC + interlacing, shot noise
    subtracted, ``default_k_edges(box, nmesh)`` unless given; the measurement of ``galaxypaint pk``."""
    pos = np.asarray(pos, dtype=np.float64)
    masks = bin_masks(y, edges)
    if pos.shape != (masks.shape[2], 3):
        raise ValueError(f"pos must be [N, 3] for {masks.shape[2]} galaxies; got {pos.shape}")
    k_edges = default_k_edges(box, nmesh) if k_edges is None else np.asarray(k_edges, dtype=np.float64)
    nk = len(k_edges) - 1
    power = np.full(masks.shape[:2] + (nk,), np.nan)
    k = None
    for d, b in np.ndindex(*masks.shape[:2]):
        if not masks[d, b].any():
            continue
        ps = power_spectrum(pos[masks[d, b]], box, nmesh, scheme="tsc", interlacing=True, k_edges=k_edges,
                            subtract_shot_noise=True)
        power[d, b], k = ps.power, ps.k
    if k is None:
        raise ValueError("no galaxy falls in any property bin")
    return BinSpectra(k=k, k_edges=k_edges, power=power, counts=masks.sum(axis=2))


def ensemble_statistics(power_true, power_samples, k, kmax: float = DEFAULT_KMAX) -> dict[str, np.ndarray]:
    """Consistency of one true P(k) with an ensemble of S sampled ones, over the k bins with k < kmax.

    ``power_true`` [..., nk], ``power_samples`` [S, ..., nk] (S >= 2), ``k`` [nk] h/Mpc.  Returns the
    ensemble ``mean`` and ``var`` [..., nk] (variance across realizations, ddof = 1), and over k < kmax:
    ``consistency`` [...] = mean_k (P_true - <P_s>)^2 / (var_s (1 + 1/S)), which is ~1 when the truth is
    one more draw of the sampler's law (exactly (S - 1)/(S - 3) per k bin for Gaussian P: a squared
    Student t with S - 1 degrees of freedom), and ``rel_bias`` [...] = mean_k |<P_s> / P_true - 1|.
    """
    pt = np.asarray(power_true, dtype=np.float64)
    ps = np.asarray(power_samples, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    s = ps.shape[0]
    if s < 2 or ps.shape[1:] != pt.shape or pt.shape[-1] != len(k):
        raise ValueError(f"need power_samples [S >= 2, ..., nk] matching power_true {pt.shape} and k [{len(k)}]; "
                         f"got {ps.shape}")
    use = k < kmax
    if not use.any():
        raise ValueError(f"no k bin below kmax = {kmax:g} h/Mpc")
    mean = ps.mean(axis=0)
    var = ps.var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        consistency = np.mean(((pt - mean) ** 2 / (var * (1.0 + 1.0 / s)))[..., use], axis=-1)
        rel_bias = np.mean(np.abs(mean / pt - 1.0)[..., use], axis=-1)
    return {"mean": mean, "var": var, "consistency": consistency, "rel_bias": rel_bias, "k_used": k[use]}


def finite_or_none(v: float) -> float | None:
    """``v`` as a JSON number, or None where it is not finite (an empty bin's statistics)."""
    return float(v) if np.isfinite(v) else None


def finite_list(a) -> list[float | None]:
    """An array as JSON numbers, None where not finite."""
    return [finite_or_none(v) for v in np.asarray(a, dtype=np.float64)]


@dataclass
class EnsembleBin:
    """The clustering of one property bin: the truth against S sampled catalogs (see
    ``ensemble_statistics``); spectra in (Mpc/h)^3, k in h/Mpc."""

    target: str
    bin: int
    edges: tuple[float, float]
    n_true: int
    n_sample_mean: float
    k: np.ndarray
    power_true: np.ndarray
    power_mean: np.ndarray
    power_var: np.ndarray
    n_samples: int
    kmax: float
    consistency: float
    rel_bias: float

    def as_dict(self) -> dict:
        return {"target": self.target, "bin": self.bin, "edges": list(self.edges), "n_true": self.n_true,
                "n_sample_mean": self.n_sample_mean, "k": finite_list(self.k),
                "power_true": finite_list(self.power_true), "power_mean": finite_list(self.power_mean),
                "power_var": finite_list(self.power_var), "n_samples": self.n_samples, "kmax": self.kmax,
                "consistency": self.consistency, "rel_bias": self.rel_bias}


def ensemble_bins(true: BinSpectra, samples: Sequence[BinSpectra], kmax: float = DEFAULT_KMAX,
                  edges: Mapping[str, Sequence[float]] = PAPER_BIN_EDGES) -> list[EnsembleBin]:
    """``EnsembleBin`` per (property, bin) from spectra already measured (``bin_spectra``) on the same k bins."""
    if any(not np.array_equal(s.k_edges, true.k_edges) for s in samples):
        raise ValueError("every spectrum must use the same k bins")
    st = ensemble_statistics(true.power, np.stack([s.power for s in samples]), true.k, kmax)
    n_mean = np.mean([s.counts for s in samples], axis=0)
    all_edges = _checked_bin_edges(edges)
    out = []
    for d, t in enumerate(TARGET_NAMES):
        e = all_edges[t]
        for b in range(2):
            out.append(EnsembleBin(t, b, (float(e[b]), float(e[b + 1])), int(true.counts[d, b]), float(n_mean[d, b]),
                                   true.k, true.power[d, b], st["mean"][d, b], st["var"][d, b], len(samples), kmax,
                                   float(st["consistency"][d, b]), float(st["rel_bias"][d, b])))
    return out


def ensemble_clustering(pos, y_true, y_samples: Sequence[np.ndarray], box: float, nmesh: int = 256,
                        edges: Mapping[str, Sequence[float]] = PAPER_BIN_EDGES, kmax: float = DEFAULT_KMAX,
                        k_edges: np.ndarray | None = None) -> list[EnsembleBin]:
    """Clustering of the true galaxy populations against S sampled catalogs of the same haloes.

    ``pos`` [N, 3] halo positions (Mpc/h), ``y_true`` [N, 4], ``y_samples`` S arrays [N, 4] (S >= 2
    realizations of the sampler).  Per property and bin: P_true(k), the ensemble mean <P_s>(k) and
    variance var_s(k), and the two statistics of ``ensemble_statistics`` over k < ``kmax``.
    """
    if len(y_samples) < 2:
        raise ValueError("an ensemble needs at least 2 sampled catalogs")
    k_edges = default_k_edges(box, nmesh) if k_edges is None else np.asarray(k_edges, dtype=np.float64)
    true = bin_spectra(pos, y_true, box, nmesh, edges, k_edges)
    samples = [bin_spectra(pos, ys, box, nmesh, edges, k_edges) for ys in y_samples]
    return ensemble_bins(true, samples, kmax, edges)


# ----------------------------------------------------------------------------- one sampler, all at once

#: quantile levels (fractions) behind the 95 % and 68 % central intervals of ``evaluate_sampler``
INTERVAL_LEVELS = (0.025, 0.16, 0.84, 0.975)


def evaluate_sampler(weights, means, chol, y_true, m_h, ids, seed: int, baseline_prediction,
                     baseline_scatter, edges: Mapping[str, Sequence[float]] = PAPER_BIN_EDGES,
                     pit_bins: int = 10, lower: float | None = None) -> dict:
    """Every single-catalog statistic of a joint sampler on haloes with known galaxies, JSON-ready.

    ``weights``/``means``/``chol``: each halo's mixture over the 4 properties (``app.core.sampling``;
    target units); ``y_true`` [N, 4]; ``m_h`` [N]; ``ids``: the haloes' ids, with ``seed`` keying the one
    sampled catalog; ``baseline_prediction`` [N, 4] and ``baseline_scatter`` [4]: the homoscedastic
    baseline (the stacks' predictions and their validation residual scatter).  Returns the test NLL
    (nats per galaxy), K-S D per property, correlation differences per M_h quartile, 68/95 % interval
    coverage (overall and per quartile, with binomial standard errors), the PIT histogram, CRPS against
    the baseline, and galaxy counts per property bin (sampled / true).  ``lower``: the sampler's selection
    cut on the first property: its draws, density, and that property's quantiles, CDF and CRPS are the
    law conditioned on it; the other properties' quantiles, CDF and CRPS use the conditioned marginals
    of ``app.core.sampling.truncated_marginals``.
    """
    from app.core import sampling

    y = _targets(y_true, "y_true")
    w, mu, L = (np.asarray(a, dtype=np.float64) for a in (weights, means, chol))
    draws = sampling.sample_mixture(w, mu, L, ids, seed, lower=lower)
    nll = float(-np.mean(sampling.mixture_logpdf(w, mu, L, y, lower)))
    q = sampling.mixture_quantiles(w, mu, L, INTERVAL_LEVELS, lower=lower)  # [N, 4, 4]
    cov = interval_coverage(q[:, :, [0, 1]], q[:, :, [3, 2]], y, m_h)  # 95 %, 68 %
    # property 0 keeps its untruncated components (its functions apply the cut); the others are conditioned
    wt, md, sd = sampling.truncated_marginals(w, mu, L, lower)
    cdf = np.column_stack([sampling.mixture_cdf(w, mu[:, :, 0], sd[:, :, 0], y[:, 0], lower)]
                          + [sampling.mixture_cdf(wt, md[:, :, d], sd[:, :, d], y[:, d])
                             for d in range(1, y.shape[1])])
    pit = pit_values(np.clip(cdf, 0.0, 1.0), pit_bins)
    crps_model = np.column_stack(
        [sampling.crps_mixture(w, mu[:, :, 0], sd[:, :, 0], y[:, 0]) if lower is None else
         sampling.crps_truncated_mixture(w, mu[:, :, 0], sd[:, :, 0], y[:, 0], lower)]
        + [sampling.crps_mixture(wt, md[:, :, d], sd[:, :, d], y[:, d]) for d in range(1, y.shape[1])])
    crps = crps_summary(crps_model, homoscedastic_crps(baseline_prediction, baseline_scatter, y))
    corr = correlation_difference(draws, y, m_h)
    counts_s, counts_t = bin_counts(draws, edges), bin_counts(y, edges)
    n_q = cov["n_by_quartile"]

    def per_target(a) -> dict:
        return {t: float(a[d]) for d, t in enumerate(TARGET_NAMES)}

    def coverage(j: int, level: float) -> dict:
        return {"nominal": level, "overall": per_target(cov["overall"][:, j]),
                "by_quartile": {t: [float(v) for v in cov["by_quartile"][:, d, j]] for d, t in enumerate(TARGET_NAMES)},
                "se_overall": float(binomial_se(level, len(y))),
                "se_by_quartile": [float(v) for v in binomial_se(level, n_q)]}

    return {
        "n": int(len(y)), "seed": int(seed), "nll": nll,
        "ks_d": ks_per_property(draws, y),
        "correlation": {"pairs": list(PAIR_NAMES), "true": correlations_by_mass_quartile(y, m_h).tolist(),
                        "sampled": correlations_by_mass_quartile(draws, m_h).tolist(),
                        "max_abs_delta_by_quartile": [float(v) for v in corr["max_abs"]],
                        "max_abs_delta": corr["max_abs_overall"]},
        "coverage68": coverage(1, 0.68), "coverage95": coverage(0, 0.95),
        "pit": {"edges": pit["edges"].tolist(), "fractions": {t: pit["fractions"][d].tolist()
                                                               for d, t in enumerate(TARGET_NAMES)},
                "max_dev": per_target(pit["max_dev"])},
        "crps": crps,
        "bin_counts": {t: {"sampled": [int(v) for v in counts_s[d]], "true": [int(v) for v in counts_t[d]],
                           "ratio": [float(a / b) if b else None for a, b in zip(counts_s[d], counts_t[d])]}
                       for d, t in enumerate(TARGET_NAMES)},
    }
