"""The web pages under ``/``: registry, runs, one-halo prediction, painting, jobs, login.

Thin on purpose.  What a page shows comes from ``app.web.views``; what a form does is what the API
does, by calling the API's own route functions and the data plane (``app.api.routes.jobs.submit_paint``
for a paint job, ``submit_pk`` for the P(k) of a painted catalog, ``app.api.routes.models.move_alias``
for an alias, the dynamic batcher for a prediction), so validation, pinning, auditing and errors are
those of the API, never a second copy.  Reading the registry, runs and predictions is open, as on the
API; jobs need the submit scope and alias moves the admin scope, through the session cookie
(``app.web.session``).  Every route is a ``WebRoute`` (``app.web.render``): CSRF check, HTML errors,
security headers.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, FastAPI, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from app.api import dataplane
from app.api.deps import BatcherDep, JobsDep, MetricsDep, RegistryDep, RunnerDep, SettingsDep, StoreDep
from app.api.observability import audit
from app.api.routes import jobs as job_routes
from app.api.routes import models as model_routes
from app.api.schemas import AliasRequest, PkJobRequest
from app.core.registry import DEFAULT_ALIAS, parse_version
from app.core.schema import DEFAULT_QUANTILE_LEVELS, FEATURES, TARGET_NAMES, TARGETS
from app.core.settings import Settings
from app.web import session, views
from app.web.render import WebRoute, error_of, local_path, render

router = APIRouter(route_class=WebRoute, include_in_schema=False)

Name = Annotated[str, Path(max_length=128)]
JobId = Annotated[str, Path(max_length=64)]
Text = Annotated[str, Form(max_length=4096)]
Optional = Annotated[str | None, Form(max_length=4096)]


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the pages and their static files on ``app`` (``create_app`` calls this unless ``web_ui`` is off)."""
    app.state.web_sessions = session.SessionStore(settings.data_dir, settings.web_session_hours * 3600.0)
    app.include_router(router)
    app.mount("/static", StaticFiles(packages=[("app.web", "static")]), name="web-static")


# ----------------------------------------------------------------------------- registry


@router.get("/")
def registry_page(request: Request, registry: RegistryDep) -> Response:
    return render(request, "registry.html", groups=views.registry_groups(registry), metrics=views.METRICS,
                  runs=registry.list_runs())


@router.get("/models/{name}")
def model_page(request: Request, name: Name, registry: RegistryDep,
               moved: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    versions = registry.versions(name)
    if not versions:
        raise HTTPException(404, f"name: no model named {name!r}")
    return render(request, "model.html", forms=True, name=name, versions=list(reversed(versions)),
                  aliases=views.aliases_of(versions), metrics=views.METRICS, moved=moved,
                  default_alias=DEFAULT_ALIAS)


@router.get("/models/{name}/versions/{version}")
def version_page(request: Request, name: Name, version: Annotated[str, Path(max_length=12)],
                 registry: RegistryDep) -> Response:
    mv = registry.get(name, version=parse_version(version))
    return render(request, "version.html", mv=mv, metrics=views.METRICS, domain=views.training_domain(mv))


@router.post("/models/{name}/aliases")
def promote(request: Request, name: Name, registry: RegistryDep, alias: Text, version: Text) -> Response:
    caller = session.caller(request, "admin")
    req = AliasRequest(alias=alias.strip(), version=parse_version(version.strip()))
    moved = model_routes.move_alias(name, req, registry, caller)
    return RedirectResponse(f"/models/{name}?moved={moved['alias']}", status_code=303)


# ----------------------------------------------------------------------------- runs


@router.get("/runs")
def runs_page(request: Request, registry: RegistryDep) -> Response:
    runs = [registry.get_run(r) for r in reversed(registry.list_runs())]
    return render(request, "runs.html", runs=runs)


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: Annotated[str, Path(max_length=64)], registry: RegistryDep) -> Response:
    run = registry.get_run(run_id)
    artefacts = registry.run_artefacts(run_id)
    return render(request, "run.html", run=run, figures=views.run_figures(artefacts),
                  documents=views.report_documents(artefacts), rows=views.run_metrics(run))


# ----------------------------------------------------------------------------- predict


def _halo(request: Request) -> tuple[np.ndarray | None, dict[str, str], str | None]:
    """The five features typed in the form (None until all are given), as typed, and the first problem."""
    typed = {c.name: request.query_params.get(c.name, "")[:64] for c in FEATURES}
    if not any(typed.values()):
        return None, typed, None
    values = []
    for col in FEATURES:
        try:
            values.append(float(typed[col.name]))
        except ValueError:
            return None, typed, f"{col.name}: {typed[col.name]!r} is not a number ({col.unit})"
    return np.array([values]), typed, None


@router.get("/predict")
async def predict_page(request: Request, store: StoreDep, batcher: BatcherDep, metrics: MetricsDep,
                       variant: Annotated[str, Query(max_length=16)] = "raw",
                       model: Annotated[str | None, Query(max_length=256)] = None) -> Response:
    x, typed, problem = _halo(request)
    model = (model.strip() or None) if model else None
    result = quantiles = None
    status = 422 if problem else 200
    if x is not None:
        try:  # the API's path: plan (validation, resolution) and compute through the dynamic batcher
            result = await batcher.predict(1, lambda: dataplane.plan(store, x, variant, None, model))
            for target in result.targets:
                metrics.predictions.labels(target, "web").inc()
            if variant == "raw" and model is None:  # the sampler's 16/50/84 % quantiles, when there is one
                try:
                    quantiles = await batcher.predict(1, lambda: dataplane.plan(
                        store, x, variant, None, None, dataplane.request_mode("quantiles")))
                except dataplane.DataPlaneError:
                    quantiles = None  # no joint sampler registered: the means alone
        except dataplane.DataPlaneError as exc:  # shown beside the form, which keeps what was typed
            problem, status = (f"{exc.field}: {exc}" if exc.field else str(exc)), exc.status
    return render(request, "predict.html", status_code=status, features=FEATURES, typed=typed,
                  variant=variant, model=model or "", variants=dataplane.VARIANTS, problem=problem, result=result,
                  quantiles=quantiles, targets=TARGETS, levels=DEFAULT_QUANTILE_LEVELS)


# ----------------------------------------------------------------------------- paint and jobs


@router.get("/paint")
def paint_page(request: Request, settings: SettingsDep) -> Response:
    session.caller(request, "submit")
    return render(request, "paint.html", forms=True, catalogs=views.data_catalogs(settings.data_dir),
                  targets=TARGET_NAMES, variants=dataplane.VARIANTS, formats=job_routes.OUTPUT_FORMATS,
                  presets=views.column_presets())


def _blank(value: str | None) -> str | None:
    """An empty form field is a field not given (browsers send every field, empty or not)."""
    return (value.strip() or None) if value is not None else None


@router.post("/paint")
def paint_submit(request: Request, settings: SettingsDep, jobs: JobsDep, runner: RunnerDep, store: StoreDep,
                 file: Annotated[UploadFile | None, File()] = None, catalog: Optional = None,
                 columns: Optional = None, column_preset: Optional = None, variant: Optional = None,
                 targets: Annotated[list[str] | None, Form()] = None, model: Optional = None,
                 output_format: Optional = None, mode: Optional = None, seed: Optional = None,
                 quantiles: Optional = None, id_column: Optional = None, on_invalid: Optional = None) -> Response:
    caller = session.caller(request, "submit")
    if file is not None and not file.filename:  # the file input left empty
        file = None
    seed_text = _blank(seed)
    if seed_text is not None and not (seed_text.isascii() and seed_text.isdigit()):  # '²'.isdigit() is True
        raise HTTPException(422, f"seed: {seed_text[:40]!r} is not a non-negative integer")
    job = job_routes.submit_paint(
        settings=settings, jobs=jobs, runner=runner, store=store, caller=caller, file=file, catalog=_blank(catalog),
        columns=_blank(columns), column_preset=_blank(column_preset), variant=_blank(variant),
        targets=",".join(targets) if targets else None, model=_blank(model),
        output_format=_blank(output_format) or "parquet", mode=_blank(mode),
        seed=None if seed_text is None else int(seed_text), quantiles=_blank(quantiles),
        id_column=_blank(id_column), on_invalid=_blank(on_invalid))
    return RedirectResponse(f"/jobs/{job['id']}", status_code=303)


@router.get("/jobs")
def jobs_page(request: Request, jobs: JobsDep, settings: SettingsDep) -> Response:
    session.caller(request, "submit")
    page, _ = jobs.list(limit=100)
    return render(request, "jobs.html", jobs=[job_routes.public(j, settings) for j in page])


#: the P(k) form's mesh per side (the server's ``max_pk_nmesh`` caps it): a painted catalog's P(k) in seconds
PK_NMESH = 128


def _pk_nmesh(settings: Settings) -> int:
    """The P(k) form's default mesh: ``PK_NMESH`` within this server's limit."""
    return min(PK_NMESH, settings.max_pk_nmesh)


def _job(request: Request, jobs, settings, job_id: str) -> dict:
    session.caller(request, "submit")
    return job_routes.public(job_routes.job_or_404(jobs, job_id), settings)


def _job_page(request: Request, job: dict, settings: Settings, status_code: int = 200,
              pk_problem: str | None = None, pk_typed: dict[str, str] | None = None) -> Response:
    """A job's page: its state, results, a P(k) job's figure and summary, and for a succeeded paint job
    the form measuring its P(k) (with the problem of a refused submission, and what was typed)."""
    parts = [p for p in job_routes.RESULT_PARTS if isinstance((job.get("result") or {}).get(p), str)]
    pk_form = job["kind"] == "paint" and job["status"] == "succeeded" and not job.get("expired")
    typed = {"box": "", "nmesh": str(_pk_nmesh(settings)), **(pk_typed or {})}
    return render(request, "job.html", status_code=status_code, forms=pk_form, job=job, parts=parts,
                  active=job["status"] not in ("succeeded", "failed", "canceled"),
                  pk_summary=views.pk_summary(job), pk_form=pk_form, pk_problem=pk_problem, pk_typed=typed,
                  max_nmesh=settings.max_pk_nmesh)


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: JobId, jobs: JobsDep, settings: SettingsDep) -> Response:
    return _job_page(request, _job(request, jobs, settings, job_id), settings)


def _number_field(value: str | None, name: str, kind: type[int] | type[float], unit: str = "") -> int | float | None:
    """A number typed in a form (None when left empty); a 422 naming the field otherwise."""
    text = _blank(value)
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise HTTPException(422, f"{name}: {text[:40]!r} is not {what}{f' [{unit}]' if unit else ''}") from None


@router.post("/jobs/{job_id}/pk")
def pk_submit(request: Request, job_id: JobId, settings: SettingsDep, jobs: JobsDep, runner: RunnerDep,
              store: StoreDep, box: Optional = None, nmesh: Optional = None) -> Response:
    """Measure the P(k) of a succeeded paint job's catalog: the API's ``submit_pk``, whose refusals (no box
    recorded, a mesh above the server's limit, a job that is not a succeeded paint job) are shown on the
    job's page beside the form, which keeps what was typed."""
    caller = session.caller(request, "submit")
    try:
        mesh = _number_field(nmesh, "nmesh", int)
        req = PkJobRequest(job_id=job_id, box=_number_field(box, "box", float, "Mpc/h"),
                           nmesh=_pk_nmesh(settings) if mesh is None else mesh)
        job = job_routes.submit_pk(req=req, settings=settings, jobs=jobs, runner=runner, store=store, caller=caller)
    except (HTTPException, ValidationError) as exc:
        status, message = error_of(exc) or (422, str(exc))
        if status not in (409, 422):  # no such job: its error page; a full disk: the error page too
            raise
        return _job_page(request, _job(request, jobs, settings, job_id), settings, status_code=status,
                         pk_problem=message, pk_typed={"box": (box or "")[:64], "nmesh": (nmesh or "")[:64]})
    return RedirectResponse(f"/jobs/{job['id']}", status_code=303)


@router.get("/jobs/{job_id}/status")
def job_status(request: Request, job_id: JobId, jobs: JobsDep, settings: SettingsDep) -> dict:
    """What the job page's script polls: status, progress (0-1) and message."""
    job = _job(request, jobs, settings, job_id)
    return {k: job.get(k) for k in ("id", "status", "progress", "message", "error")}


@router.get("/jobs/{job_id}/result")
def job_result(request: Request, job_id: JobId, jobs: JobsDep, settings: SettingsDep,
               part: Annotated[str, Query(max_length=16)] = "file") -> FileResponse:
    """A finished job's result part (the painted file, a P(k) job's figure and tables), by the API's rules."""
    caller = session.caller(request, "submit")
    return job_routes.get_result(job_id, jobs, settings, caller, part)


# ----------------------------------------------------------------------------- login


@router.get("/login")
def login_page(request: Request, next: Annotated[str, Query(max_length=1024)] = "/") -> Response:
    return render(request, "login.html", forms=True, next=local_path(next), problem=None)


@router.post("/login")
def login_submit(request: Request, token: Annotated[str, Form(max_length=1024)] = "",
                 next: Annotated[str, Form(max_length=1024)] = "/") -> Response:
    try:
        caller = session.login(request, token.strip())
    except HTTPException:
        return render(request, "login.html", forms=True, status_code=401, next=local_path(next),
                      problem="That token is not accepted by this server.")
    audit("web.login", scope=caller.scope, client=caller.client)
    return RedirectResponse(local_path(next), status_code=303)


@router.post("/logout")
def logout_submit(request: Request) -> Response:
    session.logout(request)
    return RedirectResponse("/", status_code=303)
