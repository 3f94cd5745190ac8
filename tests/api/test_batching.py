"""Dynamic batching over HTTP: concurrent /v1/predict and /v2 infer requests for the same models and mode
share one onnxruntime call, and each gets exactly the answer it gets alone.  Real uvicorn servers on
127.0.0.1 over a small registry with the joint sampler: one that merges deterministically (an hour-long
window, batches run when full), one with the default settings, and one with batching off (the reference).
"""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np
import pytest

pytest.importorskip("lightgbm")

from app.core.schema import FEATURE_NAMES  # noqa: E402

from .conftest import start_server, stop_server  # noqa: E402

#: requests x halos of the deterministic merge: the merging server's batches hold exactly this many halos
GROUP, HALOS = 8, 3
FULL = GROUP * HALOS


@pytest.fixture(scope="module")
def registry(tmp_path_factory, small_sampler_run):
    from tests.conftest import registry_copy

    root = tmp_path_factory.mktemp("batching")
    registry_copy(small_sampler_run, root / "models")
    (root / "data").mkdir()
    return root, small_sampler_run[1]


@pytest.fixture(scope="module")
def servers(registry):
    """(merging, default, unbatched) base URLs, and the catalog."""
    root, df = registry
    configs = {
        # waits for a full batch (the window never ends within a test); every JSON body parsed in a thread
        "merging": {"GALAXYPAINT_BATCH_WINDOW_MS": "1000", "GALAXYPAINT_BATCH_EAGER": "false",
                    "GALAXYPAINT_BATCH_MAX_ROWS": str(FULL), "GALAXYPAINT_JSON_OFFLOAD_BYTES": "0"},
        "default": {"GALAXYPAINT_BATCH_BYPASS_ROWS": "100"},
        "off": {"GALAXYPAINT_BATCH_WINDOW_MS": "0"},
    }
    started = {}
    try:
        for name, env in configs.items():
            started[name] = start_server(root / "models", root / "data", **env)
        yield {name: url for name, (_, url) in started.items()}, df
    finally:
        for proc, _ in started.values():
            stop_server(proc)


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def batch_counters(url: str) -> dict[str, float]:
    return {k: metric(url, f"galaxypaint_{k}") for k in ("batches_total", "batches_merged_total",
                                                        "batch_requests_sum", "batch_requests_count")}


def columns(x: np.ndarray) -> dict[str, list[float]]:
    return {f: x[:, j].tolist() for j, f in enumerate(FEATURE_NAMES)}


def v1(x: np.ndarray, **fields) -> tuple[str, dict]:
    return "/v1/predict", {"columns": columns(x), **fields}


def v2_sampler(x: np.ndarray, **parameters) -> tuple[str, dict]:
    return "/v2/models/raw-sampler/infer", {"inputs": [{"name": "halo_features", "shape": list(x.shape),
                                                        "datatype": "FP64", "data": x.ravel().tolist()}],
                                            "parameters": parameters}


def values(answer: dict) -> dict[str, np.ndarray]:
    """Output -> values of a /v1 or /v2 answer."""
    if "predictions" in answer:
        return {k: np.asarray(v) for k, v in answer["predictions"].items()}
    return {o["name"]: np.asarray(o["data"]) for o in answer["outputs"]}


async def post_all(url: str, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    """Every request at once, each on a connection of its own."""
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=len(requests))) as c:
        return await asyncio.gather(*[c.post(path, json=body) for path, body in requests])


def assert_same(got: httpx.Response, ref: httpx.Response) -> None:
    assert got.status_code == 200 and ref.status_code == 200, got.text[:300] + ref.text[:300]
    a, b = values(got.json()), values(ref.json())
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-12, err_msg=k)


def test_concurrent_sample_requests_across_transports_merge_and_equal_their_unmerged_answers(servers):
    urls, df = servers
    x = df[list(FEATURE_NAMES)].to_numpy()[:FULL]
    parts = [x[i * HALOS:(i + 1) * HALOS] for i in range(GROUP)]
    requests = []
    for i, part in enumerate(parts):  # ids overlap between requests: each request's own keys must be used
        if i % 3 == 0:
            requests.append(v1(part, mode="sample", seed=11, ids=[5 - i, 10**12 + i, -1 - i]))
        elif i % 3 == 1:
            requests.append(v1(part, mode="sample", seed=11, offset=i))
        else:
            requests.append(v2_sampler(part, mode="sample", seed=11, offset=2**63 + i))
    before = batch_counters(urls["merging"])
    merged = asyncio.run(post_all(urls["merging"], requests))
    after = batch_counters(urls["merging"])
    assert after["batches_total"] - before["batches_total"] == 1
    assert after["batches_merged_total"] - before["batches_merged_total"] == 1
    assert after["batch_requests_sum"] - before["batch_requests_sum"] == GROUP

    alone = [httpx.post(urls["off"] + path, json=body, timeout=120) for path, body in requests]
    for got, ref in zip(merged, alone):
        assert_same(got, ref)
    draws = values(merged[1].json())["smass"]
    assert not np.allclose(draws, values(merged[4].json())["smass"][:HALOS])  # different keys, different draws
    assert batch_counters(urls["off"])["batches_total"] == 0


def test_bad_requests_are_refused_alone_and_the_rest_of_the_batch_is_answered(servers):
    urls, df = servers
    x = df[list(FEATURE_NAMES)].to_numpy()[100:100 + FULL]
    good = [v1(x[i * 6:(i + 1) * 6], mode="quantiles", quantiles=[10, 90]) for i in range(FULL // 6)]
    nan = x[:2].copy()
    nan[1, 2] = np.nan
    bad = [("/v1/predict", {"columns": {**columns(nan), "S_h": [0.1, "NaN"]}, "mode": "quantiles",
                            "quantiles": [10, 90]}),
           v1(x[:2], mode="quantiles", quantiles=[10, 90], targets=["mass"]),
           v1(x[:2], mode="quantiles", quantiles=[10, 90], seed=3),
           v2_sampler(x[:2], mode="sample", seed=1, ids=[4, 4])]
    before = batch_counters(urls["merging"])
    answers = asyncio.run(post_all(urls["merging"], bad[:2] + good + bad[2:]))
    after = batch_counters(urls["merging"])
    refused = answers[:2] + answers[-2:]
    assert [r.status_code for r in refused] == [422] * 4
    assert refused[0].json()["detail"].startswith("S_h: halo 1")
    assert refused[1].json()["detail"].startswith("targets:")
    assert refused[2].json()["detail"].startswith("seed:")
    assert refused[3].json()["error"].startswith("parameters.ids: ids 0 and 1 repeat")
    assert after["batch_requests_sum"] - before["batch_requests_sum"] == len(good)
    assert after["batches_total"] - before["batches_total"] == 1
    for got, (path, body) in zip(answers[2:-2], good):
        assert_same(got, httpx.post(urls["off"] + path, json=body, timeout=120))


def test_default_settings_batch_concurrent_single_halo_means_and_large_requests_bypass(servers):
    urls, df = servers
    x = df[list(FEATURE_NAMES)].to_numpy()[300:340]
    requests = [v1(x[i:i + 1], targets=["smass", "sSFR"]) if i % 2 else
                ("/v2/models/smass-raw-stack/infer", {"inputs": [{"name": "halo_features", "shape": [1, 5],
                                                                  "datatype": "FP64", "data": x[i].tolist()}]})
                for i in range(len(x))]
    before = batch_counters(urls["default"])
    answers = asyncio.run(post_all(urls["default"], requests))
    after = batch_counters(urls["default"])
    assert after["batch_requests_sum"] - before["batch_requests_sum"] == len(requests)
    for got, (path, body) in zip(answers, requests):
        assert_same(got, httpx.post(urls["off"] + path, json=body, timeout=120))

    big = df[list(FEATURE_NAMES)].to_numpy()[:150]  # more than BATCH_BYPASS_ROWS (100): run on its own
    r = httpx.post(urls["default"] + "/v1/predict", json={"columns": columns(big)}, timeout=120)
    assert r.status_code == 200 and r.json()["n_halos"] == 150
    assert batch_counters(urls["default"])["batches_total"] == after["batches_total"]


@pytest.mark.parametrize("payload,status,detail", [
    ({"halos": [{"M_h": 12, "C_h": 1, "S_h": 0.04, "z_h": 1}]}, 422, "halos.0.Delta3_h: Field required"),
    ({"halos": [{"M_h": "big", "C_h": 1, "S_h": 0.04, "z_h": 1, "Delta3_h": 2}]}, 422, "halos.0.M_h:"),
    ({"halos": [], "columns": {}}, 422, "exactly one of 'halos'"),
    ({"columns": {"M_h": [12], "C_h": [1], "S_h": [0.1], "z_h": [1]}, "mode": "sample", "offset": 1}, 422,
     "missing Delta3_h"),
    ({"halos": [{"M_h": 12, "C_h": 1, "S_h": 0.04, "z_h": 1, "Delta3_h": 2}], "ids": [1.5]}, 422, "ids.0:"),
])
def test_bodies_parsed_in_a_thread_are_refused_as_on_the_event_loop(servers, payload, status, detail):
    urls, _ = servers
    threaded = httpx.post(urls["merging"] + "/v1/predict", json=payload, timeout=60)  # JSON_OFFLOAD_BYTES=0
    inline = httpx.post(urls["default"] + "/v1/predict", json=payload, timeout=60)
    assert threaded.status_code == inline.status_code == status
    assert threaded.json()["detail"] == inline.json()["detail"] and detail in inline.json()["detail"], inline.text


def test_malformed_json_and_foreign_media_types_are_refused(servers):
    urls, _ = servers
    for url in (urls["merging"], urls["default"]):
        broken = httpx.post(url + "/v1/predict", content=b'{"halos": [', headers={"content-type": "application/json"})
        assert broken.status_code == 422 and "json" in broken.json()["detail"].lower(), broken.text
        form = httpx.post(url + "/v1/predict", content=b"a=1", headers={"content-type": "text/plain"})
        assert form.status_code == 415 and form.json()["detail"].startswith("content-type:")
        v2 = httpx.post(url + "/v2/models/smass-raw-stack/infer", content=b"[1, 2", timeout=60)
        assert v2.status_code == 422 and "error" in v2.json()
