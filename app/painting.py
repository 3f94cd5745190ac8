"""Painting: galaxy properties predicted onto a halo catalog file, written as a new file.

The output is the input catalog with one ``<target>_pred`` column per target (as ``galaxypaint
predict`` writes), written atomically (temporary file, then rename): a failure or a cancellation
leaves no output.  Used by the CLI and by the service's paint jobs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from app import __version__
from app.catalogs import detect_format, load_catalog, write_table
from app.inference import StackPredictor, predict_table
from app.registry import Registry
from app.schema import FEATURE_NAMES

Progress = Callable[[int, int], None]


def paint_file(catalog: str | Path, out: str | Path, registry: Registry, path: str = "raw",
               targets: Sequence[str] | None = None, model: str | None = None, columns: str | None = None,
               chunk_rows: int = 65536, progress: Progress | None = None, threads: int = 0) -> dict:
    """Paint ``catalog`` into ``out`` (format from the extension); returns a summary of the run."""
    detect_format(out)
    t0 = time.perf_counter()
    df, report = load_catalog(catalog, require=FEATURE_NAMES, mapping=columns, range_policy="warn")
    predictor = StackPredictor(registry, path=path, targets=targets, model=model, threads=threads)
    painted = predict_table(df, predictor, chunk_rows=chunk_rows, progress=progress)
    written = write_table(painted, out, metadata={"kind": "painted", "models": predictor.describe(), "path": path,
                                                  "source": str(catalog), "galaxypaint": __version__})
    seconds = time.perf_counter() - t0
    return {"rows": len(df), "output": str(written), "models": predictor.describe(), "path": path,
            "seconds": seconds, "rows_per_second": len(df) / max(seconds, 1e-9), "warnings": report.warnings}
