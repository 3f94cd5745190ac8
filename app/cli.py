"""The ``galaxypaint`` command line.

Serving-side commands import only ``app``; commands that build data or train import ``training``
inside their handlers, so the light (serving) install never needs the training stack.
Errors the user can fix end with one readable line on stderr and exit code 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

from app import __version__
from app.catalogs import CatalogError, detect_format, load_catalog, write_table
from app.schema import FEATURE_NAMES, TARGET_NAMES


class UserError(Exception):
    """An error whose message is the whole story for the user."""


def _progress_bar(desc: str, unit: str) -> Callable[[int, int], None]:
    from tqdm import tqdm

    state: dict[str, object] = {}

    def update(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
        bar.update(done - bar.n)  # type: ignore[attr-defined]
        if done >= total:
            bar.close()  # type: ignore[attr-defined]

    return update


def cmd_demo_data(args: argparse.Namespace) -> int:
    from training.demo_catalog import make_demo_catalog, model_parameters, summarize

    detect_format(args.out)
    if args.n <= 0:
        raise UserError("--n must be a positive number of galaxies")
    if args.box <= 0:
        raise UserError("--box must be a positive box size in Mpc/h")
    t0 = time.perf_counter()
    df = make_demo_catalog(n=args.n, box=args.box, seed=args.seed)
    elapsed = time.perf_counter() - t0
    meta = {"kind": "demo-catalog", "generator": "training.demo_catalog", "galaxypaint": __version__,
            "n": args.n, "box": args.box, "seed": args.seed, "parameters": model_parameters()}
    path = write_table(df, args.out, metadata=meta)
    print(summarize(df))
    print(f"box {args.box:g} Mpc/h, seed {args.seed}; generated in {elapsed:.1f} s; wrote {path}")
    return 0


def cmd_ingest_tng(args: argparse.Namespace) -> int:
    from training.tng import ingest_tng

    detect_format(args.out)
    df = ingest_tng(args.groupcat, snap=args.snap, aux=args.aux, seed=args.seed,
                    apply_cuts=not args.no_cuts, progress=_progress_bar("reading chunks", "file"))
    if args.aux is None:
        print("note: no --aux table given, so C_h and z_h are absent; training needs them", file=sys.stderr)
    meta = {"kind": "tng-ingest", "groupcat": str(args.groupcat), "snap": args.snap, "seed": args.seed,
            "box": df.attrs.get("box"), "redshift": df.attrs.get("redshift"), "galaxypaint": __version__}
    path = write_table(df, args.out, metadata=meta)
    print(f"{len(df):,} centrals (box {df.attrs.get('box'):g} Mpc/h, z={df.attrs.get('redshift'):.3g}); wrote {path}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    require = list(FEATURE_NAMES) + (list(TARGET_NAMES) if args.targets else [])
    df, report = load_catalog(args.catalog, require=require, mapping=args.columns,
                              range_policy="warn" if args.lenient else "error", fmt=args.format)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{args.catalog}: {len(df):,} rows, columns: {', '.join(map(str, df.columns))}")
    cols = [c for c in (*FEATURE_NAMES, *TARGET_NAMES) if c in df.columns]
    print(df[cols].describe().T[["mean", "std", "min", "max"]].to_string(float_format=lambda v: f"{v:.4g}"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galaxypaint", description=(
        "Learn, serve and paint the halo-galaxy connection (de Santi et al. 2022)."))
    parser.add_argument("--version", action="version", version=f"galaxypaint {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo-data", help="generate the built-in TNG300-like catalog",
                       description="Generate the built-in TNG300-like halo/central-galaxy catalog.")
    p.add_argument("--out", required=True, help="output table (.parquet, .csv or .hdf5)")
    p.add_argument("--n", type=int, default=174_527, help="number of central galaxies (default: TNG300's 174,527)")
    p.add_argument("--box", type=float, default=205.0, help="periodic box side [Mpc/h] (default 205)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("ingest-tng", help="build the halo/galaxy table from an IllustrisTNG group catalog",
                       description="Read fof_subhalo_tab_<snap>.N.hdf5 chunks and write the paper's table.")
    p.add_argument("--groupcat", required=True, help="directory with the group catalog chunks (or groups_099)")
    p.add_argument("--snap", type=int, default=99, help="snapshot number (default 99, z=0)")
    p.add_argument("--aux", help="table with SubhaloID, C_h, z_h (concentrations and formation redshifts)")
    p.add_argument("--out", required=True, help="output table (.parquet, .csv or .hdf5)")
    p.add_argument("--seed", type=int, default=42, help="seed for the SFR=0 sSFR draws (default 42)")
    p.add_argument("--no-cuts", action="store_true", help="keep haloes and galaxies below the paper's cuts")
    p.set_defaults(func=cmd_ingest_tng)

    p = sub.add_parser("inspect", help="validate a halo catalog and print its summary")
    p.add_argument("catalog", help="table to check (.csv, .parquet, .hdf5)")
    p.add_argument("--columns", help="column mapping NAME=SOURCE[,NAME=SOURCE...]")
    p.add_argument("--format", help="csv, parquet or hdf5 (default: from the extension)")
    p.add_argument("--targets", action="store_true", help="also require the 4 galaxy properties")
    p.add_argument("--lenient", action="store_true", help="warn about out-of-range values instead of failing")
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CatalogError, UserError) as exc:
        print(f"galaxypaint: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("galaxypaint: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: one line unless debugging
        if os.environ.get("GALAXYPAINT_DEBUG"):
            raise
        print(f"galaxypaint: error: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(set GALAXYPAINT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
