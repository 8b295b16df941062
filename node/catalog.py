"""What has arrived: Study / Series / Instance rows, committed before Success is answered."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from node.db import Database, Instance, Series, SeriesState, Study, utcnow
from node.store import InstanceHeader

__all__ = ["record_instance"]

_UPSERT_ATTEMPTS = 3  # concurrent first instances of one series race on the unique keys


def record_instance(
    db: Database,
    header: InstanceHeader,
    *,
    path: Path,
    size_bytes: int,
    transfer_syntax_uid: str,
    calling_ae_title: str,
) -> None:
    """Record a stored instance; a re-sent instance updates its row and reopens its series.

    A series that had completed goes back to RECEIVING, so completion fires again and the
    late-arrival policy (a new revision and job) applies.
    """
    for attempt in range(_UPSERT_ATTEMPTS):
        try:
            with db.session() as session:
                _upsert(session, header, path, size_bytes, transfer_syntax_uid, calling_ae_title)
            return
        except IntegrityError:
            if attempt == _UPSERT_ATTEMPTS - 1:
                raise


def _upsert(session, header, path, size_bytes, transfer_syntax_uid, calling_ae_title) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    study = session.scalar(select(Study).where(Study.study_instance_uid == header.study_instance_uid))
    if study is None:
        study = Study(study_instance_uid=header.study_instance_uid, first_received_at=now)
        session.add(study)
        session.flush()
    series = session.scalar(
        select(Series).where(Series.series_instance_uid == header.series_instance_uid)
    )
    if series is None:
        series = Series(
            study_id=study.id,
            series_instance_uid=header.series_instance_uid,
            modality=header.modality[:16],
            series_number=header.series_number,
            series_description=header.series_description[:64],
            calling_ae_title=calling_ae_title,
            first_received_at=now,
            revision=0,
            state=SeriesState.RECEIVING,
        )
        session.add(series)
        session.flush()
    series.state = SeriesState.RECEIVING
    series.last_received_at = now
    instance = session.scalar(
        select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid)
    )
    if instance is None:
        session.add(
            Instance(
                series_id=series.id,
                sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid,
                transfer_syntax_uid=transfer_syntax_uid,
                path=str(path),
                size_bytes=size_bytes,
                calling_ae_title=calling_ae_title,
                received_at=now,
            )
        )
    else:
        instance.transfer_syntax_uid = transfer_syntax_uid
        instance.size_bytes = size_bytes
        instance.received_at = now
