"""What a painting run is: one spec object, built by the CLI, the job worker and the Dask engine alike.

A spec names the catalog and the output, how the catalog's columns map onto the schema, which
models (pinned versions, resolved once when the spec is made), the mode (mean, sample with its seed,
quantiles with their levels: ``app.core.model.Mode``), which column identifies a halo, the engine,
the chunking, the catalog's column conventions (``column_preset``: ``app.core.column_presets``), and
what to do with invalid rows (``on_invalid``: refuse, warn, or drop and list them in
``<out>.invalid.csv``; ``app.core.catalogs.ON_INVALID``).  ``provenance()`` is what a painted file
records about how it was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app import __version__
from app.core.catalogs import CatalogError, check_on_invalid, parse_column_mapping
from app.core.column_presets import get_preset, preset_record
from app.core.model import MEAN, Mode, resolve
from app.core.registry import Registry

Engine = Literal["local", "dask"]
OnInvalid = Literal["error", "warn", "drop"]
DEFAULT_CHUNK_ROWS = 1 << 18


@dataclass(frozen=True)
class PaintSpec:
    catalog: Path
    out: Path
    variant: str = "raw"
    pinned: tuple[dict, ...] = ()  # (target, name, version, sha256) of each model, from ``pin_models``
    columns: dict[str, str] = field(default_factory=dict)  # schema name -> the catalog's column
    #: the catalog's column conventions (``app.core.column_presets``: rockstar, consistent-trees, tng);
    #: ``columns`` wins over it
    column_preset: str | None = None
    mode: Mode = MEAN
    #: the column whose integers key each halo's draw in sample mode; None: ``ID`` when the catalog has
    #: one, else the halo's row number in the input file (counted before any row is dropped)
    id_column: str | None = None
    engine: Engine = "local"
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    #: invalid rows (non-finite or outside the schema's valid ranges): error, warn or drop
    on_invalid: OnInvalid = "error"
    compute_delta3: bool = False
    #: periodic box side [Mpc/h] (None: the one the catalog records; computing Delta3_h needs one)
    box: float | None = None
    threads: int = 0  # onnxruntime threads per session (0: the CPUs this process may use)
    max_bytes: int | None = None  # largest decompressed catalog read (None: no limit)
    scheduler: str | None = None  # Dask scheduler address (None: a LocalCluster)
    dask_workers: int = 2

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise CatalogError("chunk_rows must be positive")
        if self.box is not None and not self.box > 0:
            raise CatalogError(f"--box: the box side must be a positive number of Mpc/h, not {self.box:g}")
        if not self.pinned:
            raise CatalogError("a paint spec needs pinned models (PaintSpec.create resolves them)")
        if check_on_invalid(self.on_invalid) == "ignore":
            raise CatalogError("on_invalid must be one of error, warn, drop")
        if self.column_preset is not None:
            object.__setattr__(self, "column_preset", get_preset(self.column_preset).name)

    @property
    def range_policy(self) -> str:
        """The older name of ``on_invalid`` (read by callers written before it)."""
        return self.on_invalid

    @classmethod
    def create(cls, registry: Registry, catalog: str | Path, out: str | Path, *, targets=None, model: str | None = None,
               variant: str = "raw", columns: str | dict | None = None, **options) -> "PaintSpec":
        """A spec whose models are resolved now (``model``: alias, version or reference) and pinned."""
        if "range_policy" in options:  # the older name of on_invalid
            options.setdefault("on_invalid", options.pop("range_policy"))
        versions = resolve(registry, targets, variant, model, options.get("mode", MEAN))
        pinned = tuple({"target": t, "name": mv.name, "version": mv.version, "sha256": mv.sha256}
                       for t, mv in versions.items())
        mapping = parse_column_mapping(columns) if not isinstance(columns, dict) else dict(columns)
        return cls(Path(catalog), Path(out), variant=variant, pinned=pinned, columns=mapping, **options)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(p["target"] for p in self.pinned)

    def provenance(self, id_column: str | None, box: float | None = None,
                   source_columns: list | None = None) -> dict:
        """The painted file's metadata: how its galaxies were made (``id_column``: the column keying the
        draws, None for row numbers) and the periodic ``box`` [Mpc/h] its haloes live in, when known."""
        return {"kind": "painted", "models": list(self.pinned), "variant": self.variant, **self.mode.describe(),
                "seed": self.mode.seed if self.mode.name == "sample" else None,
                "id_column": id_column or "row number in the input file",
                "galaxies": "centrals only, at their halo's position (real space: no satellites, no redshift-space "
                            "distortions)",
                "source": str(self.catalog),
                "delta3": "computed (3 Mpc/h, haloes as tracers)" if self.compute_delta3 else "input",
                "on_invalid": self.on_invalid,
                **({"box": float(box)} if box is not None else {}),
                **(preset_record(self.column_preset, self.columns, source_columns) if self.column_preset else {}),
                "galaxypaint": __version__}
