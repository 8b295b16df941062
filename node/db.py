"""The database: every state a user may ask about is a row with a timestamp.

    Study ─< Series ─< Instance
               └─< Job ─< Result ─< Delivery
                    └─< Notification

SQLite (WAL, synchronous=FULL, so a commit survives power loss) is the embedded default;
PostgreSQL is the production database, shared by listener and workers on several hosts.

The schema is versioned: Alembic revisions in node/spool/migrations, from the first release's
tables on. Every process upgrades to the newest at start (``Database.upgrade``), one at a time.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Enum,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from node.errors import DatabaseUnavailable

if TYPE_CHECKING:  # Alembic itself is imported when the schema is looked at (half a second)
    from alembic.config import Config as MigrationConfig
    from alembic.script import ScriptDirectory

__all__ = [
    "Database",
    "Delivery",
    "DeliveryState",
    "Instance",
    "Job",
    "JobState",
    "Notification",
    "NotificationEvent",
    "Purge",
    "Result",
    "Series",
    "SeriesState",
    "Study",
    "head_revision",
    "migration_config",
    "radnode_table",
    "utcnow",
]

log = logging.getLogger("radnode.db")

UID = String(64)
SQLITE_BUSY_TIMEOUT_SECONDS = 30
#: Alembic's env.py and versions/, in the spool stage
MIGRATIONS = Path(__file__).resolve().parent / "spool" / "migrations"
#: pg_advisory_xact_lock key: one radnode process at a time upgrades a PostgreSQL database
_UPGRADE_LOCK_KEY = 0x7261646E6F6465  # "radnode"
#: the column each revision added first, newest first: where a database from before migrations stands
_LEGACY_MARKERS = (
    ("0004", "notification", "idempotency_key"),
    ("0003", "job", "inputs"),
    ("0002", "series", "calling_address"),
)


def utcnow() -> datetime:
    """Timezone-aware now; every timestamp in the database is UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A stored timestamp as an aware UTC one: SQLite returns them without a zone in plain selects."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class _UTCDateTime(DateTime):
    """SQLite drops time zones; give them back as UTC on the way out."""

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def result_processor(self, dialect, coltype):  # type: ignore[no-untyped-def]
        parent = super().result_processor(dialect, coltype)

        def process(value):  # type: ignore[no-untyped-def]
            value = parent(value) if parent else value
            if isinstance(value, datetime) and value.tzinfo is None:
                return value.replace(tzinfo=UTC)
            return value

        return process


class SeriesState(enum.StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"


class JobState(enum.StrEnum):
    WAITING = "waiting"  # a study-level job whose input series have not all arrived
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    NOT_APPLICABLE = "not_applicable"
    FAILED = "failed"


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"


class NotificationEvent(enum.StrEnum):
    """What a notification tells (``notifications.NAME.events``)."""

    JOB_SUCCEEDED = "job_succeeded"
    JOB_FAILED = "job_failed"
    DELIVERY_FAILED = "delivery_failed"  # permanently: refused, or out of attempts


def _state(kind: type[enum.StrEnum]) -> Enum:
    return Enum(kind, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: _UTCDateTime()}


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"))
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    # the sender's IP address (audit trail: who sent what)
    calling_address: Mapped[str] = mapped_column(String(45), default="", server_default="")
    # the AE title the sender called radnode by (routes may match on it)
    called_ae_title: Mapped[str] = mapped_column(String(16), default="", server_default="")
    state: Mapped[SeriesState] = mapped_column(_state(SeriesState), default=SeriesState.RECEIVING)
    # bumped each time the series completes; a late arrival makes a new revision and a new job
    revision: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", order_by="Instance.id")
    jobs: Mapped[list[Job]] = relationship(back_populates="series", order_by="Job.id")


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    calling_address: Mapped[str] = mapped_column(String(45), default="", server_default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """One pipeline run over one revision of one series (idempotent by the unique key).

    ``pipeline_version`` is filled in by the worker that runs it: the version installed there.
    A study-level job (``pipelines.NAME.inputs``) starts WAITING on the series that completed first;
    ``inputs`` maps each input name to the series chosen for it once all are there.
    """

    __tablename__ = "job"
    __table_args__ = (UniqueConstraint("series_id", "pipeline", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    pipeline: Mapped[str] = mapped_column(String(64))
    pipeline_version: Mapped[str] = mapped_column(String(32), default="")
    revision: Mapped[int] = mapped_column(Integer)
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    inputs: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, server_default="{}")
    state: Mapped[JobState] = mapped_column(_state(JobState), default=JobState.QUEUED, index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    series: Mapped[Series] = relationship(back_populates="jobs")
    results: Mapped[list[Result]] = relationship(back_populates="job", order_by="Result.id")
    notifications: Mapped[list[Notification]] = relationship(back_populates="job", order_by="Notification.id")


class Result(Base):
    """One DICOM object a job produced (SEG, SR), stored under the results folder."""

    __tablename__ = "result"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="results")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="result", order_by="Delivery.id")


class _SentWithRetries:
    """The columns of what is sent with retries until sent or given up: a delivery, a notification."""

    state: Mapped[DeliveryState] = mapped_column(
        _state(DeliveryState), default=DeliveryState.PENDING, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]


class Delivery(_SentWithRetries, Base):
    """One result to one destination: sent once, retried with backoff, or failed with why."""

    __tablename__ = "delivery"
    __table_args__ = (UniqueConstraint("result_id", "destination"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("result.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))

    result: Mapped[Result] = relationship(back_populates="deliveries")


class Notification(_SentWithRetries, Base):
    """One event of a job told to one channel (outbox row): sent once, retried with backoff, or failed.

    Made in the transaction that changes the state it tells, so a crash neither loses nor doubles it.
    ``subject`` says which occurrence (the job's attempt, the delivery); with job, event and channel it
    makes ``idempotency_key``, which the receiver sees on every try. ``body`` is the JSON sent.
    """

    __tablename__ = "notification"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    channel: Mapped[str] = mapped_column(String(64))
    event: Mapped[NotificationEvent] = mapped_column(_state(NotificationEvent))
    subject: Mapped[str] = mapped_column(String(64), default="")
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)

    job: Mapped[Job] = relationship(back_populates="notifications")


class Purge(Base):
    """When retention removed a study's files, and how much it freed (one row per study)."""

    __tablename__ = "purge"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), unique=True)
    purged_at: Mapped[datetime] = mapped_column(default=utcnow)
    files_removed: Mapped[int] = mapped_column(Integer, default=0)
    bytes_freed: Mapped[int] = mapped_column(Integer, default=0)


class Database:
    """An engine plus a session factory; ``session()`` commits on success, rolls back on error."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = _make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade(self) -> tuple[str | None, str]:
        """Bring the schema to the newest revision; (revision before, head). Every process calls it.

        A database from before migrations is stamped with the revision it has, then upgraded from
        there. One process at a time (``_upgrade_lock``): the others wait, then find it at head.
        """
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        head = head_revision()
        with self.engine.begin() as connection, _upgrade_lock(connection):
            before = MigrationContext.configure(connection).get_current_revision()
            legacy = None if before is not None else _legacy_revision(connection)
            if legacy is not None:
                command.stamp(migration_config(connection), legacy)
                before = legacy
            elif before is not None and before not in _known_revisions():
                raise DatabaseUnavailable(
                    f"the database schema is at revision {before}, which this radnode does not know"
                    f" (its newest is {head}): install the radnode version that wrote it"
                )
            if before != head:
                command.upgrade(migration_config(connection), "head")
        if before != head:
            shown = f"{before} (from before migrations)" if legacy else before or "an empty database"
            log.info("database schema upgraded from %s to %s", shown, head)
        elif legacy:
            log.info("database schema from before migrations stamped at %s", head)
        return before, head

    def create_schema(self) -> None:
        """The name every caller knows: ``upgrade()``."""
        self.upgrade()

    def current_revision(self) -> str | None:
        """The revision the database is stamped with (None: empty, or from before migrations)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def legacy_revision(self) -> str | None:
        """The revision an unstamped database from before migrations has (None: none of its tables)."""
        with self.engine.connect() as connection:
            return _legacy_revision(connection)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back if it raises."""
        with self._sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def migration_config(connection: Connection) -> MigrationConfig:
    """Alembic's configuration in code (no alembic.ini ships): the migrations run on ``connection``."""
    from alembic.config import Config as MigrationConfig

    config = MigrationConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    from alembic.config import Config as MigrationConfig
    from alembic.script import ScriptDirectory

    config = MigrationConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def head_revision() -> str:
    """The newest schema revision this version of radnode knows."""
    head = _scripts().get_current_head()
    assert head is not None, f"no migrations in {MIGRATIONS}"
    return head


def _known_revisions() -> set[str]:
    return {script.revision for script in _scripts().walk_revisions()}


def radnode_table(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's include_name: compare only radnode's tables (a shared database holds others)."""
    return type_ != "table" or name in Base.metadata.tables


@contextmanager
def _upgrade_lock(connection: Connection) -> Iterator[None]:
    """Held until ``connection``'s transaction ends, so that concurrent starts upgrade one at a time.

    SQLite: the transaction began with BEGIN IMMEDIATE (``_make_engine``), the database's write lock;
    others wait for it up to the busy timeout. PostgreSQL: a transaction-level advisory lock.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK_KEY})
    yield


def _legacy_revision(connection: Connection) -> str | None:
    """The revision of a database that radnode's tables were created in before it had migrations.

    Those versions ran ``create_all`` and then added each new column (never removed one), so the
    newest column present tells the revision; None when there are no radnode tables to place.
    """
    inspector = inspect(connection)
    if not inspector.has_table("study"):
        return None
    for revision, table, column in _LEGACY_MARKERS:
        if inspector.has_table(table) and column in {found["name"] for found in inspector.get_columns(table)}:
            return revision
    return "0001"


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # pysqlite's own transaction handling defers BEGIN; take it over so that writers
            # take the lock at BEGIN IMMEDIATE and wait (busy timeout) instead of failing.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection):  # type: ignore[no-untyped-def]
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)
