"""Running one job: series on disk → Volume → pipeline → SEG + SR on disk → Delivery rows.

The job row is the whole state: a worker that dies mid-job leaves it RUNNING, the broker
re-delivers the message (acks_late), and the next worker runs it again; result UIDs are derived
from the inputs, so the rerun writes the same objects again rather than new ones.
"""

from __future__ import annotations

import io
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_sr.enums import SegType
from dicom_sr.findings import Findings
from dicom_sr.seg import EncodingError
from dicom_sr.uids import ResultKind, result_uids
from inference.errors import InferenceError, NotApplicable
from inference.pipelines import create
from inference.registration import onto_grid
from inference.registry import ModelRegistry
from inference.reorient import run_on_source
from inference.volume import Volume, load_series
from node.config import DEFAULT_FORMATS, Config
from node.db import (
    Database,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    NotificationEvent,
    Result,
    Series,
    utcnow,
)
from node.durable import write_durably
from node.jobs.results import WRITERS, EncodeRequest, ResultIdentity, format_of
from node.metrics import JOB_STAGE_SECONDS, JOBS_FINISHED
from node.notify.outbox import queue_notifications

if TYPE_CHECKING:
    from inference.xray import RadiographSeries

__all__ = ["JobRunner", "select_device"]

log = logging.getLogger("radnode.jobs")

_FINISHED = (JobState.SUCCEEDED, JobState.NOT_APPLICABLE, JobState.FAILED)


def select_device(choice: str) -> torch.device:
    """``auto`` takes CUDA when it is there (logged either way), else the CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
    log.info("pipelines run on %s", device)
    return device


class _StageClock:
    """Seconds spent per stage of a job, for the log line that ends it and the histogram."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = time.perf_counter() - start
            JOB_STAGE_SECONDS.labels(self.pipeline, stage).observe(self.seconds[stage])

    def __str__(self) -> str:
        return " ".join(f"{stage}_s={value:.2f}" for stage, value in self.seconds.items())


@dataclass(frozen=True)
class _Input:
    """One series a job reads: the job's own, or one input of a study-level job."""

    name: str
    series_uid: str
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class _Work:
    job_id: int
    pipeline: str
    study_uid: str
    inputs: tuple[_Input, ...]  # the first is the reference: its grid, its images referenced
    destinations: tuple[str, ...]

    @property
    def source_key(self) -> str:
        """What result UIDs derive from: the source series (all of them, for a study-level job)."""
        return "+".join(item.series_uid for item in self.inputs)


class JobRunner:
    """Runs jobs by id against the database and the spool."""

    def __init__(
        self, config: Config, db: Database, device: torch.device, name: str = socket.gethostname()
    ) -> None:
        self.config = config
        self.db = db
        self.device = device
        self.name = name  # recorded in Job.worker: which worker (host) ran the job
        self.results_dir = config.storage.results_dir
        # one registry for the worker's lifetime: models stay loaded (warm) between jobs
        self.models = ModelRegistry(config.models, device, config.backend_cache_dir)

    def run(self, job_id: int) -> None:
        """Run job ``job_id`` unless it already finished; its results get PENDING deliveries."""
        work = self._claim(job_id)
        if work is None:
            return
        clock = _StageClock(work.pipeline)
        try:
            options = self.config.pipeline_options(work.pipeline)
            pipeline = create(work.pipeline, options.model, self.models, options.version,
                              probabilities=options.seg_type == SegType.FRACTIONAL)
            with clock("load"):
                source, extra = _load(work, getattr(pipeline, "takes", "volume"))
            with clock("pipeline"):
                if isinstance(source, Volume):  # laid as the pipeline needs, its findings back on the source
                    findings = run_on_source(pipeline, source, self.device, extra)  # type: ignore[arg-type]
                else:
                    findings = pipeline.run(source, self.device)  # type: ignore[arg-type]
            with clock("encode"):
                objects = self._encode(work, pipeline.version, source, findings)
        except NotApplicable as exc:
            self._finish(job_id, JobState.NOT_APPLICABLE, f"not applicable: {exc}")
            return
        except InferenceError as exc:  # the series, radiograph, model or pipeline name; says which
            self._finish(job_id, JobState.FAILED, str(exc))
            return
        except EncodingError as exc:
            self._finish(job_id, JobState.FAILED, f"cannot encode the results: {exc}")
            return
        except Exception as exc:  # an unexpected bug must fail this job, not the worker
            log.exception("job failed job=%d pipeline=%s", job_id, work.pipeline)
            self._finish(job_id, JobState.FAILED, f"internal error: {type(exc).__name__}: {exc}")
            return
        log.info(
            "job done job=%d pipeline=%s series=%s %s",
            job_id, work.pipeline, work.source_key, clock,
        )
        self._record_results(work, pipeline.version, objects, findings)

    def _claim(self, job_id: int) -> _Work | None:
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                log.warning("job %d does not exist; message dropped", job_id)
                return None
            if job.state in _FINISHED or job.state == JobState.WAITING:
                log.info("job %d is %s; skipped", job_id, job.state.value)
                return None
            job.state = JobState.RUNNING
            job.started_at = utcnow()
            job.attempts += 1
            job.worker = self.name
            chosen = job.inputs or {"series": job.series.series_instance_uid}
            return _Work(
                job_id=job.id,
                pipeline=job.pipeline,
                study_uid=job.series.study.study_instance_uid,
                inputs=tuple(_Input(name, uid, _paths(session, uid)) for name, uid in chosen.items()),
                destinations=tuple(job.destinations),
            )

    def _finish(self, job_id: int, state: JobState, reason: str) -> None:
        log.info("job ended job=%d state=%s reason=%s", job_id, state.value, reason)
        with self.db.session() as session:
            job = session.get_one(Job, job_id)  # claimed, and job rows are never deleted
            job.state = state
            job.reason = reason
            job.finished_at = utcnow()
            JOBS_FINISHED.labels(job.pipeline, state.value).inc()
            if state is JobState.FAILED:  # in the same transaction: the outbox
                queue_notifications(session, self.config.notifications, job, NotificationEvent.JOB_FAILED,
                                    f"attempt {job.attempts}")

    def _encode(
        self, work: _Work, version: str, source: Volume | RadiographSeries, findings: Findings
    ) -> list[tuple[str, Dataset]]:
        """Every object the findings call for (:data:`~node.jobs.results.WRITERS`), in order.

        The objects reference the images the findings come from (a report generator reads one of a
        series' radiographs), in the source's order.
        """
        if isinstance(source, Volume):  # one header per slice (a multi-frame instance's, per frame)
            headers = list(source.headers)
        else:
            used = set(findings.source_sop_instance_uids)
            headers = [header for header in source.headers if header.SOPInstanceUID in used]

        def uids(kind: ResultKind, variant: str) -> ResultIdentity:
            ids = result_uids(work.source_key, work.pipeline, version, findings.algorithm.model_sha256,
                              kind, variant)
            return {"series_instance_uid": ids.series_instance_uid, "sop_instance_uid": ids.sop_instance_uid}

        formats = frozenset(f for name in work.destinations for f in self._formats(name))
        request = EncodeRequest(findings, headers, source, self.config.pipeline_options(work.pipeline),
                                formats, uids)
        objects: list[tuple[str, Dataset]] = []
        for writer in WRITERS:
            if writer.applies(request):
                request.written[writer.kind] = writer.build(request, writer.series_number)
                objects.extend((writer.kind.value, ds) for ds in request.written[writer.kind])
        return objects

    def _formats(self, destination: str) -> tuple[str, ...]:
        """What ``destination`` receives; a name no longer configured gets the default (and fails visibly)."""
        known = self.config.destinations.get(destination)
        return known.formats if known is not None else DEFAULT_FORMATS

    def _record_results(
        self, work: _Work, version: str, objects: list[tuple[str, Dataset]], findings: Findings
    ) -> None:
        rows = []
        for kind, ds in objects:
            path = self.results_dir / work.study_uid / f"{ds.SOPInstanceUID}.dcm"
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            write_durably(path, buffer.getvalue())
            rows.append((kind, ds, path))
        with self.db.session() as session:
            job = session.get_one(Job, work.job_id)  # claimed, and job rows are never deleted
            job.pipeline_version = version
            deliveries: list[Delivery] = []
            results: list[Result] = []
            for kind, ds, path in rows:
                result = Result(
                    job_id=job.id,
                    kind=kind,
                    sop_class_uid=str(ds.SOPClassUID),
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    path=str(path),
                )
                session.add(result)
                results.append(result)
                deliveries.extend(
                    Delivery(result=result, destination=name, state=DeliveryState.PENDING)
                    for name in work.destinations
                    if format_of(kind) in self._formats(name)
                )
            session.add_all(deliveries)
            job.state = JobState.SUCCEEDED
            job.reason = ""
            job.finished_at = utcnow()
            JOBS_FINISHED.labels(job.pipeline, JobState.SUCCEEDED.value).inc()
            queue_notifications(session, self.config.notifications, job, NotificationEvent.JOB_SUCCEEDED,
                                f"attempt {job.attempts}", results=results, findings=findings)


def _paths(session: Session, series_uid: str) -> tuple[Path, ...]:
    """The stored files of the series ``series_uid``."""
    paths = session.scalars(
        select(Instance.path).join(Series, Instance.series_id == Series.id)
        .where(Series.series_instance_uid == series_uid)
    ).all()
    return tuple(Path(path) for path in paths)


def _load(work: _Work, takes: str) -> tuple[Volume | RadiographSeries, list[torch.Tensor]]:
    """What the pipeline runs on, and a study-level job's further inputs on the reference grid."""
    if takes == "radiographs":
        from inference.xray import load_radiograph_series  # X-ray pipelines only

        return load_radiograph_series(work.inputs[0].paths), []
    reference, *others = (load_series(item.paths) for item in work.inputs)
    return reference, [onto_grid(volume, reference) for volume in others]
