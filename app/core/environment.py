"""Halo environment: Delta3_h, the number overdensity of tracers within 3 Mpc/h (periodic box).

Delta3 = N(< r) / (n_mean 4/3 pi r^3), with the centre itself not counted when it is one of the
tracers (the paper's definition with subhaloes as tracers; N-body users often have haloes only).
Positions and lengths in Mpc/h.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.spatial import cKDTree

DELTA3_RADIUS = 3.0  # Mpc/h


def delta3(centres: np.ndarray, tracers: np.ndarray, box: float, radius: float = DELTA3_RADIUS,
           exclude_self: bool = True) -> np.ndarray:
    """Number of ``tracers`` within ``radius`` of each centre over the mean expectation (one tree)."""
    tree = cKDTree(np.mod(tracers, box), boxsize=box)
    counts = tree.query_ball_point(np.mod(centres, box), r=radius, return_length=True, workers=-1)
    counts = counts.astype(np.float64) - (1.0 if exclude_self else 0.0)
    return counts / (len(tracers) * (4.0 / 3.0) * np.pi * radius**3 / box**3)


def delta3_slabs(positions: np.ndarray, box: float, radius: float = DELTA3_RADIUS, n_slabs: int = 8,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``delta3(positions, positions, box)`` computed slab by slab along x, each slab's tree holding its
    haloes plus those within ``radius`` of its faces (periodic): the same counts as one global tree,
    with memory for one slab and its margins only."""
    pos = np.mod(np.asarray(positions, dtype=np.float64), box)
    n = len(pos)
    if n == 0:
        return np.zeros(0)
    n_slabs = max(1, min(n_slabs, int(box // (2 * radius))))
    edges = np.linspace(0.0, box, n_slabs + 1)
    counts = np.empty(n)
    x = pos[:, 0]
    for i in range(n_slabs):
        lo, hi = edges[i], edges[i + 1]
        own = np.flatnonzero((x >= lo) & (x < hi)) if i < n_slabs - 1 else np.flatnonzero(x >= lo)
        # tracers: the slab widened by the radius on both sides, wrapping around the box
        d_lo = np.mod(x - (lo - radius), box)
        near = np.flatnonzero(d_lo <= (hi - lo) + 2 * radius) if n_slabs > 1 else np.arange(n)
        if len(own):
            tree = cKDTree(pos[near], boxsize=box)
            counts[own] = tree.query_ball_point(pos[own], r=radius, return_length=True, workers=-1)
        if progress:
            progress(i + 1, n_slabs)
    expected = n * (4.0 / 3.0) * np.pi * radius**3 / box**3
    return (counts - 1.0) / expected
