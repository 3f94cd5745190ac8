"""ONNX graphs for the paper's models, built node by node so that they reproduce the native models.

Every graph takes ``halo_features`` (double, [N, 5], raw features in schema order) unless noted,
computes in double precision where it matters, and is checked against the native model on the whole
test set before it is registered (``check_fidelity``).

Why not the stock converters (measured on the development machine, 500-tree LightGBM on 40-80k rows):
``onnxmltools.convert_lightgbm`` stores thresholds as float32, so inputs that fall between a double
threshold and its float32 rounding take the other branch: max |ONNX - native| = 0.085 (float input)
and 0.13 (double input) in log sSFR.  Written here as ``TreeEnsembleRegressor`` (ai.onnx.ml v3) with
double thresholds (``nodes_values_as_tensor``) the same trees agree to 5e-7 (float32 output rounding).
scikit-learn trees compare ``float32(x) <= threshold``; the graph casts the input through float32
to reproduce that exactly.  skl2onnx's kNN graph is brute force in float32 (wrong neighbours for
~1 row in 20k, 272-714 rows/s); ours (``training.knn_onnx``) is exact in double and searches
k-d-tree cells.
The MLP is a chain of MatMul/Add/Relu built from the Keras weights (no tf2onnx needed).

``to_onnx(estimator, inp, out, prefix) -> (nodes, initializers)`` dispatches on the estimator's class
(``training.estimators``): one converter per learner, registered with ``@to_onnx.register(Class)``.

Models never leave this process as pickles: the ONNX bytes are the artefacts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.core.schema import FEATURE_NAMES
from training.estimators import ERTRegressor, KerasMLPRegressor, KNNRegressor, LightGBMRegressor

OPSET = 18
ML_OPSET = 3
IR_VERSION = 8
INPUT_NAME = "halo_features"
OUTPUT_NAME = "prediction"


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def make_model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], name: str,
               metadata: dict[str, str] | None = None, n_features: int = len(FEATURE_NAMES)) -> onnx.ModelProto:
    """Wrap nodes into a model with input ``halo_features`` [N, n_features] double and output
    ``prediction`` [N, 1] double."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.DOUBLE, [None, 1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
                              producer_name="galaxypaint")
    model.ir_version = IR_VERSION
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    return model


# ----------------------------------------------------------------------------- trees


@dataclass
class Tree:
    """One binary regression tree: ``left[i] < 0`` marks a leaf; go left when x[feature] <= threshold."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray


def sklearn_trees(forest) -> list[Tree]:
    """Trees of a fitted scikit-learn forest (ExtraTreesRegressor / RandomForestRegressor)."""
    out = []
    for est in forest.estimators_:
        t = est.tree_
        out.append(Tree(t.children_left.astype(np.int64), t.children_right.astype(np.int64),
                        t.feature.astype(np.int64), t.threshold.astype(np.float64),
                        t.value[:, 0, 0].astype(np.float64)))
    return out


def lightgbm_trees(booster) -> list[Tree]:
    """Trees of a LightGBM booster from its JSON dump (numerical ``<=`` splits only)."""
    out = []
    for info in booster.dump_model()["tree_info"]:
        left: list[int] = []
        right: list[int] = []
        feat: list[int] = []
        thr: list[float] = []
        val: list[float] = []
        stack = [(info["tree_structure"], -1, False)]
        while stack:
            node, parent, is_right = stack.pop()
            i = len(left)
            left.append(-1), right.append(-1), feat.append(0), thr.append(0.0), val.append(0.0)
            if parent >= 0:
                (right if is_right else left)[parent] = i
            if "leaf_value" in node:
                val[i] = float(node["leaf_value"])
                continue
            if node.get("decision_type", "<=") != "<=":
                raise ValueError(f"unsupported LightGBM split {node.get('decision_type')!r} (categorical?)")
            feat[i] = int(node["split_feature"])
            thr[i] = float(node["threshold"])
            stack.append((node["right_child"], i, True))
            stack.append((node["left_child"], i, False))
        out.append(Tree(np.array(left), np.array(right), np.array(feat), np.array(thr), np.array(val)))
    return out


#: nodes per TreeEnsemble operator: onnxruntime walks every tree of an operator for one row before
#: the next row, so a forest larger than the CPU caches is split into several operators whose
#: outputs are added (100 ExtraTrees of ~17k nodes: 123k rows/s as one operator, 186k in chunks of
#: 10 trees, on the 2-core development machine)
MAX_NODES_PER_OPERATOR = 200_000


def tree_ensemble_nodes(trees: Sequence[Tree], inp: str, out: str, average: bool, prefix: str,
                        float32_inputs: bool, base_value: float = 0.0,
                        max_nodes: int = MAX_NODES_PER_OPERATOR) -> tuple[list, list]:
    """``TreeEnsembleRegressor`` operators with double thresholds; returns (nodes, initializers);
    ``out`` is double [N, 1]: the mean (``average``) or the sum of the trees, plus ``base_value``.

    ``float32_inputs`` rounds the input through float32 first (scikit-learn's trees do that).
    Each operator returns float32, so a chunk's rounding (~6e-8 relative) is the only difference
    from the native model; chunks are combined in double.
    """
    nodes = []
    src = inp
    if float32_inputs:
        nodes += [helper.make_node("Cast", [inp], [f"{prefix}x32"], to=TensorProto.FLOAT),
                  helper.make_node("Cast", [f"{prefix}x32"], [f"{prefix}x64"], to=TensorProto.DOUBLE)]
        src = f"{prefix}x64"
    chunks: list[list[Tree]] = [[]]
    size = 0
    for t in trees:
        if chunks[-1] and size + len(t.left) > max_nodes:
            chunks.append([])
            size = 0
        chunks[-1].append(t)
        size += len(t.left)
    if len(chunks) == 1:
        nodes += _tree_ensemble(chunks[0], src, f"{prefix}y32", average, f"{prefix}trees", base_value)
        nodes.append(helper.make_node("Cast", [f"{prefix}y32"], [out], to=TensorProto.DOUBLE))
        return nodes, []
    inits, parts = [], []
    for i, chunk in enumerate(chunks):
        nodes += _tree_ensemble(chunk, src, f"{prefix}y32_{i}", average, f"{prefix}trees{i}", base_value if i == 0 else 0.0)
        nodes.append(helper.make_node("Cast", [f"{prefix}y32_{i}"], [f"{prefix}y64_{i}"], to=TensorProto.DOUBLE))
        parts.append(f"{prefix}y64_{i}")
        if average:  # mean of the chunk means, weighted by their tree counts
            inits.append(numpy_helper.from_array(np.array([len(chunk) / len(trees)]), f"{prefix}w{i}"))
            nodes.append(helper.make_node("Mul", [parts[-1], f"{prefix}w{i}"], [f"{prefix}yw_{i}"]))
            parts[-1] = f"{prefix}yw_{i}"
    nodes.append(helper.make_node("Sum", parts, [out]))
    return nodes, inits


def _tree_ensemble(trees: Sequence[Tree], src: str, out: str, average: bool, name: str, base_value: float):
    tree_ids, node_ids, feats, modes, values, true_ids, false_ids = [], [], [], [], [], [], []
    leaf_tree, leaf_node, leaf_w = [], [], []
    for ti, t in enumerate(trees):
        n = len(t.left)
        tree_ids.append(np.full(n, ti))
        node_ids.append(np.arange(n))
        is_leaf = t.left < 0
        feats.append(np.where(is_leaf, 0, t.feature))
        modes.extend(np.where(is_leaf, "LEAF", "BRANCH_LEQ").tolist())
        values.append(np.where(is_leaf, 0.0, t.threshold))
        true_ids.append(np.where(is_leaf, 0, t.left))
        false_ids.append(np.where(is_leaf, 0, t.right))
        leaf_tree.append(np.full(int(is_leaf.sum()), ti))
        leaf_node.append(np.flatnonzero(is_leaf))
        leaf_w.append(t.value[is_leaf])
    cat = np.concatenate
    n_nodes = sum(len(t.left) for t in trees)
    return [helper.make_node(
        "TreeEnsembleRegressor", [src], [out], domain="ai.onnx.ml", name=name,
        n_targets=1, aggregate_function="AVERAGE" if average else "SUM", post_transform="NONE",
        nodes_treeids=cat(tree_ids).tolist(), nodes_nodeids=cat(node_ids).tolist(),
        nodes_featureids=cat(feats).tolist(), nodes_modes=modes,
        nodes_values_as_tensor=numpy_helper.from_array(cat(values).astype(np.float64)),
        nodes_truenodeids=cat(true_ids).tolist(), nodes_falsenodeids=cat(false_ids).tolist(),
        nodes_missing_value_tracks_true=[0] * n_nodes,
        target_treeids=cat(leaf_tree).tolist(), target_nodeids=cat(leaf_node).tolist(),
        target_ids=[0] * int(sum(len(x) for x in leaf_w)),
        target_weights_as_tensor=numpy_helper.from_array(cat(leaf_w).astype(np.float64)),
        base_values_as_tensor=numpy_helper.from_array(np.array([base_value], dtype=np.float64)),
    )]


# ----------------------------------------------------------------------------- dense nets, scaler, stack


def mlp_nodes(weights: Sequence[tuple[np.ndarray, np.ndarray]], inp: str, out: str, prefix: str,
              activation: str = "Relu") -> tuple[list, list]:
    """Dense layers (W [in, out], b [out]) with ``activation`` between them and a linear output."""
    nodes, inits = [], []
    cur = inp
    for i, (w, b) in enumerate(weights):
        inits += [_const(f"{prefix}W{i}", np.asarray(w, np.float64)), _const(f"{prefix}b{i}", np.asarray(b, np.float64))]
        nodes += [helper.make_node("MatMul", [cur, f"{prefix}W{i}"], [f"{prefix}h{i}_mm"]),
                  helper.make_node("Add", [f"{prefix}h{i}_mm", f"{prefix}b{i}"], [f"{prefix}h{i}_lin"])]
        cur = f"{prefix}h{i}_lin"
        if i < len(weights) - 1:
            nodes.append(helper.make_node(activation, [cur], [f"{prefix}h{i}"]))
            cur = f"{prefix}h{i}"
    nodes.append(helper.make_node("Identity", [cur], [out]))
    return nodes, inits


def scaler_nodes(mean: np.ndarray, scale: np.ndarray, inp: str, out: str, prefix: str = "scaler_") -> tuple[list, list]:
    """(x - mean) / scale in double, as scikit-learn's StandardScaler."""
    inits = [_const(f"{prefix}mean", np.asarray(mean, np.float64)), _const(f"{prefix}scale", np.asarray(scale, np.float64))]
    nodes = [helper.make_node("Sub", [inp, f"{prefix}mean"], [f"{prefix}centred"]),
             helper.make_node("Div", [f"{prefix}centred", f"{prefix}scale"], [out])]
    return nodes, inits


def linear_nodes(coef: np.ndarray, intercept: float, inputs: Sequence[str], out: str,
                 prefix: str = "stack_") -> tuple[list, list]:
    """out = concat(inputs) @ coef + intercept (the stacking LinearRegression)."""
    inits = [_const(f"{prefix}coef", np.asarray(coef, np.float64).reshape(-1, 1)),
             _const(f"{prefix}intercept", np.asarray([intercept], np.float64))]
    nodes = [helper.make_node("Concat", list(inputs), [f"{prefix}features"], axis=1),
             helper.make_node("MatMul", [f"{prefix}features", f"{prefix}coef"], [f"{prefix}mm"]),
             helper.make_node("Add", [f"{prefix}mm", f"{prefix}intercept"], [out])]
    return nodes, inits


# ----------------------------------------------------------------------------- one converter per learner


@functools.singledispatch
def to_onnx(estimator, inp: str, out: str, prefix: str) -> tuple[list, list]:
    """Nodes and initializers computing ``estimator.predict`` of ``inp`` (double [N, d], the features the
    estimator was fitted on) into ``out`` (double [N, 1]); names are prefixed with ``prefix``."""
    raise TypeError(f"no ONNX converter for {type(estimator).__name__}")


#: estimator class -> converter (``to_onnx.register`` adds one)
CONVERTERS = to_onnx.registry


@to_onnx.register(ERTRegressor)
def _ert(est: ERTRegressor, inp: str, out: str, prefix: str) -> tuple[list, list]:
    return tree_ensemble_nodes(sklearn_trees(est.model_), inp, out, average=True, prefix=prefix, float32_inputs=True)


@to_onnx.register(KNNRegressor)
def _knn(est: KNNRegressor, inp: str, out: str, prefix: str) -> tuple[list, list]:
    from training import knn_onnx  # it builds on this module

    if est.weights != "uniform":
        raise ValueError(f"the kNN graph averages uniformly, not with weights={est.weights!r}")
    return knn_onnx.knn_nodes(est.X_fit_, est.y_fit_, est.n_neighbors, est.p, inp, out, prefix)


@to_onnx.register(LightGBMRegressor)
def _lgbm(est: LightGBMRegressor, inp: str, out: str, prefix: str) -> tuple[list, list]:
    return tree_ensemble_nodes(lightgbm_trees(est.booster_), inp, out, average=False, prefix=prefix,
                               float32_inputs=False)


@to_onnx.register(KerasMLPRegressor)
def _mlp(est: KerasMLPRegressor, inp: str, out: str, prefix: str) -> tuple[list, list]:
    return mlp_nodes(est.weights_, inp, out, prefix, activation={"relu": "Relu"}[est.activation])


def check_fidelity(model_bytes: bytes, x: np.ndarray, expected: np.ndarray, tol: float = 1e-4,
                   batch: int = 8192) -> float:
    """Run the graph on ``x`` with onnxruntime and return max |ONNX - expected|; raise above ``tol``."""
    import onnxruntime as ort

    from app.core.model import run_batched

    got = run_batched(ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]), x, batch)
    diff = float(np.max(np.abs(got - np.asarray(expected, dtype=np.float64).ravel()))) if len(x) else 0.0
    if not diff <= tol:
        raise FidelityError(f"ONNX and native predictions differ by up to {diff:.3g} (> {tol:g})")
    return diff


class FidelityError(RuntimeError):
    """An exported graph does not reproduce its native model within tolerance."""
