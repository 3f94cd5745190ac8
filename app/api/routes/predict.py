"""POST /v1/predict and GET /v1/schema: translate HTTP <-> the data plane, nothing more.

``/v1/predict`` takes a JSON body (``PredictRequest``) or an Arrow IPC stream
(``Content-Type: application/vnd.apache.arrow.stream``; the request's options as query parameters,
``PredictQuery``), and answers JSON (``PredictResponse``) or, when ``Accept`` names the Arrow stream
format, an Arrow IPC stream (``app.api.codecs``).  Both are predicted by the data plane through the
dynamic batcher (``app.api.batching``).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from app.api import codecs, dataplane
from app.api.deps import BatcherDep, MetricsDep, SettingsDep, StoreDep
from app.api.errors import responses
from app.api.schemas import PredictQuery, PredictRequest, PredictResponse
from app.core.schema import FEATURE_NAMES, describe

router = APIRouter(prefix="/v1", tags=["predict"])

#: the request body, declared by hand: the route reads it itself (JSON off the event loop, or Arrow)
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
    codecs.ARROW_STREAM: {"schema": {"type": "string", "format": "binary",
                                     "description": "Arrow IPC stream: columns " + ", ".join(FEATURE_NAMES)
                                                    + " and optionally ID (mode sample)"}}}},
    "responses": {"200": {"content": {codecs.ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}}}}}


@router.get("/schema", responses=responses())
def schema() -> dict:
    """Names, units, descriptions and valid ranges of every column (features, targets, positions)."""
    return {"columns": describe()}


def _json_request(body: bytes) -> tuple[PredictRequest, np.ndarray]:
    """The validated request and its halos [N, 5] (float64, schema order)."""
    req = PredictRequest.model_validate_json(body)
    if req.halos is not None:
        x = np.array([[getattr(h, f) for f in FEATURE_NAMES] for h in req.halos], dtype=np.float64)
    else:
        x = np.column_stack([np.asarray(req.columns[f], dtype=np.float64) for f in FEATURE_NAMES])  # type: ignore
    return req, x.reshape(-1, len(FEATURE_NAMES))


def _json_answer(values: dict[str, np.ndarray], answer: dict) -> bytes:
    return PredictResponse(predictions={t: v.tolist() for t, v in values.items()},
                           **answer).model_dump_json(exclude_none=True).encode()


def _check_count(n: int, limit: int) -> None:
    if n > limit:
        raise HTTPException(413, f"halos: {n:,} halos in one request, the limit is {limit:,}; "
                                 "split the batch or submit a paint job")
    if n == 0:
        raise HTTPException(422, "halos: the request holds no halo")


@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
             responses=responses(404, 503), openapi_extra=PREDICT_BODY)
async def predict(request: Request, query: Annotated[PredictQuery, Query()], store: StoreDep, settings: SettingsDep,
                  metrics: MetricsDep, batcher: BatcherDep) -> Response:
    media = codecs.media_type(request)
    body = await request.body()  # bounded by the middleware (MAX_JSON_BYTES)
    large = len(body) > settings.json_offload_bytes
    if media == codecs.ARROW_STREAM:
        table = await codecs.off_loop(large, codecs.read_table, body, settings.max_batch_halos)
        _check_count(table.num_rows, settings.max_batch_halos)
        x, ids = await codecs.off_loop(large, codecs.features, table)
        variant, targets, model, offset = query.variant, query.target_list(), query.model, query.offset
        mode = dataplane.request_mode(query.mode, query.seed, query.quantiles)
    elif codecs.is_json(media):
        given = sorted(set(request.query_params) & set(PredictQuery.model_fields))
        if given:
            raise HTTPException(422, f"{given[0]}: query parameters configure Arrow bodies; a JSON request carries "
                                     f"{', '.join(given)} in its body")
        req, x = await codecs.off_loop(large, _json_request, body)
        _check_count(len(x), settings.max_batch_halos)
        variant, targets, model, ids, offset = req.variant, req.targets, req.model, req.ids, req.offset
        mode = dataplane.request_mode(req.mode, req.seed, req.quantiles)
    else:
        raise HTTPException(415, f"content-type: {media[:60]!r} is not supported (application/json or "
                                 f"{codecs.ARROW_STREAM})")
    n = len(x)
    try:
        pred = await batcher.predict(n, lambda: dataplane.plan(store, x, variant, targets, model, mode, ids, offset))
    except dataplane.DataPlaneError as exc:
        if exc.field == "ids" and media == codecs.ARROW_STREAM:  # an Arrow request's ids are its ID column
            raise dataplane.DataPlaneError(str(exc), codecs.ID_COLUMN, exc.status) from None
        raise
    for target in pred.targets:
        metrics.predictions.labels(target, "v1").inc(n)
    answer = {"n_halos": n, "variant": variant, "path": variant, "units": pred.units, "models": pred.models,
              "warnings": pred.warnings, **mode.describe()}
    if codecs.accepts_arrow(request):
        stream = await codecs.off_loop(large, codecs.write_stream, pred.values, pred.units, answer)
        return Response(stream, media_type=codecs.ARROW_STREAM)
    # serialized here (pydantic, in the thread pool when large), not re-validated by FastAPI's response_model
    content = await codecs.off_loop(large, _json_answer, pred.values, answer)
    return Response(content, media_type="application/json")
