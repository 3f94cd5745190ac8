"""A joint conditional model p(smass, sSFR, radius, color | M_h, C_h, S_h, z_h, Delta3_h) to draw galaxies from.

Why.  The paper's regressors and their stack predict E[galaxy | halo]; a catalog painted with them is
a catalog of means, so its distributions are too narrow and their tails empty, and the scatter at
fixed halo properties, which the clustering of galaxy samples depends on, is lost.  Painting should
*draw* each galaxy from p(galaxy | halo), for the four properties jointly (colour and sSFR are
correlated beyond what the halo explains).  The conditionals are far from Gaussian: sSFR and colour
are bimodal (star-forming / quenched) and SFR = 0 galaxies sit in a spike drawn from N(-13.5, 0.5)
(the paper's convention, ``app.core.schema.ZERO_SFR_LOG_SSFR``), so the model is a mixture density network
(Bishop 1994): an MLP maps the standardized halo features to a K-component Gaussian mixture with full
covariances over the standardized targets.  Its hidden units are tanh, not ReLU: a ReLU network is
piecewise linear in the features, and where haloes are few (the high-mass end of a steep mass
function, where the massive, large and red galaxies live) it has few kinks to follow a curved relation
with; on the built-in catalog its radius at M_h 12.6-13.1 sat on such a chord, 0.003-0.010 dex above
the law in every fit, and the expected large-galaxy count 1-2.5 % above the law's, where tanh fits a
better validation NLL and halves that excess (figures in ``bench/README.md``).

Model.  Features (schema units, ``app.core.schema.FEATURE_NAMES`` order) are standardized with a given
mean/scale or with those of the training rows, after the positive, right-skewed ones (``log_floors``;
the pipeline passes the schema's: spin, formation redshift, Delta3) are taken as logarithms: these
quantities scatter log-normally, so raw they put most haloes in a narrow range and a long upper tail
many standard deviations out, and a tanh unit has to spend its curvature on undoing that; on the
built-in catalog logs fit a better validation NLL in every one of eight fits (figures in
``bench/README.md``).  Targets are standardized with the training rows' mean and standard deviation.
The network outputs, per component, a logit, a mean [D] and a Cholesky factor L [D, D] (lower
triangular; diagonal softplus(raw) + floor so that covariances stay positive definite and no
component can collapse onto a few rows).  It is trained on the negative log-likelihood (log-sum-exp
over components, triangular solve) with Adam, mini-batches, gradient-norm clipping, a seeded
initialization and shuffling (``keras.utils.set_random_seed``), a learning rate halved on validation
plateaus, and early stopping on the validation NLL with the best weights restored.  The number of
components K and the width are chosen on the validation NLL over a small search (``SEARCHES``; ties
within ``TIE_NATS`` go to the candidate with more components, then the wider: the NLL averages over
every galaxy and barely weighs the shape of a population's tail, which is what a painted catalog is
for).

Output.  ``distribution(X)`` returns, in the targets' schema units (log10 Msun/h, log10 h/yr,
log10 kpc/h, mag): ``weights`` [N, K] (summing to 1), ``means`` [N, K, D] and ``chol`` [N, K, D, D]
(lower-triangular factors of the component covariances); with ``lower_cut`` the model is that mixture
conditioned on the first target above the cut (``app.core.sampling``'s ``lower``).  It is computed in
float64 numpy from the Keras weights rather than with Keras' float32 ``predict``, so that the ONNX graph
(``sampler_graph``: ``halo_features`` double [N, 5] in raw units -> ``weights``, ``means``, ``chol``,
all double) reproduces it to ~2e-15 (``check_sampler_fidelity``).  Draws, quantiles, CRPS and
log-densities are computed from those three arrays by ``app.core.sampling`` (numpy only, reproducible per
(seed, halo id)).  NLLs are reported in nats per galaxy in the targets' schema units.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.base import BaseEstimator

from app.core import sampling
from app.core.model import SAMPLER_OUTPUTS, run_distribution
from app.core.schema import COLUMNS, FEATURE_NAMES, TARGET_NAMES
from training import onnx_export as ox

Progress = Callable[[str], None]

OUTPUT_NAMES = SAMPLER_OUTPUTS  # the graph's outputs, as the serving side reads them
#: validation-NLL margin (nats per galaxy) within which the more flexible candidate is chosen (measured
#: on the built-in catalog: K = 4 and K = 8 tie within 0.0003 nats, yet K = 4's red galaxies are 2-3 %
#: too few in each of five fits; figures in ``bench/README.md``)
TIE_NATS = 0.002


@dataclass(frozen=True)
class Search:
    """A bounded model search: candidates (K, width), trunk depth and the training budget."""

    candidates: tuple[tuple[int, int], ...]
    depth: int
    max_epochs: int
    patience: int
    batch_size: int
    learning_rate: float = 2e-3


#: ``fast``: tests, the README demo and quick looks; ``paper``: production runs.  Both are early-stopped
#: on the validation NLL; what differs is how many architectures are tried and how long each may train.
#: Early stopping, not the epoch budget, should end a fit: on the built-in catalog (84k training rows)
#: fast's tanh candidates stop after 112 and 80 epochs (59 s for both on 2 cores; ReLU ones stopped after
#: ~40-80, and tanh converges more slowly, hence budgets of 150 and 300).  Figures: ``bench/README.md``.
SEARCHES: dict[str, Search] = {
    "fast": Search(candidates=((4, 64), (8, 64)), depth=2, max_epochs=150, patience=8, batch_size=1024),
    "paper": Search(candidates=((4, 64), (8, 64), (8, 128), (12, 128)), depth=3, max_epochs=300, patience=12,
                    batch_size=512, learning_rate=1e-3),
}


def _n_params(k: int, d: int) -> int:
    """Head outputs: K logits, K*D means, K*D raw diagonals, K*D(D-1)/2 off-diagonals."""
    return k * (1 + 2 * d + d * (d - 1) // 2)


def _head_slices(k: int, d: int) -> dict[str, slice]:
    n_off = d * (d - 1) // 2
    a, b, c = k, k + k * d, k + 2 * k * d
    return {"logits": slice(0, a), "means": slice(a, b), "diag": slice(b, c), "off": slice(c, c + k * n_off)}


def _tril_index(d: int) -> list[tuple[int, int]]:
    """Strictly-lower entries in row-major order: (1,0), (2,0), (2,1), (3,0), ... (the head's layout)."""
    return [(i, j) for i in range(d) for j in range(i)]


def _softplus(x: np.ndarray) -> np.ndarray:
    # the exact formula the ONNX graph uses (Relu, Abs, Neg, Exp, Log), so both agree to rounding
    return np.maximum(x, 0.0) + np.log(1.0 + np.exp(-np.abs(x)))


class MixtureDensityNetwork(BaseEstimator):
    """Gaussian-mixture conditional density p(targets | features) with full covariances (see the module).

    Parameters
    ----------
    search : "fast" | "paper"
        The candidate (K, width) grid, depth and training budget (``SEARCHES``).
    n_components, width, depth : int or None
        Fix K, the hidden width or the number of hidden layers instead of searching/using the preset.
    activation : "tanh" | "relu"
        The hidden units' nonlinearity (tanh by default: see the module docstring).
    learning_rate, batch_size, max_epochs, patience : None -> the search preset's values.
    diag_floor : float
        Lower bound of the Cholesky diagonal in standardized target units (1e-3: a component can be no
        narrower than 0.1 % of a property's population scatter).
    clipnorm : float
        Adam's gradient-norm clip: NLL gradients explode when a component narrows onto few rows.
    log_floors : sequence [n_features] of float or None, or None
        Per feature: None to use it as it is, or a positive floor to use ln(max(x, floor)) instead
        (``app.core.schema.FEATURE_LOG_FLOORS``); None -> every feature as it is.
    feature_mean, feature_scale : array [n_features] or None
        Feature standardization (schema units, or ln units for the ``log_floors`` features); None ->
        the training rows' mean and std.
    lower_cut : float or None
        The selection on the first target (the stellar mass, in its schema units) the training catalog was
        made with: every training galaxy lies above it.  The model is then fitted as the law conditioned on
        it (the likelihood of each galaxy divided by its halo's mixture mass above the cut, as for any
        truncated sample), and its draws, quantiles and densities are conditioned on it too, so that no
        painted galaxy falls outside the selection the model learnt from.
    random_state : int
        Seeds initialization and shuffling.
    """

    def __init__(self, search: str = "fast", n_components: int | None = None, width: int | None = None,
                 depth: int | None = None, activation: str = "tanh", learning_rate: float | None = None,
                 batch_size: int | None = None, max_epochs: int | None = None, patience: int | None = None,
                 diag_floor: float = 1e-3, clipnorm: float = 1.0, log_floors=None, feature_mean=None,
                 feature_scale=None, lower_cut: float | None = None, random_state: int = 42):
        self.search = search
        self.n_components = n_components
        self.width = width
        self.depth = depth
        self.activation = activation
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.diag_floor = diag_floor
        self.clipnorm = clipnorm
        self.log_floors = log_floors
        self.feature_mean = feature_mean
        self.feature_scale = feature_scale
        self.lower_cut = lower_cut
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting

    def _plan(self) -> tuple[Search, list[tuple[int, int]]]:
        if self.search not in SEARCHES:
            raise ValueError(f"unknown search {self.search!r}: choose from {', '.join(SEARCHES)}")
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', not {self.activation!r}")
        s = SEARCHES[self.search]
        ks = [self.n_components] if self.n_components else sorted({k for k, _ in s.candidates})
        ws = [self.width] if self.width else sorted({w for _, w in s.candidates})
        cands = [(k, w) for k, w in s.candidates if k in ks and w in ws]
        if not cands:  # a fixed K or width outside the preset grid: cross it with the other axis
            cands = [(k, w) for k in ks for w in ws]
        return s, cands

    def fit(self, X, Y, X_val, Y_val, progress: Progress | None = None) -> "MixtureDensityNetwork":
        """Fit on (X, Y), choosing K and width and early-stopping on (X_val, Y_val).

        X: [N, n_features] in schema units; Y: [N, D] targets in schema units."""
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras

        say = progress or (lambda _m: None)
        t_start = time.perf_counter()
        X, Y, X_val, Y_val = (np.asarray(a, dtype=np.float64) for a in (X, Y, X_val, Y_val))
        if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y) or X_val.shape[1:] != X.shape[1:] \
                or Y_val.shape[1:] != Y.shape[1:] or len(X_val) != len(Y_val):
            raise ValueError(f"expected X [N, F], Y [N, D] and validation arrays of the same widths; got "
                             f"{X.shape}, {Y.shape}, {X_val.shape}, {Y_val.shape}")
        if len(X_val) == 0 or len(X) == 0:
            raise ValueError("training and validation sets must not be empty")
        for name, a in (("X", X), ("Y", Y), ("X_val", X_val), ("Y_val", Y_val)):
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name} has non-finite values")
        plan, cands = self._plan()
        cut = None if self.lower_cut is None else float(self.lower_cut)
        if cut is not None and (not np.isfinite(cut) or min(Y[:, 0].min(), Y_val[:, 0].min()) <= cut):
            raise ValueError(f"lower_cut {self.lower_cut!r}: every training and validation galaxy's first target "
                             "must lie above it (the selection the catalog was made with)")
        for name in ("n_components", "width", "depth", "batch_size", "max_epochs", "patience"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, not {v!r}")
        self.n_features_in_, self.n_targets_ = X.shape[1], Y.shape[1]
        floors = [None] * X.shape[1] if self.log_floors is None else list(self.log_floors)
        if len(floors) != X.shape[1] or not all(
                f is None or (isinstance(f, (int, float, np.floating, np.integer)) and not isinstance(f, bool)
                              and np.isfinite(f) and f > 0) for f in floors):
            raise ValueError(f"log_floors must give None or a positive floor for each of the {X.shape[1]} "
                             f"features, not {self.log_floors!r}")
        self.log_columns_ = np.array([f is not None for f in floors])
        self.log_floor_ = np.array([1.0 if f is None else float(f) for f in floors])
        xl = self._log_x(X)
        self.feature_mean_ = (np.asarray(self.feature_mean, np.float64) if self.feature_mean is not None
                              else xl.mean(axis=0))
        self.feature_scale_ = (np.asarray(self.feature_scale, np.float64) if self.feature_scale is not None
                               else xl.std(axis=0))
        self.feature_scale_ = np.where(self.feature_scale_ > 0, self.feature_scale_, 1.0)
        self.target_mean_ = Y.mean(axis=0)
        sd = Y.std(axis=0)
        self.target_scale_ = np.where(sd > 0, sd, 1.0)
        self.lower_cut_ = cut
        cut_std = None if cut is None else (cut - self.target_mean_[0]) / self.target_scale_[0]
        self.depth_ = int(self.depth or plan.depth)
        lr = float(self.learning_rate or plan.learning_rate)
        max_epochs = int(self.max_epochs or plan.max_epochs)
        patience = int(self.patience or plan.patience)
        # at least ~50 optimizer steps per epoch on small tables
        batch = int(self.batch_size or min(plan.batch_size, max(64, len(X) // 50)))

        xt = self._scale_x(X).astype(np.float32)
        xv = self._scale_x(X_val).astype(np.float32)
        yt = ((Y - self.target_mean_) / self.target_scale_).astype(np.float32)
        yv = ((Y_val - self.target_mean_) / self.target_scale_).astype(np.float32)

        results, fitted = [], []
        for k, width in cands:
            t0 = time.perf_counter()
            keras.utils.set_random_seed(int(self.random_state))
            net = self._build(keras, k, width, self.depth_)
            net.compile(optimizer=keras.optimizers.Adam(lr, clipnorm=float(self.clipnorm)),
                        loss=_nll_loss(k, self.n_targets_, float(self.diag_floor), cut_std),
                        jit_compile=False)  # XLA measured no faster here, and adds a compile per candidate
            stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
            plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                        patience=max(2, patience // 3), min_lr=lr / 64)
            with warnings.catch_warnings():
                # Keras 3.15 converts tensors with np.array(copy=False) semantics numpy 2 deprecates: noise
                warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy",
                                        category=DeprecationWarning)
                hist = net.fit(xt, yt, validation_data=(xv, yv), epochs=max_epochs, batch_size=batch, shuffle=True,
                               verbose=0, callbacks=[stop, plateau, keras.callbacks.TerminateOnNaN()])
                weights = [(layer.get_weights()[0].astype(np.float64), layer.get_weights()[1].astype(np.float64))
                           for layer in net.layers]
            val_nll = float(-np.mean(sampling.mixture_logpdf(*self._distribution(X_val, weights, k), Y_val, cut)))
            if not np.isfinite(val_nll):
                val_nll = float("inf")
            losses = hist.history["val_loss"]
            results.append({"n_components": k, "width": width, "depth": self.depth_,
                            "epochs": len(losses), "best_epoch": int(np.nanargmin(losses)) + 1 if losses else 0,
                            "val_nll": val_nll, "seconds": round(time.perf_counter() - t0, 2)})
            fitted.append(weights)
            say(f"MDN K={k} width={width}x{self.depth_}: {len(losses)} epochs, val NLL {val_nll:.4f} nats "
                f"({results[-1]['seconds']:.0f} s)")
        best_nll = min(r["val_nll"] for r in results)
        if not np.isfinite(best_nll):
            raise RuntimeError("every MDN candidate diverged (non-finite validation NLL)")
        tied = [i for i, r in enumerate(results) if r["val_nll"] <= best_nll + TIE_NATS]
        i = max(tied, key=lambda j: (results[j]["n_components"], results[j]["width"]))
        self.search_ = results
        self.weights_ = fitted[i]
        self.n_components_ = results[i]["n_components"]
        self.width_ = results[i]["width"]
        self.val_nll_ = results[i]["val_nll"]
        self.epochs_ = results[i]["epochs"]
        self.best_epoch_ = results[i]["best_epoch"]
        self.batch_size_, self.learning_rate_ = batch, lr
        self.fit_seconds_ = time.perf_counter() - t_start
        return self

    def _build(self, keras, k: int, width: int, depth: int):
        layers = [keras.Input(shape=(self.n_features_in_,))]
        layers += [keras.layers.Dense(width, activation=self.activation) for _ in range(depth)]
        # a small head keeps every component near the standardized population (mean ~0, sd ~1) at the
        # start, so no component starts far out and collapses onto a few rows
        n_out = _n_params(k, self.n_targets_)
        bias = np.zeros(n_out, np.float32)
        bias[_head_slices(k, self.n_targets_)["diag"]] = np.log(np.expm1(1.0))  # softplus^-1(1): unit sd
        layers.append(keras.layers.Dense(n_out, kernel_initializer=keras.initializers.VarianceScaling(0.1),
                                         bias_initializer=keras.initializers.Constant(bias)))
        return keras.Sequential(layers)

    # ------------------------------------------------------------------ the distribution

    def _log_x(self, X) -> np.ndarray:
        """The features with the ``log_floors`` ones replaced by ln(max(x, floor))."""
        X = np.array(X, dtype=np.float64)
        m = self.log_columns_
        X[:, m] = np.log(np.maximum(X[:, m], self.log_floor_[m]))
        return X

    def _scale_x(self, X) -> np.ndarray:
        return (self._log_x(X) - self.feature_mean_) / self.feature_scale_

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise RuntimeError("this MixtureDensityNetwork is not fitted yet: call fit first")

    def _distribution(self, X, weights, k) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.n_targets_
        h = self._scale_x(X)
        for i, (w, b) in enumerate(weights[:-1]):
            h = h @ w + b
            h = np.maximum(h, 0.0) if self.activation == "relu" else np.tanh(h)
        w_out, b_out = weights[-1]
        sl = _head_slices(k, d)
        out = {name: h @ w_out[:, s] + b_out[s] for name, s in sl.items()}
        logits = out["logits"]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        wts = e / e.sum(axis=1, keepdims=True)
        means = out["means"].reshape(len(h), k, d) * self.target_scale_ + self.target_mean_
        chol = np.zeros((len(h), k, d, d))
        diag = _softplus(out["diag"]) + self.diag_floor
        chol[:, :, np.arange(d), np.arange(d)] = diag.reshape(len(h), k, d)
        off = out["off"].reshape(len(h), k, d * (d - 1) // 2)
        for c, (i, j) in enumerate(_tril_index(d)):
            chol[:, :, i, j] = off[:, :, c]
        chol *= self.target_scale_[:, None]  # row d of L scales with target d: Cov -> S Cov S
        return wts, means, chol

    def distribution(self, X, batch: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weights [N, K], means [N, K, D], chol [N, K, D, D]) for features ``X`` [N, F] (schema units),
        in the targets' schema units, computed in float64."""
        self._check_fitted()
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected X of shape (N, {self.n_features_in_}), got {X.shape}")
        parts = [self._distribution(X[s:s + batch], self.weights_, self.n_components_)
                 for s in range(0, max(len(X), 1), batch)]
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]

    def nll(self, X, Y) -> float:
        """Mean negative log-likelihood of ``Y`` given ``X`` (nats per galaxy, targets in schema units)."""
        return float(-np.mean(sampling.mixture_logpdf(*self.distribution(X), np.asarray(Y, np.float64),
                                                      self.lower_cut_)))

    def score(self, X, Y) -> float:
        """Mean log-likelihood (higher is better, scikit-learn's convention for ``score``)."""
        return -self.nll(X, Y)

    def sample(self, X, ids, seed: int) -> np.ndarray:
        """One draw [N, D] per halo, reproducible per (``seed``, halo id) (``app.core.sampling.sample_mixture``)."""
        return sampling.sample_mixture(*self.distribution(X), ids, seed, lower=self.lower_cut_)

    def quantiles(self, X, levels) -> np.ndarray:
        """Marginal quantiles [N, D, len(levels)] per property (``app.core.sampling.mixture_quantiles``)."""
        return sampling.mixture_quantiles(*self.distribution(X), levels, lower=self.lower_cut_)


def _log_sf(a):
    """log P(Z > a) for Z ~ N(0, 1), in Keras ops: log(erfc(a / sqrt 2) / 2) until float32's erfc nears
    underflow, the asymptotic tail beyond (both branches see clamped inputs, so no NaN gradient leaks)."""
    from keras import ops

    near = ops.minimum(a, 8.0)
    far = ops.maximum(a, 8.0)
    inv2 = 1.0 / (far * far)
    tail = (-0.5 * far * far - ops.log(far) - 0.5 * float(np.log(2.0 * np.pi))
            + ops.log(1.0 - inv2 + 3.0 * inv2 * inv2))
    return ops.where(a < 8.0, ops.log(0.5 * ops.erfc(near / float(np.sqrt(2.0)))), tail)


def _nll_loss(k: int, d: int, floor: float, cut: float | None = None):
    """Keras loss: per-row NLL of standardized targets ``y`` [B, D] under the head's mixture ``out``;
    ``cut`` (standardized): the mixture conditioned on y_0 > cut, i.e. plus log P(y_0 > cut)."""
    from keras import ops

    sl = _head_slices(k, d)
    n_off = d * (d - 1) // 2
    tril = _tril_index(d)
    const = 0.5 * d * float(np.log(2.0 * np.pi))

    def nll(y, out):
        logits = out[:, sl["logits"]]
        mu = ops.reshape(out[:, sl["means"]], (-1, k, d))
        diag = ops.softplus(ops.reshape(out[:, sl["diag"]], (-1, k, d))) + floor
        off = ops.reshape(out[:, sl["off"]], (-1, k, n_off))
        r = ops.expand_dims(y, 1) - mu
        # forward substitution L z = r, row by row (D = 4: cheaper than a batched triangular solve)
        z: list = []
        quad = 0.0
        for i in range(d):
            acc = r[:, :, i]
            for c, (ii, j) in enumerate(tril):
                if ii == i:
                    acc = acc - off[:, :, c] * z[j]
            zi = acc / diag[:, :, i]
            z.append(zi)
            quad = quad + zi * zi
        logw = ops.log_softmax(logits, axis=-1)
        logp = logw - 0.5 * quad - ops.sum(ops.log(diag), axis=-1) - const
        if cut is None:
            return -ops.logsumexp(logp, axis=-1)
        log_above = ops.logsumexp(logw + _log_sf((cut - mu[:, :, 0]) / diag[:, :, 0]), axis=-1)
        return log_above - ops.logsumexp(logp, axis=-1)

    nll.__name__ = "mixture_nll"
    return nll


# ----------------------------------------------------------------------------- ONNX


def _c(name: str, a) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a), name)


def sampler_graph(model: MixtureDensityNetwork, feature_mean=None, feature_scale=None,
                  metadata: dict[str, object] | None = None) -> bytes:
    """ONE ONNX graph of the fitted model: ``halo_features`` double [N, F] (schema units) ->
    ``weights`` [N, K], ``means`` [N, K, D], ``chol`` [N, K, D, D], all double, in target units.

    The graph applies the model's own feature transform (logs, standardization).
    ``feature_mean``/``feature_scale`` are only for a model fitted on already-standardized features
    (without ``log_floors``): the graph then applies that standardization first (raw -> model input),
    so its input stays in schema units.
    """
    model._check_fitted()
    if (feature_mean is not None or feature_scale is not None) and model.log_columns_.any():
        raise ValueError("a model with log_floors takes the logs of its own (raw, positive) inputs: it cannot be "
                         "given pre-standardized features")
    k, d, f = model.n_components_, model.n_targets_, model.n_features_in_
    nodes: list = []
    inits: list = []
    src = ox.INPUT_NAME
    if feature_mean is not None or feature_scale is not None:
        fm = np.zeros(f) if feature_mean is None else np.asarray(feature_mean, np.float64)
        fs = np.ones(f) if feature_scale is None else np.asarray(feature_scale, np.float64)
        n, i = ox.scaler_nodes(fm, fs, src, "pre_scaled", prefix="pre_")
        nodes += n
        inits += i
        src = "pre_scaled"
    if model.log_columns_.any():  # ln(max(x, floor)) where the mask says so; Max keeps every Log finite
        inits += [_c("log_floor", model.log_floor_), _c("log_mask", model.log_columns_)]
        nodes += [helper.make_node("Max", [src, "log_floor"], ["log_clamped"]),
                  helper.make_node("Log", ["log_clamped"], ["log_all"]),
                  helper.make_node("Where", ["log_mask", "log_all", src], ["logged"])]
        src = "logged"
    n, i = ox.scaler_nodes(model.feature_mean_, model.feature_scale_, src, "scaled", prefix="scaler_")
    nodes += n
    inits += i
    act = "Relu" if model.activation == "relu" else "Tanh"
    cur = "scaled"
    for li, (w, b) in enumerate(model.weights_[:-1]):
        inits += [_c(f"W{li}", w), _c(f"b{li}", b)]
        nodes += [helper.make_node("MatMul", [cur, f"W{li}"], [f"h{li}_mm"]),
                  helper.make_node("Add", [f"h{li}_mm", f"b{li}"], [f"h{li}_lin"]),
                  helper.make_node(act, [f"h{li}_lin"], [f"h{li}"])]
        cur = f"h{li}"
    w_out, b_out = model.weights_[-1]
    for name, s in _head_slices(k, d).items():  # one MatMul per head group: no Slice needed
        if s.stop == s.start:  # D = 1: no off-diagonal entries
            continue
        inits += [_c(f"Wo_{name}", w_out[:, s]), _c(f"bo_{name}", b_out[s])]
        nodes += [helper.make_node("MatMul", [cur, f"Wo_{name}"], [f"{name}_mm"]),
                  helper.make_node("Add", [f"{name}_mm", f"bo_{name}"], [f"{name}_raw"])]
    n_off = d * (d - 1) // 2
    # scatter matrices place the diagonal / strictly-lower entries of each component's L: products
    # with 1 and sums with exact zeros, so the scatter adds no rounding
    e_diag = np.zeros((d, d * d))
    e_diag[np.arange(d), np.arange(d) * (d + 1)] = 1.0
    e_off = np.zeros((n_off, d * d))
    for c, (i, j) in enumerate(_tril_index(d)):
        e_off[c, i * d + j] = 1.0
    inits += [_c("shape_kd", np.array([-1, k, d], np.int64)), _c("shape_kdd", np.array([-1, k, d, d], np.int64)),
              _c("y_mean", model.target_mean_), _c("y_scale", model.target_scale_),
              _c("y_scale_col", model.target_scale_.reshape(d, 1)), _c("floor", np.array(float(model.diag_floor))),
              _c("one", np.array(1.0)), _c("e_diag", e_diag)]
    nodes += [
        helper.make_node("Softmax", ["logits_raw"], [OUTPUT_NAMES[0]], axis=-1),
        helper.make_node("Reshape", ["means_raw", "shape_kd"], ["means_std"]),
        helper.make_node("Mul", ["means_std", "y_scale"], ["means_scaled"]),
        helper.make_node("Add", ["means_scaled", "y_mean"], [OUTPUT_NAMES[1]]),
        # softplus(x) = max(x, 0) + log(1 + exp(-|x|)), spelled out as in the numpy reference
        helper.make_node("Relu", ["diag_raw"], ["sp_pos"]),
        helper.make_node("Abs", ["diag_raw"], ["sp_abs"]),
        helper.make_node("Neg", ["sp_abs"], ["sp_neg"]),
        helper.make_node("Exp", ["sp_neg"], ["sp_exp"]),
        helper.make_node("Add", ["one", "sp_exp"], ["sp_1p"]),
        helper.make_node("Log", ["sp_1p"], ["sp_log"]),
        helper.make_node("Add", ["sp_pos", "sp_log"], ["sp"]),
        helper.make_node("Add", ["sp", "floor"], ["diag_pos"]),
        helper.make_node("Reshape", ["diag_pos", "shape_kd"], ["diag_kd"]),
        helper.make_node("MatMul", ["diag_kd", "e_diag"], ["chol_diag"]),
    ]
    if n_off:
        inits += [_c("shape_koff", np.array([-1, k, n_off], np.int64)), _c("e_off", e_off)]
        nodes += [helper.make_node("Reshape", ["off_raw", "shape_koff"], ["off_k"]),
                  helper.make_node("MatMul", ["off_k", "e_off"], ["chol_off"]),
                  helper.make_node("Add", ["chol_diag", "chol_off"], ["chol_flat"])]
    else:
        nodes.append(helper.make_node("Identity", ["chol_diag"], ["chol_flat"]))
    nodes += [helper.make_node("Reshape", ["chol_flat", "shape_kdd"], ["chol_std"]),
              helper.make_node("Mul", ["chol_std", "y_scale_col"], [OUTPUT_NAMES[2]])]

    targets = list(TARGET_NAMES) if d == len(TARGET_NAMES) else [f"y{i}" for i in range(d)]
    features = list(FEATURE_NAMES) if f == len(FEATURE_NAMES) else [f"x{i}" for i in range(f)]
    meta = {"kind": "mdn", "n_components": str(k), "width": str(model.width_), "depth": str(model.depth_),
            "lower_cut": json.dumps(model.lower_cut_),
            "activation": model.activation, "diag_floor": repr(float(model.diag_floor)),
            "feature_order": json.dumps(features),
            "log_features": json.dumps({name: float(fl) for name, fl, m in
                                        zip(features, model.log_floor_, model.log_columns_) if m}),
            "target_order": json.dumps(targets),
            "target_units": json.dumps([COLUMNS[t].unit if t in COLUMNS else "" for t in targets]),
            "outputs": "weights [N,K]; means [N,K,D]; chol [N,K,D,D] lower-triangular Cholesky factors of "
                       "the component covariances; target units; when lower_cut is not null the model is this "
                       "mixture conditioned on target 0 > lower_cut (draw and score it so)",
            **{key: (v if isinstance(v, str) else json.dumps(v)) for key, v in (metadata or {}).items()}}
    graph = helper.make_graph(
        nodes, "galaxy-sampler-mdn",
        [helper.make_tensor_value_info(ox.INPUT_NAME, TensorProto.DOUBLE, [None, f])],
        [helper.make_tensor_value_info(OUTPUT_NAMES[0], TensorProto.DOUBLE, [None, k]),
         helper.make_tensor_value_info(OUTPUT_NAMES[1], TensorProto.DOUBLE, [None, k, d]),
         helper.make_tensor_value_info(OUTPUT_NAMES[2], TensorProto.DOUBLE, [None, k, d, d])],
        inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ox.OPSET)],
                                   producer_name="galaxypaint")
    onnx_model.ir_version = ox.IR_VERSION
    for key, value in meta.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString()


def check_sampler_fidelity(graph_bytes: bytes, model: MixtureDensityNetwork, X, feature_mean=None,
                           feature_scale=None, tol: float = 1e-4, batch: int = 8192) -> float:
    """Max |ONNX - native| over the three outputs for features ``X`` (schema units); raises
    ``training.onnx_export.FidelityError`` above ``tol``.  ``feature_mean``/``feature_scale`` as given
    to ``sampler_graph`` (the native model then sees the standardized ``X``)."""
    import onnxruntime as ort

    X = np.asarray(X, dtype=np.float64)
    if len(X) == 0:
        return 0.0
    session = ort.InferenceSession(graph_bytes, providers=["CPUExecutionProvider"])
    got = run_distribution(session, X, batch)
    x_model = X
    if feature_mean is not None or feature_scale is not None:
        fm = 0.0 if feature_mean is None else np.asarray(feature_mean, np.float64)
        fs = 1.0 if feature_scale is None else np.asarray(feature_scale, np.float64)
        x_model = (X - fm) / fs
    want = model.distribution(x_model)
    diff = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
    if not diff <= tol:
        raise ox.FidelityError(f"sampler graph and native distribution differ by up to {diff:.3g} (> {tol:g})")
    return diff
