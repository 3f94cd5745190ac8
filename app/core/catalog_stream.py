"""Catalogs read and written in row chunks, so memory stays flat whatever the catalog size.

``ChunkReader`` yields canonical-named DataFrames from Parquet (row batches), HDF5 (slices of the
1-D column datasets ``write_table`` writes) or CSV (pandas chunks); ``ChunkWriter`` appends chunks
to a temporary file (Parquet row groups, resizable HDF5 datasets, CSV) and renames it into place
only on ``commit()`` — an exception inside ``with ChunkWriter(...)`` leaves no output.

HDF5 tables are found through ``app.core.catalog_inspect.find_hdf5_table``, so a client's file cannot
make the reader return another file's bytes; ``max_bytes`` bounds the decompressed size (checked
from metadata, or while counting a gzip'ed CSV's rows) before any chunk is read.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd

from app.core.catalog_inspect import (check_decoded_size, find_hdf5_table, hdf5_decoded_bytes, is_gzip,
                                 parquet_decoded_bytes, scan_csv)
from app.core.catalogs import (METADATA_KEY, CatalogError, _fsync_dir, canonicalize, detect_format, parse_column_mapping,
                               parse_metadata)


class ChunkReader:
    """Row chunks of a catalog with schema column names (``mapping`` as in ``--columns``).

    ``max_bytes`` (None: no limit) refuses a catalog whose decompressed size is larger.  ``preset``
    (``app.core.column_presets``) converts the catalog's own columns into the halo features and positions
    in every chunk (``mapping`` wins over it); ``preset_plan`` is then its plan for this catalog.
    ``metadata``: the galaxypaint metadata the file stores (its box, how it was made), {} for none.
    """

    def __init__(self, path: str | os.PathLike[str], mapping: Mapping[str, str] | str | None = None,
                 fmt: str | None = None, max_bytes: int | None = None, preset: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CatalogError(f"no such file: {self.path}")
        self.format = detect_format(self.path, fmt)
        self._h5 = self._compression = None
        self._datasets: dict = {}
        self.metadata: dict = {}
        if self.format == "parquet":
            import pyarrow.parquet as pq

            try:
                self._pq = pq.ParquetFile(self.path)
            except Exception as exc:
                raise CatalogError(f"cannot read {self.path} as Parquet: {exc}") from None
            check_decoded_size(self.path, parquet_decoded_bytes(self._pq, self.path), max_bytes)
            source = list(self._pq.schema_arrow.names)
            self.n_rows = self._pq.metadata.num_rows
            self.metadata = parse_metadata((self._pq.schema_arrow.metadata or {}).get(METADATA_KEY.encode()))
        elif self.format == "hdf5":
            source = self._open_hdf5(max_bytes)
        else:
            # Sized (within max_bytes) before pandas sees the file: a bomb stops at the limit.
            scan_csv(self.path, max_bytes)
            # Decided by content as the size was, whatever the file is named.
            self._compression = "gzip" if is_gzip(self.path) else None
            try:
                source = list(pd.read_csv(self.path, nrows=0, compression=self._compression).columns)
                # data rows as pandas parses them (blank lines skipped, quoted newlines kept), not lines:
                # chunk offsets, row-number ids and the Dask engine's partitions all count these
                self.n_rows = sum(len(c) for c in pd.read_csv(self.path, usecols=[0], chunksize=1 << 20,
                                                              compression=self._compression))
            except (OSError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
                raise CatalogError(f"cannot read {self.path} as CSV: {exc}") from None
        mp = parse_column_mapping(mapping)
        self.preset_plan = None
        made: list[str] = []
        if preset:
            from app.core.column_presets import plan_preset

            try:
                self.preset_plan = plan_preset(preset, source, mp, targets=False)
            except CatalogError:
                self.close()
                raise
            made = [c for c in self.preset_plan.columns if c not in source]
        renamed = canonicalize(pd.DataFrame(columns=[*source, *made]), mp)
        self.source_columns = source
        self.columns = [str(c) for c in renamed.columns]
        self._rename = {s: c for s, c in zip([*source, *made], self.columns) if s != c}
        self._to_source = dict(zip(self.columns, [*source, *made]))

    def _open_hdf5(self, max_bytes: int | None) -> list[str]:
        import h5py

        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise CatalogError(f"cannot read {self.path} as HDF5: {exc}") from None
        try:
            group, self._datasets = find_hdf5_table(self._h5, self.path)
            self.metadata = parse_metadata(group.attrs.get(METADATA_KEY))
            check_decoded_size(self.path, hdf5_decoded_bytes(self._datasets), max_bytes)
        except Exception as exc:
            self.close()  # the caller gets no reader to close
            if isinstance(exc, CatalogError):
                raise
            raise CatalogError(f"cannot read {self.path} as HDF5: {exc}") from None
        self.n_rows = next(iter(self._datasets.values())).shape[0]
        return list(self._datasets)

    def _hdf5_slice(self, names: list[str], start: int, stop: int) -> pd.DataFrame:
        data = {}
        for n in names:
            # The datasets checked at open time, not names looked up (and links followed) again.
            arr = self._datasets[n][start:stop]
            if arr.dtype.kind == "S":
                arr = np.char.decode(arr, "utf-8")
            data[n] = arr
        return pd.DataFrame(data)

    def chunks(self, chunk_rows: int) -> Iterator[tuple[int, pd.DataFrame]]:
        """(first row, DataFrame) for consecutive chunks of at most ``chunk_rows`` rows."""
        start = 0
        if self.format == "parquet":
            for batch in self._pq.iter_batches(batch_size=chunk_rows):
                df = self._schema_names(batch.to_pandas(), start)
                yield start, df
                start += len(df)
        elif self.format == "hdf5":
            for a in range(0, self.n_rows, chunk_rows):
                rows = self._hdf5_slice(self.source_columns, a, min(a + chunk_rows, self.n_rows))
                yield a, self._schema_names(rows, a)
        else:
            for df in pd.read_csv(self.path, chunksize=chunk_rows, compression=self._compression):
                yield start, self._schema_names(df, start)
                start += len(df)

    def _schema_names(self, df: pd.DataFrame, start: int) -> pd.DataFrame:
        """Rows read under the file's names (the first is row ``start``) with the preset's columns added,
        under schema names."""
        if self.preset_plan is not None:
            df = self.preset_plan.apply(df, row_offset=start)
        return df.rename(columns=self._rename)

    def read_rows(self, start: int, stop: int) -> pd.DataFrame:
        """Rows [start, stop) with schema names (Parquet: only the row groups that hold them)."""
        stop = min(stop, self.n_rows)
        if self.format == "parquet":
            sizes = [self._pq.metadata.row_group(i).num_rows for i in range(self._pq.num_row_groups)]
            offsets = np.concatenate([[0], np.cumsum(sizes)])
            groups = [i for i in range(len(sizes)) if offsets[i] < stop and offsets[i + 1] > start]
            table = self._pq.read_row_groups(groups)
            first = int(offsets[groups[0]]) if groups else start
            df = table.slice(start - first, stop - start).to_pandas()
        elif self.format == "hdf5":
            df = self._hdf5_slice(self.source_columns, start, stop)
        else:  # data rows are found only by parsing from the top (blank lines, quoted newlines)
            parts, seen = [], 0
            for chunk in pd.read_csv(self.path, chunksize=1 << 18, compression=self._compression):
                a, b = max(start - seen, 0), min(stop - seen, len(chunk))
                if a < b:
                    parts.append(chunk.iloc[a:b])
                seen += len(chunk)
                if seen >= stop:
                    break
            df = pd.concat(parts, ignore_index=True) if parts else pd.read_csv(self.path, nrows=0)
        return self._schema_names(df, start)

    def read_columns(self, names: list[str]) -> pd.DataFrame:
        """Whole columns (schema names), e.g. the positions needed to compute Delta3_h."""
        missing = [n for n in names if n not in self._to_source]
        if missing:
            raise CatalogError(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} in {self.path}")
        src = [self._to_source[n] for n in names]
        made = [s for s in src if s not in self.source_columns]  # made by the preset, from other columns
        read = self.preset_plan.sources_of(src) if made else src  # type: ignore[union-attr]
        if self.format == "parquet":
            df = self._pq.read(columns=read).to_pandas()
        elif self.format == "hdf5":
            df = self._hdf5_slice(read, 0, self.n_rows)
        else:
            df = pd.read_csv(self.path, usecols=read, compression=self._compression)[read]
        if made:
            df = self.preset_plan.apply(df, only=made)  # type: ignore[union-attr]
        return df[src].rename(columns=dict(zip(src, names)))

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> "ChunkReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ChunkWriter:
    """Append DataFrame chunks to ``path`` through a temporary file; ``commit()`` renames it in place."""

    def __init__(self, path: str | os.PathLike[str], metadata: Mapping[str, object] | None = None,
                 fmt: str | None = None) -> None:
        self.path = Path(path)
        self.format = detect_format(self.path, fmt)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.meta_json = json.dumps(dict(metadata), default=str) if metadata else None
        self.rows = 0
        self._pq = self._schema = self._h5 = None
        self._columns: list[str] | None = None

    def write(self, df: pd.DataFrame) -> None:
        if self._columns is None:
            self._columns = [str(c) for c in df.columns]
        elif [str(c) for c in df.columns] != self._columns:
            raise CatalogError(f"chunk columns {list(df.columns)} differ from the first chunk's {self._columns}")
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            if self._pq is None:
                table = pa.Table.from_pandas(df, preserve_index=False)
                schema = table.schema.remove_metadata()
                if self.meta_json:
                    schema = schema.with_metadata({METADATA_KEY.encode(): self.meta_json.encode()})
                self._schema = schema
                self._pq = pq.ParquetWriter(self.tmp, schema)
            self._pq.write_table(pa.Table.from_pandas(df, schema=self._schema, preserve_index=False))
        elif self.format == "hdf5":
            import h5py

            if self._h5 is None:
                self._h5 = h5py.File(self.tmp, "w", track_order=True)
                self._h5.attrs["columns"] = json.dumps(self._columns)
                if self.meta_json:
                    self._h5.attrs[METADATA_KEY] = self.meta_json
                for name in self._columns:
                    values = _h5_values(df[name])
                    self._h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=values.dtype,
                                            chunks=(max(1024, min(len(df), 1 << 16)),))
            for name in self._columns:
                ds = self._h5[name]
                values = _h5_values(df[name])
                ds.resize((self.rows + len(df),))
                ds[self.rows:] = values
        else:
            df.to_csv(self.tmp, mode="w" if self.rows == 0 else "a", header=self.rows == 0, index=False)
        self.rows += len(df)

    def commit(self) -> Path:
        if self._pq is not None:
            self._pq.close()
        if self._h5 is not None:
            self._h5.close()
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        try:
            if self._pq is not None:
                self._pq.close()
            if self._h5 is not None:
                self._h5.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ChunkWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _h5_values(col: pd.Series) -> np.ndarray:
    values = col.to_numpy()
    if values.dtype.kind in ("O", "U", "T"):
        values = values.astype(str).astype("S")
    return values
