"""The joint sampler's step of a training run: fit on the raw path, export, check, evaluate.

After the stacks, a run with all four targets on the raw path fits the mixture density network
(``training.sampler``) on the same training rows, chosen and early-stopped on the same validation
rows, with the schema's log-scaled features (``FEATURE_LOG_FLOORS``), as the law above the catalog's
stellar-mass selection when every galaxy of the catalog passes it (``selection_cut``); writes its ONNX
graph and checks it against the native distribution on the whole test split (|ONNX - native| <= 1e-4 on
weights, means and Cholesky factors, else nothing is registered); and judges it on the test split
(``app.science.populations.evaluate_sampler``) against the homoscedastic baseline made of the raw
stacks' test predictions and their validation residual scatter.  The sampler is drawn with the run's
seed, keyed by each test halo's row number in the training table (what ``galaxypaint paint`` uses for
a catalog without an ID column).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from app import __version__
from app.core.schema import CUTS, FEATURE_LOG_FLOORS, FEATURE_NAMES, TARGET_NAMES
from app.science.populations import TAIL_BIN, TAIL_NAME, evaluate_sampler, residual_scatter
from training import onnx_export as ox
from training.sampler import MixtureDensityNetwork, check_sampler_fidelity, sampler_graph

Progress = Callable[[str], None]


@dataclass
class SamplerResult:
    model: MixtureDensityNetwork
    graph: bytes
    fidelity: float
    evaluation: dict[str, Any]
    training_domain: dict[str, dict[str, float]]
    n_train: int
    n_val: int
    n_test: int
    seconds: float

    def hyperparameters(self) -> dict[str, Any]:
        m = self.model
        return {"family": "Gaussian mixture density network (full covariances, Cholesky factors)",
                "n_components": int(m.n_components_), "width": int(m.width_), "depth": int(m.depth_),
                "activation": m.activation, "diag_floor": float(m.diag_floor), "search": m.search,
                "lower_cut": m.lower_cut_, "log_floors": list(m.log_floors) if m.log_floors is not None else None,
                "learning_rate": float(m.learning_rate_), "batch_size": int(m.batch_size_),
                "epochs": int(m.epochs_), "best_epoch": int(m.best_epoch_), "candidates": m.search_}

    def metrics(self) -> dict[str, float]:
        """Flat numbers for the registry record (the full evaluation is in ``summary()``)."""
        e = self.evaluation
        out = {"test_nll": e["nll"], "val_nll": float(self.model.val_nll_), "onnx_max_abs_diff": self.fidelity,
               "ks_d": max(e["ks_d"].values()), "corr_max_abs_delta": e["correlation"]["max_abs_delta"]}
        for t in TARGET_NAMES:
            out[f"ks_d_{t}"] = e["ks_d"][t]
            out[f"coverage68_{t}"] = e["coverage68"]["overall"][t]
            out[f"coverage95_{t}"] = e["coverage95"]["overall"][t]
            out[f"crps_ratio_{t}"] = e["crps"][t]["ratio"]
        return out

    def summary(self) -> dict[str, Any]:
        return {"hyperparameters": self.hyperparameters(), "metrics": self.metrics(), "evaluation": self.evaluation,
                "training_domain": self.training_domain, "onnx_bytes": len(self.graph), "n_train": self.n_train,
                "n_val": self.n_val, "n_test": self.n_test, "fit_seconds": float(self.model.fit_seconds_),
                "seconds": self.seconds}


def stack_predictions(result, x: np.ndarray) -> np.ndarray:
    """A target's stack prediction for raw features ``x`` [N, 5], from a ``TargetResult`` (native models)."""
    z = result.scaler.transform(x)
    preds = np.column_stack([sel.estimator.predict(z) for sel in result.models.values()])
    return result.stack.model.predict(preds)


def selection_cut(smass: np.ndarray) -> float | None:
    """The stellar-mass selection the catalog's galaxies were drawn with: the schema's cut (the paper's
    sample, ``ingest-tng`` and the built-in catalog apply it) when every galaxy lies above it, else None
    (a catalog selected otherwise, or not at all, gets no truncation)."""
    return float(CUTS["smass"]) if len(smass) and float(np.min(smass)) > CUTS["smass"] else None


def train_sampler(df: pd.DataFrame, split: dict[str, np.ndarray], raw_results: dict, seed: int, search: str,
                  training_domain: dict[str, dict[str, float]], progress: Progress,
                  tol: float = 1e-4) -> SamplerResult:
    """Fit, export, check and evaluate the joint sampler; ``raw_results``: target -> the raw path's
    ``TargetResult`` (its stack is the baseline)."""
    t0 = time.perf_counter()
    x = df[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    y = df[list(TARGET_NAMES)].to_numpy(dtype=np.float64)
    tr, va, te = split["train"], split["val"], split["test"]
    cut = selection_cut(y[:, 0])  # the catalog's selection: every row, test included
    progress(f"[sampler] fitting the joint mixture density network ({search} search) on {len(tr):,} halos"
             + (f", as the law above the catalog's selection smass > {cut}" if cut is not None else
                f" (some galaxies have smass <= {CUTS['smass']}: no selection cut assumed)"))
    mdn = MixtureDensityNetwork(search=search, log_floors=FEATURE_LOG_FLOORS, lower_cut=cut, random_state=seed)
    mdn.fit(x[tr], y[tr], x[va], y[va], progress=lambda m: progress(f"[sampler] {m}"))
    progress(f"[sampler] exporting to ONNX and checking it on the {len(te):,} test halos")
    graph = sampler_graph(mdn, metadata={"kind": "sampler", "seed": seed, "training_domain": training_domain,
                                         "galaxypaint": __version__, "max_batch_rows": 16384})
    try:
        fidelity = check_sampler_fidelity(graph, mdn, x[te], tol=tol)
    except ox.FidelityError as exc:
        from training.pipeline import TrainingError

        raise TrainingError(f"sampler: {exc}; nothing was registered") from exc
    progress("[sampler] judging it on the test split (K-S, correlations, coverage, PIT, CRPS, bin counts)")
    baseline_val = np.column_stack([stack_predictions(raw_results[t], x[va]) for t in TARGET_NAMES])
    # the stacks' test predictions were made (on the same rows) when the stacks were scored
    baseline_test = np.column_stack([raw_results[t].scores["stack"].predictions for t in TARGET_NAMES])
    evaluation = evaluate_sampler(*mdn.distribution(x[te]), y[te], x[te, 0], te, seed, baseline_test,
                                  residual_scatter(baseline_val, y[va]), lower=mdn.lower_cut_)
    res = SamplerResult(mdn, graph, fidelity, evaluation, training_domain, len(tr), len(va), len(te),
                        time.perf_counter() - t0)
    m = res.metrics()
    progress(f"[sampler] K={mdn.n_components_} {mdn.width_}x{mdn.depth_}: test NLL {m['test_nll']:.3f} nats, "
             f"K-S D <= {m['ks_d']:.4f}, CRPS/baseline "
             + " ".join(f"{t} {m[f'crps_ratio_{t}']:.3f}" for t in TARGET_NAMES)
             + f" ({res.seconds:.0f} s)")
    return res


def format_sampler(entry: dict[str, Any]) -> str:
    """The sampler's test-split figures as text lines (the CLI's table)."""
    if "skipped" in entry:
        return f"sampler: not trained ({entry['skipped']})"
    e, h = entry["evaluation"], entry["hyperparameters"]
    lines = [f"joint sampler (raw): MDN K={h['n_components']} {h['width']}x{h['depth']}, test NLL {e['nll']:.4f} "
             f"nats/galaxy, ONNX diff {entry['metrics']['onnx_max_abs_diff']:.1e}",
             f"{'property':8s} {'KS D':>7s} {'cov68':>7s} {'cov95':>7s} {'CRPS':>9s} {'baseline':>9s} {'ratio':>6s} "
             f"{'tail bin sampled/true':>24s}"]
    for t in TARGET_NAMES:
        c = e["crps"][t]
        r = e["bin_counts"][t]["ratio"][TAIL_BIN[t]]
        tail = f"{TAIL_NAME[t]} {'n/a' if r is None else f'{r:.3f}'}"
        lines.append(f"{t:8s} {e['ks_d'][t]:7.4f} {100 * e['coverage68']['overall'][t]:6.2f}% "
                     f"{100 * e['coverage95']['overall'][t]:6.2f}% {c['model']:9.5f} {c['baseline']:9.5f} "
                     f"{c['ratio']:6.3f} {tail:>24s}")
    lines.append("max |delta correlation| per M_h quartile (low to high): "
                 + " ".join(f"{v:.3f}" for v in e["correlation"]["max_abs_delta_by_quartile"]))
    return "\n".join(lines)
