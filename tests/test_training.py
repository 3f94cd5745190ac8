"""Training end to end with the fast preset on a small built-in catalog: real models, real ONNX, real registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("lightgbm")
pytest.importorskip("keras")

from app.core.catalogs import read_table, write_table  # noqa: E402
from app.core.model import GalaxyModel  # noqa: E402
from app.core.registry import Registry  # noqa: E402
from app.core.schema import FEATURE_NAMES  # noqa: E402
from training.demo_catalog import make_demo_catalog  # noqa: E402
from training.pipeline import TrainConfig, TrainingError, run_training, split_indices  # noqa: E402


def cli(*args):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One fast-preset CLI training run on 4,000 galaxies (2 targets), shared by the tests below."""
    root = tmp_path_factory.mktemp("train")
    data = write_table(make_demo_catalog(n=4000, seed=3), root / "demo.parquet")
    res = cli("train", "--data", str(data), "--targets", "smass,sSFR", "--registry", str(root / "models"),
              "--metrics-out", str(root / "metrics.json"), "--seed", "5")
    assert res.returncode == 0, res.stderr[-2000:]
    return root, data, res


def test_train_cli_registers_stacks_and_writes_metrics(trained):
    root, _, res = trained
    metrics = json.loads((root / "metrics.json").read_text())
    # 4 members + the paper's stack per target, + a selected stack where the selection dropped a member
    n_selected = sum(bool(metrics["results"][t]["raw"].get("selected_stack")) for t in ("smass", "sSFR"))
    n_galaxy = 2 if n_selected else 1  # the run's multi-target graph: of the paper stacks, and of the selected
    assert "smass   raw   stack" in res.stdout
    assert f"registered {10 + n_selected + n_galaxy} model versions" in res.stdout
    assert "one graph for every target (raw): paper stacks" in res.stdout
    assert "fitting nn" in res.stderr and "epoch" in res.stderr  # progress is shown
    assert "oneDNN" not in res.stderr and "absl::InitializeLog" not in res.stderr  # TensorFlow's native banner
    assert metrics["seed"] == 5 and metrics["split"] == {"train": 1920, "val": 480, "test": 1600}
    smass = metrics["results"]["smass"]["raw"]
    for kind in ("ert", "knn", "lgbm", "nn"):
        m = smass["models"][kind]
        assert m["pearson_r"] > 0.9 and m["onnx_max_abs_diff"] <= 1e-4
        assert m["importance_normalized"]["M_h"] == pytest.approx(1.0)
    assert smass["stack"]["pearson_r"] >= max(m["pearson_r"] for m in smass["models"].values()) - 0.01
    assert smass["stack"]["importance_normalized"]["lgbm"] == pytest.approx(1.0)
    reg = Registry(root / "models", create=False)
    mv = reg.get("smass-raw-stack")
    assert "production" in mv.aliases and mv.seed == 5 and len(mv.data_fingerprint) == 64
    assert "lightgbm" in mv.package_versions and set(mv.training_domain) == set(FEATURE_NAMES)
    assert reg.get_run(mv.run_id)["config"]["preset"] == "fast"


def test_predict_cli_uses_the_registered_graphs(trained):
    root, data, _ = trained
    out = root / "pred.csv"
    res = cli("predict", "--data", str(data), "--out", str(out), "--registry", str(root / "models"))
    assert res.returncode == 0, res.stderr
    pred = read_table(out)
    assert {"smass_pred", "sSFR_pred"} <= set(pred.columns) and "radius_pred" not in pred.columns
    df = read_table(data)
    pd.testing.assert_frame_equal(pred[df.columns.tolist()], df, check_dtype=False)  # input untouched
    direct = GalaxyModel.from_registry(Registry(root / "models"), targets=["smass"]).predict(df[list(FEATURE_NAMES)].to_numpy())
    np.testing.assert_allclose(pred["smass_pred"], direct["smass"])
    assert np.corrcoef(pred["smass_pred"], df["smass"])[0, 1] > 0.95


def test_models_cli_list_show_promote(trained):
    root, _, _ = trained
    reg = str(root / "models")
    res = cli("models", "list", "--registry", reg, "--json")
    names = {m["name"] for m in json.loads(res.stdout)}
    assert {"smass-raw-stack", "sSFR-raw-knn"} <= names
    res = cli("models", "show", "smass-raw-stack@production", "--registry", reg)
    assert res.returncode == 0 and "sha256" in res.stdout and "training domain" in res.stdout
    res = cli("models", "promote", "smass-raw-stack", "1", "--alias", "staging", "--registry", reg)
    assert res.returncode == 0 and "staging -> version 1" in res.stdout
    res = cli("models", "promote", "smass-raw-stack", "7", "--registry", reg)
    assert res.returncode == 1 and res.stderr.strip() == "galaxypaint: error: model smass-raw-stack has no version 7"


def test_tampered_artefact_is_refused_by_predict(trained, tmp_path):
    root, data, _ = trained
    import shutil

    reg_dir = tmp_path / "models"
    shutil.copytree(root / "models", reg_dir)
    reg = Registry(reg_dir)
    for mv in (reg.get("sSFR-raw-stack"), reg.get("raw-galaxy")):  # both stacks run in the run's one graph
        mv.artefact.write_bytes(mv.artefact.read_bytes()[:-10] + b"0123456789")
    res = cli("predict", "--data", str(data), "--out", str(tmp_path / "p.parquet"), "--registry", str(reg_dir))
    assert res.returncode == 1 and "raw-galaxy" in res.stderr and "has been modified" in res.stderr
    assert not (tmp_path / "p.parquet").exists()
    # one graph per target (the fallback): the stack's own file is checked
    res = subprocess.run([sys.executable, "-m", "app.cli", "predict", "--data", str(data), "--out",
                          str(tmp_path / "p.parquet"), "--registry", str(reg_dir)], capture_output=True, text=True,
                         timeout=900, env={**os.environ, "GALAXYPAINT_FUSED_GRAPHS": "0"})
    assert res.returncode == 1 and "sSFR-raw-stack" in res.stderr and "has been modified" in res.stderr
    assert not (tmp_path / "p.parquet").exists()


def test_split_column_is_honoured_and_seeded_split_is_reproducible():
    df = make_demo_catalog(n=1000, seed=1)
    a, b = split_indices(df, 7), split_indices(df, 7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [len(a[k]) for k in ("train", "val", "test")] == [480, 120, 400]
    assert not np.array_equal(split_indices(df, 8)["test"], a["test"])
    df["split"] = np.where(np.arange(1000) < 700, "train", np.where(np.arange(1000) < 800, "val", "test"))
    s = split_indices(df, 7)
    assert np.array_equal(s["train"], np.arange(700)) and np.array_equal(s["test"], np.arange(800, 1000))
    df.loc[df["split"] == "val", "split"] = "test"
    with pytest.raises(TrainingError, match="no val rows"):
        split_indices(df, 7)


def test_training_failure_paths(tmp_path):
    reg = Registry(tmp_path)
    df = make_demo_catalog(n=300, seed=2)
    with pytest.raises(TrainingError, match="SMOGN parameters for sSFR: .*neighbours"):
        run_training(df, reg, TrainConfig(paths=("smogn",), smogn={"sSFR": {"neighbours": 3}}))
    with pytest.raises(TrainingError, match="SMOGN on the train split of sSFR: pert"):
        run_training(df, reg, TrainConfig(targets=("sSFR",), paths=("smogn",), smogn={"sSFR": {"pert": 2.0}}))
    with pytest.raises(TrainingError, match="lacks color"):
        run_training(df.drop(columns="color"), reg, TrainConfig(targets=("color",)))
    with pytest.raises(TrainingError, match="too few rows"):
        run_training(df.iloc[:50], reg, TrainConfig(targets=("smass",)))
    assert reg.list_models() == []
    res = cli("train", "--data", str(tmp_path / "none.parquet"), "--registry", str(tmp_path))
    assert res.returncode == 1 and "no such file" in res.stderr
    (tmp_path / "bad.json").write_text("{\"sSFR\": 3")
    res = cli("train", "--data", "x.parquet", "--paths", "smogn", "--smogn-config", str(tmp_path / "bad.json"))
    assert res.returncode == 1 and "--smogn-config" in res.stderr and "not valid JSON" in res.stderr
    res = cli("train", "--data", "x.parquet", "--targets", "mass")
    assert res.returncode == 1 and "unknown target mass" in res.stderr


def test_smogn_path_augments_train_and_validation_only(tmp_path):
    df = make_demo_catalog(n=3000, seed=4)
    reg = Registry(tmp_path)
    cfg = TrainConfig(targets=("sSFR",), paths=("raw", "smogn"), models=("knn", "lgbm"), seed=3)
    summary = run_training(df, reg, cfg)
    raw, smogn = summary["results"]["sSFR"]["raw"], summary["results"]["sSFR"]["smogn"]
    assert smogn["n_test"] == raw["n_test"] == 1200  # the test split is never augmented
    aug = smogn["smogn"]
    assert aug["train"]["rows_in"] == raw["n_train"] and aug["train"]["rows_out"] == smogn["n_train"]
    assert aug["val"]["rows_in"] == raw["n_val"] and aug["val"]["rows_out"] == smogn["n_val"]
    assert aug["train"]["synthetic"] > 0 and aug["params"]["rel_thres"] == 0.2  # the paper's sSFR settings
    assert smogn["stack"]["onnx_max_abs_diff"] <= 1e-4 and smogn["stack"]["pearson_r"] > 0.5
    mv = reg.get("sSFR-smogn-stack")
    assert mv.variant == "smogn" and mv.extra["smogn"]["train"]["synthetic"] == aug["train"]["synthetic"]
    assert {m.name for m in reg.list_models()} >= {"sSFR-raw-stack", "sSFR-smogn-stack", "sSFR-smogn-knn"}


def test_smogn_stack_is_fit_on_real_or_augmented_validation_rows(tmp_path):
    df = make_demo_catalog(n=3000, seed=4)
    stacks = {}
    for rows in ("real", "augmented"):
        cfg = TrainConfig(targets=("sSFR",), paths=("smogn",), models=("knn", "lgbm"), seed=3, smogn_stack_rows=rows)
        stacks[rows] = run_training(df, Registry(tmp_path / rows), cfg)["results"]["sSFR"]["smogn"]["stack"]
    assert stacks["real"]["fit_on"].startswith("validation rows")
    assert stacks["augmented"]["fit_on"] == "augmented validation rows"
    assert stacks["real"]["coef"] != stacks["augmented"]["coef"]
    with pytest.raises(TrainingError, match="smogn_stack_rows"):
        run_training(df, Registry(tmp_path / "bad"), TrainConfig(smogn_stack_rows="synthetic"))


def test_report_cli_writes_figures_tables_and_html(trained):
    root, _, res = trained
    run_id = res.stdout.split("(run ")[-1].split(")")[0]
    out = root / "report"
    rep = cli("report", "--run", run_id, "--registry", str(root / "models"), "--out", str(out), "--nmesh", "32")
    assert rep.returncode == 0, rep.stderr[-2000:]
    for name in ("fig2_pdfs", "fig3_pearson", "fig4_ks", "fig5_density", "fig6_joint", "fig7_feature_importance",
                 "fig8_stack_importance", "fig9_pk_raw"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name
    md = (out / "report.md").read_text()
    assert f"run {run_id}" in md and "| smass | raw | stack |" in md and "chi2_dof" in md
    html_text = (out / "report.html").read_text()
    assert html_text.count("data:image/png;base64,") == 8 and "<table>" in html_text
    pk = json.loads((out / "pk_raw.json").read_text())["results"]
    assert {(r["target"], r["bin"]) for r in pk} == {("smass", 0), ("smass", 1), ("sSFR", 0), ("sSFR", 1)}
    assert "P(k), raw stacks" in rep.stdout
    bad = cli("report", "--run", "run-nope", "--registry", str(root / "models"), "--out", str(out))
    assert bad.returncode == 1 and "no training run 'run-nope'" in bad.stderr


def test_train_target_returns_a_typed_result_whose_summary_keeps_the_run_summary_shape():
    from training.estimators import PRESETS, KNNRegressor, LightGBMRegressor
    from training.pipeline import Graph, TargetResult, train_target

    df = make_demo_catalog(n=1500, seed=6)
    split = split_indices(df, 2)
    cfg = TrainConfig(targets=("smass",), models=("knn", "lgbm"), seed=2)
    res = train_target(df, split, "smass", "raw", cfg, PRESETS["fast"], lambda m: None)
    assert isinstance(res, TargetResult) and res.smogn is None and res.n_test == len(split["test"])
    assert isinstance(res.models["knn"].estimator, KNNRegressor)
    assert isinstance(res.models["lgbm"].estimator, LightGBMRegressor)
    assert res.stack.components == ("knn", "lgbm")
    assert list(res.graphs) == ["knn", "lgbm", "stack"] + (["selected"] if res.selected is not None else [])
    assert all(isinstance(g, Graph) and g.onnx_max_abs_diff <= 1e-4 for g in res.graphs.values())
    s = res.summary()
    assert list(s) == ["models", "n_train", "n_val", "n_test", "stack", "selection",
                       *(["selected_stack"] if res.selected is not None else []), "training_domain", "scaler", "seconds"]
    assert list(s["models"]["lgbm"]) == ["pearson_r", "mse", "ks_d", "importance", "importance_std",
                                         "importance_normalized", "hyperparameters", "search", "fit_seconds",
                                         "onnx_max_abs_diff", "onnx_bytes"]
    assert list(s["stack"]) == ["pearson_r", "mse", "ks_d", "coef", "intercept", "fit_on", "importance",
                                "importance_std", "importance_normalized", "onnx_max_abs_diff", "onnx_bytes",
                                "halos_per_s"]
    assert s["stack"]["halos_per_s"] > 0 and s["selection"]["kept"]
    assert s["models"]["knn"]["hyperparameters"] == {"n_neighbors": 29, "p": 2, "weights": "uniform"}
    assert s["models"]["knn"]["search"][0].keys() == {"k", "p", "val_mse"}
    assert s["models"]["lgbm"]["search"][0]["n_trees"] == s["models"]["lgbm"]["hyperparameters"]["n_estimators"]
    assert s["stack"]["onnx_bytes"] == len(res.graphs["stack"].data) and list(s["stack"]["coef"]) == ["knn", "lgbm"]
    json.dumps(s)  # plain data, as the registry and the metrics file need
    # the native models and stack reproduce the test-set scores
    z = res.scaler.transform(df[list(FEATURE_NAMES)].to_numpy()[split["test"]])
    preds = np.column_stack([res.models[k].estimator.predict(z) for k in res.stack.components])
    np.testing.assert_array_equal(res.stack.model.predict(preds), res.scores["stack"].predictions)


# ----------------------------------------------------------------------------- member selection


class _Member:
    """A fitted member stand-in: predictions fixed per row (the selection only calls ``predict``)."""

    def __init__(self, values: np.ndarray):
        self.values = values

    def predict(self, x):
        return self.values[np.asarray(x, dtype=np.int64).ravel()]


def _members(n: int, seed: int = 0):
    from training.estimators import Selection

    rng = np.random.default_rng(seed)
    y = rng.normal(size=n)
    a, b = rng.normal(scale=0.5, size=n), rng.normal(scale=0.5, size=n)
    members = {"knn": y + a + rng.normal(scale=0.01, size=n),  # lgbm's errors again: adds nothing
               "ert": y + b,                                    # independent errors: worth keeping
               "lgbm": y + a,
               "nn": y + rng.normal(scale=20.0, size=n)}        # very noisy: worth nothing
    rows = np.arange(n).reshape(-1, 1)
    return {k: Selection(_Member(v)) for k, v in members.items()}, rows, y


def test_member_selection_drops_redundant_and_useless_members_costliest_first():
    from training.pipeline import select_members

    models, rows, y = _members(20_000)
    sel = select_members(models, rows, y, tol=0.0025, seed=1)
    assert sel.kept == ("ert", "lgbm")
    assert [s.get("dropped") for s in sel.steps[:2]] == ["knn", "nn"]  # kNN first: the costliest that may go
    assert all(s["upper"] <= 0.0025 for s in sel.steps[:2]) and "stop" in sel.steps[-1]
    # the members that carry independent information are worth far more than the tolerance
    assert min(v["rise"] for v in sel.steps[-1]["rises"].values()) > 0.05
    assert select_members(models, rows, y, tol=0.0025, seed=1).as_dict() == sel.as_dict()  # deterministic
    assert select_members(models, rows, y, tol=0.0, seed=1).kept != ("ert",)  # no tolerance, nothing useful goes


def test_member_selection_keeps_members_when_the_validation_rows_cannot_tell():
    from training.pipeline import select_members

    models, rows, y = _members(40, seed=3)  # 40 rows: the confidence bound is wide
    assert len(select_members(models, rows, y, tol=0.0025, seed=1).kept) >= 3


def test_both_stacks_are_registered_and_production_follows_the_option(tmp_path):
    df = make_demo_catalog(n=6000, seed=8)
    for production in ("selected", "paper"):
        reg = Registry(tmp_path / production)
        summary = run_training(df, reg, TrainConfig(targets=("smass",), models=("knn", "lgbm", "nn"), seed=4,
                                                    production=production, sampler=False))
        res = summary["results"]["smass"]["raw"]
        kept = res["selection"]["kept"]
        paper = reg.get("smass-raw-stack", alias="paper")
        assert paper.hyperparameters["components"] == ["knn", "lgbm", "nn"]
        assert res.get("selected_stack") is not None, "with these seeds the selection drops kNN"
        selected = reg.get("smass-raw-stack", alias="selected")
        assert selected.version == paper.version + 1 and selected.hyperparameters["components"] == kept
        assert selected.extra["stack"] == "selected" and paper.extra["stack"] == "paper"
        assert selected.metrics["halos_per_s"] > 0 and abs(selected.metrics["pearson_r"] - paper.metrics["pearson_r"]) < 0.01
        want = selected if production == "selected" else paper
        assert reg.get("smass-raw-stack").version == want.version  # production
        model = GalaxyModel.from_registry(reg, targets=["smass"])
        assert model.pinned()[0]["version"] == want.version
        # the selected graph reproduces its own stack's test predictions through the model object
        x = df[list(FEATURE_NAMES)].to_numpy()[split_indices(df, 4)["test"]]
        np.testing.assert_allclose(
            GalaxyModel.from_registry(reg, targets=["smass"], model="smass-raw-stack@selected").predict(x)["smass"],
            GalaxyModel.from_registry(reg, targets=["smass"], model="smass-raw-stack@paper").predict(x)["smass"],
            atol=0.5)  # different stacks of the same members: close, not equal
        assert res["selected_stack"]["components"] == kept and "knn" not in kept  # kNN is the costliest member
        # one multi-target graph per stack choice, holding exactly the stacks registered beside it
        galaxies = {g.extra["stack"]: g for g in reg.versions("raw-galaxy")}
        assert set(galaxies) == {"paper", "selected"} and galaxies["paper"].kind == "galaxy"
        assert galaxies["paper"].extra["stacks"]["smass"]["version"] == paper.version
        assert galaxies["selected"].extra["stacks"]["smass"]["sha256"] == selected.sha256
        assert "production" in galaxies[production].aliases and galaxies[production].metrics["halos_per_s"] > 0
        for which in ("paper", "selected"):
            fused = GalaxyModel.from_registry(reg, targets=["smass"], model=f"smass-raw-stack@{which}")
            plain = GalaxyModel(reg, dict(fused.versions), "raw", fuse=False)
            assert fused.plan is not None and fused.plan.uri == galaxies[which].uri and plain.plan is None
            assert fused.pinned() == plain.pinned()  # provenance names the stacks, whatever runs them
            a, b = fused.predict(x)["smass"], plain.predict(x)["smass"]
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
            assert fused.predict(x[7:8])["smass"][0] == a[7]  # alone as in a batch


def test_a_selection_that_keeps_every_member_gives_the_one_stack_every_alias():
    from training.pipeline import _stack_aliases

    cfg = TrainConfig(production="selected")
    assert _stack_aliases(cfg, "paper", distinct=False) == ("paper", "selected", "production")
    assert _stack_aliases(cfg, "paper", distinct=True) == ("paper",)
    assert _stack_aliases(cfg, "selected", distinct=True) == ("selected", "production")
    assert _stack_aliases(TrainConfig(production="paper", alias=None), "paper", distinct=True) == ("paper",)
    with pytest.raises(TrainingError, match="production must be"):
        TrainConfig(production="fastest").validate()


def test_train_cli_refuses_a_bad_selection_tolerance(tmp_path):
    data = write_table(make_demo_catalog(n=500, seed=1), tmp_path / "d.parquet")
    res = cli("train", "--data", str(data), "--registry", str(tmp_path / "m"), "--selection-tol", "nan")
    assert res.returncode != 0 and "--selection-tol" in res.stderr and "Traceback" not in res.stderr
