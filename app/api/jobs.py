"""Persistent batch jobs (catalog painting, P(k)), stored in the registry's SQLite database.

Statuses: ``pending`` -> ``running`` -> ``succeeded`` | ``failed`` | ``canceled``.

**The database is the queue.**  Submitting a job is inserting a ``pending`` row (``JobStore.create``);
nothing else has to succeed.  A ``JobRunner`` in each server process runs a supervisor thread that
claims pending rows oldest first (a conditional UPDATE, so two servers sharing the database never
take the same job) and runs every job in its own freshly spawned process, at most
``settings.job_workers`` at once.  The child opens its own database connection, reports
``progress`` (0-1) and checks for cancellation at every progress step.

**Faults.**  The supervisor watches each child every poll (~0.5 s): a child that dies (an
out-of-memory kill, a crash in native code) fails its job with the exit signal as the reason; a
child running longer than ``job_time_limit_s`` or resident above ``job_memory_limit_mb`` is killed
(SIGKILL) and its job failed; a job canceled through the API is killed at once.  The server and
the next job are unaffected.  A child dies with its server (``PR_SET_PDEATHSIG`` on Linux, plus a
watchdog thread on the parent pid): no orphan finishes a job nobody records.  Every ~30 s, and at
start-up, ``JobStore.recover()`` fails jobs left ``running`` by a server process that is gone.

**What survives a crash.**  Rows: a ``pending`` job stays pending and runs after the restart; a
``running`` job of a dead server is failed ("submit it again") - it is never resumed.  Files:
results are written under ``<data_dir>/jobs/<id>/`` atomically (``*.tmp``, then renamed), and only
a finished result is ever recorded; a failed or canceled job keeps only its inputs.

**What is kept on disk, and for how long.**  ``JobStore.sweep`` (at start-up and every ~60 s)
deletes the whole directory of a finished job ``job_retention_hours`` after it finished, and the
oldest finished jobs' directories first while ``<data_dir>/jobs`` exceeds ``jobs_quota_bytes``
(files an active job reads are spared).  It also removes ``*.tmp`` leftovers of finished jobs and
job directories without a row (after an hour's grace, so an upload being written is safe).  The
row of a swept job stays, with ``expired_at`` set, so a result download can answer 410 Gone;
rows go only by ``JobStore.delete``.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import ctypes
import logging
import multiprocessing
import multiprocessing.util  # noqa: F401 - its atexit hook must be registered before ours (LIFO)
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (JSON, DateTime, Float, String, Text, and_, delete, func, or_,
                        select, update)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from app.core.db import columns, make_engine, migrate

if TYPE_CHECKING:  # pragma: no cover
    from app.core.settings import Settings

log = logging.getLogger("galaxypaint.jobs")

STATUSES = ("pending", "running", "succeeded", "failed", "canceled")
FINAL = ("succeeded", "failed", "canceled")
KINDS = ("paint", "pk")

#: message of a job whose server stopped under it (at shutdown, or found by ``recover`` after a crash)
SERVER_STOPPED = "the server stopped while this job was running; submit it again"
#: a job directory without a row is removed by ``sweep`` only after this long untouched (an upload
#: is written into its directory before the row that queues it exists)
ORPHAN_GRACE_S = 3600.0


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
    # host:pid of the *server* process supervising the job (its liveness decides ``recover``)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # when ``sweep`` deleted the job's files (the row stays so a download can say 410 Gone)
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def new_job_id() -> str:
    """A fresh job id: a route may write an upload into ``job_dir(data_dir, id)`` before ``create(..., job_id=id)``."""
    return f"job-{uuid.uuid4().hex[:12]}"


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


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite drops the zone: values are stored in UTC
        value = value.replace(tzinfo=timezone.utc)
    return value


def _iso(value: datetime | None) -> str | None:
    value = _aware(value)
    return None if value is None else value.isoformat()


def _encode_cursor(row: JobRow) -> str:
    raw = f"{_iso(row.created_at)}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, sep, job_id = raw.partition("|")
        when = datetime.fromisoformat(created)
        if not sep or not job_id or when.tzinfo is None:
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise JobError(f"cursor: {cursor[:40]!r} is not a page cursor this server issued") from None
    return when.astimezone(timezone.utc), job_id


def _tree_size(path: Path) -> int:
    """Apparent size of every regular file below ``path`` (symbolic links are not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:  # deleted meanwhile
                continue
            total += st.st_size
    return total


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                continue
    return newest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _add_missing_columns(conn) -> None:
    """0.1 -> 0.2: the job table gains ``worker`` and ``expired_at`` (nullable: old rows stay valid)."""
    from sqlalchemy import text

    have = columns(conn, JobRow.__tablename__)
    for col in JobRow.__table__.columns:
        if col.name not in have and col.nullable:
            conn.execute(text(f"ALTER TABLE {JobRow.__tablename__} ADD COLUMN {col.name} "
                              f"{col.type.compile(conn.dialect)}"))


#: forward-only schema migrations of the job table (``app.core.db.migrate``); append, never edit
JOB_MIGRATIONS = (_add_missing_columns,)


class JobStore:
    """Jobs in ``<registry>/registry.sqlite`` (table ``jobs``), safe to open from several processes."""

    def __init__(self, database: str | Path) -> None:
        self.database = Path(database)
        self.engine = make_engine(self.database)
        _Base.metadata.create_all(self.engine)
        migrate(self.engine, "jobs", JOB_MIGRATIONS)

    def create(self, kind: str, params: dict[str, Any], job_id: str | None = None) -> dict:
        """Queue a job: the ``pending`` row is the whole submission (a runner picks it up)."""
        if kind not in KINDS:
            raise JobError(f"unknown job kind {kind!r}")
        row = JobRow(id=job_id or new_job_id(), kind=kind, status="pending", progress=0.0, message="queued",
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

    def list(self, limit: int = 100, status: str | None = None,
             cursor: str | None = None) -> tuple[list[dict], str | None]:
        """One page of jobs, newest first, and the cursor of the next page (None on the last page).

        The cursor names the last row shown (creation time and id), so a page never repeats or skips
        a job when new jobs are submitted between requests.
        """
        if limit < 1:
            raise JobError(f"limit: {limit} is below 1")
        if status is not None and status not in STATUSES:
            raise JobError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
        q = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit + 1)
        if status:
            q = q.where(JobRow.status == status)
        if cursor:
            created, last_id = _decode_cursor(cursor)
            q = q.where(or_(JobRow.created_at < created, and_(JobRow.created_at == created, JobRow.id < last_id)))
        with Session(self.engine) as s:
            rows = list(s.scalars(q))
            more = len(rows) > limit
            rows = rows[:limit]
            return [self._dict(r) for r in rows], (_encode_cursor(rows[-1]) if more else None)

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
        """pending -> running, recording this process as the job's supervisor; False if the job was
        canceled (or taken by another server) meanwhile."""
        return self._transition(job_id, ("pending",), status="running", started_at=_now(), message="started",
                                worker=_worker_id())

    def claim(self) -> dict | None:
        """Take the oldest pending job (``start``), or None when there is none left to take."""
        with Session(self.engine) as s:
            candidates = list(s.scalars(select(JobRow.id).where(JobRow.status == "pending")
                                        .order_by(JobRow.created_at, JobRow.id).limit(16)))
        for job_id in candidates:
            if self.start(job_id):  # another server may win the race for a candidate: try the next
                return self.get(job_id)
        return None

    def finish(self, job_id: str, status: str, result: dict | None = None, error: str | None = None) -> bool:
        """Record the end of an active job; False if it had already ended (a recorded cancel wins)."""
        values: dict[str, Any] = {"status": status, "finished_at": _now(), "result": result, "error": error}
        if status == "succeeded":
            values.update(progress=1.0, message="done")
        return self._transition(job_id, ("pending", "running"), **values)

    def cancel(self, job_id: str) -> dict:
        self.get(job_id)  # 404 for unknown ids
        self._transition(job_id, ("pending", "running"), status="canceled", finished_at=_now(),
                         message="canceled by request")
        return self.get(job_id)

    def delete(self, job_id: str, data_dir: str | Path) -> dict:
        """Remove a finished job's row and files; returns the job as it was.  An active job must be
        canceled first (``JobError``)."""
        job = self.get(job_id)
        if job["status"] not in FINAL:
            raise JobError(f"job {job_id} is {job['status']}: cancel it before deleting it")
        with Session(self.engine) as s, s.begin():
            gone = s.execute(delete(JobRow).where(JobRow.id == job_id, JobRow.status.in_(FINAL))).rowcount
        if gone != 1:
            raise JobError(f"no job {job_id!r}")
        # the row goes first: a directory without a row is garbage that ``sweep`` would also remove
        shutil.rmtree(job_dir(data_dir, job_id), ignore_errors=True)
        return job

    def counts(self) -> dict[str, int]:
        """Jobs per status (every status present, zeros included)."""
        with Session(self.engine) as s:
            found = dict(s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all())
        return {status: int(found.get(status, 0)) for status in STATUSES}

    def status(self, job_id: str) -> str:
        with Session(self.engine) as s:
            row = s.get(JobRow, job_id)
            return "missing" if row is None else row.status

    @staticmethod
    def files_available(job: dict) -> bool:
        """Whether a job's files may still exist (False once ``sweep`` deleted them: answer 410 Gone)."""
        return job.get("expired_at") is None

    def recover(self) -> tuple[list[str], list[str]]:
        """Fail jobs whose supervising server process is gone; return (failed ids, pending ids).

        Several server processes may share the database (``--workers N``): a running job whose
        server is alive on this host is left alone.  Pending jobs need nothing: runners take them.
        """
        failed = []
        with Session(self.engine) as s:
            running = list(s.execute(select(JobRow.id, JobRow.worker).where(JobRow.status == "running")))
        for job_id, worker in running:
            if not _worker_alive(worker):
                if self._transition(job_id, ("running",), status="failed", finished_at=_now(), error=SERVER_STOPPED):
                    failed.append(job_id)
        with Session(self.engine) as s:
            pending = list(s.scalars(select(JobRow.id).where(JobRow.status == "pending").order_by(JobRow.created_at)))
        return failed, pending

    # ------------------------------------------------------------------------- disk: retention and quota

    def disk_usage(self, data_dir: str | Path) -> int:
        """Bytes of every file under ``<data_dir>/jobs`` (inputs and results of all jobs)."""
        root = Path(data_dir) / "jobs"
        return _tree_size(root) if root.is_dir() else 0

    def sweep(self, data_dir: str | Path, retention_hours: float, quota_bytes: int,
              orphan_grace_s: float = ORPHAN_GRACE_S) -> dict:
        """Delete what jobs no longer need on disk; returns what was done.

        1. job directories without a row, untouched for ``orphan_grace_s`` (crash leftovers of deleted
           jobs or abandoned uploads; only names that look like job ids);
        2. ``*.tmp`` leftovers of finished jobs (a killed worker's half-written results);
        3. the directories of jobs finished more than ``retention_hours`` ago;
        4. while ``<data_dir>/jobs`` is above ``quota_bytes``: the oldest finished jobs' directories.

        Files an active job reads (its ``input``/``truth`` under another job's directory, e.g. a P(k)
        job on a paint job's result) are spared by 3 and 4.  Swept jobs keep their row and result
        description, with ``expired_at`` set and a message saying why the files are gone.
        """
        root = Path(data_dir) / "jobs"
        now = _now()
        report: dict[str, Any] = {"orphans": [], "tmp_removed": 0, "expired": [], "evicted": [],
                                  "bytes_freed": 0, "usage_bytes": 0, "quota_bytes": quota_bytes,
                                  "over_quota": False}
        with Session(self.engine) as s:
            rows = {r.id: r for r in s.execute(select(JobRow.id, JobRow.status, JobRow.created_at,
                                                      JobRow.finished_at, JobRow.expired_at))}
            active_params = list(s.scalars(select(JobRow.params).where(JobRow.status.in_(("pending", "running")))))
        in_use = set()
        real_root = root.resolve()  # params hold absolute paths, data_dir may be relative or a symlink
        for params in active_params:
            for key in ("input", "truth"):
                value = (params or {}).get(key)
                if isinstance(value, str) and value:
                    p = Path(value).resolve()
                    if p.is_relative_to(real_root) and len(p.relative_to(real_root).parts) > 1:
                        in_use.add(p.relative_to(real_root).parts[0])

        dirs = {p.name: p for p in root.iterdir() if p.is_dir() and not p.is_symlink()} if root.is_dir() else {}
        for name, path in sorted(dirs.items()):
            if name in rows or not name.startswith("job-"):
                continue
            try:
                if time.time() - _newest_mtime(path) < orphan_grace_s:
                    continue
                size = _tree_size(path)
            except OSError:
                continue
            shutil.rmtree(path, ignore_errors=True)
            report["orphans"].append(name)
            report["bytes_freed"] += size
        for name, path in sorted(dirs.items()):
            row = rows.get(name)
            if row is None or row.status not in FINAL or not path.is_dir():
                continue  # a running job's *.tmp are its work in progress
            for tmp in sorted(path.rglob("*.tmp"), key=lambda p: -len(p.parts)):
                try:
                    size = _tree_size(tmp) if tmp.is_dir() else tmp.lstat().st_size
                except OSError:
                    continue
                _remove(tmp)
                report["tmp_removed"] += 1
                report["bytes_freed"] += size

        def expire(job_id: str, message: str) -> None:
            path = dirs.get(job_id)
            if path is not None and path.is_dir():
                report["bytes_freed"] += _tree_size(path)
                shutil.rmtree(path, ignore_errors=True)
            with Session(self.engine) as s, s.begin():
                s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status.in_(FINAL),
                                               JobRow.expired_at.is_(None))
                          .values(expired_at=now, message=message))

        def ended(row) -> datetime:
            return _aware(row.finished_at or row.created_at)

        finished = sorted((r for r in rows.values() if r.status in FINAL and r.expired_at is None
                           and r.id not in in_use), key=lambda r: (ended(r), r.id))
        cutoff = now - timedelta(hours=retention_hours)
        for row in [r for r in finished if ended(r) < cutoff]:
            expire(row.id, f"files deleted {retention_hours:g} h after the job ended (retention)")
            report["expired"].append(row.id)
        finished = [r for r in finished if r.id not in set(report["expired"])]

        sizes = {}
        for name, path in dirs.items():
            if path.is_dir():
                sizes[name] = _tree_size(path)
        usage = _tree_size(root) if root.is_dir() else 0
        for row in finished:  # oldest first
            if usage <= quota_bytes:
                break
            if not sizes.get(row.id):
                continue  # nothing on disk to free
            usage -= sizes[row.id]
            expire(row.id, f"files deleted to keep job files under the quota of {quota_bytes:,} bytes")
            report["evicted"].append(row.id)
        report["usage_bytes"] = usage
        report["over_quota"] = usage > quota_bytes
        return report

    @staticmethod
    def _dict(row: JobRow) -> dict:
        return {"id": row.id, "kind": row.kind, "status": row.status, "progress": row.progress,
                "message": row.message, "params": row.params, "result": row.result, "error": row.error,
                "created_at": _iso(row.created_at), "started_at": _iso(row.started_at),
                "finished_at": _iso(row.finished_at), "expired_at": _iso(row.expired_at),
                "expired": row.expired_at is not None}


# ----------------------------------------------------------------------------- execution (child side)


def job_dir(data_dir: str | Path, job_id: str) -> Path:
    return Path(data_dir) / "jobs" / job_id


def _default_limits() -> dict[str, int]:
    from app.core.settings import Settings

    return {name: Settings.model_fields[name].default for name in ("max_upload_bytes", "max_pk_nmesh")}


@dataclass(frozen=True)
class JobContext:
    """What a job body gets besides its ``params`` (new needs go here, not into every signature)."""

    store: JobStore
    job_id: str
    registry_root: str
    data_dir: str
    work: Path
    progress: Callable[..., None]
    threads: int = 1
    limits: dict[str, Any] = field(default_factory=dict)


def execute(database: str, registry_root: str, data_dir: str, job_id: str, threads: int = 1,
            limits: dict[str, Any] | None = None) -> str:
    """Run one claimed (``running``) job to completion in this process; returns its final status
    (never raises).  ``limits``: ``max_upload_bytes``, ``max_pk_nmesh`` (the settings' defaults if absent)."""
    store = JobStore(database)
    if store.status(job_id) != "running":  # canceled between the claim and this process starting
        return store.status(job_id)
    job = store.get(job_id)
    work = job_dir(data_dir, job_id)
    work.mkdir(parents=True, exist_ok=True)
    last = {"p": -1.0}

    def progress(fraction: float, message: str = "") -> None:
        if store.status(job_id) != "running":  # canceled (or failed by the supervisor): stop here
            raise JobCanceled()
        if fraction - last["p"] >= 0.01 or fraction >= 1.0:
            last["p"] = fraction
            store.update(job_id, progress=float(min(max(fraction, 0.0), 1.0)), message=message)

    ctx = JobContext(store=store, job_id=job_id, registry_root=str(registry_root), data_dir=str(data_dir), work=work,
                     progress=progress, threads=threads, limits={**_default_limits(), **(limits or {})})
    try:
        if job["kind"] == "paint":
            result = _run_paint(job["params"], ctx)
        else:
            result = _run_pk(job["params"], ctx)
        if store.status(job_id) != "running":
            raise JobCanceled()
        store.finish(job_id, "succeeded", result=result)
    except JobCanceled:
        _clean(work, keep_inputs=True)
    except Exception as exc:  # the job fails with one readable line; details go to the log (stderr)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        store.finish(job_id, "failed", error=msg)
        print(f"galaxypaint job {job_id} failed:", file=sys.stderr)
        traceback.print_exc()
        _clean(work, keep_inputs=True)
    return store.status(job_id)


def _clean(work: Path, keep_inputs: bool) -> None:
    """Remove a job's files (all but ``input*`` when ``keep_inputs``), and every ``*.tmp`` leftover."""
    if not work.is_dir():
        return
    for tmp in sorted(work.rglob("*.tmp"), key=lambda p: -len(p.parts)):  # deepest first
        _remove(tmp)
    for p in work.iterdir():
        if keep_inputs and p.name.startswith("input"):
            continue
        _remove(p)


def _catalog_inspector() -> Callable[[str, int], dict] | None:
    """``app.core.catalog_inspect.inspect_catalog`` when that module exists (a broken one still raises)."""
    try:
        from app.core.catalog_inspect import inspect_catalog
    except ModuleNotFoundError as exc:
        if exc.name != "app.core.catalog_inspect":
            raise
        return None
    return inspect_catalog


def _run_paint(params: dict, ctx: JobContext) -> dict:
    """Paint with exactly the versions the job was accepted with (``params["models"]``, pinned by the
    route), whatever the aliases say now, in the mode it was accepted with (``mode``, ``seed``,
    ``quantiles``; jobs recorded before modes existed are mean) and keyed by its ``id_column``."""
    from app.core.model import Mode
    from app.core.registry import Registry
    from app.core.schema import DEFAULT_QUANTILE_LEVELS
    from app.painting.local import paint
    from app.painting.spec import PaintSpec

    inspect = _catalog_inspector()
    if inspect is not None:  # refuses oversized (decompressed) or malformed catalogs before any model loads
        ctx.progress(0.0, "checking the catalog")
        inspect(params["input"], int(ctx.limits["max_upload_bytes"]))
    out = ctx.work / f"painted.{params.get('output_format', 'parquet')}"
    registry = Registry(ctx.registry_root, create=False)
    mode = Mode(params.get("mode") or "mean", int(params.get("seed") or 0),
                params.get("quantiles") or DEFAULT_QUANTILE_LEVELS)
    spec = PaintSpec(Path(params["input"]), out, variant=params.get("variant", params.get("path", "raw")),
                     pinned=tuple(params["models"]), columns=params.get("columns") or {}, threads=ctx.threads,
                     max_bytes=int(ctx.limits["max_upload_bytes"]), mode=mode, id_column=params.get("id_column"),
                     on_invalid=params.get("on_invalid") or "error",  # jobs recorded before it: error
                     column_preset=params.get("column_preset"))
    progress = ctx.progress
    summary = paint(spec, registry, lambda done, total: progress(done / max(total, 1), f"{done:,}/{total:,} halos"))
    if "invalid_file" in summary:  # the dropped rows' listing, beside the output: result part "invalid"
        summary["invalid"] = Path(summary.pop("invalid_file")).name
    return {"file": out.name, **{k: v for k, v in summary.items() if k != "output"}}


def _run_pk(params: dict, ctx: JobContext) -> dict:
    nmesh = int(params.get("nmesh", 256))
    if nmesh > int(ctx.limits["max_pk_nmesh"]):  # the route checks first; this guards queued or old rows
        raise ValueError(f"nmesh: {nmesh} is above this server's limit of {ctx.limits['max_pk_nmesh']} "
                         "(memory grows as nmesh^3)")
    if params.get("mode") == "sample":
        return _run_pk_ensemble(params, ctx, nmesh)

    from app.core.catalogs import load_catalog
    from app.core.schema import POSITION_NAMES, pred_column
    from app.science.clustering import bin_edges, compare_catalog
    from app.science.pk_outputs import write_pk_outputs

    df, _ = load_catalog(params["input"], require=list(POSITION_NAMES), mapping=params.get("columns"),
                         range_policy="warn")
    if params.get("truth"):
        truth, _ = load_catalog(params["truth"], require=list(POSITION_NAMES), range_policy="warn")
        if len(truth) != len(df):
            raise ValueError(f"the truth catalog has {len(truth):,} rows, the painted one {len(df):,}: they must "
                             "be the same haloes in the same order")
        for t in [c for c in truth.columns if pred_column(c) in df.columns]:
            df[t] = truth[t].to_numpy()
    box = _box(params, df)
    edges = bin_edges(params.get("edges"))
    results = compare_catalog(df, box, nmesh, params.get("targets"), edges, progress=lambda f, m: ctx.progress(f, m))
    return write_pk_outputs(results, ctx.work, box=box, nmesh=nmesh, edges=edges, title="predicted vs true P(k)",
                            source=str(params.get("source", "")))


def _box(params: dict, df) -> float:
    """The job's box: the request's, else the one the catalog records (the route checked there is one;
    this guards queued rows of older servers, whose requests always carried a box)."""
    from app.core.box import resolve_box

    box, _ = resolve_box(params.get("box"), df.attrs, "the catalog", option="box")
    return box


def _run_pk_ensemble(params: dict, ctx: JobContext, nmesh: int) -> dict:
    """A P(k) job in mode sample: ``params["seeds"]`` catalogs drawn for the catalog's haloes by exactly the
    sampler the job was accepted with (``params["models"]``, pinned by the route), seeds ``seed0`` on,
    against the true galaxies (the catalog's own property columns, or those of ``truth``, same rows)."""
    from app.core.catalogs import read_table
    from app.core.model import GalaxyModel
    from app.core.registry import Registry
    from app.core.schema import TARGET_NAMES
    from app.painting.ensemble import ensemble_pk

    inspect = _catalog_inspector()
    if inspect is not None:  # the whole catalog is read into memory: refuse oversized or malformed files first
        ctx.progress(0.0, "checking the catalog")
        for key in ("input", "truth"):
            if params.get(key):
                inspect(params[key], int(ctx.limits["max_upload_bytes"]))
    df = read_table(params["input"], params.get("columns"))
    if params.get("truth"):
        truth = read_table(params["truth"])
        if len(truth) != len(df):
            raise ValueError(f"the truth catalog has {len(truth):,} rows, the halo catalog {len(df):,}: they must be "
                             "the same haloes in the same order")
        for t in [c for c in TARGET_NAMES if c in truth.columns]:
            df[t] = truth[t].to_numpy()
    model = GalaxyModel.from_pinned(Registry(ctx.registry_root, create=False), params["models"],
                                    params.get("variant", "raw"), ctx.threads)
    seed0, n = int(params.get("seed0") or 0), int(params["seeds"])
    progress = ctx.progress
    result = ensemble_pk(df, model, range(seed0, seed0 + n), _box(params, df), nmesh,
                         params.get("edges"), id_column=params.get("id_column"),
                         progress=lambda done, total: progress(done / max(total, 1), f"{done}/{total} sampled catalogs"))
    written = result.write_outputs(ctx.work, title=f"{n} sampled catalogs vs the true P(k)",
                                   source=str(params.get("source", "")))
    return {**written, "mode": "sample", "n_realizations": n, "seed_range": [seed0, seed0 + n - 1],
            "n_halos": result.n_halos, "models": result.models, "id_column": result.id_column or "row number",
            "seconds": result.seconds, "warnings": result.warnings[:10]}


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent_pid: int) -> None:
    """Make this process die when its server does, so no orphan runs a job nobody will record."""
    if sys.platform.startswith("linux"):
        # the kernel sends SIGKILL when the parent *thread* (the supervisor) ends: the server's death,
        # or its supervisor's, which then fails the job itself
        try:  # the process's own symbols include libc's (no ldconfig run, unlike ctypes.util.find_library)
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no usable libc: the watchdog below still works
            pass
    if os.getppid() != parent_pid:  # the server died before prctl took effect
        os._exit(1)

    def watchdog() -> None:  # other systems, and a belt to prctl's braces
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watchdog, name="galaxypaint-parent-watchdog", daemon=True).start()


def _child_main(parent_pid: int, database: str, registry_root: str, data_dir: str, job_id: str, threads: int,
                limits: dict[str, Any]) -> None:
    """Entry point of a job's process (spawned: nothing is shared with the server but these arguments)."""
    _die_with_parent(parent_pid)
    execute(database, registry_root, data_dir, job_id, threads, limits)


# ----------------------------------------------------------------------------- runner (server side)


def _rss_bytes(pid: int) -> int | None:
    """Resident memory of one process, or None if unknown (gone, or no /proc and no psutil)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
        return None
    except FileNotFoundError:
        if not os.path.isdir("/proc/self"):
            try:
                import psutil

                return psutil.Process(pid).memory_info().rss
            except Exception:  # psutil absent, or the process is gone
                return None
        return None
    except (OSError, ValueError, IndexError):
        return None


_SIGNAL_HINTS = {signal.SIGKILL: "out of memory?", signal.SIGSEGV: "a crash in native code",
                 signal.SIGBUS: "a crash in native code", signal.SIGABRT: "a crash in native code",
                 signal.SIGTERM: "stopped from outside the server"}


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "the job's worker process vanished"
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
        except ValueError:
            return f"the job's worker process was killed by signal {-exitcode}"
        hint = _SIGNAL_HINTS.get(sig)
        return f"the job's worker process was killed by signal {-exitcode} ({sig.name}{': ' + hint if hint else ''})"
    if exitcode == 0:
        return "the job's worker process ended without recording a result"
    return f"the job's worker process exited with code {exitcode} without recording a result (see the server log)"


@dataclass
class _Child:
    job_id: str
    process: Any  # multiprocessing.process.BaseProcess
    started: float  # time.monotonic()


class JobRunner:
    """Runs queued jobs, each in its own spawned process, under a supervisor thread.

    ``JobRunner(store, registry_root, data_dir, settings)`` starts supervising at once (``autostart``);
    call ``wake()`` after queueing or canceling a job so the supervisor acts now rather than at its next
    poll, ``healthy()`` for readiness, and ``shutdown()`` when the server stops.
    """

    def __init__(self, store: JobStore, registry_root: str | Path, data_dir: str | Path, settings: Settings, *,
                 threads: int | None = None, poll_s: float = 0.5, recover_every_s: float = 30.0,
                 sweep_every_s: float = 60.0, autostart: bool = True) -> None:
        self.store = store
        self.registry_root = str(registry_root)
        self.data_dir = str(data_dir)
        self.settings = settings
        self.threads = max(1, settings.threads) if threads is None else max(1, threads)
        self.poll_s = poll_s
        self.recover_every_s = recover_every_s
        self.sweep_every_s = sweep_every_s
        self.limits = {"max_upload_bytes": settings.max_upload_bytes, "max_pk_nmesh": settings.max_pk_nmesh}
        self._ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no server state, locks or threads
        self._children: dict[str, _Child] = {}
        self._lock = threading.RLock()  # the children, between the supervisor and shutdown()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._shut_down = False
        self._death: str | None = None
        self._beat = time.monotonic()
        self._next_recover = self._next_sweep = 0.0  # both at the first round
        self.last_sweep: dict | None = None
        self._thread = threading.Thread(target=self._supervise, name="galaxypaint-job-supervisor", daemon=True)
        ref = weakref.ref(self)
        # without shutdown() the interpreter would wait at exit for non-daemonic children to finish
        atexit.register(lambda: (r := ref()) is not None and r.shutdown())
        if autostart:
            self.start()

    # --------------------------------------------------------------------- public

    def start(self) -> None:
        """Start supervising (done by the constructor unless ``autostart=False``); idempotent."""
        if self._thread.ident is None and not self._stop.is_set():  # a thread starts once: a dead one stays dead
            self._thread.start()

    def wake(self) -> None:
        """Make the supervisor look at the queue (and at cancellations) now."""
        self._wake.set()

    def submit(self, job_id: str | None = None) -> None:
        """Compatibility with the pool-based runner: the row is the queue, so this only wakes the supervisor."""
        self.wake()

    def running(self) -> dict[str, int]:
        """Job id -> process id of each job this runner is running."""
        with self._lock:
            return {c.job_id: c.process.pid for c in self._children.values()}

    def healthy(self) -> tuple[bool, str]:
        """(True, summary) while the supervisor runs; (False, reason) when jobs would not be run."""
        if self._shut_down:
            return False, "the job runner has been shut down"
        if not self._thread.is_alive():
            why = f": {self._death}" if self._death else " (never started)" if self._thread.ident is None else ""
            return False, f"the job supervisor thread has stopped{why}; queued jobs are not being run"
        stale = time.monotonic() - self._beat
        if stale > max(120.0, 20 * self.poll_s):
            return False, f"the job supervisor has not completed a round in {stale:.0f} s"
        with self._lock:
            busy = len(self._children)
        return True, f"{busy} of {self.settings.job_workers} job worker(s) busy"

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop supervising, kill running jobs and mark them failed; pending jobs stay queued for the
        next start.  Idempotent."""
        if self._shut_down:
            return
        self._shut_down = True
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        with self._lock:
            for child in list(self._children.values()):
                self._end(child, fail=SERVER_STOPPED)

    # --------------------------------------------------------------------- supervisor

    def _supervise(self) -> None:
        try:
            while not self._stop.is_set():
                self._beat = time.monotonic()
                self._round()
                if self._wake.wait(self.poll_s):
                    self._wake.clear()
        except BaseException as exc:  # only non-Exception errors get here (SystemExit, ...): report, then end
            self._death = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.critical("the job supervisor stopped (%s); queued jobs will not run", self._death, exc_info=True)
        finally:
            if not self._stop.is_set():  # died: its children die with this thread (PDEATHSIG), record why
                with self._lock:
                    for child in list(self._children.values()):
                        try:
                            self._end(child, fail="the server's job supervisor stopped while this job was "
                                                  "running; submit it again")
                        except Exception:
                            log.exception("job %s: could not record its failure", child.job_id)

    def _round(self) -> None:
        """One supervision round; each step's failure is logged and the others still run."""
        now = time.monotonic()
        if now >= self._next_recover:
            self._next_recover = now + self.recover_every_s
            self._guard("recover", self._recover)
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_every_s
            self._guard("sweep", self._sweep)
        with self._lock:
            self._guard("watch", self._watch)
            if not self._stop.is_set():
                self._guard("claim", self._claim)

    @staticmethod
    def _guard(step: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # a database hiccup must not end supervision
            log.exception("job supervisor: %s failed (retried next round)", step)

    def _recover(self) -> None:
        failed, _ = self.store.recover()
        for job_id in failed:
            log.warning("job %s was left running by a server process that is gone: marked failed", job_id)

    def _sweep(self) -> None:
        report = self.store.sweep(self.data_dir, self.settings.job_retention_hours, self.settings.jobs_quota_bytes)
        self.last_sweep = report
        if report["orphans"] or report["expired"] or report["evicted"] or report["tmp_removed"]:
            log.info("job files swept: %d expired, %d evicted for the quota, %d orphan directories, %d *.tmp; "
                     "%d bytes freed, %d in use", len(report["expired"]), len(report["evicted"]),
                     len(report["orphans"]), report["tmp_removed"], report["bytes_freed"], report["usage_bytes"])
        if report["over_quota"]:
            log.warning("job files use %d bytes, above the quota of %d, and no finished job's files are left "
                        "to delete", report["usage_bytes"], report["quota_bytes"])

    def _watch(self) -> None:
        time_limit = float(self.settings.job_time_limit_s)
        memory_limit = int(self.settings.job_memory_limit_mb)
        for child in list(self._children.values()):
            proc = child.process
            if not proc.is_alive():
                proc.join(1.0)
                if self.store.status(child.job_id) == "running":  # it died without recording an end
                    self._end(child, fail=_exit_reason(proc.exitcode))
                else:
                    self._end(child)
                continue
            status = self.store.status(child.job_id)
            if status in ("canceled", "missing"):
                self._end(child)  # kill now: the child would notice only at its next progress step
                continue
            if status != "running":
                continue  # it recorded its end and is exiting
            if time.monotonic() - child.started > time_limit:
                self._end(child, fail=f"exceeded the time limit of {time_limit:g} s")
                continue
            rss = _rss_bytes(proc.pid)
            if rss is not None and rss > memory_limit * 2**20:
                self._end(child, fail=f"exceeded the memory limit of {memory_limit} MiB "
                                      f"(resident {rss / 2**20:.0f} MiB when killed)")

    def _end(self, child: _Child, fail: str | None = None) -> None:
        """Kill a child (if it still runs), record ``fail`` as its job's error if the job is still
        active, and remove whatever it wrote except its inputs when the job did not succeed."""
        proc = child.process
        if proc.is_alive():
            proc.kill()  # SIGKILL: a job body may sit in native code that ignores anything gentler
        proc.join(5.0)
        self._children.pop(child.job_id, None)
        if fail is not None and self.store.finish(child.job_id, "failed", error=fail):
            log.warning("job %s failed: %s", child.job_id, fail)
        if self.store.status(child.job_id) in ("failed", "canceled"):
            _clean(job_dir(self.data_dir, child.job_id), keep_inputs=True)

    def _claim(self) -> None:
        while len(self._children) < self.settings.job_workers and not self._stop.is_set():
            job = self.store.claim()
            if job is None:
                return
            try:
                proc = self._ctx.Process(target=_child_main, name=f"galaxypaint-{job['id']}",
                                         args=(os.getpid(), str(self.store.database), self.registry_root,
                                               self.data_dir, job["id"], self.threads, dict(self.limits)))
                proc.start()
            except Exception as exc:
                self.store.finish(job["id"], "failed", error=f"could not start a worker process: {exc}")
                log.exception("job %s: could not start a worker process", job["id"])
                continue
            self._children[job["id"]] = _Child(job["id"], proc, time.monotonic())
            log.info("job %s (%s) started in process %d", job["id"], job["kind"], proc.pid)
