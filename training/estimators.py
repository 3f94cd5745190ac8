"""The four regressors of the paper, each chosen on the validation set by a bounded search.

Every model is fitted on standardized features (StandardScaler fitted on the training set) and
knows how to write itself as ONNX nodes (``onnx(inp, out, prefix)``) that reproduce its
predictions.  Presets:

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training import knn_onnx, onnx_export as ox

Progress = Callable[[str], None]
TIE_TOLERANCE = 0.002  # relative validation-MSE margin within which the cheaper candidate wins


@dataclass
class Preset:
    name: str
    ert_trees: int
    ert_leaf: tuple[int, ...]
    knn_k: tuple[int, ...]
    knn_p: tuple[int, ...]
    lgbm_lr: float
    lgbm_leaves: tuple[int, ...]
    lgbm_min_child: tuple[int, ...]
    lgbm_max_trees: int
    lgbm_patience: int
    nn_layers: tuple[tuple[int, ...], ...]
    nn_epochs: int
    nn_patience: int
    nn_batch: int = 256
    importance_rows: int = 20_000
    importance_repeats: int = 5


PRESETS: dict[str, Preset] = {
    "fast": Preset("fast", ert_trees=40, ert_leaf=(10,), knn_k=(29,), knn_p=(2,), lgbm_lr=0.1,
                   lgbm_leaves=(31,), lgbm_min_child=(40,), lgbm_max_trees=300, lgbm_patience=30,
                   nn_layers=((32, 32),), nn_epochs=25, nn_patience=5, nn_batch=1024, importance_rows=5_000),
    "paper": Preset("paper", ert_trees=100, ert_leaf=(10, 20, 40), knn_k=(15, 29, 50), knn_p=(1, 2),
                    lgbm_lr=0.05, lgbm_leaves=(31, 63), lgbm_min_child=(20, 50), lgbm_max_trees=2000,
                    lgbm_patience=50, nn_layers=((32, 32), (64, 64)), nn_epochs=200, nn_patience=15,
                    nn_batch=512),
}


@dataclass
class Fitted:
    """A fitted model: native prediction on scaled features, hyperparameters, ONNX writer."""

    kind: str
    params: dict[str, Any]
    predict: Callable[[np.ndarray], np.ndarray]
    onnx: Callable[[str, str, str], tuple[list, list]]
    search: list[dict[str, Any]] = field(default_factory=list)
    fit_seconds: float = 0.0
    max_batch_rows: int = 65536


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a - b) ** 2))


def _pick(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Best validation MSE; within TIE_TOLERANCE prefer the earlier (cheaper) candidate."""
    best = min(r["val_mse"] for r in results)
    return next(r for r in results if r["val_mse"] <= best * (1 + TIE_TOLERANCE))


def fit_ert(xt, yt, xv, yv, preset: Preset, seed: int, progress: Progress) -> Fitted:
    from sklearn.ensemble import ExtraTreesRegressor

    t0 = time.perf_counter()
    results = []
    models = {}
    # larger leaves first: smaller graphs win ties
    for leaf in sorted(preset.ert_leaf, reverse=True):
        m = ExtraTreesRegressor(n_estimators=preset.ert_trees, min_samples_leaf=leaf, max_features=1.0,
                                n_jobs=_threads(), random_state=seed).fit(xt, yt)
        results.append({"min_samples_leaf": leaf, "val_mse": _mse(m.predict(xv), yv),
                        "n_nodes": int(sum(e.tree_.node_count for e in m.estimators_))})
        models[leaf] = m
        progress(f"ERT min_samples_leaf={leaf}: val MSE {results[-1]['val_mse']:.5f}")
    best = _pick(results)
    model = models[best["min_samples_leaf"]]
    trees = ox.sklearn_trees(model)
    return Fitted("ert", {"n_estimators": preset.ert_trees, "min_samples_leaf": best["min_samples_leaf"],
                          "max_features": 1.0}, model.predict,
                  lambda inp, out, prefix: ox.tree_ensemble_nodes(trees, inp, out, average=True, prefix=prefix,
                                                                  float32_inputs=True),
                  results, time.perf_counter() - t0)


def fit_knn(xt, yt, xv, yv, preset: Preset, seed: int, progress: Progress) -> Fitted:
    from sklearn.neighbors import KNeighborsRegressor

    t0 = time.perf_counter()
    results = []
    models = {}
    for p in sorted(preset.knn_p, reverse=True):  # p=2 first: its ONNX graph is the faster one
        for k in preset.knn_k:
            m = KNeighborsRegressor(n_neighbors=k, p=p, weights="uniform", n_jobs=_threads()).fit(xt, yt)
            models[(k, p)] = m
            results.append({"k": k, "p": p, "val_mse": _mse(m.predict(xv), yv)})
            progress(f"kNN k={k} p={p}: val MSE {results[-1]['val_mse']:.5f}")
    best = _pick(results)
    k, p = best["k"], best["p"]
    model = models[(k, p)]
    xt_c, yt_c = np.array(xt, dtype=np.float64), np.array(yt, dtype=np.float64)
    return Fitted("knn", {"n_neighbors": k, "p": p, "weights": "uniform"}, model.predict,
                  lambda inp, out, prefix: knn_onnx.knn_nodes(xt_c, yt_c, k, p, inp, out, prefix),
                  results, time.perf_counter() - t0)


def fit_lgbm(xt, yt, xv, yv, preset: Preset, seed: int, progress: Progress) -> Fitted:
    import lightgbm as lgb

    t0 = time.perf_counter()
    results = []
    boosters = {}
    dtrain = lgb.Dataset(xt, yt, free_raw_data=False)
    dval = lgb.Dataset(xv, yv, reference=dtrain)
    for leaves in preset.lgbm_leaves:
        for mcs in preset.lgbm_min_child:
            params = {"objective": "regression", "learning_rate": preset.lgbm_lr, "num_leaves": leaves,
                      "min_child_samples": mcs, "seed": seed, "deterministic": True, "force_row_wise": True,
                      "num_threads": _threads(), "verbosity": -1}
            booster = lgb.train(params, dtrain, num_boost_round=preset.lgbm_max_trees, valid_sets=[dval],
                                callbacks=[lgb.early_stopping(preset.lgbm_patience, verbose=False)])
            n_trees = booster.best_iteration or booster.current_iteration()
            key = (leaves, mcs)
            boosters[key] = (booster, n_trees)
            results.append({"num_leaves": leaves, "min_child_samples": mcs, "n_trees": n_trees,
                            "val_mse": _mse(booster.predict(xv, num_iteration=n_trees), yv)})
            progress(f"LightGBM leaves={leaves} min_child={mcs}: {n_trees} trees, "
                     f"val MSE {results[-1]['val_mse']:.5f}")
    best = _pick(results)
    booster, n_trees = boosters[(best["num_leaves"], best["min_child_samples"])]
    # keep only the trees early stopping chose, so that native and ONNX see the same model
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=n_trees))
    trees = ox.lightgbm_trees(booster)
    return Fitted("lgbm", {"learning_rate": preset.lgbm_lr, "num_leaves": best["num_leaves"],
                           "min_child_samples": best["min_child_samples"], "n_estimators": n_trees},
                  lambda x: booster.predict(x),
                  lambda inp, out, prefix: ox.tree_ensemble_nodes(trees, inp, out, average=False, prefix=prefix,
                                                                  float32_inputs=False),
                  results, time.perf_counter() - t0)


def fit_nn(xt, yt, xv, yv, preset: Preset, seed: int, progress: Progress) -> Fitted:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    t0 = time.perf_counter()
    results = []
    nets = {}
    # Train on the standardized target, then fold the de-standardization into the output layer.
    y_mu, y_sd = float(np.mean(yt)), float(np.std(yt)) or 1.0
    zt, zv = (yt - y_mu) / y_sd, (yv - y_mu) / y_sd
    # at least ~50 optimizer steps per epoch on small tables
    batch = int(min(preset.nn_batch, max(32, len(xt) // 50)))
    for layers in preset.nn_layers:
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input(shape=(xt.shape[1],)),
                                  *[keras.layers.Dense(u, activation="relu") for u in layers],
                                  keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=preset.nn_patience,
                                             restore_best_weights=True)

        class _Epochs(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch % 10 == 0 or epoch + 1 == preset.nn_epochs:
                    progress(f"NN {'-'.join(map(str, layers))} epoch {epoch + 1}: "
                             f"loss {logs['loss']:.5f} val {logs['val_loss']:.5f}")

        hist = model.fit(xt.astype(np.float32), zt.astype(np.float32), validation_data=(xv.astype(np.float32),
                         zv.astype(np.float32)), epochs=preset.nn_epochs, batch_size=batch,
                         shuffle=True, verbose=0, callbacks=[stop, _Epochs()])
        last = model.layers[-1]
        w_last, b_last = last.get_weights()
        last.set_weights([w_last * np.float32(y_sd), b_last * np.float32(y_sd) + np.float32(y_mu)])
        weights = [(layer.get_weights()[0].astype(np.float64), layer.get_weights()[1].astype(np.float64))
                   for layer in model.layers]
        nets[layers] = (model, weights)
        results.append({"layers": list(layers), "epochs": len(hist.history["loss"]),
                        "val_mse": _mse(_keras_predict(model, xv), yv)})
        progress(f"NN {'-'.join(map(str, layers))}: {results[-1]['epochs']} epochs, "
                 f"val MSE {results[-1]['val_mse']:.5f}")
    best = _pick(results)
    model, weights = nets[tuple(best["layers"])]
    return Fitted("nn", {"layers": best["layers"], "activation": "relu", "optimizer": "adam", "lr": 1e-3,
                         "batch_size": batch, "epochs": best["epochs"]},
                  lambda x: _keras_predict(model, x),
                  lambda inp, out, prefix: ox.mlp_nodes(weights, inp, out, prefix),
                  results, time.perf_counter() - t0)


def _keras_predict(model, x: np.ndarray) -> np.ndarray:
    """Keras's own (float32) prediction, the reference the ONNX graph (float64) is checked against."""
    return model.predict(np.asarray(x, dtype=np.float32), batch_size=16384, verbose=0)[:, 0].astype(np.float64)


def _threads() -> int:
    return int(os.environ.get("GALAXYPAINT_THREADS", os.cpu_count() or 1))


FITTERS: dict[str, Callable[..., Fitted]] = {"ert": fit_ert, "knn": fit_knn, "lgbm": fit_lgbm, "nn": fit_nn}
MODEL_KINDS: tuple[str, ...] = ("ert", "knn", "lgbm", "nn")
