"""The job queue and its supervisor, with real SQLite files and real worker processes.

Long jobs are real P(k) jobs: a 384^3 mesh runs for several seconds per bin and needs ~2 GiB, a 256^3
mesh well above 300 MiB; a 32^3 mesh on one property finishes in about a second.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update

from app.core.catalogs import write_table
from app.api.jobs import SERVER_STOPPED, JobError, JobRow, JobRunner, JobStore, _now, job_dir, new_job_id
from app.core.schema import TARGET_NAMES
from app.core.settings import Settings
from training.demo_catalog import make_demo_catalog

REPO = Path(__file__).resolve().parents[1]
LONG = {"nmesh": 384, "targets": ["smass"]}  # seconds per bin, ~2 GiB resident
SHORT = {"nmesh": 32, "targets": ["smass"]}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> str:
    df = make_demo_catalog(n=20_000, seed=1)
    for t in TARGET_NAMES:
        df[f"{t}_pred"] = df[t]  # a "painted" catalog whose predictions are the truth
    path = tmp_path_factory.mktemp("catalog") / "painted.parquet"
    write_table(df, path)
    return str(path)


@pytest.fixture
def make_runner(tmp_path):
    runners = []

    def make(**limits) -> tuple[JobStore, JobRunner]:
        settings = Settings(**{"job_time_limit_s": 60.0, "job_memory_limit_mb": 4096, **limits})
        store = JobStore(tmp_path / "registry.sqlite")
        runner = JobRunner(store, tmp_path, tmp_path / "data", settings, poll_s=0.1)
        runners.append(runner)
        return store, runner

    yield make
    for runner in runners:
        runner.shutdown()


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting to be reaped counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (FileNotFoundError, IndexError, ValueError):
        return 0.0


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _finished(store: JobStore, job_id: str, timeout: float = 30) -> dict:
    return _wait_for(lambda: (j := store.get(job_id))["status"] in ("succeeded", "failed", "canceled") and j,
                     timeout, f"job {job_id} to end")


def _child_pid(runner: JobRunner, job_id: str) -> int:
    return _wait_for(lambda: runner.running().get(job_id), 10, f"job {job_id} to get a process")


def _submit(store: JobStore, runner: JobRunner, catalog: str, **params) -> str:
    job = store.create("pk", {"input": catalog, **params})
    runner.wake()
    return job["id"]


def test_a_killed_worker_fails_its_job_and_the_next_job_runs(make_runner, catalog, tmp_path):
    store, runner = make_runner()
    job_id = new_job_id()  # an upload is written into the job's directory before the job is queued
    work = job_dir(tmp_path / "data", job_id)
    (work / "part").mkdir(parents=True)
    (work / "input.keep").write_text("an uploaded catalog")  # inputs survive a failure ...
    (work / "part" / "chunk.tmp").write_text("half-written")  # ... leftovers do not
    store.create("pk", {"input": catalog, **LONG}, job_id=job_id)
    runner.wake()
    pid = _child_pid(runner, job_id)
    time.sleep(1.0)  # past its start-up
    os.kill(pid, signal.SIGKILL)  # what the out-of-memory killer does
    job = _finished(store, job_id)
    assert job["status"] == "failed"
    assert "signal 9" in job["error"] and "SIGKILL" in job["error"], job["error"]
    assert not _alive(pid) and runner.running() == {}
    assert sorted(p.name for p in work.rglob("*")) == ["input.keep"]
    assert runner.healthy()[0]

    second = _submit(store, runner, catalog, **SHORT)
    done = _finished(store, second)
    assert done["status"] == "succeeded", done["error"]
    assert (job_dir(tmp_path / "data", second) / "pk.json").is_file()


def test_time_limit_kills_the_job(make_runner, catalog):
    store, runner = make_runner(job_time_limit_s=2.0)
    job_id = _submit(store, runner, catalog, **LONG)
    pid = _child_pid(runner, job_id)
    t0 = time.monotonic()
    job = _finished(store, job_id)
    assert job["status"] == "failed" and job["error"] == "exceeded the time limit of 2 s"
    assert time.monotonic() - t0 < 4
    assert not _alive(pid)


def test_memory_limit_kills_the_job_and_small_jobs_still_run(make_runner, catalog):
    store, runner = make_runner(job_memory_limit_mb=300)  # a worker with every import is ~140 MiB
    small = _finished(store, _submit(store, runner, catalog, **SHORT))
    assert small["status"] == "succeeded", small["error"]
    job_id = _submit(store, runner, catalog, nmesh=256)  # meshes of 256^3 doubles: >600 MiB at its peak
    pid = _child_pid(runner, job_id)
    job = _finished(store, job_id)
    assert job["status"] == "failed" and job["error"].startswith("exceeded the memory limit of 300 MiB"), job
    assert not _alive(pid)
    assert runner.healthy()[0]


def test_cancel_kills_a_running_job_at_once_and_shutdown_fails_the_rest(make_runner, catalog):
    store, runner = make_runner(job_workers=2)
    first = _submit(store, runner, catalog, **LONG)
    second = _submit(store, runner, catalog, **LONG)
    pid = _child_pid(runner, first)
    other = _child_pid(runner, second)
    time.sleep(1.5)  # inside its first bin: the job itself would notice the cancel only after it
    t0 = time.monotonic()
    assert store.cancel(first)["status"] == "canceled"
    runner.wake()
    _wait_for(lambda: not _alive(pid), 1.5, "the canceled job's process to die")
    assert time.monotonic() - t0 < 1.5  # a bin of this mesh takes longer: the supervisor killed it
    assert store.get(first)["status"] == "canceled" and store.get(first)["result"] is None

    runner.shutdown()
    assert not _alive(other)
    after = store.get(second)
    assert after["status"] == "failed" and after["error"] == SERVER_STOPPED
    assert runner.healthy() == (False, "the job runner has been shut down")


ORPHAN_SCRIPT = textwrap.dedent("""
    import sys, time
    from app.api.jobs import JobRunner, JobStore
    from app.core.settings import Settings

    database, data_dir, catalog = sys.argv[1:4]
    store = JobStore(database)
    runner = JobRunner(store, data_dir, data_dir, Settings(job_time_limit_s=120), poll_s=0.1)
    job = store.create("pk", {"input": catalog, "nmesh": 384, "targets": ["smass"]})
    runner.wake()
    while not runner.running():
        time.sleep(0.05)
    print(job["id"], runner.running()[job["id"]], flush=True)
    time.sleep(600)
""")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc")
def test_a_worker_dies_with_its_server(tmp_path, catalog):
    database = tmp_path / "registry.sqlite"
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT, str(database), str(tmp_path / "data"),
                                   catalog], cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = server.stdout.readline()
        assert line, (tmp_path / "server.log").read_text()
        job_id, pid = line.split()[0], int(line.split()[1])
        _wait_for(lambda: _rss_mib(pid) > 300, 15, "the worker to be busy with its mesh")
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        _wait_for(lambda: not _alive(pid), 5, f"the orphaned worker {pid} to die")
    finally:
        server.kill()
        server.wait(10)
    store = JobStore(database)
    assert store.get(job_id)["status"] == "running"  # nobody recorded the end ...
    assert store.recover()[0] == [job_id]  # ... until a server's recovery (its server pid is gone)
    assert store.get(job_id)["error"] == SERVER_STOPPED


def test_the_supervisor_survives_faults_and_reports_its_death(make_runner, tmp_path):
    store, runner = make_runner(max_pk_nmesh=64)
    assert runner.healthy()[0]
    with store.engine.begin() as conn:  # a fault under every step of the supervisor
        conn.execute(text("DROP TABLE jobs"))
    time.sleep(0.5)
    assert runner.healthy()[0]  # logged, not fatal
    store = JobStore(store.database)  # the table is back
    missing = store.create("pk", {"input": str(tmp_path / "absent.parquet"), "nmesh": 32})
    too_big = store.create("pk", {"input": str(tmp_path / "absent.parquet"), "nmesh": 128})
    runner.wake()
    failed = _finished(store, missing["id"])
    assert failed["status"] == "failed" and "absent.parquet" in failed["error"] and "\n" not in failed["error"]
    refused = _finished(store, too_big["id"])
    assert refused["status"] == "failed"
    assert refused["error"].startswith("nmesh: 128 is above this server's limit of 64")

    supervisor = [t for t in threading.enumerate() if t.name == "galaxypaint-job-supervisor"]
    assert len(supervisor) == 1
    # stop it abnormally: an exception that is not an Exception, raised inside the thread
    assert ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(supervisor[0].ident),
                                                      ctypes.py_object(SystemExit)) == 1
    supervisor[0].join(5)
    ok, reason = runner.healthy()
    assert not ok and "supervisor thread has stopped: SystemExit" in reason, reason
    runner.start()  # a dead supervisor is not restarted behind the operator's back (and this does not raise)
    assert not runner.healthy()[0]
    queued = store.create("pk", {"input": "never.parquet"})
    runner.wake()
    time.sleep(0.5)
    assert store.get(queued["id"])["status"] == "pending"  # still queued, for the next healthy server


def _fake_finished(store: JobStore, data_dir: Path, hours_ago: float, size: int = 0, status: str = "succeeded",
                   **files: str) -> str:
    job = store.create("paint", {"input": "x"})
    store.start(job["id"])
    store.finish(job["id"], status, result={"file": "painted.parquet"} if status == "succeeded" else None)
    with store.engine.begin() as conn:
        conn.execute(update(JobRow).where(JobRow.id == job["id"])
                     .values(finished_at=_now() - timedelta(hours=hours_ago)))
    work = job_dir(data_dir, job["id"])
    work.mkdir(parents=True)
    if size:
        (work / "painted.parquet").write_bytes(b"\0" * size)
    for name, content in files.items():
        (work / name.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
        (work / name.replace("__", "/")).write_text(content)
    return job["id"]


def test_sweep_by_retention_and_quota(tmp_path):
    store, data = JobStore(tmp_path / "registry.sqlite"), tmp_path / "data"
    kb = 1000
    ancient = _fake_finished(store, data, hours_ago=30, size=10 * kb)
    ancient_used = _fake_finished(store, data, hours_ago=30, size=10 * kb)  # read by a queued P(k) job
    a = _fake_finished(store, data, hours_ago=3, size=100 * kb, status="failed")
    b = _fake_finished(store, data, hours_ago=2, size=100 * kb)
    c = _fake_finished(store, data, hours_ago=1, size=100 * kb, **{"sub__half.tmp": "x" * kb})
    running = store.create("pk", {"input": str(job_dir(data, ancient_used) / "painted.parquet")})
    store.start(running["id"])
    job_dir(data, running["id"]).mkdir()
    (job_dir(data, running["id"]) / "pk.json.tmp").write_text("in progress")
    orphan = data / "jobs" / "job-000000000000"
    orphan.mkdir()
    (orphan / "input.csv").write_text("a crashed upload")
    used = store.disk_usage(data)
    assert used == 321 * kb + len("in progress") + len("a crashed upload")

    report = store.sweep(data, retention_hours=24, quota_bytes=250 * kb)
    assert report["expired"] == [ancient] and report["evicted"] == [a]  # oldest first, only as far as needed
    assert report["tmp_removed"] == 1 and report["orphans"] == []  # a fresh orphan may be an upload in progress
    assert report["usage_bytes"] == store.disk_usage(data) <= 250 * kb and not report["over_quota"]
    assert report["bytes_freed"] == used - report["usage_bytes"]
    for gone in (ancient, a):
        job = store.get(gone)
        assert not job_dir(data, gone).exists() and job["expired"] and not store.files_available(job)
        assert "deleted" in job["message"]
    assert "retention" in store.get(ancient)["message"] and "quota" in store.get(a)["message"]
    assert store.get(ancient)["result"] == {"file": "painted.parquet"}  # the row still says what there was
    for kept in (ancient_used, b, c):
        assert store.files_available(store.get(kept)) and (job_dir(data, kept) / "painted.parquet").is_file()
    assert list(job_dir(data, c).rglob("*.tmp")) == []
    assert (job_dir(data, running["id"]) / "pk.json.tmp").is_file()  # a running job's work in progress

    report = store.sweep(data, retention_hours=24, quota_bytes=150 * kb, orphan_grace_s=0)
    assert report["orphans"] == [orphan.name] and not orphan.exists()
    assert report["evicted"] == [b] and report["expired"] == []
    report = store.sweep(data, retention_hours=24, quota_bytes=1)
    assert report["evicted"] == [c] and report["over_quota"]  # what is left is in use: never deleted
    assert (job_dir(data, ancient_used) / "painted.parquet").is_file()


def test_delete_removes_a_finished_job_row_and_files(tmp_path):
    store, data = JobStore(tmp_path / "registry.sqlite"), tmp_path / "data"
    done = _fake_finished(store, data, hours_ago=1, size=100)
    active = store.create("pk", {"input": "x"})
    assert store.delete(done, data)["id"] == done
    assert not job_dir(data, done).exists()
    with pytest.raises(JobError, match="no job"):
        store.get(done)
    with pytest.raises(JobError, match="cancel it"):
        store.delete(active["id"], data)
    store.cancel(active["id"])
    store.delete(active["id"], data)
    assert store.list()[0] == []


def test_pages_return_every_job_once_newest_first(tmp_path):
    store = JobStore(tmp_path / "registry.sqlite")
    ids = [store.create("pk" if i % 3 else "paint", {"n": i})["id"] for i in range(23)]
    tie = _now() - timedelta(minutes=5)
    with store.engine.begin() as conn:  # several jobs created in the same microsecond: the id breaks ties
        conn.execute(update(JobRow).where(JobRow.id.in_(ids[5:10])).values(created_at=tie))
    for job_id in ids[:4]:
        store.cancel(job_id)
    jobs = [store.get(i) for i in ids]
    expected = [j["id"] for j in sorted(jobs, key=lambda j: (datetime.fromisoformat(j["created_at"]), j["id"]),
                                         reverse=True)]
    pages, cursor = [], None
    while True:
        page, cursor = store.list(limit=5, cursor=cursor)
        pages.append([j["id"] for j in page])
        if len(pages) == 1:
            store.create("paint", {"late": True})  # a job submitted while paging does not shift the pages
        if cursor is None:
            break
    assert [i for p in pages for i in p] == expected and [len(p) for p in pages] == [5, 5, 5, 5, 3]

    assert store.counts() == {"pending": 20, "running": 0, "succeeded": 0, "failed": 0, "canceled": 4}
    canceled, cursor = store.list(limit=3, status="canceled")
    rest, end = store.list(limit=3, status="canceled", cursor=cursor)
    assert sorted(j["id"] for j in canceled + rest) == sorted(ids[:4]) and end is None
    with pytest.raises(JobError, match="cursor"):
        store.list(cursor="not-a-cursor")
    with pytest.raises(JobError, match="status"):
        store.list(status="exploded")


def test_an_old_database_gains_the_new_columns(tmp_path):
    import sqlite3

    db = tmp_path / "registry.sqlite"
    with sqlite3.connect(db) as conn:  # the table as an earlier galaxypaint made it
        conn.execute("CREATE TABLE jobs (id VARCHAR(40) PRIMARY KEY, kind VARCHAR(16), status VARCHAR(16), "
                     "progress FLOAT, message TEXT, params JSON, result JSON, error TEXT, created_at DATETIME, "
                     "started_at DATETIME, finished_at DATETIME, worker VARCHAR(128))")
        conn.execute("INSERT INTO jobs VALUES ('job-old', 'pk', 'succeeded', 1.0, 'done', '{}', NULL, NULL, "
                     "'2020-01-01 00:00:00.000000', NULL, '2020-01-01 00:00:01.000000', NULL)")
    store = JobStore(db)
    assert store.get("job-old")["expired"] is False
    assert store.sweep(tmp_path / "data", retention_hours=1, quota_bytes=2**20)["expired"] == ["job-old"]
