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
from app.core.catalogs import CatalogError, detect_format, load_catalog, write_table
from app.core.registry import Registry, RegistryError, dumps
from app.core.schema import FEATURE_NAMES, POSITION_NAMES, TARGET_NAMES, TNG300_FEATURE_MOMENTS
from app.core.settings import get_settings


class UserError(Exception):
    """An error whose message is the whole story for the user."""


_OPEN_BARS: list = []


def _close_bars() -> None:
    """Close progress bars left open by an error, so that the error line starts a line of its own."""
    while _OPEN_BARS:
        _OPEN_BARS.pop().close()


def _progress_bar(desc: str, unit: str) -> Callable[[int, int], None]:
    from tqdm import tqdm

    state: dict[str, object] = {}

    def update(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
            _OPEN_BARS.append(bar)
        bar.update(done - bar.n)  # type: ignore[attr-defined]
        if done >= total:
            bar.close()  # type: ignore[attr-defined]

    return update


def _on_invalid(args: argparse.Namespace) -> str:
    """``--lenient`` / ``--drop-invalid`` (mutually exclusive) as the one invalid-row policy."""
    return "drop" if getattr(args, "drop_invalid", False) else "warn" if args.lenient else "error"


#: at most this many invalid cells are listed in a run's registry record (all of them are counted)
_MAX_INVALID_RECORDED = 10_000


def _invalid_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--lenient", action="store_true", help="warn about out-of-range values and keep them instead "
                   "of failing (non-finite values are still refused)")
    g.add_argument("--drop-invalid", action="store_true", help="drop invalid rows (non-finite or outside the "
                   "schema's valid ranges) and list them: in <out>.invalid.csv (row in the input file, 0-based; "
                   "column; value; problem), or for train in the run's registry record")


def _preset_options(p: argparse.ArgumentParser, training: bool = False) -> None:
    from app.core.column_presets import PRESET_NAMES

    if training:  # the only catalogs with the galaxy properties training needs
        p.add_argument("--preset-columns", choices=("tng",),
                       help="tng: a flat table of IllustrisTNG group catalog fields (Group_M_Crit200, "
                            "SubhaloSpin_0..2, GroupPos_0..2, SubhaloMassType_4, SubhaloSFR, ...), converted to the "
                            "schema's columns and units as ingest-tng converts them, galaxy properties included; "
                            "C_h, z_h and Delta3_h, which group catalogs lack, come with --columns NAME=SOURCE")
        return
    p.add_argument("--preset-columns", choices=PRESET_NAMES, metavar="|".join(PRESET_NAMES),
                   help="the catalog's own column conventions, converted to the schema's columns and units: "
                        "rockstar (M200c, else Mvir with a warning; Rvir, Rs, spin_bullock, X, Y, Z), "
                        "consistent-trees (hlist headers: #scale(0) ... mvir(10) rvir(11) rs(12) x(17) ... M200c, "
                        "Spin_Bullock, Halfmass_Scale; the (N) "
                        "suffixes and # are ignored) or tng (IllustrisTNG group catalog fields as ingest-tng reads "
                        "them: Group_M_Crit200, Group_R_Crit200, SubhaloSpin_0..2, GroupPos_0..2, ...); "
                        "--columns NAME=SOURCE wins for the columns it names (e.g. Delta3_h, which no preset has); "
                        "see the README's table of presets")


#: the --box options' help: there is no default box (a wrong one rescales every k and P(k))
BOX_HELP = "periodic box side [Mpc/h] (default: the box the catalog's metadata records; required without)"


def _box(given: float | None, df, source, hint: str = "", warn: bool = True) -> float:
    """``--box`` or the box the table records (``app.core.box``), as a one-line UserError without either."""
    from app.core.box import BoxError, resolve_box

    try:
        box, warnings = resolve_box(given, df.attrs, str(source))
    except BoxError as exc:
        raise UserError(f"{exc}{hint}") from None
    for w in warnings if warn else ():
        print(f"warning: {w}", file=sys.stderr)
    return box


def _box_record(df) -> dict:
    """``{"box": L}`` when the input records its box (an output keeps it for ``pk``), else {}."""
    from app.core.box import recorded_box

    box = recorded_box(df.attrs)
    return {} if box is None else {"box": box}


def _preset_warning(args: argparse.Namespace, columns=None) -> dict:
    """The metadata of ``--preset-columns`` (empty without it), its mass-definition warning printed.
    ``columns``: the catalog's (they decide, e.g., M200c over Mvir); None: read from the header of
    ``args.catalog`` (``paint --server``, whose catalog the service reads; local painting says it in its
    summary's warnings)."""
    if not getattr(args, "preset_columns", None):
        return {}
    from app.core.catalogs import parse_column_mapping
    from app.core.column_presets import preset_record

    if columns is None:
        from app.core.catalog_stream import ChunkReader

        with ChunkReader(args.catalog, args.columns, preset=args.preset_columns) as reader:
            columns = list(reader.source_columns)
    record = preset_record(args.preset_columns, parse_column_mapping(args.columns), list(columns))
    if record["mass_definition_warning"]:
        print(f"warning: {record['mass_definition_warning']}", file=sys.stderr)
    return record


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
                              range_policy="warn" if args.lenient else "error", fmt=args.format,
                              preset=args.preset_columns)
    _preset_warning(args, df.columns)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{args.catalog}: {len(df):,} rows, columns: {', '.join(map(str, df.columns))}")
    cols = [c for c in (*FEATURE_NAMES, *TARGET_NAMES) if c in df.columns]
    print(df[cols].describe().T[["mean", "std", "min", "max"]].to_string(float_format=lambda v: f"{v:.4g}"))
    return 0


def _registry(args: argparse.Namespace, create: bool = False) -> Registry:
    root = args.registry or get_settings().registry
    return Registry(root, create=create)


def _csv_list(value: str | None, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    if not value:
        return tuple(allowed)
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in allowed]
    if bad:
        raise UserError(f"unknown {what} {', '.join(bad)}: choose from {', '.join(allowed)}")
    return items


def _smogn_overrides(path: str | None) -> dict:
    """Per-target SMOGN parameters from a JSON file: ``{"sSFR": {"k": 5, "rel_thres": 0.3}, ...}``."""
    if not path:
        return {}
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"cannot read --smogn-config {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--smogn-config {path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(f"--smogn-config {path} must map target names to parameter objects")
    return data


def cmd_train(args: argparse.Namespace) -> int:
    from training.pipeline import PATHS, TrainConfig, TrainingError, format_table, run_training

    targets = _csv_list(args.targets, TARGET_NAMES, "target")
    paths = _csv_list(args.paths or "raw", PATHS, "path")
    from training.estimators import MODEL_KINDS

    models = _csv_list(args.models, MODEL_KINDS, "model")
    if not 0 <= args.selection_tol < 100:  # also refuses NaN
        raise UserError(f"--selection-tol must be a percentage in [0, 100), not {args.selection_tol:g}")
    cfg = TrainConfig(targets=targets, paths=paths, seed=args.seed, preset=args.preset, alias=args.alias or None,
                      models=models, smogn=_smogn_overrides(args.smogn_config),
                      smogn_stack_rows=args.smogn_stack_on, sampler=not args.no_sampler,
                      production=args.production, selection_tol=args.selection_tol / 100.0,
                      ignore_split=args.ignore_split,
                      extra={"data_path": os.path.abspath(args.data), "on_invalid": _on_invalid(args)})
    try:
        cfg.validate()
    except TrainingError as exc:
        raise UserError(str(exc)) from None
    df, report = load_catalog(args.data, require=list(FEATURE_NAMES) + list(targets), mapping=args.columns,
                              on_invalid=_on_invalid(args), preset=args.preset_columns)
    if args.preset_columns:  # recorded with the run, so that `report` reads the table the same way
        cfg.extra["column_preset"] = _preset_warning(args, df.columns)["column_preset"]
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.drop_invalid:
        # the dropped rows travel with the run: counted and listed (rows in the input file) in its record
        cfg.extra["invalid_rows"] = {
            "dropped": report.n_dropped, "rows_in": report.n_rows,
            "listed": min(len(report.invalid), _MAX_INVALID_RECORDED),
            "cells": report.invalid.iloc[:_MAX_INVALID_RECORDED].to_dict(orient="records")}
        if report.n_dropped:
            print(f"warning: {report.dropped_text()}; listed in the run's registry record", file=sys.stderr)
    if args.ignore_split:
        from training.pipeline import without_split

        df = without_split(df)  # also for the report below: it rebuilds the run's split from this table
    box = None
    if not args.no_report and all(c in df.columns for c in POSITION_NAMES):  # the report's P(k), known now
        box = _box(args.box, df, args.data, "; or --no-report (the run's report measures P(k))")
    registry = _registry(args, create=True)
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    from training.native_logs import quiet_native_logs

    try:
        with quiet_native_logs(not args.verbose):  # TensorFlow's native banner lines, unless --verbose
            summary = run_training(df, registry, cfg, progress)
    except TrainingError as exc:
        raise UserError(str(exc)) from None
    print(format_table(summary))
    for w in summary.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    if args.drop_invalid:
        print(f"dropped {report.n_dropped:,} invalid rows of {report.n_rows:,} (recorded with run {summary['run_id']})")
    print(f"registered {len(summary['published'])} model versions in {registry.root} (run {summary['run_id']})")
    if not args.no_report:
        import tempfile

        from training.report import TRAIN_ENSEMBLE_SEEDS, build_report, store_report

        progress("the run's report (figures 2-9, tables), stored with the run")
        with tempfile.TemporaryDirectory() as tmp:
            build_report(registry, df, tmp, run_id=summary["run_id"], box=box, progress=progress,
                         ensemble_seeds=TRAIN_ENSEMBLE_SEEDS)
            stored = store_report(registry, summary["run_id"], tmp)
        print(f"report: {len(stored)} files stored with run {summary['run_id']} "
              f"(galaxypaint report --run {summary['run_id']} --out DIR writes them anew)")
    if args.metrics_out:
        from pathlib import Path

        out = Path(args.metrics_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(dumps(summary))
        print(f"metrics written to {out}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    models = registry.list_models()
    if args.json:
        print(dumps([m.as_dict() for m in models]))
        return 0
    if not models:
        print("no models registered")
        return 0
    print(f"{'name':28s} {'latest':>6s} {'aliases':24s} {'r':>7s} {'MB':>6s}  created")
    all_aliases = sorted(registry.alias_versions().items())
    for m in models:
        aliases = ", ".join(f"{a}->v{v}" for (n, a), v in all_aliases if n == m.name)
        r = m.metrics.get("pearson_r")
        print(f"{m.name:28s} {m.version:6d} {aliases:24s} {(f'{r:.4f}' if r is not None else '-'):>7s} "
              f"{m.size_bytes / 1e6:6.1f}  {m.created_at:%Y-%m-%d %H:%M}")
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    mv = registry.resolve(args.ref)
    if args.json:
        print(dumps(mv.as_dict()))
        return 0
    print(f"{mv.uri}  ({', '.join(mv.targets)}, {mv.variant} variant, {mv.kind})  aliases: {', '.join(mv.aliases) or '-'}")
    print(f"artefact {mv.artefact}  {mv.size_bytes / 1e6:.1f} MB  sha256 {mv.sha256}")
    print(f"created {mv.created_at:%Y-%m-%d %H:%M:%S %Z}  run {mv.run_id or '-'}  seed {mv.seed}  "
          f"data {(mv.data_fingerprint or '-')[:16]}")
    print("metrics: " + ", ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in mv.metrics.items()))
    print("hyperparameters: " + dumps(mv.hyperparameters).replace("\n", " "))
    print("training domain: " + ", ".join(f"{k} [{v['min']:.4g}, {v['max']:.4g}]" for k, v in mv.training_domain.items()))
    print(f"versions: {', '.join(str(v.version) for v in registry.versions(mv.name))}")
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    mv = _registry(args).set_alias(args.name, args.alias, args.version)
    print(f"{mv.name}@{args.alias} -> version {mv.version}")
    return 0


def _floats(value: str, what: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise UserError(f"{what} must be 5 comma-separated numbers, got {value!r}") from None


def cmd_models_import_lightgbm(args: argparse.Namespace) -> int:
    from training.external import import_lightgbm
    from training.pipeline import TrainingError

    mean = _floats(args.mean, "--mean") if args.mean else [TNG300_FEATURE_MOMENTS[f][0] for f in FEATURE_NAMES]
    std = _floats(args.std, "--std") if args.std else [TNG300_FEATURE_MOMENTS[f][1] for f in FEATURE_NAMES]
    if not (args.mean and args.std):
        print("note: standardizing with the TNG300 training moments of the paper's published models",
              file=sys.stderr)
    try:
        mv, diff = import_lightgbm(args.file, args.target, mean, std, args.name, _registry(args, create=True),
                                   alias=args.alias or None)
    except TrainingError as exc:
        raise UserError(str(exc)) from None
    print(f"registered {mv.uri} ({mv.size_bytes / 1e6:.1f} MB); ONNX vs LightGBM max |diff| {diff:.2e} "
          f"on {mv.metrics['n_checked']} halos")
    return 0


def _mode(args: argparse.Namespace):
    """The ``--mode``/``--seed``/``--quantiles`` options as a ``Mode``."""
    from app.core.model import Mode
    from app.core.schema import DEFAULT_QUANTILE_LEVELS

    if args.quantiles is not None and args.mode != "quantiles":
        raise UserError("--quantiles is for --mode quantiles")
    if args.seed is not None and args.mode != "sample":
        raise UserError("--seed is for --mode sample (the draws); other modes use no random numbers")
    return Mode(args.mode, args.seed or 0, args.quantiles if args.quantiles is not None else DEFAULT_QUANTILE_LEVELS)


def _remote_client(args: argparse.Namespace, refused: dict[str, bool]):
    """The ``app.client.Client`` of ``--server`` (``--token``, else the usual token discovery); local-only
    options given with it are refused in one line."""
    from app.client import Client

    given = [name for name, used in refused.items() if used]
    if given:
        raise UserError(f"{', '.join(given)}: not available with --server (the server uses its own registry and "
                        "engine)")
    return Client(args.server, token=args.token, progress=True)


def _remote_error(exc: Exception) -> UserError:
    return UserError(f"server {exc}")


def cmd_predict(args: argparse.Namespace) -> int:
    from app.core.model import GalaxyModel, predict_table
    from app.painting.local import frame_ids

    detect_format(args.out)
    mode = _mode(args)
    if args.token and not args.server:
        raise UserError("--token is for --server (a local prediction needs no token)")
    targets = _csv_list(args.targets, TARGET_NAMES, "target") if args.targets else None
    client = _remote_client(args, {"--registry": bool(args.registry)}) if args.server else None
    df, report = load_catalog(args.data, require=FEATURE_NAMES, mapping=args.columns, on_invalid=_on_invalid(args),
                              preset=args.preset_columns)
    preset = _preset_warning(args, df.columns)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    ids, id_col = (frame_ids(df, args.id_column) if mode.name == "sample"
                   else (None, args.id_column or ("ID" if "ID" in df.columns else None)))
    if ids is not None and id_col is None and report.n_dropped:
        import numpy as np

        ids = np.flatnonzero(report.keep_mask())  # a halo's row number in the file, dropped rows counted
    t0 = time.perf_counter()
    if client is not None:  # --server: the table is read and checked here, predicted by the service
        from app.client import GalaxypaintError

        try:
            with client:
                out = client.predict(df, targets=targets, model=args.model, mode=mode.name, seed=args.seed,
                                     quantiles=args.quantiles, ids=ids, variant=args.variant)
        except GalaxypaintError as exc:
            raise _remote_error(exc) from None
        provenance: dict = {"server": args.server}
        used = f"the service at {args.server}"
    else:
        model = GalaxyModel.from_registry(_registry(args), variant=args.variant, targets=targets, model=args.model,
                                          mode=mode)
        out = predict_table(df, model, progress=_progress_bar("predicting", "halo"), mode=mode, ids=ids)
        provenance = {"models": model.pinned()}
        used = ", ".join(dict.fromkeys(f"{d['name']}/{d['version']}" for d in model.pinned()))
    elapsed = time.perf_counter() - t0
    path = write_table(out, args.out, metadata={"kind": "prediction", **provenance,
                                                 "variant": args.variant, **mode.describe(),
                                                 "id_column": id_col or "row number in the input file",
                                                 "on_invalid": _on_invalid(args), **preset,
                                                 **_box_record(df), "galaxypaint": __version__})
    if args.drop_invalid:  # listed even when empty: no stale listing stays beside a new output
        from app.core.catalogs import write_invalid

        listing = write_invalid(report.invalid, path)
        print(f"dropped {report.n_dropped:,} invalid rows of {report.n_rows:,}; listed in {listing}")
    print(f"predicted {len(df):,} halos in {elapsed:.2f} s ({len(df) / max(elapsed, 1e-9):,.0f} halos/s) with {used}; "
          f"wrote {path}")
    return 0


def _paint_remote(args: argparse.Namespace) -> int:
    """``galaxypaint paint --server URL``: the catalog is uploaded as a paint job, the result downloaded."""
    from app.client import GalaxypaintError

    detect_format(args.out)
    _mode(args)  # the same option checks as locally
    targets = list(_csv_list(args.targets, TARGET_NAMES, "target")) if args.targets else None
    client = _remote_client(args, {"--registry": bool(args.registry), "--compute-delta3": args.compute_delta3,
                                   "--box": args.box is not None, "--engine": args.engine != "local",
                                   "--scheduler": bool(args.scheduler), "--dask-workers": args.dask_workers != 2,
                                   "--chunk-rows": args.chunk_rows != 1 << 18})
    _preset_warning(args)
    t0 = time.perf_counter()
    try:
        with client:
            path = client.paint(args.catalog, out=args.out, targets=targets, model=args.model, variant=args.variant,
                                columns=args.columns, mode=args.mode, seed=args.seed, quantiles=args.quantiles,
                                id_column=args.id_column, on_invalid=_on_invalid(args),
                                column_preset=args.preset_columns)
    except GalaxypaintError as exc:
        raise _remote_error(exc) from None
    print(f"painted {args.catalog} in {time.perf_counter() - t0:.1f} s through {args.server}; wrote {path}")
    return 0


def _parse_bin_edges(value: str | None) -> dict[str, list[float]]:
    """``paper`` (default) or ``smass=8.8:10.6:12.7,color=-0.2:0.9:1.2`` (lo:mid:hi per property)."""
    if not value or value == "paper":
        return {}
    out = {}
    for item in value.split(","):
        name, _, edges = item.partition("=")
        try:
            out[name.strip()] = [float(v) for v in edges.split(":")]
        except ValueError:
            raise UserError(f"--bins {item!r}: expected NAME=LO:MID:HI with numbers") from None
    return out


def cmd_pk(args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.science.clustering import bin_edges, compare_catalog
    from app.science.pk_outputs import write_pk_outputs

    if args.nmesh < 8:
        raise UserError("--nmesh must be at least 8")
    if args.mode == "sample":
        return _pk_ensemble(args)
    given = [flag for flag, value in (("--seeds", args.seeds), ("--seed0", args.seed0), ("--model", args.model),
                                      ("--id-column", args.id_column)) if value is not None]
    if given:
        raise UserError(f"{', '.join(given)}: for --mode sample (an ensemble of sampled catalogs) only")
    targets = _csv_list(args.targets, TARGET_NAMES, "target") if args.targets else None
    try:
        edges = bin_edges(_parse_bin_edges(args.bins))
    except ValueError as exc:
        raise UserError(f"--bins: {exc}") from None
    df, report = load_catalog(args.catalog, require=list(POSITION_NAMES), mapping=args.columns, range_policy="warn",
                              preset=args.preset_columns, preset_targets=True)  # the true properties too
    _preset_warning(args, df.columns)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    box = _box(args.box, df, args.catalog)
    pos = df[list(POSITION_NAMES)].to_numpy()
    if len(pos) and (pos.min() < -1e-6 * box or pos.max() > box * (1 + 1e-6)):
        raise UserError(f"halo positions span [{pos.min():.3g}, {pos.max():.3g}] Mpc/h, outside the box "
                        f"[0, {box:g}]: give the right --box")
    bar = _progress_bar("power spectra", "bin")
    t0 = time.perf_counter()
    try:
        results = compare_catalog(df, box, args.nmesh, targets, edges,
                                  progress=lambda f, _m: bar(int(round(100 * f)), 100))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out)
    written = write_pk_outputs(results, out, box=box, nmesh=args.nmesh, edges=edges, source=str(args.catalog),
                               title=f"{Path(args.catalog).name}: predicted vs true P(k)")
    if args.json:
        print((out / written["file"]).read_text())
    else:
        import pandas as pd

        print(pd.DataFrame(written["summary"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"{len(results)} bins in {time.perf_counter() - t0:.1f} s; wrote pk.json, pk.csv, pk_summary.csv, "
              f"pk.png in {out}")
    return 0


#: realizations of ``galaxypaint pk --mode sample`` unless --seeds says otherwise
DEFAULT_ENSEMBLE_SEEDS = 20


def _pk_ensemble(args: argparse.Namespace) -> int:
    """``galaxypaint pk --mode sample``: S catalogs painted by the joint sampler against the true one."""
    from pathlib import Path

    from app.core.catalogs import read_table
    from app.core.model import GalaxyModel, Mode
    from app.painting.ensemble import MIN_SEEDS, ensemble_pk
    from app.science.clustering import bin_edges

    if args.targets:
        raise UserError("--targets is for --mode mean: an ensemble measures the bins of all four properties")
    n = DEFAULT_ENSEMBLE_SEEDS if args.seeds is None else args.seeds
    if n < MIN_SEEDS:
        raise UserError(f"--seeds {n}: an ensemble needs at least {MIN_SEEDS} sampled catalogs")
    seed0 = 0 if args.seed0 is None else args.seed0
    if seed0 + n - 1 >= 2**63:
        raise UserError(f"--seed0 {seed0} with --seeds {n}: the seeds {seed0}..{seed0 + n - 1} pass 2**63 - 1")
    seeds = range(seed0, seed0 + n)
    try:
        edges = bin_edges(_parse_bin_edges(args.bins))
    except ValueError as exc:
        raise UserError(f"--bins: {exc}") from None
    df = read_table(args.catalog, args.columns, preset=args.preset_columns)
    _preset_warning(args, df.columns)
    box = _box(args.box, df, args.catalog)
    model = GalaxyModel.from_registry(_registry(args), model=args.model, mode=Mode("sample", seed0))
    t0 = time.perf_counter()
    try:
        result = ensemble_pk(df, model, seeds, box, args.nmesh, edges, id_column=args.id_column,
                             progress=_progress_bar("sampled catalogs", "catalog"))
    except ValueError as exc:  # a catalog error, or a bin without galaxies
        raise UserError(str(exc)) from None
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    out = Path(args.out)
    written = result.write_outputs(out, source=str(args.catalog),
                                   title=f"{Path(args.catalog).name}: {n} sampled catalogs vs the true P(k)")
    if args.json:
        print((out / written["file"]).read_text())
    else:
        import pandas as pd

        print(pd.DataFrame(written["summary"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        used = ", ".join(dict.fromkeys(f"{d['name']}/{d['version']}" for d in result.models))
        print(f"{n} sampled catalogs (seeds {seed0}..{seed0 + n - 1}, {used}) of {result.n_halos:,} halos, "
              f"{len(result.bins)} bins in {time.perf_counter() - t0:.1f} s; wrote pk.json, pk.csv, pk_summary.csv, "
              f"pk.png in {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from training.pipeline import TrainingError
    from training.report import build_report

    if args.ensemble_seeds < 0 or args.ensemble_seeds == 1:
        raise UserError(f"--ensemble-seeds {args.ensemble_seeds}: 0 (no ensemble) or at least 2 sampled catalogs")
    registry = _registry(args)
    data = args.data
    if data is None:
        if not args.run:
            raise UserError("give --run RUN_ID, --data FILE, or both")
        try:
            data = registry.get_run(args.run)["config"].get("data_path")
        except RegistryError as exc:
            raise UserError(str(exc)) from None
        if not data:
            raise UserError(f"run {args.run} does not record its training table: give --data FILE")
    config = {}
    if args.run:
        try:
            config = registry.get_run(args.run)["config"]
        except RegistryError:
            pass  # build_report says so
    # the table as the run saw it: its invalid rows dropped, its split column ignored, if the run did so
    df, _ = load_catalog(data, require=list(FEATURE_NAMES), mapping=args.columns,
                         on_invalid="drop" if config.get("on_invalid") == "drop" else "warn",
                         preset=config.get("column_preset"), preset_targets=True)  # as the run read it
    if config.get("ignore_split"):
        from training.pipeline import without_split

        df = without_split(df)
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    box = None
    if all(c in df.columns for c in POSITION_NAMES):  # refused before any work; an override is a report note
        box = _box(args.box, df, data, warn=False)
    try:
        summary = build_report(registry, df, args.out, run_id=args.run, box=box, nmesh=args.nmesh,
                               progress=progress, ensemble_seeds=args.ensemble_seeds)
    except (TrainingError, ValueError) as exc:
        raise UserError(str(exc)) from None
    for note in summary["notes"]:
        print(f"note: {note}", file=sys.stderr)
    for path, rows in summary["pk"].items():
        print(f"P(k), {path} stacks:")
        for r in rows:
            diff = "n/a" if r["rel_diff_pct"] is None else f"{r['rel_diff_pct']:+.2f} %"
            print(f"  {r['target']:7s} bin {r['bin']} {r['range']:16s} chi2/dof {r['chi2_dof']:8.3f}  "
                  f"mean diff {diff}")
    if summary.get("sampler") and summary["sampler"].get("pk_sample"):
        rows = summary["sampler"]["pk_sample"]
        print(f"P(k), {args.ensemble_seeds} sampled catalogs of the joint sampler:")
        for r in rows:
            print(f"  {r['target']:7s} bin {r['bin']} {r['range']:16s} consistency {r['consistency']:8.3f}  "
                  f"rel. bias {r['rel_bias']:.3f} (mean stack {r['rel_bias_mean_stack']:.3f})")
    print(f"report of run {summary['run_id']}: {len(summary['figures'])} figures, report.md and report.html "
          f"in {summary['out']}")
    return 0


def cmd_paint(args: argparse.Namespace) -> int:
    from app.painting.local import paint
    from app.painting.spec import PaintSpec

    if args.token and not args.server:
        raise UserError("--token is for --server (local painting needs no token)")
    if args.server:
        return _paint_remote(args)
    if args.chunk_rows < 1:
        raise UserError("--chunk-rows must be positive")
    targets = list(_csv_list(args.targets, TARGET_NAMES, "target")) if args.targets else None
    registry = _registry(args)
    spec = PaintSpec.create(registry, args.catalog, args.out, targets=targets, model=args.model, variant=args.variant,
                            columns=args.columns, engine=args.engine, chunk_rows=args.chunk_rows,
                            compute_delta3=args.compute_delta3, box=args.box,
                            on_invalid=_on_invalid(args), scheduler=args.scheduler,
                            dask_workers=args.dask_workers, mode=_mode(args), id_column=args.id_column,
                            column_preset=args.preset_columns)
    summary = paint(spec, registry, progress=_progress_bar("painting", "halo"))  # its warnings: the preset's too
    for w in summary.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    if "dropped_rows" in summary:
        print(f"dropped {summary['dropped_rows']:,} invalid rows of {summary['rows_in']:,}; listed in "
              f"{summary['invalid_file']}")
    used = ", ".join(dict.fromkeys(f"{d['name']}/{d['version']}" for d in summary["models"]))
    print(f"painted {summary['rows']:,} halos in {summary['seconds']:.1f} s ({summary['rows_per_second']:,.0f} halos/s) "
          f"with {used}; wrote {summary['output']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.core.tokens import load_or_create_token, token_path

    # settings travel through the environment so that every uvicorn worker process sees them
    if args.registry:
        os.environ["GALAXYPAINT_REGISTRY"] = os.path.abspath(args.registry)
    if args.data_dir:
        os.environ["GALAXYPAINT_DATA_DIR"] = os.path.abspath(args.data_dir)
    settings = get_settings()
    if not (settings.registry / "registry.sqlite").exists():
        print(f"warning: no registry in {settings.registry} yet: /health/ready stays 503 until models are "
              "trained into it", file=sys.stderr)
    if settings.admin_token is None and not settings.allow_anonymous_writes:
        # once, before any worker process starts, so that all of them serve the same token
        token, created = load_or_create_token(settings.data_dir)
        where = token_path(settings.data_dir)
        print(f"admin token {'generated and ' if created else ''}stored in {where} (mode 0600):\n    {token}\n"
              f"clients: export GALAXYPAINT_ADMIN_TOKEN=$(cat {where})", file=sys.stderr, flush=True)
    uvicorn.run("app.api.main:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, access_log=False,
                # longer than the usual proxies' and clients' idle timeouts: the server must not close a
                # kept-alive connection just as a client sends its next request on it
                timeout_keep_alive=75)
    return 0


def _quantile_levels(value: str) -> tuple[float, ...]:
    from app.core.schema import parse_quantile_levels

    try:
        return parse_quantile_levels(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seed(value: str) -> int:
    try:
        seed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if not 0 <= seed < 2**63:
        raise argparse.ArgumentTypeError("the seed must be in [0, 2**63)")
    return seed


def _mode_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("mean", "sample", "quantiles"), default="mean",
                   help="mean: the stacks' E[property | halo] (default); sample: one galaxy drawn per halo from the "
                        "joint sampler into the usual <target>_pred columns; quantiles: the sampler's quantiles "
                        "as <target>_q<level> columns")
    p.add_argument("--seed", type=_seed, help="seed of the draws in --mode sample (default 0); a halo's galaxy "
                   "depends only on (seed, halo id)")
    p.add_argument("--quantiles", type=_quantile_levels, help="quantile levels in percent for --mode quantiles "
                   "(default 16,50,84), e.g. 2.5,16,50,84,97.5")
    p.add_argument("--id-column", help="integer column keying each halo's draw (default: ID if present, else the "
                   "halo's row number in the input file)")


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", metavar="URL", help="run through a galaxypaint service (galaxypaint serve) at URL "
                   "instead of the local registry")
    p.add_argument("--token", help="--server: bearer token (default: $GALAXYPAINT_API_TOKEN, "
                   "$GALAXYPAINT_ADMIN_TOKEN, then the server's token file in $GALAXYPAINT_DATA_DIR)")


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
    _preset_options(p)
    p.add_argument("--format", help="csv, parquet or hdf5 (default: from the extension)")
    p.add_argument("--targets", action="store_true", help="also require the 4 galaxy properties")
    p.add_argument("--lenient", action="store_true", help="warn about out-of-range values instead of failing")
    p.set_defaults(func=cmd_inspect)

    reg_help = "registry directory (default: $GALAXYPAINT_REGISTRY or models/)"
    p = sub.add_parser("train", help="train the paper's models and stacks and register them as ONNX",
                       description="Train ERT, kNN, LightGBM, NN and the linear stack per target; export and "
                                   "register ONNX graphs.")
    p.add_argument("--data", required=True, help="training table (.parquet, .csv, .hdf5)")
    p.add_argument("--targets", help=f"comma-separated subset of {','.join(TARGET_NAMES)} (default: all)")
    p.add_argument("--variants", "--paths", dest="paths", help="training variants: raw and/or smogn (default: raw; "
                                                               "--paths is the deprecated name)")
    p.add_argument("--models", help="models in the stack: subset of ert,knn,lgbm,nn (default: all four, as the "
                                    "paper; measured on the built-in catalog, ert,lgbm,nn stacks paint ~5x "
                                    "faster and lgbm,nn ~15x: see the README)")
    p.add_argument("--smogn-config", help="JSON file of per-target SMOGN parameters overriding the paper's "
                                          '(e.g. {"sSFR": {"k": 5}})')
    p.add_argument("--smogn-stack-on", choices=("real", "augmented"), default="real",
                   help="validation rows the smogn path's stack is fit on (default real; 'augmented' is the "
                        "paper's literal recipe)")
    p.add_argument("--seed", type=int, default=42, help="seed of the split and of every model (default 42)")
    p.add_argument("--preset", choices=("fast", "paper"), default="fast", help="hyperparameter search size")
    p.add_argument("--registry", help=reg_help)
    p.add_argument("--metrics-out", help="write the run's metrics as JSON to this file")
    p.add_argument("--columns", help="column mapping NAME=SOURCE[,NAME=SOURCE...]")
    _preset_options(p, training=True)
    p.add_argument("--alias", default="production", help="alias given to the new versions (default production; "
                                                         "'' for none)")
    p.add_argument("--production", choices=("selected", "paper"), default="selected",
                   help="which stack --alias points to: 'selected' (default; the members kept by backward "
                        "elimination on the validation split, cheapest first to go) or 'paper' (all members); "
                        "both are registered, as versions of <target>-<path>-stack with aliases 'selected' and 'paper'")
    p.add_argument("--selection-tol", type=float, default=0.25, metavar="PERCENT",
                   help="member selection drops a member while the stack's cross-validated validation MSE stays "
                        "within this many percent of the full stack's (default 0.25)")
    p.add_argument("--no-sampler", action="store_true", help="do not fit the joint sampler (fitted by default on "
                   "the raw path when all four targets are trained; needed by --mode sample/quantiles)")
    p.add_argument("--verbose", action="store_true", help="also show TensorFlow's native log lines (hidden by "
                                                          "default: they are not about your run)")
    p.add_argument("--box", type=float, help=BOX_HELP + "; for the report's P(k) figures")
    p.add_argument("--no-report", action="store_true", help="do not store the run's report figures and tables "
                                                            "in the registry")
    p.add_argument("--ignore-split", action="store_true", help="ignore the table's split column and re-split with "
                   "the seeded default (48/12/40 %% train/validation/test)")
    _invalid_options(p)
    p.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="list, show, promote and import registered models")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = msub.add_parser("list", help="latest version of every model")
    p.add_argument("--json", action="store_true")
    p.add_argument("--registry", help=reg_help)
    p.set_defaults(func=cmd_models_list)
    p = msub.add_parser("show", help="one model version: NAME, NAME@ALIAS or NAME/VERSION")
    p.add_argument("ref")
    p.add_argument("--json", action="store_true")
    p.add_argument("--registry", help=reg_help)
    p.set_defaults(func=cmd_models_show)
    p = msub.add_parser("promote", help="point an alias at a version")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--alias", default="production")
    p.add_argument("--registry", help=reg_help)
    p.set_defaults(func=cmd_models_promote)
    p = msub.add_parser("import-lightgbm", help="register an external LightGBM text model as ONNX")
    p.add_argument("file")
    p.add_argument("--target", required=True, choices=TARGET_NAMES)
    p.add_argument("--mean", help="5 comma-separated feature means used to standardize (default: TNG300's)")
    p.add_argument("--std", help="5 comma-separated feature standard deviations (default: TNG300's)")
    p.add_argument("--name", required=True, help="model name in the registry")
    p.add_argument("--alias", help="alias to give the new version")
    p.add_argument("--registry", help=reg_help)
    p.set_defaults(func=cmd_models_import_lightgbm)

    p = sub.add_parser("predict", help="predict galaxy properties for a halo table with the registered stacks")
    p.add_argument("--data", required=True, help="halo table (.csv, .parquet, .hdf5)")
    p.add_argument("--out", required=True, help="output table: the input plus <target>_pred columns")
    p.add_argument("--variant", "--path", dest="variant", choices=("raw", "smogn"), default="raw",
                   help="training variant of the models (default raw; --path is its deprecated name)")
    p.add_argument("--targets", help="comma-separated subset of targets (default: every target with a model)")
    p.add_argument("--model", help="alias, version, or NAME@ALIAS for a single target")
    p.add_argument("--columns", help="column mapping NAME=SOURCE[,NAME=SOURCE...]")
    _preset_options(p)
    _invalid_options(p)
    p.add_argument("--registry", help=reg_help)
    _mode_options(p)
    _server_options(p)
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("pk", help="power spectra of predicted vs true galaxy populations (paper Fig. 9)",
                       description="Split galaxies in two bins per property and compare the P(k) of the "
                                   "predicted (<target>_pred) and true (<target>) populations; with --mode sample, "
                                   "paint S catalogs with the joint sampler and compare the true P(k) with their "
                                   "ensemble (mean and scatter).")
    p.add_argument("--catalog", required=True, help="mode mean: a painted/predicted catalog with x, y, z and "
                   "<target>_pred; mode sample: a halo catalog with the 5 features, x, y, z and the true properties")
    p.add_argument("--out", required=True, help="output directory (pk.json, pk.csv, pk_summary.csv, pk.png)")
    p.add_argument("--box", type=float, help=BOX_HELP)
    p.add_argument("--nmesh", type=int, default=256, help="FFT mesh per side (default 256; TSC + interlacing)")
    p.add_argument("--bins", default="paper", help="'paper' (Table 1 edges) or NAME=LO:MID:HI[,...]")
    p.add_argument("--targets", help="subset of properties (default: every <target>_pred column)")
    p.add_argument("--columns", help="column mapping NAME=SOURCE[,NAME=SOURCE...]")
    _preset_options(p)
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    p.add_argument("--mode", choices=("mean", "sample"), default="mean",
                   help="mean: the catalog's <target>_pred columns against its true ones (default); sample: an "
                        "ensemble of catalogs drawn by the joint sampler against the true one")
    p.add_argument("--seeds", type=int, help=f"--mode sample: number S of sampled catalogs (default "
                   f"{DEFAULT_ENSEMBLE_SEEDS}, at least 2), drawn with the seeds seed0..seed0+S-1")
    p.add_argument("--seed0", type=_seed, help="--mode sample: the first seed (default 0)")
    p.add_argument("--registry", help=reg_help + " (--mode sample)")
    p.add_argument("--model", help="--mode sample: the joint sampler's alias, version or reference "
                   "(default: production)")
    p.add_argument("--id-column", help="--mode sample: integer column keying each halo's draws (default: ID if "
                   "present, else the halo's row number in the catalog), as in paint")
    p.set_defaults(func=cmd_pk)

    p = sub.add_parser("paint", help="paint a (large) halo catalog with the registered stacks, streaming",
                       description="Predict galaxy properties onto a halo catalog chunk by chunk (flat memory); "
                                   "the output is the input plus <target>_pred columns, written atomically.")
    p.add_argument("--catalog", required=True, help="halo catalog (.parquet, .hdf5, .csv)")
    p.add_argument("--out", required=True, help="painted catalog (.parquet, .hdf5, .csv; a directory with --engine dask)")
    p.add_argument("--registry", help=reg_help)
    p.add_argument("--variant", "--path", dest="variant", choices=("raw", "smogn"), default="raw",
                   help="training variant of the models (default raw; --path is its deprecated name)")
    p.add_argument("--targets", help="subset of the targets (default: every registered stack)")
    p.add_argument("--model", help="alias, version or reference (default: production)")
    p.add_argument("--columns", help="column mapping NAME=SOURCE[,NAME=SOURCE...]")
    _preset_options(p)
    p.add_argument("--compute-delta3", action="store_true", help="compute Delta3_h from x, y, z (haloes as tracers)")
    p.add_argument("--box", type=float, help=BOX_HELP + "; used by --compute-delta3")
    p.add_argument("--chunk-rows", type=int, default=1 << 18, help="rows per chunk (default 262144)")
    _invalid_options(p)
    p.add_argument("--engine", choices=("local", "dask"), default="local")
    p.add_argument("--scheduler", help="Dask scheduler address (default: a LocalCluster)")
    p.add_argument("--dask-workers", type=int, default=2, help="LocalCluster workers (default 2)")
    _mode_options(p)
    _server_options(p)
    p.set_defaults(func=cmd_paint)

    p = sub.add_parser("serve", help="run the HTTP service (FastAPI + uvicorn; OpenAPI at /docs)",
                       description="Serve predictions, the registry and batch jobs over HTTP.")
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1; 0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--registry", help=reg_help)
    p.add_argument("--data-dir", help="server-side catalogs and job outputs (default: $GALAXYPAINT_DATA_DIR or data/)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("report", help="the paper's figures and tables for a training run",
                       description="Figures 2-9, metrics/importance/P(k) tables, report.md and report.html.")
    p.add_argument("--run", help="training run id (default: the latest run trained on --data)")
    p.add_argument("--data", help="the run's training table (default: the path the run recorded)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--registry", help=reg_help)
    p.add_argument("--box", type=float, help=BOX_HELP + "; for the P(k) figures")
    p.add_argument("--nmesh", type=int, default=256, help="FFT mesh per side for P(k) (default 256)")
    p.add_argument("--ensemble-seeds", type=int, default=10, metavar="S",
                   help="sampled catalogs behind the P(k) of the joint sampler's populations (default 10; "
                        "0 skips it; runs without a sampler have no such section)")
    p.add_argument("--columns", help="column mapping NAME=SOURCE[,NAME=SOURCE...]")
    p.set_defaults(func=cmd_report)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CatalogError, UserError, RegistryError) as exc:
        _close_bars()
        print(f"galaxypaint: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("galaxypaint: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: one line unless debugging
        _close_bars()
        if os.environ.get("GALAXYPAINT_DEBUG"):
            raise
        print(f"galaxypaint: error: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(set GALAXYPAINT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
