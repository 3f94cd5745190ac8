"""Null distribution of the statistics that judge a sampled galaxy catalog: what a perfect sampler scores.

    python bench/sampler_null.py [--n 174527] [--seed 42] [--split-seed 42] [--redraws 100] [--ensembles 5]
                                 [--ensemble-size 20] [--nmesh 256] [--quantile-draws 199] [--out sampler_null.json]

The built-in catalog (``make_demo_catalog(n, seed)``) knows the exact law p(galaxy | halo), so the
galaxies of its test split (``training.pipeline.split_indices(df, split_seed)["test"]``, the split a
training run uses) are redrawn R times from it (``training.demo_catalog.redraw_galaxies``, seeds 1..R).
Each realization is what a perfect sampler would paint; scored against the catalog's true galaxies with
``app.science.populations`` it gives one draw of each statistic's null distribution:

* ``ks_D.<property>``: K-S distance of one realization vs the truth;
* ``corr_max_abs_delta.Q<k>`` (and ``.all``): max |sampled - true| Pearson correlation over the 6
  property pairs within M_h quartile k (lowest mass = Q1);
* ``coverage68.<property>.<all|Q<k>>``, ``coverage95...``: fraction of the realization's galaxies inside
  the exact law's central 68 / 95 % intervals.  The exact law's quantiles have no closed form (a mixture
  of quenched and star-forming galaxies, truncated at the stellar-mass cut), so Q = 199 further draws
  are made per test halo (one generator seeded 0, in chunks of haloes) and the interval is that between
  the order statistics j and Q + 1 - j with j = (1 - c)/2 (Q + 1) (j = 32 for 68 %, 5 for 95 %): a
  new draw of the same law falls in it with probability exactly (Q + 1 - 2j)/(Q + 1) = c (its rank among
  Q + 1 exchangeable draws is uniform), so each halo's indicator is Bernoulli(c), as with the exact
  quantiles.  The intervals are drawn once and shared by every realization, which shifts all of them by a
  common amount of standard deviation ~7 % of the binomial one: negligible;
* ``bin_ratio.<property>.bin<b>``: galaxies of the realization / of the truth in the paper's bin b;
* ``pk_consistency.<property>.bin<b>`` and ``pk_rel_bias...``: the clustering of each bin's population,
  the truth against an ensemble of S = 20 realizations (TSC + interlacing, shot noise subtracted,
  the default k bins of ``--nmesh``, k < 0.3 h/Mpc): mean_k (P_true - <P_s>)^2 / (var_s (1 + 1/S)) and
  mean_k |<P_s>/P_true - 1|.  One ensemble is one null draw, so ``--ensembles`` disjoint ensembles
  need R >= 20 x ensembles realizations (the first 20 x ensembles are used).

Statistics that can fail on both sides (coverage, bin ratios, the consistency statistic: an ensemble too
wide scores low) get the 0.1th percentile as well as the median and 99.9th.  Percentiles are numpy's
linear interpolation over the null draws: with R = 100 the 0.1th/99.9th are (nearly) the extreme values,
with 5 ensembles the extreme of 5; the table says how many draws back each row.  The JSON (``--out``)
holds every null draw, the percentiles, the true P(k) and counts per bin and the settings (a sampler is
judged against this null only with the same catalog, split, k bins and S).

The cost is that of the spectra: 8 per realization used in an ensemble (~0.5 s each at 256^3 for the
~70k test haloes); run times: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

TAILS = {"ks_D": "high", "corr_max_abs_delta": "high", "coverage68": "both", "coverage95": "both",
         "bin_ratio": "both", "pk_consistency": "both", "pk_rel_bias": "high"}
LEVELS = (0.68, 0.95)


def exact_intervals(halos, quantile_draws: int, seed: int = 0, chunk_draws: int = 1_000_000):
    """Central intervals of the exact law per halo and property from ``quantile_draws`` redraws each:
    lower, upper [N, 4, len(LEVELS)] and the order-statistic ranks (1-based) used for each level."""
    from training.demo_catalog import redraw_galaxies

    q = quantile_draws
    ranks = [int(round(0.5 * (1.0 - c) * (q + 1))) for c in LEVELS]
    if min(ranks) < 1:
        raise SystemExit(f"--quantile-draws {q} is too few for a {max(LEVELS):.0%} interval")
    n = len(halos)
    lower, upper = np.empty((n, 4, len(LEVELS))), np.empty((n, 4, len(LEVELS)))
    rng = np.random.default_rng(seed)
    halos = halos[["M_h", "C_h", "S_h", "z_h"]]  # all the law reads
    per = max(1, chunk_draws // q)
    for s in range(0, n, per):
        chunk = halos.iloc[s:s + per]
        draws = redraw_galaxies(chunk.iloc[np.repeat(np.arange(len(chunk)), q)], rng).to_numpy()
        draws = np.sort(draws.reshape(len(chunk), q, 4), axis=1)
        for i, j in enumerate(ranks):
            lower[s:s + per, :, i] = draws[:, j - 1]
            upper[s:s + per, :, i] = draws[:, q - j]
    return lower, upper, ranks


def summarize(values: np.ndarray, tail: str) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"n": int(v.size), "tail": tail, "median": float(np.median(v)), "p0.1": float(np.percentile(v, 0.1)),
            "p99.9": float(np.percentile(v, 99.9)), "values": [float(x) for x in v]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=174_527, help="catalog size (the built-in catalog: 174,527)")
    parser.add_argument("--seed", type=int, default=42, help="catalog seed")
    parser.add_argument("--split-seed", type=int, default=42, help="seed of the 48/12/40 split (the training run's)")
    parser.add_argument("--redraws", type=int, default=100, help="R realizations, seeds 1..R")
    parser.add_argument("--ensembles", type=int, default=5, help="disjoint ensembles for the clustering null")
    parser.add_argument("--ensemble-size", type=int, default=20, help="S realizations per ensemble")
    parser.add_argument("--nmesh", type=int, default=256, help="P(k) mesh (galaxypaint pk's default: 256)")
    parser.add_argument("--kmax", type=float, default=0.3, help="clustering statistics over k < kmax [h/Mpc]")
    parser.add_argument("--quantile-draws", type=int, default=199, help="draws per halo for the exact intervals")
    parser.add_argument("--out", default="sampler_null.json")
    args = parser.parse_args()
    if args.ensembles * args.ensemble_size > args.redraws:
        parser.error(f"{args.ensembles} ensembles of {args.ensemble_size} need --redraws >= "
                     f"{args.ensembles * args.ensemble_size}")
    if args.ensemble_size < 4:
        parser.error("--ensemble-size must be >= 4 (the consistency statistic's mean is (S-1)/(S-3))")

    from app.core.schema import PAPER_BIN_EDGES, TARGET_NAMES
    from app.science import populations as pop
    from app.science.power_spectrum import default_k_edges
    from training.demo_catalog import TNG300_BOX, make_demo_catalog, redraw_galaxies
    from training.pipeline import split_indices

    t_start = time.perf_counter()
    df = make_demo_catalog(n=args.n, seed=args.seed)
    test = split_indices(df, args.split_seed)["test"]
    halos = df.iloc[test].reset_index(drop=True)
    y_true = halos[list(TARGET_NAMES)].to_numpy()
    m_h = halos["M_h"].to_numpy()
    pos = halos[["x", "y", "z"]].to_numpy()
    box = TNG300_BOX
    k_edges = default_k_edges(box, args.nmesh)
    print(f"catalog n={len(df):,} seed {args.seed}; test split (seed {args.split_seed}): {len(halos):,} haloes; "
          f"{time.perf_counter() - t_start:.1f} s", flush=True)

    t0 = time.perf_counter()
    lower, upper, ranks = exact_intervals(halos, args.quantile_draws)
    q1 = args.quantile_draws + 1
    expected = {c: (q1 - 2 * j) / q1 for c, j in zip(LEVELS, ranks)}
    print(f"exact-law intervals: {args.quantile_draws} draws per halo (seed 0), order statistics "
          + ", ".join(f"{j}/{q1 - j} for {c:.0%} (expected coverage {expected[c]:.4f})" for c, j in zip(LEVELS, ranks))
          + f"; {time.perf_counter() - t0:.1f} s", flush=True)

    t0 = time.perf_counter()
    n_ens = args.ensembles * args.ensemble_size
    true_spec = pop.bin_spectra(pos, y_true, box, args.nmesh, k_edges=k_edges)
    counts_true = pop.bin_counts(y_true)
    draws: dict[str, list] = {}

    def add(name: str, value) -> None:
        draws.setdefault(name, []).append(float(value))

    spectra = []
    for r in range(1, args.redraws + 1):
        y = redraw_galaxies(halos, r).to_numpy()
        for t, d in pop.ks_per_property(y, y_true).items():
            add(f"ks_D.{t}", d)
        corr = pop.correlation_difference(y, y_true, m_h)
        for k in range(pop.N_QUARTILES):
            add(f"corr_max_abs_delta.Q{k + 1}", corr["max_abs"][k])
        add("corr_max_abs_delta.all", corr["max_abs_overall"])
        cov = pop.interval_coverage(lower, upper, y, m_h)
        for i, c in enumerate(LEVELS):
            for d, t in enumerate(TARGET_NAMES):
                add(f"coverage{round(100 * c)}.{t}.all", cov["overall"][d, i])
                for k in range(pop.N_QUARTILES):
                    add(f"coverage{round(100 * c)}.{t}.Q{k + 1}", cov["by_quartile"][k, d, i])
        ratio = pop.bin_counts(y) / counts_true
        for d, t in enumerate(TARGET_NAMES):
            for b in range(2):
                add(f"bin_ratio.{t}.bin{b + 1}", ratio[d, b])
        if r <= n_ens:
            spectra.append(pop.bin_spectra(pos, y, box, args.nmesh, k_edges=k_edges))
        if r % 10 == 0 or r == args.redraws:
            print(f"  {r}/{args.redraws} realizations, {time.perf_counter() - t0:.0f} s", flush=True)
    for e in range(args.ensembles):
        members = spectra[e * args.ensemble_size:(e + 1) * args.ensemble_size]
        for res in pop.ensemble_bins(true_spec, members, args.kmax):
            add(f"pk_consistency.{res.target}.bin{res.bin + 1}", res.consistency)
            add(f"pk_rel_bias.{res.target}.bin{res.bin + 1}", res.rel_bias)
    t_real = time.perf_counter() - t0

    order = list(TAILS)  # group the rows by statistic (the loop above interleaves them)
    stats = {name: summarize(v, TAILS[name.split(".")[0]])
             for name, v in sorted(draws.items(), key=lambda item: order.index(item[0].split(".")[0]))}
    k_used = true_spec.k[true_spec.k < args.kmax]
    s = args.ensemble_size
    print(f"\n{args.redraws} realizations (seeds 1..{args.redraws}) of the {len(halos):,} test galaxies vs the truth; "
          f"clustering: {args.ensembles} disjoint ensembles of S={s} (realizations 1..{n_ens}), Nmesh {args.nmesh}, "
          f"{len(k_used)} k bins below {args.kmax:g} h/Mpc (k = {', '.join(f'{k:.3f}' for k in k_used)}); "
          f"consistency expectation for Gaussian P: (S-1)/(S-3) = {(s - 1) / (s - 3):.3f}")
    print("percentiles: numpy linear interpolation over the n null draws of each row (p0.1 only where a "
          "statistic can fail low)")
    print(f"{'statistic':34s} {'n':>4s} {'p0.1':>9s} {'median':>9s} {'p99.9':>9s}")
    for name, st in stats.items():
        low = f"{st['p0.1']:9.4f}" if st["tail"] == "both" else f"{'':9s}"
        print(f"{name:34s} {st['n']:4d} {low} {st['median']:9.4f} {st['p99.9']:9.4f}")

    elapsed = time.perf_counter() - t_start
    out = {
        "meta": {"catalog_n": len(df), "catalog_seed": args.seed, "split_seed": args.split_seed,
                 "n_test": len(halos), "box": box, "redraws": args.redraws, "redraw_seeds": [1, args.redraws],
                 "ensembles": args.ensembles, "ensemble_size": s, "nmesh": args.nmesh, "kmax": args.kmax,
                 "k_edges": k_edges.tolist(), "k": true_spec.k.tolist(), "scheme": "tsc", "interlacing": True,
                 "bin_edges": {t: list(e) for t, e in PAPER_BIN_EDGES.items()},
                 "quantile_draws": args.quantile_draws, "quantile_seed": 0,
                 "interval_order_statistics": {f"{c:.2f}": [j, q1 - j] for c, j in zip(LEVELS, ranks)},
                 "interval_expected_coverage": {f"{c:.2f}": expected[c] for c in LEVELS},
                 "elapsed_s": elapsed, "python": platform.python_version()},
        "truth": {"bin_counts": {f"{t}.bin{b + 1}": int(counts_true[d, b]) for d, t in enumerate(TARGET_NAMES)
                                 for b in range(2)},
                  "power": {f"{t}.bin{b + 1}": [None if not np.isfinite(v) else float(v) for v in true_spec.power[d, b]]
                            for d, t in enumerate(TARGET_NAMES) for b in range(2)}},
        "statistics": stats,
    }
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"\nwrote {args.out}; took {elapsed:.1f} s ({t_real:.1f} s for the realizations and their spectra)")


if __name__ == "__main__":
    main()
