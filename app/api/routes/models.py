"""Registry endpoints: list, describe, move aliases (token required)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from app.api.deps import RegistryDep, TokenDep
from app.api.schemas import AliasRequest
from app.registry import RegistryError
from app.schema import describe

router = APIRouter(prefix="/v1/models", tags=["registry"])


@router.get("")
def list_models(registry: RegistryDep) -> dict:
    return {"models": [{"name": m.name, "latest_version": m.version, "target": m.target, "path": m.path,
                        "kind": m.kind, "aliases": registry_aliases(registry, m.name)}
                       for m in registry.list_models()]}


def registry_aliases(registry, name: str) -> dict[str, int]:
    return {a: v.version for v in registry.versions(name) for a in v.aliases}


@router.get("/{name}")
def show_model(name: str, registry: RegistryDep) -> dict:
    try:
        versions = registry.versions(name)
    except RegistryError as exc:
        raise HTTPException(404, f"name: {exc}") from None
    if not versions:
        raise HTTPException(404, f"name: no model named {name!r}")
    return {"name": name, "aliases": registry_aliases(registry, name), "schema": describe(),
            "versions": [{k: val for k, val in v.as_dict().items() if k != "artefact"} for v in versions]}


@router.post("/{name}/aliases")
def move_alias(name: str, req: AliasRequest, registry: RegistryDep, _: TokenDep) -> dict:
    try:
        mv = registry.set_alias(name, req.alias, req.version)
    except RegistryError as exc:
        raise HTTPException(404 if "no " in str(exc) else 422, f"alias: {exc}") from None
    return {"name": name, "alias": req.alias, "version": mv.version, "uri": mv.uri}
