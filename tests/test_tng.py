"""TNG group-catalog ingestion on small files written in the exact TNG layout (several chunks)."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from app.core.catalogs import CatalogError, read_table, write_table
from app.cli import main
from training.tng import G_KPC_KMS2_MSUN, delta3, ingest_tng

BOX_KPC = 20_000.0  # ckpc/h


def _write_chunks(directory, groups: dict, subs: dict, group_split, sub_split, snap=99, redshift=0.0):
    """Write arrays as fof_subhalo_tab_<snap>.<i>.hdf5 chunks split at the given indices."""
    directory.mkdir(parents=True, exist_ok=True)
    n_g = len(groups["GroupFirstSub"])
    n_s = len(subs["SubhaloPos"])
    g_edges = [0, *group_split, n_g]
    s_edges = [0, *sub_split, n_s]
    for i in range(len(g_edges) - 1):
        with h5py.File(directory / f"fof_subhalo_tab_{snap:03d}.{i}.hdf5", "w") as f:
            h = f.create_group("Header")
            h.attrs["BoxSize"] = BOX_KPC
            h.attrs["HubbleParam"] = 0.6774
            h.attrs["Redshift"] = redshift
            h.attrs["Ngroups_Total"] = n_g
            h.attrs["Nsubgroups_Total"] = n_s
            h.attrs["NumFiles"] = len(g_edges) - 1
            g0, g1 = g_edges[i], g_edges[i + 1]
            s0, s1 = s_edges[i], s_edges[i + 1]
            h.attrs["Ngroups_ThisFile"] = g1 - g0
            h.attrs["Nsubgroups_ThisFile"] = s1 - s0
            gg = f.create_group("Group")
            ss = f.create_group("Subhalo")
            if g1 > g0:
                for k, v in groups.items():
                    gg.create_dataset(k, data=v[g0:g1])
            if s1 > s0:
                for k, v in subs.items():
                    ss.create_dataset(k, data=v[s0:s1])


@pytest.fixture()
def groupcat(tmp_path):
    # 4 groups: two with centrals above the cuts, one without subhaloes, one below the mass cut.
    m200 = np.array([100.0, 10**1.5, 50.0, 10**0.2], dtype=np.float32)  # 1e10 Msun/h
    r200 = np.array([200.0, 130.0, 150.0, 40.0], dtype=np.float32)  # ckpc/h
    first = np.array([0, 3, -1, 5], dtype=np.int32)
    gpos = np.array([[1000, 1000, 1000], [10000, 10000, 10000], [5000, 5000, 5000], [15000, 2000, 2000]],
                    dtype=np.float32)
    n_s = 8
    spos = np.array([[1000, 1000, 1000], [19500, 1000, 1000], [1000, 3500, 1000], [10000, 10000, 10000],
                     [10000, 10000, 12900], [15000, 2000, 2000], [5000, 5000, 5000], [1000, 1000, 4100]],
                    dtype=np.float32)
    mtype = np.zeros((n_s, 6), dtype=np.float32)
    mtype[:, 4] = [10**0.3, 0.1, 0.05, 10**-0.5, 0.01, 0.001, 0.2, 0.0]
    v0 = np.sqrt(G_KPC_KMS2_MSUN * 1e12 / 200.0)
    spin = np.zeros((n_s, 3), dtype=np.float32)
    spin[0] = [0.0, 0.05 * np.sqrt(2) * v0 * 200.0, 0.0]  # lambda = 0.05 exactly
    spin[3] = [10.0, 20.0, 30.0]
    sfr = np.array([1.0, 0, 0, 0.0, 0, 0, 0, 0], dtype=np.float32)
    rhalf = np.zeros((n_s, 6), dtype=np.float32)
    rhalf[:, 4] = [3.0, 1, 1, 5.0, 1, 1, 1, 1]
    phot = np.zeros((n_s, 8), dtype=np.float32)
    phot[:, 4] = -20.0  # g
    phot[:, 6] = -21.0  # i
    phot[3, 6] = -20.4
    groups = {"GroupFirstSub": first, "Group_M_Crit200": m200, "Group_R_Crit200": r200, "GroupPos": gpos}
    subs = {"SubhaloPos": spos, "SubhaloSpin": spin, "SubhaloMassType": mtype, "SubhaloSFR": sfr,
            "SubhaloHalfmassRadType": rhalf, "SubhaloStellarPhotometrics": phot}
    d = tmp_path / "groups_099"
    # chunk 1 holds groups but no subhaloes, chunk 2 subhaloes only: both happen in real catalogs
    _write_chunks(d, groups, subs, group_split=[2, 4], sub_split=[3, 3])
    aux = write_table(pd.DataFrame({"SubhaloID": [0, 3, 5], "C_h": [1.1, 0.9, 1.0], "z_h": [1.5, 0.8, 2.0]}),
                      tmp_path / "aux.csv")
    return d, aux, spos / 1000.0


def test_ingest_known_answers(groupcat):
    d, aux, spos = groupcat
    df = ingest_tng(d.parent, snap=99, aux=aux, seed=5)
    assert list(df["ID"]) == [0, 3]  # group 2 has no subhalo, group 3 is below the mass cut
    a, b = df.iloc[0], df.iloc[1]
    assert a["M_h"] == pytest.approx(12.0, abs=1e-6)
    assert b["M_h"] == pytest.approx(11.5, abs=1e-6)
    assert a["S_h"] == pytest.approx(0.05, rel=1e-5)
    v = np.sqrt(G_KPC_KMS2_MSUN * 10**11.5 / 130.0)
    assert b["S_h"] == pytest.approx(np.sqrt(10**2 + 20**2 + 30**2) / (np.sqrt(2) * v * 130.0), rel=1e-5)
    assert a["smass"] == pytest.approx(10.3, abs=1e-6)
    assert a["sSFR"] == pytest.approx(-10.3, abs=1e-6)
    # SFR = 0: the paper's N(-13.5, 0.5) draw, reproducible from the seed
    assert b["sSFR"] == pytest.approx(np.random.default_rng(5).normal(-13.5, 0.5, 1)[0])
    assert a["radius"] == pytest.approx(np.log10(3.0), abs=1e-6)
    assert a["color"] == pytest.approx(1.0) and b["color"] == pytest.approx(0.4, abs=1e-5)
    assert (a["x"], a["y"], a["z"]) == pytest.approx((1.0, 1.0, 1.0))
    assert (a["C_h"], a["z_h"], b["C_h"], b["z_h"]) == pytest.approx((1.1, 1.5, 0.9, 0.8))
    # Delta3: within 3 Mpc/h of subhalo 0 lie subhaloes 1 (across the periodic edge, 1.5), 2 (2.5), 7 (3.1: no)
    mean_count = 8 * 4 / 3 * np.pi * 27 / 20.0**3
    assert a["Delta3_h"] == pytest.approx(2 / mean_count)
    assert b["Delta3_h"] == pytest.approx(1 / mean_count)  # subhalo 4 at 2.9


def test_delta3_matches_brute_force():
    rng = np.random.default_rng(1)
    box = 30.0
    tracers = rng.random((500, 3)) * box
    centres = tracers[:40]
    d = np.abs(centres[:, None, :] - tracers[None, :, :])
    d = np.minimum(d, box - d)
    counts = (np.sqrt((d**2).sum(-1)) <= 3.0).sum(1) - 1
    expected = counts / (500 * 4 / 3 * np.pi * 27 / box**3)
    np.testing.assert_allclose(delta3(centres, tracers, box), expected)


def test_ingest_without_cuts_keeps_small_halo(groupcat):
    d, aux, _ = groupcat
    df = ingest_tng(d, aux=aux, apply_cuts=False)
    assert list(df["ID"]) == [0, 3, 5]


def test_missing_chunk_and_aux_gaps_are_reported(groupcat, tmp_path):
    d, aux, _ = groupcat
    bad_aux = write_table(pd.DataFrame({"SubhaloID": [0], "C_h": [1.0], "z_h": [1.0]}), tmp_path / "aux2.csv")
    with pytest.raises(CatalogError, match="no C_h/z_h for 1 central .*SubhaloID 3"):
        ingest_tng(d, aux=bad_aux)
    (d / "fof_subhalo_tab_099.1.hdf5").unlink()
    with pytest.raises(CatalogError, match="not contiguous"):
        ingest_tng(d, aux=aux)
    with pytest.raises(CatalogError, match="no fof_subhalo_tab_098"):
        ingest_tng(d, snap=98)


def test_ingest_cli_writes_table(groupcat, tmp_path, capsys):
    d, aux, _ = groupcat
    out = tmp_path / "tng.parquet"
    assert main(["ingest-tng", "--groupcat", str(d), "--aux", str(aux), "--out", str(out)]) == 0
    df = read_table(out)
    assert len(df) == 2 and df.attrs["galaxypaint"]["snap"] == 99
    assert main(["ingest-tng", "--groupcat", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("galaxypaint: error: no fof_subhalo_tab_099")
