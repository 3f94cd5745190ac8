"""constraints.txt pins every dependency CI installs, and CI, the README and the image use it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def test_every_dependency_ci_installs_is_pinned():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in ("train", "dev"):  # what .ci/run installs
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and " " not in version, f"not an exact pin: {line!r}"
            pins[_name(name)] = version
    env = {"sys_platform": "linux", "platform_system": "Linux"}
    for req in wanted:
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        assert _name(req.name) in pins, f"{req.name} is not in constraints.txt: bash .ci/refresh-constraints"
        assert req.specifier.contains(pins[_name(req.name)], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[_name(req.name)]}, outside {req.specifier}")


def test_ci_the_readme_and_the_image_install_with_the_constraints():
    ci = (REPO / ".ci" / "run").read_text()
    assert "-c constraints.txt" in ci
    assert ci.strip().splitlines()[-1] in (REPO / "README.md").read_text()  # the README's test command is CI's
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.count("-c constraints.txt") == 2 and "constraints.txt ./" in dockerfile
