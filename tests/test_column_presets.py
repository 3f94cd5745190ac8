"""``--preset-columns rockstar|consistent-trees|tng``: the catalogs users have, read through the same path as
every table (CSV with a Consistent-Trees ``#`` header, Parquet, HDF5 written by the project's writer), with
their conversions checked against values computed by hand, and end to end against the same catalog
converted by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.cli import main
from app.core.catalogs import CatalogError, load_catalog, read_table, write_table
from app.core.column_presets import G_KPC_KMS2_MSUN, PRESETS, describe_presets, plan_preset, preset_record
from tests.conftest import REPO, run_cli

pytest.importorskip("lightgbm")

N = 400
#: a Consistent-Trees hlist header: leading '#', a (N) column number after every name
CT_NAMES = {"scale": "#scale(0)", "id": "id(1)", "Mvir": "mvir(10)", "Rvir": "rvir(11)", "rs": "rs(12)",
            "x": "x(17)", "y": "y(18)", "z": "z(19)", "Spin": "Spin(26)", "Spin_Bullock": "Spin_Bullock(45)",
            "Halfmass_Scale": "Halfmass_Scale(64)", "env": "my_env"}


@pytest.fixture(scope="module")
def halos(trained):
    """Haloes of the session's small trained catalog, as a halo finder writes them (Rockstar names and units)
    with the user's own environment column, and the registry trained on that catalog."""
    root, df = trained
    src = df.iloc[:N].reset_index(drop=True)
    rs = 15.0 + 10.0 * (np.arange(N) % 7)  # kpc/h
    raw = pd.DataFrame({"scale": 1.0, "id": 1000 + np.arange(N), "Mvir": 10.0 ** src["M_h"],
                        "Rvir": rs * 10.0 ** src["C_h"], "rs": rs, "x": src["x"], "y": src["y"], "z": src["z"],
                        "Spin": 0.8 * src["S_h"], "Spin_Bullock": src["S_h"],
                        "Halfmass_Scale": 1.0 / (1.0 + src["z_h"]), "env": src["Delta3_h"]})
    return raw, str(root / "models")


def by_hand(raw: pd.DataFrame, names: dict[str, str], mass: str = "Mvir") -> pd.DataFrame:
    """The schema's columns computed here from a halo finder's (read back from its file: ``names``), M_h from
    its ``mass`` column."""
    col = {k: raw[v].to_numpy(dtype=np.float64) for k, v in names.items() if k not in ("id", "env")}
    return pd.DataFrame({"M_h": np.log10(col[mass]), "C_h": np.log10(col["Rvir"] / col["rs"]),
                         "S_h": col["Spin_Bullock"], "z_h": 1.0 / col["Halfmass_Scale"] - 1.0,
                         "Delta3_h": raw[names["env"]].to_numpy(), "x": col["x"], "y": col["y"], "z": col["z"]})


def predicted(path) -> pd.DataFrame:
    return read_table(path)[["smass_pred", "sSFR_pred", "color_pred"]]


def test_conversions_give_the_values_computed_by_hand():
    raw = pd.DataFrame({"#scale(0)": [1.0, 1.0], "mvir(10)": [1e12, 2e11], "rvir(11)": [200.0, 100.0],
                        "RS(12)": [20.0, 25.0], "Spin_Bullock(45)": [0.04, 0.05], "HALFMASS_SCALE(64)": [0.5, 0.25],
                        "x(17)": [1.0, 2.0], "y(18)": [3.0, 4.0], "z(19)": [5.0, 6.0]})
    got = plan_preset("consistent-trees", list(raw.columns)).apply(raw)
    np.testing.assert_allclose(got["M_h"], [12.0, np.log10(2e11)], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["C_h"], [1.0, np.log10(4.0)], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["z_h"], [1.0, 3.0], rtol=0, atol=1e-12)
    assert got["S_h"].tolist() == [0.04, 0.05] and got["x"].tolist() == [1.0, 2.0]
    assert list(got.columns[:9]) == list(raw.columns)  # the catalog's own columns are kept

    v200 = np.sqrt(G_KPC_KMS2_MSUN * 1e12 / 200.0)  # km/s for M200c = 1e12 Msun/h, R200c = 200 kpc/h
    j = 0.05 * np.sqrt(2.0) * v200 * 200.0  # so that lambda_Bullock = 0.05
    tng = pd.DataFrame({"Group_M_Crit200": [100.0], "Group_R_Crit200": [200.0], "SubhaloSpin_0": [0.6 * j],
                        "SubhaloSpin_1": [0.8 * j], "SubhaloSpin_2": [0.0], "GroupPos_0": [1500.0],
                        "GroupPos[1]": [20000.0], "groupPos_z": [250.0], "SubhaloMassType_4": [10 ** 0.3],
                        "SubhaloSFR": [1.0], "SubhaloHalfmassRadType_4": [3.0],
                        "SubhaloStellarPhotometrics_4": [-20.0], "SubhaloStellarPhotometrics_6": [-21.0]})
    got = plan_preset("tng", list(tng.columns)).apply(tng)
    expected = {"M_h": 12.0, "S_h": 0.05, "x": 1.5, "y": 20.0, "z": 0.25, "smass": 10.3, "sSFR": -10.3,
                "radius": np.log10(3.0), "color": 1.0}
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], [value], rtol=1e-12, err_msg=name)
    # a galaxy without stars has no stellar mass: left to the invalid-row policy, as a missing value
    dark = plan_preset("tng", list(tng.columns)).apply(tng.assign(SubhaloMassType_4=0.0))
    assert dark[["smass", "sSFR"]].isna().all(axis=None)
    assert "smass" not in plan_preset("tng", list(tng.columns), targets=False).columns


def test_consistent_trees_csv_predicts_as_the_catalog_converted_by_hand(tmp_path, halos, capsys):
    raw, models = halos
    path = tmp_path / "hlist_1.00000.csv"
    raw.rename(columns=CT_NAMES).to_csv(path, index=False)
    assert path.read_text().startswith("#scale(0),id(1),mvir(10)")
    hand = write_table(by_hand(pd.read_csv(path), CT_NAMES), tmp_path / "hand.parquet")
    out, ref = tmp_path / "out.parquet", tmp_path / "ref.parquet"
    assert main(["predict", "--data", str(path), "--out", str(out), "--registry", models,
                 "--preset-columns", "consistent-trees", "--columns", "Delta3_h=my_env"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "Mvir" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: --preset-columns consistent-trees: M_h is log10 "
                                                       "Mvir") and "M200c" in warning[0]
    assert main(["predict", "--data", str(hand), "--out", str(ref), "--registry", models]) == 0
    pd.testing.assert_frame_equal(predicted(out), predicted(ref), check_exact=False, rtol=0, atol=1e-12)
    painted = read_table(out)
    assert painted["ID"].tolist() == raw["id"].tolist()  # id(1) keys the haloes
    meta = painted.attrs["galaxypaint"]
    assert meta["column_preset"] == "consistent-trees" and meta["mass_definition"] == "Mvir"
    assert meta["trained_mass_definition"] == "M200c" and meta["mass_definition_warning"] == warning[0][9:]
    assert meta["column_conversions"]["C_h"] == "log10(Rvir / rs)"
    assert meta["column_conversions"]["Delta3_h"] == "--columns Delta3_h=my_env"


def test_rockstar_parquet_paints_streamed_as_by_hand_with_delta3_from_positions(tmp_path, halos, capsys):
    raw, models = halos
    names = {"scale": "scale", "id": "ID", "Mvir": "Mvir", "Rvir": "Rvir", "rs": "Rs", "x": "X", "y": "Y",
             "z": "Z", "Spin": "Spin", "Spin_Bullock": "spin_bullock", "Halfmass_Scale": "Halfmass_Scale",
             "env": "env"}
    path = write_table(raw.rename(columns=names), tmp_path / "out_0.parquet")
    hand = write_table(by_hand(pd.read_parquet(path), names), tmp_path / "hand.parquet")
    out, ref = tmp_path / "painted.hdf5", tmp_path / "ref.hdf5"
    delta3 = ("--compute-delta3", "--box", "205")
    assert main(["paint", "--catalog", str(path), "--out", str(out), "--registry", models, "--chunk-rows", "150",
                 "--preset-columns", "rockstar", *delta3]) == 0
    err = capsys.readouterr().err
    assert sum("warning: --preset-columns rockstar: M_h is log10 Mvir" in line for line in err.splitlines()) == 1
    assert main(["paint", "--catalog", str(hand), "--out", str(ref), "--registry", models, *delta3]) == 0
    pd.testing.assert_frame_equal(predicted(out), predicted(ref), check_exact=False, rtol=0, atol=1e-12)
    painted = read_table(out)
    # Peebles' Spin stays what it is: not taken for S_h by the schema's aliases
    np.testing.assert_array_equal(painted["S_h"], raw["Spin_Bullock"])
    assert painted["Spin"].tolist() == raw["Spin"].tolist()
    meta = painted.attrs["galaxypaint"]
    assert meta["kind"] == "painted" and meta["column_preset"] == "rockstar"
    assert meta["mass_definition"] == "Mvir" and "M200c" in meta["mass_definition_warning"]


def _tng_table(raw: pd.DataFrame) -> pd.DataFrame:
    """The haloes as a flat table of TNG group catalog fields (1e10 Msun/h, ckpc/h) plus the user's C_h, z_h
    and environment under names of their own."""
    m200, r200 = 10.0 ** (np.log10(raw["Mvir"]) - 10.0), 150.0 + raw.index.to_numpy() % 50
    j = raw["Spin_Bullock"] * np.sqrt(2.0) * np.sqrt(G_KPC_KMS2_MSUN * m200 * 1e10 / r200) * r200
    return pd.DataFrame({"SubhaloID": raw["id"], "Group_M_Crit200": m200, "Group_R_Crit200": r200,
                         "SubhaloSpin_0": 0.6 * j, "SubhaloSpin_1": -0.8 * j, "SubhaloSpin_2": 0.0,
                         **{f"GroupPos_{i}": raw[axis] * 1000.0 for i, axis in enumerate("xyz")},
                         "c_fit": np.log10(raw["Rvir"] / raw["rs"]), "z_half": 1.0 / raw["Halfmass_Scale"] - 1.0,
                         "env": raw["env"], "SubhaloMassType_4": 0.01 * m200})


def test_tng_hdf5_predicts_as_by_hand_without_a_mass_warning(tmp_path, halos, capsys):
    raw, models = halos
    tng = _tng_table(raw)
    path = write_table(tng, tmp_path / "groups.hdf5")
    back = read_table(path)  # TNG's names are not the schema's: read as they are
    m, r = back["Group_M_Crit200"].to_numpy() * 1e10, back["Group_R_Crit200"].to_numpy()
    spin = np.sqrt(back["SubhaloSpin_0"] ** 2 + back["SubhaloSpin_1"] ** 2 + back["SubhaloSpin_2"] ** 2)
    hand = pd.DataFrame({"M_h": np.log10(m), "C_h": back["c_fit"], "S_h": spin / (np.sqrt(2.0) * r *
                                                                                np.sqrt(G_KPC_KMS2_MSUN * m / r)),
                         "z_h": back["z_half"], "Delta3_h": back["env"]})
    np.testing.assert_allclose(hand["S_h"], raw["Spin_Bullock"], rtol=1e-12)
    ref = write_table(hand, tmp_path / "hand.parquet")
    out = tmp_path / "out.parquet"
    assert main(["predict", "--data", str(path), "--out", str(out), "--registry", models, "--preset-columns", "tng",
                 "--columns", "C_h=c_fit,z_h=z_half,Delta3_h=env"]) == 0
    assert "M200c" not in capsys.readouterr().err  # TNG's mass is the trained one
    assert main(["predict", "--data", str(ref), "--out", str(tmp_path / "ref.parquet"), "--registry", models]) == 0
    pd.testing.assert_frame_equal(predicted(out), predicted(tmp_path / "ref.parquet"), check_exact=False, rtol=0,
                                  atol=1e-10)
    painted = read_table(out)
    np.testing.assert_allclose(painted["x"], raw["x"], rtol=1e-12)  # ckpc/h -> Mpc/h
    assert "smass" not in painted  # galaxy properties only where they are used (train, pk)
    meta = painted.attrs["galaxypaint"]
    assert meta["mass_definition"] == "M200c" and meta["mass_definition_warning"] is None
    df, _ = load_catalog(path, require=[*hand.columns, "smass"], mapping="C_h=c_fit,z_h=z_half,Delta3_h=env",
                         preset="tng")
    np.testing.assert_allclose(df["smass"], hand["M_h"] - 2.0, rtol=0, atol=1e-12)


def test_columns_wins_over_the_preset_and_then_no_mass_warning(tmp_path, halos, capsys):
    raw, _ = halos
    own = raw.rename(columns={"env": "Delta3"}).assign(logM200c=np.log10(raw["Mvir"]) - 0.08)
    path = write_table(own, tmp_path / "out_0.csv")
    df, _ = load_catalog(path, mapping="M_h=logM200c,Delta3_h=Delta3", preset="rockstar")
    np.testing.assert_array_equal(df["M_h"], own["logM200c"])
    assert "mass_definition_warning" in df.attrs["galaxypaint"]
    assert df.attrs["galaxypaint"]["mass_definition_warning"] is None
    assert main(["inspect", str(path), "--preset-columns", "rockstar", "--columns",
                 "M_h=logM200c,Delta3_h=Delta3"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_m200c_is_taken_over_mvir_when_the_catalog_has_it():
    """M_h = log10(M200c), the models' own definition, when there is an M200c column (Rockstar's out lists,
    Consistent-Trees' hlists); log10(Mvir) with the warning when there is not; --columns M_h=... wins."""
    ct = pd.DataFrame({"#scale(0)": [1.0, 1.0], "mvir(10)": [1.2e12, 2.4e11], "rvir(11)": [200.0, 100.0],
                       "rs(12)": [20.0, 25.0], "M200b(39)": [1.3e12, 2.6e11], "M200c(40)": [1e12, 2e11],
                       "M500c(41)": [7e11, 1.4e11]})
    plan = plan_preset("consistent-trees", list(ct.columns))
    got = plan.apply(ct)
    np.testing.assert_allclose(got["M_h"], [12.0, np.log10(2e11)], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["C_h"], [1.0, np.log10(4.0)], rtol=0, atol=1e-12)  # still Rvir / rs
    assert plan.mass_definition == "M200c" and plan.sources_of(["M_h"]) == ["M200c(40)"]
    record = preset_record("consistent-trees", {}, columns=ct.columns)
    assert record["mass_definition"] == "M200c" and record["mass_definition_warning"] is None
    assert record["column_conversions"]["M_h"] == "log10(M200c)"
    assert record["column_conversions"]["C_h"].startswith("log10(Rvir / rs) (the virial concentration")
    assert "c200c" in record["column_conversions"]["C_h"]

    rockstar = pd.DataFrame({"#ID": [1, 2], "Mvir": [1.2e12, 2.4e11], "Rvir": [200.0, 100.0], "Rs": [20.0, 25.0],
                             "Mvir_all": [1.25e12, 2.5e11], "M200b": [1.3e12, 2.6e11], "m200c": [1e12, 2e11]})
    plan = plan_preset("rockstar", list(rockstar.columns))
    np.testing.assert_allclose(plan.apply(rockstar)["M_h"], [12.0, np.log10(2e11)], rtol=0, atol=1e-12)
    assert plan.mass_definition == "M200c"
    assert preset_record("rockstar", None, rockstar.columns)["mass_definition_warning"] is None

    only_mvir = rockstar.drop(columns=["m200c"])
    plan = plan_preset("rockstar", list(only_mvir.columns))
    np.testing.assert_allclose(plan.apply(only_mvir)["M_h"], np.log10([1.2e12, 2.4e11]), rtol=0, atol=1e-12)
    record = preset_record("rockstar", None, only_mvir.columns)
    assert plan.mass_definition == record["mass_definition"] == "Mvir"
    assert record["mass_definition_warning"].startswith("--preset-columns rockstar: M_h is log10 Mvir, but the "
                                                        "models were trained on M200c")
    assert record["column_conversions"] == {**record["column_conversions"], "M_h": "log10(Mvir)",
                                            "C_h": "log10(Rvir / rs)"}
    assert preset_record("rockstar") == preset_record("rockstar", None, [])  # no columns: as Mvir only

    own = plan_preset("rockstar", list(rockstar.columns), {"M_h": "logM"})
    assert "M_h" not in own.columns and own.mass_definition is None
    record = preset_record("rockstar", {"M_h": "logM"}, rockstar.columns)
    assert record["mass_definition"] == "given by --columns M_h=logM" and record["mass_definition_warning"] is None
    # a catalog with neither says both
    with pytest.raises(CatalogError, match=r"M_h = log10\(M200c\), else log10\(Mvir\) needs column M200c .* or "
                                           r"column Mvir .*, which the table lacks"):
        plan_preset("rockstar", ["Rvir", "Rs"]).check_required(["Rvir", "Rs", "C_h"], ["M_h"])


def test_m200c_catalog_predicts_as_by_hand_without_a_mass_warning(tmp_path, halos, capsys):
    raw, models = halos
    both = raw.assign(M200c=raw["Mvir"], Mvir=raw["Mvir"] * 10.0 ** 0.07)  # the trained M_h is log10 M200c
    names = {**CT_NAMES, "M200c": "M200c(40)"}
    path = tmp_path / "hlist_1.00000.csv"
    both.rename(columns=names).to_csv(path, index=False)
    hand = write_table(by_hand(pd.read_csv(path), names, mass="M200c"), tmp_path / "hand.parquet")
    np.testing.assert_allclose(pd.read_parquet(hand)["M_h"], np.log10(raw["Mvir"]), rtol=0, atol=1e-12)
    out, ref = tmp_path / "out.parquet", tmp_path / "ref.parquet"
    assert main(["predict", "--data", str(path), "--out", str(out), "--registry", models,
                 "--preset-columns", "consistent-trees", "--columns", "Delta3_h=my_env"]) == 0
    assert "M_h is log10" not in capsys.readouterr().err  # M200c is the trained definition: nothing to warn of
    assert main(["predict", "--data", str(hand), "--out", str(ref), "--registry", models]) == 0
    pd.testing.assert_frame_equal(predicted(out), predicted(ref), check_exact=False, rtol=0, atol=1e-12)
    meta = read_table(out).attrs["galaxypaint"]
    assert meta["mass_definition"] == "M200c" and meta["mass_definition_warning"] is None
    assert meta["column_conversions"]["M_h"] == "log10(M200c)"
    assert "virial concentration" in meta["column_conversions"]["C_h"]
    # streamed: Rockstar's spelling, a parquet out list painted chunk by chunk
    rockstar = write_table(both.rename(columns={"id": "ID", "rs": "Rs"}), tmp_path / "out_0.parquet")
    painted = tmp_path / "painted.parquet"
    assert main(["paint", "--catalog", str(rockstar), "--out", str(painted), "--registry", models, "--chunk-rows",
                 "150", "--preset-columns", "rockstar", "--columns", "Delta3_h=env"]) == 0
    assert "M_h is log10" not in capsys.readouterr().err
    pd.testing.assert_frame_equal(predicted(painted).reset_index(drop=True), predicted(ref).reset_index(drop=True),
                                  check_exact=False, rtol=0, atol=1e-12)
    meta = read_table(painted).attrs["galaxypaint"]
    assert meta["kind"] == "painted" and meta["mass_definition"] == "M200c"
    assert meta["mass_definition_warning"] is None


def test_bad_catalogs_are_refused_in_one_line_naming_the_column_and_the_option(tmp_path, halos):
    raw, _ = halos
    ct = raw.rename(columns=CT_NAMES)
    cases = {  # file -> (what the one line must say)
        "peebles.csv": (ct.drop(columns=["Spin_Bullock(45)"]), ("Spin is Peebles", "Spin_Bullock")),
        "no_rvir.csv": (ct.drop(columns=["rvir(11)"]), ("--preset-columns consistent-trees", "Rvir")),
        "zero_mass.csv": (ct.assign(**{"mvir(10)": np.where(ct.index == 7, 0.0, ct["mvir(10)"])}),
                          ("column mvir(10)", "row 7", "positive", "--preset-columns consistent-trees")),
        "late.csv": (ct.assign(**{"Halfmass_Scale(64)": np.where(ct.index == 3, 1.5, ct["Halfmass_Scale(64)"])}),
                     ("column Halfmass_Scale(64)", "row 3", "(0, 1]")),
        # M200c, taken over Mvir when there: Rockstar writes 0 for haloes too small to have one
        "zero_m200c.csv": (ct.assign(**{"M200c(40)": np.where(ct.index == 11, 0.0, ct["mvir(10)"])}),
                           ("column M200c(40)", "row 11", "positive", "M_h = log10(M200c)",
                            "--preset-columns consistent-trees", "--columns M_h=NAME")),
    }
    for name, (table, words) in cases.items():
        table.to_csv(tmp_path / name, index=False)
        with pytest.raises(CatalogError) as exc:
            load_catalog(tmp_path / name, mapping="Delta3_h=my_env", preset="consistent-trees")
        assert all(w in str(exc.value) for w in words) and "\n" not in str(exc.value), (name, str(exc.value))
    # the user's way in: the real command, a real process, exit 1 and one readable line
    res = run_cli("predict", "--data", str(tmp_path / "no_rvir.csv"), "--out", str(tmp_path / "o.parquet"),
                  "--preset-columns", "consistent-trees", "--columns", "Delta3_h=my_env")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0].startswith("galaxypaint: error: --preset-columns consistent-trees: C_h = log10(Rvir / rs) "
                               "needs column Rvir")
    # Delta3_h: no halo finder writes it; the message points to paint's --compute-delta3
    with pytest.raises(CatalogError, match=r"Delta3_h .* not in Rockstar catalogs: `galaxypaint paint "
                                           r"--compute-delta3 --box L`"):
        load_catalog(write_table(raw, tmp_path / "rockstar.parquet"), preset="rockstar")


def test_streamed_errors_count_rows_from_the_file_start(tmp_path, halos, capsys):
    raw, models = halos
    path = write_table(raw.assign(rs=np.where(raw.index == 321, -1.0, raw["rs"])), tmp_path / "bad.parquet")
    out = tmp_path / "out.parquet"
    assert main(["paint", "--catalog", str(path), "--out", str(out), "--registry", models, "--chunk-rows", "100",
                 "--preset-columns", "rockstar", "--columns", "Delta3_h=env"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("galaxypaint: error: --preset-columns rockstar: column rs (NFW scale radius "
                            "[kpc/h comoving]) has 1 value not positive at row 321 (0-based)"), error
    assert not out.exists()


def test_train_takes_the_tng_preset_only_and_readme_lists_every_conversion():
    res = run_cli("train", "--data", "x.parquet", "--preset-columns", "rockstar")
    assert res.returncode == 2 and "invalid choice: 'rockstar'" in res.stderr
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| preset | source column"):]
    for row in describe_presets():
        if row["sources"] != "-":
            assert f"`{row['conversion']}`" in table, row
    assert set(PRESETS) == {"rockstar", "consistent-trees", "tng"}


def test_paint_through_the_service_takes_the_preset(tmp_path, halos, capsys):
    """``paint --server --preset-columns``: the client's ``column_preset``, the paint job's form field, its run."""
    import httpx

    from tests.api.conftest import TOKEN, start_server, stop_server

    raw, models = halos
    path = write_table(raw.rename(columns={"Rvir": "RVIR", "Spin_Bullock": "spin_bullock"}), tmp_path / "h.parquet")
    local, remote = tmp_path / "local.parquet", tmp_path / "remote.parquet"
    options = ("--preset-columns", "rockstar", "--columns", "Delta3_h=env")
    assert main(["paint", "--catalog", str(path), "--out", str(local), "--registry", models, *options]) == 0
    (tmp_path / "data").mkdir()
    proc, url = start_server(models, tmp_path / "data")
    try:
        assert main(["paint", "--catalog", str(path), "--out", str(remote), "--server", url, "--token", TOKEN,
                     *options]) == 0
        bad = httpx.post(f"{url}/v1/jobs/paint", data={"catalog": "x.parquet", "column_preset": "ahf"},
                         headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        stop_server(proc)
    assert bad.status_code == 422 and "column_preset" in bad.text
    assert capsys.readouterr().err.count("warning: --preset-columns rockstar") == 2
    pd.testing.assert_frame_equal(read_table(remote), read_table(local))
    assert read_table(remote).attrs["galaxypaint"]["mass_definition"] == "Mvir"
