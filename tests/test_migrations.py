"""Schema migrations: every database an earlier radnode made reaches the newest revision, rows kept.

The first release's tables are written out below as that release created them (``create_all`` of its
models, commit 420ce9c), with no alembic_version: a user's database from then. After the upgrade
Alembic's comparison of the database with the models finds nothing, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    inspect,
    select,
    text,
)

from node.db import Base, Database, Instance, Job, Series, as_utc, head_revision, radnode_table
from tests.node_process import radnode_cli
from tests.services import postgres_database

HEAD = "0004"
UID = String(64)
WHEN = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


FIRST_RELEASE = MetaData()
Table("study", FIRST_RELEASE,
      Column("id", Integer, primary_key=True),
      Column("study_instance_uid", UID, nullable=False, unique=True),
      Column("first_received_at", DateTime(timezone=True), nullable=False))
Table("series", FIRST_RELEASE,
      Column("id", Integer, primary_key=True),
      Column("study_id", Integer, ForeignKey("study.id"), nullable=False),
      Column("series_instance_uid", UID, nullable=False, unique=True),
      Column("modality", String(16), nullable=False),
      Column("series_number", Integer),
      Column("series_description", String(64), nullable=False),
      Column("calling_ae_title", String(16), nullable=False),
      Column("state", String(20), nullable=False),
      Column("revision", Integer, nullable=False),
      Column("first_received_at", DateTime(timezone=True), nullable=False),
      Column("last_received_at", DateTime(timezone=True), nullable=False),
      Column("completed_at", DateTime(timezone=True)))
Table("instance", FIRST_RELEASE,
      Column("id", Integer, primary_key=True),
      Column("series_id", Integer, ForeignKey("series.id"), nullable=False, index=True),
      Column("sop_instance_uid", UID, nullable=False, unique=True),
      Column("sop_class_uid", UID, nullable=False),
      Column("transfer_syntax_uid", UID, nullable=False),
      Column("path", Text, nullable=False),
      Column("size_bytes", Integer, nullable=False),
      Column("calling_ae_title", String(16), nullable=False),
      Column("received_at", DateTime(timezone=True), nullable=False))
Table("job", FIRST_RELEASE,
      Column("id", Integer, primary_key=True),
      Column("series_id", Integer, ForeignKey("series.id"), nullable=False, index=True),
      Column("pipeline", String(64), nullable=False),
      Column("pipeline_version", String(32), nullable=False),
      Column("revision", Integer, nullable=False),
      Column("destinations", JSON, nullable=False),
      Column("state", String(20), nullable=False, index=True),
      Column("reason", Text, nullable=False),
      Column("attempts", Integer, nullable=False),
      Column("worker", String(255), nullable=False),
      Column("created_at", DateTime(timezone=True), nullable=False),
      Column("started_at", DateTime(timezone=True)),
      Column("finished_at", DateTime(timezone=True)),
      UniqueConstraint("series_id", "pipeline", "revision"))
Table("result", FIRST_RELEASE,
      Column("id", Integer, primary_key=True),
      Column("job_id", Integer, ForeignKey("job.id"), nullable=False, index=True),
      Column("kind", String(8), nullable=False),
      Column("sop_class_uid", UID, nullable=False),
      Column("sop_instance_uid", UID, nullable=False),
      Column("series_instance_uid", UID, nullable=False),
      Column("path", Text, nullable=False),
      Column("created_at", DateTime(timezone=True), nullable=False))
Table("delivery", FIRST_RELEASE,
      Column("id", Integer, primary_key=True),
      Column("result_id", Integer, ForeignKey("result.id"), nullable=False, index=True),
      Column("destination", String(64), nullable=False),
      Column("state", String(20), nullable=False, index=True),
      Column("attempts", Integer, nullable=False),
      Column("last_status", Integer),
      Column("last_error", Text, nullable=False),
      Column("created_at", DateTime(timezone=True), nullable=False),
      Column("next_attempt_at", DateTime(timezone=True)),
      Column("sent_at", DateTime(timezone=True)),
      UniqueConstraint("result_id", "destination"))

#: one row per table, as the first release wrote them
FIRST_RELEASE_ROWS: dict[str, dict[str, Any]] = {
    "study": {"id": 1, "study_instance_uid": "1.2.3", "first_received_at": WHEN},
    "series": {"id": 1, "study_id": 1, "series_instance_uid": "1.2.3.4", "modality": "CT",
               "series_number": 2, "series_description": "chest", "calling_ae_title": "SCANNER",
               "state": "complete", "revision": 1, "first_received_at": WHEN, "last_received_at": WHEN,
               "completed_at": WHEN},
    "instance": {"id": 1, "series_id": 1, "sop_instance_uid": "1.2.3.4.5", "sop_class_uid": "1.2.840.1",
                 "transfer_syntax_uid": "1.2.840.10008.1.2.1", "path": "spool/1.dcm", "size_bytes": 512,
                 "calling_ae_title": "SCANNER", "received_at": WHEN},
    "job": {"id": 1, "series_id": 1, "pipeline": "lung-qct", "pipeline_version": "1", "revision": 1,
            "destinations": ["pacs"], "state": "succeeded", "reason": "", "attempts": 1,
            "worker": "gpu0@host", "created_at": WHEN, "started_at": WHEN, "finished_at": WHEN},
    "result": {"id": 1, "job_id": 1, "kind": "SEG", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.66.4",
               "sop_instance_uid": "1.2.9.1", "series_instance_uid": "1.2.9", "path": "results/seg.dcm",
               "created_at": WHEN},
    "delivery": {"id": 1, "result_id": 1, "destination": "pacs", "state": "sent", "attempts": 1,
                 "last_status": 0, "last_error": "", "created_at": WHEN, "sent_at": WHEN},
}


def _differences(engine: Engine) -> list[Any]:
    """What ``alembic check`` would report: the database against the models (radnode's tables only)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_name": radnode_table})
        return list(compare_metadata(context, Base.metadata))


def _first_release_database(url: str) -> None:
    engine = create_engine(url)
    FIRST_RELEASE.create_all(engine)
    with engine.begin() as connection:
        for table in FIRST_RELEASE.sorted_tables:
            connection.execute(table.insert(), [FIRST_RELEASE_ROWS[table.name]])
    engine.dispose()


def _schema(engine: Engine) -> dict[str, Any]:
    """Every table's columns, indexes, unique constraints and foreign keys, as reflected."""
    inspector = inspect(engine)
    return {table: {
        "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default"))
                    for c in inspector.get_columns(table)],
        "indexes": sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table)),
        "unique": sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
        "foreign_keys": sorted((tuple(f["constrained_columns"]), f["referred_table"])
                               for f in inspector.get_foreign_keys(table)),
    } for table in sorted(inspector.get_table_names())}


def _upgrade_keeps_first_release_rows(url: str, caplog: pytest.LogCaptureFixture) -> None:
    _first_release_database(url)
    db = Database(url)
    try:
        with caplog.at_level(logging.INFO, logger="radnode.db"):
            assert db.legacy_revision() == "0001"
            assert db.upgrade() == ("0001", HEAD)
        assert [r.getMessage() for r in caplog.records if r.name == "radnode.db"] == [
            f"database schema upgraded from 0001 (from before migrations) to {HEAD}"]
        assert db.current_revision() == HEAD
        assert _differences(db.engine) == []
        with db.session() as session:
            series = session.scalars(select(Series)).one()
            instance = session.scalars(select(Instance)).one()
            job = session.scalars(select(Job)).one()
            assert (series.series_instance_uid, series.modality) == ("1.2.3.4", "CT")
            assert series.completed_at is not None and as_utc(series.completed_at) == WHEN
            assert (series.calling_address, series.called_ae_title, instance.calling_address) == ("", "", "")
            assert (job.destinations, job.inputs, job.worker) == (["pacs"], {}, "gpu0@host")
            assert len(session.scalars(select(Job).join(Job.results)).all()) == 1
    finally:
        db.dispose()


def test_first_release_sqlite_database_is_upgraded_with_its_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _upgrade_keeps_first_release_rows(f"sqlite:///{tmp_path / 'radnode.db'}", caplog)


@pytest.mark.services
def test_first_release_postgresql_database_is_upgraded_with_its_rows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with postgres_database() as url:
        _upgrade_keeps_first_release_rows(url, caplog)


def test_head_is_the_models_and_a_second_upgrade_logs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'radnode.db'}")
    with caplog.at_level(logging.INFO, logger="radnode.db"):
        assert db.upgrade() == (None, HEAD)
        assert [r.getMessage() for r in caplog.records if r.name == "radnode.db"] == [
            f"database schema upgraded from an empty database to {HEAD}"]
        caplog.clear()
        db.create_schema()
        assert [r for r in caplog.records if r.name == "radnode.db"] == []
    assert head_revision() == HEAD
    assert _differences(db.engine) == []
    db.dispose()


def test_a_database_from_before_migrations_at_the_current_schema_is_stamped_not_altered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the last version without migrations made: ``create_all`` of today's models."""
    url = f"sqlite:///{tmp_path / 'radnode.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(Base.metadata.tables["study"].insert(), [FIRST_RELEASE_ROWS["study"]])
    before = _schema(engine)
    db = Database(url)
    with caplog.at_level(logging.INFO, logger="radnode.db"):
        assert db.upgrade() == (HEAD, HEAD)
    assert [r.getMessage() for r in caplog.records if r.name == "radnode.db"] == [
        f"database schema from before migrations stamped at {HEAD}"]
    after = _schema(engine)
    assert after.pop("alembic_version")["columns"][0][0] == "version_num"
    assert after == before
    with engine.connect() as connection:
        assert connection.execute(text("SELECT study_instance_uid FROM study")).scalars().all() == ["1.2.3"]
    assert db.current_revision() == HEAD
    db.dispose()
    engine.dispose()


def test_a_database_newer_than_this_radnode_is_refused(tmp_path: Path) -> None:
    from node.errors import DatabaseUnavailable

    db = Database(f"sqlite:///{tmp_path / 'radnode.db'}")
    db.upgrade()
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(DatabaseUnavailable, match="revision 9999, which this radnode does not know"):
        db.upgrade()
    db.dispose()


@pytest.fixture
def config_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "radnode.yaml"
    path.write_text(yaml.safe_dump({
        "storage": {"path": str(tmp_path / "spool")},
        "database": {"url": f"sqlite:///{tmp_path / 'radnode.db'}"},
        "broker": {"url": f"sqla+sqlite:///{tmp_path / 'broker.db'}"},
    }))
    yield path


def test_db_upgrade_command_upgrades_once_then_has_nothing_to_do(config_file: Path) -> None:
    config = ("--config", str(config_file))
    current = radnode_cli("db", "current", *config)
    assert (current.returncode, current.stdout.strip()) == (
        1, "none: an empty database (`radnode db upgrade` creates the schema)")
    first = radnode_cli("db", "upgrade", *config)
    assert (first.returncode, first.stdout.strip()) == (
        0, f"database schema upgraded from an empty database to {HEAD}"), first.stderr
    second = radnode_cli("db", "upgrade", *config)
    assert (second.returncode, second.stdout.strip()) == (0, f"database schema at {HEAD}, nothing to do")
    assert "upgraded" not in second.stderr and "alembic" not in second.stderr.lower()
    current = radnode_cli("db", "current", *config)
    assert (current.returncode, current.stdout.strip()) == (0, f"{HEAD} (newest)")


def test_db_commands_fail_with_the_database_named(tmp_path: Path) -> None:
    config_file = tmp_path / "radnode.yaml"
    missing = tmp_path / "no such folder" / "radnode.db"
    config_file.write_text(yaml.safe_dump({
        "storage": {"path": str(tmp_path / "spool")}, "database": {"url": f"sqlite:///{missing}"},
        "broker": {"url": f"sqla+sqlite:///{tmp_path / 'broker.db'}"},
    }))
    for action in ("upgrade", "current"):
        done = radnode_cli("db", action, "--config", str(config_file))
        assert done.returncode == 1, done.stderr
        assert f"radnode: cannot open the database sqlite:///{missing}" in done.stderr
        assert "Traceback" not in done.stderr
    usage = radnode_cli("db", "--config", str(config_file))
    assert usage.returncode == 2
    helped = radnode_cli("db", "upgrade", "--help")
    assert helped.returncode == 0 and "newest revision" in helped.stdout


_UPGRADE_WHEN_RELEASED = """
import sys, time
from pathlib import Path
from node.db import Database
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
print(Database(sys.argv[1]).upgrade())
"""


def _concurrent_upgrades(url: str, go: Path, processes: int = 3) -> list[str]:
    """Start processes that each upgrade ``url`` as soon as ``go`` exists; their outputs."""
    started = [subprocess.Popen([sys.executable, "-c", _UPGRADE_WHEN_RELEASED, url, str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(processes)]
    # give each interpreter time to import before the start signal, so that they do start together
    done = subprocess.run([sys.executable, "-c", "import node.db"], check=True, timeout=120)
    assert done.returncode == 0
    go.touch()
    outputs = []
    for process in started:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        outputs.append(out.strip())
    return sorted(outputs)


def test_processes_upgrading_one_fresh_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'radnode.db'}"
    assert _concurrent_upgrades(url, tmp_path / "go") == [
        f"('{HEAD}', '{HEAD}')", f"('{HEAD}', '{HEAD}')", f"(None, '{HEAD}')"]
    db = Database(url)
    assert _differences(db.engine) == []
    db.dispose()


@pytest.mark.services
def test_processes_upgrading_one_fresh_postgresql_database_at_once_all_succeed(tmp_path: Path) -> None:
    with postgres_database() as url:
        assert _concurrent_upgrades(url, tmp_path / "go") == [
            f"('{HEAD}', '{HEAD}')", f"('{HEAD}', '{HEAD}')", f"(None, '{HEAD}')"]
        db = Database(url)
        assert _differences(db.engine) == []
        db.dispose()
