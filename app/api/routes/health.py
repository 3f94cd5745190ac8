"""Liveness, readiness (models and the job system) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from app.api.errors import responses
from app.api.jobs import STATUSES

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    ready: bool
    models_loaded: list[str]
    jobs: str
    reason: str | None = None


def readiness(request: Request) -> tuple[bool, dict]:
    """Ready = the registry is open, the production stacks are loaded and the job system runs."""
    state = request.app.state
    loaded = getattr(state, "warm_models", [])
    reason = None
    if not loaded and getattr(state, "store", None) is not None:  # models registered after start-up
        try:
            loaded = state.warm_models = state.store.warm()
        except Exception as exc:  # a broken artefact keeps the server unready, with the reason
            state.not_ready_reason = str(exc)
    if getattr(state, "registry", None) is None or not loaded:
        reason = getattr(state, "not_ready_reason", "no production model is registered")
    runner = getattr(state, "runner", None)
    jobs_ok, jobs_reason = runner.healthy() if runner is not None else (False, "the job system is not started")
    if not jobs_ok:
        reason = f"{reason}; {jobs_reason}" if reason else jobs_reason
    ok = reason is None
    return ok, {"ready": ok, "models_loaded": loaded, "jobs": "running" if jobs_ok else jobs_reason,
                **({} if ok else {"reason": reason})}


@router.get("/health/live")
def live() -> dict:
    return {"live": True}


@router.get("/health/ready", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "not ready, with the reason"}, **responses()})
def ready(request: Request) -> JSONResponse:
    ok, body = readiness(request)
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
def metrics(request: Request) -> Response:
    state = request.app.state
    m = state.metrics
    counts = state.jobs.counts()
    for status in STATUSES:
        m.jobs.labels(status).set(counts.get(status, 0))
    m.loaded_models.set(len(state.store.loaded()))
    m.job_disk_bytes.set(state.jobs.disk_usage(state.settings.data_dir))
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
