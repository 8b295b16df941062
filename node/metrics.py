"""Prometheus metrics: what a hospital's monitoring scrapes and alerts on.

One ``/metrics`` port per process, not prometheus_client's multiprocess mode: workers run on
other hosts than the listener, so a shared metrics folder cannot exist in production anyway, and a
port per process is what Prometheus scrapes across hosts. Each process counts what it does:

    listener  (metrics.port)             instances and bytes received, refusals, rejected
                                         associations; from the database on each scrape: jobs by
                                         state and pipeline, queue depth; spool free space
    worker    (metrics.worker_port + N)  jobs finished by pipeline and state, stage durations,
                                         delivery outcomes; served by the Celery child process
                                         that runs the tasks (the prefork pool's only child)

The metric objects live at module level, so each instrumented site stays one line, but importing
this module registers nothing: a process builds the registry of its role at start-up
(:func:`serve_metrics` with :data:`LISTENER` or :data:`WORKER`), so a worker does not export the
listener's families at 0 and nothing can be registered twice. They carry no patient data: labels
are pipeline names, job states, destination names and DIMSE status codes.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from node.db import Database, Job, JobState

__all__ = [
    "ASSOCIATIONS_REJECTED",
    "DELIVERY_ATTEMPTS",
    "INSTANCES_RECEIVED",
    "INSTANCES_REFUSED",
    "JOBS_FINISHED",
    "JOB_STAGE_SECONDS",
    "LISTENER",
    "RECEIVED_BYTES",
    "WORKER",
    "NodeCollector",
    "job_counts",
    "role_registry",
    "serve_metrics",
]

log = logging.getLogger("radnode.metrics")

# seconds: a lung CT takes ~1-30 s per stage; delivery up to the association timeout
_STAGE_BUCKETS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)

INSTANCES_RECEIVED = Counter(
    "radnode_instances_received", "Instances stored and answered with Success", ["calling_ae"], registry=None
)
RECEIVED_BYTES = Counter("radnode_received_bytes", "Bytes of instances stored in the spool", registry=None)
INSTANCES_REFUSED = Counter(
    "radnode_instances_refused", "C-STORE requests answered with a failure status", ["status"], registry=None
)
ASSOCIATIONS_REJECTED = Counter(
    "radnode_associations_rejected", "Association requests the listener rejected", registry=None
)
JOBS_FINISHED = Counter(
    "radnode_jobs_finished", "Jobs this worker ended, by pipeline and final state", ["pipeline", "state"],
    registry=None,
)
JOB_STAGE_SECONDS = Histogram(
    "radnode_job_stage_seconds",
    "Seconds per job stage (load, pipeline, encode, deliver)",
    ["pipeline", "stage"],
    buckets=_STAGE_BUCKETS_SECONDS,
    registry=None,
)
DELIVERY_ATTEMPTS = Counter(
    "radnode_delivery_attempts",
    "Delivery attempts by destination and outcome (sent, retrying, failed)",
    ["destination", "outcome"],
    registry=None,
)


LISTENER: tuple[MetricWrapperBase, ...] = (
    INSTANCES_RECEIVED, RECEIVED_BYTES, INSTANCES_REFUSED, ASSOCIATIONS_REJECTED
)
"""What the listener counts; its /metrics adds the database's gauges (:class:`NodeCollector`)."""
WORKER: tuple[MetricWrapperBase, ...] = (JOBS_FINISHED, JOB_STAGE_SECONDS, DELIVERY_ATTEMPTS)
"""What a worker counts (served by the Celery child that runs the tasks)."""


def job_counts(db: Database) -> dict[tuple[str, JobState], int]:
    """Jobs in the database by (pipeline, state): the truth across every worker."""
    with db.session() as session:
        rows = session.execute(
            select(Job.pipeline, Job.state, func.count()).group_by(Job.pipeline, Job.state)
        ).all()
    return {(pipeline, state): count for pipeline, state, count in rows}


class NodeCollector(Collector):
    """Gauges read at scrape time: jobs by state, queue depth, spool free space."""

    def __init__(self, db: Database, spool: Path) -> None:
        self.db = db
        self.spool = spool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = job_counts(self.db)
        jobs = GaugeMetricFamily(
            "radnode_jobs", "Jobs in the database by pipeline and state", labels=["pipeline", "state"]
        )
        for (pipeline, state), count in sorted(counts.items()):
            jobs.add_metric([pipeline, state.value], count)
        yield jobs
        yield GaugeMetricFamily(
            "radnode_queue_depth",
            "Jobs queued and not yet taken by a worker",
            value=sum(n for (_, state), n in counts.items() if state is JobState.QUEUED),
        )
        yield GaugeMetricFamily(
            "radnode_spool_free_bytes", "Free bytes on the spool's file system",
            value=shutil.disk_usage(self.spool).free,
        )


def role_registry(families: tuple[MetricWrapperBase, ...],
                  *collectors: Collector) -> CollectorRegistry:
    """A fresh registry of one process role: its ``families``, ``collectors`` and the process's own."""
    registry = CollectorRegistry(auto_describe=True)
    for collector in (*families, *collectors, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


def serve_metrics(bind: str, port: int, families: tuple[MetricWrapperBase, ...],
                  *collectors: Collector) -> None:
    """Serve one role's metrics (:data:`LISTENER` or :data:`WORKER`) on http://bind:port/metrics.

    A port that cannot be bound is logged as an error and the process goes on: receiving studies
    and running jobs matter more than being watched (the missing target alerts in Prometheus).
    """
    registry = role_registry(families, *collectors)
    try:
        start_http_server(port, addr=bind, registry=registry)
    except OSError as exc:
        log.error("metrics not served: cannot listen on %s:%d: %s", bind, port, exc.strerror)
        return
    log.info("metrics at http://%s:%d/metrics", bind, port)
