"""Checks of the P(k) engine used by the catalog calibration (the full validation suite lives with the
clustering work: Gaussian-field recovery and the Pylians comparison)."""

from __future__ import annotations

import numpy as np
import pytest

from app.power_spectrum import SCHEMES, _axis_weights, assign_to_mesh, gaussian_error, power_spectrum


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
