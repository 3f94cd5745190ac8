"""NVIDIA's Triton HTTP client (``tritonclient.http``, the real one) against a live uvicorn on 127.0.0.1:
metadata, JSON and binary tensor data (FP64 and FP32, one halo and 10,000), the joint sampler through
request parameters, the repository index; answers equal ``/v1/predict``.  Malformed binary bodies sent by
hand are a 4xx JSON naming the problem, never a 500."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

pytest.importorskip("lightgbm")
th = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from app.core.schema import FEATURE_NAMES, TARGET_NAMES  # noqa: E402

from .conftest import start_server, stop_server  # noqa: E402

MAX_HALOS = 10_000
STACK = "smass-raw-stack"
SAMPLER = "raw-sampler"
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def live(tmp_path_factory, small_sampler_run):
    """A server over a private copy of the session's sampler registry (stacks for all four targets and
    the joint sampler), 10,000 halos per request at most; an httpx client and a Triton client on it."""
    from tests.conftest import registry_copy

    root = tmp_path_factory.mktemp("tritonclient")
    models = registry_copy(small_sampler_run, root / "models")
    (root / "data").mkdir()
    proc, url = start_server(models, root / "data", GALAXYPAINT_MAX_BATCH_HALOS=str(MAX_HALOS))
    triton = th.InferenceServerClient(url.removeprefix("http://"), network_timeout=120.0, connection_timeout=60.0)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client, triton, small_sampler_run[1]
    finally:
        triton.close()
        stop_server(proc)


def _halos(df, n: int) -> np.ndarray:
    """``n`` halos (float64 [n, 5], schema order): the catalog's rows, cycled."""
    x = df[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    return x[np.arange(n) % len(x)]


def _input(x: np.ndarray, datatype: str, binary: bool):
    t = th.InferInput("halo_features", list(x.shape), datatype)
    t.set_data_from_numpy(x.astype(np.float32 if datatype == "FP32" else np.float64), binary_data=binary)
    return t


def _v1(client, x: np.ndarray, **fields) -> dict[str, list[float]]:
    r = client.post("/v1/predict", json={"columns": {f: x[:, j].tolist() for j, f in enumerate(FEATURE_NAMES)},
                                         **fields})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_server_and_model_metadata(live):
    _, triton, _ = live
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "galaxypaint"
    assert set(meta["extensions"]) == {"binary_tensor_data", "model_repository"}
    stack = triton.get_model_metadata(STACK)
    assert stack["inputs"] == [{"name": "halo_features", "datatype": "FP64", "shape": [-1, 5]}]
    assert stack["outputs"] == [{"name": "prediction", "datatype": "FP64", "shape": [-1, 1]}]
    assert triton.get_model_metadata(STACK, model_version="1")["versions"] == ["1"]
    sampler = triton.get_model_metadata(SAMPLER)
    assert [o["name"] for o in sampler["outputs"]] == list(TARGET_NAMES)
    assert triton.is_model_ready(STACK) and triton.is_model_ready(SAMPLER, model_version="1")


def test_the_repository_index_lists_the_registered_models(live):
    client, triton, _ = live
    index = triton.get_model_repository_index()
    entries = {(m["name"], m["version"]): m["state"] for m in index}
    for target in TARGET_NAMES:
        assert entries[(f"{target}-raw-stack", "1")] == "READY"
    assert entries[(SAMPLER, "1")] == "READY"
    assert all(set(m) <= {"name", "version", "state", "reason"} for m in index)
    ready = client.post("/v2/repository/index", json={"ready": True})
    assert ready.status_code == 200 and ready.json() == [m for m in index if m["state"] == "READY"]
    bad = client.post("/v2/repository/index", content=b'{"ready": "perhaps"}')
    assert bad.status_code == 400 and bad.json()["error"].startswith("ready:"), bad.text


@pytest.mark.parametrize("n", [1, MAX_HALOS])
@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_equals_v1_predict(live, n, datatype, binary):
    client, triton, df = live
    x = _halos(df, n)
    expected_input = x.astype(np.float32).astype(np.float64) if datatype == "FP32" else x
    outputs = [th.InferRequestedOutput("prediction", binary_data=binary)]
    result = triton.infer(STACK, [_input(x, datatype, binary)], outputs=outputs, request_id="r-1")
    answer = result.get_response()
    assert answer["model_name"] == STACK and answer["model_version"] == "1" and answer["id"] == "r-1"
    out = answer["outputs"][0]
    assert out["shape"] == [n, 1] and out["datatype"] == "FP64"
    assert ("data" in out) is not binary
    assert ("parameters" in out and out["parameters"]["binary_data_size"] == n * 8) is binary
    got = result.as_numpy("prediction")
    assert got.shape == (n, 1) and got.dtype == np.float64
    v1 = np.array(_v1(client, expected_input, targets=["smass"])["smass"])
    np.testing.assert_allclose(got[:, 0], v1, rtol=0, atol=1e-12)


def test_the_default_request_is_binary_both_ways(live):
    """No requested outputs: tritonclient sets ``binary_data_output`` and every output comes back binary."""
    client, triton, df = live
    x = _halos(df, 37)
    result = triton.infer(STACK, [_input(x, "FP64", True)])
    assert result.get_response()["outputs"][0]["parameters"] == {"binary_data_size": 37 * 8}
    np.testing.assert_allclose(result.as_numpy("prediction")[:, 0], _v1(client, x, targets=["smass"])["smass"],
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_the_sampler_in_sample_mode_through_parameters(live, binary):
    client, triton, df = live
    x = _halos(df, 25)
    ids = [int(i) for i in np.arange(25) * 7919 + 11]
    result = triton.infer(SAMPLER, [_input(x, "FP64", binary)],
                          outputs=[th.InferRequestedOutput(t, binary_data=binary) for t in TARGET_NAMES],
                          parameters={"mode": "sample", "seed": 5, "ids": ids})
    assert result.get_response()["parameters"] == {"mode": "sample", "seed": 5}
    v1 = _v1(client, x, mode="sample", seed=5, ids=ids)
    for target in TARGET_NAMES:
        np.testing.assert_allclose(result.as_numpy(target)[:, 0], v1[target], rtol=0, atol=1e-12)
    by_offset = triton.infer(SAMPLER, [_input(x, "FP64", binary)],
                             parameters={"mode": "sample", "seed": 5, "offset": 4000, "targets": ["color", "smass"]})
    assert [o["name"] for o in by_offset.get_response()["outputs"]] == ["color", "smass"]
    v1 = _v1(client, x, mode="sample", seed=5, offset=4000)
    for target in ("color", "smass"):
        np.testing.assert_allclose(by_offset.as_numpy(target)[:, 0], v1[target], rtol=0, atol=1e-12)
    assert by_offset.as_numpy("sSFR") is None


def test_quantiles_with_targets(live):
    client, triton, df = live
    x = _halos(df, 9)
    result = triton.infer(SAMPLER, [_input(x, "FP32", True)],
                          parameters={"mode": "quantiles", "quantiles": [10, 90], "targets": "sSFR"})
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["sSFR_q10", "sSFR_q90"]
    v1 = _v1(client, x.astype(np.float32).astype(np.float64), mode="quantiles", quantiles=[10, 90],
             targets=["sSFR"])
    for name in names:
        np.testing.assert_allclose(result.as_numpy(name)[:, 0], v1[name], rtol=0, atol=1e-12)


@pytest.mark.parametrize("model,parameters,status,field", [
    (STACK, {"mode": "sample", "offset": 0}, "422", "parameters.mode"),
    (SAMPLER, {"mode": "sample"}, "422", "parameters.ids"),
    (SAMPLER, {"mode": "sample", "offset": 0, "targets": ["stellar"]}, "422", "parameters.targets"),
    (STACK, {"targets": ["sSFR"]}, "422", "parameters.targets"),
    (SAMPLER, {"mode": "quantiles", "targets": 3}, "422", "parameters.targets"),
])
def test_bad_parameters_are_refused_through_the_client(live, model, parameters, status, field):
    _, triton, df = live
    with pytest.raises(InferenceServerException) as info:
        triton.infer(model, [_input(_halos(df, 2), "FP64", True)], parameters=parameters)
    assert info.value.status() == status and info.value.message().startswith(field + ":"), info.value


def _binary_body(header: dict, payload: bytes) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    return text + payload, {HEADER: str(len(text))}


def _tensor(shape, datatype="FP64", size=None, **extra) -> dict:
    t = {"name": "halo_features", "shape": shape, "datatype": datatype, **extra}
    if size is not None:
        t["parameters"] = {"binary_data_size": size}
    return t


HALO = np.array([[12.0, 1.0, 0.04, 1.2, 3.0]])
ROW = HALO.astype("<f8").tobytes()


@pytest.mark.parametrize("body,headers,status,field", [
    # the inputs' sizes do not add up to the bytes after the header
    (*_binary_body({"inputs": [_tensor([1, 5], size=40)]}, ROW[:32]), 400, "body"),
    (*_binary_body({"inputs": [_tensor([1, 5], size=40)]}, ROW + b"\0"), 400, "body"),
    (*_binary_body({"inputs": [_tensor([1, 5], size=2**62)]}, ROW), 400, "body"),
    (*_binary_body({"inputs": [_tensor([1, 5])]}, ROW), 400, "body"),
    # one input's size is not its shape's
    (*_binary_body({"inputs": [_tensor([1, 5], size=32)]}, ROW[:32]), 400,
     "inputs.halo_features.parameters.binary_data_size"),
    (*_binary_body({"inputs": [_tensor([2, 5], size=40)]}, ROW), 400,
     "inputs.halo_features.parameters.binary_data_size"),
    (*_binary_body({"inputs": [_tensor([1, 5], "FP32", size=40)]}, ROW), 400,
     "inputs.halo_features.parameters.binary_data_size"),
    (*_binary_body({"inputs": [_tensor([1, 5], size=-8)]}, b""), 400,
     "inputs.halo_features.parameters.binary_data_size"),
    (*_binary_body({"inputs": [_tensor([1, 5], size="40")]}, ROW), 400,
     "inputs.halo_features.parameters.binary_data_size"),
    (*_binary_body({"inputs": [_tensor([1, 5], size=40, data=[1] * 5)]}, ROW), 400,
     "inputs.halo_features.parameters.binary_data_size"),
    (*_binary_body({"inputs": [_tensor([1, 5], "INT64", size=40)]}, ROW), 400, "inputs.halo_features.datatype"),
    (*_binary_body({"inputs": [_tensor([10**15, 5], size=40)]}, ROW), 413, "inputs.halo_features.shape"),
    (*_binary_body({"inputs": [_tensor([MAX_HALOS + 1, 5], size=(MAX_HALOS + 1) * 40)]},
                   ROW * (MAX_HALOS + 1)), 413, "inputs.halo_features.shape"),
    # the header's length
    (json.dumps({"inputs": [_tensor([1, 5], size=40)]}).encode() + ROW, {HEADER: "100000"}, 400, HEADER),
    (json.dumps({"inputs": [_tensor([1, 5], size=40)]}).encode() + ROW, {HEADER: "-3"}, 400, HEADER),
    (json.dumps({"inputs": [_tensor([1, 5], size=40)]}).encode() + ROW, {HEADER: "0"}, 400, HEADER),
    (json.dumps({"inputs": [_tensor([1, 5], size=40)]}).encode() + ROW, {HEADER: "20"}, 422, "body"),
    # binary data without the header: the JSON parser meets the bytes
    (json.dumps({"inputs": [_tensor([1, 5], size=40)]}).encode() + ROW, {}, 422, "body"),
    (json.dumps({"inputs": [_tensor([1, 5], size=0)]}).encode(), {}, 400,
     "inputs.halo_features.parameters.binary_data_size"),
    (json.dumps({"inputs": [_tensor([1, 5])]}).encode(), {}, 400, "inputs.halo_features.data"),
    # output parameters
    (*_binary_body({"inputs": [_tensor([1, 5], size=40)], "parameters": {"binary_data_output": "yes"}}, ROW), 400,
     "parameters.binary_data_output"),
    (*_binary_body({"inputs": [_tensor([1, 5], size=40)],
                    "outputs": [{"name": "prediction", "parameters": {"shared_memory_region": "r"}}]}, ROW), 400,
     "outputs.0.parameters"),
    (*_binary_body({"inputs": [_tensor([1, 5], size=40)], "outputs": [{"name": "smass"}]}, ROW), 400, "outputs"),
])
def test_malformed_binary_bodies_are_a_4xx_naming_the_problem(live, body, headers, status, field):
    client, _, _ = live
    r = client.post(f"/v2/models/{STACK}/infer", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    answer = r.json()
    assert answer["error"].startswith(field + ":") or answer["error"].startswith(field + "."), answer
    assert answer["request_id"] == r.headers["x-request-id"]


def test_binary_data_without_the_header_is_explained(live):
    client, _, _ = live
    body = json.dumps({"inputs": [_tensor([1, 5], size=40)]}).encode() + ROW
    r = client.post(f"/v2/models/{STACK}/infer", content=body)
    assert r.status_code == 422 and HEADER in r.json()["error"], r.text


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain", "application/json; charset=utf-8",
                                          "application/octet-stream"])
def test_json_bodies_are_read_whatever_their_content_type(live, content_type):
    client, _, _ = live
    body = json.dumps({"inputs": [_tensor([1, 5], data=HALO.ravel().tolist())]}).encode()
    headers = {"content-type": content_type} if content_type else {}
    request = client.build_request("POST", f"/v2/models/{STACK}/infer", content=body, headers=headers)
    if content_type is None:
        request.headers.pop("content-type", None)  # as tritonclient sends it: no Content-Type at all
    assert request.headers.get("content-type") == content_type
    r = client.send(request)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    assert r.json()["outputs"][0]["data"] == _v1(client, HALO, targets=["smass"])["smass"]


def test_a_hand_made_binary_request_mixes_json_and_binary_outputs(live):
    """Per-output ``binary_data`` overrides the request's ``binary_data_output``; the binary part is exactly
    the binary outputs' bytes, in output order."""
    client, _, df = live
    x = _halos(df, 6)
    header = {"inputs": [_tensor([6, 5], "FP32", size=6 * 5 * 4)],
              "parameters": {"mode": "sample", "seed": 1, "offset": 10, "binary_data_output": True},
              "outputs": [{"name": "sSFR", "parameters": {"binary_data": False}}, {"name": "radius"},
                          {"name": "smass"}]}
    body, headers = _binary_body(header, x.astype("<f4").tobytes())
    r = client.post(f"/v2/models/{SAMPLER}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    length = int(r.headers[HEADER])
    answer = json.loads(r.content[:length])
    assert [o["name"] for o in answer["outputs"]] == ["sSFR", "radius", "smass"]
    assert [o.get("parameters") for o in answer["outputs"]] == [None, {"binary_data_size": 48},
                                                                {"binary_data_size": 48}]
    assert len(r.content) == length + 96
    binary = np.frombuffer(r.content[length:], dtype="<f8")
    v1 = _v1(client, x.astype(np.float32).astype(np.float64), mode="sample", seed=1, offset=10)
    np.testing.assert_allclose(answer["outputs"][0]["data"], v1["sSFR"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(binary[:6], v1["radius"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(binary[6:], v1["smass"], rtol=0, atol=1e-12)
