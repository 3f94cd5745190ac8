"""POST /v1/predict and GET /v1/schema: translate HTTP <-> the data plane, nothing more."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from app.api import dataplane
from app.api.deps import MetricsDep, SettingsDep, StoreDep
from app.api.errors import responses
from app.api.schemas import PredictRequest, PredictResponse
from app.core.schema import FEATURE_NAMES, describe

router = APIRouter(prefix="/v1", tags=["predict"])


@router.get("/schema", responses=responses())
def schema() -> dict:
    """Names, units, descriptions and valid ranges of every column (features, targets, positions)."""
    return {"columns": describe()}


@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
             responses=responses(404, 503))
async def predict(req: PredictRequest, store: StoreDep, settings: SettingsDep, metrics: MetricsDep) -> PredictResponse:
    n = req.n_halos()
    if n > settings.max_batch_halos:
        raise HTTPException(413, f"halos: {n:,} halos in one request, the limit is {settings.max_batch_halos:,}; "
                                 "split the batch or submit a paint job")
    if n == 0:
        raise HTTPException(422, "halos: the request holds no halo")
    if req.halos is not None:
        x = np.array([[getattr(h, f) for f in FEATURE_NAMES] for h in req.halos], dtype=np.float64)
    else:
        x = np.column_stack([np.asarray(req.columns[f], dtype=np.float64) for f in FEATURE_NAMES])  # type: ignore
    mode = dataplane.request_mode(req.mode, req.seed, req.quantiles)
    pred = await run_in_threadpool(dataplane.predict, store, x, req.variant, req.targets, req.model, mode, req.ids,
                                   req.offset)
    for target in pred.targets:
        metrics.predictions.labels(target, "v1").inc(n)
    return PredictResponse(n_halos=n, variant=req.variant, path=req.variant,
                           predictions={t: v.tolist() for t, v in pred.values.items()}, units=pred.units,
                           models=pred.models, warnings=pred.warnings, **mode.describe())
