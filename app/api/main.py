"""The FastAPI application: ``create_app()`` wires settings, tokens, registry, data plane, jobs and routers.

Run it with ``galaxypaint serve`` (uvicorn, factory mode).  OpenAPI documentation at ``/docs``.
Every error is JSON naming the offending field (``app.api.errors``); every request carries an id
(``X-Request-ID``), is logged as one structured line and counted in ``/metrics``
(``app.api.observability``); bodies are bounded per route before they are parsed
(``app.api.middleware``).  The threat model and what survives a crash: ``docs/operations.md``.
"""

from __future__ import annotations

import gc

import ctypes
import ctypes.util
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import BaseModel

from app import __version__
from app.api import errors
from app.api.batching import Batcher
from app.api.deps import Tokens
from app.api.middleware import ServiceMiddleware
from app.api.observability import Metrics, configure_logging, log
from app.api.routes import health, jobs, models, predict, runs, v2
from app.api.schemas import InferenceRequest, PredictRequest
from app.api.dataplane import ModelStore
from app.api.jobs import JobRunner, JobStore
from app.core.registry import Registry
from app.core.settings import Settings
from app.core.tokens import load_or_create_token
from app.web.routes import install as install_web


def tokens_for(settings: Settings) -> Tokens:
    """The tokens in force: configured ones, else the data directory's token file (created if need be)."""
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    submit = settings.api_token.get_secret_value() if settings.api_token else None
    if settings.allow_anonymous_writes and admin is None and submit is None:
        return Tokens(None, None)
    if admin is None:
        admin, _ = load_or_create_token(settings.data_dir)
    return Tokens(admin, submit)


_M_ARENA_MAX = -8  # <malloc.h>


def bound_malloc_arenas(arenas: int = 2) -> None:
    """Give glibc's allocator at most ``arenas`` arenas.

    By default each thread that allocates gets an arena of its own (up to 8 per core), and memory
    freed in one is rarely handed back: a server whose thread pool parses many large JSON bodies
    kept growing (measured: +20 % resident memory between 2,000 and 20,000 requests).  Set before
    the thread pool starts; a no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    bound_malloc_arenas()
    configure_logging(settings.log_json)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        state.registry = Registry(settings.registry, create=True)
        state.store = ModelStore(state.registry, settings.threads, settings.max_loaded_models)
        state.batcher = Batcher(state.store, metrics, settings.batch_window_ms, settings.batch_max_rows,
                                settings.batch_bypass_rows, settings.batch_eager)
        try:
            state.warm_models = state.store.warm()
        except Exception as exc:  # a tampered artefact: stay up, unready, with the reason
            state.warm_models, state.not_ready_reason = [], str(exc)
            log.error("models not loaded: %s", exc)
        if state.tokens.admin is None and state.tokens.submit is None:
            log.warning("GALAXYPAINT_ALLOW_ANONYMOUS_WRITES is set: job submission and alias moves are open to "
                        "every client")
        state.jobs = JobStore(settings.registry / "registry.sqlite")
        state.runner = JobRunner(state.jobs, settings.registry, settings.data_dir, settings)
        failed, _pending = state.jobs.recover()
        for job_id in failed:
            log.warning("job %s was left running by a previous server: marked failed", job_id)
        state.runner.start()
        # what start-up allocated (libraries, models, settings) lives as long as the server: keep it out of
        # the collector's full passes, which otherwise stall every request in flight as the heap grows
        gc.collect()
        gc.freeze()
        yield
        state.runner.shutdown()

    app = FastAPI(title="galaxypaint", version=__version__, lifespan=lifespan,
                  description="Galaxy properties predicted from halo properties (de Santi et al. 2022): "
                              "per-halo prediction, Open Inference Protocol v2, the model registry and "
                              "batch jobs (catalog painting, power spectra).")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.tokens = tokens_for(settings)  # before the app serves: every worker reads the same token
    errors.install(app)
    app.add_middleware(ServiceMiddleware, settings=settings, metrics=metrics)
    for router in (health.router, predict.router, models.router, runs.router, jobs.router, v2.router):
        app.include_router(router)
    if settings.web_ui:  # the browser pages under / (off: they answer 404, the API is unchanged)
        install_web(app, settings)
    _declare_bodies(app, (PredictRequest, InferenceRequest))
    return app


def _declare_bodies(app: FastAPI, models: tuple[type[BaseModel], ...]) -> None:
    """Add to the OpenAPI components the request models that routes parse themselves (``app.api.codecs``:
    off the event loop, or Arrow) and so reference by hand (``openapi_extra``)."""
    default = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = default()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in body.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components.setdefault(model.__name__, body)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
