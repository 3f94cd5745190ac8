"""The report's section on the joint sampler (issue 14, item 4): its tables are the run's stored
evaluation, its figures are written, and the P(k) of an ensemble of sampled catalogs is the one
``app.science.populations.ensemble_clustering`` measures on the draws ``galaxypaint paint --mode
sample`` makes; a run without a sampler still gets its report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from app.core.schema import FEATURE_NAMES, POSITION_NAMES, TARGET_NAMES

pytest.importorskip("lightgbm")

NMESH = 32
SEEDS = 3
NEW_FIGURES = ("fig2s_marginals.png", "fig_corner.png", "fig_pit.png", "fig9_pk_sample.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train(root, sampler: bool):
    from app.core.registry import Registry
    from training.demo_catalog import make_demo_catalog
    from training.pipeline import TrainConfig, run_training

    df = make_demo_catalog(n=3000, seed=12)
    registry = Registry(root)
    summary = run_training(df, registry, TrainConfig(targets=TARGET_NAMES, paths=("raw",), preset="fast",
                                                     models=("lgbm",), seed=1, sampler=sampler))
    return registry, df, summary["run_id"]


@pytest.fixture(scope="module")
def with_sampler(tmp_path_factory, small_sampler_run):
    from app.core.registry import Registry
    from tests.conftest import registry_copy
    from training.report import build_report

    root = tmp_path_factory.mktemp("report_sampler")
    registry = Registry(registry_copy(small_sampler_run, root / "models"), create=False)
    df, run_id = small_sampler_run[1], small_sampler_run[2]["run_id"]
    out = root / "report"
    summary = build_report(registry, df, out, run_id=run_id, nmesh=NMESH, ensemble_seeds=SEEDS)
    return registry, df, run_id, out, summary


def _tables(md: str, heading: str) -> list[list[dict[str, str]]]:
    """The markdown tables between ``heading`` and the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    lines = md.splitlines()
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")
                and len(lines[i].split(" ")[0]) <= len(level)), len(lines))
    tables, block = [], []
    for line in lines[start:end] + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            rows = [[c.strip() for c in r.strip().strip("|").split("|")] for r in block if not r.startswith("|---")]
            tables.append([dict(zip(rows[0], r)) for r in rows[1:]])
            block = []
    return tables


def _fmt(v) -> str:
    """The report's number format: 4 significant digits for floats, integers as they are."""
    return str(v) if isinstance(v, int) else f"{v:.4g}"


def test_the_sampler_figures_are_written_as_png(with_sampler):
    import matplotlib.image

    _, _, _, out, summary = with_sampler
    for name in NEW_FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200, name
    assert {"fig2s", "fig_corner", "fig_pit", "fig9_sample"} <= set(summary["figures"])
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for name in NEW_FIGURES:
        assert f"![]({name})" in md
        assert f'alt="{name}"' in html  # embedded in the self-contained page


def test_the_section_tables_are_the_runs_stored_evaluation(with_sampler):
    registry, _, run_id, out, summary = with_sampler
    e = registry.get_run(run_id)["metrics"]["sampler"]["evaluation"]
    md = (out / "report.md").read_text()
    assert "## Populations: the joint sampler" in md
    per_property, per_quartile, *rest = _tables(md, "## Populations: the joint sampler")
    assert [r["property"] for r in per_property] == list(TARGET_NAMES)
    for row in per_property:
        t = row["property"]
        counts = e["bin_counts"][t]
        expected = {"ks_d": e["ks_d"][t], "cov68": e["coverage68"]["overall"][t],
                    "cov95": e["coverage95"]["overall"][t], "crps_model": e["crps"][t]["model"],
                    "crps_baseline": e["crps"][t]["baseline"], "crps_ratio": e["crps"][t]["ratio"],
                    "bin1_sampled": counts["sampled"][0], "bin1_true": counts["true"][0],
                    "bin2_sampled": counts["sampled"][1], "bin2_true": counts["true"][1],
                    "pit_max_dev": e["pit"]["max_dev"][t]}
        assert {k: row[k] for k in expected} == {k: _fmt(v) for k, v in expected.items()}, t
    assert [r["M_h quartile"] for r in per_quartile] == ["1", "2", "3", "4"]
    for q, row in enumerate(per_quartile):
        for level in ("68", "95"):
            cov = e[f"coverage{level}"]
            for t in TARGET_NAMES:
                assert row[f"cov{level} {t}"] == _fmt(cov["by_quartile"][t][q])
            assert row[f"se{level}"] == _fmt(cov["se_by_quartile"][q])
        assert row["max_abs_dcorr"] == _fmt(e["correlation"]["max_abs_delta_by_quartile"][q])
    assert f"test NLL {e['nll']:.4f} nats/galaxy" in md
    assert "fitted and drawn as the law above the catalog's selection smass > 8.75" in md
    assert "S_h, z_h, Delta3_h enter as logarithms" in md
    # the summary the CLI prints holds the same rows
    assert summary["sampler"]["evaluation"]["per_property"][0]["ks_d"] == e["ks_d"][TARGET_NAMES[0]]
    # the ensemble's table is the one of pk_sample.json
    (ensemble,) = rest
    pk = json.loads((out / "pk_sample.json").read_text())
    assert [(r["target"], r["bin"]) for r in ensemble] == [(r["target"], str(r["bin"] + 1)) for r in pk["results"]]
    for row, rec in zip(ensemble, pk["results"]):
        assert row["consistency"] == _fmt(rec["consistency"]) and row["rel_bias"] == _fmt(rec["rel_bias"])
        assert row["n_true"] == str(rec["n_true"])


def test_the_ensemble_is_the_clustering_of_sampled_catalogs(with_sampler):
    """pk_sample.json: S = 3, finite statistics, equal to ensemble_clustering on the draws of
    GalaxyModel.predict in sample mode (seeds run seed, +1, +2; ids: the test rows' numbers)."""
    from app.core.model import GalaxyModel, Mode
    from app.science.populations import ensemble_clustering
    from training.pipeline import split_indices
    from training.report import run_sampler

    registry, df, run_id, out, summary = with_sampler
    pk = json.loads((out / "pk_sample.json").read_text())
    run = registry.get_run(run_id)
    assert pk["n_samples"] == SEEDS and pk["seeds"] == [run["seed"] + i for i in range(SEEDS)]
    assert pk["nmesh"] == NMESH and len(pk["results"]) == 2 * len(TARGET_NAMES)
    for rec in pk["results"]:
        assert rec["n_samples"] == SEEDS
        for key in ("consistency", "rel_bias", "n_sample_mean"):
            assert isinstance(rec[key], float) and math.isfinite(rec[key]), (rec["target"], rec["bin"], key)
        assert rec["rel_bias_mean_stack"] is not None and math.isfinite(rec["rel_bias_mean_stack"])
    assert len(summary["sampler"]["pk_sample"]) == 2 * len(TARGET_NAMES)

    mv = run_sampler(registry, run_id)
    assert mv is not None and mv.kind == "sampler" and tuple(mv.targets) == TARGET_NAMES
    test = split_indices(df, run["seed"])["test"]
    x = df[list(FEATURE_NAMES)].to_numpy(np.float64)[test]
    model = GalaxyModel(registry, {t: mv for t in TARGET_NAMES}, "raw")
    draws = []
    for seed in pk["seeds"]:
        d = model.predict(x, Mode("sample", seed), test)
        draws.append(np.column_stack([d[t] for t in TARGET_NAMES]))
    test_df = df.iloc[test]
    ens = ensemble_clustering(test_df[list(POSITION_NAMES)].to_numpy(np.float64),
                              test_df[list(TARGET_NAMES)].to_numpy(np.float64), draws, 205.0, NMESH)
    assert len(ens) == len(pk["results"])
    for e, rec in zip(ens, pk["results"]):
        assert (e.target, e.bin, e.n_true) == (rec["target"], rec["bin"], rec["n_true"])
        assert rec["consistency"] == pytest.approx(e.consistency, rel=1e-9)
        assert rec["rel_bias"] == pytest.approx(e.rel_bias, rel=1e-9)
        assert rec["n_sample_mean"] == pytest.approx(e.n_sample_mean)


def test_ensemble_seeds_zero_skips_only_the_ensemble_and_one_is_refused(with_sampler, tmp_path):
    from training.report import build_report

    registry, df, run_id, _, _ = with_sampler
    with pytest.raises(ValueError, match="ensemble seeds"):
        build_report(registry, df, tmp_path / "one", run_id=run_id, nmesh=NMESH, ensemble_seeds=1)
    summary = build_report(registry, df, tmp_path / "zero", run_id=run_id, nmesh=NMESH, ensemble_seeds=0)
    out = tmp_path / "zero"
    assert (out / "fig_corner.png").exists() and (out / "fig_pit.png").exists()
    assert not (out / "fig9_pk_sample.png").exists() and not (out / "pk_sample.json").exists()
    assert any("ensemble seeds 0" in n for n in summary["notes"])
    md = (out / "report.md").read_text()
    assert "## Populations: the joint sampler" in md and "### Clustering of sampled catalogs" not in md


def test_a_run_without_a_sampler_still_gets_its_report(tmp_path):
    from training.report import build_report

    registry, df, run_id = _train(tmp_path / "models", sampler=False)
    out = tmp_path / "report"
    summary = build_report(registry, df, out, run_id=run_id, nmesh=NMESH, ensemble_seeds=SEEDS)
    md = (out / "report.md").read_text()
    assert "Populations: the joint sampler" not in md
    assert any("no joint sampler" in n for n in summary["notes"])
    assert summary["sampler"] is None
    for name in NEW_FIGURES + ("pk_sample.json",):
        assert not (out / name).exists(), name
    assert (out / "fig9_pk_raw.png").exists() and (out / "report.html").exists()
