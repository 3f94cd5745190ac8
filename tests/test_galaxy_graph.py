"""One graph for several targets (``training.galaxy_graph``) answers as the per-target fused graphs and
the native stacks do, with one kNN search per distinct (p, training rows)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.core.schema import FEATURE_NAMES
from training import galaxy_graph as gg
from training import onnx_export as ox

pytest.importorskip("lightgbm")
pytest.importorskip("keras")

#: per target: the kNN member's (k, p); smass and sSFR share a p = 2 search, radius and color a p = 1 one
KNN = {"smass": (29, 2), "sSFR": (15, 2), "radius": (10, 1), "color": (20, 1)}


def _members(kinds, z_tr, y_tr, z_va, y_va, k, p, seed):
    from training.estimators import LEARNERS

    params = {"ert": {"n_estimators": 8, "min_samples_leaf": 10, "random_state": seed},
              "knn": {"n_neighbors": k, "p": p},
              "lgbm": {"learning_rate": 0.2, "num_leaves": 15, "n_estimators": 40, "random_state": seed},
              "nn": {"hidden_layer_sizes": (16, 16), "max_epochs": 3, "batch_size": 256, "random_state": seed}}
    out = {}
    for kind in kinds:
        est = LEARNERS[kind](**params[kind])
        out[kind] = est.fit(z_tr, y_tr, eval_set=(z_va, y_va)) if kind in ("lgbm", "nn") else est.fit(z_tr, y_tr)
    return out


def _stack(target, scaler, members, z_va, y_va):
    from sklearn.linear_model import LinearRegression

    preds = np.column_stack([m.predict(z_va) for m in members.values()])
    return gg.TargetStack.from_parts(target, scaler, members, LinearRegression().fit(preds, y_va))


def _native(st: gg.TargetStack, x_raw):
    z = st.scaler.transform(x_raw)
    return np.column_stack([m.predict(z) for m in st.members.values()]) @ st.coef + st.intercept


@pytest.fixture(scope="module")
def run():
    """Four targets of one 'raw' run: the same training rows and scaler; n = 5000 so that the 2400
    training rows take the kNN cell search (>= MIN_ROWS_FOR_PARTITION), not brute force only."""
    from training.demo_catalog import make_demo_catalog
    from training.knn_onnx import MIN_ROWS_FOR_PARTITION
    from training.pipeline import Scaler, split_indices

    df = make_demo_catalog(n=5000, seed=1)
    split = split_indices(df, seed=1)
    x = df[list(FEATURE_NAMES)].to_numpy(np.float64)
    tr, va, te = split["train"], split["val"], split["test"]
    assert len(tr) >= MIN_ROWS_FOR_PARTITION
    scaler = Scaler.fit(x[tr])
    z_tr, z_va = scaler.transform(x[tr]), scaler.transform(x[va])
    stacks = []
    for i, (target, (k, p)) in enumerate(KNN.items()):
        y = df[target].to_numpy(np.float64)
        kinds = ("ert", "knn", "lgbm", "nn") if i == 0 else ("knn", "lgbm", "ert")
        members = _members(kinds, z_tr, y[tr], z_va, y[va], k, p, seed=i)
        stacks.append(_stack(target, scaler, members, z_va, y[va]))
    # probes: the test rows, and rows far outside the training domain (the searches' fallback)
    x_te = x[te]
    far = np.vstack([x_te[:30] * np.array([1.3, 4.0, 5.0, 1.0, 30.0]), x_te[:30] + 25.0])
    return stacks, x_te, far


def _session(blob):
    return ort.InferenceSession(blob, providers=["CPUExecutionProvider"])


def _per_target_graph(st: gg.TargetStack):
    """The pipeline's own fused graph for one target (as ``training.pipeline.export`` builds it)."""
    return gg.target_graph(st, "raw")


def _cell_searches(blob) -> int:
    """Cell searches in a graph: each sorts its queries by cell with exactly one top-level Unique."""
    return sum(n.op_type == "Unique" for n in onnx.load_from_string(blob).graph.node)


def test_one_graph_answers_as_the_per_target_graphs_and_the_native_stacks(run):
    stacks, x_te, far = run
    blob = gg.build_galaxy_graph(stacks, "raw", metadata={"seed": 1})
    sess = _session(blob)
    assert [o.name for o in sess.get_outputs()] == list(KNN)
    probes = np.vstack([x_te, far])
    got = dict(zip(list(KNN), sess.run(None, {ox.INPUT_NAME: probes})))
    for st in stacks:
        assert got[st.target].shape == (len(probes), 1)
        alone = _session(_per_target_graph(st)).run(None, {ox.INPUT_NAME: probes})[0]
        assert np.abs(got[st.target] - alone).max() <= 1e-9  # same neighbours, sums in another order
    expected = {st.target: _native(st, probes) for st in stacks}
    diffs = gg.check_galaxy_graph_fidelity(blob, probes, expected)
    # trees and the NN output float32 (as in the per-target graphs); the kNN part is exact in double
    assert set(diffs) == set(KNN) and max(diffs.values()) <= 1e-4
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["targets"]) == list(KNN) and meta["path"] == "raw" and meta["kind"] == "galaxy"
    assert json.loads(meta["units"])["smass"]
    assert json.loads(meta["components"])["smass"] == ["ert", "knn", "lgbm", "nn"]
    assert int(meta["max_batch_rows"]) == 65536 and meta["seed"] == "1"


def test_one_knn_search_per_distinct_p(run):
    stacks, _, _ = run
    blob = gg.build_galaxy_graph(stacks, "raw")
    searches = json.loads(_session(blob).get_modelmeta().custom_metadata_map["knn_searches"])
    assert sorted((s["p"], [t for t, _ in s["columns"]]) for s in searches) == \
        [(1, ["radius", "color"]), (2, ["smass", "sSFR"])]
    assert _cell_searches(blob) == 2
    assert sum(_cell_searches(_per_target_graph(st)) for st in stacks) == 4
    model = onnx.load_from_string(blob)
    assert sum(n.op_type == "Sub" and n.input[0] == ox.INPUT_NAME for n in model.graph.node) == 1  # one scaler


def test_kNN_parts_are_exact_far_outside_the_domain(run):
    """With only kNN members (coefficient 1) each output is scikit-learn's kNN mean, to 1e-12."""
    stacks, x_te, far = run
    knn_only = [gg.TargetStack(st.target, st.scaler, {"knn": st.members["knn"]}, np.ones(1), 0.0) for st in stacks]
    blob = gg.build_galaxy_graph(knn_only, "raw")
    probes = np.vstack([far, x_te[:300]])
    got = _session(blob).run(None, {ox.INPUT_NAME: probes})
    for st, out in zip(stacks, got):
        want = st.members["knn"].predict(st.scaler.transform(probes))
        assert np.abs(out.ravel() - want).max() <= 1e-12


def test_single_row_equals_the_batch(run):
    stacks, x_te, far = run
    sess = _session(gg.build_galaxy_graph(stacks, "raw"))
    probes = np.vstack([x_te[:40], far[:10]])
    batch = sess.run(None, {ox.INPUT_NAME: probes})
    for i in range(len(probes)):
        one = sess.run(None, {ox.INPUT_NAME: probes[i:i + 1]})
        assert max(np.abs(a - b[i:i + 1]).max() for a, b in zip(one, batch)) <= 1e-12
    empty = sess.run(None, {ox.INPUT_NAME: np.zeros((0, 5))})
    assert all(e.shape == (0, 1) for e in empty)


def test_own_rows_and_scalers_share_nothing_but_still_make_one_graph(run):
    """The smogn path: every target has its own (augmented) training rows and scaler."""
    from training.pipeline import Scaler

    stacks, x_te, far = run
    rng = np.random.default_rng(3)
    own = []
    for i, st in enumerate(stacks[:2]):
        knn = st.members["knn"]
        # another training table per target: the rows in their own standardization, jittered
        x_raw = st.scaler.mean + knn.X_fit_ * st.scaler.scale + 0.01 * i * rng.standard_normal(knn.X_fit_.shape)
        scaler = Scaler.fit(x_raw)
        refit = type(knn)(knn.n_neighbors, knn.p).fit(scaler.transform(x_raw), knn.y_fit_)
        own.append(gg.TargetStack(st.target, scaler, {"knn": refit, "lgbm": st.members["lgbm"]}, st.coef[1:3],
                                  st.intercept))
    blob = gg.build_galaxy_graph(own, "smogn")
    model = onnx.load_from_string(blob)
    assert _cell_searches(blob) == 2
    assert sum(n.op_type == "Sub" and n.input[0] == ox.INPUT_NAME for n in model.graph.node) == 2
    probes = np.vstack([x_te[:500], far])
    gg.check_galaxy_graph_fidelity(blob, probes, {st.target: _native(st, probes) for st in own})
    with pytest.raises(ox.FidelityError, match="smass"):
        gg.check_galaxy_graph_fidelity(blob, probes, {st.target: _native(st, probes) + 1e-3 for st in own})
    with pytest.raises(ox.FidelityError, match="no output radius"):
        gg.check_galaxy_graph_fidelity(blob, probes, {"radius": np.zeros(len(probes))})


def test_rejects_repeated_targets_and_wrong_coefficients(run):
    stacks, _, _ = run
    with pytest.raises(ValueError, match="one stack per target"):
        gg.build_galaxy_graph([stacks[0], stacks[0]], "raw")
    bad = gg.TargetStack(stacks[1].target, stacks[1].scaler, stacks[1].members, np.ones(2), 0.0)
    with pytest.raises(ValueError, match="2 stack coefficients for 3 members"):
        gg.build_galaxy_graph([bad], "raw")


def test_target_stack_from_a_training_result(run):
    """``from_result`` reads the pipeline's ``TargetResult`` (its paper stack, or another ``Stack``)."""
    from types import SimpleNamespace

    from training.estimators import Selection
    from training.pipeline import Stack

    st = run[0][1]
    lr = SimpleNamespace(coef_=st.coef, intercept_=st.intercept)
    models = {k: Selection(m) for k, m in st.members.items()}
    result = SimpleNamespace(target=st.target, scaler=st.scaler, models=models,
                             stack=Stack(lr, tuple(st.members), "validation rows"))
    got = gg.TargetStack.from_result(result)
    assert list(got.members) == list(st.members) and np.array_equal(got.coef, st.coef)
    two = Stack(SimpleNamespace(coef_=np.array([0.5, 0.5]), intercept_=0.1), ("lgbm", "knn"), "validation rows")
    sub = gg.TargetStack.from_result(result, two)
    assert list(sub.members) == ["lgbm", "knn"] and sub.intercept == 0.1
