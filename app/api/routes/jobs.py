"""Batch jobs: paint a catalog, measure P(k); status, result download, cancellation and deletion.

Everything here needs the ``submit`` scope.  A job row is created only once its input is in place and
checked: the job store is the queue, so a row that exists is a job that will run.  Uploaded files
are inspected in a separate process (format, links and external storage, decompressed size) before
they are accepted; paths are shown relative to the data directory.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse

from app.api.deps import JobsDep, RunnerDep, SettingsDep, StoreDep, SubmitDep
from app.api.errors import responses
from app.api.observability import audit
from app.api.schemas import JobInfo, JobPage, PkJobRequest
from app.core.catalog_inspect import inspect_catalog_isolated
from app.core.catalogs import ON_INVALID, CatalogError, detect_format, parse_column_mapping
from app.core.column_presets import PRESET_NAMES
from app.api.dataplane import VARIANTS, DataPlaneError, request_mode
from app.api.jobs import FINAL, STATUSES, JobError, job_dir
from app.core.schema import TARGET_NAMES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
# Every route here is a plain ``def``: FastAPI runs them in its thread pool, so their SQLite, file and
# subprocess work never blocks the event loop.

OUTPUT_FORMATS = ("parquet", "hdf5", "csv")
RESULT_PARTS = ("file", "figure", "csv", "summary_csv", "invalid")  # invalid: a paint job's dropped rows
_JOB_ID = re.compile(r"^job-[0-9a-f]{12}$")
_MAX_PATH = 1024


def _inside_data_dir(settings, relative: str, field: str) -> Path:
    """A file below the data directory; hidden names (the token file, uploads in flight) are not files."""
    if not relative or len(relative) > _MAX_PATH or "\x00" in relative:
        raise HTTPException(422, f"{field}: a path of 1 to {_MAX_PATH} characters without NUL bytes is needed")
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if PurePosixPath(relative).is_absolute() or any(p == ".." for p in parts):
        raise HTTPException(403, f"{field}: {relative!r} lies outside the server's data directory")
    if any(p.startswith(".") for p in parts):
        raise HTTPException(403, f"{field}: hidden files are not catalogs")
    root = settings.data_dir.resolve()
    try:
        candidate = (root / relative).resolve()
        inside = candidate.is_relative_to(root)
        is_file = inside and candidate.is_file()
    except (OSError, ValueError):
        raise HTTPException(422, f"{field}: {relative[:80]!r} is not a usable path") from None
    if not inside:  # a symbolic link leading out
        raise HTTPException(403, f"{field}: {relative!r} lies outside the server's data directory")
    if not is_file:
        raise HTTPException(404, f"{field}: no file {relative!r} in the server's data directory")
    return candidate


def public(job: dict, settings) -> dict:
    """A job as clients see it: file paths relative to the data directory, never the server's layout."""
    root = settings.data_dir.resolve()
    params = dict(job.get("params") or {})
    for key in ("input", "truth"):
        value = params.get(key)
        if isinstance(value, str):
            p = Path(value)
            params[key] = str(p.relative_to(root)) if p.is_absolute() and p.is_relative_to(root) else p.name
    return {**job, "params": params}


def _targets(value: str | list[str] | None) -> list[str] | None:
    if not value:
        return None
    items = [t.strip() for t in value.split(",")] if isinstance(value, str) else list(value)
    items = [t for t in items if t]
    bad = [t for t in items if t not in TARGET_NAMES]
    if bad:
        raise HTTPException(422, f"targets: unknown {', '.join(bad)[:200]}; choose from {', '.join(TARGET_NAMES)}")
    return items


def job_or_404(jobs, job_id: str) -> dict:
    """The job ``job_id`` (a stored row, paths not yet made public), or the 404 naming ``job_id``."""
    if not _JOB_ID.match(job_id):
        raise HTTPException(404, f"job_id: no job {job_id[:80]!r}")
    try:
        return jobs.get(job_id)
    except JobError as exc:
        raise HTTPException(404, f"job_id: {exc}") from None


def _inspect(path: Path, settings, field: str) -> dict:
    try:
        return inspect_catalog_isolated(path, settings.max_upload_bytes)
    except CatalogError as exc:
        raise HTTPException(422, f"{field}: {exc}") from None


def _check_quota(jobs, settings, incoming: int) -> None:
    if jobs.disk_usage(settings.data_dir) + incoming > settings.jobs_quota_bytes:
        jobs.sweep(settings.data_dir, settings.job_retention_hours, settings.jobs_quota_bytes)
        if jobs.disk_usage(settings.data_dir) + incoming > settings.jobs_quota_bytes:
            raise HTTPException(507, f"file: the job storage quota ({settings.jobs_quota_bytes:,} bytes) is used "
                                     "by running jobs; try again later")


@router.post("/paint", status_code=202, response_model=JobInfo, responses=responses(401, 403, 404, 507))
def submit_paint(settings: SettingsDep, jobs: JobsDep, runner: RunnerDep, store: StoreDep, caller: SubmitDep,
                       file: Annotated[UploadFile | None, File(description="halo catalog (.csv, .parquet, .hdf5)")] = None,
                       catalog: Annotated[str | None, Form(max_length=_MAX_PATH,
                                                           description="or a catalog path in the data directory")] = None,
                       columns: Annotated[str | None, Form(max_length=4096,
                                                           description="column mapping NAME=SOURCE[,...]")] = None,
                       column_preset: Annotated[str | None, Form(max_length=32, description="the catalog's column "
                                                                 "conventions: rockstar, consistent-trees or tng "
                                                                 "(converted to the schema's columns and units; "
                                                                 "'columns' wins for the names it maps)")] = None,
                       variant: Annotated[str | None, Form(max_length=16, description="raw or smogn")] = None,
                       path: Annotated[str | None, Form(max_length=16, deprecated=True,
                                                        description="deprecated name of 'variant'")] = None,
                       targets: Annotated[str | None, Form(max_length=256, description="comma-separated targets")] = None,
                       model: Annotated[str | None, Form(max_length=256, description="alias, version or reference")] = None,
                       output_format: Annotated[str, Form(max_length=16, description="parquet, hdf5 or csv")] = "parquet",
                       mode: Annotated[str | None, Form(max_length=16, description="mean (default: the stacks), sample "
                                                        "(one galaxy drawn per halo from the joint sampler) or "
                                                        "quantiles (its quantiles, <target>_q<level> columns)")] = None,
                       seed: Annotated[int | None, Form(ge=0, lt=2**63, description="seed of the draws (mode sample "
                                                                                    "only; default 0)")] = None,
                       quantiles: Annotated[str | None, Form(max_length=1024, description="comma-separated percent "
                                                             "levels (mode quantiles only; default 16,50,84)")] = None,
                       id_column: Annotated[str | None, Form(max_length=256, description="integer column keying each "
                                                             "halo's draw (default: ID if present, else the row "
                                                             "number in the file)")] = None,
                       on_invalid: Annotated[str | None, Form(max_length=16, description="invalid rows (non-finite or "
                                                              "outside the schema's valid ranges): error (default), "
                                                              "warn (keep out-of-range values) or drop (listed in "
                                                              "<output>.invalid.csv)")] = None
                       ) -> dict:
    if (file is None) == (catalog is None):
        raise HTTPException(422, "file: give exactly one of 'file' (an upload) or 'catalog' (a server-side path)")
    field, variant = ("variant", variant) if variant is not None else ("path", path or "raw")
    if variant not in VARIANTS:
        raise HTTPException(422, f"{field}: {variant!r} is not one of {', '.join(VARIANTS)}")
    if output_format not in OUTPUT_FORMATS:
        raise HTTPException(422, f"output_format: {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    try:
        mapping = parse_column_mapping(columns)
    except CatalogError as exc:
        raise HTTPException(422, f"columns: {exc}") from None
    if column_preset is not None and column_preset not in PRESET_NAMES:
        raise HTTPException(422, f"column_preset: {column_preset[:40]!r} is not one of {', '.join(PRESET_NAMES)}")
    if id_column is not None and not id_column.strip():
        id_column = None
    on_invalid = on_invalid or "error"
    if on_invalid not in ON_INVALID:
        raise HTTPException(422, f"on_invalid: {on_invalid!r} is not one of {', '.join(ON_INVALID)}")
    try:  # the job is pinned to the versions accepted now: a later alias move does not change its output
        run_mode = request_mode(mode or None, seed, quantiles or None)
        versions = store.resolve(_targets(targets), variant, model, run_mode)
    except DataPlaneError as exc:
        raise HTTPException(exc.status, f"{exc.field or 'model'}: {exc}") from None
    pinned = [{"target": t, "name": mv.name, "version": mv.version, "sha256": mv.sha256} for t, mv in versions.items()]
    params = {"variant": variant, "targets": list(versions), "model": model, "models": pinned, "columns": mapping,
              **({"column_preset": column_preset} if column_preset is not None else {}),
              "output_format": output_format, **run_mode.describe(), "id_column": id_column,
              "on_invalid": on_invalid}
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    if catalog is not None:
        source = _inside_data_dir(settings, catalog, "catalog")
        try:
            detect_format(source)
        except CatalogError as exc:
            raise HTTPException(415, f"catalog: {exc}") from None
        _inspect(source, settings, "catalog")
        job = jobs.create("paint", {**params, "input": str(source), "source": catalog}, job_id=job_id)
    else:
        name = (file.filename or "upload")[:255]
        try:
            detect_format(name)
        except CatalogError as exc:
            raise HTTPException(415, f"file: {exc}") from None
        size = file.size if file.size is not None else 0
        _check_quota(jobs, settings, size)
        work = job_dir(settings.data_dir, job_id)
        suffix = ".csv.gz" if name.lower().endswith(".csv.gz") else Path(name).suffix.lower()
        target = work / f"input{suffix}"
        try:
            work.mkdir(parents=True, exist_ok=False)
            _copy_upload(file, target)
            _inspect(target, settings, "file")
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        job = jobs.create("paint", {**params, "input": str(target), "source": name, "upload_bytes": target.stat().st_size},
                          job_id=job_id)
    runner.wake()
    audit("job.submit", job_id=job["id"], kind="paint", scope=caller.scope, client=caller.client,
          source=job["params"]["source"])
    return public(job, settings)


def _copy_upload(file: UploadFile, target: Path) -> None:
    file.file.seek(0)
    with open(target, "wb") as fh:
        shutil.copyfileobj(file.file, fh, 1 << 20)


def _pin_sampler(store, model: str | None, seed0: int) -> list[dict]:
    """The joint sampler a P(k) job in mode sample draws with, resolved now and pinned (a later alias
    move does not change the job's catalogs): one record per target, as paint jobs pin their models."""
    from app.core.model import Mode

    try:
        versions = store.resolve(None, "raw", model, Mode("sample", seed0))
    except DataPlaneError as exc:
        raise HTTPException(exc.status, f"{exc.field or 'model'}: {exc}") from None
    lacking = [t for t in TARGET_NAMES if t not in versions]
    if lacking:
        raise HTTPException(422, f"model: the sampler does not draw {', '.join(lacking)}; an ensemble needs all four "
                                 "properties")
    return [{"target": t, "name": mv.name, "version": mv.version, "sha256": mv.sha256} for t, mv in versions.items()]


@router.post("/pk", status_code=202, response_model=JobInfo, responses=responses(401, 403, 404, 409))
def submit_pk(req: PkJobRequest, settings: SettingsDep, jobs: JobsDep, runner: RunnerDep, store: StoreDep,
              caller: SubmitDep) -> dict:
    if (req.job_id is None) == (req.path is None):
        raise HTTPException(422, "job_id: give exactly one of 'job_id' (a paint job) or 'path' (a catalog in the "
                                 "data directory)")
    if req.nmesh > settings.max_pk_nmesh:
        raise HTTPException(422, f"nmesh: {req.nmesh} is above this server's limit of {settings.max_pk_nmesh} "
                                 "(memory grows as nmesh^3)")
    if req.job_id is not None:
        paint = job_or_404(jobs, req.job_id)
        if paint["kind"] != "paint" or paint["status"] != "succeeded" or paint.get("expired"):
            raise HTTPException(409, f"job_id: {req.job_id} is a {paint['kind']} job with status {paint['status']}"
                                     f"{' (files deleted)' if paint.get('expired') else ''}; a succeeded paint job "
                                     "is needed")
        source = job_dir(settings.data_dir, req.job_id) / paint["result"]["file"]
    else:
        source = _inside_data_dir(settings, req.path, "path")  # type: ignore[arg-type]
    truth = _inside_data_dir(settings, req.truth, "truth") if req.truth else None
    if req.box is None and _inspect(source, settings, "job_id" if req.job_id else "path").get("box") is None:
        raise HTTPException(422, f"box: {(req.job_id or req.path)[:200]} records no box size in its metadata: give box "
                                 "(the periodic box side in Mpc/h)")
    if req.edges:
        bad = [t for t, e in req.edges.items() if t not in TARGET_NAMES or not (e[0] < e[1] < e[2])]
        if bad:
            raise HTTPException(422, f"edges: {', '.join(bad)[:200]}: properties must be targets and edges three "
                                     "increasing values")
    params = {"input": str(source), "truth": None if truth is None else str(truth), "box": req.box,
              "nmesh": req.nmesh, "targets": _targets(req.targets), "edges": req.edges, "columns": req.columns,
              "source": req.job_id or req.path}
    if req.mode == "sample":  # an ensemble: S catalogs drawn by the sampler pinned now, against the true one
        seed0 = req.seed0 or 0
        params.update(mode="sample", seeds=req.seeds, seed0=seed0, model=req.model, variant="raw",
                      models=_pin_sampler(store, req.model, seed0), id_column=req.id_column)
    job = jobs.create("pk", params)
    runner.wake()
    audit("job.submit", job_id=job["id"], kind="pk", scope=caller.scope, client=caller.client, source=params["source"])
    return public(job, settings)


@router.get("", response_model=JobPage, responses=responses(401, 403))
def list_jobs(jobs: JobsDep, settings: SettingsDep, _: SubmitDep,
              limit: Annotated[int, Query(ge=1, le=1000, description="jobs per page")] = 100,
              cursor: Annotated[str | None, Query(max_length=256, description="from the previous page")] = None,
              status_filter: Annotated[str | None, Query(description="one status")] = None) -> dict:
    if status_filter is not None and status_filter not in STATUSES:
        raise HTTPException(422, f"status_filter: one of {', '.join(STATUSES)}")
    try:
        rows, next_cursor = jobs.list(limit=limit, status=status_filter, cursor=cursor)
    except JobError as exc:
        raise HTTPException(422, f"cursor: {exc}") from None
    return {"jobs": [public(j, settings) for j in rows], "next_cursor": next_cursor}


@router.get("/{job_id}", response_model=JobInfo, responses=responses(401, 403, 404))
def get_job(job_id: str, jobs: JobsDep, settings: SettingsDep, _: SubmitDep) -> dict:
    return public(job_or_404(jobs, job_id), settings)


@router.get("/{job_id}/result", response_class=FileResponse, responses={
    200: {"content": {"application/octet-stream": {}}, "description": "the result file"},
    **responses(401, 403, 404, 409, 410)})
def get_result(job_id: str, jobs: JobsDep, settings: SettingsDep, _: SubmitDep,
               part: Annotated[str, Query(description="file, figure, csv, summary_csv or invalid (the rows "
                                                       "a paint job dropped with on_invalid=drop)")] = "file",
               ) -> FileResponse:
    job = job_or_404(jobs, job_id)
    if part not in RESULT_PARTS:
        raise HTTPException(422, f"part: one of {', '.join(RESULT_PARTS)}")
    if job["status"] != "succeeded":
        raise HTTPException(409, f"job_id: {job_id} is {job['status']}; its result exists once it has succeeded")
    if job.get("expired"):
        raise HTTPException(410, f"job_id: the files of {job_id} were deleted (retention period or storage quota)")
    name = (job["result"] or {}).get(part)
    if not isinstance(name, str):
        raise HTTPException(404, f"part: this job has no {part!r} result (parts: "
                                 f"{', '.join(k for k in RESULT_PARTS if k in (job['result'] or {}))})")
    file = job_dir(settings.data_dir, job_id) / name
    if not file.is_file():
        raise HTTPException(410, f"job_id: the {part} of {job_id} is no longer on disk")
    return FileResponse(file, filename=f"{job_id}-{name}")


@router.delete("/{job_id}", response_model=JobInfo, responses=responses(401, 403, 404))
def delete_job(job_id: str, jobs: JobsDep, runner: RunnerDep, settings: SettingsDep, caller: SubmitDep) -> dict:
    """An active job is canceled (its worker is stopped); a finished one is deleted with its files."""
    job = job_or_404(jobs, job_id)
    if job["status"] in FINAL:
        jobs.delete(job_id, settings.data_dir)
        audit("job.delete", job_id=job_id, scope=caller.scope, client=caller.client)
        return public({**job, "expired": True}, settings)
    job = jobs.cancel(job_id)
    runner.wake()
    audit("job.cancel", job_id=job_id, scope=caller.scope, client=caller.client)
    return public(job, settings)
