"""Retention: remove a study's spool files and results once they are delivered and old enough.

A study is purged when every series was last received more than ``storage.retention_days`` ago,
every job ended ``succeeded`` or ``not_applicable`` and every delivery is ``sent``. A study with a
queued, running or failed job, or a delivery not yet sent, is kept whatever its age: its files
are what a retry needs. The rows stay (``radnode status`` still tells what happened) and a
``Purge`` row records when the files went and how much was freed. Instances that arrive after a
purge reopen the study: it is purged again once it qualifies again.

The listener runs the sweep in a thread (``RetentionSweeper``): it is the one process per site,
and with a shared spool it sees every file the workers read.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import selectinload

from node.config import StorageConfig
from node.db import Database, DeliveryState, Job, JobState, Purge, Result, Series, Study, utcnow

__all__ = ["RetentionSweeper", "purge_expired"]

log = logging.getLogger("radnode.retention")

SWEEP_INTERVAL_SECONDS = 3600.0
_DONE = (JobState.SUCCEEDED, JobState.NOT_APPLICABLE)


def _delivered(study: Study) -> bool:
    jobs = [job for series in study.series for job in series.jobs]
    return all(job.state in _DONE for job in jobs) and all(
        delivery.state is DeliveryState.SENT
        for job in jobs
        for result in job.results
        for delivery in result.deliveries
    )


def _remove(paths: list[Path], roots: tuple[Path, ...]) -> tuple[int, int]:
    """Delete files, then their folders that became empty (never a root); (files, bytes)."""
    files = freed = 0
    for path in paths:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        files, freed = files + 1, freed + size
        folder = path.parent
        while folder not in roots and any(folder.is_relative_to(root) for root in roots):
            try:
                folder.rmdir()
            except OSError:  # not empty
                break
            folder = folder.parent
    return files, freed


def purge_expired(db: Database, storage: StorageConfig, *, now: datetime | None = None) -> list[str]:
    """Purge every study that qualifies (see the module docstring); return their Study UIDs."""
    if storage.retention_days is None:
        return []
    cutoff = (now or utcnow()) - timedelta(days=storage.retention_days)
    roots = (storage.path.resolve(), storage.results_dir.resolve())
    purged = []
    with db.session() as session:
        last_received = (
            select(Series.study_id)
            .group_by(Series.study_id)
            .having(func.max(Series.last_received_at) < cutoff)
        )
        studies = session.scalars(
            select(Study)
            .where(Study.id.in_(last_received))
            .options(
                selectinload(Study.series).selectinload(Series.instances),
                selectinload(Study.series)
                .selectinload(Series.jobs)
                .selectinload(Job.results)
                .selectinload(Result.deliveries),
            )
        ).all()
        previous = {p.study_id: p for p in session.scalars(select(Purge))}
        for study in studies:
            newest = max(series.last_received_at for series in study.series)
            done = previous.get(study.id)
            if (done is not None and done.purged_at >= newest) or not _delivered(study):
                continue
            paths = [Path(i.path) for series in study.series for i in series.instances]
            paths += [
                Path(r.path) for series in study.series for job in series.jobs for r in job.results
            ]
            files, freed = _remove(paths, roots)
            if done is None:
                session.add(Purge(study_id=study.id, files_removed=files, bytes_freed=freed))
            else:
                done.purged_at, done.files_removed, done.bytes_freed = utcnow(), files, freed
            purged.append(study.study_instance_uid)
            log.info("study purged study=%s files=%d bytes=%d", study.study_instance_uid, files, freed)
    return purged


class RetentionSweeper:
    """Runs ``purge_expired`` at start and then every ``interval_seconds`` in a thread."""

    def __init__(
        self, db: Database, storage: StorageConfig, interval_seconds: float = SWEEP_INTERVAL_SECONDS
    ) -> None:
        self.db = db
        self.storage = storage
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while True:
            try:
                purge_expired(self.db, self.storage)
            except (OSError, SQLAlchemyError) as exc:  # a failed sweep must not end the listener
                log.error("retention sweep failed: %s: %s", type(exc).__name__, exc)
            if self._stop.wait(self.interval_seconds):
                return
