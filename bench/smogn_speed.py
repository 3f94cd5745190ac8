"""SMOGN: the reference package vs ours, side by side, and ours on the full training split.

    python bench/smogn_speed.py [--sizes 1000,2000,4000,8000] [--skip-reference]

Part 1: 6 columns (5 halo features + smass), k=7, pert=0.04,
balance, automatic relevance; wall time of ``smogn.smoter`` (numpy.random and random seeded) and
of ``training.smogn`` at each size, and the ratio.
Part 2: ours with the paper's per-target settings on the 48 % training split of the full built-in
catalog (83,773 rows), each target in a fresh process: wall time and peak RSS.  Goals and past
figures: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import time
import warnings

import numpy as np

COLUMNS = ["M_h", "C_h", "S_h", "z_h", "Delta3_h"]
BENCH_PARAMS = {"k": 7, "pert": 0.04, "samp_method": "balance", "rel_method": "auto"}


def _one_target(target: str) -> dict:
    """Runs in a child process: SMOGN on the full training split, wall time and peak RSS."""
    import resource

    from training.demo_catalog import make_demo_catalog
    from training.pipeline import split_indices
    from training.smogn import paper_sampler

    df = make_demo_catalog(seed=42)
    train = split_indices(df, 42)["train"]
    x, y = df[COLUMNS].to_numpy()[train], df[target].to_numpy()[train]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    sampler = paper_sampler(target, seed=1)
    _, y_new = sampler.fit_resample(x, y)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"target": target, "rows_in": len(y), "rows_out": len(y_new), "synthetic": sampler.n_synthetic_,
            "bins": [len(b) for b in sampler.bins_], "seconds": seconds, "peak_rss_mb": rss / 1024,
            "rss_before_mb": rss0 / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,4000,8000")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_one_target(args.child)))
        return

    from training.demo_catalog import make_demo_catalog
    from training.smogn import smoter

    df = make_demo_catalog(seed=42)
    if not args.skip_reference:
        import smogn

        print("rows   reference s   ours s     ratio   rows out (ref / ours)")
        for n in (int(s) for s in args.sizes.split(",")):
            d = df[COLUMNS + ["smass"]].sample(n, random_state=0).reset_index(drop=True)
            np.random.seed(0)
            random.seed(0)
            with warnings.catch_warnings(), open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
                warnings.simplefilter("ignore")  # and the package's tqdm bars
                t0 = time.perf_counter()
                ref = smogn.smoter(data=d, y="smass", **BENCH_PARAMS)
                t_ref = time.perf_counter() - t0
            t0 = time.perf_counter()
            mine = smoter(d, "smass", seed=0, variant="smogn-0.1.2", **BENCH_PARAMS)
            t_ours = time.perf_counter() - t0
            print(f"{n:5d}  {t_ref:11.2f}  {t_ours:8.4f}  {t_ref / t_ours:8.0f}x  {len(ref)} / {len(mine)}",
                  flush=True)

    print("\nfull training split, paper settings (one process per target)")
    print("target  rows in  rows out  synthetic  bins                          s     peak RSS MB")
    for target in ("smass", "sSFR", "radius", "color"):
        out = subprocess.run([sys.executable, __file__, "--child", target], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{target:7s} {r['rows_in']:8d} {r['rows_out']:9d} {r['synthetic']:10d}  {str(r['bins']):28s} "
              f"{r['seconds']:6.2f}  {r['peak_rss_mb']:8.0f} (catalog alone {r['rss_before_mb']:.0f})",
              flush=True)


if __name__ == "__main__":
    main()
