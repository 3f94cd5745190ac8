"""The data plane: loaded ONNX models and prediction, independent of any transport (HTTP, CLI).

``ModelStore`` resolves names, aliases and versions through the registry and keeps one onnxruntime
session per (name, version), loaded (sha256-verified) once.  Resolutions are cached until the
database changes — SQLite's ``PRAGMA data_version``, polled on a dedicated read-only connection at
every request, moves whenever another connection commits — so moving an alias (from the API, the
CLI or another process) takes effect at the next request without a query per model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from app.core.db import DB_NAME, watch_connection
from app.core.model import GalaxyModel, LoadedModel, resolve
from app.core.registry import DEFAULT_ALIAS, InvalidReference, ModelNotFound, ModelVersion, Registry
from app.core.schema import COLUMNS, FEATURE_NAMES, TARGET_NAMES

VARIANTS = ("raw", "smogn")
SERVING_ALIAS = DEFAULT_ALIAS


class DataPlaneError(ValueError):
    """A request that cannot be served; ``field`` names the offending input when there is one."""

    def __init__(self, message: str, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


class ModelStore:
    """Resolutions and onnxruntime sessions.  At most ``max_loaded`` sessions stay loaded: the least
    recently used is dropped first, except the serving stacks loaded by ``warm()`` (any client may ask
    for any registered model, and each session holds tens of MB)."""

    def __init__(self, registry: Registry, threads: int = 0, max_loaded: int = 16) -> None:
        self.registry = registry
        self.threads = threads
        self.max_loaded = max(1, max_loaded)
        self._sessions: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._pinned: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._resolved: dict[tuple, ModelVersion] = {}
        self._data_version: int | None = None
        self._watch = watch_connection(registry.root / DB_NAME)

    def _check_fresh(self) -> None:
        """Forget cached resolutions when the registry database has changed since the last request."""
        with self._lock:
            now = self._watch.execute("PRAGMA data_version").fetchone()[0]
            if now != self._data_version:
                self._resolved.clear()
                self._data_version = now

    # ------------------------------------------------------------------ resolution
    def version(self, name: str, version: int | None = None, alias: str | None = None) -> ModelVersion:
        """A registered version; with neither version nor alias: ``production`` if set, else the latest."""
        self._check_fresh()
        key = ("version", name, version, alias)
        cached = self._resolved.get(key)
        if cached is None:
            try:
                cached = self._resolved[key] = self.registry.get(name, version=version, alias=alias)
            except ModelNotFound as exc:
                raise DataPlaneError(str(exc), "model", status=404) from None
        return cached

    def resolve(self, targets: Sequence[str] | None, variant: str, model: str | None) -> dict[str, ModelVersion]:
        """target -> the version serving it (``app.core.model.resolve``), cached until the registry changes."""
        if variant not in VARIANTS:
            raise DataPlaneError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}", "variant")
        bad = [t for t in targets or () if t not in TARGET_NAMES]
        if bad:
            raise DataPlaneError(f"unknown target {', '.join(bad)[:200]}: choose from {', '.join(TARGET_NAMES)}",
                                 "targets")
        self._check_fresh()
        key = ("choice", tuple(targets or ()), variant, model)
        cached = self._resolved.get(key)
        if cached is None:
            try:
                cached = self._resolved[key] = resolve(self.registry, targets, variant, model)
            except ModelNotFound as exc:
                raise DataPlaneError(str(exc), "model" if model else "variant", status=404) from None
            except InvalidReference as exc:
                raise DataPlaneError(str(exc), "model") from None
        return cached

    # ------------------------------------------------------------------ sessions
    def session(self, mv: ModelVersion, pin: bool = False) -> LoadedModel:
        key = (mv.name, mv.version)
        with self._lock:
            loaded = self._sessions.get(key)
            if loaded is not None:
                self._sessions.move_to_end(key)
                if pin:
                    self._pinned.add(key)
                return loaded
        # loading (hashing, graph optimization) happens outside the lock: other models keep serving
        fresh = LoadedModel.load(self.registry, mv, self.threads)  # ArtefactUnavailable -> 503
        with self._lock:
            loaded = self._sessions.setdefault(key, fresh)
            self._sessions.move_to_end(key)
            if pin:
                self._pinned.add(key)
            for old in [k for k in self._sessions if k not in self._pinned]:
                if len(self._sessions) <= self.max_loaded:
                    break
                if old != key:
                    del self._sessions[old]
            return loaded

    def warm(self) -> list[str]:
        """Load (and keep) every stack carrying the serving alias; other models load on first use."""
        loaded = []
        for latest in self.registry.list_models():
            if latest.kind != "stack":
                continue
            try:
                mv = self.registry.get(latest.name, alias=SERVING_ALIAS)
            except ModelNotFound:
                continue
            self.session(mv, pin=True)
            loaded.append(mv.uri)
        return loaded

    def loaded(self) -> list[tuple[str, int]]:
        with self._lock:
            return sorted(self._sessions)


@dataclass
class Prediction:
    values: dict[str, np.ndarray]
    models: list[dict]
    warnings: list[dict] = field(default_factory=list)


def check_features(x: np.ndarray, names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
    """Refuse non-finite inputs and values outside the schema's valid (physical) ranges, naming the
    first offending halo and feature.  Values inside the valid range but outside a model's training
    range are answered, with a warning (``domain_warnings``): the same policy as ``predict``/``paint``."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(names):
        raise DataPlaneError(f"expected {len(names)} features per halo ({', '.join(names)}), got shape {x.shape}",
                             "halo_features")
    bad = ~np.isfinite(x)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataPlaneError(f"halo {i}: {names[j]} is {x[i, j]} (must be a finite number)", names[j])
    lo = np.array([COLUMNS[n].valid[0] for n in names])
    hi = np.array([COLUMNS[n].valid[1] for n in names])
    bad = (x < lo) | (x > hi)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataPlaneError(f"halo {i}: {names[j]}={x[i, j]:.6g} is outside the valid range [{lo[j]:g}, {hi[j]:g}] "
                             f"{COLUMNS[names[j]].unit}", names[j])
    return x


def check_outputs(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Predictions are finite, or the request is refused (never a ``null`` in a 200 answer)."""
    for target, v in values.items():
        bad = np.flatnonzero(~np.isfinite(v))
        if len(bad):
            raise DataPlaneError(f"halo {bad[0]}: the {target} prediction is not finite ({v[bad[0]]}); the input "
                                 "lies where the model is undefined", "halo_features")
    return values


def domain_warnings(x: np.ndarray, mvs: Sequence[ModelVersion], limit: int = 10_000) -> list[dict]:
    """Per-halo messages for features outside the training range recorded with the models (extrapolation)."""
    lo = np.full(len(FEATURE_NAMES), -np.inf)
    hi = np.full(len(FEATURE_NAMES), np.inf)
    for mv in mvs:
        for j, name in enumerate(FEATURE_NAMES):
            dom = (mv.training_domain or {}).get(name)
            if dom:
                lo[j] = max(lo[j], dom["min"])
                hi[j] = min(hi[j], dom["max"])
    outside = (x < lo) | (x > hi)
    out = []
    for i in np.flatnonzero(outside.any(axis=1))[:limit]:
        out.append({"index": int(i), "messages": [
            f"{FEATURE_NAMES[j]}={x[i, j]:.6g} outside the training range [{lo[j]:.6g}, {hi[j]:.6g}]: extrapolation"
            for j in np.flatnonzero(outside[i])]})
    return out


def predict(store: ModelStore, x: np.ndarray, variant: str = "raw", targets: Sequence[str] | None = None,
            model: str | None = None) -> Prediction:
    """Stack predictions for halos ``x`` [N, 5] (schema order and units) for each requested target."""
    x = check_features(x)
    versions = store.resolve(targets, variant, model)
    galaxy = GalaxyModel(store.registry, versions, variant, loader=store.session)
    values = check_outputs(galaxy.predict(x))
    return Prediction(values, galaxy.pinned(), domain_warnings(x, list(versions.values())))
