"""Request and response bodies of the prediction routes: JSON parsed off the event loop, and Arrow IPC.

Bodies reach these functions already bounded (``app.api.middleware``: never more than the route's
limit is read into memory).  JSON bodies above ``GALAXYPAINT_JSON_OFFLOAD_BYTES`` are parsed and
validated (pydantic, the route's protocol model) in the thread pool, so one client's 10 MB batch does
not stall every other client's request; validation errors keep FastAPI's shape (422 naming the field).

Arrow IPC (``application/vnd.apache.arrow.stream``): a stream of one or more record batches whose
columns are the 5 features (float64, float32 or integers) and optionally ``ID`` (integers keying the
draws of mode sample); answers as a stream with one float64 column per output and the JSON answer's
other fields (units, models, warnings, mode) in the schema metadata under ``galaxypaint``.
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
