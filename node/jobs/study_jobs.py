"""Study-level jobs: a pipeline that takes several series of one study (``pipelines.NAME.inputs``).

A brain-tumour model wants the T1, T1c, T2 and FLAIR series of one MR study; they arrive as four
series that complete one by one. The first of them to complete starts the job, WAITING; the others
join it. On every completion tick a waiting job looks at the study's complete series: once a
different series matches each required input, it records them (``Job.inputs``) and is QUEUED like
any job; when ``wait_seconds`` pass first, it FAILS with "missing input: T1c", which is what the
admin sees in ``radnode status`` and the job record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.config import PipelineInput, PipelineOptions
from node.db import Job, JobState, Series, SeriesState, as_utc, utcnow
from node.jobs.routing import Assignment, SeriesFacts, evaluate

__all__ = ["MISSING_INPUT", "StudyJobs", "series_facts"]

log = logging.getLogger("radnode.completion")
_NEVER = datetime.min.replace(tzinfo=UTC)
MISSING_INPUT = "missing input"
"""How the reason of a study job that timed out starts: retrying it waits for its inputs again."""


def _first_header(series: Series) -> Dataset | None:
    """The header of one stored instance of ``series``: what routes and inputs match against."""
    for instance in series.instances:
        try:
            return dcmread(Path(instance.path), stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            log.warning("cannot read %s for routing: %s", instance.path, exc)
    return None


def series_facts(series: Series) -> SeriesFacts | None:
    """What rules match against for ``series``; None when none of its files can be read."""
    header = _first_header(series)
    return None if header is None else SeriesFacts(header, series.calling_ae_title, series.called_ae_title)


class StudyJobs:
    """Creates, completes and times out the jobs of pipelines that take several series."""

    def __init__(self, pipelines: Mapping[str, PipelineOptions]) -> None:
        self.pipelines = pipelines
        # each complete series' facts, read once per revision rather than on every tick of a wait
        self._facts: dict[tuple[int, int], SeriesFacts | None] = {}

    def takes_study(self, pipeline: str) -> bool:
        """Whether ``pipeline`` is study-level (has ``inputs``)."""
        options = self.pipelines.get(pipeline)
        return options is not None and bool(options.inputs)

    def join(
        self, session: Session, series: Series, facts: SeriesFacts, assignment: Assignment
    ) -> None:
        """Start the study's waiting job for ``assignment.pipeline``, or join the one there is; a
        series that is none of the pipeline's inputs (a localizer sent with the study) does neither."""
        inputs = self.pipelines[assignment.pipeline].inputs
        fits = [item.name for item in inputs if evaluate(item.match, facts)[0]]
        if not fits:
            log.info("series is none of the inputs of a study pipeline series=%s pipeline=%s inputs=%s",
                     series.series_instance_uid, assignment.pipeline, ",".join(i.name for i in inputs))
            return
        waiting = session.scalar(
            select(Job).join(Series, Job.series_id == Series.id)
            .where(Series.study_id == series.study_id, Job.pipeline == assignment.pipeline,
                   Job.state == JobState.WAITING)
            .order_by(Job.id)
        )
        if waiting is not None:
            waiting.destinations = [*waiting.destinations,
                                    *(d for d in assignment.destinations if d not in waiting.destinations)]
            log.info("series joins a waiting study job job=%d series=%s as=%s",
                     waiting.id, series.series_instance_uid, ",".join(fits))
            return
        log.info("study job waits for its inputs pipeline=%s series=%s as=%s",
                 assignment.pipeline, series.series_instance_uid, ",".join(fits))
        session.add(Job(series_id=series.id, pipeline=assignment.pipeline, revision=series.revision,
                        destinations=list(assignment.destinations), state=JobState.WAITING))

    def resolve(self, session: Session, now: datetime | None = None) -> list[int]:
        """Queue every waiting job whose inputs are complete (their ids); fail those out of time."""
        now = as_utc(now or utcnow())
        queued = []
        looked_at: set[tuple[int, int]] = set()

        def facts_of(series: Series) -> SeriesFacts | None:
            key = (series.id, series.revision)
            looked_at.add(key)
            if key not in self._facts:
                self._facts[key] = series_facts(series)
            return self._facts[key]

        for job in session.scalars(select(Job).where(Job.state == JobState.WAITING).order_by(Job.id)):
            options = self.pipelines.get(job.pipeline)
            if options is None or not options.inputs:
                self._fail(job, now, f"pipelines.{job.pipeline} no longer takes inputs (the configuration "
                                     "changed while the job waited)")
                continue
            chosen, missing = _choose(job.series.study.series, options.inputs, facts_of)
            if not missing:
                job.inputs = chosen
                job.state = JobState.QUEUED
                queued.append(job.id)
                log.info("study job inputs complete job=%d pipeline=%s inputs=%s", job.id, job.pipeline,
                         ",".join(f"{name}={uid}" for name, uid in chosen.items()))
            elif now - as_utc(job.created_at) > timedelta(seconds=options.wait_seconds):
                self._fail(job, now, f"{MISSING_INPUT}: {', '.join(missing)} (no complete series of the "
                                     f"study matched pipelines.{job.pipeline}.inputs within "
                                     f"{options.wait_seconds:g} s)")
        session.flush()
        self._facts = {key: value for key, value in self._facts.items() if key in looked_at}
        return queued

    @staticmethod
    def _fail(job: Job, now: datetime, reason: str) -> None:
        log.warning("study job ended job=%d state=failed reason=%s", job.id, reason)
        job.state = JobState.FAILED
        job.reason = reason
        job.finished_at = now


def _choose(study_series: list[Series], inputs: list[PipelineInput],
            facts_of: Callable[[Series], SeriesFacts | None]) -> tuple[dict[str, str], list[str]]:
    """A different complete series for each input ({name: series UID}), and the required inputs missing.

    When several series match an input (a repeated sequence), the one completed last wins: a
    technologist repeats a sequence because the first was not good.
    """
    complete = sorted((s for s in study_series if s.state == SeriesState.COMPLETE),
                      key=lambda s: (as_utc(s.completed_at), s.id) if s.completed_at else (_NEVER, s.id),
                      reverse=True)
    facts = {s.id: found for s in complete if (found := facts_of(s)) is not None}
    chosen: dict[str, str] = {}
    used: set[int] = set()
    missing = []
    for item in inputs:
        match = next((s for s in complete if s.id not in used and s.id in facts
                      and evaluate(item.match, facts[s.id])[0]), None)
        if match is not None:
            chosen[item.name] = match.series_instance_uid
            used.add(match.id)
        elif item.required:
            missing.append(item.name)
    return chosen, missing
