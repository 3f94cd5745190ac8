"""The built-in TNG300-like catalog of haloes and their central galaxies.

TNG300 itself cannot be shipped, so galaxypaint generates a stand-in from physically
motivated relations with stochastic scatter, calibrated so that the paper's analysis
reproduces on it (see ``bench/demo_catalog_calibration.py`` and the tests):

Haloes
    * ``M_h`` from the Tinker et al. (2008) mass function (Planck 2015, z=0) above 10^10.5 Msun/h;
    * a latent assembly variable ``a ~ N(0, 1)`` (early/late formation at fixed mass);
    * ``z_h`` lognormal, decreasing with mass, increasing with ``a``;
    * ``C_h`` (log10 c) from a c(M) relation that declines with mass, correlated with ``a``
      (Wechsler et al. 2002: early-forming haloes are more concentrated);
    * ``S_h`` lognormal (Bullock lambda, median ~0.043), weakly anti-correlated with ``a``;
    * positions from a lognormal density field built on the linear LCDM P(k), each halo placed
      with probability ``exp(b g - b^2 sigma^2 / 2)`` where ``b`` is the Tinker et al. (2010) bias
      with an assembly-bias term tied to ``a``;
    * ``Delta3_h`` = subhalo counts within 3 Mpc/h over the mean: Poisson counts of a tracer of the
      matter field (top-hat smoothed at 3 Mpc/h at the halo position) plus the halo's own subhaloes,
      mapped rank by rank onto a lognormal with TNG300's published mean and standard deviation
      (2.964, 2.881; median 2.12, as in the real rows).  A lognormal field in a 205 Mpc/h box has
      too few rare peaks for its tail moments to be stable from seed to seed; the ranks keep
      which halo lives where, the map fixes the marginal distribution.

Central galaxies
    * ``smass``: double power-law stellar-to-halo mass relation (fitted to TNG300's conditional mean)
      with log-normal scatter and small concentration/age/spin terms;
    * quenching: probability rising with halo mass and with formation time; quenched galaxies
      have SFR=0 (log sSFR from N(-13.5, 0.5), as in the paper) or low measured sSFR;
    * ``sSFR`` on a star-forming main sequence for the others;
    * ``color`` (g-i): red sequence ~1.1 for quenched, blue cloud ~0.5-0.8 for star-forming;
    * ``radius``: grows with halo mass above ~10^11.7 and with spin (Mo, Mao & White 1998-like).

Cuts (paper): ``M_h > 10.5`` and ``smass > 8.75``.

Redrawing galaxies.  Every halo feature is a deterministic, invertible function of ``M_h`` and one
latent (``z_h`` of ``a``, ``C_h`` of the concentration deviation, ``S_h`` of the spin deviation and
``a``), so p(galaxy | M_h, C_h, S_h, z_h, Delta3_h) is known exactly: ``redraw_galaxies`` recovers the
latents and draws the galaxy again with the same code (``_galaxy_given_smass``), the cut on ``smass``
applied by rejection.  Redraws of a catalog's galaxies are what a perfect sampler would paint: their
statistics are the null distribution against which a learned sampler is judged
(``bench/sampler_null.py``, ``app.science.populations``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import ndimage, special

from app.core.catalogs import METADATA_KEY
from app.core.schema import CUTS, FEATURE_NAMES, TARGET_NAMES, TNG300_FEATURE_MOMENTS, ZERO_SFR_LOG_SSFR
from app.science.power_spectrum import fourier_axes
from training.cosmology import PLANCK15, Cosmology, linear_power, tinker08_dndlogm, tinker10_bias

TNG300_BOX = 205.0  # Mpc/h
TNG300_N_CENTRALS = 174_527


@dataclass(frozen=True)
class DemoModel:
    """Parameters of the generator.  Every number is documented where it is used."""

    log_m_max: float = 15.3
    # z_h: ln z_h = ln(z_med) + slope (M_h - 12) + sigma a
    z_median: float = 1.13
    z_mass_slope: float = -0.12
    z_sigma: float = 0.44
    # C_h: log10 c = c0 + slope (M_h - 12) + sigma (rho a + sqrt(1 - rho^2) eps)
    c0: float = 0.985
    c_mass_slope: float = -0.08
    c_sigma: float = 0.152
    c_age_corr: float = 0.55
    # S_h: ln lambda = ln(median) + sigma (eps) - age_coupling a
    spin_median: float = 0.0426
    spin_sigma: float = 0.54
    spin_age_coupling: float = 0.06
    # SHMR (Moster et al. 2013 form) fitted to TNG300's conditional mean smass(M_h)
    shmr_log_n: float = -1.687
    shmr_log_m1: float = 11.865
    shmr_beta: float = 1.233
    shmr_gamma: float = 0.444
    smass_scatter: float = 0.155
    smass_conc: float = 0.04
    smass_age: float = 0.03
    smass_spin: float = -0.03
    # quenching: logit P = (M_h - m_q)/width + quench_age a
    quench_m: float = 12.0
    quench_width: float = 0.13
    quench_age: float = 1.5
    zero_sfr_fraction_of_quenched: float = 0.8
    # sSFR [log10 h/yr]
    sf_ssfr0: float = -9.85
    sf_ssfr_mass_slope: float = -0.22
    sf_ssfr_age: float = -0.25
    sf_ssfr_scatter: float = 0.28
    q_ssfr_mean: float = -12.1
    q_ssfr_scatter: float = 0.45
    # colour g-i [mag]
    blue_color0: float = 0.69
    blue_color_mass_slope: float = 0.17
    blue_color_ssfr_slope: float = -0.18
    blue_color_scatter: float = 0.23
    red_color0: float = 1.10
    red_color_mass_slope: float = 0.03
    red_color_scatter: float = 0.04
    # recently quenched galaxies are still reddening: colour = blue + (red - blue) (1 - lag u^2)
    green_valley_lag: float = 0.6
    # radius [log10 kpc/h]
    r0: float = 0.47
    r_mass_pivot: float = 12.0
    r_mass_slope: float = 0.55
    r_mass_soft: float = 0.3
    r_spin_slope: float = 0.20
    r_conc: float = -0.03
    r_age: float = 0.02
    r_quenched: float = -0.05
    r_scatter: float = 0.12
    # clustering
    field_smoothing: float = 1.5  # Mpc/h, Gaussian smoothing of the linear field
    assembly_bias: float = 0.12  # fractional change of bias per unit a at low mass
    # Delta3: mean subhalo count in a 3 Mpc/h sphere, own-subhalo count at 10^12 Msun/h
    delta3_mean_count: float = 200.0
    delta3_own_at_1e12: float = 10.0
    delta3_tracer_bias: float = 0.8


DEFAULT_MODEL = DemoModel()


def _sample_log_mass(rng: np.random.Generator, n: int, model: DemoModel, cosmo: Cosmology) -> np.ndarray:
    grid = np.linspace(CUTS["M_h"], model.log_m_max, 2001)
    dn = tinker08_dndlogm(grid, cosmo)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dn[1:] + dn[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    return np.interp(rng.random(n), cdf, grid)


@dataclass(frozen=True)
class HaloLatents:
    """What a central galaxy depends on: ``log_m`` (M_h, log10 Msun/h), the latent assembly variable
    ``age``, the standardized concentration and spin deviations and the spin ``s_h`` itself ([N] each)."""

    log_m: np.ndarray
    age: np.ndarray
    conc_dev: np.ndarray
    spin_dev: np.ndarray
    s_h: np.ndarray


def _smass_mean(halo: HaloLatents, m: DemoModel) -> np.ndarray:
    """E[smass | halo] [log10 Msun/h] before the cut: the SHMR plus the concentration, age and spin terms
    (the stellar mass is this plus ``smass_scatter`` times a standard normal)."""
    x = halo.log_m - m.shmr_log_m1
    shmr = (halo.log_m + m.shmr_log_n + np.log10(2.0)
            - np.log10(10 ** (-m.shmr_beta * x) + 10 ** (m.shmr_gamma * x)))
    return shmr + m.smass_conc * halo.conc_dev + m.smass_age * halo.age + m.smass_spin * halo.spin_dev


def _galaxy_given_smass(rng: np.random.Generator, halo: HaloLatents, smass: np.ndarray,
                        m: DemoModel) -> dict[str, np.ndarray]:
    """The galaxy's other properties given its halo and stellar mass: draws every remaining noise term
    (quenching, sSFR, colour, radius; in this order) from ``rng``.  Returns the four targets in schema
    units and the flags ``_quenched``, ``_zero_sfr``, plus ``_age``."""
    n = len(smass)
    log_m, age, conc_dev, s_h = halo.log_m, halo.age, halo.conc_dev, halo.s_h  # spin enters through s_h
    p_q = special.expit((log_m - m.quench_m) / m.quench_width + m.quench_age * age)
    quenched = rng.random(n) < p_q
    zero_sfr = quenched & (rng.random(n) < m.zero_sfr_fraction_of_quenched)

    # Main-sequence sSFR for everyone (the pre-quenching value for quenched galaxies).
    ssfr_ms = (m.sf_ssfr0 + m.sf_ssfr_mass_slope * (smass - 10.0) + m.sf_ssfr_age * age
               + m.sf_ssfr_scatter * rng.standard_normal(n))
    ssfr = np.where(quenched, m.q_ssfr_mean + m.q_ssfr_scatter * rng.standard_normal(n), ssfr_ms)
    ssfr = np.where(zero_sfr, ZERO_SFR_LOG_SSFR[0] + ZERO_SFR_LOG_SSFR[1] * rng.standard_normal(n), ssfr)

    blue = (m.blue_color0 + m.blue_color_mass_slope * (smass - 10.0)
            + m.blue_color_ssfr_slope * (ssfr_ms - m.sf_ssfr0) + m.blue_color_scatter * rng.standard_normal(n))
    red = m.red_color0 + m.red_color_mass_slope * (smass - 10.5) + m.red_color_scatter * rng.standard_normal(n)
    reddening = np.where(quenched, 1.0 - m.green_valley_lag * rng.random(n) ** 2, 0.0)
    color = blue + (red - blue) * reddening

    soft = m.r_mass_soft * np.logaddexp(0.0, (log_m - m.r_mass_pivot) / m.r_mass_soft)
    radius = (m.r0 + m.r_mass_slope * soft / 1.0 + m.r_spin_slope * np.log10(s_h / m.spin_median)
              + m.r_conc * conc_dev + m.r_age * age + m.r_quenched * quenched + m.r_scatter * rng.standard_normal(n))
    return {"smass": smass, "sSFR": ssfr, "radius": radius, "color": color,
            "_age": age, "_quenched": quenched, "_zero_sfr": zero_sfr}


def _halo_and_galaxy_properties(rng: np.random.Generator, n: int, model: DemoModel,
                                cosmo: Cosmology) -> pd.DataFrame:
    m = model
    log_m = _sample_log_mass(rng, n, m, cosmo)
    age = rng.standard_normal(n)
    dm = log_m - 12.0

    z_h = np.exp(np.log(m.z_median) + m.z_mass_slope * dm + m.z_sigma * age)
    c_eps = rng.standard_normal(n)
    conc_dev = m.c_age_corr * age + np.sqrt(1.0 - m.c_age_corr**2) * c_eps
    c_h = m.c0 + m.c_mass_slope * dm + m.c_sigma * conc_dev
    spin_dev = rng.standard_normal(n)
    s_h = m.spin_median * np.exp(m.spin_sigma * spin_dev - m.spin_age_coupling * age)

    halo = HaloLatents(log_m, age, conc_dev, spin_dev, s_h)
    smass = _smass_mean(halo, m) + m.smass_scatter * rng.standard_normal(n)
    return pd.DataFrame({"M_h": log_m, "C_h": c_h, "S_h": s_h, "z_h": z_h,
                         **_galaxy_given_smass(rng, halo, smass, m)})


def recover_latents(halos: pd.DataFrame, model: DemoModel = DEFAULT_MODEL) -> HaloLatents:
    """Invert the halo relations: the latent assembly variable ``age`` from ``z_h`` and ``M_h``, the
    concentration deviation from ``C_h`` and the spin deviation from ``S_h`` and ``age`` (exact up to
    rounding: each feature is a deterministic, invertible function of M_h and one latent)."""
    m = model
    log_m = halos["M_h"].to_numpy(dtype=np.float64)
    dm = log_m - 12.0
    age = (np.log(halos["z_h"].to_numpy(dtype=np.float64)) - np.log(m.z_median) - m.z_mass_slope * dm) / m.z_sigma
    conc_dev = (halos["C_h"].to_numpy(dtype=np.float64) - m.c0 - m.c_mass_slope * dm) / m.c_sigma
    s_h = halos["S_h"].to_numpy(dtype=np.float64)
    spin_dev = (np.log(s_h / m.spin_median) + m.spin_age_coupling * age) / m.spin_sigma
    return HaloLatents(log_m, age, conc_dev, spin_dev, s_h)


#: rejection gives up on a halo after this many stellar-mass draws: a selection probability P(smass >
#: cut | halo) of 1e-6 still passes with probability 1 - 6e-8, and none of the built-in catalog's 174,527
#: haloes (seed 42) is below 1.3e-5; haloes far below the cut are not catalog haloes and are refused
MAX_REJECTION_DRAWS = 1 << 24


def _selected_smass(rng: np.random.Generator, mean: np.ndarray, m: DemoModel) -> np.ndarray:
    """Stellar masses drawn from N(mean, smass_scatter^2) by rejection until ``smass > CUTS["smass"]``.

    Each round gives every halo still waiting a batch of candidates (1, 2, 4, ... per halo, at most
    ~4M in all) and keeps its first one above the cut, which is the first success of a sequence of
    independent draws: exactly the truncated normal, in ~log2(1 / acceptance) rounds rather than
    1 / acceptance (the catalog holds haloes accepted with probability ~1e-5)."""
    out = np.empty(len(mean))
    todo = np.arange(len(mean))
    per, tried = 1, 0
    while todo.size:
        if tried >= MAX_REJECTION_DRAWS:
            raise ValueError(f"{todo.size} haloes did not pass smass > {CUTS['smass']} in {tried:,} draws: their "
                             "features are not those of a catalog halo")
        cand = mean[todo, None] + m.smass_scatter * rng.standard_normal((todo.size, per))
        ok = cand > CUTS["smass"]
        hit = ok.any(axis=1)
        out[todo[hit]] = cand[hit, np.argmax(ok[hit], axis=1)]
        todo = todo[~hit]
        tried += per
        per = int(min(2 * per, max(1, (1 << 22) // max(todo.size, 1))))
    return out


def redraw_galaxies(halos: pd.DataFrame, seed: int | np.random.Generator,
                    model: DemoModel = DEFAULT_MODEL) -> pd.DataFrame:
    """New central galaxies for ``halos`` drawn from the generator's exact law p(galaxy | 5 features).

    ``halos`` needs ``M_h, C_h, S_h, z_h`` (schema units; ``Delta3_h`` and the positions carry no more
    information about the galaxy once the latents are known: the galaxy's noise is drawn independently
    of where the halo is placed).  The latents are recovered (``recover_latents``); then the stellar
    mass is drawn with the catalog's selection ``smass > CUTS["smass"]`` applied by rejection, and the
    other properties given it by the same code that makes the catalog (``_galaxy_given_smass``).
    Rejecting on the stellar mass alone is rejecting the whole galaxy: the cut reads only the
    stellar mass, and the other noise terms are drawn independently of it.

    Returns the four targets (``app.core.schema.TARGET_NAMES``, schema units) with ``halos``' index.
    Deterministic for a given integer ``seed``; a ``np.random.Generator`` is used (and advanced) as is.
    """
    rng = np.random.default_rng(seed)
    halo = recover_latents(halos, model)
    smass = _selected_smass(rng, _smass_mean(halo, model), model)
    galaxy = _galaxy_given_smass(rng, halo, smass, model)
    return pd.DataFrame({t: galaxy[t] for t in TARGET_NAMES}, index=halos.index)


def _gaussian_field(rng: np.random.Generator, nmesh: int, box: float, smoothing: float,
                    cosmo: Cosmology) -> np.ndarray:
    """Gaussian random field with the linear P(k), Gaussian-smoothed; float32 mesh."""
    cell = box / nmesh
    white = rng.standard_normal((nmesh, nmesh, nmesh), dtype=np.float32)
    wk = np.fft.rfftn(white)
    del white
    kx, kz = fourier_axes(nmesh, box)
    k2 = kx[:, None, None] ** 2 + kx[None, :, None] ** 2 + kz[None, None, :] ** 2
    k = np.sqrt(k2)
    amp = np.sqrt(linear_power(k, cosmo) / cell**3) * np.exp(-0.5 * k2 * smoothing**2)
    wk *= amp.astype(np.complex64)
    return np.fft.irfftn(wk, s=(nmesh,) * 3, axes=(0, 1, 2)).astype(np.float32)


def _tophat_smooth(field: np.ndarray, box: float, radius: float) -> np.ndarray:
    kx, kz = fourier_axes(field.shape[0], box)
    kr = np.sqrt(kx[:, None, None] ** 2 + kx[None, :, None] ** 2 + kz[None, None, :] ** 2) * radius
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(kr > 1e-6, 3.0 * (np.sin(kr) - kr * np.cos(kr)) / np.maximum(kr, 1e-6) ** 3, 1.0)
    return np.fft.irfftn(np.fft.rfftn(field) * w, s=field.shape, axes=(0, 1, 2)).astype(np.float32)


def _place_haloes(rng: np.random.Generator, g: np.ndarray, bias: np.ndarray, box: float,
                  n_levels: int = 48) -> np.ndarray:
    """Draw positions [Mpc/h] for haloes of given bias from cells weighted by exp(b g)."""
    nmesh = g.shape[0]
    cell = box / nmesh
    flat = g.ravel().astype(np.float64)
    gmax = flat.max()
    levels = np.linspace(bias.min(), bias.max(), n_levels) if bias.max() > bias.min() else bias[:1]
    idx_level = np.clip(np.searchsorted(levels, bias), 0, len(levels) - 1)
    pos = np.empty((len(bias), 3))
    for j, b in enumerate(levels):
        members = np.flatnonzero(idx_level == j)
        if members.size == 0:
            continue
        cdf = np.cumsum(np.exp(b * (flat - gmax)))
        cells = np.searchsorted(cdf, rng.random(members.size) * cdf[-1])
        cells = np.minimum(cells, flat.size - 1)
        ijk = np.stack(np.unravel_index(cells, g.shape), axis=1)
        pos[members] = (ijk + rng.random((members.size, 3))) * cell
    return pos % box


def _interp_periodic(field: np.ndarray, pos: np.ndarray, box: float) -> np.ndarray:
    """Trilinear interpolation of a periodic mesh at positions [Mpc/h] (cell-centred values)."""
    nmesh = field.shape[0]
    coords = (pos / (box / nmesh) - 0.5).T
    return ndimage.map_coordinates(field, coords, order=1, mode="grid-wrap")


def _match_lognormal(values: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Rank-preserving map of ``values`` onto a lognormal with the given mean and standard deviation."""
    sigma2 = np.log1p((std / mean) ** 2)
    mu = np.log(mean) - 0.5 * sigma2
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return np.exp(mu + np.sqrt(sigma2) * special.ndtri((ranks + 0.5) / len(values)))


def _mesh_size(box: float) -> int:
    """Mesh with ~1.6 Mpc/h cells (TNG300: 128^3), between 32^3 and 256^3."""
    return int(np.clip(2 ** int(round(np.log2(box / 1.6))), 32, 256))


def make_demo_catalog(n: int = TNG300_N_CENTRALS, box: float = TNG300_BOX, seed: int = 42,
                      model: DemoModel = DEFAULT_MODEL, cosmo: Cosmology = PLANCK15,
                      with_latent: bool = False) -> pd.DataFrame:
    """Generate ``n`` central galaxies and their haloes in a periodic box of side ``box`` [Mpc/h].

    Deterministic for a given ``seed``.  Columns: ``ID, x, y, z`` [Mpc/h], the 5 halo features and
    the 4 galaxy targets (units in ``app.core.schema``).  ``with_latent`` keeps the hidden assembly
    variable and the quenching flags (``_age``, ``_quenched``, ``_zero_sfr``) for diagnostics.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    if box <= 0:
        raise ValueError("box must be positive")
    rng = np.random.default_rng(seed)

    parts: list[pd.DataFrame] = []
    have = 0
    batch = int(n * 5.5) + 1000
    while have < n:
        df = _halo_and_galaxy_properties(rng, batch, model, cosmo)
        df = df[(df["M_h"] > CUTS["M_h"]) & (df["smass"] > CUTS["smass"])]
        parts.append(df)
        have += len(df)
    cat = pd.concat(parts, ignore_index=True).iloc[:n].reset_index(drop=True)

    nmesh = _mesh_size(box)
    g = _gaussian_field(rng, nmesh, box, model.field_smoothing, cosmo)
    bias = tinker10_bias(cat["M_h"].to_numpy(), cosmo)
    # Assembly bias: early-forming low-mass haloes cluster more (Gao & White 2007); fades at high mass.
    ab = model.assembly_bias * cat["_age"].to_numpy() * np.clip((13.0 - cat["M_h"].to_numpy()) / 2.0, 0.0, 1.0)
    bias = np.clip(bias * (1.0 + ab), 0.3, None)
    pos = _place_haloes(rng, g, bias, box)

    # Subhaloes trace the 3 Mpc/h top-hat-smoothed field as a lognormal tracer of bias b_s
    # (mean 1 over the volume); haloes, being biased, sit where it is high: <Delta3> ~ 3.
    g3 = _tophat_smooth(g, box, 3.0)
    b_s = model.delta3_tracer_bias
    env = np.exp(b_s * _interp_periodic(g3, pos, box) - 0.5 * b_s**2 * float(g3.var()))
    own = model.delta3_own_at_1e12 * 10 ** (cat["M_h"].to_numpy() - 12.0)
    counts = rng.poisson(model.delta3_mean_count * env + own) + rng.random(n)  # jitter breaks ties
    delta3 = _match_lognormal(counts, *TNG300_FEATURE_MOMENTS["Delta3_h"])

    out = pd.DataFrame({
        "ID": np.arange(n, dtype=np.int64),
        "x": pos[:, 0], "y": pos[:, 1], "z": pos[:, 2],
        **{f: cat[f].to_numpy() for f in FEATURE_NAMES if f != "Delta3_h"},
        "Delta3_h": delta3,
        **{t: cat[t].to_numpy() for t in TARGET_NAMES},
    })
    if with_latent:
        for col in ("_age", "_quenched", "_zero_sfr"):
            out[col] = cat[col].to_numpy()
    # the catalog carries its own box: write_table stores it, and the clustering commands read it back
    out.attrs[METADATA_KEY] = {"kind": "demo-catalog", "generator": "training.demo_catalog", "n": int(n),
                               "box": float(box), "seed": int(seed)}
    return out


def summarize(df: pd.DataFrame) -> str:
    """Human-readable summary: moments of every feature/target against TNG300 where known."""
    from app.core.schema import COLUMNS, TNG300_FEATURE_MOMENTS

    lines = [f"{len(df):,} central galaxies"]
    lines.append(f"{'column':10s} {'unit':22s} {'mean':>9s} {'std':>8s} {'min':>9s} {'max':>9s}  TNG300 mean/std")
    for name in (*FEATURE_NAMES, *TARGET_NAMES):
        if name not in df:
            continue
        v = df[name].to_numpy()
        ref = TNG300_FEATURE_MOMENTS.get(name)
        ref_s = f"{ref[0]:.3f}/{ref[1]:.3f}" if ref else ""
        lines.append(f"{name:10s} {COLUMNS[name].unit:22s} {v.mean():9.3f} {v.std():8.3f} {v.min():9.3f} "
                     f"{v.max():9.3f}  {ref_s}")
    if "sSFR" in df:
        lines.append(f"quenched (sSFR < -11): {np.mean(df['sSFR'] < -11):.1%}; "
                     f"red (g-i > 1.0): {np.mean(df['color'] > 1.0):.1%}")
    return "\n".join(lines)


def model_parameters() -> dict[str, float]:
    """Generator parameters as a plain dict (recorded in file metadata)."""
    return asdict(DEFAULT_MODEL)
