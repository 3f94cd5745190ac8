"""Training time, ONNX vs native inference speed and artefact sizes, on the built-in catalog.

    python bench/training_and_inference.py [--n 174527] [--preset fast|paper] [--targets smass,...]

For each target (raw path): wall time of the whole train-measure-export step; then, for every model
and for the fused stack, native vs onnxruntime throughput on a 100,000-halo batch and single-halo
latency (median of 200 calls), ONNX size, and the max |ONNX - native| on the test split.
Goals and past figures: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _time_batch(fn, x, repeat: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn(x)
    return (time.perf_counter() - t0) / repeat


def _single_ms(fn, x, n: int = 200) -> float:
    times = []
    for i in range(n):
        row = x[i % len(x):i % len(x) + 1]
        t0 = time.perf_counter()
        fn(row)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=174_527)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--targets", default="smass,sSFR,radius,color")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    import onnxruntime as ort

    from app.core.model import run_batched
    from app.core.schema import FEATURE_NAMES
    from training.demo_catalog import make_demo_catalog
    from training.estimators import PRESETS
    from training.pipeline import TrainConfig, split_indices, train_target

    df = make_demo_catalog(n=args.n, seed=args.seed)
    split = split_indices(df, args.seed)
    cfg = TrainConfig(targets=tuple(args.targets.split(",")), preset=args.preset, seed=args.seed)
    x_all = df[list(FEATURE_NAMES)].to_numpy()
    rng = np.random.default_rng(0)
    x_batch = x_all[rng.choice(len(df), 100_000, replace=len(df) < 100_000)]
    total = 0.0
    rows = []
    for target in cfg.targets:
        t0 = time.perf_counter()
        res = train_target(df, split, target, "raw", cfg, PRESETS[args.preset], lambda m: None)
        elapsed = time.perf_counter() - t0
        total += elapsed
        print(f"{target}: trained, measured and exported in {elapsed:.1f} s "
              f"(stack r={res.scores['stack'].metrics['pearson_r']:.4f}, best single "
              f"{max(res.scores[k].metrics['pearson_r'] for k in res.models):.4f})", flush=True)
        scaler = res.scaler
        fitted = {k: sel.estimator for k, sel in res.models.items()}
        for kind, graph in res.graphs.items():
            data, max_batch = graph.data, graph.max_batch_rows
            opts = ort.SessionOptions()
            sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])

            def onnx_fn(x, _s=sess, _b=max_batch):
                return run_batched(_s, x, _b)

            if kind == "stack":
                def native_fn(x):
                    z = scaler.transform(x)
                    return res.stack.model.predict(np.column_stack([fitted[k].predict(z) for k in fitted]))
            else:
                def native_fn(x, _f=fitted[kind]):
                    return _f.predict(scaler.transform(x))
            t_onnx = _time_batch(onnx_fn, x_batch)
            t_nat = _time_batch(native_fn, x_batch)
            rows.append((target, kind, len(x_batch) / t_nat, len(x_batch) / t_onnx, _single_ms(native_fn, x_batch),
                         _single_ms(onnx_fn, x_batch), len(data) / 1e6, graph.onnx_max_abs_diff))
    print(f"\nwhole raw path, {len(cfg.targets)} targets, n={len(df):,}, preset {args.preset}: {total:.0f} s "
          f"({total / 60:.1f} min)\n")
    print(f"{'target':7s} {'model':6s} {'native/s':>10s} {'onnx/s':>10s} {'ratio':>6s} {'native ms':>10s} "
          f"{'onnx ms':>8s} {'MB':>6s} {'max diff':>9s}")
    for t, k, nat, onx, snat, sonx, mb, diff in rows:
        print(f"{t:7s} {k:6s} {nat:10,.0f} {onx:10,.0f} {onx / nat:6.2f} {snat:10.2f} {sonx:8.2f} {mb:6.1f} {diff:9.1e}")


if __name__ == "__main__":
    main()
