"""Painting: galaxy properties predicted onto a halo catalog file, streamed chunk by chunk.

The output is the input catalog with one ``<target>_pred`` column per target (as ``galaxypaint
predict`` writes), written incrementally to a temporary file and renamed into place at the end:
memory stays flat whatever the catalog size, and a failure (a bad row, a cancellation) leaves no
output and says which chunk and rows were bad.  ``compute_delta3`` derives ``Delta3_h`` from the
halo positions (periodic box) for catalogs that lack it.

Painted output keeps every input column (IDs, positions, the user's own columns stay joined to their
galaxies).  That is safe for the service too: catalogs are inspected before they are read, so every
column comes from the file's own bytes (``app.core.catalog_inspect``).

``paint(spec)`` is the one entry point: the CLI (``galaxypaint paint``), the service's paint jobs
and the Dask engine (``app.painting.dask_engine``, one ``paint_frame`` per partition) all go through
the same ``PaintSpec``, the same chunk painter and the same provenance metadata.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from app.core.box import recorded_box, resolve_box
from app.core.catalog_stream import ChunkReader, ChunkWriter
from app.core.catalogs import CatalogError, detect_format, drop_invalid, validate, write_invalid
from app.core.environment import delta3_slabs
from app.core.model import MEAN, GalaxyModel, Mode, with_predictions
from app.core.registry import Registry
from app.core.schema import FEATURE_NAMES, POSITION_NAMES
from app.painting.spec import PaintSpec

Progress = Callable[[int, int], None]


def paint_frame(df, model: GalaxyModel, row_offset: int = 0, on_invalid: str = "error", mode: Mode = MEAN,
                id_column: str | None = None, *, range_policy: str | None = None, with_invalid: bool = False):
    """One chunk: validate the features (errors name the rows, counted from the file start) and append
    the output columns (``<target>_pred``, or ``<target>_q<level>`` in quantiles mode).  Returns
    (painted frame, warnings), and with ``with_invalid`` also the listing of the rows dropped
    (``app.core.catalogs.ValidationReport.invalid``: row numbers in the file).

    Invalid features (non-finite, or outside the schema's valid ranges) are refused; under
    ``on_invalid="warn"`` out-of-range ones are reported and painted, under ``"drop"`` invalid rows are
    left out of the output and listed (``range_policy`` is the older name of ``on_invalid``), as
    ``galaxypaint predict`` does; non-finite outputs are refused.  In sample mode each halo's draw is
    keyed by its ``id_column`` value, or by its row number in the file (``row_offset`` + its position
    in the chunk, counted before any row is dropped), so it does not depend on the chunking."""
    policy = range_policy if range_policy is not None and on_invalid == "error" else on_invalid
    try:
        report = validate(df, require=FEATURE_NAMES, on_invalid=policy, check=FEATURE_NAMES,
                          row_offset=row_offset)
    except CatalogError as exc:
        raise CatalogError(f"rows {row_offset:,}-{row_offset + len(df) - 1:,}: {exc}") from None
    # ids before any row goes: a halo's row number is its place in the file, dropped rows included
    ids = halo_ids(df, id_column, row_offset) if mode.name == "sample" else None
    if report.n_dropped:
        keep = report.keep_mask()
        df = drop_invalid(df, report)
        ids = ids[keep] if ids is not None else None
    if len(df) == 0:  # every row of this chunk was dropped: nothing to predict
        painted = df
    else:
        x = df[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
        values = model.predict(x, mode, ids)
        for name, v in values.items():
            bad = np.flatnonzero(~np.isfinite(v))
            if len(bad):
                row = row_offset + (np.flatnonzero(report.keep_mask())[bad[0]] if report.n_dropped else bad[0])
                raise CatalogError(f"row {row:,}: the {name} prediction is not finite")
        painted = with_predictions(df, values)
    if with_invalid:
        return painted, report.warnings, report.invalid
    return painted, report.warnings


def halo_ids(df, id_column: str | None, row_offset: int) -> np.ndarray:
    """The integers keying each halo's draw: the ``id_column`` values, else the row numbers in the file."""
    if id_column is None:
        return np.arange(row_offset, row_offset + len(df), dtype=np.int64)
    return integer_ids(df[id_column].to_numpy(), id_column)


def integer_ids(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as int64/uint64 ids, refusing what is not an integer (floats only when integral and
    below 2**53, beyond which two ids can share one float)."""
    v = np.asarray(values)
    if v.dtype.kind in "iu":
        return v
    if v.dtype.kind == "f":
        ok = np.isfinite(v) & (np.abs(v) < 2.0**53) & (v == np.round(v))
        if ok.all():
            return v.astype(np.int64)
        i = int(np.flatnonzero(~ok)[0])
        raise CatalogError(f"id column {name!r}: value {v[i]!r} is not an integer below 2**53")
    raise CatalogError(f"id column {name!r} holds {v.dtype} values: halo ids must be integers")


def frame_ids(df, id_col: str | None) -> tuple[np.ndarray, str | None]:
    """The integers keying each row's draw in an in-memory table and the column they come from: ``id_col``,
    else ``ID`` when present, else None (the row numbers) - the rule of ``paint``; repeated ids refused."""
    name = id_col or id_column(df.columns)
    if name is not None and name not in df.columns:
        raise CatalogError(f"id column {name!r} is not in the catalog")
    ids = halo_ids(df, name, 0)
    _check_unique(ids, name)
    return ids, name


def _check_unique(ids: np.ndarray, name: str | None) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        raise CatalogError(f"id column {name!r} repeats {uniq[counts > 1][0]} ({int(np.sum(counts > 1)):,} ids "
                           "repeated): duplicated haloes would get identical galaxies; give another id column "
                           "or none (row numbers)")


def id_column_for(reader: ChunkReader, spec: PaintSpec) -> str | None:
    """The column keying the draws (``spec.id_column``, else ``ID`` when present, else None: row numbers),
    checked: integers, and in sample mode unique (two haloes with one id would get the same galaxy)."""
    name = spec.id_column or id_column(reader.columns)
    if name is None:
        return None
    if name not in reader.columns:
        raise CatalogError(f"id column {name!r} is not in {reader.path.name}")
    if spec.mode.name == "sample":
        _check_unique(integer_ids(reader.read_columns([name])[name].to_numpy(), name), name)
    return name


def catalog_box(reader: ChunkReader, spec: PaintSpec) -> tuple[float | None, list[str]]:
    """(box side [Mpc/h] or None, warnings): ``spec.box``, else the one the input records, so that the
    painted file records it in turn (its P(k) then needs no --box); computing Delta3_h requires one."""
    if spec.box is None and not spec.compute_delta3:
        return recorded_box(reader.metadata), []
    return resolve_box(spec.box, reader.metadata, str(spec.catalog))


def delta3_for(reader: ChunkReader, spec: PaintSpec, box: float | None) -> np.ndarray | None:
    """``Delta3_h`` computed from the positions in a periodic ``box`` [Mpc/h] when the spec asks for it
    (None: the catalog's column), after checking the catalog can be painted at all."""
    if reader.preset_plan is not None:  # says which of the catalog's columns are missing, and why
        need = [f for f in FEATURE_NAMES if f != "Delta3_h"] + (list(POSITION_NAMES) if spec.compute_delta3
                                                                else ["Delta3_h"])
        reader.preset_plan.check_required(reader.columns, need)
    if spec.compute_delta3:
        pos = reader.read_columns(list(POSITION_NAMES)).to_numpy(dtype=np.float64)
        box = float(box)  # type: ignore[arg-type]
        if not np.isfinite(pos).all() or pos.min() < -1e-6 * box or pos.max() > box * (1 + 1e-6):
            raise CatalogError(f"halo positions must be finite and within [0, {box:g}] Mpc/h to compute Delta3_h")
        return delta3_slabs(pos, box)
    if "Delta3_h" not in reader.columns:
        raise CatalogError("the catalog has no Delta3_h column: map it with --columns Delta3_h=NAME, or "
                           "compute it from the positions with --compute-delta3 --box L")
    missing = [f for f in FEATURE_NAMES if f not in reader.columns]
    if missing:
        raise CatalogError(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} in {reader.path}")
    return None


def preset_warnings(meta: dict) -> list[str]:
    """The column preset's mass-definition warning a painted file's metadata records, for the run's summary
    (the painter knows the catalog's columns, which decide it: nobody reads the catalog again to say it)."""
    warning = meta.get("mass_definition_warning")
    return [warning] if warning else []


def id_column(columns) -> str | None:
    return "ID" if "ID" in columns else None


def paint(spec: PaintSpec, registry: Registry, progress: Progress | None = None) -> dict:
    """Paint ``spec.catalog`` into ``spec.out`` with its engine; returns a summary of the run."""
    if spec.engine == "dask":
        from app.painting.dask_engine import paint_dask

        return paint_dask(spec, registry, progress)
    return paint_file(spec, registry, progress)


def paint_file(spec: PaintSpec, registry: Registry, progress: Progress | None = None) -> dict:
    """The streaming engine: chunk by chunk, in this process."""
    detect_format(spec.out)
    t0 = time.perf_counter()
    model = GalaxyModel.from_pinned(registry, spec.pinned, spec.variant, spec.threads)
    invalid = []  # the rows dropped (on_invalid drop), listed beside the output
    with ChunkReader(spec.catalog, spec.columns, max_bytes=spec.max_bytes,
                     preset=spec.column_preset) as reader:
        if reader.n_rows == 0:
            raise CatalogError(f"{spec.catalog} has no rows")
        box, warnings = catalog_box(reader, spec)
        d3 = delta3_for(reader, spec, box)
        ids_from = id_column_for(reader, spec)
        meta = spec.provenance(ids_from, box, reader.source_columns)
        warnings += preset_warnings(meta)
        with ChunkWriter(spec.out, metadata=meta) as writer:
            if progress:
                progress(0, reader.n_rows)
            for start, chunk in reader.chunks(spec.chunk_rows):
                if d3 is not None:
                    chunk["Delta3_h"] = d3[start:start + len(chunk)]
                painted, warn, bad = paint_frame(chunk, model, start, spec.on_invalid, spec.mode, ids_from,
                                                 with_invalid=True)
                warnings += warn[:3]
                if len(bad):
                    invalid.append(bad)
                if len(painted):  # a chunk whose rows were all dropped writes nothing
                    writer.write(painted)
                if progress:
                    progress(start + len(chunk), reader.n_rows)
            extra = _dropped(spec, invalid, reader.n_rows, writer.rows)
            written = writer.commit()
    return summary(spec, writer.rows, str(written), time.perf_counter() - t0, warnings, **extra)


def _dropped(spec: PaintSpec, invalid: list, n_rows: int, n_written: int) -> dict:
    """Under ``on_invalid="drop"``: list the dropped rows beside the output (written before the output is
    committed, so a painted file never stands without its listing) and say how many; refuse when no
    row is left."""
    if spec.on_invalid != "drop":
        return {}
    import pandas as pd

    from app.core.catalogs import INVALID_COLUMNS

    listing = pd.concat(invalid, ignore_index=True) if invalid else pd.DataFrame(columns=list(INVALID_COLUMNS))
    dropped = int(listing["row"].nunique()) if len(listing) else 0
    if n_written == 0:
        raise CatalogError(f"every row of {spec.catalog} is invalid ({dropped:,} rows): nothing to paint")
    path = write_invalid(listing, spec.out)
    return {"rows_in": n_rows, "dropped_rows": dropped, "invalid_file": str(path)}


def summary(spec: PaintSpec, rows: int, output: str, seconds: float, warnings: list[str], **extra) -> dict:
    return {"rows": rows, "output": output, "models": list(spec.pinned), "variant": spec.variant, **spec.mode.describe(),
            "seconds": seconds, "rows_per_second": rows / max(seconds, 1e-9), "warnings": warnings[:10], **extra}
