"""The FastAPI application: ``create_app()`` wires settings, registry, data plane, jobs and routers.

Run it with ``galaxypaint serve`` (uvicorn, factory mode).  OpenAPI documentation at ``/docs``.
Every error is JSON with a message naming the offending field: ``{"detail": "..."}`` on /v1 and
``{"error": "..."}`` on the Open Inference Protocol routes (/v2).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app import __version__
from app.api.routes import health, jobs, models, predict, v2
from app.dataplane import DataPlaneError, ModelStore
from app.jobs import JobRunner, JobStore
from app.registry import Registry, RegistryError
from app.settings import Settings

log = logging.getLogger("galaxypaint")


def _error(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    key = "error" if request.url.path.startswith("/v2") else "detail"
    return JSONResponse({key: message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form"))
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts[:5]) + (f" (and {len(parts) - 5} more)" if len(parts) > 5 else "")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        state.settings = settings
        state.registry = Registry(settings.registry, create=True)
        state.store = ModelStore(state.registry, settings.threads)
        try:
            state.warm_models = state.store.warm()
        except Exception as exc:  # a tampered artefact: stay up, unready, with the reason
            state.warm_models, state.not_ready_reason = [], str(exc)
            log.error("models not loaded: %s", exc)
        if settings.api_token is None:
            log.warning("no GALAXYPAINT_API_TOKEN: alias moves and job submission are open to every client")
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        state.jobs = JobStore(settings.registry / "registry.sqlite")
        state.runner = JobRunner(state.jobs, settings.registry, settings.data_dir, settings.job_workers,
                                 threads=max(1, settings.threads))
        failed, pending = state.jobs.recover()
        for job_id in failed:
            log.warning("job %s was left running by a previous server: marked failed", job_id)
        for job_id in pending:
            state.runner.submit(job_id)
        yield
        state.runner.shutdown()

    app = FastAPI(title="galaxypaint", version=__version__, lifespan=lifespan,
                  description="Galaxy properties predicted from halo properties (de Santi et al. 2022): "
                              "per-halo prediction, Open Inference Protocol v2, the model registry and "
                              "batch jobs (catalog painting, power spectra).")

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(request, 422, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _on_http(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(DataPlaneError)
    async def _on_dataplane(request: Request, exc: DataPlaneError) -> JSONResponse:
        return _error(request, exc.status, f"{exc.field}: {exc}" if exc.field else str(exc))

    @app.exception_handler(RegistryError)
    async def _on_registry(request: Request, exc: RegistryError) -> JSONResponse:
        status = 404 if "no model" in str(exc) or "no version" in str(exc) or "no alias" in str(exc) else 500
        return _error(request, status, str(exc))

    for router in (health.router, predict.router, models.router, jobs.router, v2.router):
        app.include_router(router)
    return app
