"""Retention removes old spool and result files only after every delivery succeeded; rows stay."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from node.config import StorageConfig
from node.db import Database, DeliveryState, JobState, utcnow
from node.errors import NotRetryable
from node.ops.retry import retry_job
from node.ops.status import StudyFilter, render_status
from node.spool.retention import RetentionSweeper, purge_expired
from tests.catalog_rows import StudyRows, add_study
from tests.orthanc import wait_for


@pytest.fixture
def storage(tmp_path: Path) -> StorageConfig:
    return StorageConfig(path=tmp_path / "spool", results_path=tmp_path / "results", retention_days=30)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'radnode.db'}")
    database.create_schema()
    yield database
    database.dispose()


def _add(db: Database, storage: StorageConfig, age_days: float, **kwargs: Any) -> StudyRows:
    return add_study(
        db, storage.path, storage.results_dir, received_at=utcnow() - timedelta(days=age_days), **kwargs
    )


def test_delivered_study_older_than_retention_loses_its_files_but_keeps_its_rows(
    db: Database, storage: StorageConfig
) -> None:
    old = _add(db, storage, 31, deliveries=(DeliveryState.SENT, DeliveryState.SENT))

    assert purge_expired(db, storage) == [old.study_uid]

    assert not any(path.exists() for path in old.files)
    assert not (storage.path / old.study_uid).exists() and not (storage.results_dir / old.study_uid).exists()
    assert storage.path.is_dir() and storage.results_dir.is_dir()  # the roots stay
    report = render_status(db, StudyFilter(study_uid=old.study_uid))
    assert "files removed by retention" in report and "(4 files, 0.0 MiB)" in report
    assert "3 instances" in report and "succeeded" in report and report.count("sent") == 2
    assert purge_expired(db, storage) == []  # once


@pytest.mark.parametrize(
    ("job_state", "deliveries"),
    [
        (JobState.SUCCEEDED, (DeliveryState.SENT, DeliveryState.RETRYING)),
        (JobState.SUCCEEDED, (DeliveryState.FAILED,)),
        (JobState.SUCCEEDED, (DeliveryState.PENDING,)),
        (JobState.FAILED, ()),
        (JobState.QUEUED, ()),
        (JobState.RUNNING, ()),
    ],
)
def test_old_study_is_kept_until_its_jobs_ended_and_every_delivery_was_sent(
    db: Database, storage: StorageConfig, job_state: JobState, deliveries: tuple[DeliveryState, ...]
) -> None:
    kept = _add(db, storage, 400, job_state=job_state, deliveries=deliveries)

    assert purge_expired(db, storage) == []
    assert all(path.exists() for path in kept.files)


def test_recent_study_and_not_applicable_study_are_judged_by_age(
    db: Database, storage: StorageConfig
) -> None:
    recent = _add(db, storage, 29)
    old_not_applicable = _add(db, storage, 31, job_state=JobState.NOT_APPLICABLE, deliveries=())

    assert purge_expired(db, storage) == [old_not_applicable.study_uid]
    assert all(path.exists() for path in recent.files)


def test_without_retention_days_nothing_is_removed(db: Database, tmp_path: Path) -> None:
    storage = StorageConfig(path=tmp_path / "spool")
    old = add_study(db, storage.path, storage.results_dir, received_at=utcnow() - timedelta(days=3650))

    assert purge_expired(db, storage) == []
    assert all(path.exists() for path in old.files)


def test_sweeper_thread_purges_without_being_asked(db: Database, storage: StorageConfig) -> None:
    sweeper = RetentionSweeper(db, storage, interval_seconds=0.2)
    sweeper.start()
    try:
        old = _add(db, storage, 45)
        wait_for(lambda: not any(p.exists() for p in old.files), timeout=20, interval=0.2,
                 what="the retention sweeper to remove the old study's files")
    finally:
        sweeper.stop()


def test_a_purged_job_cannot_be_retried(db: Database, storage: StorageConfig) -> None:
    old = _add(db, storage, 31, job_state=JobState.NOT_APPLICABLE, deliveries=())
    purge_expired(db, storage)

    with pytest.raises(NotRetryable, match="removed by retention"):
        retry_job(db, enqueuer=None, job_id=old.job_id)  # refused before anything is queued
