"""Painting several targets: four per-target fused graphs one after another vs ONE galaxy graph.

    python bench/galaxy_graph.py [--n 174527] [--seed 42] [--rows 100000] [--targets smass,sSFR,radius,color]
                                 [--knn 29:2] [--threads 2] [--repeats 3]

Fits, per target on the raw path of the built-in catalog (``make_demo_catalog(n, seed)``), the four
members with the ``fast`` preset (``training.pipeline.fit_models``; ``--knn K:P`` replaces the kNN
search space by one k and Minkowski p, e.g. ``29:1`` for the paper's Manhattan kNN) and the stack,
then times onnxruntime (``--threads`` intra-op threads, the best of ``--repeats``) on ``--rows``
haloes drawn from the test split, in batches of the graphs' ``max_batch_rows``:

* the per-target fused graphs (``training.galaxy_graph.target_graph``, as the pipeline exports
  them) run one after another;
* the combined graph (``training.galaxy_graph.build_galaxy_graph``: one scaler, one kNN search per
  distinct p);
* each member alone (scaler + member) and each shared kNN search alone, giving the ceiling
  ``1 / (sum over targets and non-kNN members of 1/rate + sum over searches of 1/rate)``: what the
  combined graph would reach if sharing the scaler and the search were all it changed.

Prints halos/s of each, the ratio combined / sequential and the ceiling.  Also checks that the
combined graph agrees with the per-target graphs (max |diff|).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np


def _session(blob: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def _rate(sessions, x: np.ndarray, batch: int, repeats: int) -> tuple[float, list]:
    """Halos/s of running every session on ``x`` one after another (best of ``repeats``), and the
    last outputs of each session."""
    from training import onnx_export as ox

    for s in sessions:  # warm-up: first-run allocations
        s.run(None, {ox.INPUT_NAME: x[:256]})
    best, outs = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = [[s.run(None, {ox.INPUT_NAME: x[i:i + batch]}) for i in range(0, len(x), batch)] for s in sessions]
        best = min(best, time.perf_counter() - t0)
    return len(x) / best, outs


def fit_stacks(n: int, seed: int, targets: list[str], knn: str | None, say):
    """The fitted stacks (``training.galaxy_graph.TargetStack``) of the raw path, and the test rows."""
    from app.core.schema import FEATURE_NAMES
    from training.demo_catalog import make_demo_catalog
    from training.estimators import PRESETS, KNNSpace
    from training.galaxy_graph import TargetStack
    from training.pipeline import TrainConfig, fit_models, fit_stack, prepare_data, split_indices, stack_rows

    t0 = time.perf_counter()
    df = make_demo_catalog(n=n, seed=seed)
    split = split_indices(df, seed)
    say(f"catalog: {len(df):,} rows ({len(split['train']):,} training) in {time.perf_counter() - t0:.1f} s")
    preset = PRESETS["fast"]
    if knn:
        k, p = (int(v) for v in knn.split(":"))
        preset = replace(preset, knn=KNNSpace(n_neighbors=(k,), p=(p,)))
    cfg = TrainConfig(targets=tuple(targets), seed=seed, preset="fast")
    stacks = []
    for target in targets:
        t0 = time.perf_counter()
        data = prepare_data(df, split, target, "raw", cfg, say)
        models = fit_models(data, cfg.models, preset, seed, lambda m: None)
        stack = fit_stack(models, *stack_rows(data, "raw", cfg))
        stacks.append(TargetStack.from_parts(target, data.scaler, {k: s.estimator for k, s in models.items()},
                                             stack.model))
        say(f"{target}: fitted {', '.join(s.estimator.describe() for s in models.values())} "
            f"in {time.perf_counter() - t0:.0f} s")
    return stacks, df[list(FEATURE_NAMES)].to_numpy(np.float64)[split["test"]]


def main() -> None:
    from app.core.schema import TARGET_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=174_527, help="rows of the built-in catalog")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rows", type=int, default=100_000, help="haloes painted per timing")
    parser.add_argument("--targets", default=",".join(TARGET_NAMES))
    parser.add_argument("--knn", default=None, metavar="K:P", help="one kNN candidate for every target (default: "
                                                                   "the fast preset's, 29:2)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra_op_num_threads")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import json

    from training import galaxy_graph as gg
    from training import onnx_export as ox
    from training.estimators import KNNRegressor
    from training.pipeline import build_graph

    def say(msg: str) -> None:
        print(msg, flush=True)

    stacks, x_test = fit_stacks(args.n, args.seed, args.targets.split(","), args.knn, say)
    rng = np.random.default_rng(args.seed)
    x = x_test[rng.choice(len(x_test), size=args.rows, replace=args.rows > len(x_test))]

    t0 = time.perf_counter()
    per_target = [gg.target_graph(st, "raw") for st in stacks]
    combined = gg.build_galaxy_graph(stacks, "raw")
    say(f"graphs built in {time.perf_counter() - t0:.0f} s: per-target "
        f"{', '.join(f'{len(b) / 1e6:.0f}' for b in per_target)} MB, combined {len(combined) / 1e6:.0f} MB")
    batch = min(est.max_batch_rows for st in stacks for est in st.members.values())
    threads, reps = args.threads, args.repeats

    seq_rate, seq_out = _rate([_session(b, threads) for b in per_target], x, batch, reps)
    comb_rate, comb_out = _rate([_session(combined, threads)], x, batch, reps)
    diff = max(float(np.abs(np.concatenate([o[0] for o in seq_out[j]]) -
                            np.concatenate([o[j] for o in comb_out[0]])).max()) for j in range(len(stacks)))

    # members alone, and each shared search alone (kNN-only stacks with coefficient 1)
    member_time, lines = 0.0, []
    for st in stacks:
        for kind, est in st.members.items():
            if isinstance(est, KNNRegressor):
                continue
            part = ox.to_onnx(est, "scaled", ox.OUTPUT_NAME, f"{kind}_")
            blob = build_graph(st.target, "raw", kind, st.scaler, [part], {"max_batch_rows": est.max_batch_rows})
            rate = _rate([_session(blob, threads)], x, batch, reps)[0]
            member_time += 1.0 / rate
            lines.append(f"  {st.target:7s} {kind:5s} {rate:>12,.0f} halos/s")
        knn = st.members["knn"]
        blob = build_graph(st.target, "raw", "knn", st.scaler, [ox.to_onnx(knn, "scaled", ox.OUTPUT_NAME, "knn_")], {})
        lines.append(f"  {st.target:7s} kNN   {_rate([_session(blob, threads)], x, batch, reps)[0]:>12,.0f} halos/s "
                     f"(its own search, k={knn.n_neighbors} p={knn.p})")
    knn_only = [gg.TargetStack(st.target, st.scaler, {"knn": st.members["knn"]}, np.ones(1), 0.0) for st in stacks]
    search_blob = gg.build_galaxy_graph(knn_only, "raw")
    searches = json.loads(_session(search_blob, threads).get_modelmeta().custom_metadata_map["knn_searches"])
    search_rate = _rate([_session(search_blob, threads)], x, batch, reps)[0]
    ceiling = 1.0 / (member_time + 1.0 / search_rate)

    print(f"\n{len(stacks)} targets, {args.rows:,} haloes, intra_op_num_threads={threads}, batch {batch:,}, "
          f"best of {reps}")
    print("members alone (scaler + member):")
    print("\n".join(lines))
    shared = "; ".join(f"p={s['p']}: " + ", ".join(f"{t} k={k}" for t, k in s["columns"]) for s in searches)
    print(f"  shared kNN search(es) {search_rate:>8,.0f} halos/s  ({shared})")
    print(f"per-target graphs, one after another: {seq_rate:>10,.0f} halos/s")
    print(f"combined graph:                       {comb_rate:>10,.0f} halos/s   ratio {comb_rate / seq_rate:.2f}x")
    print(f"ceiling (members + shared search):    {ceiling:>10,.0f} halos/s   "
          f"combined = {comb_rate / ceiling:.0%} of it")
    print(f"max |combined - per-target| = {diff:.2e}")


if __name__ == "__main__":
    main()
