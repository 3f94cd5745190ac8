"""The files a P(k) comparison leaves: one writer for the CLI (``galaxypaint pk``) and the service's jobs.

``pk.json`` (every spectrum, error and residual, with the settings), ``pk.csv`` (one row per property,
bin and k), ``pk_summary.csv`` (one row per property and bin: counts, chi^2, mean relative difference)
and ``pk.png`` (the paper's Fig. 9).  Each file is written to a temporary name and renamed, so a
reader never sees half a result.

An ensemble of sampled catalogs (``app.painting.ensemble``) leaves the same four files
(``write_ensemble_pk_outputs``): per property bin the true P(k), the ensemble mean and scatter, the
consistency statistic, the relative bias, the galaxy counts, and a figure of the ensemble band.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from app import __version__
from app.science.clustering import BinComparison, long_table, summary_table
from app.science.figures import plot_clustering, plot_sampled_clustering
from app.science.populations import EnsembleBin

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


def ensemble_summary_table(results: Sequence[dict]) -> pd.DataFrame:
    """One row per (property, bin) of an ensemble's ``results`` (``EnsemblePk.bin_dicts``): the true and
    sampled galaxy counts, the consistency statistic and the mean |<P_s>/P_true - 1| over k < kmax
    (``rel_bias``, a fraction), and the paper's chi^2 of the ensemble mean against the truth."""
    return pd.DataFrame([{"target": r["target"], "bin": r["bin"] + 1, "range": f"[{r['edges'][0]:g}, {r['edges'][1]:g})",
                          "n_true": r["n_true"], "n_sample_mean": r["n_sample_mean"], "n_sample_std": r["n_sample_std"],
                          "consistency": r["consistency"], "rel_bias": r["rel_bias"], "chi2": r["chi2"],
                          "chi2_dof": r["chi2_dof"]} for r in results])


def ensemble_long_table(results: Sequence[dict]) -> pd.DataFrame:
    """One row per (property, bin, k) of an ensemble: the true spectrum, the ensemble mean and scatter
    (standard deviation over the realizations) and the paper's sigma of the true spectrum."""
    rows = []
    for r in results:
        for i in range(len(r["k"])):
            rows.append({"target": r["target"], "bin": r["bin"] + 1, "k": r["k"][i], "power_true": r["power_true"][i],
                         "power_mean": r["power_mean"][i], "power_std": r["power_std"][i], "sigma": r["sigma"][i]})
    return pd.DataFrame(rows)


def write_ensemble_pk_outputs(payload: dict, bins: Sequence[EnsembleBin], out: str | os.PathLike[str], *, title: str,
                              source: str) -> dict:
    """Write an ensemble's four files into ``out`` (``payload``: ``EnsemblePk.as_dict()``, ``bins``: its
    ``EnsembleBin``s, drawn as the true P(k) and the ensemble's band); returns their names (``FILES``)
    and the summary rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"catalog": source, **payload, "galaxypaint": __version__}
    results = payload["results"]
    table = ensemble_summary_table(results)
    _atomic(out / FILES["file"], lambda p: p.write_text(json.dumps(payload, indent=1)))
    _atomic(out / FILES["csv"], lambda p: ensemble_long_table(results).to_csv(p, index=False))
    _atomic(out / FILES["summary_csv"], lambda p: table.to_csv(p, index=False))
    _atomic(out / FILES["figure"], lambda p: plot_sampled_clustering(bins, None, p, title=title, fmt="png"))
    return {**FILES, "summary": table.astype(object).where(table.notna(), None).to_dict(orient="records")}
