"""ONE ONNX graph painting several galaxy properties of one training run and path.

The per-target fused graphs (``training.pipeline.build_graph``: scaler + ERT + kNN + LightGBM + NN +
stack) each repeat the scaler and, above all, a full exact kNN search; on the raw path the four
targets' kNN members search the *same* standardized training rows, only k, p and the averaged target
differ.  Painting four targets one graph after another is then bounded by four searches.  This graph
holds every target's stack once and shares what is the same:

* one set of scaler nodes per distinct scaler (raw path: one; smogn: one per target, each fitted on
  its own augmented rows);
* one kNN search per distinct (scaler, Minkowski p, training rows): ``training.knn_onnx.knn_nodes``
  with ``train_y`` [n, T] and one k per target, searching for ``max(k)`` and averaging each target
  over its own first k neighbours.  On the smogn path every target has its own augmented rows, so
  nothing is shared there (it is still one graph, one onnxruntime call);
* the other members (trees, MLP) and the stacker per target, exactly as in the per-target graph.

Input ``halo_features`` double [N, 5], schema units and order (``app.core.schema.FEATURE_NAMES``), as
every graph of the project.  Outputs: one double tensor **[N, 1]** per target, named by the target
(``smass`` log10 Msun/h, ``sSFR`` log10 h/yr, ``radius`` log10 kpc/h, ``color`` mag: the units of
``app.core.schema.COLUMNS``), the same shape as the per-target graphs' ``prediction``.  The joint
sampler stays its own graph: onnxruntime runs every node of a graph whatever outputs are asked for, so
inside this one it would cost mean mode its mixture and sample mode every stack.

The shared search gives the same neighbours as each target's own search; the means are summed in
another order, so outputs agree with the per-target graphs to ~1e-15, not bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.core.schema import COLUMNS, FEATURE_NAMES
from training import knn_onnx
from training import onnx_export as ox
from training.estimators import KNNRegressor

if TYPE_CHECKING:
    from training.pipeline import Scaler, Stack, TargetResult


@dataclass
class TargetStack:
    """One target's fitted stack, as the combined graph needs it.

    ``members`` maps kind -> fitted ``training.estimators.Learner`` in the stack's component order
    (``coef[j]`` weighs member j); all members take the features standardized by ``scaler``.  A
    ``KNNRegressor`` member carries its (standardized) training rows and targets, ``X_fit_`` [n, 5]
    and ``y_fit_`` [n]: members whose rows are equal share one search.
    """

    target: str
    scaler: Scaler
    members: dict[str, Any]
    coef: np.ndarray          # [len(members)]
    intercept: float

    @classmethod
    def from_result(cls, result: TargetResult, stack: Stack | None = None) -> "TargetStack":
        """From what ``training.pipeline.train_target`` returns: its ``stack`` (the paper's four
        members) unless another ``training.pipeline.Stack`` over its models is given."""
        stack = result.stack if stack is None else stack
        members = {kind: result.models[kind].estimator for kind in stack.components}
        return cls(result.target, result.scaler, members, np.asarray(stack.model.coef_, np.float64),
                   float(stack.model.intercept_))

    @classmethod
    def from_parts(cls, target: str, scaler: Scaler, members: Mapping[str, Any], stack) -> "TargetStack":
        """From a fitted stacking ``LinearRegression`` (``coef_`` in ``members`` order)."""
        return cls(target, scaler, dict(members), np.asarray(stack.coef_, np.float64), float(stack.intercept_))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


@dataclass
class _Search:
    """One kNN search and the (target, k) columns it averages."""

    scaled: str
    p: int
    x: np.ndarray
    columns: list[tuple[str, int, np.ndarray]]  # (target, k, y [n])


def _scaler_inputs(stacks: Sequence[TargetStack]) -> tuple[list, list, list[str]]:
    """Scaler nodes, one set per distinct (mean, scale), and the standardized tensor of each stack
    (``scaled``, ``scaled_1``, ... in the order the distinct scalers appear)."""
    nodes: list = []
    inits: list = []
    names: list[str] = []
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    for st in stacks:
        mean, scale = np.asarray(st.scaler.mean, np.float64), np.asarray(st.scaler.scale, np.float64)
        idx = next((i for i, (m, s) in enumerate(seen) if _same(m, mean) and _same(s, scale)), None)
        if idx is None:
            idx = len(seen)
            seen.append((mean, scale))
            prefix = f"scaler{idx}_" if idx else "scaler_"
            n, i = ox.scaler_nodes(mean, scale, ox.INPUT_NAME, _scaled_name(idx), prefix=prefix)
            nodes += n
            inits += i
        names.append(_scaled_name(idx))
    return nodes, inits, names


def _scaled_name(idx: int) -> str:
    return "scaled" if idx == 0 else f"scaled_{idx}"


def _group_searches(stacks: Sequence[TargetStack], scaled: Sequence[str]) -> list[_Search]:
    """The kNN members grouped by (standardized input, p, training rows): one search each."""
    searches: list[_Search] = []
    for st, src in zip(stacks, scaled):
        for est in st.members.values():
            if not isinstance(est, KNNRegressor):
                continue
            if est.weights != "uniform":
                raise ValueError(f"the kNN graph averages uniformly, not with weights={est.weights!r}")
            x, y = np.asarray(est.X_fit_, np.float64), np.asarray(est.y_fit_, np.float64)
            found = next((s for s in searches if s.scaled == src and s.p == est.p and _same(s.x, x)), None)
            if found is None:
                searches.append(found := _Search(src, int(est.p), x, []))
            found.columns.append((st.target, int(est.n_neighbors), y))
    return searches


def _search_nodes(i: int, search: _Search) -> tuple[list, list]:
    """One search; target t's kNN prediction lands in ``{t}_knn_out`` [N, 1]."""
    prefix = f"knn{i}_"
    if len(search.columns) == 1:  # the single-target form: the same nodes as the per-target graph
        target, k, y = search.columns[0]
        return knn_onnx.knn_nodes(search.x, y, k, search.p, search.scaled, f"{target}_knn_out", prefix)
    ys = np.column_stack([y for _, _, y in search.columns])
    ks = [k for _, k, _ in search.columns]
    nodes, inits = knn_onnx.knn_nodes(search.x, ys, ks, search.p, search.scaled, f"{prefix}out", prefix)
    inits.append(numpy_helper.from_array(np.ones(len(ks), np.int64), f"{prefix}ones"))
    nodes.append(helper.make_node("Split", [f"{prefix}out", f"{prefix}ones"],
                                  [f"{t}_knn_out" for t, _, _ in search.columns], axis=1))
    return nodes, inits


def build_galaxy_graph(stacks: Sequence[TargetStack], path: str, *,
                       metadata: Mapping[str, Any] | None = None) -> bytes:
    """ONE graph: ``halo_features`` double [N, 5] (schema units) -> one double [N, 1] output per target,
    named by the target (in its schema unit).

    ``stacks`` are the targets of one training run and ``path`` (targets distinct).  Metadata:
    ``kind`` = "galaxy", ``targets``, ``units`` (target -> unit), ``components`` (target -> member
    kinds in stack order), ``path``, ``max_batch_rows`` (the smallest over the members),
    ``knn_searches`` (per search: p, training rows, [target, k] pairs), ``feature_order``, and
    ``metadata`` (e.g. ``training_domain``, ``seed``).
    """
    targets = [st.target for st in stacks]
    if not targets or len(set(targets)) != len(targets):
        raise ValueError(f"one stack per target, at least one: got {targets}")
    for st in stacks:
        if len(st.coef) != len(st.members):
            raise ValueError(f"{st.target}: {len(st.coef)} stack coefficients for {len(st.members)} members")
    nodes, inits, scaled = _scaler_inputs(stacks)
    searches = _group_searches(stacks, scaled)
    for i, search in enumerate(searches):
        n, ini = _search_nodes(i, search)
        nodes += n
        inits += ini
    outputs = []
    for st, src in zip(stacks, scaled):
        t = st.target
        for kind, est in st.members.items():
            if not isinstance(est, KNNRegressor):
                n, ini = ox.to_onnx(est, src, f"{t}_{kind}_out", f"{t}_{kind}_")
                nodes += n
                inits += ini
        n, ini = ox.linear_nodes(st.coef, st.intercept, [f"{t}_{k}_out" for k in st.members], t, prefix=f"{t}_stack_")
        nodes += n
        inits += ini
        outputs.append(helper.make_tensor_value_info(t, TensorProto.DOUBLE, [None, 1]))
    max_batch = min(est.max_batch_rows for st in stacks for est in st.members.values())
    meta: dict[str, Any] = {
        "kind": "galaxy", "path": path, "targets": targets,
        "units": {t: COLUMNS[t].unit if t in COLUMNS else "" for t in targets},
        "components": {st.target: list(st.members) for st in stacks},
        "max_batch_rows": max_batch, "feature_order": list(FEATURE_NAMES),
        "knn_searches": [{"p": s.p, "rows": len(s.x), "columns": [[t, k] for t, k, _ in s.columns]} for s in searches],
        **(metadata or {})}
    graph = helper.make_graph(nodes, f"galaxy-{path}", [helper.make_tensor_value_info(
        ox.INPUT_NAME, TensorProto.DOUBLE, [None, len(FEATURE_NAMES)])], outputs, inits)
    model = helper.make_model(graph, producer_name="galaxypaint", opset_imports=[
        helper.make_opsetid("", ox.OPSET), helper.make_opsetid("ai.onnx.ml", ox.ML_OPSET)])
    model.ir_version = ox.IR_VERSION
    helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def target_graph(st: TargetStack, path: str, metadata: Mapping[str, Any] | None = None) -> bytes:
    """The per-target fused graph of ``st`` as ``training.pipeline.export`` writes it (scaler + members
    + stacker, output ``prediction`` [N, 1]): what the combined graph replaces."""
    from training.pipeline import build_graph

    parts = [ox.to_onnx(est, "scaled", f"{kind}_out", f"{kind}_") for kind, est in st.members.items()]
    parts.append(ox.linear_nodes(st.coef, st.intercept, [f"{kind}_out" for kind in st.members], ox.OUTPUT_NAME))
    max_batch = min(est.max_batch_rows for est in st.members.values())
    return build_graph(st.target, path, "stack", st.scaler, parts, {"max_batch_rows": max_batch,
                                                                   "components": list(st.members), **(metadata or {})})


def run_galaxy_graph(session, x_raw: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """Every output of a galaxy graph for ``x_raw`` [N, 5] (schema units), ``batch`` rows per call:
    output name -> array with N rows (targets [N, 1])."""
    x = np.ascontiguousarray(x_raw, dtype=np.float64)
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list] = {n: [] for n in names}
    for start in range(0, max(len(x), 1), batch):
        for n, arr in zip(names, session.run(names, {ox.INPUT_NAME: x[start:start + batch]})):
            parts[n].append(arr)
    return {n: np.concatenate(a) for n, a in parts.items()}


def check_galaxy_graph_fidelity(graph_bytes: bytes, x_raw: np.ndarray, expected: Mapping[str, np.ndarray],
                                tol: float = 1e-4, batch: int | None = None) -> dict[str, float]:
    """Run the graph with onnxruntime on ``x_raw`` [N, 5] (schema units) and compare each output named
    in ``expected`` (target -> native stack predictions [N]) with it.
    Returns output -> max |ONNX - expected|; raises ``training.onnx_export.FidelityError`` when one
    exceeds ``tol`` or an expected output is missing.  ``batch`` defaults to the graph's
    ``max_batch_rows``."""
    import onnxruntime as ort

    session = ort.InferenceSession(graph_bytes, providers=["CPUExecutionProvider"])
    missing = sorted(set(expected) - {o.name for o in session.get_outputs()})
    if missing:
        raise ox.FidelityError(f"the graph has no output {', '.join(missing)}")
    if batch is None:
        batch = int(session.get_modelmeta().custom_metadata_map.get("max_batch_rows", 8192))
    got = run_galaxy_graph(session, x_raw, batch)
    n = len(x_raw)
    diffs = {name: float(np.max(np.abs(got[name].reshape(n, -1) - np.asarray(want, np.float64).reshape(n, -1))))
             if n else 0.0 for name, want in expected.items()}
    bad = {k: v for k, v in diffs.items() if not v <= tol}
    if bad:
        raise ox.FidelityError("ONNX and native predictions differ by up to "
                               + ", ".join(f"{v:.3g} ({k})" for k, v in bad.items()) + f" (> {tol:g})")
    return diffs
