"""Painting on a Dask cluster: one task per row range, written as a partitioned Parquet dataset.

The spec's models are pinned versions, so every worker paints with the same graphs even if an alias
moves meanwhile; each worker process builds the ``GalaxyModel`` once (sha256-verified) and keeps it
for all its tasks.  Each task paints its rows with the local engine's ``paint_frame``.  Parts are
written into a temporary directory that replaces ``out`` only when every part has succeeded.  Needs
the ``dask`` extra.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from app.core.catalog_stream import ChunkReader, ChunkWriter
from app.core.catalogs import CatalogError
from app.core.model import GalaxyModel
from app.core.registry import Registry
from app.painting.local import (_dropped, catalog_box, delta3_for, id_column_for, paint_frame, preset_warnings,
                                summary)
from app.painting.spec import PaintSpec

_WORKER_MODELS: dict[tuple, GalaxyModel] = {}


def _worker_model(registry_root: str, spec: PaintSpec) -> GalaxyModel:
    key = (registry_root, tuple(tuple(sorted(p.items())) for p in spec.pinned))
    if key not in _WORKER_MODELS:  # once per worker process
        _WORKER_MODELS[key] = GalaxyModel.from_pinned(Registry(registry_root, create=False), spec.pinned,
                                                      spec.variant, threads=1)
    return _WORKER_MODELS[key]


def _paint_part(spec: PaintSpec, start: int, stop: int, registry_root: str, part_file: str,
                delta3: np.ndarray | None, meta: dict, ids_from: str | None, frame=None):
    """Paint rows [start, stop) of the catalog (read here, or given as ``frame``) into ``part_file``;
    returns (rows read, the listing of the rows dropped under on_invalid drop)."""
    if frame is not None:
        df = frame
    else:
        with ChunkReader(spec.catalog, spec.columns, max_bytes=spec.max_bytes,
                         preset=spec.column_preset) as reader:
            df = reader.read_rows(start, stop)
    if delta3 is not None:
        df["Delta3_h"] = delta3
    # ``start`` is the part's first row in the file, so row-number ids match the local engine's
    painted, _, invalid = paint_frame(df, _worker_model(registry_root, spec), start, spec.on_invalid, spec.mode,
                                      ids_from, with_invalid=True)
    if len(painted):  # a part whose rows were all dropped writes no file
        with ChunkWriter(part_file, metadata=meta) as writer:
            writer.write(painted)
            writer.commit()
    return len(df), invalid


def paint_dask(spec: PaintSpec, registry: Registry, progress: Callable[[int, int], None] | None = None) -> dict:
    """Paint ``spec.catalog`` into the directory ``spec.out`` (``part-NNNNN.parquet``) on a Dask cluster."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise CatalogError("the dask engine needs Dask: pip install 'galaxypaint[dask]'") from None
    t0 = time.perf_counter()
    out = Path(spec.out)
    if out.suffix in (".csv", ".hdf5", ".h5", ".txt"):
        raise CatalogError(f"the dask engine writes a directory of Parquet parts, not {out.suffix}: give a directory")
    with ChunkReader(spec.catalog, spec.columns, max_bytes=spec.max_bytes,
                     preset=spec.column_preset) as reader:
        n = reader.n_rows
        if n == 0:
            raise CatalogError(f"{spec.catalog} has no rows")
        box, warnings = catalog_box(reader, spec)
        d3 = delta3_for(reader, spec, box)
        ids_from = id_column_for(reader, spec)
        meta = spec.provenance(ids_from, box, reader.source_columns)
        warnings += preset_warnings(meta)
        csv = reader.format == "csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    ranges = [(a, min(a + spec.chunk_rows, n)) for a in range(0, n, spec.chunk_rows)]
    cluster = None if spec.scheduler else LocalCluster(n_workers=spec.dask_workers, threads_per_worker=1,
                                                       processes=True, dashboard_address=None)
    try:
        with Client(spec.scheduler or cluster) as client:
            def submit(i: int, a: int, b: int, frame=None):
                return client.submit(_paint_part, spec, a, b, str(registry.root), str(tmp / f"part-{i:05d}.parquet"),
                                     None if d3 is None else d3[a:b], meta, ids_from, frame, pure=False)

            if csv:
                # a CSV's rows are found only by parsing it from the top: the client parses it once and
                # ships each chunk, rather than every worker re-parsing up to its rows
                with ChunkReader(spec.catalog, spec.columns, max_bytes=spec.max_bytes,
                                 preset=spec.column_preset) as reader:
                    futures = [submit(i, a, a + len(df), df)
                               for i, (a, df) in enumerate(reader.chunks(spec.chunk_rows))]
            else:
                futures = [submit(i, a, b) for i, (a, b) in enumerate(ranges)]
            done = 0
            invalid = []
            if progress:
                progress(0, n)
            for fut in as_completed(futures):
                rows, bad = fut.result()
                done += rows
                if len(bad):
                    invalid.append(bad)
                if progress:
                    progress(done, n)
        # listed beside the directory (``<out>.invalid.csv``) before it is moved into place
        extra = _dropped(spec, invalid, n, n - sum(int(b["row"].nunique()) for b in invalid))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if cluster is not None:
            cluster.close()
    return summary(spec, n - extra.get("dropped_rows", 0), str(out), time.perf_counter() - t0, warnings,
                   parts=len(ranges), **extra)
