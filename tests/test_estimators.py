"""The learners are scikit-learn estimators, chosen on the validation set by one helper."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("lightgbm")

from sklearn.base import BaseEstimator, RegressorMixin, clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402

from training.estimators import (  # noqa: E402
    LEARNERS, MODEL_KINDS, PRESETS, TIE_TOLERANCE, ERTSpace, KNNRegressor, KNNSpace, LightGBMSpace, MLPSpace, Preset,
    pick, select_on_validation,
)

SMALL = {"ert": {"n_estimators": 5, "min_samples_leaf": 5}, "knn": {"n_neighbors": 7, "p": 1},
         "lgbm": {"n_estimators": 20, "num_leaves": 7, "early_stopping_rounds": 5},
         "nn": {"hidden_layer_sizes": (16,), "max_epochs": 20, "patience": 3, "batch_size": 32}}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((900, 5))
    y = x[:, 0] + 0.5 * x[:, 1] ** 2 + 0.1 * rng.standard_normal(900)
    return x[:600], y[:600], x[600:], y[600:]


def _learner(kind: str):
    if kind == "nn":
        pytest.importorskip("keras")
    return LEARNERS[kind](**SMALL[kind], **({"random_state": 0} if kind != "knn" else {}))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_learner_has_get_params_set_params_and_clone(kind, data):
    xt, yt, xv, yv = data
    est = _learner(kind)
    assert est.kind == kind
    params = est.get_params()
    assert {k: params[k] for k in SMALL[kind]} == SMALL[kind]
    twin = clone(est)
    assert twin is not est and twin.get_params() == params
    assert clone(est).set_params(**params).get_params() == params
    with pytest.raises(NotFittedError):
        est.predict(xv)
    kwargs = {"eval_set": (xv, yv)} if kind in ("lgbm", "nn") else {}
    assert est.fit(xt, yt, **kwargs) is est
    pred = est.predict(xv)
    assert pred.shape == (len(xv),) and pred.dtype == np.float64 and np.all(np.isfinite(pred))
    assert est.score(xv, yv) > 0.2  # RegressorMixin: R^2
    assert est.n_features_in_ == 5 and est.hyperparameters() and est.search_row(0.1)["val_mse"] == 0.1
    fresh = clone(est)  # a clone is unfitted: learned attributes stay behind
    assert not [a for a in vars(fresh) if a.endswith("_")]
    assert fresh.get_params() == params


def test_every_preset_space_yields_its_learner_cheapest_first():
    for preset in PRESETS.values():
        assert tuple(preset.spaces) == MODEL_KINDS
        for kind, space in preset.spaces.items():
            cands = space.candidates(seed=7)
            assert cands and all(type(c) is LEARNERS[kind] for c in cands)
            assert all(clone(c).get_params() == c.get_params() for c in cands)
    paper = PRESETS["paper"]
    assert [c.min_samples_leaf for c in paper.ert.candidates(0)] == [40, 20, 10]  # larger leaves first
    assert [(c.p, c.n_neighbors) for c in paper.knn.candidates(0)] == [(2, 15), (2, 29), (2, 50),
                                                                         (1, 15), (1, 29), (1, 50)]
    assert [(c.num_leaves, c.min_child_samples) for c in paper.lgbm.candidates(0)] == [(31, 20), (31, 50),
                                                                                        (63, 20), (63, 50)]
    assert [c.hidden_layer_sizes for c in paper.nn.candidates(0)] == [(32, 32), (64, 64)]
    assert all(c.random_state == 0 for c in paper.lgbm.candidates(0))


def test_presets_keep_the_documented_values():
    assert PRESETS["fast"] == Preset(
        "fast", ert=ERTSpace(40, (10,)), knn=KNNSpace((29,), (2,)),
        lgbm=LightGBMSpace(0.1, (31,), (40,), n_estimators=300, early_stopping_rounds=30),
        nn=MLPSpace(((32, 32),), max_epochs=25, patience=5, batch_size=1024), importance_rows=5_000)
    assert PRESETS["paper"] == Preset(
        "paper", ert=ERTSpace(100, (10, 20, 40), max_features=1.0), knn=KNNSpace((15, 29, 50), (1, 2)),
        lgbm=LightGBMSpace(0.05, (31, 63), (20, 50), n_estimators=2000, early_stopping_rounds=50),
        nn=MLPSpace(((32, 32), (64, 64)), max_epochs=200, patience=15, batch_size=512, learning_rate=1e-3),
        importance_rows=20_000, importance_repeats=5)


class _Constant(RegressorMixin, BaseEstimator):
    """Predicts ``value``; remembers whether it saw a validation set."""

    def __init__(self, value: float = 0.0):
        self.value = value

    def fit(self, X, y, eval_set=None):
        self.saw_eval_set_ = eval_set is not None
        return self

    def predict(self, X):
        return np.full(len(X), self.value)


def test_select_on_validation_breaks_ties_toward_the_cheaper_candidate():
    x, y = np.zeros((10, 1)), np.zeros(10)
    # validation MSEs 0.0100, 0.009990 (0.1 % better: a tie) and 0.01 again
    cands = [_Constant(0.1), _Constant(0.09995), _Constant(-0.1)]
    messages = []
    sel = select_on_validation(cands, x, y, x, y, progress=messages.append)
    assert sel.estimator.value == 0.1 and sel.estimator is not cands[0]  # a fitted clone of the first
    assert [r["value"] for r in sel.search] == [0.1, 0.09995, -0.1]
    assert sel.search[0]["val_mse"] == pytest.approx(0.01) and sel.search[1]["val_mse"] < sel.search[0]["val_mse"]
    assert sel.estimator.saw_eval_set_ and len(messages) == 3 and "val MSE 0.01000" in messages[0]
    assert not hasattr(cands[0], "saw_eval_set_")  # the candidates themselves are left unfitted
    # no tolerance: the strictly better one; outside the tolerance: the better one however late
    assert select_on_validation(cands, x, y, x, y, tie_tolerance=0.0).estimator.value == 0.09995
    assert select_on_validation([_Constant(0.1), _Constant(0.05)], x, y, x, y).estimator.value == 0.05
    assert pick([1.0, 1.0 - TIE_TOLERANCE / 2, 0.5]) == 2 and pick([1.0, 1 / (1 + TIE_TOLERANCE)]) == 0
    with pytest.raises(ValueError, match="at least one candidate"):
        select_on_validation([], x, y, x, y)


def test_select_on_validation_records_each_learners_search_table(data):
    xt, yt, xv, yv = data
    sel = select_on_validation(KNNSpace(n_neighbors=(3, 25), p=(1, 2)).candidates(0), xt, yt, xv, yv)
    assert [(r["p"], r["k"]) for r in sel.search] == [(2, 3), (2, 25), (1, 3), (1, 25)]
    best = min(r["val_mse"] for r in sel.search)
    chosen = next(r for r in sel.search if r["val_mse"] <= best * (1 + TIE_TOLERANCE))
    assert isinstance(sel.estimator, KNNRegressor)
    assert (sel.estimator.p, sel.estimator.n_neighbors) == (chosen["p"], chosen["k"])
    assert sel.estimator.hyperparameters() == {"n_neighbors": chosen["k"], "p": chosen["p"], "weights": "uniform"}
    assert sel.fit_seconds > 0


def test_lightgbm_learner_stops_early_on_the_eval_set_and_keeps_only_those_trees(data):
    xt, yt, xv, yv = data
    est = LEARNERS["lgbm"](learning_rate=0.3, num_leaves=31, n_estimators=500, early_stopping_rounds=5,
                           random_state=0).fit(xt, yt, eval_set=(xv, yv))
    assert est.n_trees_ < 500 and est.booster_.num_trees() == est.n_trees_
    assert est.hyperparameters()["n_estimators"] == est.n_trees_
    assert LEARNERS["lgbm"](n_estimators=30).fit(xt, yt).n_trees_ == 30  # no eval set: every round
