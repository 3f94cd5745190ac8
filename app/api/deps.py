"""FastAPI dependencies, all in one place (``Annotated`` aliases used by the routers).

Access has two scopes.  ``submit`` (the API token, or the admin token) paints, measures P(k), lists
and downloads jobs; ``admin`` (the admin token only) also moves aliases.  Prediction, the schema and
the registry's read-only views need no token.  A server always has an admin token (configured, or
generated into the data directory's token file at start-up) unless anonymous writes were explicitly
allowed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.batching import Batcher
from app.api.observability import Metrics
from app.api.dataplane import ModelStore
from app.api.jobs import JobRunner, JobStore
from app.core.registry import Registry
from app.core.settings import Settings

Scope = Literal["submit", "admin"]


@dataclass(frozen=True)
class Tokens:
    """The tokens in force; ``None`` for both only when anonymous writes were allowed explicitly."""

    admin: str | None
    submit: str | None


@dataclass(frozen=True)
class Caller:
    scope: str  # "admin", "submit" or "anonymous"
    client: str


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_registry(request: Request) -> Registry:
    return request.app.state.registry


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def get_jobs(request: Request) -> JobStore:
    return request.app.state.jobs


def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


def get_batcher(request: Request) -> Batcher:
    return request.app.state.batcher


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


_bearer = HTTPBearer(auto_error=False)


def _matches(given: str, expected: str | None) -> bool:
    return expected is not None and secrets.compare_digest(given.encode(), expected.encode())


def authorize(tokens: Tokens, given: str, required: Scope, client: str) -> Caller:
    """The caller a presented token makes for a ``required`` scope, or the 401/403 the API answers.

    The one place the scope rules live: bearer headers here, the web pages' session cookies
    (``app.web.session``, which presents the token its login was made with)."""
    if tokens.admin is None and tokens.submit is None:  # GALAXYPAINT_ALLOW_ANONYMOUS_WRITES=true
        return Caller("anonymous", client)
    if _matches(given, tokens.admin):
        return Caller("admin", client)
    if required == "submit" and _matches(given, tokens.submit):
        return Caller("submit", client)
    if given and _matches(given, tokens.submit):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "authorization: this token may submit and read jobs, "
                                                       "but moving aliases needs the admin token")
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"authorization: a valid bearer token of the {required} "
                                                      "scope is required (Authorization: Bearer ...)",
                        headers={"WWW-Authenticate": "Bearer"})


def _caller(required: Scope):
    def check(request: Request,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
        client = (request.client.host if request.client else "-")
        given = credentials.credentials if credentials is not None else ""
        return authorize(request.app.state.tokens, given, required, client)

    return check


SettingsDep = Annotated[Settings, Depends(app_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
SubmitDep = Annotated[Caller, Depends(_caller("submit"))]
AdminDep = Annotated[Caller, Depends(_caller("admin"))]
