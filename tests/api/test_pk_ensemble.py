"""P(k) jobs in mode sample (issue 14) on a real server: an ensemble of catalogs drawn by the joint
sampler pinned at submission, against the true galaxies."""

from __future__ import annotations

import json

import httpx
import pytest

pytest.importorskip("lightgbm")

from app.core.catalogs import write_table  # noqa: E402
from app.core.model import GalaxyModel  # noqa: E402
from app.core.registry import Registry  # noqa: E402
from app.core.schema import TARGET_NAMES  # noqa: E402
from app.painting.ensemble import ensemble_pk  # noqa: E402

from .conftest import TOKEN, start_server, stop_server, wait_job  # noqa: E402

N_HALOS = 2500


@pytest.fixture(scope="module")
def server(tmp_path_factory, small_sampler_run):
    """A server on a registry with the joint sampler; its data directory holds halos with their true
    galaxies (halos.parquet), the same halos without them (halos_only.parquet)."""
    from tests.conftest import registry_copy

    root = tmp_path_factory.mktemp("pk_ensemble")
    df = small_sampler_run[1]
    registry_copy(small_sampler_run, root / "models")
    (root / "data").mkdir()
    halos = df.iloc[:N_HALOS]
    write_table(halos, root / "data" / "halos.parquet")
    write_table(halos.drop(columns=list(TARGET_NAMES)), root / "data" / "halos_only.parquet")
    proc, url = start_server(root / "models", root / "data")
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client, root, halos
    stop_server(proc)


def _numbers(payload: dict) -> dict:
    return {k: v for k, v in payload.items() if k not in ("seconds", "catalog", "galaxypaint")}


def test_pk_job_in_sample_mode_measures_the_pinned_samplers_ensemble(server):
    client, root, halos = server
    r = client.post("/v1/jobs/pk", json={"path": "halos.parquet", "mode": "sample", "seeds": 3, "seed0": 2,
                                         "nmesh": 32})
    assert r.status_code == 202, r.text
    submitted = r.json()
    registry = Registry(root / "models", create=False)
    sampler = registry.get("raw-sampler", alias="production")
    pinned = submitted["params"]["models"]
    assert [p["target"] for p in pinned] == list(TARGET_NAMES)
    assert {(p["name"], p["version"], p["sha256"]) for p in pinned} == {(sampler.name, sampler.version, sampler.sha256)}
    assert (submitted["params"]["mode"], submitted["params"]["seeds"], submitted["params"]["seed0"]) == ("sample", 3, 2)

    job = wait_job(client, submitted["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert result["mode"] == "sample" and result["n_realizations"] == 3 and result["seed_range"] == [2, 4]
    assert result["n_halos"] == N_HALOS and result["id_column"] == "ID"
    assert [(s["target"], s["bin"]) for s in result["summary"]] == [(t, b) for t in TARGET_NAMES for b in (1, 2)]
    payload = client.get(f"/v1/jobs/{job['id']}/result", params={"part": "file"}).json()
    assert payload["seeds"] == [2, 3, 4] and payload["nmesh"] == 32
    # the numbers are those of the same ensemble measured here with the pinned versions
    local = ensemble_pk(halos, GalaxyModel.from_pinned(registry, pinned, "raw"), [2, 3, 4], 205.0, 32)
    assert _numbers(payload) == _numbers(json.loads(json.dumps(local.as_dict())))
    figure = client.get(f"/v1/jobs/{job['id']}/result", params={"part": "figure"})
    assert figure.status_code == 200 and figure.content[:4] == b"\x89PNG"
    summary_csv = client.get(f"/v1/jobs/{job['id']}/result", params={"part": "summary_csv"})
    assert summary_csv.status_code == 200 and summary_csv.text.startswith("target,bin,range,n_true,n_sample_mean")

    # the true galaxies may come from a separate catalog of the same haloes
    r = client.post("/v1/jobs/pk", json={"path": "halos_only.parquet", "truth": "halos.parquet", "mode": "sample",
                                         "seeds": 3, "seed0": 2, "nmesh": 32})
    assert r.status_code == 202, r.text
    with_truth = wait_job(client, r.json()["id"], timeout=300)
    assert with_truth["status"] == "succeeded", with_truth["error"]
    other = client.get(f"/v1/jobs/{with_truth['id']}/result", params={"part": "file"}).json()
    assert _numbers(other) == _numbers(payload)


def test_pk_job_without_true_galaxies_fails_clearly(server):
    client, _, _ = server
    r = client.post("/v1/jobs/pk", json={"path": "halos_only.parquet", "mode": "sample", "seeds": 2, "nmesh": 16})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], timeout=300)
    assert job["status"] == "failed" and "lacks the true galaxy properties" in job["error"]


@pytest.mark.parametrize("body, status, field", [
    ({"mode": "sample"}, 422, "seeds"),
    ({"mode": "sample", "seeds": 1}, 422, "seeds"),
    ({"mode": "sample", "seeds": 51}, 422, "seeds"),
    ({"mode": "sample", "seeds": 3, "seed0": 2**63 - 2}, 422, "seed0"),
    ({"mode": "sample", "seeds": 3, "targets": ["smass"]}, 422, "targets"),
    ({"seeds": 3}, 422, "seeds"),
    ({"mode": "mean", "model": "raw-sampler"}, 422, "model"),
    ({"mode": "quantiles", "seeds": 3}, 422, "mode"),
    ({"mode": "sample", "seeds": 3, "model": "raw-sampler/9"}, 404, "model"),
    ({"mode": "sample", "seeds": 3, "model": "smass-raw-stack"}, 422, "model"),
])
def test_pk_job_sample_mode_requests_are_checked(server, body, status, field):
    client, _, _ = server
    r = client.post("/v1/jobs/pk", json={"path": "halos.parquet", "nmesh": 16, **body})
    assert r.status_code == status, r.text
    assert r.json()["detail"].startswith(field), r.json()["detail"]
