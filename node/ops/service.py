"""The listener process (`radnode serve`): listener + completion, optionally supervising a worker.

    C-STORE → Listener → Spool + catalog rows → CompletionWatcher → Job rows → broker
                                                        (worker process) → JobRunner → delivery
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from node.config import Config
from node.db import Database, Delivery, DeliveryState, Notification
from node.jobs.completion import CompletionWatcher, PacsCounter
from node.jobs.tasks import Enqueuer, create_app
from node.metrics import LISTENER, NodeCollector, serve_metrics
from node.receive.listener import AssociationTracker, Listener
from node.spool.retention import RetentionSweeper
from node.spool.store import Spool

__all__ = ["prepare_paths", "serve"]

log = logging.getLogger("radnode.service")

WORKER_RESTART_DELAY_SECONDS = 2.0


def prepare_paths(config: Config) -> None:
    """Create the spool, results and SQLite folders the configuration names."""
    config.storage.path.mkdir(parents=True, exist_ok=True)
    config.storage.results_dir.mkdir(parents=True, exist_ok=True)
    for url in (config.database.url, config.broker.url):
        match = re.match(r"^(?:sqla\+)?sqlite(?:\+\w+)?:///(/.+)$", url)
        if match:
            Path(match.group(1)).parent.mkdir(parents=True, exist_ok=True)


def _requeue(db: Database, table: type[Delivery | Notification], send: Callable[[int], None]) -> int:
    """Put every unfinished delivery (or notification) back on the broker; how many."""
    from sqlalchemy import select

    with db.session() as session:
        ids = session.scalars(
            select(table.id).where(table.state.in_([DeliveryState.PENDING, DeliveryState.RETRYING]))
        ).all()
    for row_id in ids:
        send(row_id)
    return len(ids)


class _WorkerSupervisor:
    """Keeps one `radnode worker` child running for the all-in-one node."""

    def __init__(self, config_path: Path) -> None:
        self.command = [sys.executable, "-m", "node.ops.cli", "worker", "--config", str(config_path)]
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            self.process = subprocess.Popen(self.command)
            log.info("worker started pid=%d", self.process.pid)
            code = self.process.wait()
            if self._stopping.is_set():
                return
            log.error("worker exited code=%s; restarting", code)
            self._stopping.wait(WORKER_RESTART_DELAY_SECONDS)

    def stop(self) -> None:
        self._stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def serve(config: Config, *, with_worker: bool) -> None:
    """Run the listener (and a worker) until SIGTERM or SIGINT."""
    prepare_paths(config)
    db = Database(config.database.url)
    db.create_schema()  # upgraded to the newest revision (node/spool/migrations)
    spool = Spool(config.storage.path, config.storage.min_free_mb * 2**20, fsync=config.storage.fsync)
    tracker = AssociationTracker()
    enqueuer = Enqueuer(create_app(config))
    verify_with = config.completion.verify_with
    counter = None if verify_with is None else PacsCounter(
        config.destinations[verify_with],
        calling_ae_title=config.node.ae_title,
        timeout_seconds=config.delivery.timeout_seconds,
    )
    watcher = CompletionWatcher(
        db, config.completion, config.routes, tracker.busy_series, enqueuer.job, counter,
        pipelines=config.pipelines,
    )
    listener = Listener(config.node, spool, db, tracker)
    listener.start()
    embedded = config.broker.url.startswith("sqla+")
    requeued = watcher.requeue_unfinished(include_running=with_worker and embedded)
    redelivered = _requeue(db, Delivery, enqueuer.delivery)
    renotified = _requeue(db, Notification, enqueuer.notification)
    if requeued or redelivered or renotified:
        log.info("resumed after restart jobs=%d deliveries=%d notifications=%d",
                 requeued, redelivered, renotified)
    watcher.start()
    if config.metrics.enabled:
        collector = NodeCollector(db, config.storage.path)
        serve_metrics(config.metrics.bind, config.metrics.port, LISTENER, collector)
    page = None
    if config.web.enabled:
        from node.ops.web import StatusPage

        page = StatusPage(db, config)
        page.start()
    sweeper = RetentionSweeper(db, config.storage)
    if config.storage.retention_days is not None:
        sweeper.start()
    supervisor = None
    if with_worker:
        assert config.source is not None, "serve --with-worker needs the config file's path"
        supervisor = _WorkerSupervisor(config.source)
        supervisor.start()

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    log.info("stopping")
    listener.stop()
    watcher.stop()
    sweeper.stop()
    if page is not None:
        page.stop()
    if supervisor is not None:
        supervisor.stop()
    db.dispose()
