"""Celery wiring: the app, the two task names, and the worker process.

Messages carry only ids (job id, delivery id); all state lives in the database, so any worker on
any host can take any message. Tasks are acknowledged late and rejected when their worker
process is lost, so a crash re-delivers the message and the work is done again, not dropped.
"""

from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import worker_process_init

from node.config import Config
from node.db import Database

__all__ = ["DELIVER", "QUEUE", "RUN_JOB", "Enqueuer", "create_app", "run_worker"]

log = logging.getLogger("radnode.tasks")

QUEUE = "radnode"
RUN_JOB = "radnode.run_job"
DELIVER = "radnode.deliver"
# Redis/SQS re-deliver an unacknowledged message after this long; it must exceed the longest job.
VISIBILITY_TIMEOUT_SECONDS = 4 * 3600
SQLITE_BROKER_BUSY_TIMEOUT_SECONDS = 30


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
        broker_transport_options=_transport_options(config.broker.url),
    )
    return app


def _transport_options(url: str) -> dict[str, object]:
    if url.startswith("sqla+"):
        # kombu's SQLAlchemy transport hands its options to create_engine: give SQLite a busy
        # timeout, as the listener and the worker write the same broker file
        return {"connect_args": {"timeout": SQLITE_BROKER_BUSY_TIMEOUT_SECONDS}}
    return {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}


class Enqueuer:
    """Puts job and delivery ids on the broker."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def job(self, job_id: int) -> None:
        self.app.send_task(RUN_JOB, args=[job_id], queue=QUEUE)

    def delivery(self, delivery_id: int, countdown: float = 0) -> None:
        self.app.send_task(DELIVER, args=[delivery_id], queue=QUEUE, countdown=countdown or None)


def run_worker(config: Config, *, device: str, hostname: str | None = None) -> None:
    """Run a Celery worker (one process, one job at a time) until it is stopped."""
    from node.delivery import attempt_delivery
    from node.jobs import JobRunner, select_device

    db = Database(config.database.url)
    db.create_schema()
    app = create_app(config)
    enqueuer = Enqueuer(app)
    runner = JobRunner(config, db, select_device(device))

    @worker_process_init.connect(weak=False)
    def _fresh_connections(**_: object) -> None:
        db.engine.dispose(close=False)  # a forked child must not share the parent's sockets

    @app.task(name=RUN_JOB)
    def run_job(job_id: int) -> None:
        for delivery_id in runner.run(job_id):
            enqueuer.delivery(delivery_id)

    @app.task(name=DELIVER)
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
        f"--hostname={hostname or 'radnode@%h.' + str(os.getpid())}",
    ]
    log.info("worker starting broker=%s device=%s", _redact(config.broker.url), device)
    app.worker_main(argv)


def _redact(url: str) -> str:
    """Hide a password in a broker URL before logging it."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))
