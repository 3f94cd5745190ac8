"""The one database module: the registry's SQLite file, its engine, pragmas and schema migrations.

The registry (model versions, aliases, runs, artefacts of runs) and the job store share
``<registry>/registry.sqlite``.  Every connection gets the same pragmas: WAL (readers never block
the writer), foreign keys, and a busy timeout (several server processes, CLI commands and job
workers write to the same file).

Migrations are a small versioned list: ``schema_version`` holds the number of the last one applied;
each migration is a function run once, in a transaction, in order.  A registry written by an older
release opens and is brought up to date in place the first time a newer release touches it (tested
with a registry made by release 0.1.0's own code).  Migrations only ever move forward.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text

DB_NAME = "registry.sqlite"
BUSY_TIMEOUT_MS = 30_000

Migration = Callable[[Connection], None]


def make_engine(database: str | Path) -> Engine:
    """A SQLAlchemy engine on ``database`` with galaxypaint's pragmas on every connection."""
    engine = create_engine(f"sqlite:///{database}", connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - runs on every connect
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.close()

    return engine


def watch_connection(database: str | Path) -> sqlite3.Connection:
    """A read-only connection whose ``PRAGMA data_version`` moves when any other connection commits:
    the data plane polls it to know when cached model resolutions are stale."""
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True, check_same_thread=False)


def columns(conn: Connection, table: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(table)} if inspect(conn).has_table(table) else set()


def migrate(engine: Engine, component: str, migrations: Sequence[Migration]) -> int:
    """Apply ``migrations[n:]`` where ``n`` is the component's recorded version; returns the new version.

    Each component (``registry``, ``jobs``) keeps its own counter in ``schema_version``.  Run under
    SQLite's write lock (``BEGIN IMMEDIATE``), so concurrent openers apply each migration once.
    """
    with engine.connect() as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version "
                              "(component VARCHAR(32) PRIMARY KEY, version INTEGER NOT NULL)"))
            row = conn.execute(text("SELECT version FROM schema_version WHERE component = :c"),
                               {"c": component}).first()
            current = row[0] if row else 0
            for migration in migrations[current:]:
                migration(conn)
            if len(migrations) != current:
                conn.execute(text("INSERT INTO schema_version (component, version) VALUES (:c, :v) "
                                  "ON CONFLICT(component) DO UPDATE SET version = :v"),
                             {"c": component, "v": len(migrations)})
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    return len(migrations)
