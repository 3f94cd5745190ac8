"""Training runs and their reports (figures and tables stored with the run at training time): open, read-only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from app.api.deps import RegistryDep
from app.api.errors import responses

router = APIRouter(prefix="/v1/runs", tags=["registry"])

RunId = Annotated[str, Path(max_length=64)]


@router.get("", responses=responses())
def list_runs(registry: RegistryDep) -> dict:
    return {"runs": registry.list_runs()}


@router.get("/{run_id}", responses=responses(404))
def show_run(run_id: RunId, registry: RegistryDep) -> dict:
    """The run's configuration, seed, data fingerprint, metrics and the report files stored with it."""
    return {**registry.get_run(run_id), "artefacts": registry.run_artefacts(run_id)}


@router.get("/{run_id}/artefacts/{name}", response_class=Response, responses={
    200: {"content": {"image/png": {}, "text/markdown": {}, "text/html": {}, "text/csv": {}, "application/json": {}},
          "description": "the file"}, **responses(404, 503)})
def run_artefact(run_id: RunId, name: Annotated[str, Path(max_length=128)], registry: RegistryDep) -> Response:
    data, media_type = registry.read_run_artefact(run_id, name)
    # a stored report page must not run scripts in the service's origin
    return Response(data, media_type=media_type, headers={"Content-Security-Policy": "default-src 'none'; "
                                                          "img-src data:; style-src 'unsafe-inline'",
                                                          "X-Content-Type-Options": "nosniff"})
