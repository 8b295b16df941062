"""Celery wiring: the app, the names of the tasks, and how ids are put on the broker.

Messages carry only ids (job id, delivery id, notification id); all state lives in the database, so
any worker on any host can take any message. Tasks are acknowledged late and rejected when their worker
process is lost, so a crash re-delivers the message and the work is done again, not dropped.
The tasks themselves, and the worker process, are in :mod:`node.jobs.worker`: senders (the
listener, the CLI) need neither them nor torch.
"""

from __future__ import annotations

import logging

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError

from node.config import Config
from node.errors import BrokerUnreachable

__all__ = ["DELIVER", "NOTIFY", "QUEUE", "RETRY_WHILE_DATABASE_DOWN", "RUN_JOB", "Enqueuer", "create_app"]

log = logging.getLogger("radnode.tasks")

QUEUE = "radnode"
RUN_JOB = "radnode.run_job"
DELIVER = "radnode.deliver"
NOTIFY = "radnode.notify"
SQLITE_BROKER_BUSY_TIMEOUT_SECONDS = 30
DATABASE_RETRY_MAX_SECONDS = 30
# A task that finds the database unreachable is re-sent with backoff (Celery logs "Retry in N s"),
# not acknowledged as failed: its job must not be lost to a database restart.
RETRY_WHILE_DATABASE_DOWN: dict[str, object] = {
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
    """Puts job, delivery and notification ids on the broker."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def job(self, job_id: int) -> None:
        """Put a job id on the broker, or raise BrokerUnreachable (after kombu's own retries)."""
        self._send(RUN_JOB, job_id)

    def delivery(self, delivery_id: int, countdown: float = 0) -> None:
        """Put a delivery id on the broker (to run in ``countdown`` seconds), or raise BrokerUnreachable."""
        self._send(DELIVER, delivery_id, countdown)

    def notification(self, notification_id: int, countdown: float = 0) -> None:
        """Put a notification id on the broker (to run in ``countdown`` s), or raise BrokerUnreachable."""
        self._send(NOTIFY, notification_id, countdown)

    def _send(self, task: str, row_id: int, countdown: float = 0) -> None:
        try:
            self.app.send_task(task, args=[row_id], queue=QUEUE, countdown=countdown or None)
        except (KombuOperationalError, OSError) as exc:
            raise BrokerUnreachable(f"broker did not take {task} {row_id}: {exc}") from exc
