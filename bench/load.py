"""Load test of the HTTP service on loopback: many concurrent clients while a paint job runs.

Starts ``galaxypaint serve`` on a registry (``--registry``; by default trains fast-preset stacks on a
built-in catalog first), keeps one paint job running for the whole test, and sends ``--requests``
requests from ``--clients`` concurrent clients: single-halo ``/v1/predict`` calls, with one in
``--batch-every`` a ``--batch-halos``-halo batch.  Prints latency percentiles per kind, failures, and
the resident memory of the server and its job workers at the end of the warm-up (the first
``--warmup`` requests) and at the end, with the growth between the two.

    python bench/load.py --registry models --requests 20000 --clients 50

Dynamic batching on against off (``GALAXYPAINT_BATCH_WINDOW_MS=0``), single-halo clients only, no job:

    python bench/load.py --registry models --requests 5000 --clients 50 --batch-every 0 --no-paint --batching both
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKEN = "load-test-token"


def rss_mb(pid: int) -> float:
    """Resident memory of one process [MiB]."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants [MiB]."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total / 1024


def start(registry: Path, data: Path, port: int, **extra: str) -> subprocess.Popen:
    env = {**os.environ, "GALAXYPAINT_ADMIN_TOKEN": TOKEN, "GALAXYPAINT_MAX_BATCH_HALOS": "100000", **extra}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--registry",
                             str(registry), "--data-dir", str(data), "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(data / "server.log", "w"), cwd=REPO)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready; see " + str(data / "server.log"))


def trained_registry(work: Path) -> Path:
    from app.core.registry import Registry
    from training.demo_catalog import make_demo_catalog
    from training.pipeline import TrainConfig, run_training

    df = make_demo_catalog(n=40_000, seed=5)
    run_training(df, Registry(work / "models"), TrainConfig(preset="fast", seed=1),
                 progress=lambda m: print(m, file=sys.stderr) if "finished" in m else None)
    return work / "models"


async def run(args, url: str, pid: int, data: Path) -> dict:
    from app.core.catalogs import write_table
    from training.demo_catalog import make_demo_catalog

    halos = make_demo_catalog(n=args.paint_halos, seed=9)
    write_table(halos, data / "paint.parquet")
    feats = ["M_h", "C_h", "S_h", "z_h", "Delta3_h"]
    pool = halos[feats].to_numpy()
    rng = np.random.default_rng(0)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    lat: dict[str, list[float]] = {"single": [], "batch": []}
    failures: list[str] = []
    counter = {"next": 0, "done": 0}
    rss = {}
    paint_jobs = []

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=args.clients + 5)) as c:
        async def keep_painting():
            while counter["done"] < args.requests and not args.no_paint:
                r = await c.post("/v1/jobs/paint", data={"catalog": "paint.parquet"}, headers=auth)
                if r.status_code != 202:
                    failures.append(f"paint submit {r.status_code}")
                    return
                job_id = r.json()["id"]
                paint_jobs.append(job_id)
                while counter["done"] < args.requests:
                    job = (await c.get(f"/v1/jobs/{job_id}", headers=auth)).json()
                    if job["status"] in ("succeeded", "failed", "canceled"):
                        if job["status"] != "succeeded":
                            failures.append(f"paint job {job['status']}: {job.get('error')}")
                        break
                    await asyncio.sleep(0.5)

        async def client():
            while True:
                i = counter["next"]
                if i >= args.requests:
                    return
                counter["next"] += 1
                kind = "batch" if args.batch_every and i % args.batch_every == args.batch_every - 1 else "single"
                n = args.batch_halos if kind == "batch" else 1
                rows = pool[rng.integers(0, len(pool), n)]
                body = {"columns": {f: rows[:, j].tolist() for j, f in enumerate(feats)}}
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/predict", json=body)
                    if r.status_code != 200:
                        failures.append(f"{kind} {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    failures.append(f"{kind} {type(exc).__name__}")
                lat[kind].append(time.perf_counter() - t0)
                counter["done"] += 1
                if counter["done"] == args.warmup:
                    rss["warmup"], rss["warmup_server"] = tree_rss_mb(pid), rss_mb(pid)

        painter = asyncio.create_task(keep_painting())
        t0 = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(args.clients)])
        elapsed = time.perf_counter() - t0
        rss["end"], rss["end_server"] = tree_rss_mb(pid), rss_mb(pid)
        await painter
        metrics = (await c.get("/metrics")).text
    batches = {name: sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " "))
               for name in ("galaxypaint_batches_total", "galaxypaint_batches_merged_total",
                            "galaxypaint_batch_requests_sum")}
    return {"lat": lat, "failures": failures, "rss": rss, "seconds": elapsed, "paint_jobs": len(paint_jobs),
            "batches": batches}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", help="registry to serve (default: train fast-preset stacks first)")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--warmup", type=int, default=2_000)
    p.add_argument("--batch-every", type=int, default=10)
    p.add_argument("--batch-halos", type=int, default=1_000)
    p.add_argument("--paint-halos", type=int, default=300_000, help="halos of the paint job kept running")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--no-paint", action="store_true", help="no paint job running meanwhile")
    p.add_argument("--batching", choices=("on", "off", "both"), default="on",
                   help="dynamic batching as configured (on), disabled (off: GALAXYPAINT_BATCH_WINDOW_MS=0), or one "
                        "run of each (both)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry = Path(args.registry) if args.registry else trained_registry(work)
        for batching in (("on", "off") if args.batching == "both" else (args.batching,)):
            data = work / f"data-{batching}"
            data.mkdir()
            extra = {"GALAXYPAINT_BATCH_WINDOW_MS": "0"} if batching == "off" else {}
            proc = start(registry, data, args.port, **extra)
            try:
                out = asyncio.run(run(args, f"http://127.0.0.1:{args.port}", proc.pid, data))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            report(args, out, batching)


def report(args, out: dict, batching: str) -> None:
    n = sum(len(v) for v in out["lat"].values())
    print(f"[batching {batching}] {n:,} requests from {args.clients} clients in {out['seconds']:.1f} s "
          f"({n / out['seconds']:.0f} req/s), {out['paint_jobs']} paint job(s) of {args.paint_halos:,} halos running "
          "meanwhile")
    for kind, values in out["lat"].items():
        if not values:
            continue
        v = np.array(values) * 1e3
        print(f"  {kind:6s} n={len(v):6,d}  p50 {np.percentile(v, 50):8.1f} ms  p99 {np.percentile(v, 99):8.1f} ms  "
              f"max {v.max():8.1f} ms")
    print(f"  failed requests: {len(out['failures'])}" + (f" (first: {out['failures'][0]})" if out["failures"] else ""))
    b = out["batches"]
    if b["galaxypaint_batches_total"]:
        print(f"  batcher: {b['galaxypaint_batches_total']:,.0f} calls, {b['galaxypaint_batches_merged_total']:,.0f} "
              f"merged, {b['galaxypaint_batch_requests_sum'] / b['galaxypaint_batches_total']:.2f} requests per call")
    for label, key in (("server", "_server"), ("server + job workers", "")):
        w, e = out["rss"].get("warmup" + key, float("nan")), out["rss"]["end" + key]
        print(f"  RSS {label}: {w:.0f} MiB after {args.warmup:,} requests, {e:.0f} MiB at the end "
              f"({100 * (e / w - 1):+.1f} %)")


if __name__ == "__main__":
    main()
