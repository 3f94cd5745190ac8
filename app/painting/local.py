"""Painting: galaxy properties predicted onto a halo catalog file, streamed chunk by chunk.

The output is the input catalog with one ``<target>_pred`` column per target (as ``galaxypaint
predict`` writes), written incrementally to a temporary file and renamed into place at the end:
memory stays flat whatever the catalog size, and a failure (a bad row, a cancellation) leaves no
output and says which chunk and rows were bad.  ``compute_delta3`` derives ``Delta3_h`` from the
halo positions (periodic box) for catalogs that lack it.  Used by the CLI (``galaxypaint paint``),
the Dask engine and the service's paint jobs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from app import __version__
from app.core.catalog_stream import ChunkReader, ChunkWriter
from app.core.catalogs import CatalogError, detect_format, validate
from app.core.environment import delta3_slabs
from app.core.model import StackPredictor
from app.core.registry import Registry
from app.core.schema import FEATURE_NAMES, POSITION_NAMES

Progress = Callable[[int, int], None]
DEFAULT_CHUNK_ROWS = 1 << 18


def paint_frame(df, predictor: StackPredictor, row_offset: int = 0, range_policy: str = "error"):
    """One chunk: validate the features (errors name the rows, counted from the file start) and append
    the ``<target>_pred`` columns.  Returns (painted frame, warnings).

    Features outside the schema's valid ranges are refused (``range_policy="warn"``: reported and
    painted), as ``galaxypaint predict`` and the HTTP API do; non-finite predictions are refused."""
    try:
        report = validate(df, require=FEATURE_NAMES, range_policy=range_policy, check=FEATURE_NAMES)  # type: ignore[arg-type]
    except CatalogError as exc:
        raise CatalogError(f"rows {row_offset:,}-{row_offset + len(df) - 1:,}: {exc} "
                           f"(row numbers within this chunk)") from None
    x = df[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    out = df.copy()
    for target, values in predictor.predict(x).items():
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise CatalogError(f"row {row_offset + bad[0]:,}: the {target} prediction is not finite")
        out[f"{target}_pred"] = values
    return out, report.warnings


def paint_file(catalog: str | Path, out: str | Path, registry: Registry, path: str = "raw",
               targets: Sequence[str] | None = None, model: str | None = None, columns: str | None = None,
               chunk_rows: int = DEFAULT_CHUNK_ROWS, progress: Progress | None = None, threads: int = 0,
               compute_delta3: bool = False, box: float | None = None,
               predictor: StackPredictor | None = None, range_policy: str = "error") -> dict:
    """Paint ``catalog`` into ``out`` (format from the extension); returns a summary of the run."""
    detect_format(out)
    t0 = time.perf_counter()
    predictor = predictor or StackPredictor(registry, path=path, targets=targets, model=model, threads=threads)
    warnings: list[str] = []
    with ChunkReader(catalog, columns) as reader:
        if reader.n_rows == 0:
            raise CatalogError(f"{catalog} has no rows")
        d3 = None
        if compute_delta3:
            if not box or box <= 0:
                raise CatalogError("computing Delta3_h needs the periodic box size (--box, Mpc/h)")
            pos = reader.read_columns(list(POSITION_NAMES)).to_numpy(dtype=np.float64)
            if not np.isfinite(pos).all() or pos.min() < -1e-6 * box or pos.max() > box * (1 + 1e-6):
                raise CatalogError(f"halo positions must be finite and within [0, {box:g}] Mpc/h to compute Delta3_h")
            d3 = delta3_slabs(pos, box)
            del pos
        elif "Delta3_h" not in reader.columns:
            raise CatalogError("the catalog has no Delta3_h column: map it with --columns Delta3_h=NAME, or "
                               "compute it from the positions with --compute-delta3 --box L")
        meta = {"kind": "painted", "models": predictor.describe(), "path": predictor.path, "source": str(catalog),
                "delta3": "computed (3 Mpc/h, haloes as tracers)" if compute_delta3 else "input",
                "galaxypaint": __version__}
        with ChunkWriter(out, metadata=meta) as writer:
            if progress:
                progress(0, reader.n_rows)
            for start, chunk in reader.chunks(chunk_rows):
                if d3 is not None:
                    chunk["Delta3_h"] = d3[start:start + len(chunk)]
                painted, warn = paint_frame(chunk, predictor, start, range_policy)
                warnings += warn[:3]
                writer.write(painted)
                if progress:
                    progress(start + len(chunk), reader.n_rows)
            written = writer.commit()
    seconds = time.perf_counter() - t0
    n = reader.n_rows
    return {"rows": n, "output": str(written), "models": predictor.describe(), "path": predictor.path,
            "seconds": seconds, "rows_per_second": n / max(seconds, 1e-9), "warnings": warnings[:10]}
