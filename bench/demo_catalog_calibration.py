"""Calibration of the built-in TNG300-like catalog against the paper, at full size.

Prints: generation time; feature moments vs TNG300's published ones; LightGBM test-set Pearson r
per target (48/12/40 split, early stopping on the validation set) vs the paper; permutation
importance order; and, for the paper's two bins per property, the large-scale amplitude ratio
sqrt(P2/P1) at k < 0.1 h/Mpc.

    python bench/demo_catalog_calibration.py [--n 174527] [--seed 42] [--nmesh 128]

Needs the ``train`` extra (LightGBM, scikit-learn).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=174_527)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--nmesh", type=int, default=128)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*eval_set.*")  # LightGBM >= 4.6 renames the argument

    import lightgbm as lgb
    from sklearn.inspection import permutation_importance

    from app.science.power_spectrum import power_spectrum
    from app.core.schema import (FEATURE_NAMES, PAPER_BIN_EDGES, PAPER_PEARSON_R, TARGET_NAMES,
                            TNG300_FEATURE_MOMENTS)
    from training.demo_catalog import TNG300_BOX, make_demo_catalog

    t0 = time.perf_counter()
    df = make_demo_catalog(n=args.n, seed=args.seed, with_latent=True)
    print(f"generated {len(df):,} galaxies in {time.perf_counter() - t0:.1f} s (goal < 30 s)\n")

    print(f"{'feature':9s} {'mean':>8s} {'TNG300':>8s} {'ratio':>6s} {'std':>8s} {'TNG300':>8s} {'ratio':>6s}")
    for name in FEATURE_NAMES:
        m, s = TNG300_FEATURE_MOMENTS[name]
        mean, std = df[name].mean(), df[name].std()
        print(f"{name:9s} {mean:8.4f} {m:8.4f} {mean / m:6.3f} {std:8.4f} {s:8.4f} {std / s:6.3f}")
    print(f"SFR=0 fraction {df['_zero_sfr'].mean():.3f} (TNG300 ~0.14); quenched {df['_quenched'].mean():.3f}\n")

    rng = np.random.default_rng(args.seed)
    idx = rng.permutation(len(df))
    n_tr, n_va = int(0.48 * len(df)), int(0.12 * len(df))
    tr, va, te = idx[:n_tr], idx[n_tr:n_tr + n_va], idx[n_tr + n_va:]
    x = df[list(FEATURE_NAMES)].to_numpy()
    print(f"{'target':7s} {'r':>6s} {'paper':>6s} {'diff':>6s}  importance order (MSE permutation, normalized to M_h)")
    for target in TARGET_NAMES:
        y = df[target].to_numpy()
        model = lgb.LGBMRegressor(n_estimators=2000, learning_rate=0.03, num_leaves=31, min_child_samples=40,
                                  verbose=-1, random_state=args.seed, n_jobs=2)
        model.fit(x[tr], y[tr], eval_set=[(x[va], y[va])], callbacks=[lgb.early_stopping(100, verbose=False)])
        r = float(np.corrcoef(model.predict(x[te]), y[te])[0, 1])
        sub = te[:30_000]
        imp = permutation_importance(model, x[sub], y[sub], n_repeats=5, random_state=0,
                                     scoring="neg_mean_squared_error").importances_mean
        imp = imp / imp[0]
        order = " > ".join(f"{FEATURE_NAMES[i]}({imp[i]:.3f})" for i in np.argsort(-imp))
        paper = PAPER_PEARSON_R[target]
        print(f"{target:7s} {r:6.3f} {paper:6.2f} {r - paper:+6.3f}  {order}")

    print(f"\nlarge-scale clustering of the paper's bins (TSC + interlacing, Nmesh {args.nmesh}, k < 0.1 h/Mpc)")
    pos = df[["x", "y", "z"]].to_numpy()
    print(f"{'property':8s} {'bin 1':>16s} {'N1':>7s} {'bin 2':>16s} {'N2':>7s} {'sqrt(P2/P1)':>12s}")
    for target, (lo, mid, hi) in PAPER_BIN_EDGES.items():
        amps, counts = [], []
        for a, b in ((lo, mid), (mid, hi)):
            sel = ((df[target] >= a) & (df[target] < b)).to_numpy()
            ps = power_spectrum(pos[sel], TNG300_BOX, nmesh=args.nmesh, scheme="tsc", interlacing=True,
                                subtract_shot_noise=True)
            m = ps.k < 0.1
            amps.append(np.sum(ps.power[m] * ps.modes[m]) / np.sum(ps.modes[m]))
            counts.append(int(sel.sum()))
        print(f"{target:8s} {f'[{lo:g},{mid:g})':>16s} {counts[0]:7d} {f'[{mid:g},{hi:g})':>16s} {counts[1]:7d} "
              f"{np.sqrt(amps[1] / amps[0]):12.3f}")


if __name__ == "__main__":
    main()
