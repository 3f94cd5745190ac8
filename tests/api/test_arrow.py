"""Arrow IPC on /v1/predict: record batches in (options as query parameters), JSON or an Arrow stream out,
equal to the JSON path; malformed, mistyped, null, NaN and oversized bodies refused with 4xx JSON naming
the problem.  A real uvicorn on 127.0.0.1, real pyarrow streams, a small registry with the joint sampler."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("lightgbm")

from app.core.schema import FEATURE_NAMES  # noqa: E402

from .conftest import start_server, stop_server  # noqa: E402

ARROW = "application/vnd.apache.arrow.stream"
MAX_BYTES = 64 * 1024  # the server's MAX_JSON_BYTES: 1,000 halos of 6 float64 columns fit, 2,000 do not


@pytest.fixture(scope="module")
def server(tmp_path_factory, small_sampler_run):
    from tests.conftest import registry_copy

    root = tmp_path_factory.mktemp("arrow")
    registry_copy(small_sampler_run, root / "models")
    (root / "data").mkdir()
    proc, url = start_server(root / "models", root / "data", GALAXYPAINT_MAX_JSON_BYTES=str(MAX_BYTES))
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client, small_sampler_run[1]
    finally:
        stop_server(proc)


def stream(table: pa.Table, chunk: int | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=chunk):
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def feature_table(x: np.ndarray, **extra) -> pa.Table:
    return pa.table({**{f: x[:, j] for j, f in enumerate(FEATURE_NAMES)}, **extra})


def post_arrow(client, body: bytes, accept: str | None = None, **params) -> httpx.Response:
    headers = {"content-type": ARROW, **({"accept": accept} if accept else {})}
    return client.post("/v1/predict", content=body, params=params, headers=headers)


def post_json(client, x: np.ndarray, **fields) -> httpx.Response:
    r = client.post("/v1/predict", json={"columns": {f: x[:, j].tolist() for j, f in enumerate(FEATURE_NAMES)},
                                         **fields})
    assert r.status_code == 200, r.text
    return r


def read_answer(r: httpx.Response) -> tuple[dict[str, np.ndarray], dict]:
    assert r.status_code == 200 and r.headers["content-type"] == ARROW, r.text[:500]
    table = pa.ipc.open_stream(pa.py_buffer(r.content)).read_all()
    assert all(t == pa.float64() for t in table.schema.types)
    return {n: table.column(n).to_numpy() for n in table.column_names}, json.loads(table.schema.metadata[b"galaxypaint"])


def assert_values(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=0, atol=1e-12, err_msg=k)


def test_mean_mode_in_several_batches_equals_json_in_both_answer_formats(server):
    client, df = server
    x = df[list(FEATURE_NAMES)].to_numpy()[:300]
    body = stream(feature_table(x), chunk=128)  # three record batches
    ref = post_json(client, x, targets=["smass", "color"]).json()
    as_json = post_arrow(client, body, targets="smass,color")
    assert as_json.status_code == 200 and as_json.headers["content-type"] == "application/json", as_json.text
    assert as_json.json()["warnings"] == ref["warnings"] and as_json.json()["models"] == ref["models"]
    assert_values(as_json.json()["predictions"], ref["predictions"])
    got, meta = read_answer(post_arrow(client, body, accept=ARROW, targets=["smass", "color"]))
    assert_values(got, ref["predictions"])
    assert meta["units"] == ref["units"] and meta["n_halos"] == 300 and meta["mode"] == "mean"
    # JSON in, Arrow out
    got, _ = read_answer(client.post("/v1/predict", json={"columns": {f: x[:, j].tolist()
                                                                      for j, f in enumerate(FEATURE_NAMES)}},
                                     headers={"accept": f"{ARROW}, application/json;q=0.5"}))
    assert_values(got, post_json(client, x).json()["predictions"])


def test_float32_and_integer_columns_are_cast(server):
    client, df = server
    x = df[list(FEATURE_NAMES)].to_numpy()[:50]
    cols = {f: pa.array(x[:, j].astype(np.float32)) for j, f in enumerate(FEATURE_NAMES)}
    cols["z_h"] = pa.array(np.ones(50, dtype=np.int32))
    sent = np.column_stack([x[:, j].astype(np.float32).astype(np.float64) for j in range(5)])
    sent[:, FEATURE_NAMES.index("z_h")] = 1.0
    got, _ = read_answer(post_arrow(client, stream(pa.table(cols)), accept=ARROW))
    assert_values(got, post_json(client, sent).json()["predictions"])


def test_sample_and_quantiles_modes_equal_json(server):
    client, df = server
    x = df[list(FEATURE_NAMES)].to_numpy()[:40]
    ids = np.arange(40, dtype=np.int64) * 7919 - 20
    got, meta = read_answer(post_arrow(client, stream(feature_table(x, ID=ids)), accept=ARROW, mode="sample", seed=9))
    assert_values(got, post_json(client, x, mode="sample", seed=9, ids=ids.tolist()).json()["predictions"])
    assert meta["seed"] == 9
    got, _ = read_answer(post_arrow(client, stream(feature_table(x)), accept=ARROW, mode="sample", offset=2**63 + 5))
    assert_values(got, post_json(client, x, mode="sample", offset=2**63 + 5).json()["predictions"])
    uids = pa.array(np.arange(40, dtype=np.uint64) + np.uint64(2**64 - 100))
    got, _ = read_answer(post_arrow(client, stream(feature_table(x, ID=uids)), accept=ARROW, mode="sample"))
    assert_values(got, post_json(client, x, mode="sample", ids=[int(v) for v in uids.to_numpy()]).json()["predictions"])
    got, meta = read_answer(post_arrow(client, stream(feature_table(x)), accept=ARROW, mode="quantiles",
                                       quantiles="10,90", targets="sSFR"))
    assert list(got) == ["sSFR_q10", "sSFR_q90"] and meta["quantiles"] == [10.0, 90.0]
    assert_values(got, post_json(client, x, mode="quantiles", quantiles=[10, 90], targets=["sSFR"])
                  .json()["predictions"])


def _bad_tables(x: np.ndarray) -> list[tuple[bytes, dict, int, str]]:
    """(body, query, status, what the detail starts with)."""
    cols = {f: x[:, j] for j, f in enumerate(FEATURE_NAMES)}
    nulls = pa.array(list(x[:, 1][:4]) + [None] + list(x[:, 1][5:]), type=pa.float64())
    nan = x[:, 3].copy()
    nan[2] = np.nan
    full = stream(pa.table(cols))
    return [
        (stream(pa.table({k: v for k, v in cols.items() if k != "Delta3_h"} | {"delta": x[:, 4]})), {}, 422,
         "delta: expected columns M_h, C_h, S_h, z_h, Delta3_h"),
        (stream(pa.table({k: v for k, v in cols.items() if k != "S_h"})), {}, 422, "S_h: expected columns"),
        (stream(pa.table({**cols, "M_h": pa.array([str(v) for v in x[:, 0]])})), {}, 422,
         "M_h: type string is not supported"),
        (stream(pa.table({**cols, "C_h": pa.array([True] * len(x))})), {}, 422, "C_h: type bool is not supported"),
        (stream(pa.table({**cols, "C_h": nulls})), {}, 422, "C_h: 1 null value(s), the first at halo 4"),
        (stream(pa.table({**cols, "z_h": nan})), {}, 422, "z_h: halo 2: z_h is nan"),
        (stream(pa.table({**cols, "ID": np.arange(len(x), dtype=np.float64)})), {"mode": "sample"}, 422,
         "ID: type double is not supported"),
        (stream(pa.table({**cols, "ID": np.zeros(len(x), dtype=np.int64)})), {"mode": "sample"}, 422,
         "ID: ids 0 and 1 repeat one halo id"),
        (stream(pa.table({**cols, "ID": np.arange(len(x), dtype=np.int64)})), {}, 422,
         "ID: ids key the draws of mode sample"),
        (full, {"mode": "sample"}, 422, "ID: mode sample needs"),
        (full, {"targets": "smass,mass"}, 422, "targets: unknown target mass"),
        (full, {"mode": "median"}, 422, "mode:"),
        (full, {"seed": 3}, 422, "seed: a seed is for mode sample"),
        (full[:len(full) - 40], {}, 400, "body: not a valid Arrow IPC stream"),
        (b"PAR1 not arrow at all", {}, 400, "body: not a valid Arrow IPC stream"),
        (b"", {}, 400, "body: not a valid Arrow IPC stream"),
        (stream(pa.table({f: pa.array([], type=pa.float64()) for f in FEATURE_NAMES})), {}, 422,
         "halos: the request holds no halo"),
    ]


def test_bad_bodies_are_refused_naming_the_problem(server):
    client, df = server
    x = df[list(FEATURE_NAMES)].to_numpy()[:12]
    for body, query, status, detail in _bad_tables(x):
        r = post_arrow(client, body, accept=ARROW, **query)
        assert r.status_code == status and r.headers["content-type"] == "application/json", (detail, r.text)
        assert r.json()["detail"].startswith(detail), (detail, r.text)


def test_row_and_size_limits_are_those_of_json(server):
    client, df = server
    x = df[list(FEATURE_NAMES)].to_numpy()
    rows = post_arrow(client, stream(feature_table(x[:1001, :].astype(np.float32))))  # under MAX_BYTES, over rows
    assert rows.status_code == 413 and rows.json()["detail"].startswith("halos: 1,001 halos"), rows.text
    big = stream(feature_table(x[:2000]))
    assert len(big) > MAX_BYTES
    declared = post_arrow(client, big)
    assert declared.status_code == 413 and declared.json()["detail"].startswith("body:"), declared.text

    def chunks():  # no Content-Length: the server counts as it reads and stops at the limit
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    streamed = client.post("/v1/predict", content=chunks(), headers={"content-type": ARROW})
    assert streamed.status_code == 413 and "limit of 65,536 bytes" in streamed.json()["detail"], streamed.text


def test_query_parameters_are_for_arrow_bodies_only(server):
    client, df = server
    x = df[list(FEATURE_NAMES)].to_numpy()[:2]
    r = client.post("/v1/predict", params={"mode": "sample"},
                    json={"columns": {f: x[:, j].tolist() for j, f in enumerate(FEATURE_NAMES)}})
    assert r.status_code == 422 and r.json()["detail"].startswith("mode: query parameters configure Arrow"), r.text
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", ARROW}
    assert "PredictRequest" in spec["components"]["schemas"] and "Halo" in spec["components"]["schemas"]
