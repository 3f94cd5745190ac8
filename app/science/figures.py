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


def _bin_grid(plt, n_targets: int):
    """Figure and axes for two bins per property: rows bin 1 spectra, bin 1 ratios or residuals, a
    spacer, bin 2 spectra, bin 2 ratios or residuals; one column per property."""
    fig, axes = plt.subplots(5, n_targets, figsize=(3.6 * n_targets, 9.4), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1, 0.55, 3, 1], "hspace": 0.08, "wspace": 0.3})
    for ax in axes[2]:
        ax.axis("off")
    return fig, axes


def _panels(plt, items):
    """The bin grid for ``items`` (each with ``target`` and ``bin``): the figure, and per item (its
    column, the item, its spectrum axes, the axes below them), properties in order of appearance."""
    targets = list(dict.fromkeys(i.target for i in items))
    fig, axes = _bin_grid(plt, len(targets))
    return fig, [(j, i, axes[3 * i.bin, j], axes[3 * i.bin + 1, j])
                 for j, t in enumerate(targets) for i in items if i.target == t]


def _style_panel(ax, axr, item, first_column: bool, lower_label: str) -> None:
    """What both Fig. 9 variants share: log k (and log P above), the bin as title, axis labels on the
    outer panels."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.tick_params(labelbottom=False, labelsize=8)
    ax.set_title(f"{item.target}: [{item.edges[0]:g}, {item.edges[1]:g})", fontsize=9)
    axr.set_xscale("log")
    axr.tick_params(labelsize=8)
    axr.set_xlabel(r"$k\ [h/\mathrm{Mpc}]$", fontsize=9)
    for a in (ax, axr):  # a narrow k range labels every minor tick, over the panel below
        a.xaxis.set_minor_formatter(NullFormatter())
    if first_column:
        ax.set_ylabel(r"$P(k)\ [(\mathrm{Mpc}/h)^3]$", fontsize=9)
        axr.set_ylabel(lower_label, fontsize=9)


def _log_floor(curves, ok: np.ndarray) -> float:
    """The lower edge of a log-scaled P(k) panel: 0.3 x the smallest positive value shown."""
    positive = np.concatenate([c[ok & (c > 0)] for c in curves])
    return 0.3 * positive.min() if len(positive) else 1e-3


def _save(plt, fig, out: Path, title: str, fmt: str | None) -> Path:
    if title:
        fig.suptitle(title, fontsize=11)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight", format=fmt)
    plt.close(fig)
    return out


def plot_clustering(results: Sequence[BinComparison], out: Path, title: str = "", fmt: str | None = None) -> Path:
    """The paper's Fig. 9: per property (columns) and bin (rows), P(k) of the true population (band:
    the Gaussian error) and of the predicted one, with the residual (P_pred - P_true)^2 / sigma^2 below."""
    plt = _pyplot()
    fig, panels = _panels(plt, results)
    for j, r, ax, axr in panels:
        ok = r.k > 0
        # shot-noise-subtracted spectra can dip below zero where noise dominates: those bins are
        # left out of the log plot (not clipped to a floor, which draws spurious cliffs)
        floor = _log_floor([c for c in (r.power_true, r.power_pred) if c is not None], ok)
        if r.power_true is not None:
            lo = np.clip(r.power_true - r.sigma, floor, None)
            ax.fill_between(r.k[ok], lo[ok], np.clip(r.power_true + r.sigma, floor, None)[ok], color="0.8",
                            label="true ±1σ")
            ax.plot(r.k[ok], _positive(r.power_true)[ok], color="k", lw=1.2, label=f"true (N={r.n_true:,})")
        ax.plot(r.k[ok], _positive(r.power_pred)[ok], color="C3", lw=1.2, ls="--",
                label=f"predicted (N={r.n_pred:,})")
        ax.set_ylim(bottom=floor)
        _style_panel(ax, axr, r, j == 0, r"$\Delta^2/\sigma^2$")
        ax.legend(fontsize=7, loc="lower left", frameon=False)
        if r.residual is not None:
            axr.plot(r.k[ok], r.residual[ok], color="C3", lw=1)
            axr.text(0.97, 0.85, rf"$\chi^2/\mathrm{{dof}}={r.chi2_dof:.2f}$", transform=axr.transAxes,
                     ha="right", va="top", fontsize=7)
        axr.axhline(1.0, color="0.5", lw=0.6, ls=":")
    return _save(plt, fig, out, title, fmt)


def plot_sampled_clustering(ensemble: Sequence, means: Sequence[BinComparison] | None, out: Path,
                            title: str = "", fmt: str | None = None) -> Path:
    """Fig. 9 for sampled catalogs: per property (columns) and bin (rows), P(k) of the true population,
    of the mean-stack prediction's (``means``: ``BinComparison``s of the same bins, optional) and the
    band <P_s> ± 1 sd of S sampled catalogs (``ensemble``: ``app.science.populations.EnsembleBin``s);
    below, each spectrum over the true one.  The k bins above the statistics' kmax are shaded."""
    plt = _pyplot()
    means_by = {(r.target, r.bin): r for r in (means or ())}
    fig, panels = _panels(plt, ensemble)
    for j, e, ax, axr in panels:
        ok = e.k > 0
        sd = np.sqrt(np.clip(e.power_var, 0.0, None))
        mean_pred = means_by.get((e.target, e.bin))
        floor = _log_floor([e.power_true, e.power_mean] + ([mean_pred.power_pred] if mean_pred is not None else []),
                           ok)
        ax.fill_between(e.k[ok], np.clip(e.power_mean - sd, floor, None)[ok],
                        np.clip(e.power_mean + sd, floor, None)[ok], color="C0", alpha=0.3, lw=0,
                        label=f"sampled, S={e.n_samples} (±1 sd)")
        ax.plot(e.k[ok], _positive(e.power_mean)[ok], color="C0", lw=1.0)
        ax.plot(e.k[ok], _positive(e.power_true)[ok], color="k", lw=1.2, label=f"true (N={e.n_true:,})")
        if mean_pred is not None:
            ax.plot(e.k[ok], _positive(mean_pred.power_pred)[ok], color="C3", lw=1.2, ls="--",
                    label=f"mean stack (N={mean_pred.n_pred:,})")
        ax.set_ylim(bottom=floor)
        _style_panel(ax, axr, e, j == 0, r"$P / P_\mathrm{true}$")
        ax.legend(fontsize=6, loc="lower left", frameon=False)
        ax.text(0.97, 0.95, f"consistency {e.consistency:.2f}\nrel. bias {e.rel_bias:.3f}",
                transform=ax.transAxes, ha="right", va="top", fontsize=7)
        with np.errstate(divide="ignore", invalid="ignore"):
            pt = np.where(e.power_true > 0, e.power_true, np.nan)
            axr.fill_between(e.k[ok], ((e.power_mean - sd) / pt)[ok], ((e.power_mean + sd) / pt)[ok],
                             color="C0", alpha=0.3, lw=0)
            axr.plot(e.k[ok], (e.power_mean / pt)[ok], color="C0", lw=1.0)
            if mean_pred is not None:
                axr.plot(e.k[ok], (mean_pred.power_pred / pt)[ok], color="C3", lw=1.0, ls="--")
        axr.axhline(1.0, color="k", lw=0.6)
        axr.set_ylim(0.0, 2.0)
        xlim = ax.get_xlim()
        for a in (ax, axr):
            if e.kmax < xlim[1]:
                a.axvspan(e.kmax, xlim[1], color="0.92", zorder=0)
            a.set_xlim(xlim)
    return _save(plt, fig, out, title, fmt)

