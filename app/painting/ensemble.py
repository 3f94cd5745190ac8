"""Clustering as an ensemble: S catalogs painted by the joint sampler, against the true one (issue 14).

One sampled catalog differs from the true one by realization noise (which galaxy each halo happens to
get), noise the paper's Gaussian sigma does not contain; so a single sampled catalog can neither pass
nor fail the paper's chi^2 test fairly.  ``ensemble_pk`` paints S realizations of the same haloes
(seeds ``seeds``, each halo's draw keyed by its id as in ``galaxypaint paint --mode sample``), in
memory and chunk by chunk, and measures per property bin (the paper's Table 1 by default):

* the true P(k), the ensemble mean <P_s>(k) and its scatter across the realizations;
* ``consistency`` = mean over k < kmax of (P_true - <P_s>)^2 / (var_s (1 + 1/S)): ~1 when the truth
  looks like one more draw of the sampler (``app.science.populations.ensemble_statistics``), and
  ``rel_bias`` = mean over k < kmax of |<P_s> / P_true - 1|;
* the galaxy counts: true, and the ensemble's mean and scatter;
* the paper's chi^2 of the ensemble mean against the truth (its sigma: the Gaussian error of P_true).

The statistics are those of ``app.science.populations.ensemble_clustering`` on the same draws.  Used by
``galaxypaint pk --mode sample`` and by the service's P(k) jobs in sample mode.

Memory: the S sampled catalogs ([S, N, 4] floats, released one by one as their spectra are measured)
and one chunk of the sampler's mixture parameters at a time; a realization's spectra are 8 arrays of
a few dozen k bins.  Units: positions and box in Mpc/h, k in h/Mpc, P(k) in (Mpc/h)^3.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from app.core.catalogs import CatalogError, validate
from app.core.model import SAMPLER_BATCH_ROWS, GalaxyModel, Mode
from app.core.registry import InvalidReference
from app.core.schema import FEATURE_NAMES, POSITION_NAMES, TARGET_NAMES
from app.painting.local import frame_ids
from app.science.clustering import bin_edges as checked_bin_edges
from app.science.pk_outputs import write_ensemble_pk_outputs
from app.science.populations import (DEFAULT_KMAX, EnsembleBin, bin_spectra, ensemble_bins, finite_list,
                                     finite_or_none)
from app.science.power_spectrum import default_k_edges, gaussian_error

Progress = Callable[[int, int], None]
#: fewest realizations of an ensemble (a scatter needs two)
MIN_SEEDS = 2


@dataclass
class EnsemblePk:
    """The clustering of the true galaxy populations against S sampled catalogs, per property bin.

    ``bins``: one ``EnsembleBin`` per (property, bin), in ``TARGET_NAMES`` order; ``n_sample_std``,
    ``sigma``, ``chi2``, ``chi2_dof`` are parallel to it (scatter of the bin's galaxy count over the
    realizations; the paper's Gaussian error of P_true [(Mpc/h)^3]; chi^2 of the ensemble mean against
    P_true with that error, summed over the k bins, and per k bin)."""

    bins: list[EnsembleBin]
    n_sample_std: list[float]
    sigma: list[np.ndarray]
    chi2: list[float]
    chi2_dof: list[float]
    seeds: tuple[int, ...]
    n_halos: int
    box: float
    nmesh: int
    kmax: float
    edges: dict[str, tuple[float, float, float]]
    k_edges: np.ndarray
    models: list[dict] = field(default_factory=list)
    variant: str = "raw"
    id_column: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # the catalog's validation warnings

    @property
    def n_realizations(self) -> int:
        return len(self.seeds)

    def bin_dicts(self) -> list[dict]:
        """Per (property, bin): the spectra (true, ensemble mean, variance and scatter, paper's sigma) and
        the statistics, JSON-ready (NaN -> None); ``bin`` counts from 0 as in ``galaxypaint pk``'s JSON."""
        out = []
        for b, std_n, sig, chi2, chi2_dof in zip(self.bins, self.n_sample_std, self.sigma, self.chi2, self.chi2_dof):
            d = b.as_dict()
            d.update(power_std=finite_list(np.sqrt(b.power_var)), sigma=finite_list(sig),
                     n_sample_std=finite_or_none(std_n),
                     consistency=finite_or_none(b.consistency), rel_bias=finite_or_none(b.rel_bias),
                     n_sample_mean=finite_or_none(b.n_sample_mean), chi2=finite_or_none(chi2),
                     chi2_dof=finite_or_none(chi2_dof), n_k_used=int(np.sum(b.k < self.kmax)))
            out.append(d)
        return out

    def as_dict(self) -> dict:
        """The settings (S, seeds, pinned models, box, nmesh, kmax, bins) and every bin's arrays and
        statistics (``bin_dicts``): the content of ``pk.json``."""
        return {"mode": "sample", "n_realizations": self.n_realizations, "seeds": [int(s) for s in self.seeds],
                "n_halos": self.n_halos, "models": list(self.models), "variant": self.variant,
                "id_column": self.id_column or "row number in the input file",
                "box": self.box, "nmesh": self.nmesh, "scheme": "tsc", "interlacing": True, "kmax": self.kmax,
                "edges": {t: list(e) for t, e in self.edges.items()}, "k_edges": finite_list(self.k_edges),
                "seconds": self.seconds, "results": self.bin_dicts()}

    def write_outputs(self, out, *, title: str, source: str) -> dict:
        """pk.json (``as_dict``), pk.csv, pk_summary.csv and pk.png (the true P(k) and the ensemble band per
        bin) in directory ``out``; returns the file names and the summary rows."""
        return write_ensemble_pk_outputs(self.as_dict(), self.bins, out, title=title, source=source)


def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """``seeds`` as a tuple of distinct valid seeds, at least ``MIN_SEEDS`` of them."""
    seeds = tuple(seeds)
    if len(seeds) < MIN_SEEDS:
        raise InvalidReference(f"an ensemble needs at least {MIN_SEEDS} realizations (seeds), not {len(seeds)}")
    for s in seeds:
        Mode("sample", s)  # integers in [0, 2**63)
    if len(set(int(s) for s in seeds)) != len(seeds):
        raise InvalidReference("the seeds of an ensemble must differ: one seed paints one catalog")
    return tuple(int(s) for s in seeds)


def check_catalog(df: pd.DataFrame, box: float, range_policy: str = "error") -> list[str]:
    """Refuse a catalog the ensemble cannot use: features (in their valid ranges unless ``range_policy``
    is ``warn``), positions within [0, box] and the true galaxy properties are all needed.  Returns
    the validation warnings."""
    missing_true = [t for t in TARGET_NAMES if t not in df.columns]
    if missing_true:
        raise CatalogError(f"the catalog lacks the true galaxy properties {', '.join(missing_true)}: an ensemble "
                           "compares sampled catalogs with the true one, so the haloes need their true galaxies "
                           "(e.g. a test split or the built-in catalog; map other names with NAME=COLUMN)")
    report = validate(df, require=list(FEATURE_NAMES) + list(POSITION_NAMES) + list(TARGET_NAMES),
                      range_policy=range_policy, check=FEATURE_NAMES)  # type: ignore[arg-type]
    validate(df, require=(), range_policy="warn", check=list(POSITION_NAMES) + list(TARGET_NAMES))  # finite
    pos = df[list(POSITION_NAMES)].to_numpy(dtype=np.float64)
    if len(pos) and (pos.min() < -1e-6 * box or pos.max() > box * (1 + 1e-6)):
        raise CatalogError(f"halo positions span [{pos.min():.3g}, {pos.max():.3g}] Mpc/h, outside the box "
                           f"[0, {box:g}]: give the right box size")
    return report.warnings


def ensemble_pk(df: pd.DataFrame, model: GalaxyModel, seeds: Sequence[int], box: float, nmesh: int = 256,
                edges: Mapping[str, Sequence[float]] | None = None, id_column: str | None = None,
                progress: Progress | None = None, kmax: float = DEFAULT_KMAX, k_edges: np.ndarray | None = None,
                chunk_rows: int = SAMPLER_BATCH_ROWS, range_policy: str = "error") -> EnsemblePk:
    """Paint S = len(``seeds``) catalogs of ``df``'s haloes with ``model`` (the joint sampler, answering
    all four properties) and measure their clustering against the true galaxies (``df``'s property
    columns), per property bin (``edges``: property -> [lo, mid, hi], default the paper's).

    ``df`` needs the 5 features, ``x, y, z`` in [0, ``box``] Mpc/h and the 4 true properties.  Each
    halo's draw in realization s is keyed by (``seeds[s]``, its id): ``id_column``, else ``ID`` when
    present, else its row number in ``df``; so realization s is the catalog ``galaxypaint paint --mode
    sample --seed seeds[s]`` paints.  ``progress(done, S)`` after each realization's spectra.
    """
    t0 = time.perf_counter()
    seeds = check_seeds(seeds)
    model.check_mode(Mode("sample", seeds[0]))
    lacking = [t for t in TARGET_NAMES if t not in model.targets]
    if lacking:
        raise InvalidReference(f"the ensemble needs a sampler drawing all four properties; these versions do not "
                               f"draw {', '.join(lacking)}")
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be positive")
    if not (box > 0) or nmesh < 8:
        raise ValueError("the box must be positive and nmesh at least 8")
    all_edges = checked_bin_edges(edges)
    warnings = check_catalog(df, box, range_policy)
    ids, ids_from = frame_ids(df, id_column)
    if progress:
        progress(0, len(seeds))

    cols = [model.targets.index(t) for t in TARGET_NAMES]
    x = df[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    n = len(x)
    draws: list[np.ndarray | None] = [np.empty((n, len(TARGET_NAMES))) for _ in seeds]
    for start in range(0, n, chunk_rows):
        part = model.sample_seeds(x[start:start + chunk_rows], ids[start:start + chunk_rows], seeds)[:, :, cols]
        bad = np.argwhere(~np.isfinite(part))
        if len(bad):
            s, i, d = bad[0]
            raise CatalogError(f"row {start + i:,}: the {TARGET_NAMES[d]} draw of seed {seeds[s]} is not finite")
        for s, d in enumerate(draws):
            d[start:start + len(part[s])] = part[s]  # type: ignore[index]
    del x

    pos = df[list(POSITION_NAMES)].to_numpy(dtype=np.float64)
    y_true = df[list(TARGET_NAMES)].to_numpy(dtype=np.float64)
    k_edges = default_k_edges(box, nmesh) if k_edges is None else np.asarray(k_edges, dtype=np.float64)
    true = bin_spectra(pos, y_true, box, nmesh, all_edges, k_edges)
    samples = []
    for s in range(len(seeds)):
        samples.append(bin_spectra(pos, draws[s], box, nmesh, all_edges, k_edges))
        draws[s] = None  # measured: its galaxies are no longer needed
        if progress:
            progress(s + 1, len(seeds))
    bins = ensemble_bins(true, samples, kmax, all_edges)

    counts_std = np.std([sp.counts for sp in samples], axis=0, ddof=1)  # [4, 2]
    volume = box ** 3
    sigma, chi2, chi2_dof = [], [], []
    for b in bins:
        sig = (gaussian_error(b.power_true, k_edges, box, b.n_true / volume) if b.n_true
               else np.full(len(b.k), np.nan))
        with np.errstate(divide="ignore", invalid="ignore"):
            resid = (b.power_mean - b.power_true) ** 2 / sig ** 2
        ok = np.isfinite(resid)
        sigma.append(sig)
        chi2.append(float(resid[ok].sum()) if ok.any() else float("nan"))
        chi2_dof.append(float(resid[ok].sum()) / int(ok.sum()) if ok.any() else float("nan"))
    n_std = [float(counts_std[TARGET_NAMES.index(b.target), b.bin]) for b in bins]
    return EnsemblePk(bins=bins, n_sample_std=n_std, sigma=sigma, chi2=chi2, chi2_dof=chi2_dof, seeds=seeds,
                      n_halos=n, box=float(box), nmesh=int(nmesh), kmax=float(kmax), edges=all_edges,
                      k_edges=k_edges, models=model.pinned(), variant=model.variant, id_column=ids_from,
                      seconds=time.perf_counter() - t0, warnings=list(warnings))
