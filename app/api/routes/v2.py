"""Open Inference Protocol v2 (KServe / Triton / MLServer clients): one model = one registered ONNX graph.

Input ``halo_features`` (FP64 or FP32, shape [N, 5], schema order), output ``prediction`` (FP64, [N, 1]).
Without a version, a model is served at its ``production`` alias, else its latest version.

The joint sampler (``raw-sampler``) answers the request ``parameters`` ``mode: "sample"`` (with ``seed``,
and ``ids``, one integer per halo, or ``offset``) or ``mode: "quantiles"`` (with ``quantiles``, percent
levels): one output tensor per output name (the targets, or ``<target>_q<level>``), each FP64 [N, 1];
a request's ``outputs`` may pick some of them.  Stacks and base models answer mode ``mean`` (the
default) only.
Errors are ``{"error": "..."}`` (see the exception handlers in ``app.api.main``).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import Response

from app import __version__
from app.api import codecs
from app.api.deps import BatcherDep, MetricsDep, SettingsDep, StoreDep
from app.api.errors import responses
from app.api.routes.health import readiness
from app.api.schemas import (MAX_VERSION, InferenceRequest, InferenceResponse, ModelMetadata, TensorIn, TensorMeta,
                             TensorOut)
from app.api.dataplane import DataPlaneError, check_features, plan_version, request_mode
from app.core.model import SAMPLER_KIND
from app.core.schema import FEATURE_NAMES

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"], responses=responses(404, v2=True))

ModelName = Annotated[str, Path(max_length=128)]
VersionText = Annotated[str, Path(max_length=16)]

INPUT = "halo_features"
OUTPUT = "prediction"
#: request ``parameters`` read by the inference routes (other parameters are ignored, as the protocol allows)
MODE_PARAMETERS = ("mode", "seed", "quantiles", "ids", "offset")
#: the request body, declared by hand: the routes parse it themselves (off the event loop when large)
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}}}}


@router.get("")
def server_metadata() -> dict:
    return {"name": "galaxypaint", "version": __version__, "extensions": []}


@router.get("/health/live")
def live() -> dict:
    return {"live": True}


@router.get("/health/ready", responses=responses(503, v2=True))
def ready(request: Request) -> dict:
    ok, _ = readiness(request)
    if not ok:
        raise HTTPException(503, "not ready: no production model is loaded")
    return {"ready": True}


def _version(store, name: str, version: str | None):
    if version is not None and not (version.isascii() and version.isdigit() and 1 <= int(version) <= MAX_VERSION):
        raise HTTPException(400, f"version: {version[:20]!r} is not a version number (1 to {MAX_VERSION})")
    return store.version(name, version=int(version) if version else None)


def tensor_values(t: TensorIn, max_rows: int) -> np.ndarray:
    """The ``halo_features`` tensor as float64 [N, 5]: flat or nested row-major data, numbers only,
    exactly filling the declared shape (FP32 inputs are rounded to float32, as the client meant them)."""
    field = f"inputs.{t.name}"
    if t.datatype not in ("FP64", "FP32"):
        raise HTTPException(400, f"{field}.datatype: {t.datatype[:20]} is not supported (FP64 or FP32)")
    if len(t.shape) != 2 or t.shape[1] != len(FEATURE_NAMES) or t.shape[0] < 0:
        raise HTTPException(400, f"{field}.shape: expected [N, {len(FEATURE_NAMES)}], got {t.shape[:4]}")
    if t.shape[0] > max_rows:
        raise HTTPException(413, f"{field}.shape: {t.shape[0]:,} rows, the limit is {max_rows:,}")
    try:
        arr = np.asarray(t.data, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise HTTPException(400, f"{field}.data: numbers only, as a flat list or rows of "
                                 f"{len(FEATURE_NAMES)} (no strings, objects or ragged rows)") from None
    if arr.dtype != np.float64 or arr.ndim not in (1, 2) or arr.size != t.shape[0] * t.shape[1] \
            or (arr.ndim == 2 and list(arr.shape) != list(t.shape)):
        raise HTTPException(400, f"{field}.data: {arr.size} values do not fill shape {t.shape}")
    arr = arr.reshape(t.shape)
    if t.datatype == "FP32":
        with np.errstate(over="ignore"):
            arr = arr.astype(np.float32).astype(np.float64)
    return arr


def _metadata(store, name: str, version: str | None) -> ModelMetadata:
    mv = _version(store, name, version)
    versions = [str(v.version) for v in store.registry.versions(name)]
    sampler = mv.kind == SAMPLER_KIND
    outputs = [TensorMeta(name=t, datatype="FP64", shape=[-1, 1]) for t in mv.targets] if sampler else \
        [TensorMeta(name=OUTPUT, datatype="FP64", shape=[-1, 1])]
    return ModelMetadata(name=name, versions=versions, platform="onnxruntime_onnx",
                         inputs=[TensorMeta(name=INPUT, datatype="FP64", shape=[-1, len(FEATURE_NAMES)])],
                         outputs=outputs,
                         parameters={"target": mv.target, "targets": list(mv.targets), "variant": mv.variant, "kind": mv.kind, "version": mv.version,
                                     "feature_order": list(FEATURE_NAMES), "sha256": mv.sha256,
                                     "modes": ["sample", "quantiles"] if sampler else ["mean"]})


@router.get("/models/{name}", response_model=ModelMetadata)
def model_metadata(name: ModelName, store: StoreDep) -> ModelMetadata:
    return _metadata(store, name, None)


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata)
def model_version_metadata(name: ModelName, version: VersionText, store: StoreDep) -> ModelMetadata:
    return _metadata(store, name, version)


@router.get("/models/{name}/ready", responses=responses(503, v2=True))
def model_ready(name: ModelName, store: StoreDep) -> dict:
    mv = _version(store, name, None)
    store.session(mv)
    return {"name": name, "version": str(mv.version), "ready": True}


@router.get("/models/{name}/versions/{version}/ready", responses=responses(503, v2=True))
def model_version_ready(name: ModelName, version: VersionText, store: StoreDep) -> dict:
    mv = _version(store, name, version)
    store.session(mv)
    return {"name": name, "version": str(mv.version), "ready": True}


def _parameters(req: InferenceRequest):
    """The mode (checked; errors name ``parameters.<key>``) and the draws' keys from the request
    ``parameters`` (checked with the data by ``plan_version``)."""
    p = req.parameters or {}
    try:
        mode = request_mode(p.get("mode"), p.get("seed"), p.get("quantiles"))
    except DataPlaneError as exc:
        raise DataPlaneError(str(exc), f"parameters.{exc.field}", exc.status) from None
    return mode, p.get("ids"), p.get("offset")


def _outputs(req: InferenceRequest, available: list[str]) -> list[str]:
    """The output tensors asked for (``outputs``; all by default), each one the model has."""
    if not req.outputs:
        return available
    wanted = [o.name for o in req.outputs]
    bad = [w for w in wanted if w not in available]
    if bad:
        raise HTTPException(400, f"outputs: {', '.join(str(b)[:40] for b in bad[:5])} not among this model's outputs "
                                 f"({', '.join(available[:20])})")
    return list(dict.fromkeys(wanted))


def _request(body: bytes, max_rows: int) -> tuple[InferenceRequest, np.ndarray]:
    """The validated request and its ``halo_features`` [N, 5] (float64)."""
    req = InferenceRequest.model_validate_json(body)
    tensors = {t.name: t for t in req.inputs}
    if INPUT not in tensors:
        raise HTTPException(400, f"inputs: expected a tensor named {INPUT!r}, got {sorted(tensors)[:5] or 'none'}")
    return req, tensor_values(tensors[INPUT], max_rows)


async def _infer(name: str, version: str | None, request: Request, store, settings, metrics, batcher) -> Response:
    body = await request.body()  # bounded by the middleware (MAX_JSON_BYTES)
    large = len(body) > settings.json_offload_bytes
    req, x = await codecs.off_loop(large, _request, body, settings.max_batch_halos)
    x = check_features(x)
    mode, ids, offset = _parameters(req)
    try:
        # resolution is cached (``ModelStore``): planned on the event loop when the request is queued
        pred = await batcher.predict(len(x), lambda: plan_version(store, _version(store, name, version), x, mode,
                                                                  ids, offset))
    except DataPlaneError as exc:
        field = f"parameters.{exc.field}" if exc.field in MODE_PARAMETERS else exc.field
        raise DataPlaneError(str(exc), field, exc.status) from None
    mv = next(iter(pred.versions.values()))
    for target in pred.targets:
        metrics.predictions.labels(target, "v2").inc(len(x))
    if not mode.uses_sampler:  # a stack or base model: its one prediction, as ever
        values = pred.values[mv.target]
        answer = InferenceResponse(model_name=name, model_version=str(mv.version), id=req.id,
                                   outputs=[TensorOut(name=OUTPUT, shape=[len(values), 1], datatype="FP64",
                                                      data=values.tolist())])
    else:
        answer = InferenceResponse(model_name=name, model_version=str(mv.version), id=req.id,
                                   parameters=mode.describe(),
                                   outputs=[TensorOut(name=out, shape=[len(x), 1], datatype="FP64",
                                                      data=pred.values[out].tolist())
                                            for out in _outputs(req, list(pred.values))])
    content = await codecs.off_loop(large, lambda: answer.model_dump_json(exclude_none=True).encode())
    return Response(content, media_type="application/json")


@router.post("/models/{name}/infer", response_model=InferenceResponse, response_model_exclude_none=True,
             responses=responses(503, v2=True), openapi_extra=INFER_BODY)
async def infer(name: ModelName, request: Request, store: StoreDep, settings: SettingsDep, metrics: MetricsDep,
                batcher: BatcherDep) -> Response:
    return await _infer(name, None, request, store, settings, metrics, batcher)


@router.post("/models/{name}/versions/{version}/infer", response_model=InferenceResponse,
             response_model_exclude_none=True, responses=responses(503, v2=True), openapi_extra=INFER_BODY)
async def infer_version(name: ModelName, version: VersionText, request: Request, store: StoreDep,
                        settings: SettingsDep, metrics: MetricsDep, batcher: BatcherDep) -> Response:
    return await _infer(name, version, request, store, settings, metrics, batcher)
