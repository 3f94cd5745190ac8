"""HTTP service latency and throughput, measured against a live server over loopback.

    python bench/service.py --registry models [--requests 300] [--batch 100000]

Starts ``galaxypaint serve`` on a free port (or uses ``--url``), then with an httpx client:
single-halo ``/v1/predict`` latency p50/p99 for one target (smass, raw stack) and for all four,
the end-to-end throughput of one columnar 100k-halo request, and the same for Open Inference
Protocol v2 (``/v2/models/smass-raw-stack/infer``).  A stack's speed is bounded by its slowest
member, the exact kNN (``training/knn_onnx.py``).  Goals and past figures: ``bench/README.md``.
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
    finally:
        client.close()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
