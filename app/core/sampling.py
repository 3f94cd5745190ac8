"""Reproducible draws from a conditional galaxy model p(galaxy | halo), and the numbers that judge it.

A painted catalog of conditional means is too narrow: the spread of galaxy properties at fixed halo
properties, the bimodality of sSFR and colour and the SFR = 0 spike at log sSFR ~ N(-13.5, 0.5) all
vanish.  The joint model (``training.sampler``) gives, per halo, a Gaussian mixture over the four
target properties in their schema units (``smass`` log10 Msun/h, ``sSFR`` log10 h/yr, ``radius``
log10 kpc/h, ``color`` mag): ``weights`` [N, K], ``means`` [N, K, D] and lower-triangular Cholesky
factors ``chol`` [N, K, D, D] of the component covariances.  This module draws from it and measures
it, in plain numpy (plus ``scipy.special``), because it runs in the light serving install where
neither TensorFlow nor scikit-learn exist.

Why a counter-based generator.  A halo's galaxy must not change when the catalog is split into other
chunks, shuffled, painted on another number of Dask workers or re-painted with one halo added: the
random numbers of a halo may depend on (seed, halo id, position in its sequence) only.  A stateful
generator cannot give that; a counter-based one (Salmon et al. 2011, "Parallel random numbers: as
easy as 1, 2, 3") is a keyed bijection of a counter, so the uniforms are computed directly from
(seed, id, position), vectorized over halos.

Which Philox.  numpy ships Philox4x64-10 (``np.random.Philox``: a 256-bit counter, a 128-bit key,
four 64-bit words per block); there is no Philox4x32 in numpy to check against.  We implement the
same Philox4x64-10 so that every word is verified bit for bit against numpy's bit generator (and
Random123's known-answer vectors), and so that one 64-bit word gives one 52-bit uniform.  Counter
layout: halo ``id`` (as uint64, two's complement for negative ids) in counter word 1, the block index
in word 0; numpy increments its counter before producing a block, so a halo's sequence is exactly
the stream of ``np.random.Philox(key=seed, counter=(id << 64) - 1)``: position ``p`` is numpy's
``random_raw`` output ``p``.  One core makes 6-9 M halos/s at 8 uniforms per halo (two blocks;
measured on the shared 2-core development machine), ~16 M/s at up to 4.

Uniforms are ``((w >> 11) | 1) * 2**-53`` for a 64-bit word ``w``: odd multiples of 2**-53, so
strictly inside (0, 1) (the normal quantile is finite) and exact in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import special

_MASK64 = (1 << 64) - 1
_LO32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
#: Philox4x64 round multipliers and Weyl key increments (Salmon et al. 2011, Random123 philox.h)
PHILOX_M = (0xD2E7470EE14C6C93, 0xCA5A826395121157)
PHILOX_W = (0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B)
PHILOX_ROUNDS = 10
#: flattened (halo, block) pairs per chunk: ~11 uint64 buffers of this length stay in a 1 MB L2
#: cache (measured: 16384 is ~2.5x faster than 2048 and ~1.3x faster than 65536 or unchunked)
_CHUNK = 16384
_LOG_2PI = float(np.log(2.0 * np.pi))


# ----------------------------------------------------------------------------- Philox4x64-10


def _mulhilo(a: np.ndarray, m: int, lo: np.ndarray, hi: np.ndarray, t: np.ndarray, u: np.ndarray,
             al: np.ndarray) -> None:
    """lo, hi <- low and high 64 bits of the 128-bit product a * m (``t, u, al`` are scratch).

    numpy has no 64x64->128 multiply, so the high word is assembled from four 32x32 products;
    no partial sum can overflow: t <= (2^32-1)^2 + 2^32-1 < 2^64, likewise u."""
    ml, mh = np.uint64(m & 0xFFFFFFFF), np.uint64(m >> 32)
    np.bitwise_and(a, _LO32, out=al)
    np.right_shift(a, _SHIFT32, out=hi)  # a_hi
    np.multiply(hi, ml, out=t)  # a_hi m_lo
    np.multiply(hi, mh, out=hi)  # a_hi m_hi
    np.multiply(al, ml, out=u)  # a_lo m_lo
    np.right_shift(u, _SHIFT32, out=u)
    np.add(t, u, out=t)
    np.multiply(al, mh, out=u)  # a_lo m_hi
    np.bitwise_and(t, _LO32, out=al)
    np.add(u, al, out=u)
    np.right_shift(t, _SHIFT32, out=t)
    np.add(hi, t, out=hi)
    np.right_shift(u, _SHIFT32, out=u)
    np.add(hi, u, out=hi)
    np.multiply(a, np.uint64(m), out=lo)  # wraps modulo 2^64, which is the low word


def philox4x64(counter: Sequence[np.ndarray], key: int, rounds: int = PHILOX_ROUNDS) -> tuple[np.ndarray, ...]:
    """Philox4x64-``rounds`` of the counters ``counter`` (4 uint64 arrays of one length: words 0..3,
    word 0 least significant) under the 128-bit ``key``; returns the 4 output words (uint64 arrays).

    This is the raw block function; ``philox_raw`` / ``philox_uniforms`` lay out counters per halo."""
    key = _check_key(key)
    words = [np.array(w, dtype=np.uint64, copy=True).reshape(-1) for w in counter]
    if len(words) != 4 or len({len(w) for w in words}) != 1:
        raise ValueError("counter must be 4 uint64 arrays of equal length")
    n = len(words[0])
    out = [np.empty(n, np.uint64) for _ in range(4)]
    scratch = [np.empty(n, np.uint64) for _ in range(3)]
    return _rounds(*words, *out, *scratch, key & _MASK64, key >> 64, rounds)


def _rounds(c0, c1, c2, c3, lo0, hi0, lo1, hi1, t, u, al, k0: int, k1: int, rounds: int = PHILOX_ROUNDS):
    """The Philox rounds in place over preallocated buffers; returns the 4 buffers holding the result."""
    with np.errstate(over="ignore"):  # the low word of a product wraps by design
        for _ in range(rounds):
            _mulhilo(c0, PHILOX_M[0], lo0, hi0, t, u, al)
            _mulhilo(c2, PHILOX_M[1], lo1, hi1, t, u, al)
            np.bitwise_xor(hi1, c1, out=hi1)
            np.bitwise_xor(hi1, np.uint64(k0), out=hi1)
            np.bitwise_xor(hi0, c3, out=hi0)
            np.bitwise_xor(hi0, np.uint64(k1), out=hi0)
            # new state (hi1^c1^k0, lo1, hi0^c3^k1, lo0); the old state buffers become the outputs
            # of the next round, so no word is copied
            c0, c1, c2, c3, lo0, hi0, lo1, hi1 = hi1, lo1, hi0, lo0, c0, c1, c2, c3
            k0 = (k0 + PHILOX_W[0]) & _MASK64
            k1 = (k1 + PHILOX_W[1]) & _MASK64
    return c0, c1, c2, c3


def _check_key(key) -> int:
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
        raise TypeError(f"key/seed must be an integer, not {type(key).__name__}")
    key = int(key)
    if not 0 <= key < 1 << 128:
        raise ValueError(f"key/seed must be in [0, 2**128), got {key}")
    return key


def _as_counter(counter) -> np.ndarray:
    """Halo ids as uint64 (negative int64 ids wrap to two's complement; floats are refused: a float
    id above 2**53 would silently collide with its neighbours)."""
    c = np.asarray(counter)
    if c.ndim != 1:
        c = c.reshape(-1)
    if c.dtype.kind == "u":
        return c.astype(np.uint64, copy=False)
    if c.dtype.kind == "i":
        return c.astype(np.int64, copy=False).view(np.uint64)
    if c.size == 0:
        return np.zeros(0, np.uint64)
    raise TypeError(f"halo ids must be integers, not {c.dtype}")


def _philox_fill(key: int, counter, n: int, out: np.ndarray, as_uniforms: bool) -> np.ndarray:
    """Fill ``out`` [len(counter), n] with each halo's first ``n`` words (uint64) or uniforms (float64),
    chunk by chunk so that the working buffers stay in cache and no [N, n] word array is allocated."""
    key = _check_key(key)
    ids = _as_counter(counter)
    if n < 0:
        raise ValueError("n must be >= 0")
    if len(ids) == 0 or n == 0:
        return out
    nb = -(-n // 4)
    k0, k1 = key & _MASK64, key >> 64
    per = max(1, _CHUNK // nb)  # halos per chunk
    bufs = [np.empty(per * nb, np.uint64) for _ in range(11)]
    block = np.tile(np.arange(nb, dtype=np.uint64), per)
    for s in range(0, len(ids), per):
        h = ids[s:s + per]
        m = len(h) * nb
        c0, c1, c2, c3, *rest = (b[:m] for b in bufs)
        c0[:] = block[:m]
        c1[:] = np.repeat(h, nb)
        c2.fill(0)
        c3.fill(0)
        words = _rounds(c0, c1, c2, c3, *rest, k0, k1)
        dst = out[s:s + len(h)]
        for w in range(min(4, n)):
            word = words[w].reshape(len(h), nb)[:, : (n - w + 3) // 4]  # positions w, w+4, ... < n
            if as_uniforms:
                np.right_shift(word, np.uint64(11), out=word)
                np.bitwise_or(word, np.uint64(1), out=word)
                np.multiply(word, 2.0**-53, out=dst[:, w::4], casting="unsafe")
            else:
                dst[:, w::4] = word
    return out


def philox_raw(key: int, counter: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` 64-bit words [len(counter), n] (uint64) of each halo's Philox4x64-10 sequence.

    Word ``p`` of halo ``id`` is word ``p % 4`` of the block with counter (``p // 4``, ``id``, 0, 0)
    under ``key``: numpy's ``np.random.Philox(key=key, counter=(id << 64) - 1).random_raw(n)``.
    """
    n = int(n)
    return _philox_fill(key, counter, n, np.empty((len(_as_counter(counter)), max(n, 0)), np.uint64), False)


def uniforms_from_words(words: np.ndarray) -> np.ndarray:
    """64-bit words -> float64 uniforms ((w >> 11) | 1) * 2**-53, strictly inside (0, 1)."""
    odd = np.bitwise_or(np.right_shift(np.asarray(words, np.uint64), np.uint64(11)), np.uint64(1))
    return odd.astype(np.float64) * 2.0**-53


def philox_uniforms(key: int, counter: np.ndarray, n: int) -> np.ndarray:
    """Uniforms in (0, 1), [len(counter), n], that depend only on (``key``, counter = halo id, position):
    ``uniforms_from_words(philox_raw(key, counter, n))``, computed without the intermediate words.

    ``key`` is the seed (an integer in [0, 2**128)); ``counter`` the halo ids (integers)."""
    n = int(n)
    return _philox_fill(key, counter, n, np.empty((len(_as_counter(counter)), max(n, 0)), np.float64), True)


def standard_normals(key: int, ids: np.ndarray, n: int) -> np.ndarray:
    """Standard normals [len(ids), n] from the same uniforms, by the inverse normal CDF: one uniform per
    normal, so position ``p`` of a halo is always the same normal (Box-Muller would pair positions)."""
    return special.ndtri(philox_uniforms(key, ids, n))


# ----------------------------------------------------------------------------- Gaussian mixtures


def _check_mixture(weights, means, chol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = np.asarray(weights, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    L = np.asarray(chol, dtype=np.float64)
    if w.ndim != 2 or mu.ndim != 3 or L.ndim != 4 or mu.shape[:2] != w.shape or L.shape[:3] != mu.shape \
            or L.shape[3] != mu.shape[2]:
        raise ValueError(f"expected weights [N, K], means [N, K, D], chol [N, K, D, D]; got {w.shape}, "
                         f"{mu.shape}, {L.shape}")
    return w, mu, L


def marginal_sds(chol: np.ndarray) -> np.ndarray:
    """Per-component standard deviations [..., D] of each property: sqrt(diag(L L^T)) = row norms of L."""
    L = np.asarray(chol, dtype=np.float64)
    return np.sqrt(np.sum(L * L, axis=-1))


def _standardized_cut(means: np.ndarray, chol: np.ndarray, lower: float) -> np.ndarray:
    """a [N, K] = (lower - mu_k0) / sd_k0: the cut on property 0 in each component's own units (row 0 of a
    lower-triangular L holds only L_00, the component's standard deviation of property 0)."""
    return (float(lower) - means[:, :, 0]) / np.abs(chol[:, :, 0, 0])


def truncated_weights(weights: np.ndarray, means: np.ndarray, chol: np.ndarray, lower: float | None) -> np.ndarray:
    """The component weights [N, K] of the mixture conditioned on property 0 > ``lower`` (a catalog's
    selection, e.g. its stellar-mass cut): w_k P_k / sum_l w_l P_l with P_k = P(y_0 > lower | k),
    computed in log space so that a halo whose mixture lies almost wholly below the cut still gets
    finite weights.  ``lower`` None: the weights themselves."""
    w, mu, L = _check_mixture(weights, means, chol)
    if lower is None:
        return w
    return _reweighted(w, special.log_ndtr(-_standardized_cut(mu, L, lower)))


def _reweighted(w: np.ndarray, log_p: np.ndarray) -> np.ndarray:
    """w_k P_k / sum_l w_l P_l from log P_k [N, K], in log space."""
    with np.errstate(divide="ignore"):  # a zero weight is a -inf term
        logw = np.log(w) + log_p
    logw -= np.max(logw, axis=1, keepdims=True)
    e = np.exp(logw)
    return e / np.sum(e, axis=1, keepdims=True)


def truncated_marginals(weights: np.ndarray, means: np.ndarray, chol: np.ndarray,
                        lower: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-property 1-D mixtures of the law conditioned on property 0 > ``lower``: (weights [N, K],
    means [N, K, D], sds [N, K, D]).  Weights: ``truncated_weights``.  Property 0's components are
    returned untruncated (its quantiles, CDF and CRPS apply the cut exactly).  Property d > 0 of component
    k is mu_d + L_d0 z_0 + (the rest, N(0, s_d^2 - L_d0^2)) with z_0 a standard normal truncated at
    a = (lower - mu_0) / L_00: matched here in mean and variance, mu_d + L_d0 lambda and
    s_d^2 + L_d0^2 (a lambda - lambda^2), lambda = phi(a) / Phi(-a) (the truncated normal's moments;
    exact where L_d0 = 0 or the cut is far below, a Gaussian stand-in for the skewed exact marginal
    where a component straddles the cut).  ``lower`` None: the untruncated marginals."""
    w, mu, L = _check_mixture(weights, means, chol)
    sd = marginal_sds(L)
    if lower is None:
        return w, mu, sd
    a = _standardized_cut(mu, L, lower)
    log_p = special.log_ndtr(-a)  # log P(above | component)
    with np.errstate(over="ignore"):
        lam = np.exp(-0.5 * a * a - 0.5 * _LOG_2PI - log_p)  # inverse Mills ratio
    var_factor = np.maximum(a * lam - lam * lam, -1.0)  # Var(z0 | z0 > a) - 1, in [-1, 0]
    l0 = L[:, :, :, 0]  # [N, K, D]: each property's loading on z_0
    m = mu + l0 * lam[:, :, None]
    v = np.maximum(sd * sd + l0 * l0 * var_factor[:, :, None], (sd * 1e-6) ** 2)
    m[:, :, 0], v[:, :, 0] = mu[:, :, 0], sd[:, :, 0] ** 2
    return _reweighted(w, log_p), m, np.sqrt(v)


def log_prob_above(weights: np.ndarray, means: np.ndarray, chol: np.ndarray, lower: float) -> np.ndarray:
    """log P(y_0 > ``lower``) [N] under each halo's mixture (the normalization of the truncated law)."""
    w, mu, L = _check_mixture(weights, means, chol)
    with np.errstate(divide="ignore"):
        return special.logsumexp(np.log(w) + special.log_ndtr(-_standardized_cut(mu, L, lower)), axis=1)


def _truncated_normal(u: np.ndarray, a: np.ndarray) -> np.ndarray:
    """z ~ N(0, 1) conditioned on z > a, by inverse CDF of the uniforms ``u`` (monotone in u).  Where the
    cut is below the bulk (a < 0) z = ndtri(Phi(a) + u (1 - Phi(a))), which is ndtri(u) itself once
    Phi(a) vanishes; above it, the upper tail's form z = -ndtri((1 - u) Phi(-a)) keeps its precision."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = special.ndtr(a)
        below = special.ndtri(lo + u * (1.0 - lo))
        above = -special.ndtri((1.0 - u) * special.ndtr(-a))
    z = np.where(a < 0, below, above)
    # a cut ~38 sd above a component (Phi(-a) underflows): the tail's exponential limit, z - a ~ Exp(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        far = a - np.log1p(-u) / np.maximum(a, 1.0)
    return np.where(np.isfinite(z), np.maximum(z, a), far)


def sample_mixture(weights: np.ndarray, means: np.ndarray, chol: np.ndarray, ids: np.ndarray,
                   seed: int, lower: float | None = None) -> np.ndarray:
    """One draw [N, D] per halo from its Gaussian mixture, a function of (``seed``, ``id``) only.

    Position 0 of the halo's uniform sequence picks the component (inverse CDF over the weights);
    positions 1..D give z = ndtri(u) and the draw is means[k] + chol[k] @ z.  Every step is row-wise
    with a fixed order of operations (the product is spelled out, not left to BLAS, whose summation
    order may change with the batch's size and alignment), so a halo's draw is bit-identical whatever
    batch, order or chunk it is drawn in.  Units: those of ``means``.

    ``lower``: draw from the mixture conditioned on property 0 > ``lower`` (the selection the training
    catalog was made with): the component is picked with ``truncated_weights`` and z_0 from the
    truncated standard normal (z_0 > (lower - mu_k0) / L_k00, by inverse CDF of the same uniform), so
    property 0 = mu_k0 + L_k00 z_0 lies above the cut and the other properties follow their conditional
    law given it, with no rejection loop and the same uniforms.
    """
    if lower is not None:
        weights = truncated_weights(weights, means, chol, lower)
    w, mu, L = _check_mixture(weights, means, chol)
    ids = _as_counter(ids)
    n, k, d = mu.shape
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} halos")
    if n == 0:
        return np.zeros((0, d))
    u = philox_uniforms(seed, ids, 1 + d)
    cdf = np.cumsum(w, axis=1)
    # scaled by the total so that weights summing to 1 - 1e-16 cannot leave u above the last edge;
    # the chosen k has cdf[k-1] < t <= cdf[k], so a zero-weight component is never picked
    t = u[:, 0] * cdf[:, -1]
    comp = np.minimum(np.sum(cdf < t[:, None], axis=1), k - 1)
    rows = np.arange(n)
    m, lk = mu[rows, comp], L[rows, comp]
    z = special.ndtri(u[:, 1:])
    if lower is not None:
        z[:, 0] = _truncated_normal(u[:, 1], (float(lower) - m[:, 0]) / np.abs(lk[:, 0, 0]))
    out = np.empty((n, d))
    for i in range(d):
        acc = m[:, i] + lk[:, i, 0] * z[:, 0]
        for j in range(1, i + 1):
            acc = acc + lk[:, i, j] * z[:, j]
        out[:, i] = acc
    if lower is not None:  # rounding of mu + L z at a cut far in a component's tail: keep it strictly above
        out[:, 0] = np.maximum(out[:, 0], np.nextafter(float(lower), np.inf))
    return out


def mixture_logpdf(weights: np.ndarray, means: np.ndarray, chol: np.ndarray, y: np.ndarray,
                   lower: float | None = None) -> np.ndarray:
    """Joint log density [N] of ``y`` [N, D] under each halo's mixture (nats, in the units of ``y``):
    log sum_k w_k N(y; mu_k, L_k L_k^T), by forward substitution and log-sum-exp.  ``lower``: the density
    of the mixture conditioned on property 0 > ``lower`` (minus ``log_prob_above``; -inf below the cut)."""
    w, mu, L = _check_mixture(weights, means, chol)
    if lower is not None:
        y = np.asarray(y, dtype=np.float64)
        out = mixture_logpdf(w, mu, L, y) - log_prob_above(w, mu, L, lower)
        return np.where(y[:, 0] > lower, out, -np.inf)
    y = np.asarray(y, dtype=np.float64)
    d = mu.shape[2]
    r = y[:, None, :] - mu
    z = np.empty_like(r)
    for i in range(d):
        acc = r[:, :, i]
        for j in range(i):
            acc = acc - L[:, :, i, j] * z[:, :, j]
        z[:, :, i] = acc / L[:, :, i, i]
    diag = np.diagonal(L, axis1=2, axis2=3)
    with np.errstate(divide="ignore"):  # a zero weight is a -inf term, which log-sum-exp handles
        logw = np.log(w)
    comp = logw - 0.5 * np.sum(z * z, axis=2) - np.sum(np.log(diag), axis=2) - 0.5 * d * _LOG_2PI
    return special.logsumexp(comp, axis=1)


def _survival_sum(w: np.ndarray, m: np.ndarray, s: np.ndarray, x) -> np.ndarray:
    """sum_k w_k P(Y_k > x) over the last axis of 1-D Gaussian components (means ``m``, sds ``s``): the
    mixture's survival function times its total weight (callers divide by that, or by another survival)."""
    return np.sum(w * special.ndtr((m - x) / s), axis=-1)


def mixture_cdf(weights: np.ndarray, means_d: np.ndarray, sds_d: np.ndarray, x: np.ndarray,
                lower: float | None = None) -> np.ndarray:
    """CDF of 1-D Gaussian mixtures (weights, means, sds [N, K]) at ``x`` [N] or [N, L] -> same shape.
    ``lower``: the CDF of the mixture conditioned on exceeding it, (S(lower) - S(x)) / S(lower) with S the
    survival function (0 at and below the cut)."""
    w, m, s = (np.asarray(a, dtype=np.float64) for a in (weights, means_d, sds_d))
    x = np.asarray(x, dtype=np.float64)
    xs = x[..., None] if x.ndim == 2 else x[:, None]
    if x.ndim == 2:
        w, m, s = w[:, None, :], m[:, None, :], s[:, None, :]
    if lower is None:
        return np.sum(w * special.ndtr((xs - m) / s), axis=-1) / np.sum(w, axis=-1)
    s_cut = _survival_sum(w, m, s, lower)
    s_x = _survival_sum(w, m, s, np.maximum(xs, lower))
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.clip(np.where(s_cut > 0, (s_cut - s_x) / s_cut, 1.0), 0.0, 1.0)
    return np.where(x > lower, f, 0.0)


def marginal_quantiles(weights: np.ndarray, means_d: np.ndarray, sds_d: np.ndarray, levels,
                       tol: float = 1e-10, max_iter: int = 200) -> np.ndarray:
    """Quantiles [N, L] of 1-D Gaussian mixtures (weights, means, sds [N, K]) at ``levels`` in (0, 1),
    [L] for every row or [N, L] per row.

    Safeguarded Newton: the mixture CDF is a weighted mean of its components' CDFs, so the quantile
    lies between the smallest and the largest component quantile at that level, a bracket that is
    kept and bisected whenever a Newton step would leave it (flat CDF between distant components).
    Converged to ``tol`` in the units of the means (1e-10 by default), then made non-decreasing in
    level (ties at 1e-10 could otherwise reverse two nearly equal levels).
    """
    w, m, s = (np.asarray(a, dtype=np.float64) for a in (weights, means_d, sds_d))
    p = np.asarray(levels, dtype=np.float64)
    p = p.reshape(-1) if p.ndim < 2 else p
    if np.any(~(p > 0) | ~(p < 1)):
        raise ValueError("levels must lie strictly inside (0, 1)")
    w = w / np.sum(w, axis=1, keepdims=True)
    n, L = w.shape[0], p.shape[-1]
    zq = special.ndtri(p)  # [L] or [N, L]
    comp_q = m[:, None, :] + s[:, None, :] * np.atleast_2d(zq)[:, :, None]  # [N, L, K]
    # zero-weight components do not bound the quantile
    live = (w > 0)[:, None, :]
    lo = np.min(np.where(live, comp_q, np.inf), axis=2).reshape(-1)
    hi = np.max(np.where(live, comp_q, -np.inf), axis=2).reshape(-1)
    # start from the weight-averaged component quantile: exact for one component
    x = (np.sum(w[:, None, :] * comp_q, axis=2)).reshape(-1)
    target = np.broadcast_to(p, (n, L)).reshape(-1)
    row = np.repeat(np.arange(n), L)
    todo = np.flatnonzero(hi - lo > tol)
    x[hi - lo <= tol] = (0.5 * (lo + hi))[hi - lo <= tol]
    for _ in range(max_iter):
        if todo.size == 0:
            break
        r = row[todo]
        xt = x[todo]
        zz = (xt[:, None] - m[r]) / s[r]
        f = np.sum(w[r] * special.ndtr(zz), axis=1) - target[todo]
        dens = np.sum(w[r] * np.exp(-0.5 * zz * zz) / s[r], axis=1) / np.sqrt(2 * np.pi)
        below = f < 0
        lo[todo] = np.where(below, xt, lo[todo])
        hi[todo] = np.where(below, hi[todo], xt)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # flat CDF: bisect instead
            step = f / dens
        new = xt - step
        bad = ~np.isfinite(new) | (new <= lo[todo]) | (new >= hi[todo])
        new = np.where(bad, 0.5 * (lo[todo] + hi[todo]), new)
        x[todo] = new
        done = (np.abs(new - xt) <= tol) | (hi[todo] - lo[todo] <= tol) | (f == 0)
        x[todo[(f == 0)]] = xt[f == 0]
        todo = todo[~done]
    if todo.size:
        raise RuntimeError(f"quantiles did not converge for {todo.size} (halo, level) pairs")
    q = x.reshape(n, L)
    if n == 0:
        return np.zeros((0, L))
    order = np.argsort(p if p.ndim == 1 else p[0], kind="stable")  # per-row levels share one order
    q[:, order] = np.maximum.accumulate(q[:, order], axis=1)
    return q


def mixture_quantiles(weights: np.ndarray, means: np.ndarray, chol: np.ndarray, levels,
                      lower: float | None = None) -> np.ndarray:
    """Quantiles [N, D, len(levels)] of each property's marginal distribution (units of ``means``).

    The marginal of property d is the 1-D mixture (weights, means[:, :, d], sqrt((L L^T)[d, d])).
    ``lower`` (the mixture conditioned on property 0 > lower): property 0's quantiles are exact — the
    untruncated marginal's at upper-tail probability (1 - p) S(lower), solved on the reflected mixture
    so that a halo whose mixture lies mostly below the cut keeps its precision; the other properties'
    come from ``truncated_marginals`` (a moment-matched stand-in where a component straddles the cut).
    """
    w, mu, L = _check_mixture(weights, means, chol)
    levels = np.asarray(levels, dtype=np.float64).reshape(-1)
    out = np.empty((mu.shape[0], mu.shape[2], len(levels)))
    wt, md, sd = truncated_marginals(w, mu, L, lower)
    for d in range(mu.shape[2]):
        if d == 0 and lower is not None:
            s_cut = _survival_sum(w, mu[:, :, 0], sd[:, :, 0], lower) / np.sum(w, axis=1)
            t = np.clip((1.0 - levels[None, :]) * s_cut[:, None], np.nextafter(0.0, 1.0), np.nextafter(1.0, 0.0))
            q = -marginal_quantiles(w, -mu[:, :, 0], sd[:, :, 0], t)
            out[:, 0, :] = np.maximum(q, np.nextafter(float(lower), np.inf))
        else:
            out[:, d, :] = marginal_quantiles(wt, md[:, :, d], sd[:, :, d], levels)
    return out


# ----------------------------------------------------------------------------- scores


def crps_gaussian(mu: np.ndarray, sigma: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS of N(mu, sigma^2) for outcomes ``y`` (Gneiting & Raftery 2007; units of ``y``): the score of
    a homoscedastic baseline (the stack's prediction with its residual scatter)."""
    mu, sigma, y = (np.asarray(a, dtype=np.float64) for a in (mu, sigma, y))
    z = (y - mu) / sigma
    return sigma * (z * (2.0 * special.ndtr(z) - 1.0) + 2.0 * _phi(z) - 1.0 / np.sqrt(np.pi))


def _phi(z):
    return np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)


def _a(mu, var):
    """E|X| for X ~ N(mu, var)."""
    s = np.sqrt(var)
    return 2.0 * s * _phi(mu / s) + mu * (2.0 * special.ndtr(mu / s) - 1.0)


def crps_mixture(weights: np.ndarray, means_d: np.ndarray, sds_d: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Closed-form CRPS [N] of 1-D Gaussian mixtures (weights, means, sds [N, K]) for outcomes ``y`` [N]
    (Grimit et al. 2006): sum_k w_k A(y - mu_k, s_k^2) - 1/2 sum_kl w_k w_l A(mu_k - mu_l, s_k^2 + s_l^2),
    with A(m, v) = E|N(m, v)|.  Units of ``y``."""
    w, m, s = (np.asarray(a, dtype=np.float64) for a in (weights, means_d, sds_d))
    w = w / np.sum(w, axis=1, keepdims=True)
    y = np.asarray(y, dtype=np.float64)
    v = s * s
    first = np.sum(w * _a(y[:, None] - m, v), axis=1)
    pair = _a(m[:, :, None] - m[:, None, :], v[:, :, None] + v[:, None, :])
    second = np.einsum("nk,nkl,nl->n", w, pair, w)
    return first - 0.5 * second


def crps_truncated_mixture(weights: np.ndarray, means_d: np.ndarray, sds_d: np.ndarray, y: np.ndarray,
                           lower: float, nodes: int = 64, chunk: int = 4096) -> np.ndarray:
    """CRPS [N] of 1-D Gaussian mixtures (weights, means, sds [N, K]) conditioned on exceeding ``lower``,
    for outcomes ``y`` [N] above it: int (F(x) - 1[x >= y])^2 dx with F the truncated CDF (``mixture_cdf``),
    split at y into int_lower^y F^2 and int_y^top (1 - F)^2 (top: 12 sd beyond the highest component
    mean), each by ``nodes``-point Gauss-Legendre.  Rows whose mixture has (numerically) nothing below
    the cut take the closed form (``crps_mixture``).  The quadrature resolves components down to ~1/20
    of the integration range; narrower ones (near the Cholesky floor) are scored to ~1 %."""
    w, m, s = (np.asarray(a, dtype=np.float64) for a in (weights, means_d, sds_d))
    y = np.asarray(y, dtype=np.float64)
    out = crps_mixture(w, m, s, y)
    below = np.sum(w * special.ndtr((lower - m) / s), axis=1) / np.sum(w, axis=1)
    rows = np.flatnonzero((below > 1e-12) & (y > lower))
    t, gw = np.polynomial.legendre.leggauss(nodes)
    t, gw = 0.5 * (t + 1.0), 0.5 * gw  # on [0, 1]
    for start in range(0, len(rows), chunk):
        r = rows[start:start + chunk]
        yr = y[r]
        top = np.maximum(np.max(m[r] + 12.0 * s[r], axis=1), yr + 1e-12)
        a = lower + (yr - lower)[:, None] * t[None, :]  # [n, nodes] on [lower, y]
        b = yr[:, None] + (top - yr)[:, None] * t[None, :]  # on [y, top]
        fa = mixture_cdf(w[r], m[r], s[r], a, lower)
        fb = mixture_cdf(w[r], m[r], s[r], b, lower)
        out[r] = (yr - lower) * ((fa * fa) @ gw) + (top - yr) * (((1.0 - fb) ** 2) @ gw)
    return out


def crps_ensemble(samples: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS [N] of the empirical distribution of ``samples`` [S, N] for outcomes ``y`` [N]:
    E|X - y| - 1/2 E|X - X'| over the S draws (the plain, not the "fair" S/(S-1), estimator), with
    E|X - X'| = 2/S^2 sum_i (2i - S - 1) x_(i) from the sorted draws (O(S log S), not O(S^2))."""
    x = np.sort(np.asarray(samples, dtype=np.float64), axis=0)
    y = np.asarray(y, dtype=np.float64)
    S = x.shape[0]
    first = np.mean(np.abs(x - y[None, :]), axis=0)
    coef = (2.0 * np.arange(1, S + 1) - S - 1.0)[:, None]
    spread = 2.0 / S**2 * np.sum(coef * x, axis=0)
    return first - 0.5 * spread
