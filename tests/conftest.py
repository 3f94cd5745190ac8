"""Shared fixtures.  ``../shared`` (beside the repository) holds real TNG300 rows and the authors'
published models; tests that need it skip cleanly when it is absent."""

from __future__ import annotations

import os
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
