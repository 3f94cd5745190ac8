"""Checks of the P(k) engine used by the catalog calibration (the full validation suite lives with the
clustering work: Gaussian-field recovery and the Pylians comparison)."""

from __future__ import annotations

import numpy as np
import pytest

from app.science.power_spectrum import SCHEMES, _axis_weights, assign_to_mesh, gaussian_error, power_spectrum


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_assignment_weights_conserve_mass_and_centre(order):
    u = np.random.default_rng(0).random(1000) * 50
    idx, w = _axis_weights(u, order)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    if order > 1:  # first moment: the weighted cell centres give back the position
        np.testing.assert_allclose((w * (idx + 0.5)).sum(axis=0), u, atol=1e-10)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_mesh_total_and_chunking(scheme):
    pos = np.random.default_rng(1).random((5000, 3)) * 100
    full = assign_to_mesh(pos, 100.0, 16, scheme)
    chunked = assign_to_mesh(pos, 100.0, 16, scheme, chunk_size=777)
    assert full.sum() == pytest.approx(5000)
    np.testing.assert_allclose(chunked, full, atol=1e-9)


@pytest.mark.parametrize("scheme,interlacing", [("cic", False), ("tsc", True), ("pcs", True)])
def test_poisson_randoms_have_shot_noise_power(scheme, interlacing):
    rng = np.random.default_rng(2)
    n, box = 100_000, 200.0
    ps = power_spectrum(rng.random((n, 3)) * box, box, nmesh=64, scheme=scheme, interlacing=interlacing)
    assert ps.shot_noise == pytest.approx(box**3 / n)
    ok = ps.modes > 50
    # each bin within 4 sigma of V/N (Gaussian error of a pure-noise field: P sqrt(2/modes))
    pull = (ps.power[ok] - ps.shot_noise) / (ps.shot_noise * np.sqrt(2.0 / ps.modes[ok]))
    assert np.all(np.abs(pull) < 4), pull
    assert abs(np.mean(ps.power[ok] / ps.shot_noise) - 1) < 0.02


def test_cross_spectrum_of_independent_randoms_is_zero_and_of_itself_is_auto():
    rng = np.random.default_rng(3)
    a, b = rng.random((50_000, 3)) * 100, rng.random((50_000, 3)) * 100
    cross = power_spectrum(a, 100.0, nmesh=32, positions2=b)
    auto = power_spectrum(a, 100.0, nmesh=32)
    same = power_spectrum(a, 100.0, nmesh=32, positions2=a)
    assert np.all(cross.modes > 0) and np.all(auto.modes > 0)
    # independent fields: Var[Re(d1 d2*)] averaged over a bin = P1 P2 / modes
    assert np.all(np.abs(cross.power) < 5 * auto.shot_noise / np.sqrt(cross.modes))
    np.testing.assert_allclose(same.power, auto.power, rtol=1e-10)


def test_paper_error_formula():
    edges = np.array([0.1, 0.2])
    p, n, box = np.array([1000.0]), 1e-3, 100.0
    vk = 4 * np.pi * 0.15**2 * 0.1 / (2 * np.pi) ** 3
    expected = 1000.0 * np.sqrt(2 / (vk * box**3)) * (1 + 1.0) / 1.0
    assert gaussian_error(p, edges, box, n)[0] == pytest.approx(expected)


def test_bad_scheme_is_named():
    with pytest.raises(ValueError, match="scheme must be one of"):
        power_spectrum(np.zeros((3, 3)), 10.0, nmesh=8, scheme="sph")


def _lattice_catalog(fine: int, box: float, mean_per_cell: float, seed: int):
    """Particles stacked at the centres of a fine lattice with lognormal-Poisson counts, and their exact P(k).

    Point masses on lattice sites have a discrete Fourier transform equal to the FFT of the counts for
    |k_i| < k_Nyq(fine): the "truth" spectrum is that of the very same particles, with its shot noise,
    so any difference from the engine is assignment, compensation or aliasing error.
    """
    rng = np.random.default_rng(seed)
    kx = np.fft.fftfreq(fine, d=box / fine) * 2 * np.pi
    kz = np.fft.rfftfreq(fine, d=box / fine) * 2 * np.pi
    kmag = np.sqrt(kx[:, None, None] ** 2 + kx[None, :, None] ** 2 + kz[None, None, :] ** 2)
    p_in = np.zeros_like(kmag)
    p_in[kmag > 0] = 300.0 * (kmag[kmag > 0] / 0.1) ** -1.5  # (Mpc/h)^3
    # fixed-amplitude Gaussian field: |g_k| = sqrt(P V) / N^3, random phases
    amp = np.sqrt(p_in * box**3) / fine**3
    g = np.fft.irfftn(amp * np.exp(2j * np.pi * rng.random(amp.shape)), s=(fine,) * 3, axes=(0, 1, 2)) * fine**3
    g *= 0.6 / g.std()
    density = np.exp(g - g.var() / 2)
    counts = rng.poisson(mean_per_cell * density)
    cell = box / fine
    grid = (np.indices((fine,) * 3).reshape(3, -1).T + 0.5) * cell
    pos = np.repeat(grid, counts.ravel(), axis=0)
    delta_k = np.fft.rfftn(counts / counts.mean() - 1.0) / fine**3
    return pos, box**3 * np.abs(delta_k) ** 2, fine


def test_lognormal_field_is_recovered_within_2_percent_with_tsc_interlacing():
    from app.science.power_spectrum import _bin, default_k_edges

    box, nmesh = 200.0, 64
    pos, truth_modes, fine = _lattice_catalog(fine=128, box=box, mean_per_cell=1.0, seed=4)
    edges = default_k_edges(box, nmesh)  # up to k_Nyq(64) / 2
    _, truth, _ = _bin(truth_modes, fine, box, edges)
    ps = power_spectrum(pos, box, nmesh=nmesh, scheme="tsc", interlacing=True, k_edges=edges)
    rel = ps.power / truth - 1
    assert np.all(np.abs(rel) < 0.02), rel
    # without compensation or interlacing the same bins are visibly off: the test can fail
    raw = power_spectrum(pos, box, nmesh=nmesh, scheme="cic", interlacing=False, k_edges=edges)
    assert np.max(np.abs(raw.power / truth - 1)) > 0.02


@pytest.mark.parametrize("scheme", ["NGP", "CIC", "TSC", "PCS"])
def test_agrees_with_pylians_for_the_same_mesh_and_scheme(scheme):
    masl = pytest.importorskip("MAS_library")
    pkl = pytest.importorskip("Pk_library")
    rng = np.random.default_rng(5)
    box, nmesh = 205.0, 64
    pos = (rng.random((60_000, 3)) * box).astype(np.float32)
    pos[:20_000] = (pos[:20_000] * 0.3 + 40.0).astype(np.float32)  # some clustering, not only shot noise
    mesh = np.zeros((nmesh,) * 3, np.float32)
    masl.MA(pos, mesh, box, scheme, verbose=False)
    # Pylians puts grid point i at i H, ours at (i + 1/2) H: the same mesh is ours of the positions + H/2
    ours_mesh = assign_to_mesh(pos.astype(np.float64) + 0.5 * box / nmesh, box, nmesh, scheme.lower())
    np.testing.assert_allclose(ours_mesh, mesh, atol=2e-5 * mesh.max())
    mesh /= mesh.mean()
    mesh -= 1.0
    ref = pkl.Pk(mesh, box, 0, scheme, 1, False)
    kf = 2 * np.pi / box
    edges = kf * (np.arange(1, len(ref.k3D) + 2) - 1e-6)  # Pylians' bins: floor(|k| / k_f)
    ps = power_spectrum(pos.astype(np.float64) + 0.5 * box / nmesh, box, nmesh, scheme.lower(),
                        interlacing=False, k_edges=edges)
    below = ref.k3D < np.pi * nmesh / box  # beyond k_Nyq the two count the Nyquist planes differently
    np.testing.assert_allclose(ps.k[below], ref.k3D[below], rtol=1e-5)
    np.testing.assert_allclose(ps.power[below], ref.Pk[below, 0], rtol=1e-4)


def test_nbodykit_backend_matches_the_builtin_engine():
    pytest.importorskip("nbodykit")
    rng = np.random.default_rng(6)
    pos = rng.random((40_000, 3)) * 100.0
    ours = power_spectrum(pos, 100.0, nmesh=32, scheme="tsc", interlacing=True)
    theirs = power_spectrum(pos, 100.0, nmesh=32, scheme="tsc", interlacing=True, backend="nbodykit")
    np.testing.assert_allclose(theirs.modes, ours.modes)
    np.testing.assert_allclose(theirs.power, ours.power, rtol=1e-3)


def test_backend_choice_is_checked():
    pos = np.random.default_rng(7).random((100, 3)) * 10
    with pytest.raises(ValueError, match="backend must be"):
        power_spectrum(pos, 10.0, nmesh=8, backend="fftw")
    from app.science.power_spectrum import nbodykit_available

    if not nbodykit_available():
        with pytest.raises(ValueError, match="needs nbodykit"):
            power_spectrum(pos, 10.0, nmesh=8, backend="nbodykit")
        assert power_spectrum(pos, 10.0, nmesh=8, backend="auto").meta == {}
