"""The one definition of the halo/galaxy table used everywhere in galaxypaint.

Readers (``app.core.catalogs``), training, the API models and the docs all take column names,
units, descriptions, valid ranges and aliases from here.  Conventions follow de Santi et
al. 2022 (arXiv:2201.06054) and the published TNG300 tables: masses in log10 Msun/h,
lengths in Mpc/h (positions) or kpc/h (galaxy sizes), specific SFR in log10 h/yr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Role = Literal["feature", "target", "position", "meta"]


@dataclass(frozen=True)
class Column:
    """One column of the halo/galaxy table.

    ``valid`` is the physically meaningful closed interval; values outside it are
    reported by the validator (as an error or a warning, by option).  ``log_floor`` marks a positive
    quantity in linear units with a long right tail (spin, formation redshift, overdensity): a learner
    that needs well-spread inputs (the sampler's network) sees ln(max(x, log_floor)) instead.  The floor
    lies below any nonzero value a catalog holds (Delta3_h = N / N_mean with N_mean ~ 200 in TNG300 gives
    0.005 for one neighbour; TNG's last snapshots are at z ~ 0.01); a zero, or a negative kept by
    ``--lenient``, reads as the floor.
    """

    name: str
    role: Role
    unit: str
    description: str
    valid: tuple[float, float]
    aliases: tuple[str, ...] = field(default_factory=tuple)
    log_floor: float | None = None


FEATURES: tuple[Column, ...] = (
    Column("M_h", "feature", "log10 Msun/h", "halo virial mass", (8.0, 16.5),
           ("log_mh", "logmh", "mvir_log", "halo_mass")),
    Column("C_h", "feature", "log10 (dimensionless)", "halo NFW concentration", (-1.0, 3.0),
           ("log_c", "logc", "concentration_log")),
    Column("S_h", "feature", "dimensionless", "halo Bullock spin parameter", (0.0, 2.0),
           ("spin", "lambda", "spin_bullock"), log_floor=1e-5),
    Column("z_h", "feature", "redshift", "halo formation (half-mass) redshift", (0.0, 20.0),
           ("z_form", "zform", "formation_redshift"), log_floor=1e-3),
    Column("Delta3_h", "feature", "dimensionless",
           "subhalo number density within 3 Mpc/h divided by the mean number density",
           (0.0, 1.0e4), ("delta3", "delta_3", "overdensity_3mpc"), log_floor=1e-3),
)

TARGETS: tuple[Column, ...] = (
    Column("smass", "target", "log10 Msun/h", "central galaxy stellar mass", (4.0, 13.5),
           ("stellar_mass", "log_mstar", "mstar")),
    Column("sSFR", "target", "log10 h/yr",
           "specific star-formation rate (SFR=0 galaxies drawn from N(-13.5, 0.5))", (-20.0, -5.0),
           ("ssfr", "log_ssfr", "specific_sfr")),
    Column("radius", "target", "log10 kpc/h", "stellar half-mass radius", (-2.0, 3.0),
           ("log_radius", "r_half", "half_mass_radius")),
    Column("color", "target", "mag", "g - i colour", (-1.5, 3.0),
           ("colour", "g_i", "g-i", "gi_color")),
)

POSITIONS: tuple[Column, ...] = tuple(
    Column(axis, "position", "Mpc/h", f"halo {axis} position (comoving, periodic box)",
           (-1.0e5, 1.0e5), (f"{axis.upper()}_h", f"{axis}_h", f"halo_{axis}"))
    for axis in ("x", "y", "z")
)

META: tuple[Column, ...] = (
    Column("ID", "meta", "", "halo/subhalo identifier", (-9.3e18, 9.3e18),
           ("id", "subhaloid", "halo_id")),
)

FEATURE_NAMES: tuple[str, ...] = tuple(c.name for c in FEATURES)
TARGET_NAMES: tuple[str, ...] = tuple(c.name for c in TARGETS)
POSITION_NAMES: tuple[str, ...] = tuple(c.name for c in POSITIONS)
COLUMNS: dict[str, Column] = {c.name: c for c in (*FEATURES, *TARGETS, *POSITIONS, *META)}
#: per feature (``FEATURE_NAMES`` order): the floor of its log input scale, or None for a feature used as is
FEATURE_LOG_FLOORS: tuple[float | None, ...] = tuple(c.log_floor for c in FEATURES)

SPLIT_COLUMN = "split"
SPLIT_VALUES: tuple[str, ...] = ("train", "val", "test")

#: Paper cuts (de Santi et al. 2022, Sec. 2): haloes above 10^10.5 Msun/h hosting centrals above 10^8.75 Msun/h.
CUTS: dict[str, float] = {"M_h": 10.5, "smass": 8.75}

#: Paper Table 1: two bins per property used for the clustering comparison.
PAPER_BIN_EDGES: dict[str, tuple[float, float, float]] = {
    "smass": (8.8, 10.6, 12.7),
    "sSFR": (-16.3, -11.0, -8.3),
    "radius": (0.1, 0.9, 2.1),
    "color": (-0.23, 1.0, 1.2),
}

#: log10 sSFR assigned to galaxies with SFR = 0: drawn from N(mean, std) (paper Sec. 2).
ZERO_SFR_LOG_SSFR = (-13.5, 0.5)

#: TNG300 training-set moments of the halo features (mean, std), as published with the
#: authors' models; used to check the built-in catalog and to standardize imported boosters.
TNG300_FEATURE_MOMENTS: dict[str, tuple[float, float]] = {
    "M_h": (11.56402166, 0.46291709),
    "C_h": (1.01631081, 0.15845161),
    "S_h": (0.04940789, 0.02893565),
    "z_h": (1.32597217, 0.6149362),
    "Delta3_h": (2.96404967, 2.88140351),
}

#: Paper's headline test-set Pearson r (TNG300) per target, used as calibration references.
PAPER_PEARSON_R: dict[str, float] = {"smass": 0.98, "sSFR": 0.80, "radius": 0.74, "color": 0.65}


#: suffix of the columns that hold a property painted onto halos (``smass_pred``)
PRED_SUFFIX = "_pred"


def pred_column(target: str) -> str:
    """The column a painted or predicted ``target`` is written to."""
    return target + PRED_SUFFIX


#: quantile levels (percent) written by ``mode = quantiles`` when none are asked for
DEFAULT_QUANTILE_LEVELS: tuple[float, ...] = (16.0, 50.0, 84.0)


def quantile_column(target: str, level: float) -> str:
    """The column of ``target``'s ``level`` percent quantile: ``smass_q16``, ``color_q97.5``."""
    return f"{target}_q{_level_text(level)}"


def _level_text(level: float) -> str:
    """A level as written, without exponent or trailing zeros: 16 -> "16", 2.5 -> "2.5", 1e-05 -> "0.00001"."""
    return np.format_float_positional(float(level), trim="-")


def parse_quantile_levels(levels) -> tuple[float, ...]:
    """Quantile levels in percent, strictly inside (0, 100), distinct, sorted: from ``"2.5,16,50"`` or a
    sequence of numbers.  Raises ``ValueError`` naming the bad level."""
    items = [v for v in levels.split(",") if v.strip()] if isinstance(levels, str) else list(levels)
    if not items:
        raise ValueError("no quantile level given")
    if len(items) > 99:
        raise ValueError(f"{len(items)} quantile levels: at most 99")
    out = []
    for v in items:
        try:
            f = float(v)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"quantile level {str(v)[:40]!r} is not a number (percent, e.g. 16)") from None
        if isinstance(v, bool) or not 0.0 < f < 100.0:
            raise ValueError(f"quantile level {str(v)[:40]} must lie strictly between 0 and 100 (percent)")
        out.append(f)
    if len({_level_text(f) for f in out}) != len(out):
        raise ValueError("quantile levels must be distinct")
    return tuple(sorted(out))


def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for col in COLUMNS.values():
        for name in (col.name, *col.aliases):
            table[name.lower()] = col.name
    table[SPLIT_COLUMN] = SPLIT_COLUMN
    return table


ALIASES: dict[str, str] = _alias_table()


def canonical_name(name: str) -> str | None:
    """Return the canonical column name for ``name`` (case-insensitive, aliases honoured)."""
    return ALIASES.get(str(name).strip().lower())


def describe() -> list[dict[str, object]]:
    """The schema as plain records (for the API, the CLI and the docs)."""
    return [
        {"name": c.name, "role": c.role, "unit": c.unit, "description": c.description,
         "valid_min": c.valid[0], "valid_max": c.valid[1], "aliases": list(c.aliases)}
        for c in COLUMNS.values()
    ]
