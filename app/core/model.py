"""Prediction with registered ONNX graphs through onnxruntime (the only runtime the service needs).

The same code serves ``galaxypaint predict``, painting and the HTTP API.  Inputs are the 5 halo
features in schema order, in schema units, as float64; outputs are the targets in their units.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pandas as pd

from app.core.registry import (InvalidReference, ModelNotFound, ModelVersion, Registry, check_alias, parse_reference,
                          parse_version)
from app.core.schema import FEATURE_NAMES, TARGET_NAMES

INPUT_NAME = "halo_features"


def shrinking_run_options() -> ort.RunOptions:
    """Run options that hand the memory a call took back to the system when it returns.

    onnxruntime's CPU arena otherwise keeps each session's peak (the kNN search's temporaries,
    ~0.2 GB for a 65k-row batch) for good: a service or a painting run holding four or eight stacks
    kept several GB (painting with the four stacks peaked at 3.4 GB; 1.5 GB with shrinking).  The
    arena still serves the allocations within a call, which is faster than no arena (~10 %).
    """
    opts = ort.RunOptions()
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return opts


def run_batched(session: ort.InferenceSession, x: np.ndarray, batch: int,
                run_options: ort.RunOptions | None = None) -> np.ndarray:
    """Predictions [N] of a ``halo_features`` graph for ``x`` [N, 5] (float64), ``batch`` rows per call."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    if len(x) == 0:
        return np.zeros(0)
    out = [session.run(None, {INPUT_NAME: x[i:i + batch]}, run_options)[0] for i in range(0, len(x), batch)]
    return np.concatenate(out).reshape(-1).astype(np.float64)


@dataclass
class LoadedModel:
    """An onnxruntime session for one registered model version."""

    version: ModelVersion
    session: ort.InferenceSession
    max_batch_rows: int
    run_options: ort.RunOptions | None = None

    @classmethod
    def load(cls, registry: Registry, mv: ModelVersion, threads: int = 0) -> "LoadedModel":
        data = registry.load_bytes(mv)  # sha256-verified
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        max_batch = int(meta.get("max_batch_rows", mv.extra.get("max_batch_rows", 65536)))
        return cls(mv, session, max(1, max_batch), shrinking_run_options())

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions [N] for features ``x`` [N, 5] (raw, schema units), batched to the graph's limit."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"expected an array of shape (N, {len(FEATURE_NAMES)}), got {x.shape}")
        return run_batched(self.session, x, self.max_batch_rows, self.run_options)


def is_reference(model: str | None, names: Collection[str] = ()) -> bool:
    """Whether a ``model`` choice names one model (``NAME``, ``NAME@ALIAS``, ``NAME/V``, ``models:/...``)
    rather than an alias or version applied to every target's default stack."""
    return model is not None and ("@" in model or "/" in model or model.startswith("models:/") or model in names)


def model_choice(model: str | None, default: str, names: Collection[str] = ()) -> tuple[str, str | None, int | None]:
    """(name, alias, version) to look up for a ``model`` choice: None (the default stack at
    ``production``, else its latest version), a version number, an alias, or a full reference.
    Raises ``InvalidReference`` if ``model`` is none of these."""
    if model is None:
        return default, None, None
    if model.isascii() and model.isdigit():  # str.isdigit alone takes '²', which int() refuses
        return default, None, parse_version(model)
    if is_reference(model, names):
        return parse_reference(model)
    return default, check_alias(model), None


class StackPredictor:
    """The serving models of several targets on one path, loaded once.

    ``model`` picks something else than the default ``<target>-<path>-stack@production``: an alias
    (``staging``), a version number (``3``), or a full reference (``smass-raw-stack@staging``) when a
    single target is asked for.
    """

    def __init__(self, registry: Registry, path: str = "raw", targets: Sequence[str] | None = None,
                 model: str | None = None, threads: int = 0) -> None:
        self.registry = registry
        self.path = path
        self._names = set(registry.names())
        self.targets = tuple(targets) if targets else tuple(
            t for t in TARGET_NAMES if f"{t}-{path}-stack" in self._names)
        if not self.targets:
            raise ModelNotFound(f"no {path}-path stack models in {registry.root}: train first "
                                "(galaxypaint train --data FILE)")
        self.models: dict[str, LoadedModel] = {}
        for target in self.targets:
            if target not in TARGET_NAMES:
                raise InvalidReference(f"unknown target {target!r}: choose from {', '.join(TARGET_NAMES)}")
            mv = self._resolve(target, model)
            self.models[target] = LoadedModel.load(registry, mv, threads)

    def _resolve(self, target: str, model: str | None) -> ModelVersion:
        name, alias, version = model_choice(model, f"{target}-{self.path}-stack", self._names)
        mv = self.registry.get(name, version=version, alias=alias)
        if mv.target != target:
            raise InvalidReference(f"model {mv.uri} predicts {mv.target}, not {target}")
        return mv

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {t: m.predict(x) for t, m in self.models.items()}

    def describe(self) -> list[dict[str, object]]:
        return [{"target": t, "name": m.version.name, "version": m.version.version, "sha256": m.version.sha256,
                 "aliases": list(m.version.aliases)} for t, m in self.models.items()]


def predict_table(df: pd.DataFrame, predictor: StackPredictor, chunk_rows: int = 16384,
                  progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """``df`` with one ``<target>_pred`` column per target appended (the input columns untouched).

    Rows are predicted in chunks of ``chunk_rows``; ``progress(done, total)`` is called after each.
    """
    x = df[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    preds = {t: np.empty(len(x)) for t in predictor.targets}
    if progress:
        progress(0, len(x))
    for start in range(0, len(x), chunk_rows):
        for target, values in predictor.predict(x[start:start + chunk_rows]).items():
            preds[target][start:start + len(values)] = values
        if progress:
            progress(min(start + chunk_rows, len(x)), len(x))
    out = df.copy()
    for target, values in preds.items():
        out[f"{target}_pred"] = values
    return out

