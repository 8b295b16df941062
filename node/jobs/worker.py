"""The worker process: the named Celery tasks and the Celery worker that runs them.

The tasks are module-level functions registered on the app at start-up by :func:`worker_app`,
which binds them to a :class:`WorkerContext` built from the parsed config: no state at import.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import socket
from dataclasses import dataclass

from celery import Celery, Task
from celery.signals import worker_process_init

from node.config import Config
from node.db import Database
from node.delivery.send import attempt_delivery, pending_deliveries
from node.jobs.runner import JobRunner, select_device
from node.jobs.tasks import DELIVER, NOTIFY, QUEUE, RETRY_WHILE_DATABASE_DOWN, RUN_JOB, Enqueuer, create_app
from node.metrics import WORKER, serve_metrics
from node.notify.outbox import pending_notifications
from node.notify.send import attempt_notification

__all__ = ["WorkerContext", "deliver", "notify", "run_job", "run_worker", "worker_app"]

log = logging.getLogger("radnode.tasks")


@dataclass(frozen=True)
class WorkerContext:
    """What a worker's tasks use, built once at start-up from the parsed config."""

    config: Config
    db: Database
    runner: JobRunner
    enqueuer: Enqueuer


class _RadnodeTask(Task):  # type: ignore[misc]  # celery publishes no types
    """A task of a worker app; its ``context`` is set when :func:`worker_app` registers it."""

    context: WorkerContext


def run_job(task: _RadnodeTask, job_id: int) -> None:
    """Task ``radnode.run_job``: run one job, then the first attempt of its deliveries and notifications."""
    context = task.context
    try:
        context.runner.run(job_id)
    finally:
        _after_job(context.config.worker.max_memory_per_child_mb)
    # first delivery attempt at once (no broker round trip); only retries are queued. A rerun
    # of this message after a crash finds the job finished and delivers what is still pending.
    for delivery_id in pending_deliveries(context.db, job_id):
        _attempt(context, delivery_id)
    for notification_id in pending_notifications(context.db, job_id=job_id):
        _notify(context, notification_id)


def deliver(task: _RadnodeTask, delivery_id: int) -> None:
    """Task ``radnode.deliver``: one delivery attempt; a retry is queued with its backoff."""
    _attempt(task.context, delivery_id)


def notify(task: _RadnodeTask, notification_id: int) -> None:
    """Task ``radnode.notify``: one notification attempt; a retry is queued with its backoff."""
    _notify(task.context, notification_id)


def _attempt(context: WorkerContext, delivery_id: int) -> None:
    retry_in = attempt_delivery(context.db, context.config, delivery_id)
    if retry_in is not None:
        context.enqueuer.delivery(delivery_id, countdown=retry_in)
        return
    for notification_id in pending_notifications(context.db, delivery_id=delivery_id):  # delivery_failed
        _notify(context, notification_id)


def _notify(context: WorkerContext, notification_id: int) -> None:
    retry_in = attempt_notification(context.db, context.config, notification_id)
    if retry_in is not None:
        context.enqueuer.notification(notification_id, countdown=retry_in)


def worker_app(context: WorkerContext) -> Celery:
    """The broker's app with the tasks registered, bound to ``context``."""
    app = create_app(context.config)
    for function, name in ((run_job, RUN_JOB), (deliver, DELIVER), (notify, NOTIFY)):
        app.task(name=name, bind=True, shared=False, base=_RadnodeTask, context=context,
                 **RETRY_WHILE_DATABASE_DOWN)(function)
    return app


def run_worker(
    config: Config, *, device: str, hostname: str | None = None, metrics_port: int | None = None
) -> None:
    """Run a Celery worker (one process, one job at a time) until it is stopped.

    ``hostname`` names the worker in Celery and in Job.worker (default: this host's name);
    ``metrics_port`` is where the task-running child serves /metrics when metrics are enabled.
    """
    db = Database(config.database.url)
    db.create_schema()
    runner = JobRunner(config, db, select_device(device), name=hostname or socket.gethostname())
    app = worker_app(WorkerContext(config, db, runner, Enqueuer(create_app(config))))

    def _fresh_connections(**_: object) -> None:
        db.engine.dispose(close=False)  # a forked child must not share the parent's sockets
        if config.metrics.enabled:  # the child runs the tasks, so it holds the counts
            serve_metrics(config.metrics.bind, metrics_port or config.metrics.worker_port, WORKER)

    worker_process_init.connect(_fresh_connections, weak=False)

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
