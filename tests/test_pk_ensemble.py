"""Clustering as an ensemble (issue 14): S catalogs painted by the joint sampler against the true one
(``app.painting.ensemble.ensemble_pk``), its files, and ``galaxypaint pk --mode sample``.

Real components: a registry trained here (fast preset, LightGBM stacks and the joint sampler on a small
built-in catalog), onnxruntime, the FFT power spectra (nmesh 32 to stay quick)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("lightgbm")

from app.core.catalogs import CatalogError, write_table  # noqa: E402
from app.core.model import GalaxyModel, Mode  # noqa: E402
from app.core.registry import InvalidReference, Registry  # noqa: E402
from app.core.schema import FEATURE_NAMES, PAPER_BIN_EDGES, POSITION_NAMES, TARGET_NAMES  # noqa: E402
from app.painting.ensemble import ensemble_pk  # noqa: E402
from app.science.populations import bin_counts, ensemble_clustering  # noqa: E402
from app.science.power_spectrum import default_k_edges, gaussian_error  # noqa: E402

from tests.conftest import run_cli  # noqa: E402

BOX, NMESH = 205.0, 32


@pytest.fixture(scope="module")
def sampler_registry(tmp_path_factory, small_sampler_run):
    """A registry with the joint sampler (all four targets), and the catalog it was trained on."""
    from tests.conftest import registry_copy

    root = tmp_path_factory.mktemp("ensemble")
    registry_copy(small_sampler_run, root / "models")
    return root, small_sampler_run[1]


@pytest.fixture(scope="module")
def sampler(sampler_registry):
    return GalaxyModel.from_registry(Registry(sampler_registry[0] / "models", create=False), mode=Mode("sample"))


def _numbers(result) -> str:
    """Everything an ensemble reports but its run time, as the JSON a reader gets."""
    d = result.as_dict()
    d.pop("seconds")
    return json.dumps(d, sort_keys=True)


def test_sample_seeds_are_the_catalogs_sample_mode_paints(sampler_registry, sampler):
    df = sampler_registry[1].iloc[:500]
    x, ids = df[list(FEATURE_NAMES)].to_numpy(), df["ID"].to_numpy()
    many = sampler.sample_seeds(x, ids, [7, 8, 9])
    assert many.shape == (3, 500, len(sampler.targets))
    for s, seed in enumerate((7, 8, 9)):
        one = sampler.predict(x, Mode("sample", seed), ids)
        np.testing.assert_array_equal(many[s], np.column_stack([one[t] for t in sampler.targets]))


def test_ensemble_equals_ensemble_clustering_on_the_same_draws(sampler_registry, sampler):
    df = sampler_registry[1]
    seeds = [3, 4, 5, 6]
    result = ensemble_pk(df, sampler, seeds, BOX, NMESH)
    x, ids = df[list(FEATURE_NAMES)].to_numpy(), df["ID"].to_numpy()
    draws = [np.column_stack([d[t] for t in TARGET_NAMES])
             for d in (sampler.predict(x, Mode("sample", s), ids) for s in seeds)]
    pos, y_true = df[list(POSITION_NAMES)].to_numpy(), df[list(TARGET_NAMES)].to_numpy()
    expected = ensemble_clustering(pos, y_true, draws, BOX, NMESH)
    assert [(b.target, b.bin) for b in result.bins] == [(t, b) for t in TARGET_NAMES for b in (0, 1)]
    for got, want in zip(result.bins, expected):
        assert json.dumps(got.as_dict()) == json.dumps(want.as_dict())

    # the S realizations are distinct catalogs, and their spectra scatter
    for a in range(len(draws)):
        for b in range(a + 1, len(draws)):
            assert np.mean(draws[a] != draws[b]) > 0.99
    populated = [b for b in result.bins if b.n_true > 100]
    assert populated and all(np.nanmin(b.power_var) > 0 for b in populated)

    # counts: true, and the realizations' mean and scatter
    counts = np.stack([bin_counts(d) for d in draws])
    d = result.bin_dicts()
    for i, (t, b) in enumerate((t, b) for t in TARGET_NAMES for b in (0, 1)):
        j = TARGET_NAMES.index(t)
        assert d[i]["n_true"] == int(bin_counts(y_true)[j, b])
        assert d[i]["n_sample_mean"] == pytest.approx(counts[:, j, b].mean(), rel=1e-12)
        assert d[i]["n_sample_std"] == pytest.approx(counts[:, j, b].std(ddof=1), rel=1e-12)
    # the paper's chi^2 of the ensemble mean, with the Gaussian error of the true spectrum
    b0 = result.bins[0]
    sigma = gaussian_error(b0.power_true, default_k_edges(BOX, NMESH), BOX, b0.n_true / BOX**3)
    assert d[0]["chi2"] == pytest.approx(np.nansum((b0.power_mean - b0.power_true) ** 2 / sigma**2), rel=1e-12)
    assert d[0]["consistency"] == b0.consistency and d[0]["rel_bias"] == b0.rel_bias


def test_ensemble_is_deterministic_and_independent_of_chunking_and_row_order(sampler_registry, sampler):
    df = sampler_registry[1]
    first = ensemble_pk(df, sampler, [0, 1, 2], BOX, NMESH)
    again = ensemble_pk(df.copy(), GalaxyModel.from_pinned(sampler.registry, sampler.pinned(), "raw"),
                        [0, 1, 2], BOX, NMESH, chunk_rows=777)
    assert _numbers(first) == _numbers(again)
    assert _numbers(first) != _numbers(ensemble_pk(df, sampler, [0, 1, 3], BOX, NMESH))

    # a halo's draws are keyed by its ID, not its row: shuffled rows give the same populations
    shuffled = df.sample(frac=1.0, random_state=4).reset_index(drop=True)
    moved = ensemble_pk(shuffled, sampler, [0, 1, 2], BOX, NMESH)
    assert moved.id_column == "ID"
    for a, b in zip(first.bins, moved.bins):
        assert a.n_true == b.n_true and a.n_sample_mean == b.n_sample_mean
        np.testing.assert_allclose(b.power_mean, a.power_mean, rtol=1e-9)
        assert b.consistency == pytest.approx(a.consistency, rel=1e-9)
    # ... while without ids the row numbers key them (the rule of paint), and another id column can
    by_row = ensemble_pk(shuffled.drop(columns="ID"), sampler, [0, 1, 2], BOX, NMESH)
    assert by_row.id_column is None and by_row.as_dict()["id_column"] == "row number in the input file"
    assert any(a.n_sample_mean != b.n_sample_mean for a, b in zip(first.bins, by_row.bins))
    renamed = shuffled.rename(columns={"ID": "halo"})
    assert _numbers(ensemble_pk(renamed, sampler, [0, 1, 2], BOX, NMESH, id_column="halo")).replace(
        '"halo"', '"ID"') == _numbers(moved)


def test_ensemble_refuses_what_it_cannot_measure(sampler_registry, sampler):
    df = sampler_registry[1].iloc[:1500]
    with pytest.raises(InvalidReference, match="at least 2"):
        ensemble_pk(df, sampler, [4], BOX, NMESH)
    with pytest.raises(InvalidReference, match="must differ"):
        ensemble_pk(df, sampler, [4, 4], BOX, NMESH)
    with pytest.raises(CatalogError, match="true galaxy properties radius, color"):
        ensemble_pk(df.drop(columns=["radius", "color"]), sampler, [0, 1], BOX, NMESH)
    with pytest.raises(CatalogError, match="outside the box"):
        ensemble_pk(df, sampler, [0, 1], 100.0, NMESH)
    dup = df.copy()
    dup.loc[dup.index[1], "ID"] = dup["ID"].iloc[0]
    with pytest.raises(CatalogError, match="repeats"):
        ensemble_pk(dup, sampler, [0, 1], BOX, NMESH)
    stacks = GalaxyModel.from_registry(sampler.registry)  # mean mode: the stacks
    with pytest.raises(InvalidReference, match="joint sampler"):
        ensemble_pk(df, stacks, [0, 1], BOX, NMESH)


def test_ensemble_files(sampler_registry, sampler, tmp_path):
    df = sampler_registry[1]
    result = ensemble_pk(df, sampler, [10, 11, 12], BOX, NMESH, edges={"smass": [9.0, 10.0, 12.0]})
    written = result.write_outputs(tmp_path, title="test", source="halos.parquet")
    payload = json.loads((tmp_path / "pk.json").read_text())
    assert payload["mode"] == "sample" and payload["n_realizations"] == 3 and payload["seeds"] == [10, 11, 12]
    assert payload["models"] == sampler.pinned() and payload["models"][0]["name"] == "raw-sampler"
    assert (payload["box"], payload["nmesh"], payload["kmax"]) == (BOX, NMESH, 0.3)
    assert payload["edges"]["smass"] == [9.0, 10.0, 12.0]
    assert payload["edges"]["color"] == list(PAPER_BIN_EDGES["color"])
    assert payload["catalog"] == "halos.parquet" and payload["n_halos"] == len(df)
    assert len(payload["results"]) == 8
    first = payload["results"][0]
    nk = len(first["k"])
    assert nk > 5 and all(len(first[a]) == nk for a in ("power_true", "power_mean", "power_var", "power_std", "sigma"))
    assert first["power_std"] == pytest.approx(list(np.sqrt(first["power_var"])), rel=1e-12)
    summary = pd.read_csv(tmp_path / "pk_summary.csv")
    assert list(summary["target"]) == [t for t in TARGET_NAMES for _ in (1, 2)] and list(summary["bin"][:2]) == [1, 2]
    assert summary["consistency"].notna().all() and summary["rel_bias"].notna().all()
    assert written["summary"][0]["n_true"] == int(summary["n_true"][0])
    assert json.loads(json.dumps(written["summary"])) == written["summary"]  # JSON-ready for job results
    assert len(pd.read_csv(tmp_path / "pk.csv")) == 8 * nk
    assert (tmp_path / "pk.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "pk.png").stat().st_size > 10_000


def test_pk_cli_sample_mode_and_its_errors(sampler_registry, sampler, tmp_path):
    root, df = sampler_registry
    data = write_table(df, tmp_path / "halos.parquet")
    res = run_cli("pk", "--catalog", str(data), "--registry", str(root / "models"), "--mode", "sample",
                  "--seeds", "3", "--seed0", "5", "--nmesh", str(NMESH), "--out", str(tmp_path / "pk"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "consistency" in res.stdout and "3 sampled catalogs (seeds 5..7" in res.stdout
    assert "sampled catalogs" in res.stderr  # the progress bar over the realizations
    payload = json.loads((tmp_path / "pk" / "pk.json").read_text())
    assert payload["seeds"] == [5, 6, 7] and payload["catalog"] == str(data)
    local = json.loads(_numbers(ensemble_pk(df, sampler, [5, 6, 7], BOX, NMESH)))
    payload.pop("seconds"), payload.pop("catalog"), payload.pop("galaxypaint")
    assert payload == local
    assert {p.name for p in (tmp_path / "pk").iterdir()} == {"pk.json", "pk.csv", "pk_summary.csv", "pk.png"}

    def fails(*args: str) -> str:
        r = run_cli("pk", "--out", str(tmp_path / "bad"), "--nmesh", "16", *args)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("galaxypaint: error:")]
        assert len(lines) == 1, r.stderr
        return lines[0]

    common = ("--registry", str(root / "models"), "--mode", "sample")
    assert "at least 2 sampled catalogs" in fails("--catalog", str(data), *common, "--seeds", "1")
    no_truth = write_table(df.drop(columns=list(TARGET_NAMES)), tmp_path / "halos_only.parquet")
    assert "lacks the true galaxy properties" in fails("--catalog", str(no_truth), *common, "--seeds", "2")
    assert "for --mode sample" in fails("--catalog", str(data), "--seeds", "3")
    assert not (tmp_path / "bad").exists()
