"""Test-set metrics of the paper: Pearson r, MSE, two-sample Kolmogorov-Smirnov D, permutation importance.

Pure functions on arrays (targets in their schema units).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats


def pearson_r(pred: np.ndarray, true: np.ndarray) -> float:
    """Pearson correlation coefficient between predictions and truth."""
    return float(stats.pearsonr(np.asarray(pred, float), np.asarray(true, float))[0])


def mse(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean squared error [target units^2]."""
    d = np.asarray(pred, float) - np.asarray(true, float)
    return float(np.mean(d * d))


def ks_d(pred: np.ndarray, true: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic between the predicted and true distributions."""
    return float(stats.ks_2samp(np.asarray(pred, float), np.asarray(true, float)).statistic)


def regression_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    return {"pearson_r": pearson_r(pred, true), "mse": mse(pred, true), "ks_d": ks_d(pred, true)}


def permutation_importance(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray,
                           n_repeats: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Increase of the MSE when each column of ``x`` is shuffled (mean and std over ``n_repeats``).

    Same definition as scikit-learn's ``permutation_importance`` with ``scoring="neg_mean_squared_error"``,
    for any prediction function (a model, or the stacker on model outputs).
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    # every shuffled copy goes through ``predict`` in one call: far less per-call overhead (Keras, sklearn)
    copies = np.empty((d, n_repeats, n, d))
    for j in range(d):
        for r in range(n_repeats):
            copies[j, r] = x
            copies[j, r, :, j] = x[rng.permutation(n), j]
    pred = np.asarray(predict(np.concatenate([x[None], copies.reshape(-1, n, d)]).reshape(-1, d)))
    pred = pred.reshape(1 + d * n_repeats, n)
    base = mse(pred[0], y)
    scores = np.array([mse(p, y) for p in pred[1:]]).reshape(d, n_repeats) - base
    return scores.mean(axis=1), scores.std(axis=1)


def normalized(importance: np.ndarray, reference: int) -> np.ndarray:
    """Importances divided by that of column ``reference`` (the paper normalizes to M_h, or to LGBM)."""
    ref = importance[reference]
    return importance / ref if ref != 0 else np.full_like(importance, np.nan)
