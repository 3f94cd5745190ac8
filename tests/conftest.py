"""Shared fixtures.  ``../shared`` (beside the repository) holds real TNG300 rows and the authors'
published models; tests that need it skip cleanly when it is absent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GALAXYPAINT_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data" / "tng300_sample10.csv").exists():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def demo_small():
    """A reduced built-in catalog (30,000 galaxies, TNG300 box) shared by the tests."""
    from training.demo_catalog import make_demo_catalog

    return make_demo_catalog(n=30_000, seed=7, with_latent=True)


def run_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``galaxypaint ARGS...`` in a subprocess (as a user runs it): exit code, stdout, stderr."""
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cli():
    return run_cli


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One fast-preset registry shared by every test that needs trained models rather than a training run:
    LightGBM and kNN (the exact neighbour graph) and their stacks for smass, sSFR and color on a small
    built-in catalog, and a data directory holding part of that catalog.  Tests that change it work on
    a copy."""
    pytest.importorskip("lightgbm")
    from app.core.catalogs import write_table
    from app.core.registry import Registry
    from training.demo_catalog import make_demo_catalog
    from training.pipeline import TrainConfig, run_training

    root = tmp_path_factory.mktemp("trained")
    df = make_demo_catalog(n=4000, seed=12)
    registry = Registry(root / "models")
    run_training(df, registry, TrainConfig(targets=("smass", "sSFR", "color"), paths=("raw",), preset="fast", seed=1,
                                                models=("lgbm", "knn")))
    (root / "data").mkdir()
    write_table(df.iloc[:3000], root / "data" / "halos.parquet")
    return root, df


@pytest.fixture(scope="session")
def trained_sampler(tmp_path_factory):
    """A fast-preset registry WITH the joint sampler (all four targets; LightGBM stacks only, to keep it
    quick) on a small built-in catalog, shared by the tests of sample and quantiles modes.  Returns
    (root, the catalog, the run summary).  Tests that change it work on a copy."""
    pytest.importorskip("lightgbm")
    from app.core.registry import Registry
    from app.core.schema import TARGET_NAMES
    from training.demo_catalog import make_demo_catalog
    from training.pipeline import TrainConfig, run_training

    root = tmp_path_factory.mktemp("trained_sampler")
    df = make_demo_catalog(n=6000, seed=21)
    summary = run_training(df, Registry(root / "models"), TrainConfig(targets=TARGET_NAMES, paths=("raw",),
                                                                      preset="fast", seed=3, models=("lgbm",)))
    return root, df, summary


@pytest.fixture(scope="session")
def small_sampler_run(tmp_path_factory):
    """One tiny run WITH the joint sampler (3,000 built-in galaxies, all four targets, LightGBM stacks)
    trained once for the service, ensemble and report tests; use ``registry_copy`` to get a registry of
    your own.  Returns (models directory, the catalog, the run summary)."""
    pytest.importorskip("lightgbm")
    from app.core.registry import Registry
    from app.core.schema import TARGET_NAMES
    from training.demo_catalog import make_demo_catalog
    from training.pipeline import TrainConfig, run_training

    models = tmp_path_factory.mktemp("small_sampler_run") / "models"
    df = make_demo_catalog(n=3000, seed=12)
    summary = run_training(df, Registry(models), TrainConfig(targets=TARGET_NAMES, paths=("raw",), preset="fast",
                                                             models=("lgbm",), seed=1))
    return models, df, summary


def registry_copy(run, dest: Path) -> Path:
    """A private copy of a session run's registry directory at ``dest`` (tests may change it)."""
    import shutil

    shutil.copytree(run[0], dest)
    return dest
