"""Batch jobs: paint a catalog, measure P(k); status, result download, cancellation."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status
from fastapi.responses import FileResponse

from app.api.deps import JobsDep, RunnerDep, SettingsDep, StoreDep, TokenDep
from app.api.schemas import JobInfo, PkJobRequest
from app.catalogs import CatalogError, detect_format
from app.dataplane import PATHS, DataPlaneError, serving_versions
from app.jobs import FINAL, JobError, job_dir
from app.schema import TARGET_NAMES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

OUTPUT_FORMATS = {"parquet": "parquet", "hdf5": "hdf5", "csv": "csv"}


def _inside_data_dir(settings, relative: str, field: str) -> Path:
    root = settings.data_dir.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"{field}: {relative!r} lies outside the server's data directory")
    if not candidate.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{field}: no file {relative!r} in the server's data directory")
    return candidate


def _targets(value: str | None) -> list[str] | None:
    if not value:
        return None
    items = [t.strip() for t in value.split(",") if t.strip()]
    bad = [t for t in items if t not in TARGET_NAMES]
    if bad:
        raise HTTPException(422, f"targets: unknown {', '.join(bad)}; choose from {', '.join(TARGET_NAMES)}")
    return items


def _job(jobs, job_id: str) -> dict:
    try:
        return jobs.get(job_id)
    except JobError as exc:
        raise HTTPException(404, f"job_id: {exc}") from None


@router.post("/paint", status_code=202, response_model=JobInfo)
async def submit_paint(settings: SettingsDep, jobs: JobsDep, runner: RunnerDep, store: StoreDep, _: TokenDep,
                       file: Annotated[UploadFile | None, File(description="halo catalog (.csv, .parquet, .hdf5)")] = None,
                       catalog: Annotated[str | None, Form(description="or a catalog path in the data directory")] = None,
                       columns: Annotated[str | None, Form(description="column mapping NAME=SOURCE[,...]")] = None,
                       path: Annotated[str, Form(description="raw or smogn")] = "raw",
                       targets: Annotated[str | None, Form(description="comma-separated targets")] = None,
                       model: Annotated[str | None, Form(description="alias, version or reference")] = None,
                       output_format: Annotated[str, Form(description="parquet, hdf5 or csv")] = "parquet") -> dict:
    if (file is None) == (catalog is None):
        raise HTTPException(422, "file: give exactly one of 'file' (an upload) or 'catalog' (a server-side path)")
    if path not in PATHS:
        raise HTTPException(422, f"path: {path!r} is not one of {', '.join(PATHS)}")
    if output_format not in OUTPUT_FORMATS:
        raise HTTPException(422, f"output_format: {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    wanted = _targets(targets) or [t for t in TARGET_NAMES if f"{t}-{path}-stack" in
                                   set(store.names())]
    if not wanted:
        raise HTTPException(404, f"path: no {path}-path stack is registered")
    try:
        serving_versions(store, wanted, path, model)
    except DataPlaneError as exc:
        raise HTTPException(exc.status, f"{exc.field or 'model'}: {exc}") from None
    params = {"path": path, "targets": wanted, "model": model, "columns": columns, "output_format": output_format}
    if catalog is not None:
        source = _inside_data_dir(settings, catalog, "catalog")
        try:
            detect_format(source)
        except CatalogError as exc:
            raise HTTPException(415, f"catalog: {exc}") from None
        job = jobs.create("paint", {**params, "input": str(source), "source": catalog})
    else:
        name = file.filename or "upload"
        try:
            detect_format(name)
        except CatalogError as exc:
            raise HTTPException(415, f"file: {exc}") from None
        job = jobs.create("paint", {**params, "source": name})
        work = job_dir(settings.data_dir, job["id"])
        work.mkdir(parents=True, exist_ok=True)
        suffix = ".csv.gz" if name.lower().endswith(".csv.gz") else Path(name).suffix.lower()
        target = work / f"input{suffix}"
        size = 0
        try:
            with open(target, "wb") as fh:
                while chunk := await file.read(1 << 20):
                    size += len(chunk)
                    if size > settings.max_upload_bytes:
                        raise HTTPException(413, f"file: larger than the upload limit of {settings.max_upload_bytes:,} "
                                                 "bytes; put it in the data directory and give 'catalog'")
                    fh.write(chunk)
        except HTTPException:
            shutil.rmtree(work, ignore_errors=True)
            jobs.finish(job["id"], "failed", error="upload refused: too large")
            raise
        job = jobs.update(job["id"], params={**job["params"], "input": str(target), "upload_bytes": size})
    runner.submit(job["id"])
    return job


@router.post("/pk", status_code=202, response_model=JobInfo)
def submit_pk(req: PkJobRequest, settings: SettingsDep, jobs: JobsDep, runner: RunnerDep, _: TokenDep) -> dict:
    if req.job_id is not None:
        paint = _job(jobs, req.job_id)
        if paint["kind"] != "paint" or paint["status"] != "succeeded":
            raise HTTPException(409, f"job_id: {req.job_id} is a {paint['kind']} job with status {paint['status']}; "
                                     "a succeeded paint job is needed")
        source = job_dir(settings.data_dir, req.job_id) / paint["result"]["file"]
    else:
        source = _inside_data_dir(settings, req.path, "path")  # type: ignore[arg-type]
    truth = _inside_data_dir(settings, req.truth, "truth") if req.truth else None
    if req.targets:
        _targets(",".join(req.targets))
    params = {"input": str(source), "truth": None if truth is None else str(truth), "box": req.box,
              "nmesh": req.nmesh, "targets": req.targets, "edges": req.edges, "columns": req.columns,
              "source": req.job_id or req.path}
    job = jobs.create("pk", params)
    runner.submit(job["id"])
    return job


@router.get("", response_model=list[JobInfo])
def list_jobs(jobs: JobsDep, limit: int = 100, status_filter: str | None = None) -> list[dict]:
    return jobs.list(limit=limit, status=status_filter)


@router.get("/{job_id}", response_model=JobInfo)
def get_job(job_id: str, jobs: JobsDep) -> dict:
    return _job(jobs, job_id)


@router.get("/{job_id}/result")
def get_result(job_id: str, jobs: JobsDep, settings: SettingsDep, part: str = "file") -> FileResponse:
    job = _job(jobs, job_id)
    if job["status"] != "succeeded":
        raise HTTPException(409, f"job_id: {job_id} is {job['status']}; its result exists once it has succeeded")
    name = (job["result"] or {}).get(part)
    if not isinstance(name, str):
        raise HTTPException(404, f"part: this job has no {part!r} result (parts: "
                                 f"{', '.join(k for k in ('file', 'figure', 'csv') if k in job['result'])})")
    return FileResponse(job_dir(settings.data_dir, job_id) / name, filename=f"{job_id}-{name}")


@router.delete("/{job_id}", response_model=JobInfo)
def cancel_job(job_id: str, jobs: JobsDep, _: TokenDep) -> dict:
    job = _job(jobs, job_id)
    if job["status"] in FINAL:
        return job
    return jobs.cancel(job_id)
