"""Open Inference Protocol v2 (KServe / Triton / MLServer clients): one model = one registered ONNX graph.

Input ``halo_features`` (FP64 or FP32, shape [N, 5], schema order), output ``prediction`` (FP64, [N, 1]).
Without a version, a model is served at its ``production`` alias, else its latest version.

The joint sampler (``raw-sampler``) answers the request ``parameters`` ``mode: "sample"`` (with ``seed``,
and ``ids``, one integer per halo, or ``offset``) or ``mode: "quantiles"`` (with ``quantiles``, percent
levels): one output tensor per output name (the targets, or ``<target>_q<level>``), each FP64 [N, 1];
a request's ``outputs`` may pick some of them, and the parameter ``targets`` (a subset of the sampler's
targets, a list or comma-separated) restricts them to those targets.  Stacks and base models answer mode
``mean`` (the default) only.

Bodies are JSON whatever their declared content type (Triton's clients send none), or JSON followed by
binary tensor data (the ``binary_tensor_data`` extension: ``Inference-Header-Content-Length``, inputs
with ``parameters.binary_data_size``, FP64 or FP32 little-endian); outputs are answered as binary data
when a request output's ``parameters.binary_data`` or the request's ``parameters.binary_data_output`` is
true.  ``POST /v2/repository/index`` lists the registered model versions (``model_repository``
extension, read-only: no load or unload).
Errors are ``{"error": "..."}`` (see the exception handlers in ``app.api.main``).
"""

from __future__ import annotations

import json
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app import __version__
from app.api import codecs
from app.api.deps import BatcherDep, MetricsDep, SettingsDep, StoreDep
from app.api.errors import responses
from app.api.routes.health import readiness
from app.api.schemas import (MAX_VERSION, InferenceRequest, InferenceResponse, ModelMetadata, RepositoryIndexRequest,
                             RepositoryModel, TensorIn, TensorMeta, TensorOut)
from app.api.dataplane import DataPlaneError, check_features, plan_version, request_mode
from app.core.model import SAMPLER_KIND
from app.core.schema import FEATURE_NAMES

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"], responses=responses(404, v2=True))

ModelName = Annotated[str, Path(max_length=128)]
VersionText = Annotated[str, Path(max_length=16)]

INPUT = "halo_features"
OUTPUT = "prediction"
#: request ``parameters`` read by the inference routes (other parameters are ignored, as the protocol allows)
MODE_PARAMETERS = ("mode", "seed", "quantiles", "ids", "offset", "targets")
#: Triton parameters asking for what this server does not do: refused rather than silently ignored
UNSUPPORTED_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset",
                          "classification")
#: the Open Inference Protocol extensions implemented (server metadata ``extensions``)
EXTENSIONS = ["binary_tensor_data", "model_repository"]
#: the request body, declared by hand: the routes parse it themselves (off the event loop when large)
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": "binary tensor data: the JSON header (its length in the "
                                                "Inference-Header-Content-Length header), then the inputs' bytes"}}}}

#: the answer framed as binary tensor data (when some output is asked as binary)
BINARY_ANSWER = {200: {"description": "the answer: JSON, or (outputs asked as binary data) the JSON header, its "
                                      "length in the Inference-Header-Content-Length header, then the outputs' "
                                      "little-endian FP64 bytes",
                       "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.get("")
def server_metadata() -> dict:
    return {"name": "galaxypaint", "version": __version__, "extensions": list(EXTENSIONS)}


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


def tensor_values(t: TensorIn, max_rows: int, raw: memoryview | None = None) -> np.ndarray:
    """The ``halo_features`` tensor as float64 [N, 5]: flat or nested row-major data, numbers only,
    exactly filling the declared shape (FP32 inputs are rounded to float32, as the client meant them),
    or ``raw``, its binary data (exactly N x 5 little-endian values)."""
    field = f"inputs.{t.name}"
    if t.datatype not in ("FP64", "FP32"):
        raise HTTPException(400, f"{field}.datatype: {t.datatype[:20]} is not supported (FP64 or FP32)")
    if len(t.shape) != 2 or t.shape[1] != len(FEATURE_NAMES) or t.shape[0] < 0:
        raise HTTPException(400, f"{field}.shape: expected [N, {len(FEATURE_NAMES)}], got {t.shape[:4]}")
    if t.shape[0] > max_rows:
        raise HTTPException(413, f"{field}.shape: {t.shape[0]:,} rows, the limit is {max_rows:,}")
    if raw is not None:
        return codecs.binary_values(raw, t.datatype, t.shape, field)
    if t.data is None:
        raise HTTPException(400, f"{field}.data: missing (give the values as data, or as binary data with "
                                 "parameters.binary_data_size and the Inference-Header-Content-Length header)")
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


def _targets(req: InferenceRequest) -> list[str] | None:
    """The ``targets`` parameter (a list of names, or comma-separated), type-checked; membership is
    checked against the model (``_check_targets``)."""
    value = (req.parameters or {}).get("targets")
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or len(value) > 16 or not all(isinstance(v, str) for v in value):
        raise DataPlaneError("a non-empty list of target names (or a comma-separated string) is needed",
                             "parameters.targets")
    return list(dict.fromkeys(v[:64] for v in value))


def _check_targets(mv, targets: list[str] | None) -> None:
    if targets is None:
        return
    served = list(mv.targets) or [mv.target]
    bad = [t for t in targets if t not in served]
    if bad:
        raise DataPlaneError(f"{', '.join(bad)[:200]} not among the targets of {mv.name} ({', '.join(served)})",
                             "targets")


def _flag(parameters: dict | None, key: str, field: str) -> bool | None:
    value = (parameters or {}).get(key)
    if value is not None and not isinstance(value, bool):
        raise DataPlaneError(f"{str(value)[:20]} is not true or false", f"{field}.{key}", status=400)
    return value


def _binary_outputs(req: InferenceRequest) -> tuple[bool, dict[str, bool]]:
    """Whether outputs are answered as binary data: the request's ``binary_data_output`` (the default for
    every output) and each requested output's ``binary_data`` (overriding it); unsupported output
    parameters (shared memory, classification) are refused."""
    default = bool(_flag(req.parameters, "binary_data_output", "parameters"))
    explicit: dict[str, bool] = {}
    for i, o in enumerate(req.outputs or ()):
        bad = [k for k in UNSUPPORTED_PARAMETERS if k in (o.parameters or {})]
        if bad:
            raise DataPlaneError(f"{bad[0]} is not supported by this server (extensions: "
                                 f"{', '.join(EXTENSIONS)})", f"outputs.{i}.parameters", status=400)
        flag = _flag(o.parameters, "binary_data", f"outputs.{i}.parameters")
        if flag is not None:
            explicit[o.name] = flag
    return default, explicit


def _request(body: bytes, declared: str | None, max_rows: int) -> tuple[InferenceRequest, np.ndarray]:
    """The validated request and its ``halo_features`` [N, 5] (float64): a JSON body, or (``declared``, the
    ``Inference-Header-Content-Length`` header) a JSON header followed by binary tensor data."""
    header, binary = codecs.split_binary(body, declared)
    try:
        req = InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        invalid = [e for e in exc.errors(include_url=False) if e["type"] == "json_invalid"]
        if not invalid:
            raise
        hint = "" if declared is not None or "trailing characters" not in invalid[0]["msg"] else \
            f" (a JSON header followed by binary tensor data needs the {codecs.HEADER_LENGTH} header)"
        raise DataPlaneError(f"not valid JSON: {invalid[0]['msg'][:200]}{hint}", "body") from None
    for t in req.inputs:
        bad = [k for k in UNSUPPORTED_PARAMETERS if k in (t.parameters or {})]
        if bad:
            raise DataPlaneError(f"{bad[0]} is not supported by this server (extensions: {', '.join(EXTENSIONS)})",
                                 f"inputs.{t.name[:64]}.parameters", status=400)
    chunks = codecs.binary_chunks(req.inputs, binary, declared is not None)
    tensors = {t.name: t for t in req.inputs}
    if INPUT not in tensors:
        raise HTTPException(400, f"inputs: expected a tensor named {INPUT!r}, got {sorted(tensors)[:5] or 'none'}")
    return req, tensor_values(tensors[INPUT], max_rows, chunks.get(INPUT))


def _encode(answer: InferenceResponse, values: dict[str, np.ndarray], default: bool,
            explicit: dict[str, bool]) -> tuple[bytes, dict[str, str], str]:
    """The answer's body, extra headers and media type: JSON, or (when some output is asked as binary data)
    the JSON header (binary outputs carry ``parameters.binary_data_size`` and no ``data``) followed by their
    little-endian FP64 bytes, in output order."""
    payloads = []
    for out in answer.outputs:
        v = values[out.name]
        if explicit.get(out.name, default):
            out.parameters = {"binary_data_size": int(v.size) * 8}
            payloads.append(v)
        else:
            out.data = v.tolist()
    header = answer.model_dump_json(exclude_none=True).encode()
    if not payloads:
        return header, {}, "application/json"
    body, length = codecs.binary_response(header, payloads)
    return body, {codecs.HEADER_LENGTH: str(length)}, "application/octet-stream"


async def _infer(name: str, version: str | None, request: Request, store, settings, metrics, batcher) -> Response:
    body = await request.body()  # bounded by the middleware (MAX_JSON_BYTES)
    large = len(body) > settings.json_offload_bytes
    req, x = await codecs.off_loop(large, _request, body, request.headers.get(codecs.HEADER_LENGTH),
                                   settings.max_batch_halos)
    x = check_features(x)
    mode, ids, offset = _parameters(req)
    targets = _targets(req)
    default, explicit = _binary_outputs(req)

    def make_plan():
        mv = _version(store, name, version)
        _check_targets(mv, targets)
        return plan_version(store, mv, x, mode, ids, offset)

    try:
        # resolution is cached (``ModelStore``): planned on the event loop when the request is queued
        pred = await batcher.predict(len(x), make_plan)
    except DataPlaneError as exc:
        field = f"parameters.{exc.field}" if exc.field in MODE_PARAMETERS else exc.field
        raise DataPlaneError(str(exc), field, exc.status) from None
    mv = next(iter(pred.versions.values()))
    for target in pred.targets:
        metrics.predictions.labels(target, "v2").inc(len(x))
    if not mode.uses_sampler:  # a stack or base model: its one prediction, as ever
        values = {OUTPUT: pred.values[mv.target]}
        answer = InferenceResponse(model_name=name, model_version=str(mv.version), id=req.id,
                                   outputs=[TensorOut(name=out, shape=[len(x), 1], datatype="FP64")
                                            for out in _outputs(req, [OUTPUT])])
    else:
        values = pred.values
        available = mode.outputs(targets) if targets else list(values)
        answer = InferenceResponse(model_name=name, model_version=str(mv.version), id=req.id,
                                   parameters=mode.describe(),
                                   outputs=[TensorOut(name=out, shape=[len(x), 1], datatype="FP64")
                                            for out in _outputs(req, available)])
    content, headers, media = await codecs.off_loop(large, _encode, answer, values, default, explicit)
    return Response(content, media_type=media, headers=headers)


@router.post("/models/{name}/infer", response_model=InferenceResponse, response_model_exclude_none=True,
             responses={**responses(503, v2=True), **BINARY_ANSWER}, openapi_extra=INFER_BODY)
async def infer(name: ModelName, request: Request, store: StoreDep, settings: SettingsDep, metrics: MetricsDep,
                batcher: BatcherDep) -> Response:
    return await _infer(name, None, request, store, settings, metrics, batcher)


@router.post("/models/{name}/versions/{version}/infer", response_model=InferenceResponse,
             response_model_exclude_none=True, responses={**responses(503, v2=True), **BINARY_ANSWER},
             openapi_extra=INFER_BODY)
async def infer_version(name: ModelName, version: VersionText, request: Request, store: StoreDep,
                        settings: SettingsDep, metrics: MetricsDep, batcher: BatcherDep) -> Response:
    return await _infer(name, version, request, store, settings, metrics, batcher)


def _index(store, ready_only: bool) -> list[dict]:
    """Every registered version: READY when its session is loaded or its artefact is in place (the size
    registered; the sha256 is checked when it loads), UNAVAILABLE (with the reason) otherwise."""
    loaded = set(store.loaded())
    out = []
    for name in store.registry.names():
        for mv in store.registry.versions(name):
            reason = None
            if (mv.name, mv.version) not in loaded:
                try:
                    size = mv.artefact.stat().st_size
                    if size != mv.size_bytes:
                        reason = f"artefact is {size:,} bytes, {mv.size_bytes:,} registered"
                except OSError as exc:
                    reason = f"artefact cannot be read: {exc.strerror}"
            if ready_only and reason is not None:
                continue
            out.append(RepositoryModel(name=mv.name, version=str(mv.version),
                                       state="UNAVAILABLE" if reason else "READY",
                                       reason=reason).model_dump(exclude_none=True))
    return out


@router.post("/repository/index", response_model=list[RepositoryModel], response_model_exclude_none=True,
             responses=responses(v2=True), openapi_extra={"requestBody": {"required": False, "content": {"application/json": {
                 "schema": RepositoryIndexRequest.model_json_schema()}}}})
async def repository_index(request: Request, store: StoreDep) -> Response:
    """The model repository index (Triton's ``model_repository`` extension, read-only): one entry per
    registered model version.  The body is optional (any content type): ``{"ready": true}`` lists only
    the versions that can serve."""
    body = await request.body()  # bounded by the middleware
    query = RepositoryIndexRequest()
    if body.strip():
        try:
            query = RepositoryIndexRequest.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise DataPlaneError(first["msg"][:200], where, status=400) from None
    return Response(json.dumps(await run_in_threadpool(_index, store, query.ready)), media_type="application/json")
