"""Exported graphs reproduce the native models (onnxruntime against scikit-learn / LightGBM / numpy)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from training import knn_onnx, onnx_export as ox

lgb = pytest.importorskip("lightgbm")
pytest.importorskip("sklearn")


def _session(nodes, inits, n_features=5):
    model = ox.make_model(nodes, inits, "test", {"target": "smass"}, n_features=n_features)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(sess, x):
    return sess.run(None, {ox.INPUT_NAME: np.ascontiguousarray(x, dtype=np.float64)})[0].ravel()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6000, 5))
    y = np.sin(2 * x[:, 0]) + x[:, 1] ** 2 + 0.3 * x[:, 2] + 0.1 * rng.standard_normal(6000)
    return x[:4000], y[:4000], x[4000:], y[4000:]


def _threshold_probes(trees, n_features=5):
    """Inputs sitting exactly on split thresholds and one ulp either side (the float32 trap)."""
    thr = np.concatenate([t.threshold[t.left >= 0] for t in trees])[:600]
    feat = np.concatenate([t.feature[t.left >= 0] for t in trees])[:600]
    rows = []
    for f, v in zip(feat, thr):
        for val in (v, np.nextafter(v, -np.inf), np.nextafter(v, np.inf)):
            r = np.zeros(n_features)
            r[f] = val
            rows.append(r)
    return np.array(rows)


def test_lightgbm_graph_matches_booster_including_at_thresholds(data):
    xt, yt, xe, _ = data
    booster = lgb.train({"num_leaves": 63, "learning_rate": 0.1, "verbosity": -1, "seed": 0},
                        lgb.Dataset(xt, yt), num_boost_round=200)
    trees = ox.lightgbm_trees(booster)
    sess = _session(*ox.tree_ensemble_nodes(trees, ox.INPUT_NAME, ox.OUTPUT_NAME, average=False, prefix="l_",
                                            float32_inputs=False))
    probes = np.vstack([xe, _threshold_probes(trees)])
    diff = np.abs(_run(sess, probes) - booster.predict(probes))
    assert diff.max() < 1e-5  # float32 output rounding only; float32 thresholds would give ~1e-1


def test_extra_trees_graph_matches_sklearn_including_at_thresholds(data):
    from sklearn.ensemble import ExtraTreesRegressor

    xt, yt, xe, _ = data
    ert = ExtraTreesRegressor(n_estimators=20, min_samples_leaf=5, random_state=0).fit(xt, yt)
    trees = ox.sklearn_trees(ert)
    sess = _session(*ox.tree_ensemble_nodes(trees, ox.INPUT_NAME, ox.OUTPUT_NAME, average=True, prefix="e_",
                                            float32_inputs=True))
    probes = np.vstack([xe, _threshold_probes(trees)])
    assert np.abs(_run(sess, probes) - ert.predict(probes)).max() < 1e-5


@pytest.mark.parametrize("p", [1, 2])
def test_knn_graph_finds_the_same_neighbours(data, p):
    """The k-d-cell graph is exact: inside the domain, far outside it (brute-force fallback), for
    repeated rows, single rows and an empty batch."""
    from sklearn.neighbors import KNeighborsRegressor

    xt, yt, xe, _ = data
    model = KNeighborsRegressor(n_neighbors=29, p=p).fit(xt, yt)
    nodes, inits = knn_onnx.knn_nodes(xt, yt, 29, p, ox.INPUT_NAME, ox.OUTPUT_NAME, "k_")
    assert any(n.op_type == "Loop" for n in nodes) and len(xt) >= knn_onnx.MIN_ROWS_FOR_PARTITION
    sess = _session(nodes, inits)
    probes = np.vstack([xe, 6 * xe[:50], xe[:50] + 40.0, np.repeat(xe[:1], 300, axis=0)])
    assert np.abs(_run(sess, probes) - model.predict(probes)).max() < 1e-12
    assert np.abs(_run(sess, xe[:1]) - model.predict(xe[:1])).max() < 1e-12
    assert _run(sess, np.zeros((0, 5))).shape == (0,)


@pytest.mark.parametrize("p", [1, 2])
def test_knn_float32_prefilter_is_exact_or_falls_back(data, p):
    """Features far from zero make float32 distances coarse: the short list's error bound then
    sends queries to the brute-force fallback instead of answering them wrongly."""
    from onnx import TensorProto, helper
    from sklearn.neighbors import KNeighborsRegressor

    xt, yt, xe, _ = data
    for shift, fallback in ((0.0, False), (1e5 if p == 1 else 1e3, True)):
        xs, qs = xt + shift, xe + shift
        nodes, inits = knn_onnx.knn_nodes(xs, yt, 29, p, ox.INPUT_NAME, ox.OUTPUT_NAME, "k_", prefilter=True)
        model = ox.make_model(nodes, inits, "test")
        # the cell search's (prediction, settled) pairs, before the fallback
        model.graph.output.append(helper.make_tensor_value_info("k_pred_ok_all", TensorProto.DOUBLE, [None, 2]))
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got, pred_ok = sess.run(None, {ox.INPUT_NAME: qs})
        got, ok = got.ravel(), pred_ok[:, 1]
        assert np.abs(got - KNeighborsRegressor(n_neighbors=29, p=p).fit(xs, yt).predict(qs)).max() < 1e-9
        assert (ok.mean() < 0.5) if fallback else (ok.mean() > 0.95)


def test_knn_partition_covers_every_row_once(data):
    xt, _, _, _ = data
    part = knn_onnx.build_partition(xt, cell_size=32, block_size=8)
    rows = np.concatenate(part.blocks)
    assert np.array_equal(np.sort(rows), np.arange(len(xt)))
    assert max(len(b) for b in part.blocks) <= 8
    assert sorted(np.concatenate(part.cell_blocks).tolist()) == list(range(len(part.blocks)))
    for c, blocks in enumerate(part.cell_blocks):  # every row lies in its cell's box
        pts = xt[np.concatenate([part.blocks[b] for b in blocks])]
        assert np.all(pts >= part.cell_lo[c]) and np.all(pts <= part.cell_hi[c])


def test_knn_small_training_set_is_brute_force(data):
    from sklearn.neighbors import KNeighborsRegressor

    xt, yt, xe, _ = data
    nodes, inits = knn_onnx.knn_nodes(xt[:500], yt[:500], 7, 1, ox.INPUT_NAME, ox.OUTPUT_NAME, "k_")
    got = _run(_session(nodes, inits), xe)
    assert np.abs(got - KNeighborsRegressor(n_neighbors=7, p=1).fit(xt[:500], yt[:500]).predict(xe)).max() < 1e-12


def test_knn_rejects_bad_arguments(data):
    xt, yt, _, _ = data
    with pytest.raises(ValueError, match="p=1"):
        knn_onnx.knn_nodes(xt, yt, 5, 3, "a", "b", "k_")
    with pytest.raises(ValueError, match="only 10 training rows"):
        knn_onnx.knn_nodes(xt[:10], yt[:10], 29, 2, "a", "b", "k_")


def test_forest_split_into_several_operators_matches_one(data):
    from sklearn.ensemble import ExtraTreesRegressor

    xt, yt, xe, _ = data
    ert = ExtraTreesRegressor(n_estimators=12, min_samples_leaf=3, random_state=1).fit(xt, yt)
    trees = ox.sklearn_trees(ert)
    nodes, inits = ox.tree_ensemble_nodes(trees, ox.INPUT_NAME, ox.OUTPUT_NAME, average=True, prefix="e_",
                                          float32_inputs=True, max_nodes=3 * len(trees[0].left))
    assert sum(n.op_type == "TreeEnsembleRegressor" for n in nodes) > 2
    assert np.abs(_run(_session(nodes, inits), xe) - ert.predict(xe)).max() < 1e-5


def test_mlp_scaler_and_stack_graph(data):
    _, _, xe, _ = data
    rng = np.random.default_rng(2)
    weights = [(rng.standard_normal((5, 8)), rng.standard_normal(8)), (rng.standard_normal((8, 1)), rng.standard_normal(1))]
    mean, scale = rng.standard_normal(5), rng.random(5) + 0.5
    nodes, inits = ox.scaler_nodes(mean, scale, ox.INPUT_NAME, "s")
    n2, i2 = ox.mlp_nodes(weights, "s", "nn_out", "nn_")
    n3, i3 = ox.linear_nodes(np.array([2.0, -1.0]), 0.5, ["nn_out", "nn_out"], ox.OUTPUT_NAME)
    sess = _session(nodes + n2 + n3, inits + i2 + i3)
    z = (xe - mean) / scale
    h = np.maximum(z @ weights[0][0] + weights[0][1], 0) @ weights[1][0] + weights[1][1]
    expected = 2.0 * h[:, 0] - 1.0 * h[:, 0] + 0.5
    np.testing.assert_allclose(_run(sess, xe), expected, rtol=1e-12, atol=1e-12)


def test_fidelity_check_refuses_a_wrong_graph(data):
    _, _, xe, _ = data
    nodes, inits = ox.linear_nodes(np.ones(5), 0.0, [ox.INPUT_NAME], ox.OUTPUT_NAME)
    data_bytes = ox.make_model(nodes, inits, "sum").SerializeToString()
    assert ox.check_fidelity(data_bytes, xe, xe.sum(1)) < 1e-12
    with pytest.raises(ox.FidelityError, match="differ by up to"):
        ox.check_fidelity(data_bytes, xe, xe.sum(1) + 1e-3)


# ----------------------------------------------------------------------------- one converter per learner


def _fitted_learner(kind, xt, yt, xv, yv):
    from training.estimators import LEARNERS

    if kind == "nn":
        pytest.importorskip("keras")
    params = {"ert": {"n_estimators": 20, "min_samples_leaf": 5, "random_state": 0},
              "knn": {"n_neighbors": 29, "p": 1},
              "lgbm": {"learning_rate": 0.1, "num_leaves": 63, "n_estimators": 200, "random_state": 0},
              "nn": {"hidden_layer_sizes": (32, 32), "max_epochs": 5, "batch_size": 128, "random_state": 0}}[kind]
    est = LEARNERS[kind](**params)
    return est.fit(xt, yt, eval_set=(xv, yv)) if kind in ("lgbm", "nn") else est.fit(xt, yt)


@pytest.mark.parametrize("kind", ["ert", "knn", "lgbm", "nn"])
def test_each_learners_converter_reproduces_it(data, kind):
    """``to_onnx`` finds the converter by the estimator's class; its graph passes the fidelity check
    against ``predict`` (trees also on split thresholds and one ulp either side, kNN far outside)."""
    from training.estimators import LEARNERS

    xt, yt, xe, ye = data
    est = _fitted_learner(kind, xt, yt, xe[:1000], ye[:1000])
    assert type(est) in ox.CONVERTERS and set(LEARNERS.values()) <= set(ox.CONVERTERS)
    nodes, inits = ox.to_onnx(est, ox.INPUT_NAME, ox.OUTPUT_NAME, f"{kind}_")
    graph = ox.make_model(nodes, inits, kind).SerializeToString()
    probes = xe
    if kind == "ert":
        probes = np.vstack([xe, _threshold_probes(ox.sklearn_trees(est.model_))])
    elif kind == "lgbm":
        probes = np.vstack([xe, _threshold_probes(ox.lightgbm_trees(est.booster_))])
    elif kind == "knn":
        probes = np.vstack([xe, 6 * xe[:50], xe[:50] + 40.0])
    tol = {"ert": 1e-5, "knn": 1e-12, "lgbm": 1e-5, "nn": 1e-4}[kind]  # nn: Keras predicts in float32
    assert ox.check_fidelity(graph, probes, est.predict(probes), tol=tol) <= tol


def test_to_onnx_refuses_what_it_cannot_write(data):
    from sklearn.linear_model import LinearRegression

    from training.estimators import KNNRegressor

    xt, yt, _, _ = data
    with pytest.raises(TypeError, match="no ONNX converter for LinearRegression"):
        ox.to_onnx(LinearRegression().fit(xt, yt), ox.INPUT_NAME, ox.OUTPUT_NAME, "x_")
    with pytest.raises(ValueError, match="weights='distance'"):
        ox.to_onnx(KNNRegressor(5, weights="distance").fit(xt, yt), ox.INPUT_NAME, ox.OUTPUT_NAME, "k_")


# ----------------------------------------------------------------------------- one kNN search for several targets


def _multi_target_session(nodes, inits, width):
    """A session whose output (``ox.OUTPUT_NAME``) is the [N, width] table of a several-target kNN search."""
    model = ox.make_model(nodes, inits, "multi")
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = width
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("rows", [4000, 300])  # the cell search with its fallback; brute force alone
def test_one_knn_search_serves_several_targets_with_their_own_k(data, p, rows):
    """Column t of ``[N, T]`` is scikit-learn's mean over the ``k[t]`` nearest rows, inside the domain,
    far outside it (the cell search fails its check: fallback) and for a single row."""
    from sklearn.neighbors import KNeighborsRegressor

    xt, yt, xe, _ = data
    x, ys = xt[:rows], np.column_stack([yt, np.cos(3 * xt[:, 3]), xt[:, 0] * xt[:, 4]])[:rows]
    probes = np.vstack([xe[:1500], 6 * xe[:40], xe[:40] - 30.0])
    for ks in ((29, 7, 50), 13):
        nodes, inits = knn_onnx.knn_nodes(x, ys, ks, p, ox.INPUT_NAME, ox.OUTPUT_NAME, "m_")
        assert sum(n.op_type == "Loop" for n in nodes) == (0 if rows < knn_onnx.MIN_ROWS_FOR_PARTITION else 1) + \
            (1 if p == 2 else 2)  # cell search (if any) + the fallback's slice loops
        sess = _multi_target_session(nodes, inits, 3)
        per_column = (ks,) * 3 if isinstance(ks, int) else ks
        want = np.column_stack([KNeighborsRegressor(n_neighbors=k, p=p).fit(x, ys[:, j]).predict(probes)
                                for j, k in enumerate(per_column)])
        got = sess.run(None, {ox.INPUT_NAME: probes})[0]
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-12
        one = sess.run(None, {ox.INPUT_NAME: probes[-1:]})[0]
        assert np.abs(one - want[-1:]).max() <= 1e-12
        assert sess.run(None, {ox.INPUT_NAME: np.zeros((0, 5))})[0].shape == (0, 3)


def test_one_target_column_matches_the_single_target_graph(data):
    """``train_y`` [n, 1] gives the [N, 1] answer of the historical ``train_y`` [n] call."""
    xt, yt, xe, _ = data
    single = _session(*knn_onnx.knn_nodes(xt, yt, 29, 2, ox.INPUT_NAME, ox.OUTPUT_NAME, "k_"))
    column = _session(*knn_onnx.knn_nodes(xt, yt[:, None], [29], 2, ox.INPUT_NAME, ox.OUTPUT_NAME, "k_"))
    assert np.abs(_run(single, xe) - _run(column, xe)).max() <= 1e-12  # same neighbours; sums in another order


def test_knn_targets_reject_mismatched_k():
    y = np.zeros((10, 3))
    with pytest.raises(ValueError, match="2 values of k for 3 target"):
        knn_onnx.Targets.of(y, (3, 4))
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn_onnx.Targets.of(y, (3, 0, 2))
    assert knn_onnx.Targets.of(y, 4).ks == (4, 4, 4) and not knn_onnx.Targets.of(y, 4).ordered
