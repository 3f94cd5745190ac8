"""FastAPI dependencies, all in one place (``Annotated`` aliases used by the routers)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.dataplane import ModelStore
from app.jobs import JobRunner, JobStore
from app.registry import Registry
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_registry(request: Request) -> Registry:
    return request.app.state.registry


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def get_jobs(request: Request) -> JobStore:
    return request.app.state.jobs


def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


_bearer = HTTPBearer(auto_error=False)


def require_token(settings: Annotated[Settings, Depends(get_settings)],
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Mutating endpoints (alias moves, job submission and cancellation) need the bearer token when one is
    configured (GALAXYPAINT_API_TOKEN); without one the server is open (it warns at start-up)."""
    if settings.api_token is None:
        return
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(),
                                                         settings.api_token.get_secret_value().encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid bearer token is required (Authorization header)",
                            headers={"WWW-Authenticate": "Bearer"})


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]
TokenDep = Annotated[None, Depends(require_token)]
