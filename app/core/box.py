"""The periodic box side of a catalog [Mpc/h]: given by the user, or read from the catalog itself.

Catalogs made by galaxypaint record their box in their metadata (``demo-data``, ``ingest-tng`` and
every painted file, under ``df.attrs["galaxypaint"]["box"]``), so the commands measuring clustering
need no ``--box`` for them; a catalog without it (a CSV, a file from elsewhere) needs the box given.
There is no default: a wrong box silently rescales every wavenumber and every P(k).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from app.core.catalogs import METADATA_KEY, CatalogError

#: a recorded box differing from the given one by more than this (relative) is worth a warning
_AGREE = 1e-6


class BoxError(CatalogError):
    """The box size is missing or unusable; the message names the option that gives it."""


def recorded_box(meta: Mapping | None) -> float | None:
    """The box side [Mpc/h] a catalog's metadata records (``df.attrs`` or its ``galaxypaint`` entry),
    None when it records none or an unusable one."""
    if not meta:
        return None
    inner = meta.get(METADATA_KEY)
    value = (inner if isinstance(inner, Mapping) else meta).get("box")
    try:
        box = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return box if math.isfinite(box) and box > 0 else None


def resolve_box(given: float | None, meta: Mapping | None, source: str,
                option: str = "--box") -> tuple[float, list[str]]:
    """(box [Mpc/h], warnings): ``given`` when set (a warning when the catalog records another one),
    else the box ``meta`` records; ``BoxError`` naming ``option`` when there is neither."""
    recorded = recorded_box(meta)
    if given is not None:
        if not (math.isfinite(given) and given > 0):
            raise BoxError(f"{option}: the box side must be a positive number of Mpc/h, not {given:g}")
        warnings = []
        if recorded is not None and abs(given - recorded) > _AGREE * recorded:
            warnings.append(f"{option} {given:g} Mpc/h overrides the box {source} records ({recorded:g} Mpc/h)")
        return float(given), warnings
    if recorded is None:
        raise BoxError(f"{option}: {source} records no box size in its metadata: give {option} L "
                       "(the periodic box side in Mpc/h)")
    return recorded, []
