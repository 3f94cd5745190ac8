"""Column presets: the column conventions of the halo catalogs users have, mapped onto the schema.

``--preset-columns NAME`` (``read_table(..., preset=NAME)``, ``ChunkReader(..., preset=NAME)``) converts
the columns of a Rockstar halo list, a Consistent-Trees ``hlist``, or a flat table of IllustrisTNG group
catalog fields into the schema's columns (``app.core.schema``), with their units.  ``PRESETS`` is the one
table: per preset, each schema column, the source columns it is made from (name, unit, valid domain)
and the conversion, a pure numpy function.  Source names are matched case-insensitively, without a
leading ``#`` (the header of Rockstar and Consistent-Trees ASCII files) or a ``(N)`` column-number suffix
(Consistent-Trees: ``#scale(0) id(1) ... mvir(10) rvir(11) rs(12) ... x(17)``).

The columns read are kept; the converted ones are added under their schema names.  An explicit
``--columns NAME=SOURCE`` wins over the preset for that schema column (the source is then taken as
already in the schema's unit), so a column the catalogs lack (``Delta3_h``; TNG's ``C_h``, ``z_h``)
or one the user prefers to convert himself can be supplied beside a preset.

Units and definitions: Rockstar (Behroozi et al. 2013a) and Consistent-Trees (Behroozi et al. 2013b)
write ``Mvir`` and the spherical-overdensity masses ``Mvir_all M200b M200c M500c M2500c`` [Msun/h],
``Rvir`` and ``rs`` [kpc/h comoving], ``x, y, z`` [Mpc/h comoving],
``Spin_Bullock`` (Bullock et al. 2001, J / (sqrt(2) M V R)), ``Spin`` (Peebles 1969,
J |E|^1/2 / (G M^5/2): *not* the spin the models were trained on) and, Consistent-Trees only,
``Halfmass_Scale`` (the scale factor at which the main progenitor reached half of its peak mass).
IllustrisTNG group catalogs (``ingest-tng``) give masses in 1e10 Msun/h and lengths in ckpc/h.

The models are trained on TNG's ``Group_M_Crit200`` (M200c).  A schema column may have several conversions,
in order of preference, the first whose sources the table has being used: the halo finders' ``M_h`` is
log10(``M200c``) when the catalog has that column, else log10(``Mvir``).  A mass of another definition than
the trained one (``Mvir``) is said in one warning, and in the metadata of what is written (``preset_record``,
given the catalog's columns: which conversion was used depends on them).  ``C_h`` stays log10(Rvir / rs),
the virial concentration, also beside an M200c mass: the catalogs have no R200c, and deriving
c200c = R200c / rs from the two masses would assume an NFW profile (the record says so, without a warning).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from app.core.catalogs import CatalogError, _bad_rows_text
from app.core.schema import TARGET_NAMES, ZERO_SFR_LOG_SSFR

#: the halo mass definition the models are trained on: TNG's Group_M_Crit200
TRAINED_MASS_DEFINITION = "M200c"

#: gravitational constant [kpc (km/s)^2 / Msun]
G_KPC_KMS2_MSUN = 4.30091727e-6
#: TNG group catalogs: masses in units of 1e10 Msun/h, lengths in ckpc/h
TNG_MASS_UNIT = 1.0e10
TNG_KPC_PER_MPC = 1000.0
#: photometric bands of TNG's SubhaloStellarPhotometrics, in column order
BAND_INDEX = {"U": 0, "B": 1, "V": 2, "K": 3, "g": 4, "r": 5, "i": 6, "z": 7}
#: the ``tng`` preset reads snapshot 99 (z = 0, the models' training snapshot): comoving = physical
TNG_PRESET_SCALE_FACTOR = 1.0
#: seed of the log10 sSFR drawn for SFR = 0 galaxies by the ``tng`` preset (``ingest-tng``'s default)
TNG_PRESET_SSFR_SEED = 42

_OPTION = "--preset-columns"


# --- conversions: pure numpy ----------------------------------------------------------------------

def log10_mass(mass: np.ndarray) -> np.ndarray:
    """log10 of a halo mass given in Msun/h (linear) -> ``M_h`` [log10 Msun/h]."""
    return np.log10(mass)


def log10_concentration(rvir: np.ndarray, rs: np.ndarray) -> np.ndarray:
    """``C_h`` = log10(c) with c = Rvir / rs; both radii in the same unit (kpc/h comoving)."""
    return np.log10(rvir / rs)


def redshift_of_scale(a: np.ndarray) -> np.ndarray:
    """The redshift z = 1/a - 1 of a scale factor a in (0, 1] -> ``z_h``."""
    return 1.0 / a - 1.0


def same(values: np.ndarray) -> np.ndarray:
    """A column already in the schema's unit (e.g. positions in Mpc/h comoving, Bullock spin)."""
    return values


def bullock_spin(j: np.ndarray, m200: np.ndarray, r200: np.ndarray) -> np.ndarray:
    """Bullock et al. (2001) lambda = |j| / (sqrt(2) V200 R200), V200 = sqrt(G M200 / R200): ``j`` the
    specific angular momentum [kpc/h km/s, physical], ``m200`` [Msun/h], ``r200`` [kpc/h, physical]."""
    v200 = np.sqrt(G_KPC_KMS2_MSUN * m200 / r200)  # km/s (h cancels)
    return j / (np.sqrt(2.0) * v200 * r200)


def log_ssfr(sfr: np.ndarray, mstar: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """log10(SFR / M*) [h/yr] from SFR [Msun/yr] and M* [Msun/h]; SFR = 0 galaxies get a value drawn
    from N(-13.5, 0.5) (``ZERO_SFR_LOG_SSFR``, the paper's recipe).  Returns (log10 sSFR, SFR = 0 mask)."""
    with np.errstate(divide="ignore"):
        ssfr = np.log10(sfr / mstar)
    zero = sfr <= 0  # a missing SFR (NaN) stays missing: the invalid-row policy decides, no draw
    ssfr[zero] = rng.normal(ZERO_SFR_LOG_SSFR[0], ZERO_SFR_LOG_SSFR[1], int(zero.sum()))
    return ssfr, zero


def mpc_of_tng_length(length: np.ndarray) -> np.ndarray:
    """A TNG length in ckpc/h -> Mpc/h (comoving), e.g. ``GroupPos`` -> ``x, y, z``."""
    return length / TNG_KPC_PER_MPC


def log10_tng_mass(mass: np.ndarray) -> np.ndarray:
    """log10 of a TNG mass in 1e10 Msun/h (``Group_M_Crit200``) -> [log10 Msun/h]."""
    return np.log10(mass * TNG_MASS_UNIT)


def tng_spin(jx: np.ndarray, jy: np.ndarray, jz: np.ndarray, m200: np.ndarray, r200: np.ndarray) -> np.ndarray:
    """``S_h`` from ``SubhaloSpin`` [kpc/h km/s, physical], ``Group_M_Crit200`` [1e10 Msun/h] and
    ``Group_R_Crit200`` [ckpc/h, physical at z = 0], as ``ingest-tng`` computes it."""
    j = np.sqrt(jx * jx + jy * jy + jz * jz)
    return bullock_spin(j, m200 * TNG_MASS_UNIT, r200 * TNG_PRESET_SCALE_FACTOR)


def _positive_log10(values: np.ndarray) -> np.ndarray:
    """log10 where positive, NaN elsewhere (a galaxy property that is missing: the invalid-row policy)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)


def tng_log_stellar_mass(mstar: np.ndarray) -> np.ndarray:
    """``smass`` = log10(SubhaloMassType[:, 4] x 1e10) [log10 Msun/h]; NaN without stars."""
    return _positive_log10(mstar * TNG_MASS_UNIT)


def tng_log_ssfr(sfr: np.ndarray, mstar: np.ndarray) -> np.ndarray:
    """``sSFR`` = log10(SubhaloSFR [Msun/yr] / M* [Msun/h]) [log10 h/yr], SFR = 0 drawn (seed 42) as
    ``ingest-tng`` does; NaN without stars."""
    m = mstar * TNG_MASS_UNIT
    out, _ = log_ssfr(sfr.astype(np.float64), np.where(m > 0, m, np.nan),
                      np.random.default_rng(TNG_PRESET_SSFR_SEED))
    return np.where(m > 0, out, np.nan)


def tng_log_radius(rhalf: np.ndarray) -> np.ndarray:
    """``radius`` = log10(SubhaloHalfmassRadType[:, 4]) [log10 kpc/h], ckpc/h made physical at z = 0."""
    return _positive_log10(rhalf * TNG_PRESET_SCALE_FACTOR)


def colour_difference(g: np.ndarray, i: np.ndarray) -> np.ndarray:
    """``color`` = g - i [mag] from two magnitudes."""
    return g - i


# --- the table ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """A column of the user's catalog.  ``domain``: values a conversion needs (finite values outside it
    are refused; non-finite ones go to the usual invalid-row policy): None, "positive" or "scale"
    (a scale factor in (0, 1])."""

    name: str
    unit: str
    meaning: str
    domain: str | None = None
    alternatives: tuple[str, ...] = ()  # other spellings: ``GroupPos[0]``, ``GroupPos_x`` for ``GroupPos_0``
    numeric: bool = True  # False: taken as it is (an id)


@dataclass(frozen=True)
class Conversion:
    """A schema ``column`` = ``function``(``sources``...), ``formula`` for people.  Made whenever its
    sources are in the table; a missing one matters only when the column is needed."""

    column: str
    sources: tuple[Source, ...]
    function: Callable[..., np.ndarray]
    formula: str
    #: an ``M_h`` conversion: the halo mass definition it gives (None: the preset's ``mass_definition``)
    mass_definition: str | None = None
    #: schema column -> what this conversion, when used, means for that column's (added to it in the record)
    caveats: Mapping[str, str] = field(default_factory=dict)

    @property
    def target(self) -> bool:
        return self.column in TARGET_NAMES


@dataclass(frozen=True)
class ColumnPreset:
    name: str
    title: str  # the code or simulation that writes such catalogs
    #: the halo mass definition of ``M_h`` made by the last (fallback) of its conversions: "Mvir" for the halo
    #: finders, whose ``M_h`` is M200c instead when the catalog has that column (``preset_record``)
    mass_definition: str
    #: in order of preference per schema column: the first whose sources the table has is used
    conversions: tuple[Conversion, ...]
    #: schema columns the catalogs do not have: why, and what to do
    absent: Mapping[str, str] = field(default_factory=dict)
    #: schema column -> (a source that looks right but is not, why): refused when it is all there is
    decoys: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: schema column -> what to say besides, when its sources are missing
    hints: Mapping[str, str] = field(default_factory=dict)

    def conversions_of(self, column: str) -> tuple[Conversion, ...]:
        """The conversions making ``column``, in order of preference."""
        return tuple(c for c in self.conversions if c.column == column)

    @property
    def columns(self) -> tuple[str, ...]:
        """The schema columns the preset makes, in table order."""
        return tuple(dict.fromkeys(c.column for c in self.conversions))

    def resolve(self, column: str, lookup: Mapping[str, list[object]]) -> tuple[Conversion, tuple[object, ...]] | None:
        """The conversion making ``column`` from a table's columns (``_lookup``), with the columns it reads: the
        first whose sources are all there (None: none is)."""
        for conv in self.conversions_of(column):
            srcs = tuple(_find(s, lookup) for s in conv.sources)
            if all(s is not None for s in srcs):
                return conv, srcs
        return None

    def mass_of(self, conv: Conversion | None) -> str:
        """The halo mass definition an ``M_h`` conversion gives."""
        return (conv.mass_definition if conv is not None else None) or self.mass_definition


def _component(name: str, i: int, unit: str, meaning: str, domain: str | None = None) -> Source:
    """Component ``i`` of a TNG vector field as a flat table names it: ``GroupPos_0`` (or ``GroupPos[0]``,
    ``GroupPos_x`` for the three axes)."""
    alts = (f"{name}[{i}]",) + ((f"{name}_{'xyz'[i]}",) if i < 3 else ())
    return Source(f"{name}_{i}", unit, meaning, domain, alts)


_MVIR = Source("Mvir", "Msun/h", "virial mass", "positive")
_M200C = Source("M200c", "Msun/h", "mass within R200c, 200 times the critical density", "positive")
_RVIR = Source("Rvir", "kpc/h comoving", "virial radius", "positive")
_RS = Source("rs", "kpc/h comoving", "NFW scale radius", "positive")
_SPIN_BULLOCK = Source("Spin_Bullock", "", "Bullock spin parameter")
_HALFMASS_SCALE = Source("Halfmass_Scale", "scale factor",
                         "scale factor at which the main progenitor reached half its peak mass", "scale")

_DELTA3_ABSENT = ("Delta3_h (subhalo number overdensity within 3 Mpc/h) is not in {title} catalogs: "
                  "`galaxypaint paint --compute-delta3 --box L` computes it from x, y, z (the catalog's haloes as "
                  "tracers, periodic box of side L Mpc/h), or map a column of yours with --columns Delta3_h=NAME")
_PEEBLES = ("Spin", "{option} {name}: the table has Spin but no Spin_Bullock: Spin is Peebles' lambda "
            "J|E|^1/2/(G M^5/2), not the Bullock lambda J/(sqrt(2) M V R) that S_h is and the models were trained "
            "on (Peebles' is systematically different, so the predictions would be silently off); give a catalog "
            "with Spin_Bullock, or --columns S_h=NAME for a Bullock spin column of yours")


#: C_h beside an M200c mass: what the record says (c_vir > c_200c: an NFW halo of c_vir = 5-20 has
#: R200c ~ 0.75 Rvir at z = 0, Delta_vir ~ 100 rho_crit, Bryan & Norman 1998)
_VIRIAL_CONCENTRATION = ("the virial concentration, while M_h is M200c: c200c = R200c / rs, ~0.1 dex lower at "
                         "z = 0, is not converted, the catalog having no R200c")


def _halo_finder_preset(name: str, title: str, hints: Mapping[str, str]) -> ColumnPreset:
    """Rockstar and Consistent-Trees name the same quantities alike (Consistent-Trees adds ``(N)``).  ``M_h``:
    M200c, the trained definition, when the catalog has it (Rockstar's out lists and halos_*.ascii,
    Consistent-Trees' hlists: ``Mvir_all M200b M200c M500c M2500c``), else Mvir."""
    conversions = (
        Conversion("M_h", (_M200C,), log10_mass, "log10(M200c)", mass_definition="M200c",
                   caveats={"C_h": _VIRIAL_CONCENTRATION}),
        Conversion("M_h", (_MVIR,), log10_mass, "log10(Mvir)", mass_definition="Mvir"),
        Conversion("C_h", (_RVIR, _RS), log10_concentration, "log10(Rvir / rs)"),
        Conversion("S_h", (_SPIN_BULLOCK,), same, "Spin_Bullock"),
        Conversion("z_h", (_HALFMASS_SCALE,), redshift_of_scale, "1 / Halfmass_Scale - 1"),
        *(Conversion(axis, (Source(axis, "Mpc/h comoving", f"halo {axis} position"),), same, axis)
          for axis in ("x", "y", "z")),
        Conversion("ID", (Source("id", "", "halo id", numeric=False),), same, "id"),
    )
    return ColumnPreset(name, title, "Mvir", conversions, {"Delta3_h": _DELTA3_ABSENT.format(title=title)},
                        {"S_h": _PEEBLES}, hints)


_TNG_ABSENT_FIT = ("{col} is not in IllustrisTNG group catalogs (it needs {what}): map a column of yours with "
                   "--columns {col}=NAME (as `ingest-tng --aux` does)")

PRESETS: dict[str, ColumnPreset] = {
    # Rockstar's out_*.list / halos_*.ascii: #ID DescID Mvir Vmax Vrms Rvir Rs Np X Y Z ... Spin rs_klypin
    # Mvir_all M200b M200c M500c M2500c Xoff Voff spin_bullock ...
    "rockstar": _halo_finder_preset("rockstar", "Rockstar", {
        "z_h": "Halfmass_Scale is written by Consistent-Trees (from merger histories), not by Rockstar's halo "
               "lists: use --preset-columns consistent-trees on the hlist files"}),
    # Consistent-Trees hlist_*.list: #scale(0) id(1) ... mvir(10) rvir(11) rs(12) ... x(17) y(18) z(19) ...
    # Spin(26) ... M200c(40) ... Spin_Bullock(45) ... Halfmass_Scale(64), matched without the (N) suffix
    # (the numbers vary between versions; some write none after Tidal_ID(36))
    "consistent-trees": _halo_finder_preset("consistent-trees", "Consistent-Trees", {}),
    # a flat table, one row per halo with its central subhalo's fields (as ingest-tng builds it), vector fields
    # flattened as NAME_0, NAME_1, ... (or NAME[0], NAME_x); snapshot 99 (z = 0: comoving lengths are physical)
    "tng": ColumnPreset(
        "tng", "IllustrisTNG", "M200c",
        (
            Conversion("M_h", (Source("Group_M_Crit200", "1e10 Msun/h", "M200c", "positive"),),
                       log10_tng_mass, "log10(Group_M_Crit200 x 1e10)", mass_definition="M200c"),
            Conversion("S_h", (*(_component("SubhaloSpin", i, "kpc/h km/s", "specific angular momentum")
                                 for i in range(3)),
                               Source("Group_M_Crit200", "1e10 Msun/h", "M200c", "positive"),
                               Source("Group_R_Crit200", "ckpc/h", "R200c", "positive")),
                       tng_spin, "norm(SubhaloSpin) / (sqrt(2) V200 R200), V200 = sqrt(G M200 / R200)"),
            *(Conversion(axis, (_component("GroupPos", i, "ckpc/h", f"group {axis} position"),),
                         mpc_of_tng_length, f"GroupPos_{i} / 1000") for i, axis in enumerate("xyz")),
            Conversion("ID", (Source("SubhaloID", "", "central subhalo index", numeric=False),), same, "SubhaloID"),
            Conversion("smass", (_component("SubhaloMassType", 4, "1e10 Msun/h", "stellar mass"),),
                       tng_log_stellar_mass, "log10(SubhaloMassType_4 x 1e10)"),
            Conversion("sSFR", (Source("SubhaloSFR", "Msun/yr", "star formation rate"),
                                _component("SubhaloMassType", 4, "1e10 Msun/h", "stellar mass")),
                       tng_log_ssfr, "log10(SubhaloSFR / (SubhaloMassType_4 x 1e10)), SFR = 0: N(-13.5, 0.5)"),
            Conversion("radius", (_component("SubhaloHalfmassRadType", 4, "ckpc/h", "stellar half-mass radius"),),
                       tng_log_radius, "log10(SubhaloHalfmassRadType_4)"),
            Conversion("color", (_component("SubhaloStellarPhotometrics", BAND_INDEX["g"], "mag", "g magnitude"),
                                 _component("SubhaloStellarPhotometrics", BAND_INDEX["i"], "mag", "i magnitude")),
                       colour_difference, "SubhaloStellarPhotometrics_4 - SubhaloStellarPhotometrics_6"),
        ),
        {"C_h": _TNG_ABSENT_FIT.format(col="C_h", what="NFW fits"),
         "z_h": _TNG_ABSENT_FIT.format(col="z_h", what="merger trees"),
         "Delta3_h": _DELTA3_ABSENT.format(title="IllustrisTNG group")}),
}

#: choices of ``--preset-columns``
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def get_preset(name: str) -> ColumnPreset:
    """The preset called ``name``; refuses an unknown one in one line."""
    preset = PRESETS.get(str(name).strip().lower())
    if preset is None:
        raise CatalogError(f"{_OPTION} {str(name)[:40]!r} is not a known preset: choose from {', '.join(PRESETS)}")
    return preset


# --- applying a preset ----------------------------------------------------------------------------

_SUFFIX = re.compile(r"\(\d+\)$")


def source_key(name: object) -> str:
    """How a source column is matched: case-insensitive, without a leading ``#`` or a ``(N)`` suffix."""
    return _SUFFIX.sub("", str(name).strip().lstrip("#").strip()).strip().lower()


def _lookup(columns: Iterable[object]) -> dict[str, list[object]]:
    """{source_key: the columns with that key, in table order}."""
    found: dict[str, list[object]] = {}
    for col in columns:
        found.setdefault(source_key(col), []).append(col)
    return found


def _find(source: Source, lookup: Mapping[str, list[object]]) -> object | None:
    """The table's column for ``source``: one spelled exactly as a name of it, else the first that matches
    (``X`` and an ``x`` added by an earlier run hold the same positions)."""
    names = (source.name, *source.alternatives)
    for name in names:
        found = lookup.get(source_key(name), [])
        exact = [c for c in found if str(c) in names]
        if found:
            return exact[0] if exact else found[0]
    return None


@dataclass(frozen=True)
class PresetPlan:
    """A preset resolved against one table's columns: which conversions run, on which columns."""

    preset: ColumnPreset
    steps: tuple[tuple[Conversion, tuple[object, ...]], ...]

    @property
    def columns(self) -> list[str]:
        """The schema columns this plan adds."""
        return [conv.column for conv, _ in self.steps]

    @property
    def mass_definition(self) -> str | None:
        """The halo mass definition of the ``M_h`` this plan makes (None: it makes no ``M_h``)."""
        conv = next((c for c, _ in self.steps if c.column == "M_h"), None)
        return None if conv is None else self.preset.mass_of(conv)

    def sources_of(self, columns: Iterable[str]) -> list[object]:
        """The table's columns needed to make ``columns`` (those the plan makes; others are their own)."""
        made = {conv.column: srcs for conv, srcs in self.steps}
        out: list[object] = []
        for c in columns:
            for s in made.get(c, (c,)):
                if s not in out:
                    out.append(s)
        return out

    def apply(self, df: pd.DataFrame, row_offset: int = 0, only: Iterable[str] | None = None) -> pd.DataFrame:
        """``df`` (its own column names) with the converted columns added (``only``: just those); finite
        source values outside a conversion's domain are refused in one line naming the column, the rows
        (0-based, from ``row_offset``) and the option."""
        wanted = None if only is None else set(only)
        added: dict[str, np.ndarray] = {}
        for conv, srcs in self.steps:
            if wanted is not None and conv.column not in wanted:
                continue
            args = [self._values(df, src, col, conv, row_offset) for src, col in zip(conv.sources, srcs)]
            with np.errstate(divide="ignore", invalid="ignore"):
                added[conv.column] = np.asarray(conv.function(*args))
        if not added:
            return df
        out = df.drop(columns=[c for c in added if c in df.columns])
        return pd.concat([out, pd.DataFrame(added, index=df.index)], axis=1)

    def _values(self, df: pd.DataFrame, src: Source, col: object, conv: Conversion, row_offset: int) -> np.ndarray:
        raw = df[col]
        if not src.numeric:
            return raw.to_numpy()
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        text = np.flatnonzero(np.isnan(values) & raw.notna().to_numpy())
        if len(text):
            raise CatalogError(f"{_OPTION} {self.preset.name}: column {col} ({src.meaning}) is not numeric at "
                               f"{_bad_rows_text(text + row_offset)}, e.g. {raw.iloc[text[0]]!r}")
        if src.domain is not None:
            ok = (values > 0) & (values <= 1.0) if src.domain == "scale" else values > 0
            bad = np.flatnonzero(np.isfinite(values) & ~ok)
            if len(bad):
                need = "a scale factor in (0, 1]" if src.domain == "scale" else "positive"
                unit = f" [{src.unit}]" if src.unit else ""
                raise CatalogError(
                    f"{_OPTION} {self.preset.name}: column {col} ({src.meaning}{unit}) has {len(bad)} value"
                    f"{'s' if len(bad) > 1 else ''} not {need} at {_bad_rows_text(bad + row_offset)}, e.g. "
                    f"{values[bad[0]]:g}: {conv.column} = {conv.formula} needs {need} values; remove those rows, "
                    f"or map {conv.column} yourself with --columns {conv.column}=NAME")
        return values

    def explain_missing(self, column: str, columns: Iterable[object]) -> str:
        """Why ``column`` (a schema column someone needs) is not in a table read with this preset."""
        p = self.preset
        if column in p.absent:
            return f"{_OPTION} {p.name}: {p.absent[column]}"
        convs = p.conversions_of(column)
        if not convs:
            return (f"{_OPTION} {p.name}: {column} is not among the columns {p.title} catalogs give "
                    f"({', '.join(p.columns)}); map one of yours with --columns {column}=NAME")
        lookup = _lookup(columns)
        needs = []
        for conv in convs:
            missing = [s for s in conv.sources if _find(s, lookup) is None]
            needs.append(f"column{'s' if len(missing) > 1 else ''} " + ", ".join(
                f"{s.name} ({s.meaning}{', ' + s.unit if s.unit else ''})" for s in missing))
        text = (f"{_OPTION} {p.name}: {column} = {', else '.join(c.formula for c in convs)} needs "
                f"{' or '.join(needs)}, which the table lacks")
        if column in p.hints:
            text += f" ({p.hints[column]})"
        return f"{text}; or map {column} yourself with --columns {column}=NAME"

    def check_required(self, columns: Sequence[object], require: Iterable[str]) -> None:
        """Refuse, in one line, a table that lacks a required schema column, saying why under this preset."""
        missing = [c for c in require if c not in columns]
        if missing:
            more = f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""
            raise CatalogError(self.explain_missing(missing[0], columns) + more)


def plan_preset(name: str, columns: Sequence[object], mapping: Mapping[str, str] | None = None,
                targets: bool = True) -> PresetPlan:
    """Resolve preset ``name`` against a table's ``columns``.  Schema columns named in ``mapping``
    (``--columns``) are left to it; galaxy properties are converted only with ``targets``.  A conversion
    whose source columns are not all there is left out (``explain_missing`` says why, if the column is
    needed), except that a decoy alone (Peebles' ``Spin`` without ``Spin_Bullock``) is refused now: the
    schema's aliases would otherwise take it."""
    preset = get_preset(name)
    mapping = dict(mapping or {})
    lookup = _lookup(columns)
    steps = []
    for column in preset.columns:
        if column in mapping or (column in TARGET_NAMES and not targets):
            continue
        found = preset.resolve(column, lookup)  # the first conversion whose sources are there
        if found is not None:
            conv, srcs = found
            if not (conv.function is same and srcs[0] == conv.column):  # already there, under its name
                steps.append((conv, srcs))
        elif column in preset.decoys:
            decoy, why = preset.decoys[column]
            if source_key(decoy) in lookup:
                raise CatalogError(why.format(option=_OPTION, name=preset.name))
    return PresetPlan(preset, tuple(steps))


def preset_record(name: str, mapping: Mapping[str, str] | None = None,
                  columns: Iterable[object] | None = None) -> dict[str, object]:
    """What a table read with preset ``name`` records in its metadata (``df.attrs["galaxypaint"]``, and the
    files written from it): the preset, the mass definition against the trained one, the warning when
    they differ (None otherwise), and how each schema column was made.  ``columns``: the catalog's own
    column names, which decide between a column's conversions (the halo finders' ``M_h`` is log10 M200c when
    there is an ``M200c`` column, else log10 Mvir); without them, or when none applies, the last (fallback)
    conversion is recorded, as for a catalog with only ``Mvir``."""
    preset = get_preset(name)
    mapping = dict(mapping or {})
    lookup = None if columns is None else _lookup(columns)
    used: dict[str, Conversion] = {}
    for column in preset.columns:
        found = None if lookup is None else preset.resolve(column, lookup)
        used[column] = found[0] if found is not None else preset.conversions_of(column)[-1]
    own_mass = "M_h" in mapping
    mass_conv = None if own_mass else used.get("M_h")
    caveats = {} if mass_conv is None else mass_conv.caveats
    conversions = {c: conv.formula + (f" ({caveats[c]})" if c in caveats else "")
                   for c, conv in used.items() if c not in mapping}
    conversions.update({c: f"--columns {c}={s}" for c, s in mapping.items()})
    mass = f"given by --columns M_h={mapping['M_h']}" if own_mass else preset.mass_of(mass_conv)
    return {"column_preset": preset.name, "mass_definition": mass,
            "trained_mass_definition": TRAINED_MASS_DEFINITION,
            "mass_definition_warning": None if own_mass else mass_warning(preset, mass),
            "column_conversions": conversions}


def mass_warning(preset: ColumnPreset, definition: str | None = None) -> str | None:
    """One line when the halo mass ``definition`` (default: the preset's fallback one) is not the trained
    one (None when it is)."""
    mass = definition or preset.mass_definition
    if mass == TRAINED_MASS_DEFINITION:
        return None
    takes = any(preset.mass_of(c) == TRAINED_MASS_DEFINITION for c in preset.conversions_of("M_h"))
    takes_text = (f", which this preset takes from an {TRAINED_MASS_DEFINITION} column when the catalog has one"
                  if takes else "")
    return (f"{_OPTION} {preset.name}: M_h is log10 {mass}, but the models were trained on "
            f"{TRAINED_MASS_DEFINITION} (TNG's Group_M_Crit200){takes_text}; at z = 0 {mass} is typically "
            f"0.05-0.1 dex above {TRAINED_MASS_DEFINITION}, so the galaxies predicted are those of somewhat more "
            f"massive haloes (--columns M_h=NAME takes a log10 {TRAINED_MASS_DEFINITION} column of yours instead)")


def describe_presets() -> list[dict[str, str]]:
    """The presets as rows (preset, schema column, sources with units, conversion) for docs and help."""
    rows = []
    for p in PRESETS.values():
        for c in p.conversions:
            rows.append({"preset": p.name, "column": c.column,
                         "sources": ", ".join(f"{s.name} [{s.unit}]" if s.unit else s.name for s in c.sources),
                         "conversion": c.formula})
        for col, why in p.absent.items():
            rows.append({"preset": p.name, "column": col, "sources": "-", "conversion": why})
    return rows
