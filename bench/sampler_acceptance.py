"""Judge a trained joint sampler on the built-in catalog's test split against what a perfect sampler scores.

    python bench/sampler_acceptance.py --registry R --null sampler_null.json [--seeds 20] [--seed0 1]
                                       [--training-noise N [--augment M]] [--out sampler_acceptance.json]

The registry holds a run trained on the built-in catalog (``galaxypaint demo-data`` with the null's
``--n``/``--seed``; ``galaxypaint train`` with the null's split seed); the null JSON is the output of
``bench/sampler_null.py`` (the same catalog, split, k bins and ensemble size S).  Everything is
measured on the test-split haloes only, drawn with the registered ``raw-sampler`` (the production
alias), keyed by each halo's row number in the catalog (what ``galaxypaint paint`` uses without an ID
column):

* one sampled catalog (seed ``--seed0``), fixed thresholds: K-S D <= 0.02 per property; |delta
  correlation| <= 0.05 for each of the 6 pairs in each M_h quartile; 68 % / 95 % interval coverage
  within 2 / 1 percentage points overall and in each M_h quartile; CRPS below the homoscedastic
  baseline (the production stacks' test predictions with their validation residual scatter) for
  every property.  The null's percentiles are printed beside each for reference;
* per property bin, the galaxy count ratio sampled / true of the one sampled catalog (seed ``seed0``)
  against the null of one realization's count ratio (R null draws, p0.1..p99.9);
* an ensemble of S sampled catalogs (seeds ``seed0 .. seed0 + S - 1``): per property bin, the
  clustering statistics of ``app.science.populations.ensemble_bins`` (consistency and |<P_s>/P_true
  - 1| over k < kmax), inside the null's p0.1..p99.9 (rel_bias: below p99.9).  Clustering: the null comes as one value per null
  ensemble of S, too few (E = R / S) to read a 99.9th percentile off; both statistics are positive
  and skewed, so their null percentiles are those of a log-normal fitted to the E null values
  (mean and standard deviation of their logarithms; the empirical range is printed beside).
* stricter, reported but not part of the verdict: the *mean* count of S realizations against the null
  of such means (centre: the mean of the R single-realization ratios, all against the same truth;
  spread: their standard deviation / sqrt(S); p0.1/p99.9 = centre -/+ 3.09 spreads).  At S = 20 it
  detects a bias of the sampler's expected tail fraction of ~0.3-0.7 % (relative), far below a
  single catalog's realization noise.

The mean stacks' catalog is scored on the same count ratios and P(k) bias for contrast (what painting
with means gives).  Prints one table with PASS/FAIL per row; ``--out`` keeps every number.

``--training-noise N``: the null above is the exact law's *realization* noise only; a sampler fitted
on the training split also carries the noise of the training galaxies it happened to see.  This refits
the registered sampler's architecture (its K, width, depth and training settings; no search) N times
on training and validation galaxies redrawn from the generator's exact law at the same haloes
(``training.demo_catalog.redraw_galaxies``, seeds 1001..1000+N), scores each refit with the same judge
and prints, per row, the refits' range and how many pass.  A row the registered sampler fails while
most refits pass (or the reverse) is decided by which training galaxies were drawn, not by the model.
The refits' single catalogs are drawn with the same seeds as the registered sampler's, so their
count rows share that realization's noise; for the count rows any of them fails, each fit's mean
count over the S realizations (its expected count, to ~0.3 %) is printed beside the null's centre.
``--augment M`` trains each refit on M independent redraws of the training galaxies stacked (M times
the galaxies at the same haloes): how the statistics move with the amount of training data.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field

import numpy as np

Z999 = 3.090232  # standard normal 99.9th percentile


def lognormal_band(values) -> tuple[float, float]:
    """p0.1 and p99.9 of a log-normal fitted to positive null values (mean and sd of their logs)."""
    if len(values) < 3:
        raise SystemExit(f"the null has {len(values)} ensembles: at least 3 are needed to fit their spread "
                         "(sampler_null.py --ensembles)")
    logs = np.log(np.asarray(values, dtype=np.float64))
    mu, sd = logs.mean(), logs.std(ddof=1)
    return float(np.exp(mu - Z999 * sd)), float(np.exp(mu + Z999 * sd))


@dataclass
class Verdict:
    rows: list = field(default_factory=list)     # the acceptance rows
    strict: list = field(default_factory=list)   # reported, not in the verdict
    evaluation: dict = field(default_factory=dict)
    ensemble: list = field(default_factory=list)

    def check(self, name: str, value: float, lo: float | None, hi: float | None, strict: bool = False) -> None:
        ok = (lo is None or value >= lo) and (hi is None or value <= hi)
        (self.strict if strict else self.rows).append((name, float(value), lo, hi, bool(ok)))

    @property
    def failed(self) -> list[str]:
        return [r[0] for r in self.rows if not r[4]]


class Judge:
    """Every acceptance row for a sampler's distribution on the test haloes (the null's catalog and split)."""

    def __init__(self, null: dict, df, split: dict, base_test: np.ndarray, base_val: np.ndarray, seed0: int,
                 seeds: int):
        from app.core.schema import FEATURE_NAMES, TARGET_NAMES
        from app.science import populations as pop
        from training.demo_catalog import TNG300_BOX

        self.meta, self.nstats = null["meta"], null["statistics"]
        self.test, val = split["test"], split["val"]
        x = df[list(FEATURE_NAMES)].to_numpy()
        y = df[list(TARGET_NAMES)].to_numpy()
        self.x_test, self.y_true, self.m_h = x[self.test], y[self.test], x[self.test, 0]
        self.pos = df[["x", "y", "z"]].to_numpy()[self.test]
        self.base_test = base_test
        self.scatter = pop.residual_scatter(base_val, y[val])
        self.seeds = list(range(seed0, seed0 + seeds))
        self.box = TNG300_BOX
        self.k_edges = np.asarray(self.meta["k_edges"])
        self.true_spec = pop.bin_spectra(self.pos, self.y_true, self.box, self.meta["nmesh"], k_edges=self.k_edges)
        self.counts_true = pop.bin_counts(self.y_true)

    def score(self, dist, say=print, lower: float | None = None) -> Verdict:
        from app.core import sampling
        from app.core.schema import TARGET_NAMES
        from app.science import populations as pop

        v = Verdict()
        t0 = time.perf_counter()
        ev = pop.evaluate_sampler(*dist, self.y_true, self.m_h, self.test, self.seeds[0], self.base_test, self.scatter,
                                  lower=lower)
        v.evaluation = ev
        for t in TARGET_NAMES:
            v.check(f"ks_D.{t}", ev["ks_d"][t], None, 0.02)
        for q, value in enumerate(ev["correlation"]["max_abs_delta_by_quartile"]):
            v.check(f"corr_max_abs_delta.Q{q + 1}", value, None, 0.05)
        for level, tol in (("68", 0.02), ("95", 0.01)):
            c = ev[f"coverage{level}"]
            nominal = c["nominal"]
            for t in TARGET_NAMES:
                v.check(f"coverage{level}.{t}.all", c["overall"][t], nominal - tol, nominal + tol)
                for q, value in enumerate(c["by_quartile"][t]):
                    v.check(f"coverage{level}.{t}.Q{q + 1}", value, nominal - tol, nominal + tol)
        for t in TARGET_NAMES:
            v.check(f"crps_ratio.{t}", ev["crps"][t]["ratio"], None, 1.0 - 1e-12)
        say(f"single-catalog statistics in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        spectra, counts = [], []
        for i, seed in enumerate(self.seeds):
            ys = sampling.sample_mixture(*dist, self.test, seed, lower=lower)
            spectra.append(pop.bin_spectra(self.pos, ys, self.box, self.meta["nmesh"], k_edges=self.k_edges))
            counts.append(pop.bin_counts(ys))
            say(f"  realization {i + 1}/{len(self.seeds)}: {time.perf_counter() - t0:.0f} s")
        ens = pop.ensemble_bins(self.true_spec, spectra, self.meta["kmax"])
        v.ensemble = ens
        ratio_mean = np.mean(counts, axis=0) / self.counts_true
        for d, t in enumerate(TARGET_NAMES):
            for b in range(2):
                key = f"{t}.bin{b + 1}"
                single = self.nstats[f"bin_ratio.{key}"]
                v.check(f"bin_ratio.{key}", counts[0][d, b] / self.counts_true[d, b], single["p0.1"], single["p99.9"])
                values = np.asarray(single["values"])
                centre, spread = values.mean(), values.std(ddof=1) / np.sqrt(len(self.seeds))
                v.check(f"bin_ratio_mean_of_S.{key}", ratio_mean[d, b], centre - Z999 * spread,
                        centre + Z999 * spread, strict=True)
                e = ens[2 * d + b]
                lo, hi = lognormal_band(self.nstats[f"pk_consistency.{key}"]["values"])
                v.check(f"pk_consistency.{key}", e.consistency, lo, hi)
                v.check(f"pk_rel_bias.{key}", e.rel_bias, None,
                        lognormal_band(self.nstats[f"pk_rel_bias.{key}"]["values"])[1])
        say(f"ensemble of S={len(self.seeds)} in {time.perf_counter() - t0:.0f} s")
        return v

    def contrast(self) -> dict:
        """The mean stacks' catalog on the count ratios and the P(k) bias (what painting with means gives)."""
        from app.core.schema import TARGET_NAMES
        from app.science import populations as pop

        mean_spec = pop.bin_spectra(self.pos, self.base_test, self.box, self.meta["nmesh"], k_edges=self.k_edges)
        counts = pop.bin_counts(self.base_test)
        use = self.true_spec.k < self.meta["kmax"]
        out = {}
        for d, t in enumerate(TARGET_NAMES):
            for b in range(2):
                with np.errstate(divide="ignore", invalid="ignore"):
                    out[f"{t}.bin{b + 1}"] = {
                        "mean_count_ratio": float(counts[d, b] / self.counts_true[d, b]),
                        "mean_pk_rel_bias": float(np.mean(np.abs(mean_spec.power[d, b] / self.true_spec.power[d, b]
                                                                 - 1.0)[use]))}
        return out


def refit_distributions(df, split: dict, hyper: dict, n: int, augment: int, seed: int, say=print):
    """(redraw seed, distribution on the test haloes) for ``n`` refits of the architecture ``hyper`` on
    training/validation galaxies redrawn from the exact law (``augment`` redraws of the training rows)."""
    from app.core.schema import FEATURE_NAMES, TARGET_NAMES
    from training.demo_catalog import redraw_galaxies
    from training.sampler import MixtureDensityNetwork

    x = df[list(FEATURE_NAMES)].to_numpy()
    train, val, test = split["train"], split["val"], split["test"]

    def galaxies(rows, s):
        return redraw_galaxies(df.iloc[rows], s)[list(TARGET_NAMES)].to_numpy()

    for r in range(1, n + 1):
        t0 = time.perf_counter()
        base = 1000 + r
        y_train = np.concatenate([galaxies(train, base + 10_000 * a) for a in range(augment)])
        mdn = MixtureDensityNetwork(search=hyper.get("search", "fast"), n_components=int(hyper["n_components"]),
                                    width=int(hyper["width"]), depth=int(hyper["depth"]),
                                    activation=hyper.get("activation", "relu"),
                                    learning_rate=hyper.get("learning_rate"), batch_size=hyper.get("batch_size"),
                                    diag_floor=float(hyper.get("diag_floor", 1e-3)),
                                    log_floors=hyper.get("log_floors"), lower_cut=hyper.get("lower_cut"),
                                    random_state=seed)
        mdn.fit(np.tile(x[train], (augment, 1)), y_train, x[val], galaxies(val, base + 500))
        say(f"refit {r}/{n} (redraw seed {base}, {len(y_train):,} training galaxies): {mdn.epochs_} epochs, "
            f"val NLL {mdn.val_nll_:.4f}, {time.perf_counter() - t0:.0f} s")
        yield base, mdn.distribution(x[test])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True, help="registry with a run trained on the built-in catalog")
    parser.add_argument("--null", required=True, help="bench/sampler_null.py's JSON for the same catalog and split")
    parser.add_argument("--seeds", type=int, default=20, help="S sampled catalogs in the ensemble (default 20)")
    parser.add_argument("--seed0", type=int, default=1, help="first seed (default 1)")
    parser.add_argument("--model", help="sampler reference (default raw-sampler at production)")
    parser.add_argument("--training-noise", type=int, default=0, metavar="N",
                        help="also refit the sampler's architecture N times on redrawn training galaxies")
    parser.add_argument("--augment", type=int, default=1, metavar="M",
                        help="with --training-noise: M redraws of the training galaxies per refit (default 1)")
    parser.add_argument("--out", default="sampler_acceptance.json")
    args = parser.parse_args()
    if args.training_noise < 0 or args.augment < 1:
        parser.error("--training-noise must be >= 0 and --augment >= 1")

    from app.core.model import GalaxyModel, Mode
    from app.core.registry import Registry
    from app.core.schema import FEATURE_NAMES, TARGET_NAMES
    from training.demo_catalog import make_demo_catalog
    from training.pipeline import split_indices

    null = json.load(open(args.null))
    meta, nstats = null["meta"], null["statistics"]
    if args.seeds != meta["ensemble_size"]:
        raise SystemExit(f"the null's ensembles have S={meta['ensemble_size']}: use --seeds {meta['ensemble_size']}")
    t_start = time.perf_counter()
    df = make_demo_catalog(n=meta["catalog_n"], seed=meta["catalog_seed"])
    split = split_indices(df, meta["split_seed"])
    x = df[list(FEATURE_NAMES)].to_numpy()
    registry = Registry(args.registry, create=False)
    sampler = GalaxyModel.from_registry(registry, model=args.model, mode=Mode("sample"))
    stacks = GalaxyModel.from_registry(registry)
    pinned = sampler.pinned()[0]
    print(f"catalog n={len(df):,}, {len(split['test']):,} test haloes; sampler {pinned['name']}/{pinned['version']}; "
          "stacks " + ", ".join(f"{p['name']}/{p['version']}" for p in stacks.pinned()), flush=True)

    def base(rows):
        pred = stacks.predict(x[rows])
        return np.column_stack([pred[t] for t in TARGET_NAMES])

    judge = Judge(null, df, split, base(split["test"]), base(split["val"]), args.seed0, args.seeds)
    say = lambda m: print(m, flush=True)  # noqa: E731
    loaded = next(iter(sampler.models.values()))
    verdict = judge.score(loaded.distribution(judge.x_test), say, lower=loaded.lower_cut)
    contrast = judge.contrast()

    fmt = lambda v: f"{v:9.4f}" if v is not None else f"{'':9s}"  # noqa: E731

    def table(entries) -> None:
        print(f"{'statistic':36s} {'value':>9s} {'lo':>9s} {'hi':>9s}  {'null median':>11s} {'null range':>19s}  verdict")
        for name, value, lo, hi, ok in entries:
            ref = nstats.get(name.replace("_mean_of_S", ""), {})
            med = f"{ref['median']:11.4f}" if ref else f"{'':11s}"
            rng = f"{min(ref['values']):9.4f} {max(ref['values']):9.4f}" if ref else f"{'':19s}"
            print(f"{name:36s} {value:9.4f} {fmt(lo)} {fmt(hi)}  {med} {rng}  {'PASS' if ok else 'FAIL'}")

    print()
    table(verdict.rows)
    print("\nmean stacks, for contrast (count ratio predicted / true; mean |P_mean / P_true - 1| over k < kmax):")
    for key, c in contrast.items():
        print(f"  {key:14s} count ratio {c['mean_count_ratio']:.3f}   P(k) bias {c['mean_pk_rel_bias']:.3f}")
    failed = verdict.failed
    print(f"\n{len(verdict.rows) - len(failed)}/{len(verdict.rows)} pass" + (f"; FAIL: {', '.join(failed)}" if failed else ""))
    print(f"\nstricter, not in the verdict: the mean count of S={args.seeds} against the null of such means")
    table(verdict.strict)

    refits = []
    if args.training_noise:
        record = registry.get(pinned["name"], pinned["version"])
        print(f"\ntraining noise: {args.training_noise} refits of K={record.hyperparameters['n_components']}, "
              f"width {record.hyperparameters['width']}x{record.hyperparameters['depth']} on redrawn galaxies "
              f"(x{args.augment})", flush=True)
        for redraw_seed, dist in refit_distributions(df, split, record.hyperparameters, args.training_noise,
                                                     args.augment, record.seed if record.seed is not None else 42, say):
            v = judge.score(dist, lambda _m: None, lower=record.hyperparameters.get("lower_cut"))
            refits.append({"redraw_seed": redraw_seed, "failed": v.failed,
                           "rows": {n: val for n, val, *_ in v.rows},
                           "stricter": {n: val for n, val, *_ in v.strict}})
            print(f"  {len(v.rows) - len(v.failed)}/{len(v.rows)} pass" +
                  (f"; FAIL: {', '.join(v.failed)}" if v.failed else ""), flush=True)
        print(f"\n{'statistic':36s} {'registered':>10s} {'refits min':>10s} {'median':>9s} {'max':>9s}  refits passing")
        for name, value, lo, hi, ok in verdict.rows:
            vals = np.array([r["rows"][name] for r in refits])
            passing = sum((lo is None or x >= lo) and (hi is None or x <= hi) for x in vals)
            if not ok or passing < len(refits):
                print(f"{name:36s} {value:10.4f} {vals.min():10.4f} {np.median(vals):9.4f} {vals.max():9.4f}  "
                      f"{passing}/{len(refits)}{'' if ok else '   (registered: FAIL)'}")
        print("(rows every refit and the registered sampler pass are not listed)")
        # every refit's single catalog is drawn with the same seeds, so their counts share one realization's
        # noise; the mean of S counts is each fit's expected count, which separates fit from realization
        expected = [(name, value, lo, hi) for name, value, lo, hi, _ in verdict.strict
                    if name.replace("_mean_of_S", "") in verdict.failed
                    or any(name.replace("_mean_of_S", "") in r["failed"] for r in refits)]
        if expected:
            print(f"\nthe failing count rows' mean of S={args.seeds} (each fit's expected count; null centre, band):")
        for name, value, lo, hi in expected:
            vals = [r["stricter"][name] for r in refits]
            print(f"{name:36s} registered {value:.4f}; refits " + " ".join(f"{x:.4f}" for x in vals)
                  + f"; centre {(lo + hi) / 2:.4f}, band {lo:.4f}..{hi:.4f}")

    out = {"meta": {"registry": args.registry, "null": args.null, "seeds": [args.seed0, args.seed0 + args.seeds - 1],
                    "sampler": pinned, "elapsed_s": time.perf_counter() - t_start,
                    "training_noise": args.training_noise, "augment": args.augment},
           "rows": [{"statistic": n, "value": v, "lo": lo, "hi": hi, "pass": ok} for n, v, lo, hi, ok in verdict.rows],
           "stricter": [{"statistic": n, "value": v, "lo": lo, "hi": hi, "pass": ok}
                        for n, v, lo, hi, ok in verdict.strict],
           "evaluation": verdict.evaluation, "ensemble": [e.as_dict() for e in verdict.ensemble],
           "contrast_mean_stacks": contrast, "refits": refits}
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
