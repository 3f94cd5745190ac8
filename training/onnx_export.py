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
~1 row in 20k, 272-714 rows/s); ours is exact in double and prunes with k-d-tree blocks.
The MLP is a chain of MatMul/Add/Relu built from the Keras weights (no tf2onnx needed).

Models never leave this process as pickles: the ONNX bytes are the artefacts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.schema import FEATURE_NAMES

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


def tree_ensemble_nodes(trees: Sequence[Tree], inp: str, out: str, average: bool, prefix: str,
                        float32_inputs: bool, base_value: float = 0.0) -> tuple[list, list]:
    """``TreeEnsembleRegressor`` with double thresholds; returns (nodes, initializers); ``out`` is double [N, 1].

    ``float32_inputs`` rounds the input through float32 first (scikit-learn's trees do that).
    """
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
    nodes = []
    src = inp
    if float32_inputs:
        nodes += [helper.make_node("Cast", [inp], [f"{prefix}x32"], to=TensorProto.FLOAT),
                  helper.make_node("Cast", [f"{prefix}x32"], [f"{prefix}x64"], to=TensorProto.DOUBLE)]
        src = f"{prefix}x64"
    n_nodes = sum(len(t.left) for t in trees)
    nodes.append(helper.make_node(
        "TreeEnsembleRegressor", [src], [f"{prefix}y32"], domain="ai.onnx.ml", name=f"{prefix}trees",
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
    ))
    nodes.append(helper.make_node("Cast", [f"{prefix}y32"], [out], to=TensorProto.DOUBLE))
    return nodes, []


# ----------------------------------------------------------------------------- kNN


def knn_nodes(train_x: np.ndarray, train_y: np.ndarray, k: int, p: int, inp: str, out: str,
              prefix: str) -> tuple[list, list]:
    """Exact k-nearest-neighbour mean (uniform weights, Minkowski p = 1 or 2), brute force in double.

    ``inp`` holds the *scaled* features.  p=2 ranks rows by |x|^2 - 2 q.x with one GEMM (|q|^2 is
    the same for every row of a query); p=1 accumulates |q_j - x_j| feature by feature, which needs a
    few ``8 n`` byte rows per query row: callers batch it (see ``max_batch_rows``).
    Measured on 2 cores (84k training rows) and not kept: k-d-tree leaves with exact-candidate lists
    and a per-row brute-force fallback (36-99 % of queries fell back); block minima of the full
    distance matrix to shrink TopK (exact, but the double GEMM alone runs at 16-18k rows/s, so no
    exact brute force reaches 20k); bounding-box lower bounds per 32-64-row block with candidate
    gathers (exact with a fallback flag, 99.9 % pass with 2-4k candidates, but 5-8k rows/s for p=2;
    ~6k rows/s for p=1, a possible future gain for Manhattan).
    """
    if p not in (1, 2):
        raise ValueError("kNN export supports p=1 (Manhattan) and p=2 (Euclidean)")
    x = np.asarray(train_x, dtype=np.float64)
    y = np.asarray(train_y, dtype=np.float64)
    n, _ = x.shape
    if k > n:
        raise ValueError(f"k={k} neighbours but only {n} training rows")
    P = prefix
    inits = [_const(f"{P}k", np.array([k], np.int64)), _const(f"{P}ax1", np.array([1], np.int64)),
             _const(f"{P}y", y)]
    if p == 2:
        # one GEMM: [q, 1] @ [[-2 X^T], [|x|^2]] = |x|^2 - 2 q.x, the squared distance less |q|^2
        inits += [_const(f"{P}XTa", np.vstack([-2.0 * x.T, (x**2).sum(1)[None, :]])),
                  _const(f"{P}one_col", np.array([[1.0]]))]
        nodes = [helper.make_node("Shape", [inp], [f"{P}qshape"], end=1),
                 helper.make_node("Concat", [f"{P}qshape", f"{P}ax1"], [f"{P}ones_shape"], axis=0),
                 helper.make_node("Expand", [f"{P}one_col", f"{P}ones_shape"], [f"{P}ones"]),
                 helper.make_node("Concat", [inp, f"{P}ones"], [f"{P}qa"], axis=1),
                 helper.make_node("MatMul", [f"{P}qa", f"{P}XTa"], [f"{P}dist"])]
    else:
        # |q_j - x_j| accumulated feature by feature on [N, n] (1.3-1.7x faster than one [N, n, d]
        # difference tensor reduced over its short last axis; the same sums in the same order)
        nodes = []
        for j in range(x.shape[1]):
            inits += [_const(f"{P}x{j}", x[:, j][None, :]), _const(f"{P}c{j}", np.array([j], np.int64)),
                      _const(f"{P}c{j}e", np.array([j + 1], np.int64))]
            nodes += [helper.make_node("Slice", [inp, f"{P}c{j}", f"{P}c{j}e", f"{P}ax1"], [f"{P}q{j}"]),
                      helper.make_node("Sub", [f"{P}q{j}", f"{P}x{j}"], [f"{P}d{j}"]),
                      helper.make_node("Abs", [f"{P}d{j}"], [f"{P}a{j}"])]
            if j > 0:
                prev = f"{P}a0" if j == 1 else f"{P}acc{j - 1}"
                nodes.append(helper.make_node("Add", [prev, f"{P}a{j}"],
                                              [f"{P}dist" if j == x.shape[1] - 1 else f"{P}acc{j}"]))
        if x.shape[1] == 1:
            nodes.append(helper.make_node("Identity", [f"{P}a0"], [f"{P}dist"]))
    nodes += [helper.make_node("TopK", [f"{P}dist", f"{P}k"], [f"{P}_v", f"{P}idx"], largest=0, sorted=0),
              helper.make_node("Gather", [f"{P}y", f"{P}idx"], [f"{P}ny"]),
              helper.make_node("ReduceMean", [f"{P}ny", f"{P}ax1"], [out], keepdims=1)]
    return nodes, inits


def knn_max_batch_rows(n_train: int, p: int, budget_bytes: int = 512 * 2**20) -> int:
    """Largest query batch whose kNN temporaries stay within ``budget_bytes``."""
    per_row = 8 * n_train * (6 if p == 1 else 3)
    return int(max(1, min(65536, budget_bytes // per_row)))


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


def check_fidelity(model_bytes: bytes, x: np.ndarray, expected: np.ndarray, tol: float = 1e-4,
                   batch: int = 8192) -> float:
    """Run the graph on ``x`` with onnxruntime and return max |ONNX - expected|; raise above ``tol``."""
    import onnxruntime as ort

    from app.inference import run_batched

    got = run_batched(ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]), x, batch)
    diff = float(np.max(np.abs(got - np.asarray(expected, dtype=np.float64).ravel()))) if len(x) else 0.0
    if not diff <= tol:
        raise FidelityError(f"ONNX and native predictions differ by up to {diff:.3g} (> {tol:g})")
    return diff


class FidelityError(RuntimeError):
    """An exported graph does not reproduce its native model within tolerance."""
