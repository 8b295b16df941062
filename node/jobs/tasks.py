"""Celery wiring: the app, the two task names, and the worker process.

Messages carry only ids (job id, delivery id); all state lives in the database, so any worker on
any host can take any message. Tasks are acknowledged late and rejected when their worker
process is lost, so a crash re-delivers the message and the work is done again, not dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import socket

from celery import Celery
from celery.signals import worker_process_init
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError

from node.config import Config
from node.db import Database
from node.errors import BrokerUnreachable

__all__ = ["DELIVER", "QUEUE", "RUN_JOB", "Enqueuer", "create_app", "run_worker"]

log = logging.getLogger("radnode.tasks")

QUEUE = "radnode"
RUN_JOB = "radnode.run_job"
DELIVER = "radnode.deliver"
SQLITE_BROKER_BUSY_TIMEOUT_SECONDS = 30
DATABASE_RETRY_MAX_SECONDS = 30
# A task that finds the database unreachable is re-sent with backoff (Celery logs "Retry in N s"),
# not acknowledged as failed: its job must not be lost to a database restart.
_RETRY_WHILE_DATABASE_DOWN: dict[str, object] = {
    "autoretry_for": (SQLAlchemyOperationalError,),
    "retry_backoff": 1,
    "retry_backoff_max": DATABASE_RETRY_MAX_SECONDS,
    "max_retries": None,
}


def create_app(config: Config) -> Celery:
    """A Celery app bound to the configured broker; no result backend (state is in the DB)."""
    app = Celery("radnode", broker=config.broker.url, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(config),
    )
    return app


def _transport_options(config: Config) -> dict[str, object]:
    if config.broker.url.startswith("sqla+"):
        # kombu's SQLAlchemy transport hands its options to create_engine: give SQLite a busy
        # timeout, as the listener and the worker write the same broker file
        return {"connect_args": {"timeout": SQLITE_BROKER_BUSY_TIMEOUT_SECONDS}}
    return {"visibility_timeout": config.broker.visibility_timeout_seconds}


class Enqueuer:
    """Puts job and delivery ids on the broker."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def job(self, job_id: int) -> None:
        """Put a job id on the broker, or raise BrokerUnreachable (after kombu's own retries)."""
        self._send(RUN_JOB, job_id)

    def delivery(self, delivery_id: int, countdown: float = 0) -> None:
        """Put a delivery id on the broker (to run in ``countdown`` seconds), or raise BrokerUnreachable."""
        self._send(DELIVER, delivery_id, countdown)

    def _send(self, task: str, row_id: int, countdown: float = 0) -> None:
        try:
            self.app.send_task(task, args=[row_id], queue=QUEUE, countdown=countdown or None)
        except (KombuOperationalError, OSError) as exc:
            raise BrokerUnreachable(f"broker did not take {task} {row_id}: {exc}") from exc


def run_worker(
    config: Config, *, device: str, hostname: str | None = None, metrics_port: int | None = None
) -> None:
    """Run a Celery worker (one process, one job at a time) until it is stopped.

    ``hostname`` names the worker in Celery and in Job.worker (default: this host's name);
    ``metrics_port`` is where the task-running child serves /metrics when metrics are enabled.
    """
    from node.delivery.send import attempt_delivery, pending_deliveries
    from node.jobs.runner import JobRunner, select_device
    from node.metrics import serve_metrics

    db = Database(config.database.url)
    db.create_schema()
    app = create_app(config)
    enqueuer = Enqueuer(app)
    runner = JobRunner(config, db, select_device(device), name=hostname or socket.gethostname())

    @worker_process_init.connect(weak=False)
    def _fresh_connections(**_: object) -> None:
        db.engine.dispose(close=False)  # a forked child must not share the parent's sockets
        if config.metrics.enabled:  # the child runs the tasks, so it holds the counts
            serve_metrics(config.metrics.bind, metrics_port or config.metrics.worker_port)

    @app.task(name=RUN_JOB, **_RETRY_WHILE_DATABASE_DOWN)
    def run_job(job_id: int) -> None:
        try:
            runner.run(job_id)
        finally:
            _after_job(config.worker.max_memory_per_child_mb)
        # first delivery attempt at once (no broker round trip); only retries are queued. A rerun
        # of this message after a crash finds the job finished and delivers what is still pending.
        for delivery_id in pending_deliveries(db, job_id):
            deliver(delivery_id)

    @app.task(name=DELIVER, **_RETRY_WHILE_DATABASE_DOWN)
    def deliver(delivery_id: int) -> None:
        retry_in = attempt_delivery(db, config, delivery_id)
        if retry_in is not None:
            enqueuer.delivery(delivery_id, countdown=retry_in)

    argv = [
        "worker",
        "--pool=prefork",
        "--concurrency=1",
        f"--queues={QUEUE}",
        f"--loglevel={config.logging.level}",
        "--without-gossip",
        "--without-mingle",
        f"--max-memory-per-child={config.worker.max_memory_per_child_mb * 1024}",
        f"--hostname={hostname or 'radnode@%h.' + str(os.getpid())}",
    ]
    log.info("worker starting broker=%s device=%s", _redact(config.broker.url), device)
    app.worker_main(argv)


def _after_job(max_memory_mb: int) -> None:
    """Give the heap a job freed back to the OS, and say when Celery will replace this process.

    glibc keeps freed memory otherwise, so RSS only grows. Celery replaces the process after a task
    that took its peak resident size past --max-memory-per-child; the log line says why it happens.
    """
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if max_memory_mb and peak_mb > max_memory_mb:
        log.info("job process peaked at %.0f MiB, above worker.max_memory_per_child_mb=%d: "
                 "a fresh process takes the next job", peak_mb, max_memory_mb)


def _redact(url: str) -> str:
    """Hide a password in a broker URL before logging it."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))
