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
from app.core.model import GALAXY_KIND, MEAN, MODES, SAMPLER_KIND, GalaxyModel, LoadedModel, Mode, resolve
from app.core.registry import DEFAULT_ALIAS, InvalidReference, ModelNotFound, ModelVersion, Registry
from app.core.schema import COLUMNS, DEFAULT_QUANTILE_LEVELS, FEATURE_NAMES, TARGET_NAMES, parse_quantile_levels

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
        self._resolved: dict[tuple, ModelVersion | None] = {}
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

    def resolve(self, targets: Sequence[str] | None, variant: str, model: str | None,
                mode: Mode = MEAN) -> dict[str, ModelVersion]:
        """target -> the version serving it (``app.core.model.resolve``: the stacks in mean mode, the joint
        sampler in sample and quantiles modes), cached until the registry changes."""
        if variant not in VARIANTS:
            raise DataPlaneError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}", "variant")
        bad = [t for t in targets or () if t not in TARGET_NAMES]
        if bad:
            raise DataPlaneError(f"unknown target {', '.join(bad)[:200]}: choose from {', '.join(TARGET_NAMES)}",
                                 "targets")
        if mode.uses_sampler and variant != "raw":
            raise DataPlaneError(f"mode {mode.name} draws from the joint sampler, which is trained on the raw variant "
                                 f"only, not {variant!r}: use variant raw (or mode mean for the {variant} stacks)",
                                 "variant")
        self._check_fresh()
        key = ("choice", tuple(targets or ()), variant, model, mode.uses_sampler)
        cached = self._resolved.get(key)
        if cached is None:
            try:
                cached = self._resolved[key] = resolve(self.registry, targets, variant, model, mode)
            except ModelNotFound as exc:
                if mode.uses_sampler and not model:
                    raise DataPlaneError(f"no joint sampler is registered on this server: mode {mode.name} needs one "
                                         "(galaxypaint train fits it when all four targets are trained on the raw "
                                         "variant); use mode mean for the stacks' predictions", "model",
                                         status=404) from None
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

    def plan(self, versions: dict[str, ModelVersion], variant: str) -> ModelVersion | None:
        """The multi-target graph that runs these pinned stacks (``Registry.galaxy_for``), cached until the
        registry changes (a request asks this once per call)."""
        self._check_fresh()
        key = ("plan", variant, tuple((t, mv.name, mv.version, mv.sha256) for t, mv in versions.items()))
        with self._lock:
            if key in self._resolved:
                return self._resolved[key]
        found = self.registry.galaxy_for(versions, variant)
        with self._lock:
            self._resolved[key] = found
        return found

    def warm(self) -> list[str]:
        """Load (and keep) every stack, multi-target graph and the joint sampler carrying the serving alias;
        other models load on first use."""
        loaded = []
        for latest in self.registry.list_models():
            if latest.kind not in ("stack", SAMPLER_KIND, GALAXY_KIND):
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
    values: dict[str, np.ndarray]  # output (a target, or <target>_q<level> in quantiles mode) -> one value per halo
    models: list[dict]
    warnings: list[dict] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)  # output -> its unit
    versions: dict[str, ModelVersion] = field(default_factory=dict)  # target -> the version that answered it

    @property
    def targets(self) -> list[str]:
        """The targets answered, in order (bounded label values for metrics, whatever the outputs)."""
        return list(dict.fromkeys(m["target"] for m in self.models))


#: halo ids lie in [ID_MIN, ID_END): int64 or uint64 (a negative id keys its draw as its two's complement)
ID_MIN, ID_END = -(2**63), 2**64


def request_mode(name: object = None, seed: object = None, quantiles: object = None) -> Mode:
    """A client's mode, checked: ``name`` mean (default), sample or quantiles; ``seed`` (sample only, an
    integer in [0, 2**63), default 0); ``quantiles`` (quantiles only: percent levels, a list or a
    comma-separated string, default 16, 50, 84).  A field given with a mode it does not apply to is
    refused rather than ignored (a seed sent without ``mode: sample`` would otherwise give means)."""
    name = "mean" if name is None else name
    if not isinstance(name, str) or name not in MODES:
        raise DataPlaneError(f"{str(name)[:40]!r} is not a mode: choose from {', '.join(MODES)}", "mode")
    if seed is not None and name != "sample":
        raise DataPlaneError(f"a seed is for mode sample (the draws), not mode {name}", "seed")
    if quantiles is not None and name != "quantiles":
        raise DataPlaneError(f"quantile levels are for mode quantiles, not mode {name}", "quantiles")
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise DataPlaneError(f"{str(seed)[:40]} is not an integer in [0, 2**63)", "seed")
    levels = DEFAULT_QUANTILE_LEVELS
    if quantiles is not None:
        if not isinstance(quantiles, (str, list, tuple)):
            raise DataPlaneError("a list of percent levels (e.g. [16, 50, 84]) is needed", "quantiles")
        try:
            levels = parse_quantile_levels(quantiles)
        except (ValueError, TypeError, OverflowError) as exc:
            raise DataPlaneError(str(exc), "quantiles") from None
    try:
        return Mode(name, seed, levels)
    except InvalidReference as exc:  # not reached: every field is checked above
        raise DataPlaneError(str(exc), "mode") from None


def halo_ids(n: int, mode: Mode, ids: object = None, offset: object = None) -> np.ndarray | None:
    """The integers keying each of ``n`` halos' draws in sample mode (None in the other modes), as the
    uint64 counters the sampler uses: ``ids`` (one integer per halo, in int64 or uint64 range, distinct)
    or ``offset`` (ids offset, offset + 1, ...).  One of them is required: a draw depends only on (seed,
    id), so two requests keyed alike by default would silently get the same deviates."""
    if mode.name != "sample":
        if ids is not None:
            raise DataPlaneError(f"ids key the draws of mode sample; mode {mode.name} takes none", "ids")
        if offset is not None:
            raise DataPlaneError(f"an offset keys the draws of mode sample; mode {mode.name} takes none", "offset")
        return None
    if ids is not None and offset is not None:
        raise DataPlaneError("give either ids (one per halo) or an offset (ids offset, offset + 1, ...), not both",
                             "ids")
    if ids is None and offset is None:
        raise DataPlaneError("mode sample needs one integer id per halo (ids) or an offset (ids offset, offset + 1, "
                             "...): a halo's draw depends only on (seed, id), so halos sent in separate requests "
                             "must not share ids", "ids")
    if offset is not None:
        if isinstance(offset, bool) or not isinstance(offset, int) or not ID_MIN <= offset <= ID_END - max(n, 1):
            raise DataPlaneError(f"{str(offset)[:40]} is not an integer such that offset .. offset + {max(n - 1, 0)} "
                                 "lie in the int64 or uint64 range", "offset")
        if offset + n <= 2**63:
            return np.arange(offset, offset + n, dtype=np.int64).view(np.uint64)
        return np.arange(offset, offset + n, dtype=np.uint64)
    if isinstance(ids, np.ndarray) and ids.ndim == 1 and ids.dtype.kind in "iu":  # a binary column (Arrow)
        if len(ids) != n:
            raise DataPlaneError(f"{len(ids):,} ids for {n:,} halos: give one per halo, in order", "ids")
        # int64 -> its two's complement, as the sampler keys them (the same as ``v % 2**64`` below)
        counters = ids.astype(np.int64).view(np.uint64) if ids.dtype.kind == "i" else ids.astype(np.uint64)
    else:
        if not isinstance(ids, (list, tuple)):
            raise DataPlaneError("a list of integers, one per halo, is needed", "ids")
        if len(ids) != n:
            raise DataPlaneError(f"{len(ids):,} ids for {n:,} halos: give one per halo, in order", "ids")
        for i, v in enumerate(ids):
            if isinstance(v, bool) or not isinstance(v, int) or not ID_MIN <= v < ID_END:
                raise DataPlaneError(f"id {i} ({str(v)[:40]}) is not an integer in the int64 or uint64 range", "ids")
        counters = np.array([v % ID_END for v in ids], dtype=np.uint64)  # two's complement, as the sampler keys them
    if len(np.unique(counters)) != len(counters):
        seen: dict[int, int] = {}
        for j, c in enumerate(counters.tolist()):
            if c in seen:
                i = seen[c]
                same = "" if ids[i] == ids[j] else f" ({str(ids[i])[:24]} and {str(ids[j])[:24]} as 64-bit counters)"
                raise DataPlaneError(f"ids {i} and {j} repeat one halo id{same}: the two halos would get identical "
                                     "galaxies", "ids")
            seen[c] = j
    return counters


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


@dataclass(frozen=True)
class Planned:
    """A request validated and resolved, ready to compute: halos ``x`` [N, 5] (float64, schema order and
    units), the draws' keys (uint64 [N], sample mode only) and the pinned version answering each target."""

    versions: dict[str, ModelVersion]
    variant: str
    x: np.ndarray
    mode: Mode
    keys: np.ndarray | None

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys may share one ``GalaxyModel.predict`` call: the same pinned versions
        (target, name, version) and the same mode (name, seed, quantile levels)."""
        return (self.variant, self.mode, tuple((t, mv.name, mv.version) for t, mv in self.versions.items()))

    def __len__(self) -> int:
        return len(self.x)


def plan(store: ModelStore, x: np.ndarray, variant: str = "raw", targets: Sequence[str] | None = None,
         model: str | None = None, mode: Mode = MEAN, ids: object = None, offset: object = None) -> Planned:
    """Check halos ``x`` [N, 5] (schema order and units) and the draws' keys, and pin the versions serving
    each requested target (``ModelStore.resolve``); nothing is computed yet."""
    x = check_features(x)
    keys = halo_ids(len(x), mode, ids, offset)
    return Planned(store.resolve(targets, variant, model, mode), variant, x, mode, keys)


def plan_version(store: ModelStore, mv: ModelVersion, x: np.ndarray, mode: Mode = MEAN, ids: object = None,
                 offset: object = None) -> Planned:
    """``plan`` for one registered version (the Open Inference Protocol serves one graph per model): a stack
    or base model predicts its target in mean mode; the joint sampler draws (sample) or gives the quantiles
    (quantiles) of every target it models."""
    x = check_features(x)
    keys = halo_ids(len(x), mode, ids, offset)
    is_sampler = mv.kind == SAMPLER_KIND
    if mode.uses_sampler and not is_sampler:
        raise DataPlaneError(f"mode {mode.name} needs the joint sampler; {mv.name} is a {mv.kind} (it predicts "
                             "means): use mode mean, or the sampler model", "mode")
    if is_sampler and not mode.uses_sampler:
        raise DataPlaneError(f"{mv.name} is the joint sampler: it draws galaxies (mode sample) or gives their "
                             "quantiles (mode quantiles), not means", "mode")
    versions = {t: mv for t in mv.targets} if is_sampler else {mv.target: mv}
    return Planned(versions, mv.variant, x, mode, keys)


def compute(store: ModelStore, plans: Sequence[Planned]) -> list[Prediction | DataPlaneError]:
    """One ``GalaxyModel.predict`` call for every halo of ``plans`` (which share one ``batch_key``), split back
    into one answer per plan, in order.  Each plan's draws are keyed by its own ids, and every step is per
    halo, so a plan's answer does not depend on the others.  A plan whose output is not finite gets its own
    error (halo indices relative to it); the others are answered.  Blocking (onnxruntime): run off the
    event loop."""
    first = plans[0]
    x = first.x if len(plans) == 1 else np.concatenate([p.x for p in plans])
    keys = None if first.keys is None else np.concatenate([p.keys for p in plans])  # type: ignore[misc]
    try:
        galaxy = GalaxyModel(store.registry, first.versions, first.variant, loader=store.session, planner=store.plan)
        raw = galaxy.predict(x, first.mode, keys)
    except InvalidReference as exc:  # the versions cannot answer the mode (resolution normally refuses first)
        raise DataPlaneError(str(exc), "mode") from None
    pinned = galaxy.pinned()
    units = {name: COLUMNS[t].unit for t in first.versions for name in first.mode.outputs([t])}
    unique = list({(mv.name, mv.version): mv for mv in first.versions.values()}.values())
    answers: list[Prediction | DataPlaneError] = []
    start = 0
    for p in plans:
        part = {name: v[start:start + len(p)] for name, v in raw.items()}
        start += len(p)
        try:
            values = check_outputs(part)
        except DataPlaneError as exc:
            answers.append(exc)
            continue
        answers.append(Prediction(values, pinned, domain_warnings(p.x, unique), units, dict(p.versions)))
    return answers


def compute_one(store: ModelStore, planned: Planned) -> Prediction:
    """``compute`` for one plan, its error raised."""
    answer = compute(store, [planned])[0]
    if isinstance(answer, DataPlaneError):
        raise answer
    return answer


def predict(store: ModelStore, x: np.ndarray, variant: str = "raw", targets: Sequence[str] | None = None,
            model: str | None = None, mode: Mode = MEAN, ids: object = None, offset: object = None) -> Prediction:
    """Galaxy properties of halos ``x`` [N, 5] (schema order and units) for each requested target: the
    stacks' predictions (mean mode), one draw per halo from the joint sampler keyed by (``mode.seed``,
    id) with ids from ``ids`` or ``offset`` (sample mode; ``halo_ids``), or the sampler's marginal
    quantiles (quantiles mode: outputs ``<target>_q<level>``)."""
    return compute_one(store, plan(store, x, variant, targets, model, mode, ids, offset))


def predict_version(store: ModelStore, mv: ModelVersion, x: np.ndarray, mode: Mode = MEAN, ids: object = None,
                    offset: object = None) -> Prediction:
    """One registered version's answer (``plan_version``)."""
    return compute_one(store, plan_version(store, mv, x, mode, ids, offset))
