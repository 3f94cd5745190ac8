"""The four regressors of the paper as scikit-learn estimators, each chosen on the validation set.

Every learner is a scikit-learn-compatible estimator (``get_params``/``set_params``/``clone``;
``fit(X, y) -> self``; learned attributes end in ``_``; ``predict``) fitted on standardized features
(StandardScaler fitted on the training set), with its search space declared next to it.  A search
space lists candidates cheapest first; ``select_on_validation`` fits them all and keeps the best on
the validation set.  Each learner is written as ONNX by its converter in ``training.onnx_export``
(``to_onnx``), so a new kind is one estimator class, one space and one converter.  Presets:

``fast``  small, for tests and the README demo: a handful of candidates, few trees/epochs;
``paper`` full runs, starting from the authors' published choices (kNN k=29 Manhattan uniform;
          NN 5-32-32-1 ReLU) and searching around them:

========  ==========================================================================================
model     paper-preset search (validation MSE; ties within 0.2 % go to the smaller/faster model)
========  ==========================================================================================
ERT       100 trees, min_samples_leaf in {40, 20, 10} (larger leaves first: a 5-row-leaf forest on
          84k rows is a ~250 MB graph), max_features 1.0
kNN       k in {15, 29, 50}, p in {2, 1}, uniform weights
LightGBM  learning rate 0.05, num_leaves in {31, 63}, min_child_samples in {20, 50};
          up to 2000 trees with early stopping (50 rounds) on the validation set
NN        5-32-32-1 and 5-64-64-1 ReLU on the standardized target, Adam 1e-3, batch 512, MSE, up to
          200 epochs, early stopping on validation (patience 15, best weights restored)
========  ==========================================================================================
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.validation import check_is_fitted, has_fit_parameter

Progress = Callable[[str], None]
TIE_TOLERANCE = 0.002  # relative validation-MSE margin within which the cheaper candidate wins


def _threads() -> int:
    return int(os.environ.get("GALAXYPAINT_THREADS", os.cpu_count() or 1))


class Learner(RegressorMixin, BaseEstimator):
    """What the pipeline needs of a learner besides ``fit``/``predict``: its record in the registry."""

    kind: ClassVar[str]
    #: rows per onnxruntime call that the exported graph is checked and served with
    max_batch_rows: ClassVar[int] = 65536

    def hyperparameters(self) -> dict[str, Any]:
        """The fitted model's hyperparameters as registered (after ``fit``)."""
        raise NotImplementedError

    def search_row(self, val_mse: float) -> dict[str, Any]:
        """This candidate's row of the validation search table (after ``fit``)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short label for progress messages (after ``fit``)."""
        return type(self).__name__


class Space:
    """A learner's search space: ``candidates(seed)`` are unfitted estimators, cheapest first."""

    learner: ClassVar[type[Learner]]

    def candidates(self, seed: int) -> list[Learner]:
        raise NotImplementedError


# ----------------------------------------------------------------------------- extremely randomized trees


class ERTRegressor(Learner):
    """scikit-learn's ``ExtraTreesRegressor``; its ONNX graph rounds inputs through float32 as it does."""

    kind = "ert"

    def __init__(self, n_estimators: int = 100, min_samples_leaf: int = 10, max_features: float = 1.0,
                 random_state: int | None = None, n_jobs: int | None = None):
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X, y) -> ERTRegressor:
        from sklearn.ensemble import ExtraTreesRegressor

        self.model_ = ExtraTreesRegressor(n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf,
                                          max_features=self.max_features, random_state=self.random_state,
                                          n_jobs=_threads() if self.n_jobs is None else self.n_jobs).fit(X, y)
        self.n_features_in_ = self.model_.n_features_in_
        self.n_nodes_ = int(sum(e.tree_.node_count for e in self.model_.estimators_))
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self.model_.predict(X)

    def hyperparameters(self) -> dict[str, Any]:
        return {"n_estimators": self.n_estimators, "min_samples_leaf": self.min_samples_leaf,
                "max_features": self.max_features}

    def search_row(self, val_mse: float) -> dict[str, Any]:
        return {"min_samples_leaf": self.min_samples_leaf, "val_mse": val_mse, "n_nodes": self.n_nodes_}

    def describe(self) -> str:
        return f"ERT min_samples_leaf={self.min_samples_leaf}"


@dataclass(frozen=True)
class ERTSpace(Space):
    n_estimators: int
    min_samples_leaf: tuple[int, ...]
    max_features: float = 1.0
    learner: ClassVar[type[Learner]] = ERTRegressor

    def candidates(self, seed: int) -> list[Learner]:
        # larger leaves first: smaller graphs win ties
        return [ERTRegressor(self.n_estimators, leaf, self.max_features, random_state=seed)
                for leaf in sorted(self.min_samples_leaf, reverse=True)]


# ----------------------------------------------------------------------------- k nearest neighbours


class KNNRegressor(Learner):
    """scikit-learn's ``KNeighborsRegressor`` (Minkowski p = 1 or 2); keeps its training set for the graph."""

    kind = "knn"

    def __init__(self, n_neighbors: int = 29, p: int = 2, weights: str = "uniform", n_jobs: int | None = None):
        self.n_neighbors = n_neighbors
        self.p = p
        self.weights = weights
        self.n_jobs = n_jobs

    def fit(self, X, y) -> KNNRegressor:
        from sklearn.neighbors import KNeighborsRegressor

        self.model_ = KNeighborsRegressor(n_neighbors=self.n_neighbors, p=self.p, weights=self.weights,
                                          n_jobs=_threads() if self.n_jobs is None else self.n_jobs).fit(X, y)
        self.n_features_in_ = self.model_.n_features_in_
        # the exported graph searches these rows itself
        self.X_fit_, self.y_fit_ = np.array(X, dtype=np.float64), np.array(y, dtype=np.float64)
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self.model_.predict(X)

    def hyperparameters(self) -> dict[str, Any]:
        return {"n_neighbors": self.n_neighbors, "p": self.p, "weights": self.weights}

    def search_row(self, val_mse: float) -> dict[str, Any]:
        return {"k": self.n_neighbors, "p": self.p, "val_mse": val_mse}

    def describe(self) -> str:
        return f"kNN k={self.n_neighbors} p={self.p}"


@dataclass(frozen=True)
class KNNSpace(Space):
    n_neighbors: tuple[int, ...]
    p: tuple[int, ...]
    learner: ClassVar[type[Learner]] = KNNRegressor

    def candidates(self, seed: int) -> list[Learner]:
        # p=2 first: its ONNX graph is the faster one
        return [KNNRegressor(k, p) for p in sorted(self.p, reverse=True) for k in self.n_neighbors]


# ----------------------------------------------------------------------------- gradient-boosted trees


class LightGBMRegressor(Learner):
    """``lightgbm.train`` on the squared error; with ``eval_set`` it stops early on that set and keeps
    only the trees early stopping chose (so that native and ONNX see the same model)."""

    kind = "lgbm"

    def __init__(self, learning_rate: float = 0.05, num_leaves: int = 31, min_child_samples: int = 20,
                 n_estimators: int = 2000, early_stopping_rounds: int = 50, random_state: int | None = None,
                 n_jobs: int | None = None):
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.n_estimators = n_estimators
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X, y, eval_set: tuple[np.ndarray, np.ndarray] | None = None) -> LightGBMRegressor:
        import lightgbm as lgb

        params = {"objective": "regression", "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
                  "min_child_samples": self.min_child_samples,
                  **({"seed": self.random_state} if self.random_state is not None else {}),
                  "deterministic": True, "force_row_wise": True,
                  "num_threads": _threads() if self.n_jobs is None else self.n_jobs, "verbosity": -1}
        dtrain = lgb.Dataset(X, y, free_raw_data=False)
        kwargs: dict[str, Any] = {}
        if eval_set is not None:
            kwargs = {"valid_sets": [lgb.Dataset(eval_set[0], eval_set[1], reference=dtrain)],
                      "callbacks": [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]}
        booster = lgb.train(params, dtrain, num_boost_round=self.n_estimators, **kwargs)
        self.n_trees_ = booster.best_iteration or booster.current_iteration()
        self.booster_ = lgb.Booster(model_str=booster.model_to_string(num_iteration=self.n_trees_))
        self.n_features_in_ = self.booster_.num_feature()
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self.booster_.predict(X)

    def hyperparameters(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
                "min_child_samples": self.min_child_samples, "n_estimators": self.n_trees_}

    def search_row(self, val_mse: float) -> dict[str, Any]:
        return {"num_leaves": self.num_leaves, "min_child_samples": self.min_child_samples, "n_trees": self.n_trees_,
                "val_mse": val_mse}

    def describe(self) -> str:
        return f"LightGBM leaves={self.num_leaves} min_child={self.min_child_samples} ({self.n_trees_} trees)"


@dataclass(frozen=True)
class LightGBMSpace(Space):
    learning_rate: float
    num_leaves: tuple[int, ...]
    min_child_samples: tuple[int, ...]
    n_estimators: int  # the most trees; early stopping on the validation set chooses fewer
    early_stopping_rounds: int
    learner: ClassVar[type[Learner]] = LightGBMRegressor

    def candidates(self, seed: int) -> list[Learner]:
        return [LightGBMRegressor(self.learning_rate, leaves, mcs, self.n_estimators, self.early_stopping_rounds,
                                  random_state=seed)
                for leaves in self.num_leaves for mcs in self.min_child_samples]


# ----------------------------------------------------------------------------- neural network


class KerasMLPRegressor(Learner):
    """A Keras ReLU net (Adam, MSE) trained on the standardized target; the de-standardization is folded
    into the last layer, so ``predict`` and the exported graph answer in target units.  With
    ``eval_set`` it stops early on that set (best weights restored).  ``predict`` is Keras's own
    float32 prediction, the reference the (float64) ONNX graph is checked against."""

    kind = "nn"
    activation: ClassVar[str] = "relu"

    def __init__(self, hidden_layer_sizes: tuple[int, ...] = (32, 32), learning_rate: float = 1e-3,
                 batch_size: int = 512, max_epochs: int = 200, patience: int = 15, random_state: int | None = None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.random_state = random_state

    def fit(self, X, y, eval_set: tuple[np.ndarray, np.ndarray] | None = None,
            progress: Progress | None = None) -> KerasMLPRegressor:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras

        X, y = np.asarray(X), np.asarray(y)
        layers = tuple(self.hidden_layer_sizes)
        name = "-".join(map(str, layers))
        y_mu, y_sd = float(np.mean(y)), float(np.std(y)) or 1.0
        # at least ~50 optimizer steps per epoch on small tables
        self.batch_size_ = int(min(self.batch_size, max(32, len(X) // 50)))
        if self.random_state is not None:
            keras.utils.set_random_seed(self.random_state)
        model = keras.Sequential([keras.Input(shape=(X.shape[1],)),
                                  *[keras.layers.Dense(u, activation=self.activation) for u in layers],
                                  keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate), loss="mse")
        callbacks: list[Any] = []
        validation = None
        if eval_set is not None:
            xv, yv = np.asarray(eval_set[0]), np.asarray(eval_set[1])
            validation = (xv.astype(np.float32), ((yv - y_mu) / y_sd).astype(np.float32))
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.patience,
                                                           restore_best_weights=True))
        if progress is not None:
            max_epochs = self.max_epochs

            class _Epochs(keras.callbacks.Callback):
                def on_epoch_end(self, epoch, logs=None):
                    if epoch % 10 == 0 or epoch + 1 == max_epochs:
                        val = f" val {logs['val_loss']:.5f}" if "val_loss" in logs else ""
                        progress(f"NN {name} epoch {epoch + 1}: loss {logs['loss']:.5f}{val}")

            callbacks.append(_Epochs())
        hist = model.fit(X.astype(np.float32), ((y - y_mu) / y_sd).astype(np.float32), validation_data=validation,
                         epochs=self.max_epochs, batch_size=self.batch_size_, shuffle=True, verbose=0,
                         callbacks=callbacks)
        last = model.layers[-1]
        w_last, b_last = last.get_weights()
        last.set_weights([w_last * np.float32(y_sd), b_last * np.float32(y_sd) + np.float32(y_mu)])
        self.model_ = model
        self.weights_ = [(layer.get_weights()[0].astype(np.float64), layer.get_weights()[1].astype(np.float64))
                         for layer in model.layers]
        self.n_epochs_ = len(hist.history["loss"])
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self.model_.predict(np.asarray(X, dtype=np.float32), batch_size=16384,
                                   verbose=0)[:, 0].astype(np.float64)

    def hyperparameters(self) -> dict[str, Any]:
        return {"layers": list(self.hidden_layer_sizes), "activation": self.activation, "optimizer": "adam",
                "lr": self.learning_rate, "batch_size": self.batch_size_, "epochs": self.n_epochs_}

    def search_row(self, val_mse: float) -> dict[str, Any]:
        return {"layers": list(self.hidden_layer_sizes), "epochs": self.n_epochs_, "val_mse": val_mse}

    def describe(self) -> str:
        return f"NN {'-'.join(map(str, self.hidden_layer_sizes))} ({self.n_epochs_} epochs)"


@dataclass(frozen=True)
class MLPSpace(Space):
    hidden_layer_sizes: tuple[tuple[int, ...], ...]
    max_epochs: int
    patience: int
    batch_size: int = 256
    learning_rate: float = 1e-3
    learner: ClassVar[type[Learner]] = KerasMLPRegressor

    def candidates(self, seed: int) -> list[Learner]:
        return [KerasMLPRegressor(layers, self.learning_rate, self.batch_size, self.max_epochs, self.patience,
                                  random_state=seed)
                for layers in self.hidden_layer_sizes]


# ----------------------------------------------------------------------------- search and presets


LEARNERS: dict[str, type[Learner]] = {cls.kind: cls for cls in (ERTRegressor, KNNRegressor, LightGBMRegressor,
                                                                 KerasMLPRegressor)}
MODEL_KINDS: tuple[str, ...] = tuple(LEARNERS)


@dataclass
class Selection:
    """The candidate ``select_on_validation`` kept, fitted, with the whole search table."""

    estimator: Any
    search: list[dict[str, Any]] = field(default_factory=list)
    fit_seconds: float = 0.0


def pick(val_mse: Sequence[float], tie_tolerance: float = TIE_TOLERANCE) -> int:
    """Index of the best validation MSE; within ``tie_tolerance`` (relative) the earlier candidate wins."""
    best = min(val_mse)
    return next(i for i, v in enumerate(val_mse) if v <= best * (1 + tie_tolerance))


def select_on_validation(candidates: Sequence[Any], X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray,
                         tie_tolerance: float = TIE_TOLERANCE, progress: Progress | None = None) -> Selection:
    """Fit a clone of every candidate (cheapest first) on (X, y) and keep the best validation MSE on
    (Xv, yv); ties within ``tie_tolerance`` go to the earlier, cheaper candidate.

    Estimators whose ``fit`` takes ``eval_set`` (early stopping) get ``(Xv, yv)``; those taking
    ``progress`` get the progress callback.  Search rows come from ``search_row`` where the
    estimator has one, else from its parameters.
    """
    if not candidates:
        raise ValueError("select_on_validation needs at least one candidate")
    say = progress or (lambda m: None)
    t0 = time.perf_counter()
    fitted, rows, scores = [], [], []
    for candidate in candidates:
        est = clone(candidate)
        kwargs: dict[str, Any] = {}
        if has_fit_parameter(est, "eval_set"):
            kwargs["eval_set"] = (Xv, yv)
        if has_fit_parameter(est, "progress"):
            kwargs["progress"] = say
        est.fit(X, y, **kwargs)
        val_mse = float(np.mean((est.predict(Xv) - yv) ** 2))
        rows.append(est.search_row(val_mse) if hasattr(est, "search_row") else {**est.get_params(), "val_mse": val_mse})
        scores.append(val_mse)
        fitted.append(est)
        label = est.describe() if hasattr(est, "describe") else type(est).__name__
        say(f"{label}: val MSE {val_mse:.5f}")
    return Selection(fitted[pick(scores, tie_tolerance)], rows, time.perf_counter() - t0)


@dataclass(frozen=True)
class Preset:
    """A search space per learner, plus the permutation-importance budget."""

    name: str
    ert: ERTSpace
    knn: KNNSpace
    lgbm: LightGBMSpace
    nn: MLPSpace
    importance_rows: int = 20_000
    importance_repeats: int = 5

    @property
    def spaces(self) -> dict[str, Space]:
        return {s.learner.kind: s for s in (self.ert, self.knn, self.lgbm, self.nn)}


PRESETS: dict[str, Preset] = {
    "fast": Preset("fast", ert=ERTSpace(n_estimators=40, min_samples_leaf=(10,)),
                   knn=KNNSpace(n_neighbors=(29,), p=(2,)),
                   lgbm=LightGBMSpace(learning_rate=0.1, num_leaves=(31,), min_child_samples=(40,), n_estimators=300,
                                      early_stopping_rounds=30),
                   nn=MLPSpace(hidden_layer_sizes=((32, 32),), max_epochs=25, patience=5, batch_size=1024),
                   importance_rows=5_000),
    "paper": Preset("paper", ert=ERTSpace(n_estimators=100, min_samples_leaf=(10, 20, 40)),
                    knn=KNNSpace(n_neighbors=(15, 29, 50), p=(1, 2)),
                    lgbm=LightGBMSpace(learning_rate=0.05, num_leaves=(31, 63), min_child_samples=(20, 50),
                                       n_estimators=2000, early_stopping_rounds=50),
                    nn=MLPSpace(hidden_layer_sizes=((32, 32), (64, 64)), max_epochs=200, patience=15, batch_size=512)),
}


def fit_learner(kind: str, preset: Preset, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray, seed: int,
                progress: Progress | None = None) -> Selection:
    """The preset's candidates for ``kind``, chosen on the validation set."""
    return select_on_validation(preset.spaces[kind].candidates(seed), X, y, Xv, yv, progress=progress)
