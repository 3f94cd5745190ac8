"""The paper's evaluation for one training run: figures 2-9, tables, ``report.md`` and ``report.html``.

Inputs: the registry (the run's metrics and its registered ONNX models) and the training table (the
run's data fingerprint is checked; the test split is rebuilt from the run's seed or the table's
``split`` column).  Test-set predictions come from the registered per-model ONNX graphs through
onnxruntime; the stack's are its linear combination (coefficients from the registry), which the
export checked against the fused graph to 1e-4.
Figures (PNG, matplotlib): fig2 PDFs true vs predicted, fig3 Pearson r, fig4 K-S D, fig5 predicted vs
true density, fig6 joint relations (stacks vs truth contours), fig7 halo-feature importance per model,
fig8 model importance within the stack, fig9_<path> predicted vs true P(k) of the test galaxies.
When the run fitted the joint sampler, a section "Populations: the joint sampler" adds its test-split
evaluation (as the run stored it), fig2s sampled vs true vs mean-stack marginals, fig_corner the joint
law (true vs sampled), fig_pit PIT histograms and coverage per M_h quartile, and fig9_pk_sample the
P(k) of an ensemble of sampled catalogs against the truth and the mean stack (``pk_sample.json``).
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from app.science.clustering import BinComparison, compare_catalog, summary_table
from app.science.figures import _pyplot, plot_clustering, plot_sampled_clustering, property_label
from app.science.populations import DEFAULT_KMAX, N_QUARTILES, bin_spectra, ensemble_bins
from app.science.power_spectrum import default_k_edges
from app.core.model import SAMPLER_KIND, GalaxyModel
from app.core.registry import Registry, RegistryError
from app.core.box import resolve_box
from app.core.schema import FEATURE_NAMES, PAPER_PEARSON_R, POSITION_NAMES, TARGET_NAMES
from training.pipeline import TrainingError, data_fingerprint, split_indices

MODEL_LABELS = {"ert": "ERT", "knn": "kNN", "lgbm": "LGBM", "nn": "NN", "stack": "Stack", "selected stack": "Selected"}
PATH_STYLE = {"raw": "-", "smogn": "--"}
JOINT = [("M_h", "smass"), ("M_h", "radius"), ("smass", "sSFR"), ("smass", "color"), ("color", "sSFR")]

Progress = Callable[[str], None]


def _run_models(registry: Registry, run_id: str) -> dict[tuple[str, str, str], Any]:
    """(target, path, kind) -> ModelVersion registered by ``run_id``."""
    out = {}
    for latest in registry.list_models():
        for mv in registry.versions(latest.name):
            if mv.run_id == run_id:
                out[(mv.target, mv.variant, mv.kind)] = mv
    return out


def target_metrics(run: dict) -> dict:
    """target -> path -> metrics of a run (its ``sampler`` entry, when there is one, is not a target)."""
    return {t: v for t, v in run["metrics"].items() if t in TARGET_NAMES}


def latest_run_for(registry: Registry, df: pd.DataFrame) -> str:
    """The most recent run trained on exactly this table (same data fingerprint)."""
    fp = data_fingerprint(df)
    for run_id in reversed(registry.list_runs()):
        if registry.get_run(run_id)["data_fingerprint"] == fp:
            return run_id
    raise TrainingError("no training run in this registry was trained on this table; give --run")


def test_predictions(registry: Registry, run: dict, df: pd.DataFrame, test: np.ndarray,
                     progress: Progress = lambda m: None) -> dict[tuple[str, str], pd.DataFrame]:
    """(target, path) -> DataFrame of test-set predictions, one column per model and ``stack``."""
    models = _run_models(registry, run["run_id"])
    x = df[list(FEATURE_NAMES)].to_numpy(np.float64)[test]
    out = {}
    for target, per_path in target_metrics(run).items():
        for path, res in per_path.items():
            cols = {}
            kinds = list(res["models"])
            for kind in kinds:
                mv = models.get((target, path, kind))
                if mv is None:
                    raise TrainingError(f"the run's {target}/{path} {kind} model is not in the registry")
                t0 = time.perf_counter()
                cols[kind] = GalaxyModel(registry, {target: mv}, path).predict(x)[target]
                progress(f"[{target}/{path}] {kind}: {len(x):,} test predictions in {time.perf_counter() - t0:.1f} s")
            coef = res["stack"]["coef"]
            cols["stack"] = res["stack"]["intercept"] + sum(coef[k] * cols[k] for k in kinds)
            out[(target, path)] = pd.DataFrame(cols)
    return out


# ----------------------------------------------------------------------------- figures


def _save(fig, out: Path) -> Path:
    fig.savefig(out, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return out


def fig_pdfs(preds, truth: dict[str, np.ndarray], out: Path) -> Path:
    plt = _pyplot()
    targets = [t for t in TARGET_NAMES if t in truth]
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.6), squeeze=False)
    for ax, t in zip(axes[0], targets):
        y = truth[t]
        bins = np.linspace(*np.percentile(y, [0.1, 99.9]), 60)
        ax.hist(y, bins, density=True, color="0.75", label="true")
        for (tt, path), p in preds.items():
            if tt != t:
                continue
            for kind in p.columns:
                lw, alpha = (1.8, 1.0) if kind == "stack" else (0.9, 0.7)
                ax.hist(p[kind], bins, density=True, histtype="step", lw=lw, alpha=alpha, ls=PATH_STYLE[path],
                        color=f"C{list(MODEL_LABELS).index(kind)}", label=f"{MODEL_LABELS[kind]} {path}")
        ax.set_xlabel(property_label(t))
        ax.set_ylabel("PDF")
        ax.legend(fontsize=6, frameon=False)
    fig.suptitle("Fig. 2 — distributions of true and predicted values (test set)", y=1.03)
    return _save(fig, out)


def fig_metric_bars(metrics: pd.DataFrame, column: str, out: Path, title: str, paper: dict | None = None) -> Path:
    plt = _pyplot()
    targets = list(dict.fromkeys(metrics["target"]))
    fig, axes = plt.subplots(1, len(targets), figsize=(3.6 * len(targets), 3.4), squeeze=False, sharey=True)
    for ax, t in zip(axes[0], targets):
        sub = metrics[metrics.target == t]
        kinds = list(dict.fromkeys(sub["model"]))
        paths = list(dict.fromkeys(sub["path"]))
        width = 0.8 / len(paths)
        for i, path in enumerate(paths):
            # a path whose selection kept every member has no "selected stack" row: no bar
            vals = [next(iter(sub[(sub.model == k) & (sub.path == path)][column]), np.nan) for k in kinds]
            ax.bar(np.arange(len(kinds)) + i * width, vals, width, label=path, hatch="//" if path == "smogn" else None,
                   color=[f"C{list(MODEL_LABELS).index(k)}" for k in kinds], edgecolor="k", lw=0.4)
        if paper and t in paper:
            ax.axhline(paper[t], color="k", ls=":", lw=1, label="paper")
        ax.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, [MODEL_LABELS[k] for k in kinds], fontsize=8)
        ax.set_title(t)
        ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
    axes[0, 0].set_ylabel(column)
    fig.suptitle(title, y=1.03)
    return _save(fig, out)


def fig_density(preds, truth, out: Path, n: int = 30_000, seed: int = 0) -> Path:
    from scipy.stats import gaussian_kde

    plt = _pyplot()
    paths = sorted({p for _, p in preds})
    targets = [t for t in TARGET_NAMES if t in truth]
    fig, axes = plt.subplots(len(paths), len(targets), figsize=(3.8 * len(targets), 3.4 * len(paths)), squeeze=False,
                             gridspec_kw={"wspace": 0.38, "hspace": 0.3})
    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        for j, t in enumerate(targets):
            ax = axes[i, j]
            y, p = truth[t], preds[(t, path)]["stack"].to_numpy()
            pick = rng.choice(len(y), min(n, len(y)), replace=False)
            xy = np.vstack([y[pick], p[pick]])
            dens = gaussian_kde(xy[:, :3000])(xy)
            order = np.argsort(dens)
            sc = ax.scatter(xy[0, order], xy[1, order], c=dens[order] / dens.max(), s=2, cmap="viridis", rasterized=True)
            lo, hi = np.percentile(y, [0.1, 99.9])
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_xlabel("true " + property_label(t), fontsize=8)
            ax.set_ylabel(f"predicted ({path} stack)", fontsize=8)
    fig.colorbar(sc, ax=axes, shrink=0.6, label="normalized density")
    fig.suptitle("Fig. 5 — predicted vs true (test set)", y=1.03)
    return _save(fig, out)


def fig_joint(preds, truth, features: pd.DataFrame, out: Path) -> Path:
    """Contours (50/80/95 % of the 2-D density) of the truth and of each path's stacks."""
    plt = _pyplot()
    paths = sorted({p for _, p in preds})

    def column(name: str, path: str | None) -> np.ndarray | None:
        if name in FEATURE_NAMES:
            return features[name].to_numpy()
        if path is None:
            return truth.get(name)
        return preds[(name, path)]["stack"].to_numpy() if (name, path) in preds else None

    pairs = [(a, b) for a, b in JOINT if column(a, None) is not None and column(b, None) is not None]
    fig, axes = plt.subplots(1, max(1, len(pairs)), figsize=(3.6 * max(1, len(pairs)), 3.4), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs):
        xt, yt = column(a, None), column(b, None)
        rng = [np.percentile(xt, [0.5, 99.5]), np.percentile(yt, [0.5, 99.5])]
        curves = [("true", "k", "-", xt, yt)]
        curves += [(f"{p} stack", f"C{3 + i}", "--", column(a, p), column(b, p)) for i, p in enumerate(paths)]
        for label, color, ls, xs, ys in curves:
            if xs is None or ys is None:
                continue
            h, ex, ey = np.histogram2d(xs, ys, bins=40, range=rng, density=True)
            levels = np.unique(np.quantile(h[h > 0], [0.5, 0.8, 0.95]))
            ax.contour(0.5 * (ex[1:] + ex[:-1]), 0.5 * (ey[1:] + ey[:-1]), h.T, levels=levels, colors=color,
                       linewidths=1.0, linestyles=ls)
            ax.plot([], [], color=color, ls=ls, label=label)
        ax.set_xlabel(property_label(a) if a in TARGET_NAMES else r"$\log_{10} M_h\,[M_\odot/h]$", fontsize=8)
        ax.set_ylabel(property_label(b), fontsize=8)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Fig. 6 — joint relations: stacks vs truth (test set)", y=1.03)
    return _save(fig, out)


def fig_importance(importance: pd.DataFrame, out: Path, names: list[str], title: str) -> Path:
    plt = _pyplot()
    targets = list(dict.fromkeys(importance["target"]))
    fig, axes = plt.subplots(1, len(targets), figsize=(3.8 * len(targets), 3.4), squeeze=False, sharey=True)
    for ax, t in zip(axes[0], targets):
        sub = importance[importance.target == t]
        groups = list(dict.fromkeys(zip(sub.path, sub.model)))
        width = 0.8 / len(groups)
        by_name = all(n in MODEL_LABELS for n in names)  # the stack's members: one colour per member
        for i, (path, model) in enumerate(groups):
            row = sub[(sub.path == path) & (sub.model == model)].iloc[0]
            colors = ([f"C{list(MODEL_LABELS).index(n)}" for n in names] if by_name
                      else f"C{list(MODEL_LABELS).index(model)}")
            ax.bar(np.arange(len(names)) + i * width, [row[n] for n in names], width,
                   label=path if by_name else f"{MODEL_LABELS.get(model, model)} {path}",
                   hatch="//" if path == "smogn" else None, color=colors, edgecolor="k", lw=0.3)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, [MODEL_LABELS.get(n, n) for n in names], fontsize=8)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title(t)
        ax.legend(fontsize=6, frameon=False)
    axes[0, 0].set_ylabel("permutation importance (normalized)")
    fig.suptitle(title, y=1.03)
    return _save(fig, out)


# ----------------------------------------------------------------------------- tables and document


def metrics_table(run: dict) -> pd.DataFrame:
    rows = []
    for target, per_path in target_metrics(run).items():
        for path, res in per_path.items():
            stacks = [("stack", res["stack"])] + ([("selected stack", res["selected_stack"])]
                                                  if res.get("selected_stack") else [])
            for kind, m in [*res["models"].items(), *stacks]:
                members = list(m.get("components") or m.get("coef", {})) if "stack" in kind else []
                rows.append({"target": target, "path": path, "model": kind, "pearson_r": m["pearson_r"],
                             "mse": m["mse"], "ks_d": m["ks_d"], "members": ",".join(members),
                             "halos_per_s": m.get("halos_per_s", np.nan)})
    return pd.DataFrame(rows)


def importance_tables(run: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    feats, stack = [], []
    for target, per_path in target_metrics(run).items():
        for path, res in per_path.items():
            for kind, m in res["models"].items():
                feats.append({"target": target, "path": path, "model": kind, **m["importance_normalized"]})
            stack.append({"target": target, "path": path, "model": "stack", **res["stack"]["importance_normalized"]})
    return pd.DataFrame(feats), pd.DataFrame(stack)


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the joint sampler

#: S sampled catalogs behind ``fig9_pk_sample`` (``build_report``'s default; 0 skips the ensemble)
DEFAULT_ENSEMBLE_SEEDS = 10
#: S of the report made at the end of ``galaxypaint train``: each catalog costs 8 P(k) at the report's
#: mesh, FFT-bound at 256^3 (one P(k) 0.37 s on a lightly loaded core, about the same for 1,200 or 69,600
#: galaxies, so ~3 s a catalog; 7-14 s on the shared 2-core machine under a load of 5-8), so S = 5 keeps
#: the sampler section near 20 s on a quiet machine (measured 47-67 s under that load)
TRAIN_ENSEMBLE_SEEDS = 5
#: 2-D contours of the corner plot: the regions holding these fractions of the galaxies
CONTOUR_MASS = (0.5, 0.8, 0.95)


def run_sampler(registry: Registry, run_id: str) -> Any | None:
    """The joint sampler (``ModelVersion``) registered by ``run_id``, or None (``--no-sampler``, older runs)."""
    for latest in registry.list_models():
        for mv in registry.versions(latest.name):
            if mv.run_id == run_id and mv.kind == SAMPLER_KIND:
                return mv
    return None


def draw_catalogs(registry: Registry, mv, x: np.ndarray, ids: np.ndarray, seeds: list[int]) -> list[np.ndarray]:
    """One sampled catalog [N, 4] (``TARGET_NAMES`` order, target units) per seed, through the registered
    ONNX graph: the draws of ``GalaxyModel.predict(x, Mode("sample", seed), ids)``, the mixture computed once."""
    return list(GalaxyModel(registry, {t: mv for t in TARGET_NAMES}, "raw").sample_seeds(x, ids, seeds))


def sampler_tables(evaluation: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The stored evaluation as two tables: per property, and per M_h quartile (lowest mass first)."""
    e = evaluation
    rows = []
    for t in TARGET_NAMES:
        c, counts = e["crps"][t], e["bin_counts"][t]
        rows.append({"property": t, "ks_d": e["ks_d"][t], "cov68": e["coverage68"]["overall"][t],
                     "cov95": e["coverage95"]["overall"][t], "crps_model": c["model"], "crps_baseline": c["baseline"],
                     "crps_ratio": c["ratio"], "bin1_sampled": counts["sampled"][0], "bin1_true": counts["true"][0],
                     "bin2_sampled": counts["sampled"][1], "bin2_true": counts["true"][1],
                     "pit_max_dev": e["pit"]["max_dev"][t]})
    quartiles = []
    for q in range(N_QUARTILES):
        row: dict[str, Any] = {"M_h quartile": q + 1}
        for level in ("68", "95"):
            cov = e[f"coverage{level}"]
            row.update({f"cov{level} {t}": cov["by_quartile"][t][q] for t in TARGET_NAMES})
            row[f"se{level}"] = cov["se_by_quartile"][q]
        row["max_abs_dcorr"] = e["correlation"]["max_abs_delta_by_quartile"][q]
        quartiles.append(row)
    return pd.DataFrame(rows), pd.DataFrame(quartiles)


def fig_sampled_marginals(y_true: np.ndarray, y_sample: np.ndarray, means: dict[str, np.ndarray], out: Path) -> Path:
    """Fig. 2 for the sampler: true, one sampled catalog and the raw mean stack, per property."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(TARGET_NAMES), figsize=(4.2 * len(TARGET_NAMES), 3.6), squeeze=False)
    for d, (ax, t) in enumerate(zip(axes[0], TARGET_NAMES)):
        bins = np.linspace(*np.percentile(y_true[:, d], [0.1, 99.9]), 60)
        ax.hist(y_true[:, d], bins, density=True, color="0.75", label="true")
        ax.hist(y_sample[:, d], bins, density=True, histtype="step", lw=1.6, color="C0", label="sampled")
        if t in means:
            ax.hist(means[t], bins, density=True, histtype="step", lw=1.2, ls="--", color="C3",
                    label="mean stack (raw)")
        ax.set_xlabel(property_label(t))
        ax.set_ylabel("PDF")
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Fig. 2s — marginal distributions: true, sampled (one catalog) and mean stack (test set)", y=1.03)
    return _save(fig, out)


def mass_levels(h: np.ndarray, fractions=CONTOUR_MASS) -> np.ndarray:
    """Density levels (ascending) whose super-level sets of the histogram ``h`` hold ``fractions`` of its mass."""
    flat = np.sort(h.ravel())[::-1]
    cum = np.cumsum(flat)
    if cum[-1] <= 0:
        return np.zeros(0)
    cum /= cum[-1]
    return np.unique([flat[min(int(np.searchsorted(cum, f)), len(flat) - 1)] for f in fractions])


def fig_corner(y_true: np.ndarray, y_sample: np.ndarray, out: Path) -> Path:
    """Corner plot of the four properties: 1-D histograms on the diagonal, 2-D contours holding 50/80/95 %
    of the galaxies below it; true (black) vs one sampled catalog (blue, dashed)."""
    plt = _pyplot()
    n = len(TARGET_NAMES)
    fig, axes = plt.subplots(n, n, figsize=(2.6 * n, 2.6 * n), gridspec_kw={"hspace": 0.08, "wspace": 0.08})
    ranges = [np.percentile(y_true[:, d], [0.5, 99.5]) for d in range(n)]
    nb = int(np.clip(np.sqrt(len(y_true)) / 2, 15, 40))
    for i in range(n):
        for j in range(n):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                bins = np.linspace(*ranges[i], 2 * nb)
                ax.hist(y_true[:, i], bins, density=True, color="0.75")
                ax.hist(y_sample[:, i], bins, density=True, histtype="step", color="C0", lw=1.3)
                ax.set_yticks([])
                ax.set_xlim(ranges[i])
            else:
                for y, color, ls in ((y_true, "k", "-"), (y_sample, "C0", "--")):
                    h, ex, ey = np.histogram2d(y[:, j], y[:, i], bins=nb, range=[ranges[j], ranges[i]])
                    levels = mass_levels(h)
                    if len(levels):
                        ax.contour(0.5 * (ex[1:] + ex[:-1]), 0.5 * (ey[1:] + ey[:-1]), h.T, levels=levels,
                                   colors=color, linewidths=1.0, linestyles=ls)
                ax.set_xlim(ranges[j])
                ax.set_ylim(ranges[i])
            ax.tick_params(labelsize=7, labelbottom=i == n - 1, labelleft=j == 0 and i > 0)
            if i == n - 1:
                ax.set_xlabel(property_label(TARGET_NAMES[j]), fontsize=8)
            if j == 0 and i > 0:
                ax.set_ylabel(property_label(TARGET_NAMES[i]), fontsize=8)
    axes[0, n - 1].plot([], [], color="k", label="true")
    axes[0, n - 1].plot([], [], color="C0", ls="--", label="sampled (one catalog)")
    axes[0, n - 1].legend(loc="upper right", frameon=False, fontsize=9,
                          title="contours: 50 / 80 / 95 % of galaxies", title_fontsize=8)
    fig.suptitle("Joint distribution of the four properties: true vs sampled (test set)", y=0.92)
    return _save(fig, out)


def fig_pit(evaluation: dict, out: Path) -> Path:
    """Top: PIT histogram per property (uniform line, ±2 binomial sigma band); bottom: 68 % and 95 %
    coverage per M_h quartile with nominal ±2 binomial sigma bands (all from the stored evaluation)."""
    plt = _pyplot()
    e = evaluation
    edges = np.asarray(e["pit"]["edges"])
    nbins = len(edges) - 1
    n = e["n"]
    fig, axes = plt.subplots(2, len(TARGET_NAMES), figsize=(3.8 * len(TARGET_NAMES), 6.4), squeeze=False,
                             gridspec_kw={"hspace": 0.45})
    band = 2 * np.sqrt((1 / nbins) * (1 - 1 / nbins) / n)
    q = np.arange(1, N_QUARTILES + 1)
    for j, t in enumerate(TARGET_NAMES):
        ax = axes[0, j]
        ax.stairs(e["pit"]["fractions"][t], edges, fill=True, color="C0", alpha=0.6)
        ax.axhspan(1 / nbins - band, 1 / nbins + band, color="0.85", zorder=0)
        ax.axhline(1 / nbins, color="k", lw=0.8, ls=":")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("PIT (sampler CDF at the true value)", fontsize=8)
        if j == 0:
            ax.set_ylabel("fraction of galaxies", fontsize=8)
        ax = axes[1, j]
        for level, color in (("68", "C1"), ("95", "C2")):
            cov = e[f"coverage{level}"]
            se = np.asarray(cov["se_by_quartile"])
            ax.fill_between(q, cov["nominal"] - 2 * se, cov["nominal"] + 2 * se, color=color, alpha=0.2, lw=0)
            ax.axhline(cov["nominal"], color=color, lw=0.8, ls=":")
            ax.plot(q, cov["by_quartile"][t], "o-", color=color, ms=4, label=f"{level} % interval")
        ax.set_xticks(q)
        ax.set_xlabel(r"$M_h$ quartile (low to high)", fontsize=8)
        if j == 0:
            ax.set_ylabel("coverage", fontsize=8)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Calibration of the sampler: PIT histograms and interval coverage per halo-mass quartile "
                 "(bands: ±2 binomial σ)", y=0.98)
    return _save(fig, out)


def _true_bin_spectra(results: list[BinComparison], k_edges: np.ndarray) -> Any | None:
    """The true populations' spectra of a Fig. 9 comparison as ``BinSpectra`` (the same measurement:
    TSC + interlacing, shot noise subtracted, the same bins and k edges), or None when incomplete."""
    from app.science.populations import BinSpectra

    by = {(r.target, r.bin): r for r in results if r.power_true is not None}
    if any((t, b) not in by for t in TARGET_NAMES for b in range(2)):
        return None
    power = np.stack([[by[(t, b)].power_true for b in range(2)] for t in TARGET_NAMES])
    counts = np.array([[by[(t, b)].n_true for b in range(2)] for t in TARGET_NAMES])
    return BinSpectra(k=by[(TARGET_NAMES[0], 0)].k, k_edges=k_edges, power=power, counts=counts)


def _finite(v):
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def ensemble_section(registry: Registry, mv, seed: int, x: np.ndarray, test: np.ndarray, test_df: pd.DataFrame,
                     y_true: np.ndarray, first: np.ndarray, mean_results: list[BinComparison] | None, out: Path,
                     box: float, nmesh: int, n_seeds: int, progress: Progress) -> tuple[list[str], Path, list[dict]]:
    """Fig. 9 for S sampled catalogs (seeds ``seed``, ``seed`` + 1, ...; ``first`` is the catalog of ``seed``):
    markdown, figure and table rows."""
    seeds = [seed + i for i in range(n_seeds)]
    t0 = time.perf_counter()
    catalogs = [first] + draw_catalogs(registry, mv, x, test, seeds[1:])
    progress(f"[sampler] {n_seeds} sampled catalogs of {len(x):,} test galaxies drawn in "
             f"{time.perf_counter() - t0:.1f} s")
    pos = test_df[list(POSITION_NAMES)].to_numpy(np.float64)
    k_edges = default_k_edges(box, nmesh)
    true = _true_bin_spectra(mean_results, k_edges) if mean_results else None
    if true is None:
        true = bin_spectra(pos, y_true, box, nmesh, k_edges=k_edges)
    samples = []
    for i, ys in enumerate(catalogs):
        t1 = time.perf_counter()
        samples.append(bin_spectra(pos, ys, box, nmesh, k_edges=k_edges))
        progress(f"[sampler] P(k) of sampled catalog {i + 1}/{n_seeds} (8 bins at {nmesh}^3) in "
                 f"{time.perf_counter() - t1:.1f} s")
    ens = ensemble_bins(true, samples, DEFAULT_KMAX)
    means_by = {(r.target, r.bin): r for r in (mean_results or [])}
    rows, records = [], []
    for e in ens:
        r = means_by.get((e.target, e.bin))
        bias_means = None
        if r is not None:
            use = e.k < e.kmax
            with np.errstate(divide="ignore", invalid="ignore"):
                bias_means = float(np.mean(np.abs(r.power_pred / e.power_true - 1.0)[use]))
        rows.append({"target": e.target, "bin": e.bin + 1, "range": f"[{e.edges[0]:g}, {e.edges[1]:g})",
                     "n_true": e.n_true, "n_sampled": e.n_sample_mean, "consistency": e.consistency,
                     "rel_bias": e.rel_bias, "rel_bias_mean_stack": np.nan if bias_means is None else bias_means})
        records.append({**e.as_dict(), "rel_bias_mean_stack": bias_means})
    payload = {"n_samples": n_seeds, "seeds": seeds, "box": box, "nmesh": nmesh, "kmax": DEFAULT_KMAX,
               "results": records}
    (out / "pk_sample.json").write_text(json.dumps(_finite(payload), allow_nan=False))
    fig = plot_sampled_clustering(ens, mean_results, out / "fig9_pk_sample.png",
                                   title=f"Fig. 9 — P(k) of {n_seeds} sampled catalogs (band: mean ± 1 sd) vs the "
                                         "true populations and the raw mean stack, test set")
    progress(f"[sampler] ensemble P(k) of {n_seeds} catalogs in {time.perf_counter() - t0:.1f} s")
    expect = (f"; for a truth that is one more draw of the sampler's law it is ~(S − 1)/(S − 3) = "
              f"{(n_seeds - 1) / (n_seeds - 3):.2f} per k bin" if n_seeds > 3 else
              " (its expectation is finite only for S > 3)")
    table = pd.DataFrame(rows)
    md = ["### Clustering of sampled catalogs", "",
          f"{n_seeds} catalogs drawn with seeds {seeds[0]}…{seeds[-1]} (the first is the catalog above); per property "
          f"bin, the P(k) of its sampled galaxies at their halo positions (box {box:g} Mpc/h, {nmesh}^3 mesh, TSC + "
          f"interlacing, shot noise subtracted) against the true population's and the raw mean stack's.  Over the "
          f"k bins below {DEFAULT_KMAX:g} h/Mpc: consistency = mean_k (P_true − <P_s>)^2 / (var_s (1 + 1/S)){expect}; "
          "rel_bias = mean_k |<P_s> / P_true − 1|, and rel_bias_mean_stack the same for the mean stack's P(k); "
          "n_sampled is the mean count over the catalogs.", "", _md(table), "", "![](fig9_pk_sample.png)", ""]
    return md, fig, table.to_dict(orient="records")


def sampler_section(registry: Registry, run: dict, df: pd.DataFrame, test: np.ndarray, test_df: pd.DataFrame,
                    preds: dict, pk_results: dict[str, list[BinComparison]], out: Path, box: float, nmesh: int,
                    ensemble_seeds: int, progress: Progress) -> dict[str, Any]:
    """The section "Populations: the joint sampler": markdown lines, figures, notes and a summary."""
    mv = run_sampler(registry, run["run_id"])
    entry = run["metrics"].get("sampler") or {}
    if mv is None:
        why = entry.get("skipped") or "trained with --no-sampler, without all four targets on the raw path, " \
                                      "or before the sampler existed"
        return {"md": [], "figures": {}, "summary": None,
                "notes": [f"This run registered no joint sampler ({why}): the section on sampled populations "
                          "is skipped."]}
    evaluation = entry.get("evaluation") or mv.extra.get("evaluation")
    if evaluation is None:
        return {"md": [], "figures": {}, "summary": None,
                "notes": [f"The run's sampler {mv.uri} has no stored evaluation: the section on sampled populations "
                          "is skipped."]}
    missing = [t for t in TARGET_NAMES if t not in test_df]
    if missing:
        return {"md": [], "figures": {}, "summary": None,
                "notes": [f"The table lacks the true {', '.join(missing)}: the section on sampled populations is "
                          "skipped."]}
    notes: list[str] = []
    figures: dict[str, Path] = {}
    seed = int(evaluation.get("seed", run["seed"]))
    t0 = time.perf_counter()
    x = df[list(FEATURE_NAMES)].to_numpy(np.float64)[test]
    y_true = test_df[list(TARGET_NAMES)].to_numpy(np.float64)
    first = draw_catalogs(registry, mv, x, test, [seed])[0]
    progress(f"[sampler] {mv.uri}: one catalog of {len(x):,} test galaxies (seed {seed}) in "
             f"{time.perf_counter() - t0:.1f} s; figures 2s, corner, PIT")
    means = {t: preds[(t, "raw")]["stack"].to_numpy() for t in TARGET_NAMES if (t, "raw") in preds}
    figures["fig2s"] = fig_sampled_marginals(y_true, first, means, out / "fig2s_marginals.png")
    figures["fig_corner"] = fig_corner(y_true, first, out / "fig_corner.png")
    figures["fig_pit"] = fig_pit(evaluation, out / "fig_pit.png")
    per_property, per_quartile = sampler_tables(evaluation)
    h = entry.get("hyperparameters") or mv.hyperparameters or {}
    arch = (f"{h['n_components']} Gaussian components, {h['width']}×{h['depth']} network"
            if all(k in h for k in ("n_components", "width", "depth")) else "Gaussian mixture density network")
    logs = [f for f, floor in zip(FEATURE_NAMES, h.get("log_floors") or ()) if floor is not None]
    if logs:
        arch += f"; {', '.join(logs)} enter as logarithms"
    if h.get("lower_cut") is not None:
        arch += f"; fitted and drawn as the law above the catalog's selection smass > {h['lower_cut']}"
    c68, c95 = evaluation["coverage68"], evaluation["coverage95"]
    md = ["## Populations: the joint sampler", "",
          f"The run's joint sampler `{mv.uri}` ({arch}) gives each halo a distribution over the four properties; "
          f"a catalog drawn from it should have the true populations, where the stacks' means are too narrow.  "
          f"Its evaluation on the {evaluation['n']:,} test halos, as the run stored it: test NLL "
          f"{evaluation['nll']:.4f} nats/galaxy; one catalog drawn with seed {seed}, each halo's draw keyed by its "
          f"row number in the training table.", "",
          "Per property: K-S D of the sampled vs the true marginal; the fraction of true values inside the "
          f"sampler's central 68 % and 95 % intervals (binomial σ {c68['se_overall']:.4f} and "
          f"{c95['se_overall']:.4f}); mean CRPS of the sampler and of a Gaussian of fixed width around the raw "
          "stack's mean (its validation residual scatter), and their ratio (< 1: the sampler's distributions are "
          "better); galaxies in the paper's two bins per property, sampled and true (the smaller is the tail); "
          "max |PIT fraction − uniform|.", "", _md(per_property), "",
          "Per M_h quartile (1 = lowest mass): coverage of the 68 % and 95 % intervals with its binomial σ (se), "
          "and the largest |sampled − true| of the 6 property correlations (max_abs_dcorr).", "", _md(per_quartile), "",
          "![](fig2s_marginals.png)", "", "![](fig_corner.png)", "", "![](fig_pit.png)", ""]
    pk_rows = None
    if ensemble_seeds == 0:
        notes.append("The P(k) of an ensemble of sampled catalogs was not measured (ensemble seeds 0).")
    elif not all(c in test_df for c in POSITION_NAMES):
        notes.append("The table has no halo positions: the P(k) of sampled catalogs is skipped.")
    else:
        lines, figures["fig9_sample"], pk_rows = ensemble_section(
            registry, mv, seed, x, test, test_df, y_true, first, pk_results.get("raw"), out, box, nmesh,
            ensemble_seeds, progress)
        md += lines
    progress(f"[sampler] section done in {time.perf_counter() - t0:.1f} s")
    return {"md": md, "figures": figures, "notes": notes,
            "summary": {"model": mv.uri, "evaluation": {"per_property": per_property.to_dict(orient="records"),
                                                        "per_quartile": per_quartile.to_dict(orient="records")},
                        "pk_sample": pk_rows}}


def build_report(registry: Registry, df: pd.DataFrame, out_dir: str | Path, run_id: str | None = None,
                 box: float | None = None, nmesh: int = 256, progress: Progress = lambda m: None,
                 ensemble_seeds: int = DEFAULT_ENSEMBLE_SEEDS) -> dict[str, Any]:
    """Write every figure, ``report.md``, ``report.html`` and ``pk_<path>.json``; returns a summary.

    ``box`` [Mpc/h] for the P(k) figures: None takes the one the table records (``df.attrs``), and a
    table with positions but no recorded box is refused (``BoxError``, naming ``--box``).

    When the run has a joint sampler, also its section (``sampler_section``): ``ensemble_seeds`` sampled
    catalogs (0, or at least 2) make ``fig9_pk_sample.png`` and ``pk_sample.json``."""
    if isinstance(ensemble_seeds, bool) or not isinstance(ensemble_seeds, (int, np.integer)) \
            or ensemble_seeds < 0 or ensemble_seeds == 1:
        raise ValueError(f"ensemble seeds must be 0 (no ensemble) or an integer >= 2, not {ensemble_seeds!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_id = run_id or latest_run_for(registry, df)
    try:
        run = registry.get_run(run_id)
    except RegistryError as exc:
        raise TrainingError(str(exc)) from None
    notes = []
    if all(c in df.columns for c in POSITION_NAMES):
        box, box_warnings = resolve_box(box, df.attrs, "the training table")
        notes += box_warnings
    if run["data_fingerprint"] != data_fingerprint(df):
        notes.append("The table given is not the one this run was trained on (data fingerprints differ): "
                     "the test split below is rebuilt from the run's seed on this table.")
    test = split_indices(df, run["seed"])["test"]
    test_df = df.iloc[test].reset_index(drop=True)
    preds = test_predictions(registry, run, df, test, progress)
    truth = {t: test_df[t].to_numpy(np.float64) for t in TARGET_NAMES if t in test_df and any(k[0] == t for k in preds)}

    figures = {}
    progress("figures 2-8")
    figures["fig2"] = fig_pdfs(preds, truth, out / "fig2_pdfs.png")
    metrics = metrics_table(run)
    figures["fig3"] = fig_metric_bars(metrics, "pearson_r", out / "fig3_pearson.png",
                                      "Fig. 3 — Pearson r (test set)", PAPER_PEARSON_R)
    figures["fig4"] = fig_metric_bars(metrics, "ks_d", out / "fig4_ks.png", "Fig. 4 — Kolmogorov-Smirnov D (test set)")
    figures["fig5"] = fig_density(preds, truth, out / "fig5_density.png")
    figures["fig6"] = fig_joint(preds, truth, test_df, out / "fig6_joint.png")
    imp_feat, imp_stack = importance_tables(run)
    figures["fig7"] = fig_importance(imp_feat, out / "fig7_feature_importance.png", list(FEATURE_NAMES),
                                     "Fig. 7 — halo-feature permutation importance (normalized to M_h)")
    kinds = [c for c in imp_stack.columns if c in MODEL_LABELS]
    figures["fig8"] = fig_importance(imp_stack, out / "fig8_stack_importance.png", kinds,
                                     "Fig. 8 — importance of the models within the stack (normalized to LGBM)")
    pk_tables, pk_results = {}, {}
    have_pos = all(c in test_df for c in POSITION_NAMES)
    for path in sorted({p for _, p in preds}):
        if not have_pos:
            notes.append("The table has no halo positions: Fig. 9 (P(k)) is skipped.")
            break
        painted = test_df[list(POSITION_NAMES) + list(truth)].copy()
        for t in truth:
            if (t, path) in preds:
                painted[t + "_pred"] = preds[(t, path)]["stack"].to_numpy()
        progress(f"Fig. 9 ({path}): power spectra of {len(painted):,} test galaxies at {nmesh}^3")
        results = pk_results[path] = compare_catalog(painted, box, nmesh)
        figures[f"fig9_{path}"] = plot_clustering(results, out / f"fig9_pk_{path}.png",
                                                  title=f"Fig. 9 — P(k) of predicted ({path} stacks) vs true "
                                                        f"populations, test set")
        pk_tables[path] = summary_table(results)
        pd.Series({"results": [r.as_dict() for r in results]}).to_json(out / f"pk_{path}.json")
    section = sampler_section(registry, run, df, test, test_df, preds, pk_results, out, box, nmesh,
                              int(ensemble_seeds), progress)
    figures.update(section["figures"])
    notes += section["notes"]

    md = [f"# galaxypaint report — run {run_id}", "",
          f"Trained {run['created_at']} · seed {run['seed']} · preset {run['config'].get('preset')} · "
          f"data fingerprint `{run['data_fingerprint'][:16]}…` · {len(test):,} test galaxies", ""]
    md += [f"> {n}" for n in notes] + ([""] if notes else [])
    production = run["config"].get("production", "paper")
    stacks_note = ("`stack` is the paper's stack of every member; `selected stack`, where there is one, stacks the "
                   "members kept by backward elimination on the validation split (a member goes while the stack's "
                   "cross-validated MSE stays within "
                   f"{100 * run['config'].get('selection_tol', 0.0025):g} % of the full stack's, costliest first); "
                   "halos_per_s is its fused graph's onnxruntime rate on the test rows during training.  "
                   f"`production` points to the {'selected' if production == 'selected' else 'paper'} stack "
                   "(`galaxypaint train --production`).")
    md += ["## Test-set metrics", "", _md(metrics), "", stacks_note, "", "![](fig3_pearson.png)", "",
           "![](fig4_ks.png)", "",
           "## Distributions", "", "![](fig2_pdfs.png)", "", "![](fig5_density.png)", "", "![](fig6_joint.png)", "",
           "## Permutation importance", "", "Halo features (normalized to M_h):", "", _md(imp_feat), "",
           "![](fig7_feature_importance.png)", "", "Models within the stack (normalized to LGBM):", "",
           _md(imp_stack), "", "![](fig8_stack_importance.png)", ""]
    for path, table in pk_tables.items():
        md += [f"## Clustering ({path} stacks)", "", f"Box {box:g} Mpc/h, {nmesh}^3 mesh, TSC + interlacing, "
               "shot noise subtracted; chi2 over the k bins with the paper's Gaussian errors.", "", _md(table), "",
               f"![](fig9_pk_{path}.png)", ""]
    md += section["md"]
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(_html(text, out))
    return {"run_id": run_id, "out": str(out), "figures": {k: str(v) for k, v in figures.items()},
            "pk": {p: t.to_dict(orient="records") for p, t in pk_tables.items()}, "notes": notes,
            "sampler": section["summary"]}


MEDIA_TYPES = {".png": "image/png", ".md": "text/markdown", ".html": "text/html", ".json": "application/json",
               ".csv": "text/csv"}


def store_report(registry: Registry, run_id: str, out_dir: str | Path) -> list[str]:
    """Keep a report's files with its run in the registry (a server shows them without the training table)."""
    stored = []
    for f in sorted(Path(out_dir).iterdir()):
        if f.is_file() and f.suffix in MEDIA_TYPES:
            registry.add_run_artefact(run_id, f.name, f.read_bytes(), MEDIA_TYPES[f.suffix])
            stored.append(f.name)
    return stored


def _html(markdown: str, out: Path) -> str:
    """A self-contained HTML page from the report's markdown subset (headings, tables, images, quotes)."""
    body, table = [], []

    def flush():
        if table:
            rows = [r.strip("|").split("|") for r in table if not r.startswith("|---")]
            head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in rows[0])
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in rows[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("!["):
            name = line[line.index("(") + 1:-1]
            data = base64.b64encode((out / name).read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith(">"):
            body.append(f"<blockquote>{html.escape(line[1:].strip())}</blockquote>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>galaxypaint report</title><style>{style}" \
           f"</style></head><body>{''.join(body)}</body></html>"
