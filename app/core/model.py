"""Prediction with registered ONNX graphs through onnxruntime (the only runtime the service needs).

``GalaxyModel`` is the one model object: the CLI, the data plane, jobs, the painting engines and the
report all predict through it.  Inputs are the 5 halo
features in schema order, in schema units, as float64; outputs are the targets in their units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pandas as pd

from app.core.registry import ArtefactUnavailable, InvalidReference, ModelNotFound, ModelVersion, Registry
from app.core.schema import FEATURE_NAMES, TARGET_NAMES, pred_column

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


class GalaxyModel:
    """The galaxy properties of a set of halos, from pinned registered versions: the one model object.

    Built from what a user asks for (``from_registry``: targets, variant, model choice, resolved once
    by ``Registry.resolve_choice``) or from versions pinned earlier (``from_pinned``: a paint job
    records the versions it was accepted with, a Dask worker receives them) — never re-resolved
    later, so an alias that moves meanwhile changes nothing.  Used by the CLI, the data plane, the
    job worker, the painting engines and the report.
    """

    def __init__(self, registry: Registry, versions: dict[str, ModelVersion], variant: str, threads: int = 0,
                 loader: Callable[[ModelVersion], LoadedModel] | None = None) -> None:
        self.registry = registry
        self.variant = variant
        self.versions = dict(versions)
        self.targets = tuple(versions)
        load = loader or (lambda mv: LoadedModel.load(registry, mv, threads))
        self.models = {t: load(mv) for t, mv in self.versions.items()}

    @classmethod
    def from_registry(cls, registry: Registry, targets: Sequence[str] | None = None, variant: str = "raw",
                      model: str | None = None, threads: int = 0) -> "GalaxyModel":
        return cls(registry, resolve(registry, targets, variant, model), variant, threads)

    @classmethod
    def from_pinned(cls, registry: Registry, pinned: Sequence[dict], variant: str, threads: int = 0,
                    loader: Callable[[ModelVersion], LoadedModel] | None = None) -> "GalaxyModel":
        """Versions recorded by ``pinned()``; refused if a record changed since (sha256)."""
        versions = {}
        for p in pinned:
            mv = registry.get(p["name"], version=int(p["version"]))
            if mv.sha256 != p["sha256"]:
                raise ArtefactUnavailable(f"{mv.uri} is not the version pinned (sha256 {p['sha256'][:12]}...)")
            versions[p["target"]] = mv
        return cls(registry, versions, variant, threads, loader)

    def pinned(self) -> list[dict]:
        """(target, name, version, sha256) of every model used: what jobs and painted files record."""
        return [{"target": t, "name": mv.name, "version": mv.version, "sha256": mv.sha256,
                 "aliases": list(mv.aliases)} for t, mv in self.versions.items()]

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """target -> predictions [N] for features ``x`` [N, 5] (schema order and units)."""
        return {t: m.predict(x) for t, m in self.models.items()}


def resolve(registry: Registry, targets: Sequence[str] | None, variant: str,
            model: str | None = None) -> dict[str, ModelVersion]:
    """target -> the pinned version serving it.  Default targets: those of the one model ``model`` names,
    else every target with a ``variant`` stack."""
    if targets:
        bad = [t for t in targets if t not in TARGET_NAMES]
        if bad:
            raise InvalidReference(f"unknown target {', '.join(bad)}: choose from {', '.join(TARGET_NAMES)}")
        wanted = list(targets)
    else:
        named = registry.referenced(model)
        wanted = list(named.targets) if named is not None else registry.default_targets(variant)
    if not wanted:
        raise ModelNotFound(f"no {variant}-variant stack models in {registry.root}: train first "
                            "(galaxypaint train --data FILE)")
    return dict(zip(wanted, registry.resolve_choice(model, wanted, variant)))


def with_predictions(df: pd.DataFrame, values: dict[str, np.ndarray]) -> pd.DataFrame:
    """``df`` (untouched) with one ``<target>_pred`` column per target: the one writer of those columns."""
    out = df.copy()
    for target, v in values.items():
        out[pred_column(target)] = v
    return out


def predict_table(df: pd.DataFrame, model: GalaxyModel, chunk_rows: int = 16384,
                  progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """``df`` with the ``<target>_pred`` columns appended, predicted ``chunk_rows`` at a time."""
    x = df[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    preds = {t: np.empty(len(x)) for t in model.targets}
    if progress:
        progress(0, len(x))
    for start in range(0, len(x), chunk_rows):
        for target, values in model.predict(x[start:start + chunk_rows]).items():
            preds[target][start:start + len(values)] = values
        if progress:
            progress(min(start + chunk_rows, len(x)), len(x))
    return with_predictions(df, preds)
