"""Linear-theory ingredients for the built-in catalog: P(k), sigma(M), mass function, bias.

Pure functions on arrays.  Units: k in h/Mpc, P(k) in (Mpc/h)^3, R in Mpc/h, M in Msun/h,
number densities in (Mpc/h)^-3.  Redshift zero throughout (the TNG300 snapshot 99).

References: Eisenstein & Hu 1998 (no-wiggle transfer function, eqs. 26-31); Tinker et al.
2008 (mass function, Delta = 200 mean); Tinker et al. 2010 (halo bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DELTA_C = 1.686
RHO_CRIT = 2.77536627e11  # h^2 Msun / Mpc^3, i.e. Msun/h per (Mpc/h)^3


@dataclass(frozen=True)
class Cosmology:
    """Flat LCDM.  Defaults: Planck 2015 (TNG300 cosmology, paper Sec. 2)."""

    omega_m: float = 0.3089
    omega_b: float = 0.0486
    h: float = 0.6774
    sigma8: float = 0.8159
    n_s: float = 0.9667
    t_cmb: float = 2.7255

    @property
    def rho_m(self) -> float:
        """Mean matter density [Msun/h per (Mpc/h)^3]."""
        return RHO_CRIT * self.omega_m


PLANCK15 = Cosmology()


def transfer_eh_nowiggle(k: np.ndarray, cosmo: Cosmology = PLANCK15) -> np.ndarray:
    """Eisenstein & Hu (1998) zero-baryon-oscillation transfer function; k in h/Mpc."""
    k = np.asarray(k, dtype=float)
    om_h2 = cosmo.omega_m * cosmo.h**2
    ob_h2 = cosmo.omega_b * cosmo.h**2
    fb = cosmo.omega_b / cosmo.omega_m
    theta = cosmo.t_cmb / 2.7
    s = 44.5 * np.log(9.83 / om_h2) / np.sqrt(1.0 + 10.0 * ob_h2**0.75)  # Mpc
    alpha = 1.0 - 0.328 * np.log(431.0 * om_h2) * fb + 0.38 * np.log(22.3 * om_h2) * fb**2
    ks = k * cosmo.h * s
    gamma_eff = cosmo.omega_m * cosmo.h * (alpha + (1.0 - alpha) / (1.0 + (0.43 * ks) ** 4))
    q = k * theta**2 / gamma_eff
    l0 = np.log(2.0 * np.e + 1.8 * q)
    c0 = 14.2 + 731.0 / (1.0 + 62.5 * q)
    return l0 / (l0 + c0 * q**2)


def _tophat_window(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    out = np.ones_like(x)
    big = x > 1e-4
    xb = x[big]
    out[big] = 3.0 * (np.sin(xb) - xb * np.cos(xb)) / xb**3
    return out


_K_GRID = np.logspace(-5, 3, 4000)


def _sigma2_unnormalized(radius: np.ndarray, cosmo: Cosmology) -> np.ndarray:
    k = _K_GRID
    pk = k**cosmo.n_s * transfer_eh_nowiggle(k, cosmo) ** 2
    integrand = pk[None, :] * _tophat_window(k[None, :] * np.atleast_1d(radius)[:, None]) ** 2 * k**3
    return np.trapezoid(integrand, np.log(k), axis=1) / (2.0 * np.pi**2)


def linear_power(k: np.ndarray, cosmo: Cosmology = PLANCK15) -> np.ndarray:
    """Linear matter power spectrum at z=0 normalized to sigma8 [(Mpc/h)^3]."""
    k = np.asarray(k, dtype=float)
    amp = cosmo.sigma8**2 / _sigma2_unnormalized(np.array([8.0]), cosmo)[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        pk = amp * np.where(k > 0, k, 0.0) ** cosmo.n_s * transfer_eh_nowiggle(np.where(k > 0, k, 1.0), cosmo) ** 2
    return np.where(k > 0, pk, 0.0)


def sigma_of_mass(log_mass: np.ndarray, cosmo: Cosmology = PLANCK15) -> np.ndarray:
    """RMS linear density contrast in top-hat spheres enclosing log10 M [Msun/h] at z=0.

    Evaluated on a 0.005-dex grid over the input's range and interpolated (cubic-accurate to
    <1e-5 relative), so that arrays of millions of haloes cost no more than a few hundred masses.
    """
    log_mass = np.asarray(log_mass, dtype=float)
    lo, hi = float(np.min(log_mass)), float(np.max(log_mass))
    grid = np.arange(lo - 0.01, hi + 0.02, 0.005)
    radius = (3.0 * 10.0**grid / (4.0 * np.pi * cosmo.rho_m)) ** (1.0 / 3.0)
    amp = cosmo.sigma8**2 / _sigma2_unnormalized(np.array([8.0]), cosmo)[0]
    log_sig = 0.5 * np.log(amp * _sigma2_unnormalized(radius, cosmo))
    return np.exp(np.interp(log_mass, grid, log_sig))


def tinker08_dndlogm(log_mass: np.ndarray, cosmo: Cosmology = PLANCK15) -> np.ndarray:
    """Tinker et al. (2008) halo mass function dn/dlog10M [(Mpc/h)^-3] for Delta=200m, z=0."""
    log_mass = np.asarray(log_mass, dtype=float)
    sig = sigma_of_mass(log_mass, cosmo)
    a_, a, b, c = 0.186, 1.47, 2.57, 1.19
    f = a_ * ((sig / b) ** (-a) + 1.0) * np.exp(-c / sig**2)
    dlnsig_dlogm = np.gradient(np.log(sig), log_mass)
    # dn/dlog10M = f(sigma) rho_m / M |dln sigma / dlog10 M|  (the ln10 factors cancel)
    return f * cosmo.rho_m / 10.0**log_mass * np.abs(dlnsig_dlogm)


def tinker10_bias(log_mass: np.ndarray, cosmo: Cosmology = PLANCK15, delta: float = 200.0) -> np.ndarray:
    """Tinker et al. (2010) large-scale halo bias b(M) at z=0."""
    nu = DELTA_C / sigma_of_mass(log_mass, cosmo)
    y = np.log10(delta)
    big_a = 1.0 + 0.24 * y * np.exp(-((4.0 / y) ** 4))
    a = 0.44 * y - 0.88
    big_b, b = 0.183, 1.5
    big_c = 0.019 + 0.107 * y + 0.19 * np.exp(-((4.0 / y) ** 4))
    c = 2.4
    return 1.0 - big_a * nu**a / (nu**a + DELTA_C**a) + big_b * nu**b + big_c * nu**c
