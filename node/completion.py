"""Completion: when a series has arrived in full, route it and queue its jobs.

A series is complete once no association that sent to it is open and no instance arrived for
``completion.quiet_seconds``. Completing bumps the series' revision; an instance that arrives
later reopens the series, so it completes again and gets new jobs (results replace the old ones
through deterministic UIDs).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from node.config import CompletionConfig, Route
from node.db import Database, Job, JobState, Series, SeriesState, utcnow
from node.routing import assign

__all__ = ["CompletionWatcher"]

log = logging.getLogger("radnode.completion")


class CompletionWatcher:
    """Polls for quiet series, creates their jobs, and hands job ids to ``enqueue``."""

    def __init__(
        self,
        db: Database,
        config: CompletionConfig,
        routes: list[Route],
        busy_series: Callable[[], set[str]],
        enqueue: Callable[[int], None],
    ) -> None:
        self.db = db
        self.config = config
        self.routes = routes
        self.busy_series = busy_series
        self.enqueue = enqueue
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="completion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.poll_interval_seconds):
            try:
                self.tick()
            except Exception:  # the loop must outlive a database hiccup; the log says what
                log.exception("completion check failed; retrying")

    def tick(self) -> list[int]:
        """Complete every quiet series; return the ids of the jobs created and enqueued."""
        cutoff = utcnow() - timedelta(seconds=self.config.quiet_seconds)
        busy = self.busy_series()
        created: list[int] = []
        with self.db.session() as session:
            quiet = session.scalars(
                select(Series).where(
                    Series.state == SeriesState.RECEIVING, Series.last_received_at <= cutoff
                )
            ).all()
            for series in quiet:
                if series.series_instance_uid in busy:
                    continue
                created.extend(self._complete(session, series))
        for job_id in created:
            self.enqueue(job_id)
        return created

    def _complete(self, session, series: Series) -> list[int]:  # type: ignore[no-untyped-def]
        series.state = SeriesState.COMPLETE
        series.revision += 1
        series.completed_at = utcnow()
        header = _first_header(series)
        assignments = assign(self.routes, header) if header is not None else []
        log.info(
            "series complete series=%s instances=%d revision=%d pipelines=%s",
            series.series_instance_uid,
            len(series.instances),
            series.revision,
            ",".join(a.pipeline for a in assignments) or "-",
        )
        jobs = [
            Job(
                series_id=series.id,
                pipeline=assignment.pipeline,
                revision=series.revision,
                destinations=list(assignment.destinations),
                state=JobState.QUEUED,
            )
            for assignment in assignments
        ]
        session.add_all(jobs)
        session.flush()
        return [job.id for job in jobs]

    def requeue_unfinished(self, *, include_running: bool) -> int:
        """Enqueue again every job still queued (the node may have stopped before enqueuing).

        A job that is in fact still in the broker then arrives twice; the worker skips a job
        that already finished, and results have deterministic UIDs, so a rerun replaces itself.
        Running jobs are normally the broker's business (acks_late re-delivers them when a
        worker dies); ``include_running`` is for the embedded single-host node, whose SQLite
        broker cannot re-deliver a message whose worker was killed outright.
        """
        states = [JobState.QUEUED, JobState.RUNNING] if include_running else [JobState.QUEUED]
        with self.db.session() as session:
            ids = session.scalars(select(Job.id).where(Job.state.in_(states))).all()
        for job_id in ids:
            self.enqueue(job_id)
        return len(ids)


def _first_header(series: Series):  # type: ignore[no-untyped-def]
    """The header of one stored instance: what routing rules match against."""
    for instance in series.instances:
        try:
            return dcmread(Path(instance.path), stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            log.warning("cannot read %s for routing: %s", instance.path, exc)
    return None
