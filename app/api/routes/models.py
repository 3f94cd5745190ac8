"""Registry endpoints: list, describe (open), move aliases (admin scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from app.api.deps import AdminDep, RegistryDep
from app.api.errors import responses
from app.api.observability import audit
from app.api.schemas import AliasMoved, AliasRequest
from app.core.registry import ArtefactUnavailable, ModelNotFound
from app.core.schema import describe

router = APIRouter(prefix="/v1/models", tags=["registry"])

ModelName = Annotated[str, Path(max_length=128)]


def registry_aliases(registry, name: str) -> dict[str, int]:
    return {a: v.version for v in registry.versions(name) for a in v.aliases}


@router.get("", responses=responses())
def list_models(registry: RegistryDep) -> dict:
    return {"models": [{"name": m.name, "latest_version": m.version, "target": m.target, "targets": list(m.targets),
                        "variant": m.variant,
                        "kind": m.kind, "aliases": registry_aliases(registry, m.name)}
                       for m in registry.list_models()]}


@router.get("/{name}", responses=responses(404))
def show_model(name: ModelName, registry: RegistryDep) -> dict:
    versions = registry.versions(name)
    if not versions:
        raise HTTPException(404, f"name: no model named {name!r}")
    return {"name": name, "aliases": registry_aliases(registry, name), "schema": describe(),
            "versions": [{k: val for k, val in v.as_dict().items() if k != "artefact"} for v in versions]}


@router.post("/{name}/aliases", response_model=AliasMoved, responses=responses(401, 403, 404, 409))
def move_alias(name: ModelName, req: AliasRequest, registry: RegistryDep, caller: AdminDep) -> dict:
    """Point an alias at a version; the version's artefact is loaded and verified first (409 if it cannot be)."""
    try:
        mv = registry.set_alias(name, req.alias, req.version)
    except ArtefactUnavailable as exc:
        raise HTTPException(409, f"version: {exc}; the alias was not moved") from None
    except ModelNotFound as exc:
        raise HTTPException(404, f"version: {exc}") from None
    audit("alias.move", model=name, alias=req.alias, version=req.version, scope=caller.scope, client=caller.client)
    return {"name": name, "alias": req.alias, "version": mv.version, "uri": mv.uri}
