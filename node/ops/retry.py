"""`radnode retry`: put a failed job or delivery back on the queue as a new attempt.

A job that ended ``failed`` or ``not_applicable`` goes back to ``queued`` (its ``attempts``
counter keeps counting, its reason is cleared) and its id is sent to the broker; a worker then runs
it as any other job. A delivery that ended ``failed`` goes back to ``pending`` with a fresh
attempt budget (``delivery.max_attempts``). Nothing is retried once retention removed the files
it needs, and nothing that succeeded is retried: the row would stop telling the truth. If the
broker does not take the message (BrokerUnreachable), the row is put back as it was.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db import Database, Delivery, DeliveryState, Job, JobState, Purge, Result, Series, utcnow
from node.errors import BrokerUnreachable, NotRetryable
from node.jobs.study_jobs import MISSING_INPUT
from node.jobs.tasks import Enqueuer

__all__ = ["retry_delivery", "retry_job"]

log = logging.getLogger("radnode.retry")

_RETRYABLE_JOB_STATES = (JobState.FAILED, JobState.NOT_APPLICABLE)


def _refuse_if_purged(session: Session, study_id: int, what: str) -> None:
    if session.scalar(select(Purge.id).where(Purge.study_id == study_id)) is not None:
        raise NotRetryable(f"{what}: its study's files were removed by retention; send the study again")


def retry_job(db: Database, enqueuer: Enqueuer, job_id: int) -> None:
    """Re-queue job ``job_id`` (failed or not_applicable) or raise NotRetryable saying why."""
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotRetryable(f"job {job_id} does not exist (see `radnode status`)")
        if job.state not in _RETRYABLE_JOB_STATES:
            raise NotRetryable(
                f"job {job_id} is {job.state.value}; only failed or not_applicable jobs are retried"
            )
        _refuse_if_purged(session, job.series.study_id, f"job {job_id}")
        if job.reason.startswith(MISSING_INPUT):  # the listener's completion check resolves it
            job.state, job.reason, job.finished_at, job.created_at = JobState.WAITING, "", None, utcnow()
            log.info("study job waits for its inputs again job=%d", job_id)
            return
        before = (job.state, job.reason, job.started_at, job.finished_at)
        job.state, job.reason, job.started_at, job.finished_at = JobState.QUEUED, "", None, None
    try:
        enqueuer.job(job_id)
    except BrokerUnreachable:
        with db.session() as session:  # as it was, so that the retry can be asked for again
            job = session.get_one(Job, job_id)  # read above; job rows are never deleted
            job.state, job.reason, job.started_at, job.finished_at = before
        raise
    log.info("job re-queued job=%d previous_reason=%s", job_id, before[1] or "-")


def retry_delivery(db: Database, enqueuer: Enqueuer, delivery_id: int) -> None:
    """Re-queue delivery ``delivery_id`` (failed) with a fresh attempt budget."""
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None:
            raise NotRetryable(f"delivery {delivery_id} does not exist (see `radnode status`)")
        if delivery.state is not DeliveryState.FAILED:
            raise NotRetryable(
                f"delivery {delivery_id} is {delivery.state.value}; only failed deliveries are retried"
            )
        study_id = session.execute(  # one: a delivery's result, job and series always exist
            select(Series.study_id).join(Job).join(Result).where(Result.id == delivery.result_id)
        ).scalar_one()
        _refuse_if_purged(session, study_id, f"delivery {delivery_id}")
        before = (delivery.state, delivery.attempts, delivery.next_attempt_at)
        delivery.state, delivery.attempts, delivery.next_attempt_at = DeliveryState.PENDING, 0, None
    try:
        enqueuer.delivery(delivery_id)
    except BrokerUnreachable:
        with db.session() as session:
            delivery = session.get_one(Delivery, delivery_id)  # read above; delivery rows are never deleted
            delivery.state, delivery.attempts, delivery.next_attempt_at = before
        raise
    log.info("delivery re-queued delivery=%d", delivery_id)
