"""The outbox: a Notification row per channel that wants an event, made in the event's own transaction.

The job state change (or the delivery's final failure) and its notifications commit together, so a
crash loses none and makes none twice; a worker then sends each row (:mod:`node.notify.webhook`).
The body is built here and stored, so that every try sends the same JSON (config/README.md shows it).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_sr.findings import Findings
from node.config import NotificationChannel
from node.db import (
    Database,
    Delivery,
    DeliveryState,
    Job,
    Notification,
    NotificationEvent,
    Result,
    as_utc,
    utcnow,
)

__all__ = ["findings_summary", "idempotency_key", "pending_notifications", "queue_notifications"]

log = logging.getLogger("radnode.notify")

#: the body's layout; a receiver may check it (config/README.md)
BODY_VERSION = 1


def idempotency_key(job_id: int, event: NotificationEvent, subject: str, channel: str) -> str:
    """The same for every try of one notification, different for any other: the receiver dedups on it."""
    return hashlib.sha256(f"{job_id}\n{event.value}\n{subject}\n{channel}".encode()).hexdigest()


def findings_summary(findings: Findings) -> dict[str, Any]:
    """What the results say, in a few numbers: measurements, classifications, segment labels."""
    return {
        "measurements": [
            {"finding": group.finding.meaning, "name": m.concept.meaning, "value": m.value,
             "unit": m.unit.value}
            for group in findings.groups for m in group.measurements
        ],
        "classifications": [
            {"finding": c.finding.meaning, "probability": c.probability, "present": c.present}
            for c in findings.classifications
        ],
        "segments": [segment.label for segment in findings.segments],
    }


def queue_notifications(
    session: Session,
    channels: Mapping[str, NotificationChannel],
    job: Job,
    event: NotificationEvent,
    subject: str,
    *,
    results: Sequence[Result] = (),
    findings: Findings | None = None,
    delivery: Delivery | None = None,
) -> int:
    """Add a PENDING Notification for each channel that wants ``event``; return how many.

    ``subject`` names the occurrence (``attempt 2``, ``delivery 7 attempt 30``): a retried job that
    fails again notifies again; a second call for the same occurrence adds nothing.
    """
    wanted = {name: channel for name, channel in channels.items() if event in channel.events}
    if not wanted:
        return 0
    keys = {name: idempotency_key(job.id, event, subject, name) for name in wanted}
    known = set(session.scalars(select(Notification.idempotency_key)
                                .where(Notification.idempotency_key.in_(keys.values()))))
    body = _body(job, event, results or job.results, findings, delivery)
    patient = _patient(job) if any(channel.include_phi for channel in wanted.values()) else None
    added = 0
    for name, channel in wanted.items():
        if keys[name] in known:
            continue
        session.add(Notification(
            job_id=job.id, channel=name, event=event, subject=subject, idempotency_key=keys[name],
            body={**body, "patient": patient} if channel.include_phi else body, state=DeliveryState.PENDING,
        ))
        added += 1
    return added


def pending_notifications(
    db: Database, *, job_id: int | None = None, delivery_id: int | None = None
) -> list[int]:
    """Ids of the never-attempted notifications of a job (or of the job of a delivery)."""
    query = select(Notification.id).where(Notification.state == DeliveryState.PENDING)
    if delivery_id is not None:
        query = query.where(Notification.job_id == select(Result.job_id).join(Delivery)
                            .where(Delivery.id == delivery_id).scalar_subquery())
    else:
        query = query.where(Notification.job_id == job_id)
    with db.session() as session:
        return list(session.scalars(query.order_by(Notification.id)))


def _when(moment: datetime | None) -> str | None:
    return as_utc(moment).isoformat() if moment is not None else None


def _body(
    job: Job, event: NotificationEvent, results: Sequence[Result], findings: Findings | None,
    delivery: Delivery | None,
) -> dict[str, Any]:
    series_uids = list(job.inputs.values()) or [job.series.series_instance_uid]
    return {
        "version": BODY_VERSION,
        "event": event.value,
        "occurred_at": _when(utcnow()),
        "job": {
            "id": job.id, "pipeline": job.pipeline, "pipeline_version": job.pipeline_version,
            "state": job.state.value, "message": job.reason, "attempts": job.attempts,
            "created_at": _when(job.created_at), "started_at": _when(job.started_at),
            "finished_at": _when(job.finished_at),
        },
        "study_instance_uid": job.series.study.study_instance_uid,
        "series_instance_uids": series_uids,
        "findings": findings_summary(findings) if findings is not None else None,
        "results": [{"kind": r.kind, "sop_class_uid": r.sop_class_uid, "sop_instance_uid": r.sop_instance_uid,
                     "series_instance_uid": r.series_instance_uid} for r in results],
        "delivery": None if delivery is None else {
            "id": delivery.id, "destination": delivery.destination, "state": delivery.state.value,
            "attempts": delivery.attempts, "error": delivery.last_error,
            "sop_instance_uid": delivery.result.sop_instance_uid,
        },
    }


def _patient(job: Job) -> dict[str, str | None]:
    """PatientName and PatientID from one source instance (None once retention removed the files)."""
    instance = next(iter(job.series.instances), None)
    if instance is None:
        return {"name": None, "id": None}
    try:
        header = dcmread(instance.path, stop_before_pixels=True, specific_tags=["PatientName", "PatientID"])
    except (OSError, InvalidDicomError):
        return {"name": None, "id": None}
    name, patient_id = header.get("PatientName"), header.get("PatientID")
    return {"name": str(name) if name is not None else None,
            "id": str(patient_id) if patient_id is not None else None}
