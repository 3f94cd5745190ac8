"""FFT power spectra of point catalogs in a periodic box.

Pure functions on arrays.  Units: positions and box in Mpc/h, k in h/Mpc, P(k) in (Mpc/h)^3.

Conventions: the density contrast on the mesh is delta = n / n_mean - 1, its discrete Fourier
transform is divided by Nmesh^3, and P(k) = V <|delta_k|^2>.  The mass-assignment window of
order p (1 NGP, 2 CIC, 3 TSC, 4 PCS) is deconvolved (W(k) = prod_i sinc(k_i H / 2)^p), and
interlacing (Sefusatti et al. 2016) averages two meshes shifted by half a cell to cancel the
odd aliasing images.  Shot noise V/N is reported and, on request, subtracted.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import scipy.fft

SCHEMES: dict[str, int] = {"ngp": 1, "cic": 2, "tsc": 3, "pcs": 4}


@dataclass
class PowerSpectrum:
    """A binned power spectrum.

    ``k`` is the mean |k| of the modes in each bin [h/Mpc]; ``power`` [(Mpc/h)^3] is shot-noise
    subtracted only if ``shot_noise_subtracted``; ``modes`` counts independent Fourier modes
    (both halves of the complex plane counted, as in nbodykit and Pylians).
    """

    k: np.ndarray
    power: np.ndarray
    modes: np.ndarray
    k_edges: np.ndarray
    shot_noise: float
    shot_noise_subtracted: bool
    box: float
    nmesh: int
    scheme: str
    interlaced: bool
    n_objects: float
    meta: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "k": self.k.tolist(), "power": self.power.tolist(), "modes": self.modes.tolist(),
            "k_edges": self.k_edges.tolist(), "shot_noise": self.shot_noise,
            "shot_noise_subtracted": self.shot_noise_subtracted, "box": self.box, "nmesh": self.nmesh,
            "scheme": self.scheme, "interlaced": self.interlaced, "n_objects": self.n_objects, **self.meta,
        }


def _scheme_order(scheme: str) -> int:
    try:
        return SCHEMES[scheme.lower()]
    except KeyError:
        raise ValueError(f"scheme must be one of {sorted(SCHEMES)}, got {scheme!r}") from None


def _axis_weights(u: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell indices (not wrapped) and weights along one axis; u = position / cell size.

    Returns arrays of shape (order, n).  Cell j holds values at its centre j + 1/2.
    """
    if order == 1:
        return np.floor(u)[None, :].astype(np.int64), np.ones((1, u.size))
    if order == 2:
        s = u - 0.5
        i0 = np.floor(s)
        d = s - i0
        return np.stack([i0, i0 + 1]).astype(np.int64), np.stack([1.0 - d, d])
    if order == 3:
        ic = np.floor(u)  # nearest cell centre is ic + 1/2
        d = u - (ic + 0.5)
        w = np.stack([0.5 * (0.5 - d) ** 2, 0.75 - d**2, 0.5 * (0.5 + d) ** 2])
        return np.stack([ic - 1, ic, ic + 1]).astype(np.int64), w
    s = u - 0.5
    i0 = np.floor(s)
    d = s - i0  # in [0, 1); cells i0-1, i0, i0+1, i0+2 at distances 1+d, d, 1-d, 2-d
    w = np.stack([
        (1.0 - d) ** 3 / 6.0,
        (4.0 - 6.0 * d**2 + 3.0 * d**3) / 6.0,
        (4.0 - 6.0 * (1.0 - d) ** 2 + 3.0 * (1.0 - d) ** 3) / 6.0,
        d**3 / 6.0,
    ])
    return np.stack([i0 - 1, i0, i0 + 1, i0 + 2]).astype(np.int64), w


def assign_to_mesh(positions: np.ndarray, box: float, nmesh: int, scheme: str = "cic",
                   weights: np.ndarray | None = None, shift: float = 0.0,
                   chunk_size: int = 1 << 19, out: np.ndarray | None = None) -> np.ndarray:
    """Deposit particles on an ``nmesh^3`` periodic mesh (float64), in chunks of ``chunk_size``.

    ``shift`` (in cells) displaces every particle before assignment (0.5 for interlacing).
    Memory: the mesh, one mesh-sized bincount result and ``16 order^3 chunk_size`` bytes of index and
    weight temporaries per chunk, whatever the number of particles.
    """
    order = _scheme_order(scheme)
    pos = np.asarray(positions)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError("positions must have shape (N, 3)")
    mesh = np.zeros(nmesh**3) if out is None else out.reshape(-1)
    cell = box / nmesh
    for start in range(0, len(pos), chunk_size):
        p = np.asarray(pos[start:start + chunk_size], dtype=np.float64)
        w = None if weights is None else np.asarray(weights[start:start + chunk_size], dtype=np.float64)
        idx, wt = zip(*(_axis_weights(p[:, a] / cell + shift, order) for a in range(3)))
        # all order^3 neighbour cells of the chunk at once
        flat = ((idx[0] % nmesh)[:, None, None, :] * nmesh
                + (idx[1] % nmesh)[None, :, None, :]) * nmesh + (idx[2] % nmesh)[None, None, :, :]
        wts = wt[0][:, None, None, :] * wt[1][None, :, None, :] * wt[2][None, None, :, :]
        if w is not None:
            wts = wts * w
        if flat.size * 4 < mesh.size:  # sparse: scatter-add, no mesh-sized temporary
            np.add.at(mesh, flat.ravel(), wts.ravel())
        else:
            mesh += np.bincount(flat.ravel(), weights=wts.ravel(), minlength=nmesh**3)
    return mesh.reshape(nmesh, nmesh, nmesh)


def fourier_axes(nmesh: int, box: float) -> tuple[np.ndarray, np.ndarray]:
    """Wavenumbers [h/Mpc] along a full axis (``fftfreq``) and the halved last axis (``rfftfreq``)."""
    kf = 2.0 * np.pi / box
    return np.fft.fftfreq(nmesh, d=1.0 / nmesh) * kf, np.fft.rfftfreq(nmesh, d=1.0 / nmesh) * kf


def _window_1d(nmesh: int, box: float, order: int) -> tuple[np.ndarray, np.ndarray]:
    """The assignment window along a full axis and along the halved last axis (it is separable)."""
    kx, kz = fourier_axes(nmesh, box)
    h = box / nmesh
    return np.sinc(kx * h / (2.0 * np.pi)) ** order, np.sinc(kz * h / (2.0 * np.pi)) ** order


def _scale_separable(field: np.ndarray, fx: np.ndarray, fz: np.ndarray) -> None:
    """field *= fx[i] fx[j] fz[l], in place and without a mesh-sized temporary."""
    field *= fx[:, None, None]
    field *= fx[None, :, None]
    field *= fz[None, None, :]


def density_field_k(positions: np.ndarray, box: float, nmesh: int = 256, scheme: str = "tsc",
                    interlacing: bool = True, weights: np.ndarray | None = None,
                    compensate: bool = True, chunk_size: int = 1 << 19,
                    workers: int = -1) -> tuple[np.ndarray, float]:
    """Fourier-space density contrast delta_k (rfft layout, divided by Nmesh^3) and N (sum of weights)."""
    order = _scheme_order(scheme)
    pos = np.asarray(positions)
    total = float(len(pos) if weights is None else np.sum(weights))
    if total <= 0:
        raise ValueError("no objects to assign (empty catalog or zero total weight)")
    mesh = assign_to_mesh(pos, box, nmesh, scheme, weights, chunk_size=chunk_size)
    mesh *= nmesh**3 / total
    mesh -= 1.0
    delta = scipy.fft.rfftn(mesh, workers=workers)
    if interlacing:
        mesh[...] = 0.0
        assign_to_mesh(pos, box, nmesh, scheme, weights, shift=0.5, chunk_size=chunk_size, out=mesh)
        mesh *= nmesh**3 / total
        mesh -= 1.0
        delta2 = scipy.fft.rfftn(mesh, workers=workers)
        kx, kz = fourier_axes(nmesh, box)
        half = 0.5 * box / nmesh
        # particles were deposited at x + H/2, so delta2_k = delta_k exp(-i k.H/2): undo the shift
        _scale_separable(delta2, np.exp(1j * half * kx), np.exp(1j * half * kz))
        delta += delta2
        delta *= 0.5
        del delta2
    del mesh
    delta /= nmesh**3
    if compensate:
        wx, wz = _window_1d(nmesh, box, order)
        _scale_separable(delta, 1.0 / wx, 1.0 / wz)
    return delta, total


def default_k_edges(box: float, nmesh: int, nbins: int = 22, kmax: float | None = None,
                    log: bool = False) -> np.ndarray:
    """Bin edges [h/Mpc]: ``nbins`` bins from k_f/2 to ``kmax`` (default k_Nyq/2, as in the paper).

    Linear bins are never narrower than the fundamental frequency k_f = 2 pi / box (fewer bins are
    made on coarse meshes), so that no bin is empty.
    """
    kf = 2.0 * np.pi / box
    knyq = np.pi * nmesh / box
    kmax = 0.5 * knyq if kmax is None else float(kmax)
    if kmax <= kf:
        raise ValueError(f"kmax={kmax:g} h/Mpc is below the fundamental frequency {kf:g} h/Mpc of the box")
    if log:
        return np.geomspace(kf, kmax, nbins + 1)
    nbins = max(1, min(nbins, int((kmax - 0.5 * kf) / kf)))
    return np.linspace(0.5 * kf, kmax, nbins + 1)


@functools.lru_cache(maxsize=2)
def _bin_layout(nmesh: int, box: float, edges: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin index of every rfft mode (``len(edges) - 1`` = outside), mean |k| and mode count per bin."""
    kx, kz = fourier_axes(nmesh, box)
    kmag = np.sqrt(kx[:, None, None] ** 2 + kx[None, :, None] ** 2 + kz[None, None, :] ** 2).ravel()
    nb = len(edges) - 1
    which = np.digitize(kmag, np.asarray(edges)) - 1
    which[(which < 0) | (which >= nb) | (kmag == 0)] = nb
    which = which.astype(np.int32)
    mult = np.broadcast_to(_rfft_multiplicity(nmesh)[None, None, :], (nmesh, nmesh, len(kz))).ravel()
    modes = np.bincount(which, weights=mult, minlength=nb + 1)[:nb]
    ksum = np.bincount(which, weights=mult * kmag, minlength=nb + 1)[:nb]
    with np.errstate(invalid="ignore", divide="ignore"):
        return which, ksum / modes, modes


def _rfft_multiplicity(nmesh: int) -> np.ndarray:
    """rfft stores half the modes: planes kz=0 and kz=Nyquist once, the others stand for two modes."""
    mult = np.full(nmesh // 2 + 1, 2.0)
    mult[0] = 1.0
    if nmesh % 2 == 0:
        mult[-1] = 1.0
    return mult


def _bin(values: np.ndarray, nmesh: int, box: float, edges: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mode-weighted bin averages of ``values`` (rfft layout): mean |k|, mean value, mode count."""
    which, kmean, modes = _bin_layout(nmesh, float(box), tuple(float(e) for e in edges))
    nb = len(edges) - 1
    weighted = (values * _rfft_multiplicity(nmesh)[None, None, :]).ravel()
    psum = np.bincount(which, weights=weighted, minlength=nb + 1)[:nb]
    with np.errstate(invalid="ignore", divide="ignore"):
        return kmean, psum / modes, modes


def power_spectrum(positions: np.ndarray, box: float, nmesh: int = 256, scheme: str = "tsc",
                   interlacing: bool = True, k_edges: np.ndarray | None = None, nbins: int = 22,
                   kmax: float | None = None, log_bins: bool = False, subtract_shot_noise: bool = False,
                   weights: np.ndarray | None = None, positions2: np.ndarray | None = None,
                   weights2: np.ndarray | None = None, chunk_size: int = 1 << 19,
                   backend: str = "builtin") -> PowerSpectrum:
    """Auto power spectrum of ``positions`` or, with ``positions2``, their cross spectrum.

    Positions are wrapped into [0, box).  Shot noise is V/N for an auto spectrum (V sum w^2 /
    (sum w)^2 with weights) and zero for a cross spectrum of distinct catalogs.
    ``backend="nbodykit"`` runs nbodykit's ``FFTPower`` instead (MPI-parallel when launched under
    mpirun; linear bins only); ``"auto"`` picks it when nbodykit is importable.
    """
    if box <= 0:
        raise ValueError("box must be positive")
    pos = np.mod(np.asarray(positions, dtype=np.float64), box)
    edges = default_k_edges(box, nmesh, nbins, kmax, log_bins) if k_edges is None else np.asarray(k_edges, float)
    if backend == "auto":
        backend = "nbodykit" if nbodykit_available() else "builtin"
    if backend == "nbodykit":
        return _nbodykit_power(pos, box, nmesh, scheme, interlacing, edges, subtract_shot_noise, weights,
                               None if positions2 is None else np.mod(np.asarray(positions2, float), box), weights2)
    if backend != "builtin":
        raise ValueError(f"backend must be 'builtin', 'nbodykit' or 'auto', got {backend!r}")
    d1, n1 = density_field_k(pos, box, nmesh, scheme, interlacing, weights, chunk_size=chunk_size)
    volume = box**3
    if positions2 is None:
        values = volume * (d1.real**2 + d1.imag**2)
        if weights is None:
            shot = volume / n1
        else:
            shot = volume * float(np.sum(np.square(weights))) / n1**2
    else:
        pos2 = np.mod(np.asarray(positions2, dtype=np.float64), box)
        d2, _ = density_field_k(pos2, box, nmesh, scheme, interlacing, weights2, chunk_size=chunk_size)
        values = volume * (d1 * d2.conj()).real
        shot = 0.0
    k, p, modes = _bin(values, nmesh, box, edges)
    if subtract_shot_noise:
        p = p - shot
    return PowerSpectrum(k=k, power=p, modes=modes, k_edges=edges, shot_noise=shot,
                         shot_noise_subtracted=subtract_shot_noise, box=box, nmesh=nmesh,
                         scheme=scheme.lower(), interlaced=interlacing, n_objects=n1)


def nbodykit_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("nbodykit") is not None


def _nbodykit_power(pos: np.ndarray, box: float, nmesh: int, scheme: str, interlacing: bool, edges: np.ndarray,
                    subtract_shot_noise: bool, weights: np.ndarray | None, pos2: np.ndarray | None,
                    weights2: np.ndarray | None) -> PowerSpectrum:
    """The same measurement through nbodykit (``ArrayCatalog.to_mesh`` + ``FFTPower``, mode 1d)."""
    try:
        from nbodykit.lab import ArrayCatalog, FFTPower
    except ImportError:
        raise ValueError("the nbodykit backend needs nbodykit (pip install 'galaxypaint[nbodykit]')") from None
    _scheme_order(scheme)
    dk = np.diff(edges)
    if not np.allclose(dk, dk[0]):
        raise ValueError("the nbodykit backend supports linear k bins only")

    def mesh_of(p: np.ndarray, w: np.ndarray | None):
        data = {"Position": p, "Weight": np.ones(len(p)) if w is None else np.asarray(w, float)}
        return ArrayCatalog(data, BoxSize=box).to_mesh(Nmesh=nmesh, BoxSize=box, resampler=scheme.lower(),
                                                       interlaced=interlacing, compensated=True, weight="Weight")

    second = None if pos2 is None else mesh_of(pos2, weights2)
    result = FFTPower(mesh_of(pos, weights), mode="1d", second=second, dk=float(dk[0]), kmin=float(edges[0]))
    table = result.power
    nb = len(edges) - 1
    k = np.asarray(table["k"])[:nb]
    power = np.asarray(table["power"].real)[:nb]
    modes = np.asarray(table["modes"], dtype=float)[:nb]
    shot = float(table.attrs.get("shotnoise", 0.0)) if pos2 is None else 0.0
    if subtract_shot_noise:
        power = power - shot
    total = float(len(pos) if weights is None else np.sum(weights))
    return PowerSpectrum(k=k, power=power, modes=modes, k_edges=edges, shot_noise=shot,
                         shot_noise_subtracted=subtract_shot_noise, box=box, nmesh=nmesh, scheme=scheme.lower(),
                         interlaced=interlacing, n_objects=total, meta={"backend": "nbodykit"})


def gaussian_error(power: np.ndarray, k_edges: np.ndarray, box: float,
                   number_density: float) -> np.ndarray:
    """1-sigma Gaussian error of P(k) as in the paper: sigma^2/P^2 = 2/(V_k V) ((1 + nP)/(nP))^2.

    ``power`` is the shot-noise-subtracted signal P [(Mpc/h)^3] and ``number_density`` n in
    (Mpc/h)^-3, so that sigma = sqrt(2 / (V_k V)) (P + 1/n) (finite where P crosses zero);
    V_k = 4 pi k^2 dk / (2 pi)^3 is the shell volume in k-space (k the bin centre).
    """
    if number_density <= 0:
        raise ValueError("number_density must be positive")
    kc = 0.5 * (k_edges[1:] + k_edges[:-1])
    dk = np.diff(k_edges)
    vk = 4.0 * np.pi * kc**2 * dk / (2.0 * np.pi) ** 3
    return np.sqrt(2.0 / (vk * box**3)) * np.abs(np.asarray(power, dtype=float) + 1.0 / number_density)
