"""The files a P(k) comparison leaves: one writer for the CLI (``galaxypaint pk``) and the service's jobs.

``pk.json`` (every spectrum, error and residual, with the settings), ``pk.csv`` (one row per property,
bin and k), ``pk_summary.csv`` (one row per property and bin: counts, chi^2, mean relative difference)
and ``pk.png`` (the paper's Fig. 9).  Each file is written to a temporary name and renamed, so a
reader never sees half a result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app import __version__
from app.science.clustering import BinComparison, long_table, summary_table
from app.science.figures import plot_clustering

FILES = {"file": "pk.json", "csv": "pk.csv", "summary_csv": "pk_summary.csv", "figure": "pk.png"}


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_pk_outputs(results: Sequence[BinComparison], out: str | os.PathLike[str], *, box: float, nmesh: int,
                     edges: dict, title: str, source: str) -> dict:
    """Write the four files into ``out``; returns their names (``FILES``) and the summary rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"catalog": source, "box": box, "nmesh": nmesh, "scheme": "tsc", "interlacing": True,
               "edges": {t: list(e) for t, e in edges.items()}, "results": [r.as_dict() for r in results],
               "galaxypaint": __version__}
    table = summary_table(results)
    _atomic(out / FILES["file"], lambda p: p.write_text(json.dumps(payload, indent=1)))
    _atomic(out / FILES["csv"], lambda p: long_table(results).to_csv(p, index=False))
    _atomic(out / FILES["summary_csv"], lambda p: table.to_csv(p, index=False))
    _atomic(out / FILES["figure"], lambda p: plot_clustering(results, p, title=title, fmt="png"))
    return {**FILES, "summary": table.replace({np.nan: None}).to_dict(orient="records")}
