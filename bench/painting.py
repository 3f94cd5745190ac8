"""Painting throughput and memory, file to file: local streaming engine vs Dask LocalCluster.

    python bench/painting.py --registry models [--n 10000000] [--engines local,dask] [--modes mean,sample]
                             [--chunk-rows 262144] [--model REF] [--unfused]

Writes a synthetic halo catalog (features resampled from the built-in catalog with jitter, Parquet,
written in row groups so the generator itself stays small), then runs ``galaxypaint paint`` on it
as a child process per engine and mode (``mean``: the stacks; ``sample``: draws from the joint
sampler, seed 7; ``quantiles``: the sampler's 16/50/84 % quantiles) and reports wall time, halos/s
and the peak RSS of the largest child process (for Dask: the largest of client and workers).
``--model`` is passed to ``paint`` (e.g. ``paper`` or ``selected``: that alias of every target's stack).
``--unfused`` also paints each mean-mode run with ``GALAXYPAINT_FUSED_GRAPHS=0`` (one graph per
target, as before the run's multi-target graph existed) and prints the fused / unfused ratio.
Goals and past figures: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_catalog(path: Path, n: int, seed: int = 0, row_group: int = 1 << 20) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from app.core.schema import FEATURE_NAMES
    from training.demo_catalog import make_demo_catalog

    base = make_demo_catalog(n=100_000, seed=seed)
    feats = base[list(FEATURE_NAMES)].to_numpy()
    scale = 0.01 * feats.std(axis=0)
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, n, row_group):
        m = min(row_group, n - start)
        rows = feats[rng.integers(0, len(feats), m)] + rng.normal(0, 1, (m, len(FEATURE_NAMES))) * scale
        rows[:, 2:] = np.abs(rows[:, 2:])
        cols = {name: rows[:, j] for j, name in enumerate(FEATURE_NAMES)}
        cols.update({c: rng.random(m) * 205.0 for c in ("x", "y", "z")})
        table = pa.table(cols)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--engines", default="local,dask")
    parser.add_argument("--modes", default="mean", help="comma-separated: mean, sample, quantiles")
    parser.add_argument("--chunk-rows", type=int, default=1 << 18)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the synthetic catalog and outputs")
    parser.add_argument("--model", help="model choice passed to paint (e.g. paper, selected)")
    parser.add_argument("--unfused", action="store_true", help="also paint mean mode with one graph per target")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="galaxypaint-bench-"))
    t0 = time.perf_counter()
    src = synthetic_catalog(tmp / "halos.parquet", args.n)
    print(f"synthetic catalog: {args.n:,} halos, {src.stat().st_size / 2**20:.0f} MiB, written in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    print("engine  mode       graphs   seconds   halos/s     peak RSS (largest process)")
    runs = [(e, m, fused) for e in args.engines.split(",") for m in args.modes.split(",")
            for fused in ((True, False) if args.unfused and m == "mean" else (True,))]
    rates: dict[tuple[str, str], dict[bool, float]] = {}
    for engine, mode, fused in runs:
        out = tmp / ("painted.parquet" if engine == "local" else "painted_dask")
        cmd = [sys.executable, "-m", "app.cli", "paint", "--catalog", str(src), "--out", str(out), "--registry",
               args.registry, "--engine", engine, "--chunk-rows", str(args.chunk_rows), "--mode", mode]
        if args.model:
            cmd += ["--model", args.model]
        if mode == "sample":
            cmd += ["--seed", "7"]
        if engine == "dask":
            cmd += ["--dask-workers", str(args.workers)]
        # a wrapper process per engine: its RUSAGE_CHILDREN sees only this run's processes
        wrapper = [sys.executable, "-c", "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                   "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
                   "sys.exit(r.returncode)", *cmd]
        env = {**os.environ, "GALAXYPAINT_FUSED_GRAPHS": "1" if fused else "0"}
        t0 = time.perf_counter()
        res = subprocess.run(wrapper, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - t0
        if res.returncode != 0:
            print(f"{engine} {mode}: failed: {res.stderr.strip().splitlines()[-2:]}")
            continue
        peak = int(res.stderr.strip().splitlines()[-1].split()[1]) / 1024
        rates.setdefault((engine, mode), {})[fused] = args.n / seconds
        print(f"{engine:7s} {mode:9s} {'one' if fused else 'per-tgt':8s} {seconds:8.1f}  {args.n / seconds:10,.0f}   "
              f"{peak:8.0f} MiB", flush=True)
        print("        " + res.stdout.strip().splitlines()[-1][:160])
    for (engine, mode), r in rates.items():
        if len(r) == 2:
            print(f"{engine} {mode}: one graph / one graph per target = {r[True] / r[False]:.2f}x")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
