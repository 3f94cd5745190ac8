"""Reading, validating and writing halo/galaxy tables (CSV, Parquet, HDF5).

Column names are mapped onto the schema in ``app.core.schema`` (aliases, case-insensitive, plus an
explicit ``canonical=source`` mapping).  Every problem raises :class:`CatalogError` with one
readable sentence naming the column and rows.  Writes are atomic: a temporary file in the
destination directory is fsynced and renamed, so a failure never leaves a partial table.

HDF5 layout written and read here: one 1-D dataset per column in a group (default: the file
root), metadata as attributes of that group.  This is readable by h5py, and by slices, so large
tables can be streamed.  HDF5 tables are found and checked by ``app.core.catalog_inspect`` (only data
stored inside the file itself is read); ``inspect_catalog`` there also bounds decompressed sizes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from app.core.schema import COLUMNS, FEATURE_NAMES, SPLIT_COLUMN, SPLIT_VALUES, TARGET_NAMES, canonical_name

Format = Literal["csv", "parquet", "hdf5"]
RangePolicy = Literal["error", "warn", "ignore"]

_EXTENSIONS: dict[str, Format] = {
    ".csv": "csv", ".txt": "csv", ".csv.gz": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
}
METADATA_KEY = "galaxypaint"
_MAX_ROWS_SHOWN = 5


class CatalogError(ValueError):
    """A table cannot be read, mapped or validated; the message is meant for the user."""


def detect_format(path: str | os.PathLike[str], fmt: str | None = None) -> Format:
    """File format from an explicit name or the file extension."""
    if fmt:
        f = fmt.lower()
        if f in ("h5", "hdf"):
            f = "hdf5"
        if f not in ("csv", "parquet", "hdf5"):
            raise CatalogError(f"unknown format {fmt!r}: use csv, parquet or hdf5")
        return f  # type: ignore[return-value]
    name = str(path).lower()
    for ext, f in sorted(_EXTENSIONS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(ext):
            return f
    raise CatalogError(f"cannot tell the format of {path}: use a .csv, .parquet or .hdf5 file (or say --format)")


def parse_metadata(raw: object) -> dict:
    """A file's galaxypaint metadata from its stored JSON (text or bytes); a malformed entry reads as none."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    try:
        meta = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def parse_column_mapping(spec: str | Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """Parse ``"M_h=logMvir,C_h=conc"`` (or a list of such items, or a dict) into {canonical: source}."""
    if not spec:
        return {}
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        parts = [spec] if isinstance(spec, str) else list(spec)
        items = []
        for part in parts:
            for item in str(part).split(","):
                if not item.strip():
                    continue
                if "=" not in item:
                    raise CatalogError(f"column mapping {item!r} is not of the form NAME=SOURCE_COLUMN")
                k, v = item.split("=", 1)
                items.append((k.strip(), v.strip()))
    mapping: dict[str, str] = {}
    for k, v in items:
        # a schema name as written is that column: z_h is the formation redshift, whatever the
        # case-insensitive aliases say (Z_h, z_h are also aliases of the position z)
        canon = k if k in COLUMNS else canonical_name(k)
        if canon is None:
            raise CatalogError(f"column mapping names {k!r}, which is not a galaxypaint column "
                               f"(known: {', '.join(COLUMNS)})")
        mapping[canon] = v
    return mapping


def canonicalize(df: pd.DataFrame, mapping: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Rename columns onto the schema: explicit ``mapping`` first, then exact names, then aliases."""
    mapping = dict(mapping or {})
    lookup = {str(c).lower(): c for c in df.columns}
    rename: dict[object, str] = {}
    for canon, source in mapping.items():
        src = source if source in df.columns else lookup.get(str(source).lower())
        if src is None:
            raise CatalogError(f"column {source!r} (mapped to {canon}) is not in the table; "
                               f"it has: {', '.join(map(str, df.columns))}")
        rename[src] = canon
    taken = set(rename.values())
    for col in df.columns:
        if col in rename:
            continue
        if str(col) in COLUMNS or str(col) == SPLIT_COLUMN:
            if str(col) not in taken:
                rename[col] = str(col)
                taken.add(str(col))
    for col in df.columns:
        if col in rename:
            continue
        canon = canonical_name(str(col))
        if canon is not None and canon not in taken:
            rename[col] = canon
            taken.add(canon)
    out = df.rename(columns={k: v for k, v in rename.items() if k != v})
    return out


def _bad_rows_text(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:_MAX_ROWS_SHOWN])
    more = f" and {len(rows) - _MAX_ROWS_SHOWN} more" if len(rows) > _MAX_ROWS_SHOWN else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more} (0-based)"


#: what to do with invalid rows (a non-numeric or non-finite value, or a value outside the schema's
#: valid range): ``error`` refuses the table (default), ``warn`` keeps out-of-range values with a
#: warning (non-finite ones cannot be fed to a model, so they are still refused), ``drop`` drops
#: every invalid row and lists it.  One policy for train, predict, paint and paint jobs.
ON_INVALID: tuple[str, ...] = ("error", "warn", "drop")
#: how the refusal names the way forward (CLI flags; paint jobs take the form field ``on_invalid``)
_DROP_HINT = "--drop-invalid (on_invalid=drop) drops such rows and lists them"
_LENIENT_HINT = "--lenient (on_invalid=warn) keeps out-of-range values with a warning"
#: the columns of an invalid-rows listing (``ValidationReport.invalid``, the ``.invalid.csv`` sidecar)
INVALID_COLUMNS: tuple[str, ...] = ("row", "column", "value", "problem")


def check_on_invalid(value: str | None, range_policy: str | None = None) -> str:
    """The invalid-row policy from ``on_invalid`` or the older ``range_policy`` (error/warn/ignore)."""
    if value is None:
        value = range_policy or "error"
    if value not in (*ON_INVALID, "ignore"):  # ignore: the old range_policy value, kept for callers
        raise CatalogError(f"on_invalid must be one of {', '.join(ON_INVALID)}, not {str(value)[:40]!r}")
    return value


def _value_text(v) -> str:
    return str(float(v)) if isinstance(v, (float, np.floating)) else str(v)


@dataclass
class ValidationReport:
    """Outcome of :func:`validate`: rows checked, warnings issued (errors raise) and, under
    ``on_invalid="drop"``, the invalid cells (``invalid``: row, column, value, problem; rows 0-based
    in the table validated plus ``row_offset``) and the rows to drop."""

    n_rows: int
    warnings: list[str] = field(default_factory=list)
    invalid: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(INVALID_COLUMNS)))
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # positions in the table

    @property
    def n_dropped(self) -> int:
        return int(len(self.dropped))

    def keep_mask(self) -> np.ndarray:
        keep = np.ones(self.n_rows, dtype=bool)
        keep[self.dropped] = False
        return keep

    def dropped_text(self) -> str:
        """One line saying how many rows were dropped and why, by column."""
        per = self.invalid.groupby("column", sort=False)["row"].nunique()
        return (f"dropped {self.n_dropped:,} invalid row{'s' if self.n_dropped != 1 else ''} of {self.n_rows:,} ("
                + ", ".join(f"{c}: {n:,}" for c, n in per.items()) + ")")


def validate(df: pd.DataFrame, require: Iterable[str] = FEATURE_NAMES, range_policy: RangePolicy | None = None,
             check: Iterable[str] | None = None, on_invalid: str | None = None,
             row_offset: int = 0) -> ValidationReport:
    """Check that required columns exist, are numeric and finite, and lie in their valid ranges.

    ``check`` (default: every schema column present) lists the columns whose values are checked.
    ``on_invalid`` (see ``ON_INVALID``; ``range_policy`` is its older name) says what happens to invalid
    rows: raise, warn about out-of-range values, or list them in the report to be dropped
    (:func:`drop_invalid`).  ``row_offset`` is added to the row numbers reported (a chunk's first row).
    """
    policy = check_on_invalid(on_invalid, range_policy)
    require = list(require)
    missing = [c for c in require if c not in df.columns]
    if missing:
        raise CatalogError(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                           f"(the table has: {', '.join(map(str, df.columns))}); "
                           "map other names with NAME=COLUMN")
    report = ValidationReport(n_rows=len(df))
    found: list[tuple[np.ndarray, str, list[str], str]] = []  # (positions, column, values, problem)
    names = [c for c in (check if check is not None else COLUMNS) if c in df.columns]
    for name in names:
        col = df[name]
        text = None
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            values = pd.to_numeric(col, errors="coerce")
            bad = np.flatnonzero(values.isna().to_numpy() & col.notna().to_numpy())
            if len(bad):
                if policy != "drop":
                    raise CatalogError(f"column {name} is not numeric: {_bad_rows_text(bad + row_offset)}, "
                                       f"e.g. {col.iloc[bad[0]]!r}; {_DROP_HINT}")
                found.append((bad, name, [str(x) for x in col.iloc[bad]], "not a number"))
                text = set(bad.tolist())
            col = values
        v = col.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(v))
        if text:
            bad = np.array([r for r in bad if r not in text], dtype=np.int64)
        if len(bad):
            if policy != "drop":
                # kept rows must be usable by a model: non-finite values are refused even under warn
                raise CatalogError(f"column {name} has {len(bad)} missing or non-finite value"
                                   f"{'s' if len(bad) > 1 else ''} (NaN/inf) at {_bad_rows_text(bad + row_offset)}; "
                                   f"{_DROP_HINT}")
            found.append((bad, name, [_value_text(x) for x in v[bad]], "missing or non-finite"))
        spec = COLUMNS[name]
        lo, hi = spec.valid
        out = np.flatnonzero(np.isfinite(v) & ((v < lo) | (v > hi)))  # non-finite: listed above
        if len(out) and policy != "ignore":
            msg = (f"column {name} has {len(out)} value{'s' if len(out) > 1 else ''} outside the valid range "
                   f"[{lo:g}, {hi:g}] {spec.unit} at {_bad_rows_text(out + row_offset)}, e.g. {v[out[0]]:g}")
            if policy == "error":
                raise CatalogError(f"{msg}; {_DROP_HINT}, {_LENIENT_HINT}")
            if policy == "warn":
                report.warnings.append(msg)
            else:
                found.append((out, name, [_value_text(x) for x in v[out]],
                              f"outside the valid range [{lo:g}, {hi:g}] {spec.unit}".rstrip()))
    if SPLIT_COLUMN in df.columns:
        bad = np.flatnonzero(~df[SPLIT_COLUMN].astype(str).isin(SPLIT_VALUES).to_numpy())
        if len(bad):
            raise CatalogError(f"column {SPLIT_COLUMN} must hold {', '.join(SPLIT_VALUES)}: "
                               f"{_bad_rows_text(bad + row_offset)}, e.g. {df[SPLIT_COLUMN].iloc[bad[0]]!r}")
    if found:
        rows = np.concatenate([f[0] for f in found]).astype(np.int64)
        listing = pd.DataFrame({"row": rows + row_offset,
                                "column": np.concatenate([[f[1]] * len(f[0]) for f in found]),
                                "value": np.concatenate([f[2] for f in found]),
                                "problem": np.concatenate([[f[3]] * len(f[0]) for f in found])})
        report.invalid = listing.sort_values(["row"], kind="stable").reset_index(drop=True)
        report.dropped = np.unique(rows)
    return report


def drop_invalid(df: pd.DataFrame, report: ValidationReport) -> pd.DataFrame:
    """``df`` without the rows ``report`` found invalid (index reset; ``attrs`` kept); columns that were
    checked as numbers but read as text (because of a dropped non-number) become numbers."""
    if not report.n_dropped:
        return df
    out = df.iloc[report.keep_mask()].reset_index(drop=True)
    for name in set(report.invalid["column"]):
        if not pd.api.types.is_numeric_dtype(out[name]):
            out[name] = pd.to_numeric(out[name])
    out.attrs = dict(df.attrs)
    return out


def invalid_path(out: str | os.PathLike[str]) -> Path:
    """Where the rows dropped while writing ``out`` are listed: ``<out>.invalid.csv`` beside it."""
    p = Path(out)
    return p.with_name(p.name + ".invalid.csv")


def write_invalid(invalid: pd.DataFrame, out: str | os.PathLike[str]) -> Path:
    """Write the invalid-rows listing beside ``out`` (atomically; header only when nothing was dropped,
    so that a stale listing from an earlier run never stands beside a new output)."""
    path = invalid_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            invalid.reindex(columns=list(INVALID_COLUMNS)).to_csv(fh, index=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read_hdf5(path: Path, key: str | None) -> tuple[pd.DataFrame, dict[str, object]]:
    import h5py

    # Imported here: catalog_inspect imports this module.  Its checks keep an uploaded file from
    # making us read other files (external links/storage, virtual datasets).
    from app.core.catalog_inspect import find_hdf5_table

    with h5py.File(path, "r") as f:
        group, datasets = find_hdf5_table(f, path, key)
        data: dict[str, np.ndarray] = {}
        for name, ds in datasets.items():
            arr = ds[()]
            if arr.dtype.kind in ("S", "O"):
                arr = np.char.decode(arr.astype("S"), "utf-8") if arr.dtype.kind == "S" else arr.astype(str)
            data[name] = arr
        meta = parse_metadata(group.attrs.get(METADATA_KEY))
    return pd.DataFrame(data), meta


def read_table(path: str | os.PathLike[str], mapping: Mapping[str, str] | str | None = None,
               fmt: str | None = None, hdf5_key: str | None = None, preset: str | None = None,
               preset_targets: bool = True) -> pd.DataFrame:
    """Read a CSV, Parquet or HDF5 table and map its columns onto the schema (no value checks).

    Any galaxypaint metadata stored in the file is returned in ``df.attrs["galaxypaint"]``.  ``preset``
    (``app.core.column_presets``: rockstar, consistent-trees, tng) converts a catalog's own columns and
    units first (galaxy properties too with ``preset_targets``); ``mapping`` wins over it, and the preset
    is recorded in the metadata.
    """
    return _read_table(path, mapping, fmt, hdf5_key, preset, preset_targets)[0]


def _read_table(path, mapping, fmt, hdf5_key, preset, preset_targets):
    """``read_table``, and the preset's plan for the table (None without a preset)."""
    p = Path(path)
    if not p.exists():
        raise CatalogError(f"no such file: {p}")
    if p.is_dir():
        raise CatalogError(f"{p} is a directory, not a table file")
    f = detect_format(p, fmt)
    meta: dict[str, object] = {}
    try:
        if f == "csv":
            df = pd.read_csv(p)
        elif f == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(p)
            meta = parse_metadata((table.schema.metadata or {}).get(METADATA_KEY.encode()))
            df = table.to_pandas()
        else:
            df, meta = _read_hdf5(p, hdf5_key)
    except CatalogError:
        raise
    except Exception as exc:  # the reader libraries' own errors, turned into one line
        raise CatalogError(f"cannot read {p} as {f}: {exc.__class__.__name__}: {exc}".splitlines()[0]) from exc
    if len(df) == 0:
        raise CatalogError(f"{p} holds no rows")
    mp = parse_column_mapping(mapping) if isinstance(mapping, str) else dict(mapping or {})
    plan = None
    if preset:
        from app.core.column_presets import plan_preset, preset_record  # it imports this module

        source = list(df.columns)
        plan = plan_preset(preset, source, mp, targets=preset_targets)
        df = plan.apply(df)
        meta = {**meta, **preset_record(preset, mp, columns=source)}  # the columns decide, e.g., M200c over Mvir
    df = canonicalize(df, mp)
    df.attrs[METADATA_KEY] = meta
    return df, plan


def load_catalog(path: str | os.PathLike[str], require: Iterable[str] = FEATURE_NAMES,
                 mapping: Mapping[str, str] | str | None = None, range_policy: RangePolicy | None = None,
                 fmt: str | None = None, hdf5_key: str | None = None,
                 on_invalid: str | None = None, preset: str | None = None,
                 preset_targets: bool | None = None) -> tuple[pd.DataFrame, ValidationReport]:
    """Read and validate a table; returns it with canonical column names and the report.

    Under ``on_invalid="drop"`` the invalid rows are gone from the table returned (the report lists
    them, with their row numbers in the file); refused if no row is left.  ``preset`` as in
    ``read_table`` (galaxy properties converted when ``require`` has one, or ``preset_targets``); a
    required column the preset cannot make is refused saying why."""
    require = list(require)
    if preset_targets is None:
        preset_targets = any(c in TARGET_NAMES for c in require)
    df, plan = _read_table(path, mapping, fmt, hdf5_key, preset, preset_targets)
    if plan is not None:
        plan.check_required(list(df.columns), require)
    report = validate(df, require=require, range_policy=range_policy, on_invalid=on_invalid)
    if report.n_dropped == len(df):
        raise CatalogError(f"every row of {path} is invalid ({report.dropped_text()}): nothing is left")
    return drop_invalid(df, report), report


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_table(df: pd.DataFrame, path: str | os.PathLike[str], fmt: str | None = None,
                metadata: Mapping[str, object] | None = None, hdf5_key: str | None = None) -> Path:
    """Write ``df`` atomically (temp file in the same directory, fsync, rename) and return the path.

    ``metadata`` (JSON-serializable) is stored in the Parquet schema or as an HDF5 attribute and
    comes back in ``read_table(...).attrs["galaxypaint"]``; CSV files carry no metadata.  None: the
    metadata ``df`` carries (``df.attrs["galaxypaint"]``: a catalog keeps its box and history).
    """
    if metadata is None and isinstance(df.attrs.get(METADATA_KEY), Mapping):
        metadata = df.attrs[METADATA_KEY]
    p = Path(path)
    f = detect_format(p, fmt)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    meta_json = json.dumps(dict(metadata), default=str) if metadata else None
    try:
        if f == "csv":
            df.to_csv(tmp, index=False)
        elif f == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            if meta_json:
                table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                       METADATA_KEY.encode(): meta_json.encode()})
            pq.write_table(table, tmp, row_group_size=1_000_000)
        else:
            import h5py

            with h5py.File(tmp, "w", track_order=True) as h5:
                group = h5.create_group(hdf5_key, track_order=True) if hdf5_key else h5
                group.attrs["columns"] = json.dumps([str(c) for c in df.columns])
                for name in df.columns:
                    values = df[name].to_numpy()
                    if values.dtype.kind in ("O", "U", "T"):
                        values = values.astype(str).astype("S")
                    group.create_dataset(str(name), data=values, chunks=True if len(values) else None)
                if meta_json:
                    group.attrs[METADATA_KEY] = meta_json
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, p)
        _fsync_dir(p.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p
