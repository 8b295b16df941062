"""Completion: when a series has arrived in full, route it and queue its jobs.

A series is complete once no association that sent to it is open and no instance arrived for
``completion.quiet_seconds``, or, with ``completion.verify_with``, as soon as the PACS answers a
C-FIND (Study Root, SERIES level, PS3.4 C.6.1) with a NumberOfSeriesRelatedInstances equal to
the instances received. Completing bumps the series' revision; an instance that arrives later
reopens the series, so it completes again and gets new jobs (results replace the old ones
through deterministic UIDs), unless ``completion.late_arrivals`` is ``ignore``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import, in globals()
    StudyRootQueryRetrieveInformationModelFind,
)
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from node.config import CompletionConfig, Destination, PipelineOptions, Route
from node.db import Database, Instance, Job, JobState, Series, SeriesState, Study, as_utc, utcnow
from node.delivery.send import RequestorAE, open_association
from node.dimse import FindStatus
from node.errors import BrokerUnreachable, DeliveryError
from node.jobs.routing import assign
from node.jobs.study_jobs import StudyJobs, series_facts

__all__ = ["CompletionWatcher", "PacsCounter"]

log = logging.getLogger("radnode.completion")


class PacsCounter:
    """How many instances of a series a PACS holds: C-FIND NumberOfSeriesRelatedInstances."""

    def __init__(self, destination: Destination, *, calling_ae_title: str, timeout_seconds: float) -> None:
        self.destination = destination
        self.calling_ae_title = destination.calling_ae_title or calling_ae_title
        self.timeout_seconds = timeout_seconds

    def count(self, study_instance_uid: str, series_instance_uid: str) -> int | None:
        """The PACS's count, or None when it does not know the series (or says no number).

        Raises DestinationUnreachable when the PACS cannot be asked.
        """
        ae = RequestorAE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_seconds
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_instance_uid
        query.SeriesInstanceUID = series_instance_uid
        query.NumberOfSeriesRelatedInstances = None
        assoc = open_association(ae, self.destination)
        counts = []
        try:
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                pending = (FindStatus.PENDING, FindStatus.PENDING_OPTIONAL_KEYS_UNSUPPORTED)
                if status and status.get("Status") in pending and identifier is not None:
                    counts.append(identifier.get("NumberOfSeriesRelatedInstances"))
        finally:
            assoc.release()
        numbers = [int(value) for value in counts if value not in (None, "")]
        return numbers[0] if len(numbers) == 1 else None


class CompletionWatcher:
    """Polls for quiet series, creates their jobs, and hands job ids to ``enqueue``.

    With a ``counter`` (``completion.verify_with``), a released series that is not quiet yet
    completes as soon as the PACS holds exactly as many instances as radnode received.
    """

    def __init__(
        self,
        db: Database,
        config: CompletionConfig,
        routes: list[Route],
        busy_series: Callable[[], set[str]],
        enqueue: Callable[[int], None],
        counter: PacsCounter | None = None,
        pipelines: Mapping[str, PipelineOptions] | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.routes = routes
        self.study_jobs = StudyJobs(pipelines or {})
        self.busy_series = busy_series
        self.enqueue = enqueue
        self.counter = counter
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsent: list[int] = []  # job ids the broker has not taken yet (they are QUEUED rows)
        self._broker_down = False
        self._database_down = False

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
            except SQLAlchemyError as exc:  # the engine reconnects (pool_pre_ping) once it is back
                if not self._database_down:
                    log.warning("database unreachable; retrying every %g s: %s",
                                self.config.poll_interval_seconds, str(exc).splitlines()[0])
                self._database_down = True
                continue
            except Exception:  # the loop must outlive anything else too; the log says what
                log.exception("completion check failed; retrying")
                continue
            if self._database_down:
                log.info("database reachable again; completion resumed")
                self._database_down = False

    def tick(self) -> list[int]:
        """Complete every ready series; return the ids of the jobs created and enqueued."""
        ready = self._ready()
        created: list[int] = []
        if ready:
            busy = self.busy_series()
            with self.db.session() as session:
                for series in session.scalars(select(Series).where(Series.id.in_(ready))):
                    # unchanged since it was judged ready (no instance arrived meanwhile)
                    if (
                        series.state == SeriesState.RECEIVING
                        and as_utc(series.last_received_at) == ready[series.id]
                        and series.series_instance_uid not in busy
                    ):
                        created.extend(self._complete(session, series))
        with self.db.session() as session:
            created.extend(self.study_jobs.resolve(session))
        self._send(created)
        return created

    def _ready(self) -> dict[int, datetime]:
        """Series ids that may complete now, with the arrival time they were judged on.

        The C-FIND runs outside any database transaction: SQLite's write lock must not wait on
        the network.
        """
        cutoff = utcnow() - timedelta(seconds=self.config.quiet_seconds)
        busy = self.busy_series()
        query = (
            select(Series.id, Series.series_instance_uid, Study.study_instance_uid, Series.last_received_at)
            .join(Study, Series.study_id == Study.id)
            .where(Series.state == SeriesState.RECEIVING)
        )
        if self.counter is None:
            query = query.where(Series.last_received_at <= cutoff)
        with self.db.session() as session:
            candidates = session.execute(query).all()
        return {
            series_id: last
            for series_id, series_uid, study_uid, naive_or_aware in candidates
            if (last := as_utc(naive_or_aware))
            if series_uid not in busy
            and (last <= cutoff or self._pacs_has_all(series_id, study_uid, series_uid))
        }

    def _pacs_has_all(self, series_id: int, study_uid: str, series_uid: str) -> bool:
        assert self.counter is not None
        with self.db.session() as session:
            received = session.scalar(select(func.count(Instance.id)).where(Instance.series_id == series_id))
        try:
            expected = self.counter.count(study_uid, series_uid)
        except DeliveryError as exc:
            log.warning("completion C-FIND failed series=%s: %s; waiting for the quiet period",
                        series_uid, exc)
            return False
        log.debug("completion C-FIND series=%s pacs=%s received=%d", series_uid, expected, received)
        return expected == received

    def _send(self, job_ids: list[int]) -> None:
        """Hand job ids to the broker; those it does not take wait and are retried each tick.

        The jobs are committed QUEUED rows already, so an unreachable broker delays them but
        loses none (and a restart of the node enqueues every QUEUED job anyway).
        """
        self._unsent.extend(job_id for job_id in job_ids if job_id not in self._unsent)
        while self._unsent:
            try:
                self.enqueue(self._unsent[0])
            except BrokerUnreachable as exc:
                if not self._broker_down:
                    log.warning("broker unreachable; %d job(s) wait in the database: %s",
                                len(self._unsent), exc)
                self._broker_down = True
                return
            self._unsent.pop(0)
        if self._broker_down:
            log.info("broker reachable again; waiting jobs enqueued")
            self._broker_down = False

    def _complete(self, session, series: Series) -> list[int]:  # type: ignore[no-untyped-def]
        series.state = SeriesState.COMPLETE
        series.completed_at = utcnow()
        if series.revision > 0 and self.config.late_arrivals == "ignore":
            log.info("late arrivals stored, no new job (late_arrivals: ignore) series=%s instances=%d",
                     series.series_instance_uid, len(series.instances))
            return []
        series.revision += 1
        facts = series_facts(series)
        assignments = assign(self.routes, facts) if facts is not None else []
        log.info(
            "series complete series=%s instances=%d revision=%d pipelines=%s",
            series.series_instance_uid,
            len(series.instances),
            series.revision,
            ",".join(a.pipeline for a in assignments) or "-",
        )
        jobs = []
        for assignment in assignments:
            if self.study_jobs.takes_study(assignment.pipeline):
                assert facts is not None  # no facts, no assignments
                self.study_jobs.join(session, series, facts, assignment)
                continue
            jobs.append(Job(
                series_id=series.id,
                pipeline=assignment.pipeline,
                revision=series.revision,
                destinations=list(assignment.destinations),
                state=JobState.QUEUED,
            ))
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
        self._send(list(ids))
        return len(ids)
