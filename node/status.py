"""`radnode status`: what arrived, what ran, what was delivered — read from the database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from node.db import Database, Instance, Job, Result, Series, Study

__all__ = ["render_status"]


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _duration(job: Job) -> str:
    if job.started_at and job.finished_at:
        return f" in {(job.finished_at - job.started_at).total_seconds():.1f} s"
    return ""


def render_status(db: Database, *, limit: int = 20) -> str:
    """A text report of the ``limit`` most recent studies, indented study → series → job."""
    lines: list[str] = []
    with db.session() as session:
        studies = session.scalars(
            select(Study)
            .order_by(Study.first_received_at.desc())
            .limit(limit)
            .options(
                selectinload(Study.series)
                .selectinload(Series.jobs)
                .selectinload(Job.results)
                .selectinload(Result.deliveries)
            )
        ).all()
        counts = dict(
            session.execute(
                select(Instance.series_id, func.count()).group_by(Instance.series_id)
            ).all()
        )
        if not studies:
            return "no studies received yet"
        for study in studies:
            lines.append(f"study {study.study_instance_uid}  first received {_when(study.first_received_at)}")
            for series in study.series:
                lines.append(
                    f"  series {series.series_instance_uid}  {series.modality or '?'}"
                    f"  #{series.series_number if series.series_number is not None else '-'}"
                    f"  {counts.get(series.id, 0)} instances  {series.state.value}"
                    f"  (revision {series.revision}, from {series.calling_ae_title or '?'},"
                    f" last at {_when(series.last_received_at)})"
                )
                for job in series.jobs:
                    reason = f": {job.reason}" if job.reason else ""
                    lines.append(
                        f"    job {job.id}  {job.pipeline} {job.pipeline_version}".rstrip()
                        + f"  {job.state.value}{_duration(job)}{reason}"
                    )
                    for result in job.results:
                        lines.append(f"      {result.kind:3} {result.sop_instance_uid}")
                        for delivery in result.deliveries:
                            detail = f": {delivery.last_error}" if delivery.last_error else ""
                            status = (
                                f" status 0x{delivery.last_status:04X}"
                                if delivery.last_status is not None
                                else ""
                            )
                            lines.append(
                                f"        → {delivery.destination}  {delivery.state.value}"
                                f" after {delivery.attempts} attempt(s){status}{detail}"
                            )
    return "\n".join(lines)
