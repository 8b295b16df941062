"""Catalog rows and their files for tests of status, retry and retention (no DICOM traffic needed).

A study as the listener and a worker leave it: instances on disk under the spool and rows for
them, one job in a chosen state, and for a succeeded job a SEG file with one delivery per
destination in a chosen state.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from node.db import (
    Database,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    Study,
)

__all__ = ["StudyRows", "add_study"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@dataclass(frozen=True)
class StudyRows:
    study_uid: str
    job_id: int
    delivery_ids: tuple[int, ...]
    files: tuple[Path, ...]  # instance files, then result files


def add_study(
    db: Database,
    spool: Path,
    results: Path,
    *,
    received_at: datetime,
    job_state: JobState = JobState.SUCCEEDED,
    deliveries: tuple[DeliveryState, ...] = (DeliveryState.SENT,),
    instances: int = 3,
    reason: str = "",
) -> StudyRows:
    """One study, one CT series of ``instances`` files, one lung-qct job in ``job_state``."""
    study_uid, series_uid = _uid(), _uid()
    files = []
    with db.session() as session:
        study = Study(study_instance_uid=study_uid, first_received_at=received_at)
        series = Series(
            study=study, series_instance_uid=series_uid, modality="CT", state=SeriesState.COMPLETE,
            revision=1, first_received_at=received_at, last_received_at=received_at,
            completed_at=received_at,
        )
        for _ in range(instances):
            sop = _uid()
            path = spool / study_uid / series_uid / f"{sop}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0" * 1024)
            files.append(path)
            session.add(Instance(
                series=series, sop_instance_uid=sop, sop_class_uid=CT_IMAGE_STORAGE,
                transfer_syntax_uid="1.2.840.10008.1.2", path=str(path), size_bytes=1024,
                received_at=received_at,
            ))
        job = Job(
            series=series, pipeline="lung-qct", revision=1, destinations=["pacs"], state=job_state,
            reason=reason, attempts=1, worker="gpu0@test", started_at=received_at, finished_at=received_at,
        )
        session.add(job)
        rows = []
        if job_state is JobState.SUCCEEDED:
            sop = _uid()
            path = results / study_uid / f"{sop}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0" * 512)
            files.append(path)
            result = Result(
                job=job, kind="seg", sop_class_uid=SEG_STORAGE, sop_instance_uid=sop,
                series_instance_uid=_uid(), path=str(path), created_at=received_at,
            )
            rows = [
                Delivery(result=result, destination=f"pacs{i}", state=state, attempts=1,
                         last_error="" if state is DeliveryState.SENT else "connection refused")
                for i, state in enumerate(deliveries)
            ]
            session.add_all(rows)
        session.flush()
        return StudyRows(study_uid, job.id, tuple(d.id for d in rows), tuple(files))
