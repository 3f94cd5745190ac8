"""Request and response bodies of the prediction routes: JSON parsed off the event loop, and Arrow IPC.

Bodies reach these functions already bounded (``app.api.middleware``: never more than the route's
limit is read into memory).  JSON bodies above ``GALAXYPAINT_JSON_OFFLOAD_BYTES`` are parsed and
validated (pydantic, the route's protocol model) in the thread pool, so one client's 10 MB batch does
not stall every other client's request; validation errors keep FastAPI's shape (422 naming the field).

Arrow IPC (``application/vnd.apache.arrow.stream``): a stream of one or more record batches whose
columns are the 5 features (float64, float32 or integers) and optionally ``ID`` (integers keying the
draws of mode sample); answers as a stream with one float64 column per output and the JSON answer's
other fields (units, models, warnings, mode) in the schema metadata under ``galaxypaint``.

Binary tensor data (the Open Inference Protocol extension of KServe and Triton): a body whose
``Inference-Header-Content-Length: L`` header is set is a JSON header of L bytes followed by the raw
little-endian bytes of each input carrying ``parameters.binary_data_size``, concatenated in input
order; an answer is framed the same way.  Every size is checked against the bytes actually received.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pyarrow as pa
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.dataplane import DataPlaneError
from app.core.schema import FEATURE_NAMES

ARROW_STREAM = "application/vnd.apache.arrow.stream"
#: the Arrow column keying each halo's draw (mode sample), as the ``ids`` of a JSON request
ID_COLUMN = "ID"
T = TypeVar("T")


def media_type(request: Request) -> str:
    """The request's ``Content-Type`` without parameters, lower case ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_json(media: str) -> bool:
    return media in ("", "application/json") or media.endswith("+json")


def accepts_arrow(request: Request) -> bool:
    """Whether the client's ``Accept`` names the Arrow IPC stream format."""
    return any(part.split(";")[0].strip().lower() == ARROW_STREAM
               for part in request.headers.get("accept", "").split(","))


async def off_loop(large: bool, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``: in the thread pool when ``large`` (parsing or writing a large body on the event loop
    would hold every other request), inline otherwise (a thread hand-off costs more than a small body).
    A pydantic ``ValidationError`` becomes the 422 FastAPI gives for a declared body (naming the field)."""
    try:
        if large:
            return await run_in_threadpool(fn, *args)
        return fn(*args)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                      for e in exc.errors(include_url=False)]) from None


# ----------------------------------------------------------------------------- Arrow IPC

_COLUMNS_HELP = f"columns {', '.join(FEATURE_NAMES)} (float64, float32 or integers) and optionally {ID_COLUMN} " \
                "(integers, mode sample)"


def read_table(body: bytes, max_rows: int) -> pa.Table:
    """The record batches of an Arrow IPC stream, as one table (zero-copy over ``body``), schema checked:
    exactly the 5 features and optionally ``ID``; 413 beyond ``max_rows`` rows."""
    try:
        table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataPlaneError(f"not a valid Arrow IPC stream ({str(exc)[:200]}); send the record batches written by "
                             f"pyarrow.ipc.new_stream with {_COLUMNS_HELP}", "body", status=400) from None
    names = table.column_names
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataPlaneError(f"column {', '.join(repeated)[:200]} appears more than once", repeated[0][:64])
    missing = [f for f in FEATURE_NAMES if f not in names]
    extra = [n for n in names if n not in FEATURE_NAMES and n != ID_COLUMN]
    if missing or extra:
        raise DataPlaneError("expected " + _COLUMNS_HELP + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; unknown {', '.join(extra)[:200]}" if extra else ""),
                             (extra or missing)[0][:64])
    if table.num_rows > max_rows:
        raise DataPlaneError(f"{table.num_rows:,} halos in one request, the limit is {max_rows:,}; split the batch "
                             "or submit a paint job", "halos", status=413)
    return table


def _column(table: pa.Table, name: str, integers_only: bool = False) -> np.ndarray:
    col = table.column(name)
    kind = col.type
    numeric = pa.types.is_integer(kind) or (not integers_only and (pa.types.is_float32(kind)
                                                                    or pa.types.is_float64(kind)))
    if not numeric:
        want = "integers (int64 or uint64)" if integers_only else "float64, float32 or integers"
        raise DataPlaneError(f"type {kind} is not supported: {want}", name)
    if col.null_count:
        first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataPlaneError(f"{col.null_count:,} null value(s), the first at halo {first}: every halo needs a "
                             "value", name)
    return col.to_numpy()


def features(table: pa.Table) -> tuple[np.ndarray, np.ndarray | None]:
    """Features [N, 5] (float64, schema order; NaN and ranges are checked by the data plane, naming the
    column) and the ``ID`` column (int64 or uint64 [N]) or None."""
    x = np.empty((table.num_rows, len(FEATURE_NAMES)))
    for j, name in enumerate(FEATURE_NAMES):
        x[:, j] = _column(table, name)
    ids = _column(table, ID_COLUMN, integers_only=True) if ID_COLUMN in table.column_names else None
    return x, ids


def write_stream(values: dict[str, np.ndarray], units: dict[str, str], metadata: dict) -> bytes:
    """An Arrow IPC stream of one record batch: one float64 column per output (its unit in the field's
    metadata), ``metadata`` as JSON in the schema's metadata under ``galaxypaint``."""
    fields = [pa.field(name, pa.float64(), nullable=False, metadata={"unit": units.get(name, "")})
              for name in values]
    schema = pa.schema(fields, metadata={"galaxypaint": json.dumps(metadata)})
    batch = pa.record_batch([pa.array(np.asarray(v, dtype=np.float64)) for v in values.values()], schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


# ----------------------------------------------------------------------------- binary tensor data (OIP)

#: the header giving the JSON header's length in a binary-framed body (request and response)
HEADER_LENGTH = "Inference-Header-Content-Length"
#: OIP datatype -> numpy little-endian dtype, for the datatypes that travel as binary here
BINARY_DTYPES = {"FP64": np.dtype("<f8"), "FP32": np.dtype("<f4")}


def split_binary(body: bytes, declared: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary part (zero-copy) of a request body; ``declared`` is the
    ``Inference-Header-Content-Length`` header (None: the whole body is JSON)."""
    if declared is None:
        return body, memoryview(b"")
    text = declared.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise DataPlaneError(f"{declared[:20]!r} is not a byte count", HEADER_LENGTH, status=400)
    n = int(text)
    if n == 0:
        raise DataPlaneError("0: the JSON inference header cannot be empty", HEADER_LENGTH, status=400)
    if n > len(body):
        raise DataPlaneError(f"{n:,} bytes declared for the JSON header, but the body holds only {len(body):,} "
                             "bytes", HEADER_LENGTH, status=400)
    return body[:n], memoryview(body)[n:]


def binary_chunks(inputs: list, binary: memoryview, framed: bool) -> dict[str, memoryview]:
    """Input name -> its bytes, for the inputs (pydantic ``TensorIn``) carrying ``parameters.binary_data_size``,
    which must add up exactly to the bytes after the JSON header.  ``framed``: whether the request declared
    ``Inference-Header-Content-Length`` (without it, no input may be binary)."""
    sized = []
    for t in inputs:
        size = (t.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        field = f"inputs.{t.name[:64]}.parameters.binary_data_size"
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise DataPlaneError(f"{str(size)[:20]} is not a byte count", field, status=400)
        if t.data is not None:
            raise DataPlaneError("give the tensor's values either as data or as binary data, not both", field,
                                 status=400)
        if not framed:
            raise DataPlaneError(f"binary data needs the {HEADER_LENGTH} header (the JSON header's length in "
                                 "bytes; the binary data follows it)", field, status=400)
        sized.append((t.name, size))
    total = sum(size for _, size in sized)
    if total != len(binary):
        raise DataPlaneError(f"the inputs' binary_data_size add up to {total:,} bytes, but {len(binary):,} bytes "
                             f"follow the JSON header ({HEADER_LENGTH})", "body", status=400)
    chunks: dict[str, memoryview] = {}
    start = 0
    for name, size in sized:
        if name in chunks:
            raise DataPlaneError("appears more than once", f"inputs.{name[:64]}", status=400)
        chunks[name] = binary[start:start + size]
        start += size
    return chunks


def binary_values(raw: memoryview, datatype: str, shape: list[int], field: str) -> np.ndarray:
    """A binary tensor as float64 of ``shape`` (already checked): exactly rows x columns values of the
    datatype (FP32 values are widened exactly)."""
    dtype = BINARY_DTYPES[datatype]
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if len(raw) != expected:
        raise DataPlaneError(f"{len(raw):,} bytes, but shape {shape} of {datatype} takes {expected:,} "
                             f"({dtype.itemsize} bytes per value)", f"{field}.parameters.binary_data_size",
                             status=400)
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.float64)


def binary_response(header: bytes, payloads: list[np.ndarray]) -> tuple[bytes, int]:
    """A binary-framed answer: the JSON header then each payload's little-endian float64 bytes; and the
    header's length (for ``Inference-Header-Content-Length``)."""
    return b"".join([header, *(np.ascontiguousarray(p, dtype="<f8").tobytes() for p in payloads)]), len(header)
