"""Errors, typed and mapped to HTTP once.

Every error answer is JSON: ``{"detail": "<field>: <message>", "request_id": "..."}`` on /v1 and the
service's own routes, ``{"error": ..., "request_id": ...}`` on the Open Inference Protocol routes
(/v2).  The message names the offending field first.  Library errors are mapped by type, never by
their text; anything unforeseen becomes a 500 with the request id (the traceback goes to the log,
never to the client).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from app.api.observability import log
from app.core.catalogs import CatalogError
from app.api.dataplane import DataPlaneError
from app.api.jobs import JobError
from app.core.registry import ArtefactUnavailable, InvalidReference, ModelNotFound, RegistryConflict, RegistryError


class ErrorBody(BaseModel):
    detail: str = Field(description="what went wrong, starting with the offending field")
    request_id: str = Field(description="the request's id (X-Request-ID), also in the server's log lines")


class V2ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, starting with the offending field")
    request_id: str


_DESCRIPTIONS = {400: "malformed request", 401: "a valid bearer token is required", 403: "forbidden",
                 404: "not found", 409: "conflicts with the current state", 410: "gone (files deleted)",
                 413: "request too large", 415: "unsupported media type or encoding",
                 422: "invalid input (the message names the field)", 500: "unexpected server error",
                 503: "not available now (model cannot be loaded, jobs not running)",
                 507: "job storage quota exhausted"}


def responses(*codes: int, v2: bool = False) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for the error codes a route can answer (every route also has 413/500)."""
    model = V2ErrorBody if v2 else ErrorBody
    return {code: {"model": model, "description": _DESCRIPTIONS[code]}
            for code in sorted({*codes, 400, 413, 415, 422, 500})}


def status_of(exc: Exception) -> int:
    """The HTTP status of a registry error (the web pages map them the same way)."""
    if isinstance(exc, ModelNotFound):
        return 404
    if isinstance(exc, InvalidReference):
        return 422
    if isinstance(exc, ArtefactUnavailable):
        return 503
    if isinstance(exc, RegistryConflict):
        return 409
    return 500


def error_response(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    key = "error" if request.url.path.startswith("/v2") else "detail"
    rid = request.scope.get("state", {}).get("request_id", "-")
    return JSONResponse({key: message, "request_id": rid}, status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> str:
    """A request's validation errors in one line, each naming its field (at most five)."""
    parts = []
    for err in exc.errors():
        where = list(err.get("loc", ()))
        if where and where[0] in ("body", "query", "path", "form", "header", "cookie"):
            where = where[1:]  # the location kind; the rest names the field (which may itself be "path")
        loc = ".".join(str(p) for p in where)
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts[:5]) + (f" (and {len(parts) - 5} more)" if len(parts) > 5 else "")


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(DataPlaneError)
    async def _dataplane(request: Request, exc: DataPlaneError) -> JSONResponse:
        return error_response(request, exc.status, f"{exc.field}: {exc}" if exc.field else str(exc))

    @app.exception_handler(RegistryError)
    async def _registry(request: Request, exc: RegistryError) -> JSONResponse:
        status = status_of(exc)
        if status == 500:
            log.error("registry error: %s", exc)
        return error_response(request, status, f"model: {exc}")

    @app.exception_handler(CatalogError)
    async def _catalog(request: Request, exc: CatalogError) -> JSONResponse:
        return error_response(request, 422, f"catalog: {exc}")

    @app.exception_handler(JobError)
    async def _job(request: Request, exc: JobError) -> JSONResponse:
        return error_response(request, 404, f"job_id: {exc}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc,
                  extra={"fields": {"request_id": request.scope.get("state", {}).get("request_id", "-")}})
        return error_response(request, 500, "internal error: the server could not answer this request; "
                                            "quote the request id to its operator")
