"""Persistent batch jobs (catalog painting, P(k)), stored in the registry's SQLite database.

Statuses: ``pending`` -> ``running`` -> ``succeeded`` | ``failed`` | ``canceled``.  Jobs run in worker
processes (``JobRunner``); each worker opens its own database connection, reports ``progress``
(0-1) and checks for cancellation at every progress step.  Results are written under
``<data_dir>/jobs/<id>/`` atomically, and only a finished result is ever recorded.  At start-up,
``JobStore.recover()`` marks jobs left ``running`` by a crash as failed (with the reason) and
queues ``pending`` ones again.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import traceback
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Float, String, Text, create_engine, event, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

STATUSES = ("pending", "running", "succeeded", "failed", "canceled")
FINAL = ("succeeded", "failed", "canceled")
KINDS = ("paint", "pk")


class JobError(Exception):
    """A job request that cannot be accepted, or a job that does not exist."""


class JobCanceled(Exception):
    pass


class _Base(DeclarativeBase):
    pass


class JobRow(_Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict] = mapped_column(JSON)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)  # host:pid running it


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _worker_alive(worker: str | None) -> bool:
    """Whether the process that took a job still runs (only knowable on the same host)."""
    if not worker or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite drops the zone: values are stored in UTC
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


class JobStore:
    """Jobs in ``<registry>/registry.sqlite`` (table ``jobs``), safe to open from several processes."""

    def __init__(self, database: str | Path) -> None:
        self.database = Path(database)
        self.engine = create_engine(f"sqlite:///{self.database}", connect_args={"timeout": 30})

        @event.listens_for(self.engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - runs on every connect
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        _Base.metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Databases made by an earlier galaxypaint lack newer nullable columns: add them in place."""
        from sqlalchemy import inspect, text

        have = {c["name"] for c in inspect(self.engine).get_columns(JobRow.__tablename__)}
        with self.engine.begin() as conn:
            for col in JobRow.__table__.columns:
                if col.name not in have and col.nullable:
                    conn.execute(text(f"ALTER TABLE {JobRow.__tablename__} ADD COLUMN {col.name} "
                                      f"{col.type.compile(self.engine.dialect)}"))

    def create(self, kind: str, params: dict[str, Any]) -> dict:
        if kind not in KINDS:
            raise JobError(f"unknown job kind {kind!r}")
        row = JobRow(id=f"job-{uuid.uuid4().hex[:12]}", kind=kind, status="pending", progress=0.0, message="queued",
                     params=params, created_at=_now())
        with Session(self.engine) as s, s.begin():
            s.add(row)
            s.flush()
            return self._dict(row)

    def get(self, job_id: str) -> dict:
        with Session(self.engine) as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise JobError(f"no job {job_id!r}")
            return self._dict(row)

    def list(self, limit: int = 100, status: str | None = None) -> list[dict]:
        with Session(self.engine) as s:
            q = select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
            if status:
                q = q.where(JobRow.status == status)
            return [self._dict(r) for r in s.scalars(q)]

    def update(self, job_id: str, **fields: Any) -> dict:
        """Change non-status fields (progress, message, params)."""
        if "status" in fields:
            raise ValueError("status changes go through start/finish/cancel")
        with Session(self.engine) as s, s.begin():
            if s.execute(update(JobRow).where(JobRow.id == job_id).values(**fields)).rowcount != 1:
                raise JobError(f"no job {job_id!r}")
        return self.get(job_id)

    # state changes are single conditional UPDATEs: a cancel can never be overwritten by a worker
    def _transition(self, job_id: str, allowed_from: tuple[str, ...], **values: Any) -> bool:
        with Session(self.engine) as s, s.begin():
            res = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status.in_(allowed_from))
                            .values(**values))
            return res.rowcount == 1

    def start(self, job_id: str) -> bool:
        """pending -> running; False if the job was canceled (or taken) meanwhile."""
        return self._transition(job_id, ("pending",), status="running", started_at=_now(), message="started",
                                worker=_worker_id())

    def finish(self, job_id: str, status: str, result: dict | None = None, error: str | None = None) -> None:
        values: dict[str, Any] = {"status": status, "finished_at": _now(), "result": result, "error": error}
        if status == "succeeded":
            values.update(progress=1.0, message="done")
        self._transition(job_id, ("pending", "running"), **values)  # a recorded cancel wins

    def cancel(self, job_id: str) -> dict:
        self.get(job_id)  # 404 for unknown ids
        self._transition(job_id, ("pending", "running"), status="canceled", finished_at=_now(),
                         message="canceled by request")
        return self.get(job_id)

    def status(self, job_id: str) -> str:
        with Session(self.engine) as s:
            row = s.get(JobRow, job_id)
            return "missing" if row is None else row.status

    def recover(self) -> tuple[list[str], list[str]]:
        """After a (re)start: fail jobs whose worker process is gone, return (failed ids, pending ids).

        Several server processes may share the database (``--workers N``): a running job whose worker
        is alive on this host is left alone.
        """
        failed = []
        with Session(self.engine) as s:
            running = list(s.execute(select(JobRow.id, JobRow.worker).where(JobRow.status == "running")))
        for job_id, worker in running:
            if not _worker_alive(worker):
                if self._transition(job_id, ("running",), status="failed", finished_at=_now(),
                                    error="the server stopped while this job was running; submit it again"):
                    failed.append(job_id)
        with Session(self.engine) as s:
            pending = list(s.scalars(select(JobRow.id).where(JobRow.status == "pending").order_by(JobRow.created_at)))
        return failed, pending

    @staticmethod
    def _dict(row: JobRow) -> dict:
        return {"id": row.id, "kind": row.kind, "status": row.status, "progress": row.progress,
                "message": row.message, "params": row.params, "result": row.result, "error": row.error,
                "created_at": _iso(row.created_at), "started_at": _iso(row.started_at),
                "finished_at": _iso(row.finished_at)}


# ----------------------------------------------------------------------------- execution (worker side)


def job_dir(data_dir: str | Path, job_id: str) -> Path:
    return Path(data_dir) / "jobs" / job_id


def execute(database: str, registry_root: str, data_dir: str, job_id: str, threads: int = 1) -> str:
    """Run one job to completion in this process; returns its final status (never raises)."""
    store = JobStore(database)
    if not store.start(job_id):
        return store.status(job_id)
    job = store.get(job_id)
    work = job_dir(data_dir, job_id)
    work.mkdir(parents=True, exist_ok=True)
    last = {"p": -1.0}

    def progress(fraction: float, message: str = "") -> None:
        if store.status(job_id) == "canceled":
            raise JobCanceled()
        if fraction - last["p"] >= 0.01 or fraction >= 1.0:
            last["p"] = fraction
            store.update(job_id, progress=float(min(max(fraction, 0.0), 1.0)), message=message)

    try:
        if job["kind"] == "paint":
            result = _run_paint(job["params"], registry_root, work, progress, threads)
        else:
            result = _run_pk(job["params"], data_dir, work, progress, store)
        if store.status(job_id) == "canceled":
            raise JobCanceled()
        store.finish(job_id, "succeeded", result=result)
    except JobCanceled:
        _clean(work, keep_inputs=True)
    except Exception as exc:  # the job fails with one readable line; details stay in the server log
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        store.finish(job_id, "failed", error=msg)
        traceback.print_exc()
        _clean(work, keep_inputs=True)
    return store.status(job_id)


def _clean(work: Path, keep_inputs: bool) -> None:
    for p in work.glob("*"):
        if keep_inputs and p.name.startswith("input"):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _run_paint(params: dict, registry_root: str, work: Path, progress, threads: int) -> dict:
    from app.painting import paint_file
    from app.registry import Registry

    out = work / f"painted.{params.get('output_format', 'parquet')}"
    summary = paint_file(params["input"], out, Registry(registry_root, create=False), path=params.get("path", "raw"),
                         targets=params.get("targets"), model=params.get("model"), columns=params.get("columns"),
                         progress=lambda done, total: progress(done / max(total, 1), f"{done:,}/{total:,} halos"),
                         threads=threads)
    return {"file": out.name, **{k: v for k, v in summary.items() if k != "output"}}


def _run_pk(params: dict, data_dir: str, work: Path, progress, store: JobStore) -> dict:
    import numpy as np

    from app.catalogs import load_catalog
    from app.clustering import bin_edges, compare_catalog, long_table, summary_table
    from app.figures import plot_clustering
    from app.schema import POSITION_NAMES

    source = params["input"]
    df, _ = load_catalog(source, require=list(POSITION_NAMES), mapping=params.get("columns"), range_policy="warn")
    if params.get("truth"):
        truth, _ = load_catalog(params["truth"], require=list(POSITION_NAMES), range_policy="warn")
        if len(truth) != len(df):
            raise ValueError(f"the truth catalog has {len(truth):,} rows, the painted one {len(df):,}: they must "
                             "be the same haloes in the same order")
        for t in [c for c in truth.columns if c + "_pred" in df.columns]:
            df[t] = truth[t].to_numpy()
    box = float(params.get("box", 205.0))
    results = compare_catalog(df, box, int(params.get("nmesh", 256)), params.get("targets"),
                              bin_edges(params.get("edges")), progress=lambda f, m: progress(f, m))
    payload = {"box": box, "nmesh": int(params.get("nmesh", 256)), "results": [r.as_dict() for r in results]}
    tmp = work / "pk.json.tmp"
    tmp.write_text(json.dumps(payload))
    long_table(results).to_csv(work / "pk.csv", index=False)
    plot_clustering(results, work / "pk.png", title="predicted vs true P(k)")
    tmp.replace(work / "pk.json")
    table = summary_table(results).replace({np.nan: None})
    return {"file": "pk.json", "figure": "pk.png", "csv": "pk.csv", "summary": table.to_dict(orient="records")}


# ----------------------------------------------------------------------------- runner (server side)


class JobRunner:
    """Hands queued jobs to a pool of worker processes (spawned: no state shared with the server)."""

    def __init__(self, store: JobStore, registry_root: str | Path, data_dir: str | Path, workers: int = 1,
                 threads: int = 1) -> None:
        self.store = store
        self.registry_root = str(registry_root)
        self.data_dir = str(data_dir)
        self.threads = threads
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, job_id: str) -> None:
        self.pool.submit(execute, str(self.store.database), self.registry_root, self.data_dir, job_id, self.threads)

    def shutdown(self) -> None:
        """Stop the workers (a job they were running is marked failed, never left half-done)."""
        processes = list(getattr(self.pool, "_processes", {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        for proc in processes:
            proc.join(timeout=5)
        self.store.recover()
