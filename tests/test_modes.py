"""Modes: galaxies drawn from the joint sampler (sample), its quantiles, and the mean stacks, through the
model object, both painting engines and the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("lightgbm")

from app.core.catalogs import CatalogError, read_table, write_table  # noqa: E402
from app.core.model import GalaxyModel, Mode  # noqa: E402
from app.core.registry import InvalidReference, ModelNotFound, Registry  # noqa: E402
from app.core.schema import CUTS, FEATURE_NAMES, TARGET_NAMES  # noqa: E402
from app.painting.local import paint  # noqa: E402
from app.painting.spec import PaintSpec  # noqa: E402
from app.science.populations import ks_per_property  # noqa: E402
from training.demo_catalog import redraw_galaxies  # noqa: E402
from training.pipeline import split_indices  # noqa: E402

from tests.conftest import run_cli  # noqa: E402

PRED = [f"{t}_pred" for t in TARGET_NAMES]


@pytest.fixture(scope="module")
def reg(trained_sampler):
    return Registry(trained_sampler[0] / "models", create=False)


@pytest.fixture(scope="module")
def halos(trained_sampler, tmp_path_factory):
    """The catalog's haloes (features, positions, ID) without galaxies, as Parquet."""
    df = trained_sampler[1].drop(columns=list(TARGET_NAMES))
    path = tmp_path_factory.mktemp("halos") / "halos.parquet"
    write_table(df, path)
    return path, df


def _paint(reg, src, out, **options):
    paint(PaintSpec.create(reg, src, out, **options), reg)
    return read_table(out)


def test_the_run_registers_the_sampler_with_lineage_metrics_and_domain(reg, trained_sampler):
    _, _, summary = trained_sampler
    mv = reg.get("raw-sampler", alias="production")
    assert mv.kind == "sampler" and mv.variant == "raw" and mv.targets == TARGET_NAMES
    assert mv.run_id == summary["run_id"] and mv.seed == 3 and mv.data_fingerprint == summary["data_fingerprint"]
    assert "onnxruntime" in mv.package_versions and set(mv.training_domain) == set(FEATURE_NAMES)
    assert mv.metrics["onnx_max_abs_diff"] <= 1e-4 and np.isfinite(mv.metrics["test_nll"])
    assert mv.hyperparameters["n_components"] in (4, 8) and mv.hyperparameters["candidates"]
    # the built-in catalog is selected on smass > 8.75, as the paper's sample: the sampler learns that law
    assert mv.hyperparameters["lower_cut"] == CUTS["smass"]
    ev = summary["sampler"]["evaluation"]
    assert set(ev["ks_d"]) == set(TARGET_NAMES) and ev["n"] == summary["split"]["test"]
    assert reg.get_run(summary["run_id"])["metrics"]["sampler"]["metrics"] == mv.metrics


def test_the_runs_one_graph_holds_every_stack_not_the_sampler(reg, halos):
    import onnxruntime as ort

    _, df = halos
    x = df[list(FEATURE_NAMES)].to_numpy()[:3000]
    galaxy = reg.get("raw-galaxy", alias="production")
    assert galaxy.kind == "galaxy" and galaxy.targets == TARGET_NAMES and set(galaxy.extra["stacks"]) == set(TARGET_NAMES)
    session = ort.InferenceSession(reg.load_bytes(galaxy), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(TARGET_NAMES)  # the sampler stays its own graph
    # mean mode over the four stacks runs that one graph, with the stacks' own predictions
    fused = GalaxyModel.from_registry(reg)
    plain = GalaxyModel(reg, dict(fused.versions), "raw", fuse=False)
    assert fused.plan == galaxy and len({id(m) for m in fused.models.values()}) == 1
    a, b = fused.predict(x), plain.predict(x)
    for t in TARGET_NAMES:
        np.testing.assert_allclose(a[t], b[t], rtol=0, atol=1e-12)
    # a subset of the targets runs the per-target stacks: the graph would compute all four
    assert GalaxyModel.from_registry(reg, targets=["smass", "color"]).plan is None
    # sample mode draws from the sampler's own graph
    assert GalaxyModel.from_registry(reg, mode=Mode("sample", 1)).plan is None


def test_sessions_use_as_many_threads_as_the_process_has_cpus(reg):
    import os

    from app.core.model import LoadedModel, usable_cpus

    galaxy = reg.get("raw-galaxy", alias="production")
    assert usable_cpus() == len(os.sched_getaffinity(0))
    assert LoadedModel.load(reg, galaxy).session.get_session_options().intra_op_num_threads == usable_cpus()
    assert LoadedModel.load(reg, galaxy, threads=1).session.get_session_options().intra_op_num_threads == 1


def test_sample_paint_is_identical_across_chunks_engines_and_row_order(reg, halos, tmp_path):
    src, df = halos
    mode = Mode("sample", seed=7)
    a = _paint(reg, src, tmp_path / "a.parquet", mode=mode)
    b = _paint(reg, src, tmp_path / "b.parquet", mode=mode, chunk_rows=777)
    assert a.attrs["galaxypaint"]["mode"] == "sample" and a.attrs["galaxypaint"]["seed"] == 7
    assert a.attrs["galaxypaint"]["id_column"] == "ID"
    # to 1e-12, not bit for bit: onnxruntime splits the network's tanh across threads at boundaries that
    # move with the batch, and its vector and scalar paths differ in the last bit (draws by ~1e-15)
    np.testing.assert_allclose(a[PRED].to_numpy(), b[PRED].to_numpy(), rtol=0, atol=1e-12)
    # shuffled rows: each halo keeps its galaxy (keyed by ID, not by position)
    shuffled = df.sample(frac=1.0, random_state=1)
    write_table(shuffled, tmp_path / "shuffled.parquet")
    c = _paint(reg, tmp_path / "shuffled.parquet", tmp_path / "c.parquet", mode=mode, chunk_rows=1000)
    merged = a.set_index("ID").loc[c["ID"].to_numpy(), PRED].to_numpy()
    np.testing.assert_allclose(c[PRED].to_numpy(), merged, rtol=0, atol=1e-12)
    # another seed, other galaxies; the same seed, the same whatever else changes
    d = _paint(reg, src, tmp_path / "d.parquet", mode=Mode("sample", seed=8))
    assert np.all(d[PRED].to_numpy() != a[PRED].to_numpy())


def test_dask_engine_draws_what_the_local_engine_draws(reg, halos, tmp_path):
    pytest.importorskip("dask.distributed")
    src, _ = halos
    mode = Mode("sample", seed=11)
    local = _paint(reg, src, tmp_path / "local.parquet", mode=mode, chunk_rows=4096)
    spec = PaintSpec.create(reg, src, tmp_path / "dask", mode=mode, engine="dask", chunk_rows=1500, dask_workers=2)
    paint(spec, reg)
    parts = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "dask").glob("part-*.parquet"))],
                      ignore_index=True)
    np.testing.assert_allclose(parts[PRED].to_numpy(), local[PRED].to_numpy(), rtol=0, atol=1e-12)


def test_without_an_id_column_the_row_number_keys_the_draw(reg, halos, tmp_path):
    _, df = halos
    write_table(df.drop(columns="ID"), tmp_path / "noid.parquet")
    a = _paint(reg, tmp_path / "noid.parquet", tmp_path / "a.parquet", mode=Mode("sample", seed=5), chunk_rows=999)
    assert a.attrs["galaxypaint"]["id_column"] == "row number in the input file"
    model = GalaxyModel.from_registry(reg, mode=Mode("sample", seed=5))
    rows = np.arange(2500, 2600)
    direct = model.predict(df[list(FEATURE_NAMES)].to_numpy()[rows], Mode("sample", seed=5), rows)
    for t in TARGET_NAMES:
        np.testing.assert_allclose(a[f"{t}_pred"].to_numpy()[rows], direct[t], rtol=0, atol=1e-12)
    # a halo alone and inside a batch: the same galaxy
    one = model.predict(df[list(FEATURE_NAMES)].to_numpy()[rows[:1]], Mode("sample", seed=5), rows[:1])
    assert abs(one["sSFR"][0] - direct["sSFR"][0]) <= 1e-12


def test_quantiles_are_ordered_and_agree_with_the_draws(reg, halos, tmp_path):
    src, _ = halos
    q = _paint(reg, src, tmp_path / "q.parquet", mode=Mode("quantiles", levels=(2.5, 16, 50, 84, 97.5)))
    meta = q.attrs["galaxypaint"]
    assert meta["mode"] == "quantiles" and meta["quantiles"] == [2.5, 16.0, 50.0, 84.0, 97.5]
    assert meta["seed"] is None  # nothing is drawn
    s = _paint(reg, src, tmp_path / "s.parquet", mode=Mode("sample", seed=3))
    n = len(q)
    for t in TARGET_NAMES:
        cols = [f"{t}_q{lv}" for lv in ("2.5", "16", "50", "84", "97.5")]
        v = q[cols].to_numpy()
        assert np.all(np.diff(v, axis=1) >= 0), t
        # one draw per halo falls below its own median half of the time, inside q16-q84 68 % of the time
        draw = s[f"{t}_pred"].to_numpy()
        below = np.mean(draw < v[:, 2])
        inside = np.mean((draw >= v[:, 1]) & (draw <= v[:, 3]))
        assert abs(below - 0.5) < 4 * np.sqrt(0.25 / n), (t, below)
        assert abs(inside - 0.68) < 4 * np.sqrt(0.68 * 0.32 / n), (t, inside)
    assert not any(c.endswith("_pred") for c in q.columns)
    # no painted galaxy falls below the selection the sampler learnt from
    assert s["smass_pred"].min() > CUTS["smass"] and q["smass_q2.5"].min() >= CUTS["smass"]


def test_sampled_populations_match_the_exact_law_where_means_do_not(reg, trained_sampler):
    """On the test split, one sampled catalog is about as close to the truth as a redraw from the
    generator's exact law (K-S D per property), while the mean stacks' catalog is not."""
    _, df, summary = trained_sampler
    test = split_indices(df, summary["seed"])["test"]
    x = df[list(FEATURE_NAMES)].to_numpy()[test]
    truth = df[list(TARGET_NAMES)].to_numpy()[test]
    drawn = GalaxyModel.from_registry(reg, mode=Mode("sample", seed=1)).predict(x, Mode("sample", seed=1), test)
    means = GalaxyModel.from_registry(reg).predict(x)
    ks_sample = ks_per_property(np.column_stack([drawn[t] for t in TARGET_NAMES]), truth)
    ks_mean = ks_per_property(np.column_stack([means[t] for t in TARGET_NAMES]), truth)
    exact = [ks_per_property(redraw_galaxies(df.iloc[test], seed).to_numpy(), truth) for seed in range(1, 6)]
    for t in ("sSFR", "radius", "color"):
        ceiling = max(e[t] for e in exact)
        assert ks_sample[t] <= 1.5 * ceiling + 0.01, (t, ks_sample[t], ceiling)
    # the catalog's stellar-mass cut is a sharp edge a Gaussian mixture rounds off: with 2,880 training
    # rows K-S D is ~0.04 (exact redraws ~0.015); on the built-in catalog's 84k it is below 0.01
    assert ks_sample["smass"] <= 0.06, ks_sample["smass"]
    for t in ("sSFR", "radius", "color"):
        assert ks_mean[t] > ks_sample[t] + 0.03, (t, ks_mean[t], ks_sample[t])


def test_mode_and_model_mismatches_are_refused(reg, trained, tmp_path):
    with pytest.raises(InvalidReference, match="joint sampler"):
        GalaxyModel.from_registry(reg, model="raw-sampler")  # mean mode with the sampler
    with pytest.raises(InvalidReference, match="not the joint sampler"):
        GalaxyModel.from_registry(reg, model="smass-raw-stack", mode=Mode("sample"))
    with pytest.raises(InvalidReference, match="raw variant only"):
        GalaxyModel.from_registry(reg, variant="smogn", mode=Mode("quantiles"))
    no_sampler = Registry(trained[0] / "models", create=False)
    with pytest.raises(ModelNotFound, match="no joint sampler"):
        GalaxyModel.from_registry(no_sampler, mode=Mode("sample"))
    model = GalaxyModel.from_registry(reg, mode=Mode("sample"))
    with pytest.raises(InvalidReference, match="integer id per halo"):
        model.predict(np.full((2, 5), 1.0), Mode("sample"))
    for bad in ({"name": "draw"}, {"seed": -1}, {"seed": 1.5}, {"levels": (0, 50)}, {"levels": (50, 50)}):
        with pytest.raises(InvalidReference):
            Mode(**{"name": "quantiles", **bad})


def test_id_columns_must_be_unique_integers_for_sampling(reg, halos, tmp_path):
    _, df = halos
    dup = df.copy()
    dup.loc[10, "ID"] = dup.loc[11, "ID"]
    write_table(dup, tmp_path / "dup.parquet")
    with pytest.raises(CatalogError, match="repeats"):
        paint(PaintSpec.create(reg, tmp_path / "dup.parquet", tmp_path / "o.parquet", mode=Mode("sample")), reg)
    frac = df.assign(halo=df["ID"] + 0.5)
    write_table(frac, tmp_path / "frac.parquet")
    with pytest.raises(CatalogError, match="not an integer"):
        paint(PaintSpec.create(reg, tmp_path / "frac.parquet", tmp_path / "o.parquet", mode=Mode("sample"),
                               id_column="halo"), reg)
    assert not (tmp_path / "o.parquet").exists()


def test_cli_paint_and_predict_modes(trained_sampler, halos, tmp_path):
    root, _, _ = trained_sampler
    src, _ = halos
    reg = str(root / "models")
    res = run_cli("paint", "--catalog", str(src), "--out", str(tmp_path / "p.parquet"), "--registry", reg,
                  "--mode", "sample", "--seed", "7", "--chunk-rows", "1000")
    assert res.returncode == 0, res.stderr
    assert "raw-sampler/1;" in res.stdout or "raw-sampler/1 " in res.stdout
    res = run_cli("predict", "--data", str(src), "--out", str(tmp_path / "q.parquet"), "--registry", reg,
                  "--mode", "sample", "--seed", "7")
    assert res.returncode == 0, res.stderr
    p, q = read_table(tmp_path / "p.parquet"), read_table(tmp_path / "q.parquet")
    np.testing.assert_allclose(p[PRED].to_numpy(), q[PRED].to_numpy(), rtol=0, atol=1e-12)
    res = run_cli("predict", "--data", str(src), "--out", str(tmp_path / "r.csv"), "--registry", reg,
                  "--mode", "quantiles", "--quantiles", "5,50,95", "--targets", "color")
    assert res.returncode == 0, res.stderr
    r = pd.read_csv(tmp_path / "r.csv")
    assert [c for c in r.columns if "_q" in c] == ["color_q5", "color_q50", "color_q95"]
    for args, needle in ((["--mode", "mean", "--quantiles", "16,84"], "--quantiles is for --mode quantiles"),
                         (["--mode", "quantiles", "--seed", "5"], "--seed is for --mode sample"),
                         (["--mode", "sample", "--variant", "smogn"], "raw variant only"),
                         (["--mode", "sample", "--id-column", "nope"], "is not in the catalog")):
        res = run_cli("predict", "--data", str(src), "--out", str(tmp_path / "x.parquet"), "--registry", reg, *args)
        assert res.returncode == 1 and needle in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1
    res = run_cli("paint", "--catalog", str(src), "--out", str(tmp_path / "x.parquet"), "--registry", reg,
                  "--mode", "quantiles", "--quantiles", "0,50")
    assert res.returncode == 2 and "between 0 and 100" in res.stderr


def test_acceptance_bench_judges_a_registered_sampler_against_its_null(trained_sampler, tmp_path):
    """bench/sampler_acceptance.py end to end on a tiny null of the same catalog and split."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    root, _, summary = trained_sampler
    null = tmp_path / "null.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "sampler_null.py"), "--n", "6000", "--seed", "21",
                          "--split-seed", str(summary["seed"]), "--redraws", "12", "--ensembles", "3",
                          "--ensemble-size", "4", "--nmesh", "32", "--quantile-draws", "39", "--out", str(null)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "acceptance.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "sampler_acceptance.py"), "--registry",
                          str(root / "models"), "--null", str(null), "--seeds", "4", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    names = {r["statistic"] for r in result["rows"]}
    assert {f"ks_D.{t}" for t in TARGET_NAMES} <= names and "coverage95.color.Q4" in names
    assert {f"pk_consistency.{t}.bin{b}" for t in TARGET_NAMES for b in (1, 2)} <= names
    assert len(result["rows"]) == 4 + 4 + 40 + 4 + 3 * 8 and len(result["stricter"]) == 8
    assert all(np.isfinite(r["value"]) and isinstance(r["pass"], bool) for r in result["rows"])
    ks = {r["statistic"]: r["value"] for r in result["rows"]}
    assert ks["ks_D.sSFR"] < 0.1 and "pass" in run.stdout and result["meta"]["seeds"] == [1, 4]
    assert result["meta"]["sampler"]["name"] == "raw-sampler"


def test_quantile_columns_keep_the_levels_as_written():
    from app.core.schema import parse_quantile_levels, quantile_column

    assert [quantile_column("smass", lv) for lv in (16, 2.5, 97.5, 1e-5, 99.99999)] == [
        "smass_q16", "smass_q2.5", "smass_q97.5", "smass_q0.00001", "smass_q99.99999"]
    assert parse_quantile_levels("84,16,12.3456789,12.3456781") == (12.3456781, 12.3456789, 16.0, 84.0)
    with pytest.raises(ValueError, match="distinct"):
        parse_quantile_levels("16,16.0")


def test_a_failing_sampler_does_not_cost_the_stacks(tmp_path, monkeypatch):
    """The sampler is fitted after the stacks: if it fails, the stacks are registered all the same."""
    import training.sampler_step as step
    from training.demo_catalog import make_demo_catalog
    from training.pipeline import TrainConfig, TrainingError, run_training

    def broken(*args, **kwargs):
        raise TrainingError("sampler: graph and native distribution differ by up to 0.1 (> 0.0001)")

    monkeypatch.setattr(step, "train_sampler", broken)
    reg = Registry(tmp_path / "models")
    summary = run_training(make_demo_catalog(n=1500, seed=4), reg,
                           TrainConfig(targets=TARGET_NAMES, preset="fast", seed=2, models=("lgbm",)))
    assert summary["sampler"]["skipped"].startswith("the sampler failed: sampler: graph and native")
    assert {mv.name for mv in reg.list_models()} >= {f"{t}-raw-stack" for t in TARGET_NAMES}
    assert "raw-sampler" not in {mv.name for mv in reg.list_models()}


def test_csv_rows_are_data_rows_for_both_engines(reg, halos, tmp_path):
    """Blank lines and quoted newlines do not shift row numbers: a CSV painted in sample mode by row
    number gives every halo the same galaxy on the local and the Dask engine, and no row twice."""
    from app.core.catalog_stream import ChunkReader

    _, df = halos
    part = df.drop(columns="ID").iloc[:700].copy()
    part["note"] = ["a\nb" if i % 97 == 0 else "x" for i in range(len(part))]  # a quoted newline
    text = part.to_csv(index=False).splitlines(keepends=True)
    with_blanks = "".join(line + ("\n" if i % 50 == 7 else "") for i, line in enumerate(text))
    src = tmp_path / "halos.csv"
    src.write_text(with_blanks)
    reader = ChunkReader(src)
    assert reader.n_rows == 700 and len(reader.read_rows(650, 700)) == 50
    np.testing.assert_allclose(reader.read_rows(300, 302)["M_h"], part["M_h"].to_numpy()[300:302])
    mode = Mode("sample", seed=9)
    local = _paint(reg, src, tmp_path / "local.parquet", mode=mode, chunk_rows=128)
    expected = GalaxyModel.from_registry(reg, mode=mode).predict(part[list(FEATURE_NAMES)].to_numpy(), mode,
                                                                  np.arange(700))
    np.testing.assert_allclose(local["smass_pred"], expected["smass"], rtol=0, atol=1e-12)
    pytest.importorskip("dask.distributed")
    paint(PaintSpec.create(reg, src, tmp_path / "dask", mode=mode, engine="dask", chunk_rows=128, dask_workers=1), reg)
    parts = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "dask").glob("part-*.parquet"))],
                      ignore_index=True)
    assert len(parts) == 700
    np.testing.assert_allclose(parts[PRED].to_numpy(), local[PRED].to_numpy(), rtol=0, atol=1e-12)
