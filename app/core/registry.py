"""The model registry: ONNX artefacts on disk, their records in SQLite (SQLAlchemy), MLflow-style aliases.

Layout of a registry directory (default ``models/``, or ``GALAXYPAINT_REGISTRY``)::

    registry.sqlite                      model versions, aliases, training runs (WAL mode)
    artefacts/<name>/v<version>.onnx     the graphs, never modified once written
    artefacts/<name>/.lock               held (flock) by a publisher while it allocates a version

Publishing writes the artefact to a temporary file and fsyncs it, then, holding the model's lock,
takes the next version number, renames the file to ``v<version>.onnx`` and inserts its row in one
transaction.  The kernel drops the lock of a publisher that dies, so a ``v<version>.onnx`` without a
row seen under the lock is the leftover of a crashed publish: it is renamed
``v<version>.onnx.orphan-<utc time>`` (kept, never overwritten) and the number reused.

Loading re-hashes the file and refuses it if the sha256 differs from the record.  An alias is only
moved to a version whose artefact is present, intact and accepted by onnxruntime (``verify``);
aliases are upserted, so clients creating the same alias at once all succeed (the last one wins).

Model references: ``name`` (alias ``production`` if set, else the latest version), ``name@alias``,
``name/3`` (version 3, ASCII digits, 1 to 2**31-1), optionally prefixed with ``models:/``.
``resolve_choice`` is the one place that turns what a user asks for (nothing, an alias, a version
number or a reference) into pinned versions of the models serving each target.

A version covers one target (``<target>-<variant>-<kind>``, e.g. ``smass-raw-stack``) or several
(``targets`` lists them; named ``<variant>-<kind>``, e.g. ``raw-sampler``, the joint model of all
four properties).  An alias means the same for both: which version of that name answers.
``variant`` is the training variant (``raw`` or ``smogn``; ``path`` before release 0.2).

Runs keep their report (figures and tables, written at training time) as run artefacts under
``artefacts/runs/<run_id>/``, sha256-recorded like models: a server can show them without the
training table or the ``training`` package.

Errors are ``RegistryError`` subclasses, so callers choose a status by type, never by message:
``ModelNotFound`` (no such model, version, alias or run), ``InvalidReference`` (malformed name, alias
or version), ``ArtefactUnavailable`` (artefact missing, modified or not loadable) and
``RegistryConflict`` (no version could be allocated).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Connection, DateTime, ForeignKey, Integer, String, UniqueConstraint, func, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from app.core.db import DB_NAME, columns, make_engine, migrate

DEFAULT_ALIAS = "production"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# Versions are small counters: bounding them keeps absurd numbers from reaching SQLite, which raises
# OverflowError beyond 64 bits (a 500 where the client deserves "no such version" or "invalid").
MAX_VERSION = 2**31 - 1

log = logging.getLogger(__name__)


class RegistryError(Exception):
    """A registry operation failed; the message is meant for the user."""


class ModelNotFound(RegistryError):
    """No such model name, version, alias (or training run, or registry)."""


class InvalidReference(RegistryError):
    """A malformed model name, alias, version number or reference."""


class ArtefactUnavailable(RegistryError):
    """A version's artefact is missing, modified since it was registered, or not loadable."""


class RegistryConflict(RegistryError):
    """A write lost to a concurrent writer (e.g. no version number could be allocated)."""


class Base(DeclarativeBase):
    pass


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    target: Mapped[str] = mapped_column(String(32))  # the first (or only) target
    variant: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    targets: Mapped[list | None] = mapped_column(JSON, nullable=True)  # every target a version answers
    artefact: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    run_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("runs.run_id"), nullable=True)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    hyperparameters: Mapped[dict] = mapped_column(JSON, default=dict)
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    data_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    package_versions: Mapped[dict] = mapped_column(JSON, default=dict)
    feature_schema: Mapped[list] = mapped_column(JSON, default=list)
    training_domain: Mapped[dict] = mapped_column(JSON, default=dict)
    extra: Mapped[dict] = mapped_column(JSON, default=dict)


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("name", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RunRow(Base):
    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seed: Mapped[int] = mapped_column(Integer)
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    package_versions: Mapped[dict] = mapped_column(JSON, default=dict)


class RunArtefactRow(Base):
    """A file of a run's report (figure, table), stored beside the models."""

    __tablename__ = "run_artefacts"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("runs.run_id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    media_type: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def _rename_path_to_variant(conn: Connection) -> None:
    """0.1 -> 0.2: ``model_versions.path`` (the training variant) is called ``variant``."""
    have = columns(conn, "model_versions")
    if "path" in have and "variant" not in have:
        conn.execute(text("ALTER TABLE model_versions RENAME COLUMN path TO variant"))


def _add_targets(conn: Connection) -> None:
    """0.1 -> 0.2: versions may cover several targets; a single-target version lists its own."""
    if "targets" not in columns(conn, "model_versions"):
        conn.execute(text("ALTER TABLE model_versions ADD COLUMN targets JSON"))
    conn.execute(text("UPDATE model_versions SET targets = json_array(target) WHERE targets IS NULL"))


#: forward-only schema migrations of the registry's tables (``app.core.db.migrate``); append, never edit
MIGRATIONS = (_rename_path_to_variant, _add_targets)


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version (plain data, detached from the database session)."""

    name: str
    version: int
    target: str
    variant: str
    kind: str
    artefact: Path
    sha256: str
    size_bytes: int
    created_at: datetime
    run_id: str | None
    metrics: dict
    hyperparameters: dict
    seed: int | None
    data_fingerprint: str | None
    package_versions: dict
    feature_schema: list
    training_domain: dict
    extra: dict
    aliases: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["artefact"] = str(self.artefact)
        d["created_at"] = self.created_at.isoformat()
        d["aliases"] = list(self.aliases)
        d["uri"] = self.uri
        return d


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _q(text: str) -> str:
    """``repr`` of user input, shortened: error messages stay one readable line."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def parse_version(text: str) -> int:
    """A version number written in ASCII digits (``str.isdigit`` also takes '²', which ``int`` refuses)."""
    if not (text.isascii() and text.isdigit()):
        raise InvalidReference(f"version {_q(text)} must be a number")
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(MAX_VERSION)) or not 1 <= int(digits) <= MAX_VERSION:  # int() of 5,000 digits fails
        raise InvalidReference(f"version {_q(text)} is out of range (1 to {MAX_VERSION})")
    return int(digits)


def check_alias(alias: str) -> str:
    """``alias`` if it is a valid alias name, else ``InvalidReference``."""
    if not _ALIAS_RE.fullmatch(alias):
        raise InvalidReference(f"invalid alias {_q(alias)}: letters, digits, '-' and '_', starting with a letter")
    return alias


def parse_reference(ref: str) -> tuple[str, str | None, int | None]:
    """``[models:/]name[@alias|/version]`` -> (name, alias, version); ``InvalidReference`` if malformed."""
    s = ref.strip()
    if s.startswith("models:/"):
        s = s[len("models:/"):]
    alias = version = None
    try:
        if "@" in s:
            s, alias = s.split("@", 1)
            check_alias(alias)
        elif "/" in s:
            s, v = s.rsplit("/", 1)
            version = parse_version(v)
        if not _NAME_RE.fullmatch(s):
            raise InvalidReference(f"invalid model name {_q(s)}")
    except InvalidReference as exc:
        raise InvalidReference(f"model reference {_q(ref)}: {exc}") from None
    return s, alias, version


class Registry:
    """Model versions and aliases in ``root/registry.sqlite``; artefacts under ``root/artefacts``."""

    def __init__(self, root: str | os.PathLike[str], create: bool = True) -> None:
        self.root = Path(root)
        db = self.root / DB_NAME
        if not create and not db.exists():
            raise ModelNotFound(f"no model registry at {self.root} (train a model first, or say --registry DIR)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.database = db
        self.engine = make_engine(db)
        # old registries first get their columns renamed, then any table they lack; new ones are
        # created whole and the migrations find nothing to do
        with self.engine.connect() as conn:
            existing = bool(columns(conn, "model_versions"))
        if existing:
            migrate(self.engine, "registry", MIGRATIONS)
            Base.metadata.create_all(self.engine)
        else:
            Base.metadata.create_all(self.engine)
            migrate(self.engine, "registry", MIGRATIONS)

    # ------------------------------------------------------------------ helpers
    def _to_version(self, row: ModelVersionRow, aliases: tuple[str, ...]) -> ModelVersion:
        return ModelVersion(
            name=row.name, version=row.version, target=row.target, variant=row.variant, kind=row.kind,
            targets=tuple(row.targets or (row.target,)),
            artefact=self.root / row.artefact, sha256=row.sha256, size_bytes=row.size_bytes,
            created_at=row.created_at.replace(tzinfo=row.created_at.tzinfo or UTC), run_id=row.run_id,
            metrics=row.metrics or {}, hyperparameters=row.hyperparameters or {}, seed=row.seed,
            data_fingerprint=row.data_fingerprint, package_versions=row.package_versions or {},
            feature_schema=row.feature_schema or [], training_domain=row.training_domain or {},
            extra=row.extra or {}, aliases=aliases)

    def _aliases_of(self, session: Session, name: str) -> dict[int, tuple[str, ...]]:
        out: dict[int, list[str]] = {}
        for a in session.scalars(select(AliasRow).where(AliasRow.name == name)):
            out.setdefault(a.version, []).append(a.alias)
        return {v: tuple(sorted(al)) for v, al in out.items()}

    # ------------------------------------------------------------------ runs
    def record_run(self, run_id: str, seed: int, data_fingerprint: str, config: dict, metrics: dict,
                   package_versions: dict) -> None:
        with Session(self.engine) as s, s.begin():
            s.merge(RunRow(run_id=run_id, created_at=datetime.now(UTC), seed=seed,
                           data_fingerprint=data_fingerprint, config=config, metrics=metrics,
                           package_versions=package_versions))

    def get_run(self, run_id: str) -> dict[str, Any]:
        with Session(self.engine) as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise ModelNotFound(f"no training run {run_id!r} in {self.root}")
            return {"run_id": row.run_id, "created_at": row.created_at.isoformat(), "seed": row.seed,
                    "data_fingerprint": row.data_fingerprint, "config": row.config, "metrics": row.metrics,
                    "package_versions": row.package_versions}

    def list_runs(self) -> list[str]:
        with Session(self.engine) as s:
            return list(s.scalars(select(RunRow.run_id).order_by(RunRow.created_at)))

    def add_run_artefact(self, run_id: str, name: str, data: bytes, media_type: str) -> None:
        """Store one file of a run's report (written atomically, sha256 recorded; replaced if re-added)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name):
            raise InvalidReference(f"invalid run artefact name {_q(name)}")
        self.get_run(run_id)
        rel = Path("artefacts") / "runs" / run_id / name
        final = self.root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".artefact-", suffix=".tmp", dir=final.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        now = datetime.now(UTC)
        values = dict(run_id=run_id, name=name, media_type=media_type, path=str(rel),
                      sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), created_at=now)
        with Session(self.engine) as s, s.begin():
            s.execute(sqlite_insert(RunArtefactRow).values(**values).on_conflict_do_update(
                index_elements=["run_id", "name"], set_={k: v for k, v in values.items() if k not in ("run_id", "name")}))

    def run_artefacts(self, run_id: str) -> list[dict[str, Any]]:
        """The report files stored with a run: name, media type, size, sha256."""
        with Session(self.engine) as s:
            rows = s.scalars(select(RunArtefactRow).where(RunArtefactRow.run_id == run_id)
                             .order_by(RunArtefactRow.name))
            return [{"name": r.name, "media_type": r.media_type, "size_bytes": r.size_bytes, "sha256": r.sha256}
                    for r in rows]

    def read_run_artefact(self, run_id: str, name: str) -> tuple[bytes, str]:
        """(bytes, media type) of a run's report file, sha256-checked."""
        with Session(self.engine) as s:
            row = s.scalar(select(RunArtefactRow).where(RunArtefactRow.run_id == run_id, RunArtefactRow.name == name))
            if row is None:
                raise ModelNotFound(f"run {_q(run_id)} has no artefact {_q(name)}")
            path, digest, media = self.root / row.path, row.sha256, row.media_type
        try:
            data = path.read_bytes()
        except OSError:
            raise ArtefactUnavailable(f"run artefact {name} of {run_id} is missing: {path}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise ArtefactUnavailable(f"run artefact {name} of {run_id} has been modified; refusing it")
        return data, media

    # ------------------------------------------------------------------ publish
    def publish(self, name: str, model_bytes: bytes, *, target: str, variant: str, kind: str,
                targets: tuple[str, ...] | None = None,
                metrics: dict | None = None, hyperparameters: dict | None = None, seed: int | None = None,
                data_fingerprint: str | None = None, package_versions: dict | None = None,
                feature_schema: list | None = None, training_domain: dict | None = None,
                run_id: str | None = None, extra: dict | None = None,
                aliases: tuple[str, ...] = ()) -> ModelVersion:
        """Store ``model_bytes`` as the next version of ``name`` (atomically) and return it.

        ``target`` is the version's first target; ``targets`` lists all of them for a model that
        answers several (default: ``(target,)``)."""
        if not _NAME_RE.fullmatch(name):
            raise InvalidReference(f"invalid model name {_q(name)}")
        for alias in aliases:
            check_alias(alias)
        if run_id is not None:
            with Session(self.engine) as s:
                if s.get(RunRow, run_id) is None:  # else the insert fails on the foreign key, obscurely
                    raise ModelNotFound(f"no training run {run_id!r} in {self.root}: record the run first")
        digest = hashlib.sha256(model_bytes).hexdigest()
        art_dir = self.root / "artefacts" / name
        art_dir.mkdir(parents=True, exist_ok=True)
        # The (possibly large) write and fsync happen before taking the lock, which guards only the
        # version number: the rename and the row insert.
        fd, tmp = tempfile.mkstemp(prefix=".publish-", suffix=".tmp", dir=art_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(model_bytes)
                fh.flush()
                os.fsync(fh.fileno())
            with self._version_lock(art_dir):
                with Session(self.engine) as s:
                    latest = s.scalar(select(func.max(ModelVersionRow.version)).where(ModelVersionRow.name == name))
                version = (latest or 0) + 1
                rel = Path("artefacts") / name / f"v{version}.onnx"
                final = self.root / rel
                if os.path.lexists(final):
                    self._set_orphan_aside(final)
                os.replace(tmp, final)
                try:
                    with Session(self.engine) as s, s.begin():
                        s.add(ModelVersionRow(
                            name=name, version=version, target=target, variant=variant, kind=kind,
                            targets=list(targets or (target,)), artefact=str(rel),
                            sha256=digest, size_bytes=len(model_bytes), created_at=datetime.now(UTC),
                            run_id=run_id, metrics=metrics or {}, hyperparameters=hyperparameters or {},
                            seed=seed, data_fingerprint=data_fingerprint, package_versions=package_versions or {},
                            feature_schema=feature_schema or [], training_domain=training_domain or {},
                            extra=extra or {}))
                        for alias in aliases:
                            self._set_alias(s, name, alias, version)
                except IntegrityError:  # a writer that bypassed the lock took the number
                    final.unlink(missing_ok=True)
                    raise RegistryConflict(f"could not allocate version {version} of {name}: "
                                           "another publisher registered it concurrently") from None
                except BaseException:
                    final.unlink(missing_ok=True)  # no row, so no file: a later publish reuses the number
                    raise
        finally:
            Path(tmp).unlink(missing_ok=True)
        return self.get(name, version=version)

    @staticmethod
    @contextmanager
    def _version_lock(art_dir: Path) -> Iterator[None]:
        """Exclusive per-model lock; flock rather than a database row because the kernel releases it
        when its holder dies, so holding it proves no live publisher is between rename and insert."""
        with open(art_dir / ".lock", "ab") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    @staticmethod
    def _set_orphan_aside(final: Path) -> None:
        """Keep the leftover of a crashed publish under another name, so its version number is free."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = final.with_name(f"{final.name}.orphan-{stamp}")
        os.replace(final, aside)
        log.warning("%s had no registry row (left by a publish that crashed): moved to %s", final, aside.name)

    # ------------------------------------------------------------------ aliases
    @staticmethod
    def _set_alias(session: Session, name: str, alias: str, version: int) -> None:
        # One upsert statement: a select-then-insert lets two clients creating the same alias both
        # see it absent, and the second insert then violates UNIQUE(name, alias).
        now = datetime.now(UTC)
        stmt = sqlite_insert(AliasRow).values(name=name, alias=check_alias(alias), version=version, updated_at=now)
        session.execute(stmt.on_conflict_do_update(index_elements=["name", "alias"],
                                                   set_={"version": version, "updated_at": now}))

    def set_alias(self, name: str, alias: str, version: int) -> ModelVersion:
        """Point ``name@alias`` at ``version``, which must exist and ``verify`` (else the alias is unchanged)."""
        check_alias(alias)
        if not 1 <= version <= MAX_VERSION:
            raise InvalidReference(f"model {name}: version {version} is out of range (1 to {MAX_VERSION})")
        self.verify(self.get(name, version=version))
        with Session(self.engine) as s, s.begin():
            self._set_alias(s, name, alias, version)
        return self.get(name, version=version)

    def alias_versions(self) -> dict[tuple[str, str], int]:
        """Every (name, alias) -> version (used to notice alias moves)."""
        with Session(self.engine) as s:
            return {(a.name, a.alias): a.version for a in s.scalars(select(AliasRow))}

    # ------------------------------------------------------------------ queries
    def get(self, name: str, version: int | None = None, alias: str | None = None) -> ModelVersion:
        """One model version: by number, by alias, or (neither) ``production`` if set, else the latest."""
        if version is not None and not 1 <= version <= MAX_VERSION:
            raise ModelNotFound(f"model {name} has no version {version}")
        with Session(self.engine) as s:
            if alias is not None:
                a = s.scalar(select(AliasRow).where(AliasRow.name == name, AliasRow.alias == alias))
                if a is None:
                    raise ModelNotFound(f"model {name} has no alias {_q(alias)}")
                version = a.version
            elif version is None:
                a = s.scalar(select(AliasRow).where(AliasRow.name == name, AliasRow.alias == DEFAULT_ALIAS))
                version = a.version if a is not None else s.scalar(
                    select(func.max(ModelVersionRow.version)).where(ModelVersionRow.name == name))
                if version is None:
                    raise ModelNotFound(f"no model named {_q(name)} in {self.root}")
            row = s.scalar(select(ModelVersionRow).where(ModelVersionRow.name == name,
                                                         ModelVersionRow.version == version))
            if row is None:
                raise ModelNotFound(f"model {name} has no version {version}")
            return self._to_version(row, self._aliases_of(s, name).get(row.version, ()))

    def resolve(self, ref: str) -> ModelVersion:
        name, alias, version = parse_reference(ref)
        return self.get(name, version=version, alias=alias)

    def versions(self, name: str) -> list[ModelVersion]:
        with Session(self.engine) as s:
            aliases = self._aliases_of(s, name)
            rows = s.scalars(select(ModelVersionRow).where(ModelVersionRow.name == name)
                             .order_by(ModelVersionRow.version))
            return [self._to_version(r, aliases.get(r.version, ())) for r in rows]

    def names(self) -> list[str]:
        """Every registered model name (one query; the serving path asks this per request)."""
        with Session(self.engine) as s:
            return list(s.scalars(select(ModelVersionRow.name).distinct().order_by(ModelVersionRow.name)))

    def list_models(self) -> list[ModelVersion]:
        """The latest version of every model name (with its aliases)."""
        return [self.versions(n)[-1] for n in self.names()]

    def default_targets(self, variant: str, kind: str = "stack") -> list[str]:
        """The targets that have a default ``kind`` model on ``variant``, in schema order."""
        from app.core.schema import TARGET_NAMES

        names = set(self.names())
        return [t for t in TARGET_NAMES if model_name(t, variant, kind) in names]

    def resolve_choice(self, model: str | None, targets: Sequence[str], variant: str,
                       kind: str = "stack", name: str | None = None) -> list[ModelVersion]:
        """The version serving each target, pinned: the one place a user's model choice is read.

        ``model`` is None (each target's default ``<target>-<variant>-<kind>`` at ``production``,
        else its latest version), a version number or an alias applied to every default, or a
        reference to one model (``NAME``, ``NAME@ALIAS``, ``NAME/V``, ``models:/...``) which must
        answer every target asked for.  A bare word is a model name if a model has that name, else
        an alias.  ``name``: the default model of every target (a model answering several, such as
        ``raw-sampler``) instead of each target's ``<target>-<variant>-<kind>``.
        """
        named = self.referenced(model)
        if named is None:
            if model is None:
                version, alias = None, None
            elif model.isascii() and model.isdigit():
                version, alias = parse_version(model), None
            else:
                version, alias = None, check_alias(model)
            return [self.get(name or model_name(t, variant, kind), version=version, alias=alias) for t in targets]
        missing = [t for t in targets if t not in named.targets]
        if missing:
            raise InvalidReference(f"model {named.uri} predicts {', '.join(named.targets)}, not {', '.join(missing)}")
        return [named] * len(targets)

    def galaxy_for(self, pinned: Mapping[str, ModelVersion], variant: str) -> ModelVersion | None:
        """The newest multi-target graph of ``variant`` (``<variant>-galaxy``, kind galaxy) that holds
        exactly the stack versions ``pinned`` (target -> version: name, number and sha256 recorded in its
        ``extra["stacks"]``) and no other target; None if there is none (or ``pinned`` is not all stacks).
        A graph answering more targets than asked is not used: it would compute them all."""
        if not pinned or any(mv.kind != "stack" for mv in pinned.values()):
            return None
        name = model_name(None, variant, "galaxy")
        if name not in self.names():
            return None
        for mv in reversed(self.versions(name)):
            held = mv.extra.get("stacks") or {}
            if set(held) == set(pinned) and all(
                    held[t].get("name") == v.name and held[t].get("version") == v.version
                    and held[t].get("sha256") == v.sha256 for t, v in pinned.items()):
                return mv
        return None

    def referenced(self, model: str | None) -> ModelVersion | None:
        """The one model a choice names (``NAME``, ``NAME@ALIAS``, ``NAME/V``, ``models:/...``), or None
        when the choice is nothing, a version number or an alias (applied to each target's default)."""
        if model is None or model.isdigit() or ("@" not in model and "/" not in model
                                                  and model not in self.names()):
            return None
        name, alias, version = parse_reference(model)
        return self.get(name, version=version, alias=alias)

    # ------------------------------------------------------------------ loading
    def load_bytes(self, mv: ModelVersion) -> bytes:
        """The artefact's bytes, after checking its sha256 against the record."""
        try:
            data = mv.artefact.read_bytes()
        except FileNotFoundError:
            raise ArtefactUnavailable(f"artefact of {mv.uri} is missing: {mv.artefact}") from None
        except OSError as exc:
            raise ArtefactUnavailable(f"artefact of {mv.uri} cannot be read: {exc.strerror} ({mv.artefact})") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != mv.sha256:
            raise ArtefactUnavailable(f"artefact of {mv.uri} has been modified: sha256 {digest[:12]}... "
                                      f"does not match the registered {mv.sha256[:12]}...; refusing to load it")
        return data

    def verify(self, mv: ModelVersion) -> None:
        """Raise ``ArtefactUnavailable`` unless ``mv``'s artefact is intact and onnxruntime loads it."""
        data = self.load_bytes(mv)
        import onnxruntime as ort  # here: listing or resolving models should not pay for importing it

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types for unusable graphs
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ArtefactUnavailable(f"artefact of {mv.uri} cannot be loaded by onnxruntime: {reason}") from None


def model_name(target: str | None, variant: str, kind: str) -> str:
    """Conventional model name: ``smass-raw-stack`` for one target, ``raw-sampler`` (target None) for a
    model of several."""
    return f"{variant}-{kind}" if target is None else f"{target}-{variant}-{kind}"


def json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=json_default, indent=2)
