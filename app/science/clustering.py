"""Clustering of predicted vs true galaxy populations (the paper's Sec. 5 and Fig. 9).

For each property the galaxies are split in two bins (the paper's Table 1 edges by default); the
power spectrum of the *predicted* population of a bin (galaxies whose ``<target>_pred`` falls in it,
at their halo positions) is compared with that of the *true* population (``<target>`` in the bin).
Both spectra are shot-noise subtracted.  Errors follow the paper:
sigma^2 / P^2 = 2 / (V_k V) ((1 + n P) / (n P))^2 with V_k = 4 pi k^2 dk / (2 pi)^3, i.e.
sigma = sqrt(2 / (V_k V)) (P + 1/n), with P and n of the true population (of the predicted one when
the catalog has no truth); residual = (P_pred - P_true)^2 / sigma^2 and chi^2 = sum over k bins; the mean relative difference [%]
is taken over the k bins where the true signal exceeds 3 sigma.
Units: positions and box in Mpc/h, k in h/Mpc, P in (Mpc/h)^3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from app.science.power_spectrum import PowerSpectrum, default_k_edges, gaussian_error, power_spectrum
from app.core.schema import PAPER_BIN_EDGES, POSITION_NAMES, PRED_SUFFIX, TARGET_NAMES


@dataclass
class BinComparison:
    """P(k) of one property bin: predicted population vs true population."""

    target: str
    bin: int
    edges: tuple[float, float]
    n_pred: int
    n_true: int | None
    k: np.ndarray
    power_pred: np.ndarray
    power_true: np.ndarray | None
    sigma: np.ndarray
    residual: np.ndarray | None = None
    chi2: float | None = None
    chi2_dof: float | None = None
    rel_diff_pct: float | None = None
    modes: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def as_dict(self) -> dict:
        arr = lambda a: None if a is None else [None if not np.isfinite(v) else float(v) for v in a]  # noqa: E731
        return {"target": self.target, "bin": self.bin, "edges": list(self.edges), "n_pred": self.n_pred,
                "n_true": self.n_true, "k": arr(self.k), "modes": arr(self.modes), "power_pred": arr(self.power_pred),
                "power_true": arr(self.power_true), "sigma": arr(self.sigma), "residual": arr(self.residual),
                "chi2": self.chi2, "chi2_dof": self.chi2_dof, "rel_diff_pct": self.rel_diff_pct}


def bin_edges(custom: Mapping[str, Sequence[float]] | None = None) -> dict[str, tuple[float, float, float]]:
    """The paper's two-bin edges per property, with ``custom`` overrides ([lo, mid, hi] each)."""
    out = dict(PAPER_BIN_EDGES)
    for target, edges in (custom or {}).items():
        if target not in TARGET_NAMES:
            raise ValueError(f"bin edges for unknown property {target!r}")
        e = tuple(float(v) for v in edges)
        if len(e) != 3 or not (e[0] < e[1] < e[2]):
            raise ValueError(f"bin edges for {target} must be three increasing values lo,mid,hi")
        out[target] = e  # type: ignore[assignment]
    return out


def _spectrum(pos: np.ndarray, box: float, nmesh: int, k_edges: np.ndarray, scheme: str) -> PowerSpectrum:
    return power_spectrum(pos, box, nmesh, scheme=scheme, interlacing=True, k_edges=k_edges,
                          subtract_shot_noise=True)


def compare_bin(pos_pred: np.ndarray, pos_true: np.ndarray | None, box: float, nmesh: int,
                k_edges: np.ndarray, scheme: str = "tsc", target: str = "", bin_index: int = 0,
                edges: tuple[float, float] = (np.nan, np.nan)) -> BinComparison:
    """Compare the P(k) of two populations (``pos_*`` [N, 3] in Mpc/h); ``pos_true`` may be None."""
    if len(pos_pred) == 0:
        raise ValueError(f"no predicted galaxies in the {target} bin {edges}")
    volume = box ** 3
    pp = _spectrum(pos_pred, box, nmesh, k_edges, scheme)
    if pos_true is None:
        sigma = gaussian_error(pp.power, k_edges, box, len(pos_pred) / volume)
        return BinComparison(target, bin_index, edges, len(pos_pred), None, pp.k, pp.power, None, sigma,
                             modes=pp.modes)
    if len(pos_true) == 0:
        raise ValueError(f"no true galaxies in the {target} bin {edges}")
    pt = _spectrum(pos_true, box, nmesh, k_edges, scheme)
    sigma = gaussian_error(pt.power, k_edges, box, len(pos_true) / volume)
    residual = (pp.power - pt.power) ** 2 / sigma ** 2
    ok = np.isfinite(residual)
    chi2 = float(residual[ok].sum())
    # mean relative difference over the k bins where the true signal is measured (P_true > 3 sigma):
    # elsewhere P_true ~ 0 after shot-noise subtraction and the ratio is noise
    significant = ok & (pt.power > 3.0 * sigma)
    rel = 100.0 * (pp.power[significant] - pt.power[significant]) / pt.power[significant]
    return BinComparison(target, bin_index, edges, len(pos_pred), len(pos_true), pp.k, pp.power, pt.power, sigma,
                         residual, chi2, chi2 / max(int(ok.sum()), 1), float(rel.mean()) if rel.size else None,
                         modes=pp.modes)


def compare_catalog(df: pd.DataFrame, box: float, nmesh: int = 256, targets: Sequence[str] | None = None,
                    edges: Mapping[str, Sequence[float]] | None = None, k_edges: np.ndarray | None = None,
                    scheme: str = "tsc", progress: Callable[[float, str], None] | None = None
                    ) -> list[BinComparison]:
    """Every (property, bin) comparison for a painted catalog with ``x, y, z`` and ``<target>_pred``.

    Targets default to every property with a ``_pred`` column; the truth is used when the catalog has
    the property's own column.  ``progress(fraction, message)`` is called after each bin.
    """
    missing = [c for c in POSITION_NAMES if c not in df.columns]
    if missing:
        raise ValueError(f"the catalog lacks halo positions {', '.join(missing)}")
    if targets is None:
        targets = [t for t in TARGET_NAMES if t + PRED_SUFFIX in df.columns]
    if not targets:
        raise ValueError("the catalog has no predicted property column (<target>_pred): paint or predict it first")
    for t in targets:
        if t + PRED_SUFFIX not in df.columns:
            raise ValueError(f"the catalog lacks {t + PRED_SUFFIX}")
    pos = df[list(POSITION_NAMES)].to_numpy(dtype=np.float64)
    if not np.isfinite(pos).all():
        raise ValueError("halo positions x, y, z contain NaN or infinite values")
    if k_edges is None:
        k_edges = default_k_edges(box, nmesh)
    all_edges = bin_edges(edges)
    out = []
    steps = 2 * len(targets)
    for t in targets:
        lo, mid, hi = all_edges[t]
        pred = df[t + PRED_SUFFIX].to_numpy(dtype=np.float64)
        true = df[t].to_numpy(dtype=np.float64) if t in df.columns else None
        for b, (a, c) in enumerate(((lo, mid), (mid, hi))):
            sel_pred = (pred >= a) & (pred < c)
            sel_true = None if true is None else (true >= a) & (true < c)
            out.append(compare_bin(pos[sel_pred], None if sel_true is None else pos[sel_true], box, nmesh,
                                   k_edges, scheme, t, b, (a, c)))
            if progress:
                progress(len(out) / steps, f"{t} bin {b + 1}")
    return out


def summary_table(results: Sequence[BinComparison]) -> pd.DataFrame:
    """One row per (property, bin): counts, chi^2, chi^2/dof and mean relative difference [%]."""
    return pd.DataFrame([{"target": r.target, "bin": r.bin + 1, "range": f"[{r.edges[0]:g}, {r.edges[1]:g})",
                          "n_pred": r.n_pred, "n_true": r.n_true, "chi2": r.chi2, "chi2_dof": r.chi2_dof,
                          "rel_diff_pct": r.rel_diff_pct} for r in results])


def long_table(results: Sequence[BinComparison]) -> pd.DataFrame:
    """One row per (property, bin, k): the spectra, errors and residuals (for CSV output)."""
    rows = []
    for r in results:
        for i in range(len(r.k)):
            rows.append({"target": r.target, "bin": r.bin + 1, "k": r.k[i], "modes": r.modes[i],
                         "power_pred": r.power_pred[i],
                         "power_true": None if r.power_true is None else r.power_true[i],
                         "sigma": r.sigma[i], "residual": None if r.residual is None else r.residual[i]})
    return pd.DataFrame(rows)
