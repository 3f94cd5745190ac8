"""Training runs: split, fit the four models and the stack per target and path, measure, export, register.

One run = one table, one seed, one preset.  For each target and path the run
0. on the ``smogn`` path, augments the training and the validation split separately with SMOGN
   (``training.smogn``, the paper's per-target settings); the test split is never augmented;
1. standardizes the 5 halo features (StandardScaler fitted on the training split);
2. fits ERT, kNN, LightGBM and the NN, each chosen on the validation split (``training.estimators``);
3. fits the stack, a LinearRegression on the four models' validation-set predictions (the real
   validation rows, also on the smogn path: see ``stack_rows``);
4. measures every model and the stack on the untouched test split (Pearson r, MSE, K-S D,
   permutation importance: halo features for the models, model outputs for the stack);
5. writes one ONNX graph per model and one fused graph (scaler + 4 models + stacker) and checks each
   against the native predictions on the whole test split (|diff| <= 1e-4, else nothing is registered);
6. publishes the graphs with their metrics, hyperparameters, seed, data fingerprint, package versions
   and training domain, and records the run.

``train_target`` runs steps 0-5 for one (target, path) as ``prepare_data`` -> ``fit_models`` ->
``fit_stack`` -> ``evaluate`` -> ``export``, and returns a ``TargetResult``; ``TargetResult.summary()``
is the run summary's (and the registry records') dict for it.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd

from app import __version__
from app.core.registry import Registry, model_name
from app.core.schema import COLUMNS, FEATURE_NAMES, SPLIT_COLUMN, TARGET_NAMES
from training import onnx_export as ox
from training.estimators import MODEL_KINDS, PRESETS, Preset, Selection, fit_learner
from training.metrics import normalized, permutation_importance, regression_metrics
from training.smogn import paper_sampler as smogn_sampler

PATHS: tuple[str, ...] = ("raw", "smogn")
SPLIT_FRACTIONS = (0.48, 0.12, 0.40)
FIDELITY_TOL = 1e-4
#: members by serving cost, costliest first (ONNX on 2 cores, built-in catalog: exact kNN ~80k rows/s, ERT
#: 0.2-0.25M, LightGBM 0.5-1M, the MLP ~10M): member selection drops the costliest member it may drop
COST_ORDER: tuple[str, ...] = ("knn", "ert", "lgbm", "nn")
#: what ``production`` points to after a run: the stack of the members selected on validation, or the paper's
PRODUCTION_STACKS: tuple[str, ...] = ("selected", "paper")
#: member selection may raise the stack's cross-validated validation MSE by this fraction of the full stack's,
#: at ~97.5 % confidence (0.25 %: a Pearson r of 0.7 moves by < 0.001 at that MSE rise; larger r move less)
SELECTION_TOL = 0.0025
SELECTION_FOLDS = 5

Progress = Callable[[str], None]


class TrainingError(Exception):
    """Training cannot proceed; the message is meant for the user."""


@dataclass
class TrainConfig:
    targets: tuple[str, ...] = TARGET_NAMES
    paths: tuple[str, ...] = ("raw",)
    seed: int = 42
    preset: str = "fast"
    alias: str | None = "production"
    models: tuple[str, ...] = MODEL_KINDS
    #: per-target SMOGN parameters overriding ``training.smogn.PAPER_DEFAULTS`` (e.g. ``{"sSFR": {"k": 5}}``)
    smogn: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: rows the smogn path's stack is fit on: the real validation rows (default) or the augmented ones
    #: (the paper's literal recipe; it weights the models for the augmented distribution)
    smogn_stack_rows: str = "real"
    #: also fit the joint sampler (raw path, all four targets; ``training.sampler_step``)
    sampler: bool = True
    #: which stack ``alias`` (production) points to: ``selected`` (members chosen on validation) or ``paper``
    production: str = "selected"
    #: member selection's tolerance: relative rise of the stack's cross-validated validation MSE
    selection_tol: float = SELECTION_TOL
    #: re-split with the seeded default (``SPLIT_FRACTIONS``) even when the table has a ``split`` column
    ignore_split: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def sampler_skipped(self) -> str | None:
        """Why this run fits no joint sampler (None: it fits one)."""
        if not self.sampler:
            return "--no-sampler"
        if "raw" not in self.paths:
            return "the sampler is trained on the raw path only, and this run has none"
        if set(self.targets) != set(TARGET_NAMES):
            return "the joint sampler models all four properties: train every target"
        return None

    def validate(self) -> None:
        bad = [t for t in self.targets if t not in TARGET_NAMES]
        if bad:
            raise TrainingError(f"unknown target {', '.join(bad)}: choose from {', '.join(TARGET_NAMES)}")
        bad = [p for p in self.paths if p not in PATHS]
        if bad:
            raise TrainingError(f"unknown path {', '.join(bad)}: choose from {', '.join(PATHS)}")
        for target, params in self.smogn.items():
            if target not in TARGET_NAMES:
                raise TrainingError(f"SMOGN parameters for unknown target {target!r}")
            try:
                smogn_sampler(target, self.seed, **params).get_params()
            except TypeError as exc:
                raise TrainingError(f"SMOGN parameters for {target}: {exc}") from None
        if self.smogn_stack_rows not in ("real", "augmented"):
            raise TrainingError(f"smogn_stack_rows must be 'real' or 'augmented', not {self.smogn_stack_rows!r}")
        if self.preset not in PRESETS:
            raise TrainingError(f"unknown preset {self.preset!r}: choose from {', '.join(PRESETS)}")
        if self.production not in PRODUCTION_STACKS:
            raise TrainingError(f"production must be one of {', '.join(PRODUCTION_STACKS)}, not {self.production!r}")
        if not (isinstance(self.selection_tol, (int, float)) and 0 <= self.selection_tol < 1):
            raise TrainingError(f"the selection tolerance must be a fraction in [0, 1), not {self.selection_tol!r}")


def split_indices(df: pd.DataFrame, seed: int) -> dict[str, np.ndarray]:
    """Row positions of train/val/test: the table's ``split`` column if present, else a seeded 48/12/40 split.

    A ``split`` column with train and validation rows but no test rows is accepted: "test" is then the
    validation rows (see :func:`split_notes`: the metrics are validation metrics, and in-sample for the
    stack, which is fit on those rows)."""
    if SPLIT_COLUMN in df.columns:
        labels = df[SPLIT_COLUMN].astype(str).to_numpy()
        out = {s: np.flatnonzero(labels == s) for s in ("train", "val", "test")}
        if len(out["test"]) == 0 and len(out["train"]) and len(out["val"]):
            out["test"] = out["val"]
        empty = [s for s, idx in out.items() if len(idx) == 0]
        if empty:
            raise TrainingError(f"the split column has no {', '.join(empty)} rows: fill it in, or re-split with "
                                f"the seeded default ({'/'.join(f'{f:.0%}' for f in SPLIT_FRACTIONS)}) "
                                "with --ignore-split")
        return out
    n = len(df)
    perm = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(round(SPLIT_FRACTIONS[0] * n)), int(round(SPLIT_FRACTIONS[1] * n))
    return {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
            "test": np.sort(perm[n_train + n_val:])}


def evaluated_on(split: dict[str, np.ndarray]) -> str:
    """The rows the run's metrics are measured on: ``test``, or ``val`` when the split has no test rows."""
    return "val" if split["test"] is split["val"] else "test"


def split_notes(split: dict[str, np.ndarray]) -> list[str]:
    """Warnings about how a split is measured (empty when there is a proper test split)."""
    if evaluated_on(split) == "test":
        return []
    return ["the split column has train and validation rows only: the metrics are measured on the "
            f"{len(split['val']):,} validation rows, which chose each model's hyperparameters and fit the stack, "
            "so they are optimistic (the stack's are in-sample); give test rows, or --ignore-split to re-split "
            "with the seeded default"]


def without_split(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` without its ``split`` column (``--ignore-split``: the seeded default split is used)."""
    return df.drop(columns=[SPLIT_COLUMN]) if SPLIT_COLUMN in df.columns else df


def data_fingerprint(df: pd.DataFrame) -> str:
    """sha256 of the feature, target and split columns (values and order), independent of file format."""
    h = hashlib.sha256()
    for col in (*FEATURE_NAMES, *TARGET_NAMES, SPLIT_COLUMN):
        if col in df.columns:
            h.update(col.encode())
            values = df[col].to_numpy()
            h.update(values.astype(str).astype("S").tobytes() if values.dtype.kind in "OUT" else
                     np.ascontiguousarray(values, dtype=np.float64).tobytes())
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    out = {"galaxypaint": __version__}
    for pkg in ("numpy", "scipy", "pandas", "scikit-learn", "lightgbm", "tensorflow-cpu", "tensorflow", "keras",
                "onnx", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def training_domain(x_train: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-feature range of the training set (min, max and the central 99 %), in schema units."""
    return {name: {"min": float(x_train[:, j].min()), "max": float(x_train[:, j].max()),
                   "p0.5": float(np.percentile(x_train[:, j], 0.5)),
                   "p99.5": float(np.percentile(x_train[:, j], 99.5))}
            for j, name in enumerate(FEATURE_NAMES)}


@dataclass
class Scaler:
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Scaler":
        from sklearn.preprocessing import StandardScaler

        s = StandardScaler().fit(x)
        return cls(s.mean_.astype(np.float64), s.scale_.astype(np.float64))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale


def build_graph(target: str, path: str, kind: str, scaler: Scaler, parts: list[tuple[list, list]],
           meta: dict[str, Any]) -> bytes:
    """One ONNX graph on raw features: the scaler, then ``parts`` (node and initializer lists), with metadata."""
    s_nodes, s_inits = ox.scaler_nodes(scaler.mean, scaler.scale, ox.INPUT_NAME, "scaled")
    nodes, inits = list(s_nodes), list(s_inits)
    for n, i in parts:
        nodes += n
        inits += i
    metadata_props = {"target": target, "unit": COLUMNS[target].unit, "path": path, "kind": kind,
                      "feature_order": json.dumps(list(FEATURE_NAMES)), **{k: (v if isinstance(v, str) else
                                                                                json.dumps(v)) for k, v in meta.items()}}
    model = ox.make_model(nodes, inits, f"{target}-{path}-{kind}", metadata_props)
    return model.SerializeToString()


# ----------------------------------------------------------------------------- one (target, path), step by step
#
# train_target = prepare_data -> fit_models -> fit_stack -> evaluate -> export, each a function of the
# previous steps' typed outputs; TargetResult.summary() is the one place they become the run summary's dict.


@dataclass
class TargetData:
    """The rows of one (target, path), raw (schema units) and standardized (``z_*``, with ``scaler``).

    On the smogn path the training and validation rows are augmented; ``*_val_real`` are the
    validation rows as they are; the test rows are never augmented."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_val_real: np.ndarray
    y_val_real: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    scaler: Scaler
    smogn: dict[str, Any] | None = None
    z_train: np.ndarray = field(init=False, repr=False)
    z_val: np.ndarray = field(init=False, repr=False)
    z_val_real: np.ndarray = field(init=False, repr=False)
    z_test: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.z_train, self.z_val, self.z_val_real, self.z_test = (
            self.scaler.transform(a) for a in (self.x_train, self.x_val, self.x_val_real, self.x_test))


@dataclass
class Stack:
    """The stacking LinearRegression on the components' predictions (in ``components`` order)."""

    model: Any
    components: tuple[str, ...]
    fit_on: str

    def as_dict(self) -> dict[str, Any]:
        return {"coef": dict(zip(self.components, self.model.coef_.tolist())),
                "intercept": float(self.model.intercept_), "fit_on": self.fit_on}


@dataclass
class Scores:
    """Test-set predictions, metrics (Pearson r, MSE, K-S D) and permutation importance of one model or
    of the stack; ``names`` are what the importances are of (halo features, or the stack's components)."""

    predictions: np.ndarray
    metrics: dict[str, float]
    names: tuple[str, ...]
    importance: np.ndarray
    importance_std: np.ndarray
    importance_normalized: np.ndarray

    def importance_dict(self) -> dict[str, dict[str, float]]:
        return {"importance": dict(zip(self.names, self.importance.tolist())),
                "importance_std": dict(zip(self.names, self.importance_std.tolist())),
                "importance_normalized": dict(zip(self.names, self.importance_normalized.tolist()))}


@dataclass
class Graph:
    """A serialized ONNX graph on raw features, checked against its native model on the test split."""

    data: bytes
    max_batch_rows: int
    onnx_max_abs_diff: float
    #: onnxruntime halos/s on the test rows (fused stacks only; a measurement, never used in a decision)
    halos_per_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"onnx_max_abs_diff": self.onnx_max_abs_diff, "onnx_bytes": len(self.data),
                **({"halos_per_s": self.halos_per_s} if self.halos_per_s is not None else {})}


@dataclass
class MemberSelection:
    """Backward elimination of stack members on the validation rows (``select_members``)."""

    kept: tuple[str, ...]
    cv_mse_full: float
    tol: float
    steps: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"kept": list(self.kept), "cv_mse_full": self.cv_mse_full, "tol": self.tol, "steps": self.steps,
                "folds": SELECTION_FOLDS, "cost_order": list(COST_ORDER)}


@dataclass
class TargetResult:
    """Everything one (target, path) produced: fitted models, stack, scores and graphs (not yet registered)."""

    target: str
    path: str
    models: dict[str, Selection]
    stack: Stack
    scores: dict[str, Scores]  # per model kind, "stack" and (if it differs) "selected"
    graphs: dict[str, Graph]  # per model kind, "stack" (the paper's fused graph) and "selected"
    training_domain: dict[str, dict[str, float]]
    scaler: Scaler
    smogn: dict[str, Any] | None
    n_train: int
    n_val: int
    n_test: int
    selection: MemberSelection | None = None
    #: the stack of the selected members; None when the selection kept every member (the paper's stack is it)
    selected: Stack | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """This result as the run summary's ``results[target][path]`` (what the registry records, the
        CLI's table and metrics file and the report read)."""
        out: dict[str, Any] = {"models": {}, "n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test}
        for kind, sel in self.models.items():
            s = self.scores[kind]
            out["models"][kind] = {**s.metrics, **s.importance_dict(),
                                   "hyperparameters": sel.estimator.hyperparameters(), "search": sel.search,
                                   "fit_seconds": sel.fit_seconds, **self.graphs[kind].as_dict()}
        if self.smogn:
            out["smogn"] = self.smogn
        s = self.scores["stack"]
        out["stack"] = {**s.metrics, **self.stack.as_dict(), **s.importance_dict(), **self.graphs["stack"].as_dict()}
        if self.selection is not None:
            out["selection"] = self.selection.as_dict()
        if self.selected is not None:
            s = self.scores["selected"]
            out["selected_stack"] = {**s.metrics, **self.selected.as_dict(), "components": list(self.selected.components),
                                     **s.importance_dict(), **self.graphs["selected"].as_dict()}
        out["training_domain"] = self.training_domain
        out["scaler"] = {"mean": self.scaler.mean.tolist(), "scale": self.scaler.scale.tolist()}
        out["seconds"] = self.seconds
        return out


def prepare_data(df: pd.DataFrame, split: dict[str, np.ndarray], target: str, path: str, cfg: TrainConfig,
                 progress: Progress) -> TargetData:
    """The split's rows for ``target`` (SMOGN-augmented on the smogn path) and the scaler fitted on the training rows."""
    x = df[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    y = df[target].to_numpy(dtype=np.float64)
    tr, va, te = split["train"], split["val"], split["test"]
    x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]
    augmentation = None
    if path == "smogn":
        x_tr, y_tr, x_va, y_va, augmentation = _augment(target, cfg, x_tr, y_tr, x_va, y_va, progress)
    return TargetData(x_tr, y_tr, x_va, y_va, x[va], y[va], x[te], y[te], Scaler.fit(x_tr), augmentation)


def fit_models(data: TargetData, kinds: tuple[str, ...], preset: Preset, seed: int,
               progress: Progress) -> dict[str, Selection]:
    """Each kind's preset candidates fitted on the (scaled) training rows and chosen on the validation rows."""
    models: dict[str, Selection] = {}
    for kind in kinds:
        t0 = time.perf_counter()
        progress(f"fitting {kind}")
        models[kind] = fit_learner(kind, preset, data.z_train, data.y_train, data.z_val, data.y_val, seed, progress)
        progress(f"{kind} done in {time.perf_counter() - t0:.1f} s")
    return models


def stack_rows(data: TargetData, path: str, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """The (scaled) rows the stack is fit on, and how to describe them.

    The stack combines the models for the real distribution: by default it is fit on the validation
    rows as they are, also on the smogn path (the models were trained and chosen on augmented splits;
    fitting the stack on synthetic rows weights them for a distribution the test set does not have,
    which left it below the best single model for sSFR and colour); ``smogn_stack_rows="augmented"``
    fits it on the augmented validation split instead, as a literal reading of the paper.
    """
    if path == "smogn" and cfg.smogn_stack_rows == "augmented":
        return data.z_val, data.y_val, "augmented validation rows"
    return data.z_val_real, data.y_val_real, "validation rows (never augmented)"


def fit_stack(models: dict[str, Selection], x: np.ndarray, y: np.ndarray, fit_on: str) -> Stack:
    """A LinearRegression on the models' predictions for ``x`` (scaled features)."""
    from sklearn.linear_model import LinearRegression

    preds = np.column_stack([sel.estimator.predict(x) for sel in models.values()])
    return Stack(LinearRegression().fit(preds, y), tuple(models), fit_on)


def cv_stack_errors(preds: np.ndarray, y: np.ndarray, seed: int, folds: int = SELECTION_FOLDS) -> np.ndarray:
    """Out-of-fold squared errors [N] of a LinearRegression stack on members' predictions ``preds`` [N, M]
    for ``y`` [N] (seeded K-fold over the rows): the stack is fit on these rows, so in-sample errors
    would flatter it."""
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import KFold, cross_val_predict

    folds = min(folds, len(y))
    out = cross_val_predict(LinearRegression(), preds, y, cv=KFold(folds, shuffle=True, random_state=seed))
    return (out - y) ** 2


def _cost_rank(kind: str) -> int:
    return COST_ORDER.index(kind) if kind in COST_ORDER else len(COST_ORDER)


def select_members(models: dict[str, Selection], x: np.ndarray, y: np.ndarray, tol: float,
                   seed: int) -> MemberSelection:
    """Backward elimination on the stack's rows ``x`` (scaled), ``y``.

    A member may go when, without it, the stack's cross-validated MSE exceeds the *full* stack's by less
    than ``tol`` (relative) with ~97.5 % confidence: the rise's upper bound, mean + 2 standard errors of
    the per-row paired difference of squared errors, must be <= ``tol``.  On a small validation split
    the bound is wide and members stay.  Among the members that may go, the costliest goes first
    (``COST_ORDER``: a fixed order, so a rerun selects the same members whatever the machine's load);
    bounding the rise over the full stack, not the previous step, keeps the steps from adding up."""
    preds = {k: sel.estimator.predict(x) for k, sel in models.items()}

    def errors(keep: list[str]) -> np.ndarray:
        return cv_stack_errors(np.column_stack([preds[k] for k in keep]), y, seed)

    keep = list(models)
    e_full = errors(keep)
    full = float(e_full.mean())
    steps: list[dict[str, Any]] = []
    while len(keep) > 1:
        rises: dict[str, dict[str, float]] = {}
        for k in keep:
            d = errors([m for m in keep if m != k]) - e_full
            scale = full if full > 0 else 1.0
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
            rises[k] = {"rise": float(d.mean()) / scale, "upper": (float(d.mean()) + 2.0 * se) / scale}
        allowed = [k for k in keep if rises[k]["upper"] <= tol]
        if not allowed:
            steps.append({"stop": "no remaining member can go within the tolerance", "rises": rises})
            break
        drop = min(allowed, key=_cost_rank)
        keep.remove(drop)
        steps.append({"dropped": drop, **rises[drop], "rises": rises, "kept": list(keep)})
    return MemberSelection(tuple(keep), full, tol, steps)


def _stack_scores(stack: Stack, test_preds: dict[str, np.ndarray], y: np.ndarray, sub: np.ndarray,
                  preset: Preset, seed: int) -> Scores:
    """A stack's test metrics and its permutation importance over its members (normalized to LightGBM's)."""
    cols = np.column_stack([test_preds[k] for k in stack.components])
    pred = stack.model.predict(cols)
    imp, imp_std = permutation_importance(stack.model.predict, cols[sub], y[sub], preset.importance_repeats, seed)
    ref = stack.components.index("lgbm") if "lgbm" in stack.components else 0
    return Scores(pred, regression_metrics(pred, y), stack.components, imp, imp_std, normalized(imp, ref))


def evaluate(models: dict[str, Selection], stack: Stack, data: TargetData, preset: Preset,
             seed: int, selected: Stack | None = None) -> dict[str, Scores]:
    """Test-set metrics and permutation importance (on a seeded subset of the test rows) of every model
    (over the halo features) and of the stacks (over the models' outputs, normalized to LightGBM's)."""
    xe, ye = data.z_test, data.y_test
    test_preds = {kind: sel.estimator.predict(xe) for kind, sel in models.items()}
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(len(ye), size=min(preset.importance_rows, len(ye)), replace=False))
    scores: dict[str, Scores] = {}
    for kind, sel in models.items():
        imp, imp_std = permutation_importance(sel.estimator.predict, xe[sub], ye[sub], preset.importance_repeats, seed)
        scores[kind] = Scores(test_preds[kind], regression_metrics(test_preds[kind], ye), FEATURE_NAMES,
                              imp, imp_std, normalized(imp, 0))
    scores["stack"] = _stack_scores(stack, test_preds, ye, sub, preset, seed)
    if selected is not None:
        scores["selected"] = _stack_scores(selected, test_preds, ye, sub, preset, seed)
    return scores


def export(target: str, path: str, models: dict[str, Selection], stack: Stack, data: TargetData,
           scores: dict[str, Scores], domain: dict[str, dict[str, float]], seed: int,
           progress: Progress, selected: Stack | None = None) -> dict[str, Graph]:
    """One graph per model and the fused stacks (scaler + members + stacker: the paper's, and the
    selected members' if they differ), each checked against its native predictions on the whole test
    split (``TrainingError`` beyond ``FIDELITY_TOL``)."""
    common_meta = {"training_domain": domain, "seed": seed, "galaxypaint": __version__}
    graphs: dict[str, Graph] = {}
    for kind, sel in models.items():
        est = sel.estimator
        progress(f"exporting {kind} to ONNX")
        blob = build_graph(target, path, kind, data.scaler, [ox.to_onnx(est, "scaled", ox.OUTPUT_NAME, f"{kind}_")],
                           {**common_meta, "max_batch_rows": est.max_batch_rows})
        graphs[kind] = Graph(blob, est.max_batch_rows, _fidelity(blob, data.x_test, scores[kind].predictions,
                                                                 est.max_batch_rows, f"{target}/{path} {kind}"))
    graphs["stack"] = _fused_graph(target, path, "stack", models, stack, data, scores["stack"], common_meta, progress)
    if selected is not None:
        graphs["selected"] = _fused_graph(target, path, "selected stack", {k: models[k] for k in selected.components},
                                          selected, data, scores["selected"], common_meta, progress)
    return graphs


def _fused_graph(target: str, path: str, what: str, models: dict[str, Selection], stack: Stack, data: TargetData,
                 scores: Scores, common_meta: dict[str, Any], progress: Progress) -> Graph:
    """Scaler + ``models`` + the stack's linear combination in one graph, checked on the test split and timed."""
    from training.galaxy_graph import TargetStack, target_graph

    st = TargetStack.from_parts(target, data.scaler, {k: sel.estimator for k, sel in models.items()}, stack.model)
    progress(f"exporting the fused {what} ({', '.join(models)}) to ONNX")
    blob = target_graph(st, path, common_meta)
    max_batch = min(sel.estimator.max_batch_rows for sel in models.values())
    diff = _fidelity(blob, data.x_test, scores.predictions, max_batch, f"{target}/{path} {what}")
    return Graph(blob, max_batch, diff, graph_rate(blob, data.x_test, max_batch))


def graph_rate(blob: bytes, x_raw: np.ndarray, batch: int, rows: int = 20_000) -> float:
    """Halos/s of a graph in onnxruntime (default threads) on up to ``rows`` of ``x_raw``, after one warm-up
    call: reported beside each stack's metrics; timings vary with the machine's load."""
    import onnxruntime as ort

    from app.core.model import run_batched

    x = np.ascontiguousarray(x_raw[:rows], dtype=np.float64)
    if len(x) == 0:
        return float("nan")
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    run_batched(session, x[:256], batch)
    t0 = time.perf_counter()
    run_batched(session, x, batch)
    return len(x) / max(time.perf_counter() - t0, 1e-9)


def train_target(df: pd.DataFrame, split: dict[str, np.ndarray], target: str, path: str, cfg: TrainConfig,
                 preset: Preset, progress: Progress) -> TargetResult:
    """Fit, measure and export one (target, path): the graphs are checked but not yet registered."""
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        progress(f"[{target}/{path}] {msg}")

    data = prepare_data(df, split, target, path, cfg, progress)
    models = fit_models(data, cfg.models, preset, cfg.seed, say)
    x_stack, y_stack, fit_on = stack_rows(data, path, cfg)
    stack = fit_stack(models, x_stack, y_stack, fit_on)
    selection = select_members(models, x_stack, y_stack, cfg.selection_tol, cfg.seed)
    selected = None
    if selection.kept != tuple(models):
        selected = fit_stack({k: models[k] for k in selection.kept}, x_stack, y_stack, fit_on)
    say(f"members selected on validation: {', '.join(selection.kept)}"
        + ("" if selected is not None else " (all: the paper's stack is the selected one)"))
    say("test-set metrics and permutation importance")
    scores = evaluate(models, stack, data, preset, cfg.seed, selected)
    domain = training_domain(data.x_train)
    graphs = export(target, path, models, stack, data, scores, domain, cfg.seed, say, selected)
    return TargetResult(target, path, models, stack, scores, graphs, domain, data.scaler, data.smogn,
                        n_train=len(data.y_train), n_val=len(data.y_val), n_test=len(data.y_test),
                        selection=selection, selected=selected, seconds=time.perf_counter() - t0)


def _augment(target: str, cfg: TrainConfig, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray,
             y_va: np.ndarray, progress: Progress):
    """SMOGN on the training and the validation split separately (features in schema units + target)."""
    out = []
    info: dict[str, Any] = {}
    for name, xs, ys, seed in (("train", x_tr, y_tr, cfg.seed), ("val", x_va, y_va, cfg.seed + 1)):
        t0 = time.perf_counter()
        sampler = smogn_sampler(target, seed, **cfg.smogn.get(target, {}))
        try:
            xa, ya = sampler.fit_resample(xs, ys)
        except ValueError as exc:
            raise TrainingError(f"SMOGN on the {name} split of {target}: {exc}") from None
        out += [xa, ya]
        info[name] = {"rows_in": int(len(ys)), "rows_out": int(len(ya)), "synthetic": int(sampler.n_synthetic_),
                      "bins": [int(len(b)) for b in sampler.bins_], "ratios": [float(r) for r in sampler.ratios_],
                      "seconds": time.perf_counter() - t0}
        progress(f"[{target}/smogn] SMOGN {name}: {len(ys)} -> {len(ya)} rows ({sampler.n_synthetic_} synthetic, "
                 f"bins {info[name]['bins']}) in {info[name]['seconds']:.1f} s")
    info["params"] = {k: v for k, v in sampler.get_params().items() if k != "random_state"}
    return (*out, info)


def _fidelity(data: bytes, x_raw: np.ndarray, expected: np.ndarray, batch: int, what: str) -> float:
    try:
        return ox.check_fidelity(data, x_raw, expected, tol=FIDELITY_TOL, batch=batch)
    except ox.FidelityError as exc:
        raise TrainingError(f"{what}: {exc}; nothing was registered") from exc


def run_training(df: pd.DataFrame, registry: Registry, cfg: TrainConfig,
                 progress: Progress = lambda m: None) -> dict[str, Any]:
    """Train every requested (target, path), then register everything (or nothing, on failure)."""
    cfg.validate()
    preset = PRESETS[cfg.preset]
    missing = [c for c in (*FEATURE_NAMES, *cfg.targets) if c not in df.columns]
    if missing:
        raise TrainingError(f"the training table lacks {', '.join(missing)}")
    if cfg.ignore_split:
        df = without_split(df)
    split = split_indices(df, cfg.seed)
    notes = split_notes(split)
    for note in notes:
        progress(f"warning: {note}")
    min_rows = max(60, max(preset.knn.n_neighbors) * 2)
    if len(split["train"]) < min_rows or len(split["val"]) < 10 or len(split["test"]) < 10:
        raise TrainingError(f"too few rows to train: {len(split['train'])} train, {len(split['val'])} validation, "
                            f"{len(split['test'])} test (need at least {min_rows} training rows)")
    run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    fingerprint = data_fingerprint(df)
    versions = package_versions()
    t_start = time.perf_counter()
    results: dict[str, dict[str, TargetResult]] = {}
    for target in cfg.targets:
        for path in cfg.paths:
            res = results.setdefault(target, {})[path] = train_target(df, split, target, path, cfg, preset, progress)
            progress(f"[{target}/{path}] finished in {res.seconds:.1f} s")

    sampler = None
    skipped = cfg.sampler_skipped()
    if skipped is None:
        from training.sampler_step import train_sampler

        raw = {t: results[t]["raw"] for t in TARGET_NAMES}
        try:
            sampler = train_sampler(df, split, raw, cfg.seed, cfg.preset, raw[TARGET_NAMES[0]].training_domain,
                                    progress)
        except (TrainingError, RuntimeError, ValueError) as exc:
            # the stacks took minutes and are sound: register them, and say why there is no sampler
            skipped = f"the sampler failed: {exc}"
            progress(f"no joint sampler: {skipped}; the stacks are registered all the same")
    elif cfg.sampler:
        progress(f"no joint sampler: {skipped}")

    galaxies = {path: galaxy_graphs(results, path, df[list(FEATURE_NAMES)].to_numpy()[split["test"]], progress)
                for path in cfg.paths}

    summary = {"run_id": run_id, "seed": cfg.seed, "preset": cfg.preset, "data_fingerprint": fingerprint,
               "split": {k: int(len(v)) for k, v in split.items()},
               "split_source": "column" if SPLIT_COLUMN in df.columns else f"seeded {SPLIT_FRACTIONS}",
               "evaluated_on": evaluated_on(split), "warnings": notes,
               **({"invalid_rows": cfg.extra["invalid_rows"]} if "invalid_rows" in cfg.extra else {}),
               "package_versions": versions, "seconds": time.perf_counter() - t_start, "results": {},
               "production": cfg.production,
               "galaxy": {path: {which: g.as_dict() for which, g in graphs.items()} for path, graphs in galaxies.items()}}
    for target, per_path in results.items():
        for path, res in per_path.items():
            summary["results"].setdefault(target, {})[path] = res.summary()
    summary["sampler"] = sampler.summary() if sampler is not None else {"skipped": skipped}
    registry.record_run(run_id, cfg.seed, fingerprint, {"targets": list(cfg.targets), "paths": list(cfg.paths),
                                                         "preset": cfg.preset, "models": list(cfg.models),
                                                         "production": cfg.production,
                                                         "selection_tol": cfg.selection_tol,
                                                         **({"smogn_stack_rows": cfg.smogn_stack_rows}
                                                            if "smogn" in cfg.paths else {}),
                                                         "ignore_split": cfg.ignore_split,
                                                         "split_source": summary["split_source"],
                                                         "evaluated_on": summary["evaluated_on"],
                                                         # rows dropped as invalid (on_invalid drop): counted
                                                         # and listed with their rows in the input file; the
                                                         # table's --preset-columns, read again by `report`
                                                         **{k: cfg.extra[k] for k in
                                                            ("data_path", "on_invalid", "invalid_rows",
                                                             "column_preset") if k in cfg.extra}},
                        {**summary["results"], **({"sampler": summary["sampler"]} if sampler is not None else {})},
                        versions)
    published = []
    for target, per_path in results.items():
        for path, res in per_path.items():
            entry = summary["results"][target][path]
            for kind, graph in res.graphs.items():
                stack_kind = kind in ("stack", "selected")
                m = {"stack": entry["stack"], "selected": entry.get("selected_stack")}.get(kind) or entry["models"][kind]
                metrics = {k: m[k] for k in ("pearson_r", "mse", "ks_d", "onnx_max_abs_diff", "halos_per_s") if k in m}
                extra = {"max_batch_rows": graph.max_batch_rows, "scaler": entry["scaler"], "preset": cfg.preset,
                         # "val": no test rows, the metrics are on the validation rows (optimistic)
                         **({"metrics_on": "val"} if summary["evaluated_on"] == "val" else {}),
                         **({"smogn": entry["smogn"]} if "smogn" in entry else {})}
                if stack_kind:
                    members = list(res.selected.components if kind == "selected" else res.stack.components)
                    hyper = {"coef": m["coef"], "intercept": m["intercept"], "components": members}
                    extra.update({"stack": "selected" if kind == "selected" else "paper",
                                  **({"selection": entry["selection"]} if "selection" in entry else {})})
                    aliases = _stack_aliases(cfg, "selected" if kind == "selected" else "paper",
                                             res.selected is not None)
                else:
                    hyper, aliases = m["hyperparameters"], (cfg.alias,) if cfg.alias else ()
                mv = registry.publish(
                    model_name(target, path, "stack" if stack_kind else kind), graph.data, target=target, variant=path,
                    kind="stack" if stack_kind else kind, metrics=metrics, hyperparameters=hyper, seed=cfg.seed,
                    data_fingerprint=fingerprint, package_versions=versions, feature_schema=list(FEATURE_NAMES),
                    training_domain=entry["training_domain"], run_id=run_id, extra=extra, aliases=aliases)
                published.append(mv.uri)
    if sampler is not None:
        entry = summary["sampler"]
        mv = registry.publish(
            model_name(None, "raw", "sampler"), sampler.graph, target=TARGET_NAMES[0], targets=TARGET_NAMES,
            variant="raw", kind="sampler", metrics=entry["metrics"], hyperparameters=entry["hyperparameters"],
            seed=cfg.seed, data_fingerprint=fingerprint, package_versions=versions, feature_schema=list(FEATURE_NAMES),
            training_domain=entry["training_domain"], run_id=run_id,
            extra={"max_batch_rows": 16384, "preset": cfg.preset, "evaluation": entry["evaluation"],
                   "target_units": {t: COLUMNS[t].unit for t in TARGET_NAMES}},
            aliases=(cfg.alias,) if cfg.alias else ())
        published.append(mv.uri)
    stacks_of = {}  # (path, which) -> target -> the registered stack that graph holds
    for uri in published:
        mv = registry.resolve(uri)
        if mv.kind == "stack":
            for which in ("paper", "selected"):
                if which in mv.aliases or mv.extra.get("stack") == which:
                    stacks_of.setdefault((mv.variant, which), {})[mv.target] = mv
    for path, graphs in galaxies.items():
        for which, graph in graphs.items():
            pinned = stacks_of[(path, which)]
            mv = registry.publish(
                model_name(None, path, "galaxy"), graph.data, target=cfg.targets[0], targets=tuple(cfg.targets),
                variant=path, kind="galaxy", metrics={"onnx_max_abs_diff": graph.onnx_max_abs_diff,
                                                      "halos_per_s": graph.halos_per_s},
                hyperparameters={"components": {t: list(pinned[t].hyperparameters.get("components", []))
                                                for t in cfg.targets}},
                seed=cfg.seed, data_fingerprint=fingerprint, package_versions=versions,
                feature_schema=list(FEATURE_NAMES), training_domain=summary["results"][cfg.targets[0]][path][
                    "training_domain"], run_id=run_id,
                extra={"max_batch_rows": graph.max_batch_rows, "preset": cfg.preset, "stack": which,
                       "stacks": {t: {"name": mv_.name, "version": mv_.version, "sha256": mv_.sha256}
                                  for t, mv_ in pinned.items()}},
                aliases=_stack_aliases(cfg, which, len(graphs) > 1))
            published.append(mv.uri)
    summary["published"] = published
    return summary


def galaxy_graphs(results: dict[str, dict[str, "TargetResult"]], path: str, x_test: np.ndarray,
                  progress: Progress) -> dict[str, Graph]:
    """The run's multi-target graph(s) on ``path`` (``training.galaxy_graph``): every target's paper
    stack in one graph sharing the scaler and the kNN search, and (if some target's selection dropped
    a member) the same for the selected stacks.  Each is checked on the test rows against the native
    stacks (``FIDELITY_TOL``).

    The joint sampler stays its own graph: onnxruntime runs every node of a graph whatever outputs are
    asked for, so inside this one it would cost mean mode its mixture (~170 doubles per halo, thrown
    away; painting with the selected stacks measured 8 % slower) and sample mode every stack."""
    from training.galaxy_graph import TargetStack, build_galaxy_graph, check_galaxy_graph_fidelity

    per_target = {t: res[path] for t, res in results.items() if path in res}
    plans = {"paper": {t: r.stack for t, r in per_target.items()}}
    if any(r.selected is not None for r in per_target.values()):
        plans["selected"] = {t: r.selected or r.stack for t, r in per_target.items()}
    out: dict[str, Graph] = {}
    for which, stacks in plans.items():
        progress(f"[{path}] one graph for {', '.join(per_target)} ({which} stacks)")
        blob = build_galaxy_graph([TargetStack.from_result(r, stacks[t]) for t, r in per_target.items()], path)
        expected = {t: r.scores["selected" if which == "selected" and r.selected is not None else "stack"].predictions
                    for t, r in per_target.items()}
        try:
            diffs = check_galaxy_graph_fidelity(blob, x_test, expected, tol=FIDELITY_TOL)
        except ox.FidelityError as exc:
            raise TrainingError(f"the {path} {which} galaxy graph: {exc}; nothing was registered") from exc
        batch = min(min(sel.estimator.max_batch_rows for sel in r.models.values()) for r in per_target.values())
        out[which] = Graph(blob, batch, max(diffs.values()), graph_rate(blob, x_test, batch))
    return out


def _stack_aliases(cfg: TrainConfig, which: str, distinct: bool) -> tuple[str, ...]:
    """Aliases of the paper's (``which`` = "paper") or the selected stack: its own name, both names when
    the selection kept every member (one stack is both), and ``cfg.alias`` on the one ``cfg.production`` names."""
    names = [which] if distinct else ["paper", "selected"]
    if cfg.alias and (not distinct or cfg.production == which):
        names.append(cfg.alias)
    return tuple(dict.fromkeys(names))


def format_table(summary: dict[str, Any]) -> str:
    """The run's test-set metrics as a text table (``stack``: the paper's four-member stack; ``select``:
    the members selected on validation, when they differ; ``*``: the one ``production`` points to)."""
    lines = [f"run {summary['run_id']}  seed {summary['seed']}  preset {summary['preset']}  "
             f"split {summary['split']}  ({summary['seconds']:.0f} s)",
             f"{'target':7s} {'path':5s} {'model':7s} {'r':>7s} {'MSE':>9s} {'KS D':>7s} {'ONNX diff':>10s} "
             f"{'MB':>6s} {'fit s':>6s} {'kHalo/s':>8s}  importance (normalized)"]
    production = summary.get("production", "paper")
    for target, per_path in summary["results"].items():
        for path, res in per_path.items():
            selected = res.get("selected_stack")
            star = {"stack": "*" if production == "paper" or not selected else "", "select": "*"}
            rows = [(k, res["models"][k]) for k in res["models"]] + [("stack" + star["stack"], res["stack"])]
            if selected:
                rows.append(("select" + (star["select"] if production == "selected" else ""), selected))
            for kind, m in rows:
                imp = m.get("importance_normalized", {})
                imp_s = " ".join(f"{k}={v:.2f}" for k, v in imp.items())
                rate = f"{m['halos_per_s'] / 1e3:8.1f}" if m.get("halos_per_s") else f"{'':8s}"
                lines.append(f"{target:7s} {path:5s} {kind:7s} {m['pearson_r']:7.4f} {m['mse']:9.5f} {m['ks_d']:7.4f} "
                             f"{m.get('onnx_max_abs_diff', float('nan')):10.2e} {m.get('onnx_bytes', 0) / 1e6:6.1f} "
                             f"{m.get('fit_seconds', 0):6.1f} {rate}  {imp_s}")
    for path, graphs in summary.get("galaxy", {}).items():
        lines.append(f"one graph for every target ({path}): " + "; ".join(
            f"{which} stacks {g['halos_per_s'] / 1e3:.1f} kHalo/s, {g['onnx_bytes'] / 1e6:.1f} MB, "
            f"ONNX diff {g['onnx_max_abs_diff']:.1e}" for which, g in graphs.items()))
    if "sampler" in summary and summary["sampler"].get("skipped") != "--no-sampler":
        from training.sampler_step import format_sampler

        lines.append(format_sampler(summary["sampler"]))
    return "\n".join(lines)
