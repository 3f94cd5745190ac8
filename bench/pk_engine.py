"""P(k) engine: ours vs Pylians (Pk_library), time and accuracy, side by side.

    python bench/pk_engine.py [--threads 2]

Time: the built-in catalog's 174,527 galaxies at Nmesh 256 and 512 — Pylians CIC (MA + Pk),
ours CIC without interlacing (like for like) and ours TSC + interlacing (our default); the first
call of ours at a mesh size also builds the cached bin layout, so the second call is reported too.
Accuracy: a catalog of ~2.1M particles on the sites of a 512^3 lattice with lognormal-Poisson
counts, whose exact P(k) is the FFT of the counts (no assignment, no aliasing): max and rms
relative error for k <= 0.5 k_Nyq(256), ours TSC+interlacing at 256^3 vs Pylians CIC at 512^3.
Goals and past figures: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from app.science.power_spectrum import _bin, power_spectrum


def _pylians(pos: np.ndarray, box: float, nmesh: int, scheme: str, threads: int):
    import MAS_library as masl
    import Pk_library as pkl

    t0 = time.perf_counter()
    mesh = np.zeros((nmesh,) * 3, np.float32)
    masl.MA(pos.astype(np.float32), mesh, box, scheme, verbose=False)
    mesh /= mesh.mean()
    mesh -= 1.0
    pk = pkl.Pk(mesh, box, 0, scheme, threads, False)
    return time.perf_counter() - t0, pk


def lattice_catalog(fine: int, box: float, mean_per_cell: float, seed: int = 0):
    """Particles on lattice sites with lognormal-Poisson counts, and their exact per-mode P(k)."""
    rng = np.random.default_rng(seed)
    kx = np.fft.fftfreq(fine, d=box / fine) * 2 * np.pi
    kz = np.fft.rfftfreq(fine, d=box / fine) * 2 * np.pi
    kmag = np.sqrt(kx[:, None, None] ** 2 + kx[None, :, None] ** 2 + kz[None, None, :] ** 2)
    amp = np.zeros_like(kmag)
    amp[kmag > 0] = np.sqrt(2000.0 * (kmag[kmag > 0] / 0.05) ** -1.5 * box**3) / fine**3
    del kmag
    g = np.fft.irfftn(amp * np.exp(2j * np.pi * rng.random(amp.shape)), s=(fine,) * 3, axes=(0, 1, 2)) * fine**3
    del amp
    g *= 0.8 / g.std()
    counts = rng.poisson(mean_per_cell * np.exp(g - g.var() / 2))
    del g
    cell = box / fine
    sites = np.flatnonzero(counts)
    grid = (np.stack(np.unravel_index(sites, counts.shape), axis=1) + 0.5) * cell
    pos = np.repeat(grid, counts.ravel()[sites], axis=0)
    delta_k = np.fft.rfftn(counts / counts.mean() - 1.0) / fine**3
    return pos, box**3 * np.abs(delta_k) ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from training.demo_catalog import make_demo_catalog

    box = 205.0
    pos = make_demo_catalog(seed=42)[["x", "y", "z"]].to_numpy()
    print(f"time, {len(pos):,} objects, box {box:g} Mpc/h")
    print("nmesh  Pylians CIC s  ours CIC s  ours TSC+interlacing s (first / cached)")
    for nmesh in (256, 512):
        t_py, _ = _pylians(pos, box, nmesh, "CIC", args.threads)
        t0 = time.perf_counter()
        power_spectrum(pos, box, nmesh, "cic", interlacing=False)
        t_cic = time.perf_counter() - t0
        t0 = time.perf_counter()
        power_spectrum(pos, box, nmesh, "tsc", interlacing=True)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        power_spectrum(pos, box, nmesh, "tsc", interlacing=True)
        t_tsc = time.perf_counter() - t0
        print(f"{nmesh:5d}  {t_py:13.2f}  {t_cic:10.2f}  {t_first:8.2f} / {t_tsc:.2f}   "
              f"(ours TSC+IL / Pylians CIC = {t_tsc / t_py:.2f})", flush=True)

    fine, lbox = 512, 400.0
    lat_pos, truth_modes = lattice_catalog(fine, lbox, mean_per_cell=2.1e6 / fine**3)
    kf = 2 * np.pi / lbox
    kmax = 0.5 * np.pi * 256 / lbox
    edges = kf * (np.arange(1, int(kmax / kf) + 1) - 1e-6)
    _, truth, _ = _bin(truth_modes, fine, lbox, edges)
    del truth_modes
    ours = power_spectrum(lat_pos, lbox, 256, "tsc", interlacing=True, k_edges=edges).power
    _, ref = _pylians(lat_pos, lbox, 512, "CIC", args.threads)
    ref_p = ref.Pk[: len(truth), 0]  # Pylians' bins are [i, i+1) k_f, i >= 1, as ours here
    e_ours, e_ref = ours / truth - 1, ref_p / truth - 1
    print(f"\naccuracy vs the exact P(k), {len(lat_pos):,} lattice particles, box {lbox:g} Mpc/h, "
          f"k <= {kmax:.3f} h/Mpc (0.5 k_Nyq of 256^3), {len(truth)} bins")
    print(f"ours TSC+interlacing 256^3: max |rel| {np.abs(e_ours).max():.2e}, rms {np.sqrt(np.mean(e_ours**2)):.2e}")
    print(f"Pylians CIC 512^3:          max |rel| {np.abs(e_ref).max():.2e}, rms {np.sqrt(np.mean(e_ref**2)):.2e}")


if __name__ == "__main__":
    main()
