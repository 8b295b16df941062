"""The status page: a read-only view of the node for the people who run it.

Served by the listener process from a thread (standard library ``http.server``), bound to
127.0.0.1 unless ``web.bind`` says otherwise: it has no login, so it is reached through an SSH
tunnel or a reverse proxy that authenticates. It shows what ``radnode status`` shows plus the
node's health: queue depth, jobs per worker, GPUs of this host (``nvidia-smi``), spool free space.

It never shows patient data: the database holds none (UIDs, AE titles, modalities, states).
Only GET is answered; ``/`` is the page (refreshes itself every 10 s), ``/healthz`` answers ``ok``.
"""

from __future__ import annotations

import html
import logging
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from node.config import Config
from node.db import Database, Job, JobState, Series, Study, utcnow
from node.metrics import job_counts
from node.ops.status import StudyFilter, instance_counts, purges, recent_studies

__all__ = ["Gpu", "StatusPage", "gpus", "render_page"]

log = logging.getLogger("radnode.web")

NVIDIA_SMI_TIMEOUT_SECONDS = 5
PAGE_REFRESH_SECONDS = 10
PAGE_STUDIES = 25

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0 0 .2em} h2{font-size:16px;margin:1.4em 0 .4em}
.cards{display:flex;gap:1em;flex-wrap:wrap}
.card{background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:.6em 1em;min-width:10em}
.card b{display:block;font-size:22px}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border:1px solid #d8dce3;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#eceff3} code{font-size:12px}
.succeeded,.sent{color:#17702f}.failed{color:#b00020;font-weight:600}
.queued,.running,.pending,.retrying{color:#8a5a00}.not_applicable{color:#555}
.muted{color:#667}
"""


@dataclass(frozen=True)
class Gpu:
    """One GPU of this host as ``nvidia-smi`` reports it."""

    index: int
    name: str
    utilization_percent: float
    memory_used_mib: float
    memory_total_mib: float


def gpus() -> list[Gpu]:
    """GPUs of this host, or [] where there is no NVIDIA driver (``nvidia-smi`` absent or failing)."""
    command = shutil.which("nvidia-smi")
    if command is None:
        return []
    try:
        out = subprocess.run(
            [command, "--query-gpu=index,name,utilization.gpu,memory.used,memory.total",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_SECONDS, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed: %s", exc)
        return []
    found = []
    for line in out.strip().splitlines():
        index, name, util, used, total = (part.strip() for part in line.split(","))
        found.append(Gpu(int(index), name, _number(util), _number(used), _number(total)))
    return found


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "[N/A]" on some boards
        return float("nan")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _state(value: str) -> str:
    return f'<span class="{_e(value)}">{_e(value)}</span>'


def _health(db: Database, config: Config) -> str:
    counts = job_counts(db)
    by_state = {state: 0 for state in JobState}
    for (_, state), count in counts.items():
        by_state[state] += count
    disk = shutil.disk_usage(config.storage.path)
    cards = [
        ("queue depth (jobs queued)", by_state[JobState.QUEUED]),
        ("jobs running", by_state[JobState.RUNNING]),
        ("study jobs waiting for series", by_state[JobState.WAITING]),
        ("jobs failed", by_state[JobState.FAILED]),
        ("spool free", f"{disk.free / 2**30:.1f} GiB of {disk.total / 2**30:.0f}"),
    ]
    parts = ['<div class="cards">']
    parts += [f'<div class="card">{_e(label)}<b>{_e(value)}</b></div>' for label, value in cards]
    parts.append("</div>")
    return "".join(parts)


def _workers(db: Database) -> str:
    with db.session() as session:
        rows = session.execute(
            select(
                Job.worker,
                func.count().filter(Job.state == JobState.RUNNING),
                func.count().filter(Job.state != JobState.RUNNING),
                func.max(Job.finished_at),
            )
            .where(Job.worker != "")
            .group_by(Job.worker)
            .order_by(Job.worker)
        ).all()
    if not rows:
        return '<p class="muted">no worker has taken a job yet</p>'
    body = "".join(
        f"<tr><td>{_e(name)}</td><td>{running}</td><td>{ended}</td><td>{_when(last)}</td></tr>"
        for name, running, ended, last in rows
    )
    return (
        "<table><tr><th>worker</th><th>running now</th><th>jobs ended</th>"
        f"<th>last job ended (UTC)</th></tr>{body}</table>"
    )


def _gpus() -> str:
    found = gpus()
    if not found:
        return '<p class="muted">no GPU on this host (nvidia-smi not found or no device)</p>'
    body = "".join(
        f"<tr><td>{g.index}</td><td>{_e(g.name)}</td><td>{g.utilization_percent:.0f} %</td>"
        f"<td>{g.memory_used_mib:.0f} / {g.memory_total_mib:.0f} MiB</td></tr>"
        for g in found
    )
    return f"<table><tr><th>GPU</th><th>name</th><th>utilisation</th><th>memory</th></tr>{body}</table>"


def _studies(db: Database) -> str:
    rows = []
    with db.session() as session:
        studies = recent_studies(session, StudyFilter(limit=PAGE_STUDIES))
        counts = instance_counts(session, studies)
        purged = purges(session, studies)
        for study in studies:
            for series in study.series:
                jobs: Sequence[Job | None] = series.jobs or [None]  # a series without a job: one row
                for job in jobs:
                    rows.append(_study_row(study, series, job, counts.get(series.id, 0), study.id in purged))
    if not rows:
        return '<p class="muted">no studies received yet</p>'
    return (
        "<table><tr><th>received (UTC)</th><th>study / series UID</th><th>instances</th>"
        "<th>job</th><th>state</th><th>worker</th><th>deliveries</th></tr>" + "".join(rows) + "</table>"
    )


def _study_row(study: Study, series: Series, job: Job | None, instances: int, purged: bool) -> str:
    uids = (
        f"<code>{_e(study.study_instance_uid)}</code><br><code class=muted>"
        f"{_e(series.series_instance_uid)}</code> {_e(series.modality or '?')}"
    )
    files = f"{instances}" + (' <span class="muted">(files removed by retention)</span>' if purged else "")
    if job is None:
        cells = f"<td>-</td><td>{_state(series.state.value)}</td><td></td><td></td>"
    else:
        reason = f'<br><span class="muted">{_e(job.reason)}</span>' if job.reason else ""
        deliveries = "<br>".join([
            *(f"{_e(r.kind)} → {_e(d.destination)}: {_state(d.state.value)}"
              f" ({d.attempts} attempt(s)){': ' + _e(d.last_error) if d.last_error else ''}"
              for r in job.results
              for d in r.deliveries),
            *(f"notify {_e(n.channel)} {_e(n.event.value)}: {_state(n.state.value)}"
              f" ({n.attempts} attempt(s)){': ' + _e(n.last_error) if n.last_error else ''}"
              for n in job.notifications),
        ])
        cells = (
            f"<td>#{job.id} {_e(job.pipeline)}</td><td>{_state(job.state.value)}{reason}</td>"
            f"<td>{_e(job.worker)}</td><td>{deliveries}</td>"
        )
    return f"<tr><td>{_when(series.first_received_at)}</td><td>{uids}</td><td>{files}</td>{cells}</tr>"


def render_page(db: Database, config: Config) -> str:
    """The whole status page as HTML."""
    return (
        f'<!doctype html><html><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{PAGE_REFRESH_SECONDS}">'
        f"<title>radnode {_e(config.node.ae_title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>radnode {_e(config.node.ae_title)}</h1>"
        f'<div class="muted">DICOM port {config.node.port} · page generated {_when(utcnow())} UTC</div>'
        f"<h2>Health</h2>{_health(db, config)}"
        f"<h2>Workers</h2>{_workers(db)}"
        f"<h2>GPUs on this host</h2>{_gpus()}"
        f"<h2>Recent studies</h2>{_studies(db)}"
        "</body></html>"
    )


class StatusPage:
    """The page's HTTP server, in a daemon thread of the listener process."""

    def __init__(self, db: Database, config: Config) -> None:
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                if self.path == "/healthz":
                    self._reply(HTTPStatus.OK, "text/plain", "ok")
                elif self.path in ("/", "/index.html"):
                    try:
                        body = render_page(page.db, page.config)
                    except SQLAlchemyError as exc:
                        log.error("status page: database unavailable: %s", exc)
                        self._reply(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", "database unavailable")
                        return
                    self._reply(HTTPStatus.OK, "text/html; charset=utf-8", body)
                else:
                    self._reply(HTTPStatus.NOT_FOUND, "text/plain", "not found")

            def _reply(self, status: HTTPStatus, content_type: str, body: str) -> None:
                data = body.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # http.server's signature
                log.debug("web %s", format % args)

        self.db = db
        self.config = config
        self._handler = Handler
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        """Serve in a thread; a port that cannot be bound is logged, and DICOM goes on without it."""
        where = f"{self.config.web.bind}:{self.config.web.port}"
        try:
            self._server = ThreadingHTTPServer((self.config.web.bind, self.config.web.port), self._handler)
        except OSError as exc:
            log.error("status page not served: cannot listen on %s: %s", where, exc.strerror)
            return
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="web", daemon=True).start()
        log.info("status page at http://%s/", where)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
