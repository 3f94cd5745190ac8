"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


def readiness(request: Request) -> tuple[bool, dict]:
    state = request.app.state
    loaded = getattr(state, "warm_models", [])
    if not loaded and getattr(state, "store", None) is not None:  # models registered after start-up
        try:
            loaded = state.warm_models = state.store.warm()
        except Exception as exc:  # a broken artefact keeps the server unready, with the reason
            state.not_ready_reason = str(exc)
    ok = getattr(state, "registry", None) is not None and bool(loaded)
    return ok, {"ready": ok, "models_loaded": loaded,
                **({} if ok else {"reason": getattr(state, "not_ready_reason", "no production model is registered")})}


@router.get("/health/live")
def live() -> dict:
    return {"live": True}


@router.get("/health/ready")
def ready(request: Request) -> JSONResponse:
    ok, body = readiness(request)
    return JSONResponse(body, status_code=200 if ok else 503)
