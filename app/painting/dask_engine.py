"""Painting on a Dask cluster: one task per row range, written as a partitioned Parquet dataset.

The client resolves the serving models once and pins their exact (name, version), so every worker
paints with the same graphs even if an alias moves meanwhile; each worker process loads them once
(sha256-verified) and keeps them for all its tasks.  Parts are written into a temporary directory
that replaces ``out`` only when every part has succeeded.  Needs the ``dask`` extra.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from app import __version__
from app.core.catalog_stream import ChunkReader, ChunkWriter
from app.core.catalogs import CatalogError
from app.core.environment import delta3_slabs
from app.core.model import LoadedModel, StackPredictor
from app.core.registry import Registry
from app.core.schema import FEATURE_NAMES, POSITION_NAMES

_WORKER_MODELS: dict[tuple, dict[str, LoadedModel]] = {}


class _PinnedStack:
    """The same interface as ``StackPredictor`` for fixed (target, name, version) triples."""

    def __init__(self, registry_root: str, pinned: Sequence[tuple[str, str, int]], path: str) -> None:
        key = (registry_root, tuple(pinned))
        if key not in _WORKER_MODELS:  # once per worker process
            reg = Registry(registry_root, create=False)
            _WORKER_MODELS[key] = {t: LoadedModel.load(reg, reg.get(name, version=v), threads=1)
                                   for t, name, v in pinned}
        self.models = _WORKER_MODELS[key]
        self.path = path

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {t: m.predict(x) for t, m in self.models.items()}


def _paint_part(catalog: str, columns: str | None, start: int, stop: int, registry_root: str,
                pinned: list[tuple[str, str, int]], path: str, part_file: str, delta3: np.ndarray | None,
                meta: dict) -> int:
    from app.painting.local import paint_frame

    with ChunkReader(catalog, columns) as reader:
        df = reader.read_rows(start, stop)
    if delta3 is not None:
        df["Delta3_h"] = delta3
    painted, _ = paint_frame(df, _PinnedStack(registry_root, pinned, path), start)  # type: ignore[arg-type]
    with ChunkWriter(part_file, metadata=meta) as writer:
        writer.write(painted)
        writer.commit()
    return len(painted)


def paint_dask(catalog: str | Path, out: str | Path, registry: Registry, path: str = "raw",
               targets: Sequence[str] | None = None, model: str | None = None, columns: str | None = None,
               chunk_rows: int = 1 << 20, scheduler: str | None = None, workers: int = 2,
               compute_delta3: bool = False, box: float | None = None,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """Paint ``catalog`` into the directory ``out`` (``part-NNNNN.parquet`` files) on a Dask cluster."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise CatalogError("the dask engine needs Dask: pip install 'galaxypaint[dask]'") from None
    t0 = time.perf_counter()
    out = Path(out)
    if out.suffix in (".csv", ".hdf5", ".h5", ".txt"):
        raise CatalogError(f"the dask engine writes a directory of Parquet parts, not {out.suffix}: give a directory")
    resolver = StackPredictor(registry, path=path, targets=targets, model=model, threads=1)
    described = resolver.describe()
    pinned = [(d["target"], d["name"], int(d["version"])) for d in described]
    with ChunkReader(catalog, columns) as reader:
        n = reader.n_rows
        if n == 0:
            raise CatalogError(f"{catalog} has no rows")
        d3 = None
        if compute_delta3:
            if not box or box <= 0:
                raise CatalogError("computing Delta3_h needs the periodic box size (--box, Mpc/h)")
            d3 = delta3_slabs(reader.read_columns(list(POSITION_NAMES)).to_numpy(np.float64), box)
        elif "Delta3_h" not in reader.columns:
            raise CatalogError("the catalog has no Delta3_h column: map it with --columns, or --compute-delta3 --box L")
        missing = [f for f in FEATURE_NAMES if f not in reader.columns and not (f == "Delta3_h" and d3 is not None)]
        if missing:
            raise CatalogError(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    meta = {"kind": "painted", "models": described, "path": path, "source": str(catalog), "galaxypaint": __version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    ranges = [(a, min(a + chunk_rows, n)) for a in range(0, n, chunk_rows)]
    cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                  dashboard_address=None)
    try:
        with Client(scheduler or cluster) as client:
            futures = [client.submit(_paint_part, str(catalog), columns, a, b, str(registry.root), pinned, path,
                                     str(tmp / f"part-{i:05d}.parquet"), None if d3 is None else d3[a:b], meta,
                                     pure=False) for i, (a, b) in enumerate(ranges)]
            done = 0
            if progress:
                progress(0, n)
            for fut in as_completed(futures):
                done += fut.result()
                if progress:
                    progress(done, n)
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
    seconds = time.perf_counter() - t0
    return {"rows": n, "output": str(out), "parts": len(ranges), "models": described, "path": path,
            "seconds": seconds, "rows_per_second": n / max(seconds, 1e-9), "warnings": []}
