"""Build the paper's halo/central-galaxy table from an IllustrisTNG group catalog.

Reads the chunked ``fof_subhalo_tab_<snap>.<i>.hdf5`` files (``Header``, ``Group``, ``Subhalo``
groups; TNG units: masses 1e10 Msun/h, lengths ckpc/h, velocities km/s, SFR Msun/yr,
magnitudes in the bands U, B, V, K, g, r, i, z) and returns one row per central subhalo
(``GroupFirstSub``) with the columns of ``app.core.schema``:

* ``M_h`` = log10(Group_M_Crit200 x 1e10) [Msun/h];
* ``S_h`` = Bullock et al. (2001) lambda = |j| / (sqrt(2) V200 R200) with j = SubhaloSpin (specific
  angular momentum, physical kpc/h km/s), R200 = Group_R_Crit200 (converted to physical with the
  snapshot's scale factor) and V200 = sqrt(G M200 / R200);
* ``Delta3_h`` = number of subhaloes (all of them, the central itself excluded) within 3 Mpc/h
  (comoving) of the central, periodic box, divided by the mean number N_sub 4/3 pi 3^3 / L^3;
* ``smass`` = log10(SubhaloMassType[:, 4] x 1e10) [Msun/h];
* ``sSFR`` = log10(SubhaloSFR / M*) [h/yr]; SFR = 0 galaxies get a value drawn from N(-13.5, 0.5)
  (seeded), as in the paper;
* ``radius`` = log10(SubhaloHalfmassRadType[:, 4]) [kpc/h], physical;
* ``color`` = g - i from SubhaloStellarPhotometrics;
* ``x, y, z`` = GroupPos [Mpc/h];
* ``C_h`` and ``z_h`` need NFW fits and merger trees, which group catalogs lack: they come from
  an auxiliary table (CSV/Parquet/HDF5) keyed by ``SubhaloID`` (the subhalo index at this snapshot).

The paper's cuts (M_h > 10.5, smass > 8.75) are applied unless ``apply_cuts=False``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from app.core.catalogs import METADATA_KEY, CatalogError, read_table
# TNG's units and the conversions are shared with ``--preset-columns tng`` (one definition of each)
from app.core.column_presets import (BAND_INDEX, G_KPC_KMS2_MSUN, TNG_KPC_PER_MPC,  # noqa: F401  (re-exported)
                                     TNG_MASS_UNIT, bullock_spin, log_ssfr)
from app.core.environment import delta3  # noqa: F401  (re-exported: ingestion computes Delta3_h with it)
from app.core.schema import CUTS

_GROUP_FIELDS = ("GroupFirstSub", "Group_M_Crit200", "Group_R_Crit200", "GroupPos")
_SUBHALO_FIELDS = ("SubhaloPos", "SubhaloSpin", "SubhaloMassType", "SubhaloSFR",
                   "SubhaloHalfmassRadType", "SubhaloStellarPhotometrics")


def group_catalog_files(groupcat: str | Path, snap: int) -> list[Path]:
    """The chunk files of one snapshot, in chunk order.

    Accepts the snapshot directory itself (``groups_099``), its parent, or a single file.
    """
    root = Path(groupcat)
    if root.is_file():
        return [root]
    pattern = re.compile(rf"fof_subhalo_tab_{snap:03d}\.(\d+)\.hdf5$")
    for d in (root, root / f"groups_{snap:03d}"):
        if d.is_dir():
            found = sorted(((int(m.group(1)), p) for p in d.iterdir() if (m := pattern.search(p.name))),
                           key=lambda t: t[0])
            if found:
                numbers = [i for i, _ in found]
                if numbers != list(range(len(numbers))):
                    raise CatalogError(f"group catalog chunks in {d} are not contiguous: found {numbers}")
                return [p for _, p in found]
    raise CatalogError(f"no fof_subhalo_tab_{snap:03d}.N.hdf5 files under {root}")


def read_group_catalog(files: list[Path], progress: Callable[[int, int], None] | None = None
                       ) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Concatenate Header, Group and Subhalo fields over chunk files."""
    import h5py

    header: dict[str, float] = {}
    groups: dict[str, list[np.ndarray]] = {k: [] for k in _GROUP_FIELDS}
    subs: dict[str, list[np.ndarray]] = {k: [] for k in _SUBHALO_FIELDS}
    if progress:
        progress(0, len(files))
    for i, path in enumerate(files):
        try:
            with h5py.File(path, "r") as f:
                if not header:
                    attrs = f["Header"].attrs
                    header = {k: float(np.asarray(attrs[k]).ravel()[0]) for k in
                              ("BoxSize", "HubbleParam", "Redshift", "Ngroups_Total", "Nsubgroups_Total")}
                for name in _GROUP_FIELDS:
                    if int(f["Header"].attrs["Ngroups_ThisFile"]) > 0:
                        groups[name].append(f["Group"][name][()])
                for name in _SUBHALO_FIELDS:
                    if int(f["Header"].attrs["Nsubgroups_ThisFile"]) > 0:
                        subs[name].append(f["Subhalo"][name][()])
        except KeyError as exc:
            raise CatalogError(f"{path}: missing {exc.args[0]!s} (not a TNG group catalog chunk?)") from exc
        except OSError as exc:
            raise CatalogError(f"cannot read {path}: {exc}") from exc
        if progress:
            progress(i + 1, len(files))
    g = {k: np.concatenate(v) for k, v in groups.items() if v}
    s = {k: np.concatenate(v) for k, v in subs.items() if v}
    if len(g) < len(_GROUP_FIELDS) or len(s) < len(_SUBHALO_FIELDS):
        raise CatalogError("the group catalog has no groups or no subhaloes")
    if len(g["GroupFirstSub"]) != int(header["Ngroups_Total"]):
        raise CatalogError(f"read {len(g['GroupFirstSub'])} groups but the header says "
                           f"{int(header['Ngroups_Total'])}: some chunk files are missing")
    return header, g, s


def _read_aux(aux: str | Path) -> pd.DataFrame:
    df = read_table(aux)
    id_col = next((c for c in df.columns if str(c).lower() in ("subhaloid", "subhalo_id", "id")), None)
    if id_col is None:
        raise CatalogError(f"auxiliary table {aux} needs a SubhaloID column")
    missing = [c for c in ("C_h", "z_h") if c not in df.columns]
    if missing:
        raise CatalogError(f"auxiliary table {aux} lacks {', '.join(missing)}")
    out = df[[id_col, "C_h", "z_h"]].rename(columns={id_col: "SubhaloID"})
    if out["SubhaloID"].duplicated().any():
        raise CatalogError(f"auxiliary table {aux} has duplicate SubhaloID values")
    return out


def ingest_tng(groupcat: str | Path, snap: int = 99, aux: str | Path | None = None, seed: int = 42,
               apply_cuts: bool = True, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """The paper's table of haloes and central galaxies from a TNG group catalog (see module doc)."""
    files = group_catalog_files(groupcat, snap)
    header, g, s = read_group_catalog(files, progress)
    a = 1.0 / (1.0 + header["Redshift"])
    box = header["BoxSize"] / TNG_KPC_PER_MPC  # Mpc/h

    first = g["GroupFirstSub"].astype(np.int64)
    has_central = first >= 0
    gidx = np.flatnonzero(has_central)
    sid = first[has_central]

    m200 = g["Group_M_Crit200"][gidx].astype(np.float64) * TNG_MASS_UNIT  # Msun/h
    r200 = g["Group_R_Crit200"][gidx].astype(np.float64) * a  # physical kpc/h
    mstar = s["SubhaloMassType"][sid, 4].astype(np.float64) * TNG_MASS_UNIT
    ok = (m200 > 0) & (r200 > 0) & (mstar > 0)
    gidx, sid, m200, r200, mstar = gidx[ok], sid[ok], m200[ok], r200[ok], mstar[ok]

    j = np.linalg.norm(s["SubhaloSpin"][sid].astype(np.float64), axis=1)
    spin = bullock_spin(j, m200, r200)

    sfr = s["SubhaloSFR"][sid].astype(np.float64)
    ssfr, zero = log_ssfr(sfr, mstar, np.random.default_rng(seed))

    rhalf = s["SubhaloHalfmassRadType"][sid, 4].astype(np.float64) * a
    with np.errstate(divide="ignore"):
        radius = np.log10(rhalf)
    phot = s["SubhaloStellarPhotometrics"][sid].astype(np.float64)
    color = phot[:, BAND_INDEX["g"]] - phot[:, BAND_INDEX["i"]]

    pos = g["GroupPos"][gidx].astype(np.float64) / TNG_KPC_PER_MPC
    sub_pos = s["SubhaloPos"].astype(np.float64) / TNG_KPC_PER_MPC
    d3 = delta3(s["SubhaloPos"][sid].astype(np.float64) / TNG_KPC_PER_MPC, sub_pos, box)

    df = pd.DataFrame({
        "ID": sid, "x": pos[:, 0], "y": pos[:, 1], "z": pos[:, 2],
        "M_h": np.log10(m200), "S_h": spin, "Delta3_h": d3,
        "smass": np.log10(mstar), "sSFR": ssfr, "radius": radius, "color": color,
        "sfr_zero": zero,
    })
    if apply_cuts:  # before the aux merge: auxiliary tables often cover only the selected centrals
        keep = (df["M_h"] > CUTS["M_h"]) & (df["smass"] > CUTS["smass"]) & np.isfinite(df["radius"])
        df = df[keep]
    if aux is not None:
        extra = _read_aux(aux)
        df = df.merge(extra, how="left", left_on="ID", right_on="SubhaloID").drop(columns="SubhaloID")
        n_missing = int(df["C_h"].isna().sum())
        if n_missing:
            raise CatalogError(f"auxiliary table {aux} has no C_h/z_h for {n_missing} central{'s' if n_missing > 1 else ''} "
                               f"(e.g. SubhaloID {int(df.loc[df['C_h'].isna(), 'ID'].iloc[0])})")
    order = ["ID", "x", "y", "z", "M_h", "C_h", "S_h", "z_h", "Delta3_h", "smass", "sSFR", "radius", "color",
             "sfr_zero"]
    df = df[[c for c in order if c in df.columns]].reset_index(drop=True)
    df.attrs["box"] = box
    df.attrs["redshift"] = header["Redshift"]
    # where write_table looks: the table written by a library caller keeps its box too
    df.attrs[METADATA_KEY] = {"kind": "tng-centrals", "box": box, "redshift": header["Redshift"]}
    return df
