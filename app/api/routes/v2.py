"""Open Inference Protocol v2 (KServe / Triton / MLServer clients): one model = one registered ONNX graph.

Input ``halo_features`` (FP64 or FP32, shape [N, 5], schema order), output ``prediction`` (FP64, [N, 1]).
Without a version, a model is served at its ``production`` alias, else its latest version.
Errors are ``{"error": "..."}`` (see the exception handlers in ``app.api.main``).
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from app import __version__
from app.api.deps import SettingsDep, StoreDep
from app.api.routes.health import readiness
from app.api.schemas import InferenceRequest, InferenceResponse, ModelMetadata, TensorMeta, TensorOut
from app.dataplane import check_features
from app.schema import FEATURE_NAMES

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

INPUT = "halo_features"
OUTPUT = "prediction"


@router.get("")
def server_metadata() -> dict:
    return {"name": "galaxypaint", "version": __version__, "extensions": []}


@router.get("/health/live")
def live() -> dict:
    return {"live": True}


@router.get("/health/ready")
def ready(request: Request) -> dict:
    ok, _ = readiness(request)
    if not ok:
        raise HTTPException(503, "not ready: no production model is loaded")
    return {"ready": True}


def _version(store, name: str, version: str | None):
    if version is not None and not version.isdigit():
        raise HTTPException(400, f"version: {version!r} is not a version number")
    return store.version(name, version=int(version) if version else None)


def _metadata(store, name: str, version: str | None) -> ModelMetadata:
    mv = _version(store, name, version)
    versions = [str(v.version) for v in store.registry.versions(name)]
    return ModelMetadata(name=name, versions=versions, platform="onnxruntime_onnx",
                         inputs=[TensorMeta(name=INPUT, datatype="FP64", shape=[-1, len(FEATURE_NAMES)])],
                         outputs=[TensorMeta(name=OUTPUT, datatype="FP64", shape=[-1, 1])],
                         parameters={"target": mv.target, "path": mv.path, "kind": mv.kind, "version": mv.version,
                                     "feature_order": list(FEATURE_NAMES), "sha256": mv.sha256})


@router.get("/models/{name}", response_model=ModelMetadata)
def model_metadata(name: str, store: StoreDep) -> ModelMetadata:
    return _metadata(store, name, None)


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata)
def model_version_metadata(name: str, version: str, store: StoreDep) -> ModelMetadata:
    return _metadata(store, name, version)


@router.get("/models/{name}/ready")
def model_ready(name: str, store: StoreDep) -> dict:
    mv = _version(store, name, None)
    store.session(mv)
    return {"name": name, "version": str(mv.version), "ready": True}


@router.get("/models/{name}/versions/{version}/ready")
def model_version_ready(name: str, version: str, store: StoreDep) -> dict:
    mv = _version(store, name, version)
    store.session(mv)
    return {"name": name, "version": str(mv.version), "ready": True}


async def _infer(name: str, version: str | None, req: InferenceRequest, store, settings) -> InferenceResponse:
    tensors = {t.name: t for t in req.inputs}
    if INPUT not in tensors:
        raise HTTPException(400, f"inputs: expected a tensor named {INPUT!r}, got {sorted(tensors) or 'none'}")
    t = tensors[INPUT]
    if t.datatype not in ("FP64", "FP32"):
        raise HTTPException(400, f"inputs.{INPUT}.datatype: {t.datatype} is not supported (FP64 or FP32)")
    if len(t.shape) != 2 or t.shape[1] != len(FEATURE_NAMES):
        raise HTTPException(400, f"inputs.{INPUT}.shape: expected [N, {len(FEATURE_NAMES)}], got {t.shape}")
    if t.shape[0] > settings.max_batch_halos:
        raise HTTPException(413, f"inputs.{INPUT}.shape: {t.shape[0]:,} rows, the limit is {settings.max_batch_halos:,}")
    flat = np.asarray(t.data, dtype=np.float64).reshape(-1) if t.data else np.zeros(0)
    if flat.size != t.shape[0] * t.shape[1]:
        raise HTTPException(400, f"inputs.{INPUT}.data: {flat.size} values do not fill shape {t.shape}")
    x = check_features(flat.reshape(t.shape))
    mv = _version(store, name, version)
    values = await run_in_threadpool(store.session(mv).predict, x)
    return InferenceResponse(model_name=name, model_version=str(mv.version), id=req.id,
                             outputs=[TensorOut(name=OUTPUT, shape=[len(values), 1], datatype="FP64",
                                                data=values.tolist())])


@router.post("/models/{name}/infer", response_model=InferenceResponse, response_model_exclude_none=True)
async def infer(name: str, req: InferenceRequest, store: StoreDep, settings: SettingsDep) -> InferenceResponse:
    return await _infer(name, None, req, store, settings)


@router.post("/models/{name}/versions/{version}/infer", response_model=InferenceResponse,
             response_model_exclude_none=True)
async def infer_version(name: str, version: str, req: InferenceRequest, store: StoreDep,
                        settings: SettingsDep) -> InferenceResponse:
    return await _infer(name, version, req, store, settings)


