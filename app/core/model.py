"""Prediction with registered ONNX graphs through onnxruntime (the only runtime the service needs).

``GalaxyModel`` is the one model object: the CLI, the data plane, jobs, the painting engines and the
report all predict through it.  Inputs are the 5 halo features in schema order, in schema units, as
float64; outputs are the targets in their units.

Three modes (``Mode``) say what a galaxy is:

* ``mean``: E[property | halo] from each target's stack (the paper's method; the default);
* ``sample``: one galaxy drawn from the joint sampler's p(smass, sSFR, radius, color | halo), a
  function of (seed, halo id) only (``app.core.sampling.sample_mixture``), so that a catalog
  painted in sample mode has the right populations, not only the right means;
* ``quantiles``: each property's marginal quantiles under the sampler (so ``q50`` is the sampler's
  median, not the stack's mean).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pandas as pd

from app.core.registry import (ArtefactUnavailable, InvalidReference, ModelNotFound, ModelVersion, Registry,
                               model_name)
from app.core.schema import (DEFAULT_QUANTILE_LEVELS, FEATURE_NAMES, TARGET_NAMES, parse_quantile_levels,
                             pred_column, quantile_column)
from app.core import sampling

INPUT_NAME = "halo_features"
#: the joint sampler graph's outputs: mixture weights [N, K], means [N, K, D], Cholesky factors [N, K, D, D]
SAMPLER_OUTPUTS: tuple[str, str, str] = ("weights", "means", "chol")
SAMPLER_KIND = "sampler"
#: a training run's multi-target graph: every target's stack (one output per target, named by it), one scaler
#: and one kNN search shared (``training.galaxy_graph``); the joint sampler stays its own graph
GALAXY_KIND = "galaxy"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity: taskset, cpusets), the default session thread count.
    onnxruntime's own default counts the machine's cores, so a process pinned to fewer has spinning
    threads competing for the same core (a server pinned to one core answered 1,100 requests/s with
    them, 1,500 without)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def fused_graphs_enabled() -> bool:
    """Whether mean mode runs a run's multi-target graph where one holds the pinned stacks: on unless
    ``GALAXYPAINT_FUSED_GRAPHS`` is 0/false/no/off (a fallback to the per-target graphs, inherited by
    Dask workers and job processes; the painting benchmark compares both)."""
    return os.environ.get("GALAXYPAINT_FUSED_GRAPHS", "1").strip().lower() not in ("0", "false", "no", "off")


MODES: tuple[str, ...] = ("mean", "sample", "quantiles")
#: rows per sampler call: its outputs hold ~K (1 + D + D^2) doubles per halo (~1 kB at K = 8)
SAMPLER_BATCH_ROWS = 16384


@dataclass(frozen=True)
class Mode:
    """What a painted galaxy is: ``mean`` (the stacks), ``sample`` (a draw from the joint sampler, keyed
    by ``seed`` and the halo id) or ``quantiles`` (the sampler's marginal quantiles at ``levels``, percent)."""

    name: str = "mean"
    seed: int = 0
    levels: tuple[float, ...] = DEFAULT_QUANTILE_LEVELS

    def __post_init__(self) -> None:
        if self.name not in MODES:
            raise InvalidReference(f"unknown mode {str(self.name)[:40]!r}: choose from {', '.join(MODES)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise InvalidReference(f"seed must be an integer in [0, 2**63), not {str(self.seed)[:40]}")
        try:
            object.__setattr__(self, "levels", parse_quantile_levels(self.levels))
        except ValueError as exc:
            raise InvalidReference(f"quantiles: {exc}") from None

    @property
    def uses_sampler(self) -> bool:
        return self.name != "mean"

    def outputs(self, targets: Sequence[str]) -> list[str]:
        """Output names in order: the targets (mean, sample) or ``<target>_q<level>`` (quantiles)."""
        if self.name == "quantiles":
            return [quantile_column(t, lv) for t in targets for lv in self.levels]
        return list(targets)

    def describe(self) -> dict:
        """What painted files and jobs record about the mode."""
        out: dict = {"mode": self.name}
        if self.name == "sample":
            out["seed"] = int(self.seed)
        if self.name == "quantiles":
            out["quantiles"] = list(self.levels)
        return out


MEAN = Mode()


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
    #: a sampler's selection cut on its first target (the training catalog's stellar-mass cut), or None
    lower_cut: float | None = None

    @classmethod
    def load(cls, registry: Registry, mv: ModelVersion, threads: int = 0) -> "LoadedModel":
        data = registry.load_bytes(mv)  # sha256-verified
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or usable_cpus()
        opts.log_severity_level = 3
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        max_batch = int(meta.get("max_batch_rows", mv.extra.get("max_batch_rows", 65536)))
        cut = json.loads(meta["lower_cut"]) if mv.kind == SAMPLER_KIND and "lower_cut" in meta else None
        return cls(mv, session, max(1, max_batch), shrinking_run_options(), None if cut is None else float(cut))

    @property
    def is_sampler(self) -> bool:
        return self.version.kind == SAMPLER_KIND

    def predict_outputs(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Named outputs [N] of a multi-output graph (a galaxy graph's targets) for ``x`` [N, 5], one
        onnxruntime run per ``max_batch_rows`` rows for all of them."""
        x = np.ascontiguousarray(_check_x(x), dtype=np.float64)
        names = list(names)
        parts = [self.session.run(names, {INPUT_NAME: x[i:i + self.max_batch_rows]}, self.run_options)
                 for i in range(0, len(x), self.max_batch_rows)]
        return {n: (np.concatenate([p[j] for p in parts]).reshape(-1).astype(np.float64) if parts else np.zeros(0))
                for j, n in enumerate(names)}

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions [N] for features ``x`` [N, 5] (raw, schema units), batched to the graph's limit."""
        return run_batched(self.session, _check_x(x), self.max_batch_rows, self.run_options)

    def distribution(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A sampler's (weights [N, K], means [N, K, D], chol [N, K, D, D]) for ``x`` [N, 5], target units."""
        return run_distribution(self.session, _check_x(x), min(self.max_batch_rows, SAMPLER_BATCH_ROWS),
                                self.run_options)


def run_distribution(session: ort.InferenceSession, x: np.ndarray, batch: int = SAMPLER_BATCH_ROWS,
                     run_options: ort.RunOptions | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights [N, K], means [N, K, D], chol [N, K, D, D]) of a joint-sampler graph for ``x`` [N, 5]
    (float64, schema units), ``batch`` rows per call; target units."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    parts = [session.run(list(SAMPLER_OUTPUTS), {INPUT_NAME: x[i:i + batch]}, run_options)
             for i in range(0, len(x), batch)]
    if not parts:
        _, k, d = session.get_outputs()[1].shape
        return np.zeros((0, k)), np.zeros((0, k, d)), np.zeros((0, k, d, d))
    return tuple(np.concatenate([p[j] for p in parts]) for j in range(3))  # type: ignore[return-value]


def _check_x(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"expected an array of shape (N, {len(FEATURE_NAMES)}), got {x.shape}")
    return x


class GalaxyModel:
    """The galaxy properties of a set of halos, from pinned registered versions: the one model object.

    Built from what a user asks for (``from_registry``: targets, variant, mode, model choice, resolved
    once by ``Registry.resolve_choice``) or from versions pinned earlier (``from_pinned``: a paint job
    records the versions it was accepted with, a Dask worker receives them) — never re-resolved
    later, so an alias that moves meanwhile changes nothing.  Used by the CLI, the data plane, the
    job worker, the painting engines and the report.

    ``versions`` maps each target to the version answering it: its stack (mean mode) or the joint
    sampler (sample and quantiles modes; one graph answering every target, loaded once).  In mean mode,
    when the pinned stacks are exactly those a training run's multi-target graph holds (``plan``,
    ``Registry.galaxy_for``), that one graph runs instead; ``pinned()`` still names the stacks.
    """

    def __init__(self, registry: Registry, versions: dict[str, ModelVersion], variant: str, threads: int = 0,
                 loader: Callable[[ModelVersion], LoadedModel] | None = None, fuse: bool | None = None,
                 planner: Callable[[dict[str, ModelVersion], str], ModelVersion | None] | None = None) -> None:
        self.registry = registry
        self.variant = variant
        self.versions = dict(versions)
        self.targets = tuple(versions)
        # what runs: the pinned versions, or the run's multi-target graph holding exactly the pinned stacks
        # (the same predictions to ~1e-15, one onnxruntime call and one shared kNN search for every target)
        if fuse is None:
            fuse = fused_graphs_enabled()
        self.plan = (planner or registry.galaxy_for)(self.versions, variant) if fuse else None
        runs = {t: self.plan for t in self.targets} if self.plan is not None else self.versions
        load = loader or (lambda mv: LoadedModel.load(registry, mv, threads))
        loaded: dict[tuple[str, int], LoadedModel] = {}
        for mv in runs.values():
            if (mv.name, mv.version) not in loaded:
                loaded[(mv.name, mv.version)] = load(mv)
        self.models = {t: loaded[(mv.name, mv.version)] for t, mv in runs.items()}
        kinds = {m.is_sampler for m in self.models.values()}
        if len(kinds) > 1:
            raise InvalidReference("a model set mixes the joint sampler with stacks: pin one or the other")
        self.is_sampler = kinds == {True}

    @classmethod
    def from_registry(cls, registry: Registry, targets: Sequence[str] | None = None, variant: str = "raw",
                      model: str | None = None, threads: int = 0, mode: Mode = MEAN) -> "GalaxyModel":
        return cls(registry, resolve(registry, targets, variant, model, mode), variant, threads)

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

    def check_mode(self, mode: Mode) -> None:
        """Refuse a mode these versions cannot answer (stacks give means; the sampler draws and quantiles)."""
        if mode.uses_sampler and not self.is_sampler:
            raise InvalidReference(f"mode {mode.name} needs the joint sampler, not stacks: choose the sampler "
                                   f"(e.g. {model_name(None, 'raw', SAMPLER_KIND)}) or mode mean")
        if not mode.uses_sampler and self.is_sampler:
            raise InvalidReference("the joint sampler draws galaxies: use mode sample or quantiles (mode mean is "
                                   "the stacks' prediction)")

    def predict(self, x: np.ndarray, mode: Mode = MEAN, ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Output -> values [N] for features ``x`` [N, 5] (schema order and units), in ``mode.outputs`` order.

        ``mean``: target -> the stack's prediction.  ``sample``: target -> one draw per halo from the
        joint sampler, a function of (``mode.seed``, the halo's entry of ``ids``) only, whatever the
        batch (``ids``: integers, one per halo, required).  ``quantiles``: ``<target>_q<level>`` -> the
        sampler's marginal quantile."""
        self.check_mode(mode)
        if not mode.uses_sampler:
            out: dict[str, np.ndarray] = {}
            graphs: dict[int, tuple[LoadedModel, list[str]]] = {}  # each loaded graph once, with its targets
            for t in self.targets:
                graphs.setdefault(id(self.models[t]), (self.models[t], []))[1].append(t)
            for m, mine in graphs.values():
                if m.version.kind == GALAXY_KIND:
                    out.update(m.predict_outputs(x, mine))
                else:
                    out.update({t: m.predict(x) for t in mine})
            return {t: out[t] for t in self.targets}
        ids = self._ids(ids, len(x)) if mode.name == "sample" else None
        out = {name: np.empty(len(x)) for name in mode.outputs(self.targets)}
        # batch by batch, so that the mixture parameters (~1 kB per halo) are never held for a whole chunk;
        # every step is per halo, so the batching changes no value
        cut = self._lower_cut()
        for start in range(0, len(x), SAMPLER_BATCH_ROWS):
            part = slice(start, start + SAMPLER_BATCH_ROWS)
            dist, cols = self._distribution(x[part])
            if mode.name == "sample":
                draws = sampling.sample_mixture(*dist, ids[part], int(mode.seed), lower=cut)  # type: ignore[index]
                for t, c in zip(self.targets, cols):
                    out[t][part] = draws[:, c]
            else:
                q = sampling.mixture_quantiles(*dist, np.asarray(mode.levels) / 100.0, lower=cut)
                for t, c in zip(self.targets, cols):
                    for j, lv in enumerate(mode.levels):
                        out[quantile_column(t, lv)][part] = q[:, c, j]
        return out

    def sample_seeds(self, x: np.ndarray, ids: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        """Draws [S, N, len(targets)] (columns in ``self.targets`` order) for features ``x`` [N, 5], one
        catalog per seed of ``seeds``: entry s is exactly ``predict(x, Mode("sample", seeds[s]), ids)``, but
        the sampler's distribution is computed once for all the seeds."""
        modes = [Mode("sample", s) for s in seeds]  # checks every seed
        self.check_mode(modes[0] if modes else Mode("sample"))
        dist, cols = self._distribution(x)
        ids = self._ids(ids, len(x))
        out = np.empty((len(modes), len(ids), len(cols)))
        cut = self._lower_cut()
        for s, mode in enumerate(modes):
            out[s] = sampling.sample_mixture(*dist, ids, int(mode.seed), lower=cut)[:, cols]
        return out

    def _lower_cut(self) -> float | None:
        """The sampler's selection cut: draws and quantiles are conditioned on its first target above it."""
        return next(iter(self.models.values())).lower_cut

    def _distribution(self, x: np.ndarray):
        """The sampler's mixture for ``x`` and the column of each of ``self.targets`` in it."""
        sampler = next(iter(self.models.values()))
        order = list(sampler.version.targets)
        return sampler.distribution(x), [order.index(t) for t in self.targets]

    @staticmethod
    def _ids(ids, n: int) -> np.ndarray:
        if ids is None:
            raise InvalidReference("sample mode needs one integer id per halo (or an offset)")
        ids = np.asarray(ids)
        if ids.shape != (n,):
            raise InvalidReference(f"{ids.size} ids for {n} halos")
        return ids


def resolve(registry: Registry, targets: Sequence[str] | None, variant: str,
            model: str | None = None, mode: Mode = MEAN) -> dict[str, ModelVersion]:
    """target -> the pinned version serving it.  Default targets: those of the one model ``model`` names,
    else every target with a ``variant`` stack (mean mode) or those of the joint sampler (other modes)."""
    if targets:
        bad = [t for t in targets if t not in TARGET_NAMES]
        if bad:
            raise InvalidReference(f"unknown target {', '.join(bad)}: choose from {', '.join(TARGET_NAMES)}")
    if mode.uses_sampler:
        return _resolve_sampler(registry, targets, variant, model)
    named = registry.referenced(model)
    if named is not None and named.kind == SAMPLER_KIND:
        raise InvalidReference(f"{named.uri} is the joint sampler: use mode sample or quantiles with it")
    if targets:
        wanted = list(targets)
    else:
        wanted = list(named.targets) if named is not None else registry.default_targets(variant)
    if not wanted:
        raise ModelNotFound(f"no {variant}-variant stack models in {registry.root}: train first "
                            "(galaxypaint train --data FILE)")
    return dict(zip(wanted, registry.resolve_choice(model, wanted, variant)))


def _resolve_sampler(registry: Registry, targets: Sequence[str] | None, variant: str,
                     model: str | None) -> dict[str, ModelVersion]:
    if variant != "raw":
        raise InvalidReference(f"the joint sampler is trained on the raw variant only, not {variant!r}: "
                               "drop the variant (or use mode mean for the smogn stacks)")
    named = registry.referenced(model)
    if named is not None and named.kind != SAMPLER_KIND:
        raise InvalidReference(f"{named.uri} is a {named.kind}, not the joint sampler: sample and quantiles modes "
                               f"need a sampler (e.g. {model_name(None, variant, SAMPLER_KIND)})")
    if named is None:
        try:
            # one model answering every target: a version number or alias applies to it directly
            named = registry.resolve_choice(model, [TARGET_NAMES[0]], variant, kind=SAMPLER_KIND,
                                            name=model_name(None, variant, SAMPLER_KIND))[0]
        except ModelNotFound as exc:
            if model is not None:
                raise
            raise ModelNotFound(f"no joint sampler in {registry.root}: train it (galaxypaint train --data FILE, "
                                f"without --no-sampler) or use mode mean ({exc})") from None
    wanted = list(targets) if targets else list(named.targets)
    missing = [t for t in wanted if t not in named.targets]
    if missing:
        raise InvalidReference(f"model {named.uri} draws {', '.join(named.targets)}, not {', '.join(missing)}")
    return {t: named for t in wanted}


def output_column(output: str) -> str:
    """The file column of a ``GalaxyModel.predict`` output: ``<target>_pred`` for a mean or a draw (so
    ``galaxypaint pk`` reads sampled catalogs unchanged), the output's own name for a quantile."""
    return pred_column(output) if output in TARGET_NAMES else output


def with_predictions(df: pd.DataFrame, values: dict[str, np.ndarray]) -> pd.DataFrame:
    """``df`` (untouched) with one column per output (``output_column``): the one writer of those columns."""
    out = df.copy()
    for name, v in values.items():
        out[output_column(name)] = v
    return out


def predict_table(df: pd.DataFrame, model: GalaxyModel, chunk_rows: int = 16384,
                  progress: Callable[[int, int], None] | None = None, mode: Mode = MEAN,
                  ids: np.ndarray | None = None) -> pd.DataFrame:
    """``df`` with the output columns appended, predicted ``chunk_rows`` at a time (``ids``: one integer
    per row, for sample mode)."""
    model.check_mode(mode)
    x = df[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    preds = {name: np.empty(len(x)) for name in mode.outputs(model.targets)}
    if progress:
        progress(0, len(x))
    for start in range(0, len(x), chunk_rows):
        part = None if ids is None else ids[start:start + chunk_rows]
        for name, values in model.predict(x[start:start + chunk_rows], mode, part).items():
            preds[name][start:start + len(values)] = values
        if progress:
            progress(min(start + chunk_rows, len(x)), len(x))
    return with_predictions(df, preds)
