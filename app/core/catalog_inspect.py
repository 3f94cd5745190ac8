"""Safety checks for catalog files that come from clients, before anything reads them.

Threat: a paint job's catalog is an uploaded file, so its content is chosen by the client.
HDF5 can make a dataset show another file's bytes (external storage, external links, virtual
datasets); read naively, those bytes would come back in the painted output.  And a small file can
decompress into something huge (a gzip'ed CSV, compressed Parquet pages, compressed HDF5 chunks),
exhausting the server's memory.  So:

* Every HDF5 catalog read anywhere goes through :func:`find_hdf5_table`, which reaches each member
  through a hard link only (links are inspected without following them), refuses virtual and
  externally stored datasets, and allows only the filters HDF5 ships with plus lzf (an unknown
  filter would make HDF5 load plugin code).
* :func:`inspect_catalog` measures a catalog's decompressed size from its metadata (HDF5 shapes,
  Parquet footers) or by stream-decompressing (gzip CSV), without reading whole columns, and
  refuses it beyond a limit.
* HDF5 is a C library: a malicious file may crash it (a segfault takes the whole process with it).
  :func:`inspect_catalog_isolated` therefore runs the inspection in a subprocess
  (``python -m app.core.catalog_inspect PATH --max-bytes N``) so a server survives such a file, and
  turns every outcome into a :class:`CatalogError` with one readable sentence.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, Mapping

from app.core.box import recorded_box
from app.core.catalogs import METADATA_KEY, CatalogError, detect_format, parse_metadata

# Filter ids registered by HDF5 itself (H5Zpublic.h) and lzf, which h5py registers in-process.
# Any other id would be resolved by loading a plugin library: code chosen by the file.
_ALLOWED_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset",
                    32000: "lzf"}
# Decoded bytes per value of each Parquet physical type.  Dictionary/RLE encoding makes a column's
# "uncompressed" size tiny for repeated values, yet decoding still yields one value per row.
_PARQUET_WIDTH = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8,
                  "BYTE_ARRAY": 8}  # variable-length values: count at least an offset per value
_BLOCK = 1 << 20
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _hard_member(group: Any, name: str, path: Path) -> Any:
    """Open ``group[name]`` only after checking that the link stays inside the file."""
    import h5py

    try:
        link = group.get(name, getlink=True)
    except TypeError:  # a user-defined link class, which h5py cannot even describe
        link = None
    if isinstance(link, h5py.ExternalLink):
        raise CatalogError(f"member {name!r} in {path.name} is an external link to {link.filename}: "
                           "only data stored inside the file is read")
    if isinstance(link, h5py.SoftLink):
        raise CatalogError(f"member {name!r} in {path.name} is a soft link to {link.path}: "
                           "only members stored directly in the group (hard links) are read")
    if not isinstance(link, h5py.HardLink):
        raise CatalogError(f"member {name!r} in {path.name} is a user-defined link: "
                           "only members stored directly in the group (hard links) are read")
    return group[name]


def _hard_members(group: Any, path: Path) -> dict[str, Any]:
    return {name: _hard_member(group, name, path) for name in group.keys()}  # keys() follows nothing


def _check_dataset(ds: Any, name: str, path: Path) -> None:
    from h5py import h5d

    # The creation property list describes where the bytes live; read it before shape or data,
    # which for a virtual dataset could already touch its source files.
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5d.VIRTUAL:
        raise CatalogError(f"dataset {name!r} in {path.name} is a virtual dataset mapping other files: "
                           "only data stored inside the file is read")
    if layout not in (h5d.CONTIGUOUS, h5d.CHUNKED, h5d.COMPACT):
        raise CatalogError(f"dataset {name!r} in {path.name} has an unsupported storage layout ({layout})")
    if dcpl.get_external_count() > 0:
        target = os.fsdecode(dcpl.get_external(0)[0])
        raise CatalogError(f"dataset {name!r} in {path.name} keeps its data in the external file {target}: "
                           "only data stored inside the file is read")
    for i in range(dcpl.get_nfilters()):
        code, _flags, _values, fname = dcpl.get_filter(i)
        if code not in _ALLOWED_FILTERS:
            raise CatalogError(f"dataset {name!r} in {path.name} uses HDF5 filter {code} "
                               f"({fname.decode(errors='replace') or 'unknown'}): only "
                               f"{', '.join(_ALLOWED_FILTERS.values())} are allowed")


def check_hdf5_group(group: Any, path: Path) -> dict[str, Any]:
    """The checked 1-D column datasets of a table group, in the group's ``columns`` order.

    Every member must be a hard link, every dataset stored inside the file with allowed filters,
    and all columns of the same length; otherwise :class:`CatalogError`.
    """
    import h5py

    columns = {}
    for name, obj in _hard_members(group, path).items():
        if isinstance(obj, h5py.Dataset):
            _check_dataset(obj, name, path)
            if obj.ndim == 1:
                columns[name] = obj
    if not columns:
        raise CatalogError(f"{path}: no 1-D column datasets found")
    order = group.attrs.get("columns")
    try:
        wanted = [str(c) for c in json.loads(order)] if isinstance(order, (str, bytes)) else []
    except (ValueError, TypeError):  # the order is a courtesy; a garbled one is ignored
        wanted = []
    names = [c for c in wanted if c in columns] + [c for c in columns if c not in wanted]
    first = columns[names[0]].shape[0]
    for name in names:
        if columns[name].shape[0] != first:
            raise CatalogError(f"{path}: dataset {name} has {columns[name].shape[0]} rows, "
                               f"dataset {names[0]} has {first}")
    return {name: columns[name] for name in names}


def find_hdf5_table(f: Any, path: Path, key: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(group, checked column datasets) of the table in the open HDF5 file ``f``.

    The table is the group ``key`` if given, else the file root if it holds datasets, else its
    single sub-group.  Links are checked before they are followed, at every step.
    """
    import h5py

    group = f
    if key:
        for part in (p for p in key.split("/") if p):
            if part not in list(group.keys()):  # `in group` would follow the link to test it
                raise CatalogError(f"{path} has no group {key!r} (it has: {', '.join(f.keys())})")
            group = _hard_member(group, part, path)
            if not isinstance(group, h5py.Group):
                raise CatalogError(f"{path} has no group {key!r}: {part!r} is not a group")
    else:
        members = _hard_members(f, path)
        if not any(isinstance(v, h5py.Dataset) for v in members.values()):
            groups = [k for k, v in members.items() if isinstance(v, h5py.Group)]
            if len(groups) != 1:
                raise CatalogError(f"{path} has no column datasets at its root; say which group "
                                   f"holds the table (groups: {', '.join(groups) or 'none'})")
            group = members[groups[0]]
    return group, check_hdf5_group(group, path)


def hdf5_decoded_bytes(datasets: Mapping[str, Any]) -> int:
    """Bytes the columns take once decompressed (a chunk larger than its dataset counts in full)."""
    total = 0
    for ds in datasets.values():
        values = ds.shape[0]
        if ds.chunks:
            values = max(values, int(ds.chunks[0]))
        total += values * ds.dtype.itemsize  # vlen strings: their heap is uncompressed file content
    return total


def parquet_decoded_bytes(pf: Any, path: Path) -> int:
    """Bytes a Parquet file's columns take once decoded, from its footer (no data pages read)."""
    md = pf.metadata
    widths = []
    for j in range(md.num_columns):
        col = md.schema.column(j)
        widths.append(col.length if col.physical_type == "FIXED_LEN_BYTE_ARRAY" else
                      _PARQUET_WIDTH.get(col.physical_type, 0))
    total = 0
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        for j in range(rg.num_columns):
            chunk = rg.column(j)
            if chunk.file_path:
                raise CatalogError(f"column {chunk.path_in_schema!r} in {path.name} is stored in another "
                                   f"file ({chunk.file_path}): only data stored inside the file is read")
            total += max(chunk.total_uncompressed_size, rg.num_rows * widths[j])
    return total


def is_gzip(path: Path) -> bool:
    """Gzip by name or by content: a renamed bomb must be measured as one."""
    with open(path, "rb") as fh:
        return str(path).lower().endswith(".gz") or fh.read(2) == b"\x1f\x8b"


def check_decoded_size(path: Path, size: int, max_bytes: int | None, at_least: bool = False) -> None:
    """Refuse a catalog whose decompressed ``size`` exceeds ``max_bytes`` (None: no limit)."""
    if max_bytes is not None and size > max_bytes:
        raise CatalogError(f"the decompressed size of {path.name} ({'at least ' if at_least else ''}{size:,} "
                           f"bytes) exceeds the limit of {max_bytes:,} bytes")


def scan_csv(path: Path, max_bytes: int | None = None) -> tuple[int, int]:
    """(data rows, decompressed bytes) of a plain or gzip'ed CSV, read in blocks.

    Stops as soon as more than ``max_bytes`` came out, so a decompression bomb costs one block
    of memory and at most ``max_bytes`` of work.
    """
    path = Path(path)
    size = newlines = 0
    last = b"\n"
    gz = False
    try:
        gz = is_gzip(path)
        if not gz:
            check_decoded_size(path, path.stat().st_size, max_bytes)
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            while block := fh.read(_BLOCK):
                size += len(block)
                check_decoded_size(path, size, max_bytes, at_least=True)
                newlines += block.count(b"\n")
                last = block[-1:]
    except (OSError, EOFError, zlib.error) as exc:
        raise CatalogError(f"cannot read {path} as {'gzip-compressed ' if gz else ''}CSV: {exc}") from None
    lines = newlines + (last != b"\n")  # a last line without a newline still counts
    return max(lines - 1, 0), size


def inspect_catalog(path: str | os.PathLike[str], max_bytes: int) -> dict[str, Any]:
    """Check a catalog file without reading its columns; returns {format, rows, columns, bytes, box}.

    ``bytes`` is the decompressed size; over ``max_bytes`` (or any unsafe HDF5 construct, or an
    unreadable file) raises :class:`CatalogError`.  ``box``: the box side [Mpc/h] the file's
    galaxypaint metadata records, None without one (CSV files carry no metadata).
    """
    meta: Any = None
    p = Path(path)
    if not p.is_file():
        raise CatalogError(f"no such file: {p}")
    fmt = detect_format(p)
    try:
        if fmt == "hdf5":
            import h5py

            with h5py.File(p, "r") as f:
                group, datasets = find_hdf5_table(f, p)
                meta = group.attrs.get(METADATA_KEY)
                size = hdf5_decoded_bytes(datasets)
                rows = next(iter(datasets.values())).shape[0]
                columns = list(datasets)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(p)
            meta = (pf.schema_arrow.metadata or {}).get(METADATA_KEY.encode())
            size = parquet_decoded_bytes(pf, p)
            rows, columns = pf.metadata.num_rows, list(pf.schema_arrow.names)
        else:
            import pandas as pd

            rows, size = scan_csv(p, max_bytes)
            # Only now is pandas safe to run: the whole text is known to fit in max_bytes.
            columns = list(pd.read_csv(p, nrows=0, compression="gzip" if is_gzip(p) else None).columns)
    except CatalogError:
        raise
    except Exception as exc:  # the libraries' own errors, turned into one line
        raise CatalogError(f"cannot read {p} as {fmt}: {exc.__class__.__name__}: {exc}".splitlines()[0]) from exc
    check_decoded_size(p, size, max_bytes)
    return {"format": fmt, "rows": int(rows), "columns": [str(c) for c in columns], "bytes": int(size),
            "box": recorded_box(parse_metadata(meta))}


def _inspector_command(path: Path, max_bytes: int) -> list[str]:
    # An absolute path: the child runs in another directory, and it cannot be taken for an option.
    return [sys.executable, "-m", "app.core.catalog_inspect", os.path.abspath(path), "--max-bytes", str(max_bytes)]


def inspect_catalog_isolated(path: str | os.PathLike[str], max_bytes: int, timeout: float = 120.0) -> dict[str, Any]:
    """:func:`inspect_catalog` in a subprocess, so a crash in HDF5 cannot take the caller down."""
    cmd = _inspector_command(Path(path), int(max_bytes))
    try:
        # cwd: `-m app...` must import this checkout even where the package is not installed.
        proc = subprocess.run(cmd, cwd=_PACKAGE_ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                              encoding="utf-8", errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CatalogError(f"the file could not be inspected safely (the inspector took longer than "
                           f"{timeout:g} s)") from None
    if proc.returncode == 0:
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise CatalogError("the file could not be inspected safely (the inspector printed no summary)") from None
    if proc.returncode == 1:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise CatalogError(lines[-1] if lines else "the file could not be inspected (the inspector failed)")
    if proc.returncode < 0:
        try:
            why = f"signal {signal.Signals(-proc.returncode).name}"
        except ValueError:
            why = f"signal {-proc.returncode}"
    else:
        why = f"exit code {proc.returncode}"
    raise CatalogError(f"the file could not be inspected safely (the inspector crashed: {why})")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of bytes")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.core.catalog_inspect",
                                     description="Check an untrusted catalog file; print a JSON summary.")
    parser.add_argument("path", help="CSV (.csv, .csv.gz), Parquet or HDF5 catalog")
    parser.add_argument("--max-bytes", type=_positive_int, required=True,
                        help="largest decompressed size accepted, in bytes")
    args = parser.parse_args(argv)  # usage errors exit with status 2
    try:
        summary = inspect_catalog(args.path, args.max_bytes)
    except CatalogError as exc:
        print(str(exc).replace("\r", " ").replace("\n", " "), file=sys.stderr)  # the parent reads one line
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
