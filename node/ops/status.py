"""`radnode status`: what arrived, what ran, what was delivered — read from the database.

The same selection (``StudyFilter``) feeds the status page (node/ops/web.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, selectinload

from node.db import (
    Database,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Notification,
    Purge,
    Result,
    Series,
    Study,
    utcnow,
)

__all__ = ["StudyFilter", "instance_counts", "parse_since", "recent_studies", "render_status"]

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``2h``, ``30m``, ``7d`` (ago) or an ISO date/time (UTC unless it says otherwise)."""
    match = _AGO.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return (now or utcnow()) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 2h, 7d) nor an ISO date (2026-01-31, 2026-01-31T08:00)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class StudyFilter:
    """Which studies to show: newest first, at most ``limit``."""

    limit: int = 20
    study_uid: str | None = None
    failed: bool = False  # only studies with a failed job or a failed delivery
    since: datetime | None = None  # only studies that received an instance since then
    job_id: int | None = None  # only the study of this job (its deliveries and notifications)

    def query(self) -> Select[Study]:
        query = select(Study).order_by(Study.first_received_at.desc()).limit(self.limit)
        if self.study_uid:
            query = query.where(Study.study_instance_uid == self.study_uid)
        if self.job_id is not None:
            query = query.where(Study.id.in_(select(Series.study_id).join(Job).where(Job.id == self.job_id)))
        if self.since is not None:
            query = query.where(
                Study.id.in_(select(Series.study_id).where(Series.last_received_at >= self.since))
            )
        if self.failed:
            failed_jobs = select(Series.study_id).join(Job).where(Job.state == JobState.FAILED)
            failed_deliveries = (
                select(Series.study_id)
                .join(Job).join(Result).join(Delivery)
                .where(Delivery.state == DeliveryState.FAILED)
            )
            query = query.where(or_(Study.id.in_(failed_jobs), Study.id.in_(failed_deliveries)))
        return query


def recent_studies(session: Session, selection: StudyFilter) -> list[Study]:
    """The selected studies with their series, jobs, results and deliveries loaded."""
    return list(
        session.scalars(
            selection.query().options(
                selectinload(Study.series)
                .selectinload(Series.jobs)
                .selectinload(Job.results)
                .selectinload(Result.deliveries),
                selectinload(Study.series).selectinload(Series.jobs).selectinload(Job.notifications),
            )
        ).all()
    )


def instance_counts(session: Session, studies: list[Study]) -> dict[int, int]:
    """Instances per series id, for the series of ``studies``."""
    series_ids = [series.id for study in studies for series in study.series]
    return dict(
        session.execute(
            select(Instance.series_id, func.count())
            .where(Instance.series_id.in_(series_ids))
            .group_by(Instance.series_id)
        ).all()
    )


def purges(session: Session, studies: list[Study]) -> dict[int, Purge]:
    """Retention purges of ``studies`` by study id."""
    ids = [study.id for study in studies]
    return {p.study_id: p for p in session.scalars(select(Purge).where(Purge.study_id.in_(ids)))}


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _duration(job: Job) -> str:
    if job.started_at and job.finished_at:
        return f" in {(job.finished_at - job.started_at).total_seconds():.1f} s"
    return ""


def _notification_line(notification: Notification) -> str:
    """``notify CHANNEL EVENT STATE after N attempt(s)``, with the error and when it was sent or is next."""
    detail = f": {notification.last_error}" if notification.last_error else ""
    return (
        f"      notify {notification.channel} {notification.event.value}  {notification.state.value}"
        f" after {notification.attempts} attempt(s){detail}"
        + (f" at {_when(notification.sent_at)}" if notification.sent_at else "")
        + (f"; next attempt {_when(notification.next_attempt_at)}"
           if notification.state is DeliveryState.RETRYING and notification.next_attempt_at else "")
    )


def render_status(db: Database, selection: StudyFilter | None = None) -> str:
    """A text report of the selected studies, newest first, indented study → series → job."""
    selection = selection or StudyFilter()
    lines: list[str] = []
    with db.session() as session:
        studies = recent_studies(session, selection)
        counts = instance_counts(session, studies)
        purged = purges(session, studies)
        if not studies:
            if selection == StudyFilter(limit=selection.limit):
                return "no studies received yet"
            return "no studies match"
        for study in studies:
            lines.append(f"study {study.study_instance_uid}  first received {_when(study.first_received_at)}")
            if study.id in purged:
                purge = purged[study.id]
                lines.append(
                    f"  files removed by retention {_when(purge.purged_at)}"
                    f" ({purge.files_removed} files, {purge.bytes_freed / 2**20:.1f} MiB)"
                )
            for series in study.series:
                lines.append(
                    f"  series {series.series_instance_uid}  {series.modality or '?'}"
                    f"  #{series.series_number if series.series_number is not None else '-'}"
                    f"  {counts.get(series.id, 0)} instances  {series.state.value}"
                    f"  (revision {series.revision}, from {series.calling_ae_title or '?'}"
                    f"{'@' + series.calling_address if series.calling_address else ''},"
                    f" last at {_when(series.last_received_at)})"
                )
                for job in series.jobs:
                    reason = f": {job.reason}" if job.reason else ""
                    lines.append(
                        f"    job {job.id}  {job.pipeline} {job.pipeline_version}".rstrip()
                        + f"  {job.state.value}{_duration(job)}"
                        + (f" on {job.worker}" if job.worker else "")
                        + reason
                    )
                    lines.extend(_notification_line(notification) for notification in job.notifications)
                    for result in job.results:
                        lines.append(f"      {result.kind:3} {result.sop_instance_uid}")
                        for delivery in result.deliveries:
                            detail = f": {delivery.last_error}" if delivery.last_error else ""
                            if delivery.state is not DeliveryState.SENT:  # the id `radnode retry` takes
                                detail = f" (delivery {delivery.id}){detail}"
                            status = (
                                f" status 0x{delivery.last_status:04X}"
                                if delivery.last_status is not None
                                else ""
                            )
                            lines.append(
                                f"        → {delivery.destination}  {delivery.state.value}"
                                f" after {delivery.attempts} attempt(s){status}{detail}"
                                + (f" at {_when(delivery.sent_at)}" if delivery.sent_at else "")
                                + (f"; next attempt {_when(delivery.next_attempt_at)}"
                                   if delivery.state is DeliveryState.RETRYING and delivery.next_attempt_at
                                   else "")
                            )
    return "\n".join(lines)
