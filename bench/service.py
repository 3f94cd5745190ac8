"""HTTP service latency and throughput, measured against a live server over loopback.

    python bench/service.py --registry models [--requests 300] [--batch 100000]

Starts ``galaxypaint serve`` on a free port (or uses ``--url``), then with an httpx client:
single-halo ``/v1/predict`` latency p50/p99 for one target (smass, raw stack) and for all four,
the end-to-end throughput of one columnar 100k-halo request, and the same for Open Inference
Protocol v2 (``/v2/models/smass-raw-stack/infer``); then the same 100k haloes (4 targets) sent as
JSON columns and as an Arrow IPC stream (answer in Arrow), against the graphs' own compute rate on
those haloes (``GalaxyModel.predict`` in this process, no HTTP), with the ratio Arrow / compute.
A stack's speed is bounded by its slowest member, the exact kNN (``training/knn_onnx.py``).  Goals
and past figures: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _latencies(fn, n: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.percentile(times, 50)), 1e3 * float(np.percentile(times, 99))


def _best_of(fn, repeat: int = 3) -> float:
    """The shortest of ``repeat`` timed calls [s] (after one warm-up): the least disturbed by other load."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def transports(client, x: np.ndarray, registry: str) -> None:
    """One request of all ``x`` (4 targets, mean mode) as JSON columns and as Arrow IPC, against the graphs'
    own compute on the same haloes (``GalaxyModel.predict``, this process)."""
    import pyarrow as pa

    from app.core.model import GalaxyModel
    from app.core.registry import Registry
    from app.core.schema import FEATURE_NAMES

    arrow = "application/vnd.apache.arrow.stream"
    json_body = {"columns": {f: x[:, j].tolist() for j, f in enumerate(FEATURE_NAMES)}}
    sink = pa.BufferOutputStream()
    table = pa.table({f: x[:, j] for j, f in enumerate(FEATURE_NAMES)})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    arrow_body = sink.getvalue().to_pybytes()

    def by_json():
        client.post("/v1/predict", json=json_body).raise_for_status()

    def by_arrow():
        r = client.post("/v1/predict", content=arrow_body, headers={"content-type": arrow, "accept": arrow})
        r.raise_for_status()
        pa.ipc.open_stream(pa.py_buffer(r.content)).read_all()

    model = GalaxyModel.from_registry(Registry(registry, create=False))
    t_json, t_arrow = _best_of(by_json), _best_of(by_arrow)
    t_compute = _best_of(lambda: model.predict(x))
    n = len(x)
    print(f"\none request of {n:,} halos, 4 targets   seconds   halos/s   (best of 3)")
    print(f"/v1/predict JSON columns          {t_json:7.3f}  {n / t_json:9,.0f}   ({len(str(json_body)) / 2**20:.1f} MiB)")
    print(f"/v1/predict Arrow IPC             {t_arrow:7.3f}  {n / t_arrow:9,.0f}   ({len(arrow_body) / 2**20:.1f} MiB)")
    print(f"GalaxyModel.predict (no HTTP)     {t_compute:7.3f}  {n / t_compute:9,.0f}")
    print(f"Arrow / compute rate: {t_compute / t_arrow:.2f}   JSON / compute rate: {t_compute / t_json:.2f}")


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default="models")
    parser.add_argument("--url", help="an already running server")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--batch", type=int, default=100_000)
    args = parser.parse_args()

    proc = None
    url = args.url
    if url is None:
        port = _free_port()
        env = {**os.environ, "GALAXYPAINT_MAX_BATCH_HALOS": str(max(args.batch, 100_000))}
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--registry",
                                 args.registry, "--log-level", "warning"], env=env)
        url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=600)
    try:
        for _ in range(600):
            try:
                if client.get("/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        from training.demo_catalog import make_demo_catalog

        from app.core.schema import FEATURE_NAMES

        x = make_demo_catalog(n=max(args.batch, 1000), seed=1)[list(FEATURE_NAMES)].to_numpy()[:args.batch]
        halo = dict(zip(FEATURE_NAMES, x[0].tolist()))
        one = _latencies(lambda: client.post("/v1/predict", json={"halos": [halo], "targets": ["smass"]}).raise_for_status(),
                         args.requests)
        four = _latencies(lambda: client.post("/v1/predict", json={"halos": [halo]}).raise_for_status(), args.requests)
        v2_row = {"inputs": [{"name": "halo_features", "shape": [1, 5], "datatype": "FP64", "data": x[0].tolist()}]}
        v2 = _latencies(lambda: client.post("/v2/models/smass-raw-stack/infer", json=v2_row).raise_for_status(),
                        args.requests)
        print(f"single halo, {args.requests} requests      p50 ms   p99 ms")
        print(f"/v1/predict smass (raw stack)     {one[0]:7.2f}  {one[1]:7.2f}   (goal p50 <= 3)")
        print(f"/v1/predict 4 targets             {four[0]:7.2f}  {four[1]:7.2f}   (goal p50 <= 10)")
        print(f"/v2 infer smass-raw-stack         {v2[0]:7.2f}  {v2[1]:7.2f}")

        cols = {"columns": {f: x[:, j].tolist() for j, f in enumerate(FEATURE_NAMES)}, "targets": ["smass"]}
        t0 = time.perf_counter()
        client.post("/v1/predict", json=cols).raise_for_status()
        t_one = time.perf_counter() - t0
        cols4 = {"columns": cols["columns"]}
        t0 = time.perf_counter()
        client.post("/v1/predict", json=cols4).raise_for_status()
        t_four = time.perf_counter() - t0
        v2_batch = {"inputs": [{"name": "halo_features", "shape": list(x.shape), "datatype": "FP64",
                                "data": x.ravel().tolist()}]}
        t0 = time.perf_counter()
        client.post("/v2/models/smass-raw-stack/infer", json=v2_batch).raise_for_status()
        t_v2 = time.perf_counter() - t0
        n = len(x)
        print(f"\none request of {n:,} halos           seconds   halos/s")
        print(f"/v1/predict columnar, smass       {t_one:7.2f}  {n / t_one:9,.0f}   (goal >= 100,000)")
        print(f"/v1/predict columnar, 4 targets   {t_four:7.2f}  {n / t_four:9,.0f}")
        print(f"/v2 infer smass-raw-stack         {t_v2:7.2f}  {n / t_v2:9,.0f}")
        transports(client, x, args.registry)
    finally:
        client.close()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
