"""The paper's evaluation for one training run: figures 2-9, tables, ``report.md`` and ``report.html``.

Inputs: the registry (the run's metrics and its registered ONNX models) and the training table (the
run's data fingerprint is checked; the test split is rebuilt from the run's seed or the table's
``split`` column).  Test-set predictions come from the registered per-model ONNX graphs through
onnxruntime; the stack's are its linear combination (coefficients from the registry), which the
export checked against the fused graph to 1e-4.
Figures (PNG, matplotlib): fig2 PDFs true vs predicted, fig3 Pearson r, fig4 K-S D, fig5 predicted vs
true density, fig6 joint relations (stacks vs truth contours), fig7 halo-feature importance per model,
fig8 model importance within the stack, fig9_<path> predicted vs true P(k) of the test galaxies.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from app.science.clustering import compare_catalog, summary_table
from app.science.figures import _pyplot, plot_clustering, property_label
from app.core.model import GalaxyModel
from app.core.registry import Registry, RegistryError
from app.core.schema import FEATURE_NAMES, PAPER_PEARSON_R, POSITION_NAMES, TARGET_NAMES
from training.pipeline import TrainingError, data_fingerprint, split_indices

MODEL_LABELS = {"ert": "ERT", "knn": "kNN", "lgbm": "LGBM", "nn": "NN", "stack": "Stack"}
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
            vals = [sub[(sub.model == k) & (sub.path == path)][column].iloc[0] for k in kinds]
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
            for kind, m in [*res["models"].items(), ("stack", res["stack"])]:
                rows.append({"target": target, "path": path, "model": kind, "pearson_r": m["pearson_r"],
                             "mse": m["mse"], "ks_d": m["ks_d"]})
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


def build_report(registry: Registry, df: pd.DataFrame, out_dir: str | Path, run_id: str | None = None,
                 box: float = 205.0, nmesh: int = 256, progress: Progress = lambda m: None) -> dict[str, Any]:
    """Write every figure, ``report.md``, ``report.html`` and ``pk_<path>.json``; returns a summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_id = run_id or latest_run_for(registry, df)
    try:
        run = registry.get_run(run_id)
    except RegistryError as exc:
        raise TrainingError(str(exc)) from None
    notes = []
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
    pk_tables = {}
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
        results = compare_catalog(painted, box, nmesh)
        figures[f"fig9_{path}"] = plot_clustering(results, out / f"fig9_pk_{path}.png",
                                                  title=f"Fig. 9 — P(k) of predicted ({path} stacks) vs true "
                                                        f"populations, test set")
        pk_tables[path] = summary_table(results)
        pd.Series({"results": [r.as_dict() for r in results]}).to_json(out / f"pk_{path}.json")

    md = [f"# galaxypaint report — run {run_id}", "",
          f"Trained {run['created_at']} · seed {run['seed']} · preset {run['config'].get('preset')} · "
          f"data fingerprint `{run['data_fingerprint'][:16]}…` · {len(test):,} test galaxies", ""]
    md += [f"> {n}" for n in notes] + ([""] if notes else [])
    md += ["## Test-set metrics", "", _md(metrics), "", "![](fig3_pearson.png)", "", "![](fig4_ks.png)", "",
           "## Distributions", "", "![](fig2_pdfs.png)", "", "![](fig5_density.png)", "", "![](fig6_joint.png)", "",
           "## Permutation importance", "", "Halo features (normalized to M_h):", "", _md(imp_feat), "",
           "![](fig7_feature_importance.png)", "", "Models within the stack (normalized to LGBM):", "",
           _md(imp_stack), "", "![](fig8_stack_importance.png)", ""]
    for path, table in pk_tables.items():
        md += [f"## Clustering ({path} stacks)", "", f"Box {box:g} Mpc/h, {nmesh}^3 mesh, TSC + interlacing, "
               "shot noise subtracted; chi2 over the k bins with the paper's Gaussian errors.", "", _md(table), "",
               f"![](fig9_pk_{path}.png)", ""]
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(_html(text, out))
    return {"run_id": run_id, "out": str(out), "figures": {k: str(v) for k, v in figures.items()},
            "pk": {p: t.to_dict(orient="records") for p, t in pk_tables.items()}, "notes": notes}


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
