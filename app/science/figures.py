"""Figures (matplotlib, Agg backend) shared by the CLI, the service's jobs and the training report."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from app.science.clustering import BinComparison
from app.core.schema import COLUMNS

LABELS = {"smass": r"$\log_{10} M_\star\,[M_\odot/h]$", "sSFR": r"$\log_{10}\,\mathrm{sSFR}\,[h/\mathrm{yr}]$",
          "radius": r"$\log_{10} R_{1/2}\,[\mathrm{kpc}/h]$", "color": r"$g-i$ [mag]"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def property_label(target: str) -> str:
    return LABELS.get(target, f"{target} [{COLUMNS[target].unit}]" if target in COLUMNS else target)


def _positive(values: np.ndarray) -> np.ndarray:
    return np.where(values > 0, values, np.nan)


def plot_clustering(results: Sequence[BinComparison], out: Path, title: str = "", fmt: str | None = None) -> Path:
    """The paper's Fig. 9: per property (columns) and bin (rows), P(k) of the true population (band:
    the Gaussian error) and of the predicted one, with the residual (P_pred - P_true)^2 / sigma^2 below."""
    plt = _pyplot()
    targets = list(dict.fromkeys(r.target for r in results))
    # rows: bin 1 spectra, bin 1 residuals, spacer, bin 2 spectra, bin 2 residuals
    fig, axes = plt.subplots(5, len(targets), figsize=(3.6 * len(targets), 9.4), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1, 0.55, 3, 1], "hspace": 0.08, "wspace": 0.3})
    for ax in axes[2]:
        ax.axis("off")
    for j, t in enumerate(targets):
        for r in (r for r in results if r.target == t):
            ax, axr = axes[3 * r.bin, j], axes[3 * r.bin + 1, j]
            ok = r.k > 0
            # shot-noise-subtracted spectra can dip below zero where noise dominates: those bins are
            # left out of the log plot (not clipped to a floor, which draws spurious cliffs)
            curves = [c for c in (r.power_true, r.power_pred) if c is not None]
            positive = np.concatenate([c[ok & (c > 0)] for c in curves])
            floor = 0.3 * positive.min() if len(positive) else 1e-3
            if r.power_true is not None:
                lo = np.clip(r.power_true - r.sigma, floor, None)
                ax.fill_between(r.k[ok], lo[ok], np.clip(r.power_true + r.sigma, floor, None)[ok], color="0.8",
                                label="true ±1σ")
                ax.plot(r.k[ok], _positive(r.power_true)[ok], color="k", lw=1.2, label=f"true (N={r.n_true:,})")
            ax.plot(r.k[ok], _positive(r.power_pred)[ok], color="C3", lw=1.2, ls="--",
                    label=f"predicted (N={r.n_pred:,})")
            ax.set_ylim(bottom=floor)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.tick_params(labelbottom=False, labelsize=8)
            lo_e, hi_e = r.edges
            ax.set_title(f"{t}: [{lo_e:g}, {hi_e:g})", fontsize=9)
            ax.legend(fontsize=7, loc="lower left", frameon=False)
            if j == 0:
                ax.set_ylabel(r"$P(k)\ [(\mathrm{Mpc}/h)^3]$", fontsize=9)
            if r.residual is not None:
                axr.plot(r.k[ok], r.residual[ok], color="C3", lw=1)
                axr.text(0.97, 0.85, rf"$\chi^2/\mathrm{{dof}}={r.chi2_dof:.2f}$", transform=axr.transAxes,
                         ha="right", va="top", fontsize=7)
            axr.axhline(1.0, color="0.5", lw=0.6, ls=":")
            axr.set_xscale("log")
            axr.tick_params(labelsize=8)
            axr.set_xlabel(r"$k\ [h/\mathrm{Mpc}]$", fontsize=9)
            if j == 0:
                axr.set_ylabel(r"$\Delta^2/\sigma^2$", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight", format=fmt)
    plt.close(fig)
    return out
