"""Notifications by webhook: a real HTTP receiver that checks each signature and records each body.

The jobs are real (lung-qct on the chest CT, on the CPU, as in tests/test_delivery.py); the outbox
rows they leave are sent by :func:`node.notify.webhook.attempt_notification`, and in the last test by
a real ``radnode serve --with-worker`` whose worker is killed while the receiver holds the request.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import os
import shutil
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
import torch
from aiosmtpd.controller import Controller
from sqlalchemy import select

from node.config import Config, parse_config
from node.db import Database, DeliveryState, Job, Notification, NotificationEvent, Result
from node.delivery.send import attempt_delivery
from node.errors import ConfigError
from node.jobs.runner import JobRunner
from node.notify.outbox import queue_notifications
from node.notify.send import attempt_notification
from node.ops.status import StudyFilter, render_status
from node.ops.web import render_page
from tests.dcmtk import storescu
from tests.dicom_files import dicom_files_under
from tests.node_process import RadnodeProcess, child_pids
from tests.orthanc import wait_for
from tests.ports import free_port
from tests.test_delivery import CHEST_CT, database, deliveries_of, queue_chest_ct_job

SECRET = b"s3cret-for-tests"
MAX_SIGNATURE_AGE_S = 300


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    signature_ok: bool


@dataclass
class Receiver:
    """An HTTP server on a free port: answers ``statuses`` in turn (then 200); holds while ``hold`` is set."""

    port: int = field(default_factory=free_port)
    statuses: list[int] = field(default_factory=list)
    hold: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(Received(dict(self.headers), body, _verify(self.headers, body)))
                if receiver.hold.is_set():
                    receiver.released.wait(60)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.released.set()
            self._server.shutdown()
            self._server.server_close()


def _verify(headers: object, body: bytes) -> bool:
    """The receiver's check, as config/README.md documents it."""
    timestamp = headers["X-Radnode-Timestamp"]  # type: ignore[index]
    expected = "sha256=" + hmac.new(SECRET, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) <= MAX_SIGNATURE_AGE_S
    return fresh and hmac.compare_digest(expected, headers["X-Radnode-Signature"])  # type: ignore[index]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def notify_config(folder: Path, url: str, *, max_attempts: int = 3, hook: str = "", more: str = "") -> Config:
    (folder / "hook.secret").write_bytes(SECRET + b"\n")
    text = f"""
storage: {{path: spool, results_path: results}}
database: {{url: "sqlite:///radnode.db"}}
broker: {{url: "sqla+sqlite:///broker.db"}}
delivery: {{max_attempts: {max_attempts}, first_backoff_seconds: 0.1, max_backoff_seconds: 0.5,
            timeout_seconds: 5}}
destinations:
  pacs: {{ae_title: NOBODY, host: 127.0.0.1, port: 1}}
notifications:
  hook: {{url: "{url}", secret_file: hook.secret, events: [job_succeeded, job_failed, delivery_failed]{hook}}}
{more}"""
    return parse_config(text, base=folder)


@pytest.fixture(scope="module")
def ran_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """(folder of a database, job id) after lung-qct ran with channel ``hook``: one PENDING notification."""
    folder = tmp_path_factory.mktemp("ran")
    config = notify_config(folder, "http://127.0.0.1:1/placeholder")
    db = database(config)
    job_id = queue_chest_ct_job(db, ["pacs"])
    JobRunner(config, db, torch.device("cpu")).run(job_id)
    db.dispose()
    return folder, job_id


def copy_of(
    ran_job: tuple[Path, int], tmp_path: Path, url: str, **options: object
) -> tuple[Config, Database]:
    shutil.copy(ran_job[0] / "radnode.db", tmp_path / "radnode.db")
    config = notify_config(tmp_path, url, **options)  # type: ignore[arg-type]
    return config, database(config)


def notifications(db: Database) -> list[Notification]:
    with db.session() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def send_until_done(db: Database, config: Config, notification_id: int) -> int:
    """Attempt as the worker would, waiting each backoff; the number of attempts made."""
    attempts = 1
    while (retry_in := attempt_notification(db, config, notification_id)) is not None:
        time.sleep(retry_in)
        attempts += 1
    return attempts


def test_a_succeeded_job_posts_one_signed_body_without_patient_data(ran_job, tmp_path, receiver) -> None:
    config, db = copy_of(ran_job, tmp_path, receiver.url)
    (row,) = notifications(db)
    assert (row.channel, row.event, row.state) == (
        "hook", NotificationEvent.JOB_SUCCEEDED, DeliveryState.PENDING)
    assert send_until_done(db, config, row.id) == 1
    assert attempt_notification(db, config, row.id) is None  # sent: a second run sends nothing
    (got,) = receiver.received
    assert got.signature_ok
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Radnode-Event"] == "job_succeeded"
    assert got.headers["Idempotency-Key"] == row.idempotency_key
    body = json.loads(got.body)
    with db.session() as session:
        job = session.get_one(Job, ran_job[1])
        results = session.scalars(select(Result.sop_instance_uid).where(Result.job_id == job.id)).all()
        assert body["study_instance_uid"] == job.series.study.study_instance_uid
        assert body["series_instance_uids"] == [job.series.series_instance_uid]
    assert (body["event"], body["job"]["id"], body["job"]["pipeline"], body["job"]["state"]) == (
        "job_succeeded", ran_job[1], "lung-qct", "succeeded")
    assert sorted(r["sop_instance_uid"] for r in body["results"]) == sorted(results)
    assert body["findings"]["measurements"] and all(
        {"finding", "name", "value", "unit"} <= set(m) for m in body["findings"]["measurements"])
    source = pydicom.dcmread(dicom_files_under(CHEST_CT)[0], stop_before_pixels=True)
    assert "patient" not in body
    for identifier in (str(source.PatientName), str(source.PatientID)):
        assert identifier.encode() not in got.body
    (sent,) = notifications(db)
    assert (sent.state, sent.attempts, sent.last_status) == (DeliveryState.SENT, 1, 200)
    assert "notify hook job_succeeded  sent after 1 attempt(s)" in render_status(db)
    config.storage.path.mkdir()  # the page shows its free space
    assert 'notify hook job_succeeded: <span class="sent">sent</span> (1 attempt(s))' in render_page(
        db, config)
    db.dispose()


def test_include_phi_adds_the_patient_name_and_id(ran_job, tmp_path) -> None:
    config, db = copy_of(ran_job, tmp_path, "http://127.0.0.1:1/", hook=", include_phi: true")
    with db.session() as session:
        job = session.get_one(Job, ran_job[1])
        assert queue_notifications(session, config.notifications, job, NotificationEvent.JOB_SUCCEEDED,
                                   "phi test") == 1
        assert queue_notifications(session, config.notifications, job, NotificationEvent.JOB_SUCCEEDED,
                                   "phi test") == 0  # the same occurrence: nothing twice
    source = pydicom.dcmread(dicom_files_under(CHEST_CT)[0], stop_before_pixels=True)
    assert notifications(db)[-1].body["patient"] == {"name": str(source.PatientName), "id": source.PatientID}
    db.dispose()


def test_a_receiver_down_then_up_gets_it_once_with_the_same_key(ran_job, tmp_path) -> None:
    later = Receiver(statuses=[503])  # refused connections first, then an HTTP 503, then 200
    config, db = copy_of(ran_job, tmp_path, later.url, max_attempts=5)
    (row,) = notifications(db)
    assert attempt_notification(db, config, row.id) is not None  # nobody listening
    (waiting,) = notifications(db)
    assert waiting.state is DeliveryState.RETRYING and "cannot reach" in waiting.last_error
    assert "notify hook job_succeeded  retrying after 1 attempt(s)" in render_status(db)
    later.start()
    try:
        assert send_until_done(db, config, row.id) == 2  # the 503, then the 200
    finally:
        later.stop()
    assert [r.headers["Idempotency-Key"] for r in later.received] == [row.idempotency_key] * 2
    assert all(r.signature_ok for r in later.received)
    assert len({r.body for r in later.received}) == 1  # the same bytes each try
    (sent,) = notifications(db)
    assert (sent.state, sent.attempts) == (DeliveryState.SENT, 3)
    db.dispose()


def test_a_receiver_that_never_comes_back_is_marked_failed(ran_job, tmp_path) -> None:
    config, db = copy_of(ran_job, tmp_path, f"http://127.0.0.1:{free_port()}/hook", max_attempts=3)
    (row,) = notifications(db)
    assert send_until_done(db, config, row.id) == 3
    (failed,) = notifications(db)
    assert (failed.state, failed.attempts) == (DeliveryState.FAILED, 3)
    assert failed.last_error.startswith("gave up after 3 attempts: cannot reach")
    assert ("notify hook job_succeeded  failed after 3 attempt(s): gave up after 3 attempts"
            in render_status(db, StudyFilter(job_id=ran_job[1])))
    assert render_status(db, StudyFilter(job_id=ran_job[1] + 1)) == "no studies match"
    db.dispose()


def test_a_refusal_is_not_retried(ran_job, tmp_path, receiver) -> None:
    receiver.statuses.append(401)
    config, db = copy_of(ran_job, tmp_path, receiver.url)
    (row,) = notifications(db)
    assert attempt_notification(db, config, row.id) is None
    (failed,) = notifications(db)
    assert (failed.state, failed.attempts, failed.last_status) == (DeliveryState.FAILED, 1, 401)
    db.dispose()


def test_a_failed_job_and_a_failed_delivery_are_notified(ran_job, tmp_path, receiver) -> None:
    config, db = copy_of(ran_job, tmp_path, receiver.url, max_attempts=1)
    (delivery_id, *_), *_ = deliveries_of(db, ran_job[1])
    assert attempt_delivery(db, config, delivery_id) is None  # port 1: gave up after its one attempt
    with db.session() as session:
        job = session.get_one(Job, ran_job[1])
        failing = Job(series=job.series, pipeline="no-such-pipeline", revision=2, destinations=[])
        session.add(failing)
        session.flush()
        failing_id = failing.id
    JobRunner(config, db, torch.device("cpu")).run(failing_id)
    rows = notifications(db)
    assert [(r.job_id, r.event) for r in rows[1:]] == [
        (ran_job[1], NotificationEvent.DELIVERY_FAILED), (failing_id, NotificationEvent.JOB_FAILED)]
    for row in rows[1:]:
        assert send_until_done(db, config, row.id) == 1
    delivered, failed_job = (json.loads(r.body) for r in receiver.received)
    assert delivered["delivery"]["id"] == delivery_id and "gave up" in delivered["delivery"]["error"]
    assert (failed_job["job"]["state"], failed_job["findings"]) == ("failed", None)
    assert "no-such-pipeline" in failed_job["job"]["message"]
    db.dispose()


@pytest.mark.parametrize(("hook", "message"), [
    ('{url: "ftp://x", secret_file: s, events: [job_failed]}', r"radnode.yaml:3: notifications.hook.url: "),
    ('{url: "http://x", secret_file: s, events: [job_exploded]}',
     r"radnode.yaml:3: notifications.hook.events.0: Input should be 'job_succeeded', 'job_failed' or"),
    ('{url: "http://x", events: [job_failed]}',
     r"radnode.yaml:3: notifications.hook: a webhook needs its HMAC"),
    ('{url: "http://x", secret_env: X, events: []}', r"radnode.yaml:3: notifications.hook.events: "),
    ('{kind: smtp, host: mail, events: [job_failed]}',
     r"radnode.yaml:3: notifications.hook: an smtp channel needs host, from and to"),
])
def test_config_errors_name_the_key_and_line(tmp_path: Path, hook: str, message: str) -> None:
    text = f"""storage: {{path: spool}}
notifications:
  hook: {hook}
database: {{url: "sqlite:///radnode.db"}}
broker: {{url: "sqla+sqlite:///broker.db"}}
"""
    with pytest.raises(ConfigError, match=message):
        parse_config(text, base=tmp_path, source="radnode.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("killed", ["worker", "node"])
def test_killed_mid_notify_resends_with_the_same_key_and_ends_sent(tmp_path, receiver, killed) -> None:
    """``worker``: its job process dies, Celery re-delivers the message; ``node``: listener and worker die
    together and the node is started again, which puts the unfinished notification back on the broker."""
    receiver.hold.set()
    (tmp_path / "hook.secret").write_bytes(SECRET)
    node = RadnodeProcess(
        tmp_path / "radnode", destinations={}, quiet_seconds=1,
        routes=[{"match": {"Modality": "CT"}, "pipelines": ["lung-qct"]}],
        extra={"notifications": {"hook": {"url": receiver.url, "secret_file": str(tmp_path / "hook.secret"),
                                          "events": ["job_succeeded"]}}},
    )
    db = Database(f"sqlite:///{node.workdir / 'var' / 'radnode.db'}")
    with node:
        sent = storescu("127.0.0.1", node.port, node.ae_title, [CHEST_CT], calling_aet="CT_SCANNER")
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(receiver.received), until=lambda n: n >= 1, timeout=300, interval=0.5,
                 what="the first POST (held by the receiver)")
        (worker,) = child_pids(node.process.pid)
        pool = child_pids(worker)  # the prefork child, inside the POST
        for pid in [*pool, worker, node.process.pid] if killed == "node" else pool:
            os.kill(pid, signal.SIGKILL)
        receiver.hold.clear()
        receiver.released.set()
        if killed == "node":
            node.process.wait()
            node.start()
        rows = wait_for(lambda: notifications(db), until=lambda rows: len(rows) == 1
                        and rows[0].state is DeliveryState.SENT, timeout=120, interval=0.5,
                        what="the notification sent after the worker was replaced")
        log = node.log_tail(200_000)
    db.dispose()
    assert ("notifications=1" in log) if killed == "node" else ("WorkerLostError" in log), log[-3000:]
    keys = {r.headers["Idempotency-Key"] for r in receiver.received}
    assert keys == {rows[0].idempotency_key}
    assert len(receiver.received) >= 2 and rows[0].attempts >= 2
    assert all(r.signature_ok for r in receiver.received)


# -- e-mail: a local SMTP server (aiosmtpd) that requires STARTTLS --------------------------------


@dataclass
class Mailbox:
    """aiosmtpd on a free port with a self-signed certificate for 127.0.0.1; STARTTLS required."""

    folder: Path
    port: int = field(default_factory=free_port)
    messages: list[tuple[str, list[str], bytes, bool]] = field(default_factory=list)  # from, to, data, TLS
    _controller: Controller | None = None

    @property
    def certificate(self) -> Path:
        return self.folder / "smtp.crt"

    def start(self) -> Mailbox:
        key = self.folder / "smtp.key"
        if not self.certificate.exists():
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                            "-keyout", str(key), "-out", str(self.certificate)],
                           check=True, capture_output=True)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificate, key)
        mailbox = self

        class Handler:
            async def handle_DATA(self, server: object, session: Any, envelope: Any) -> str:
                mailbox.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                                         session.ssl is not None))
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=context,
                                      require_starttls=True)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()

    def channel(self) -> str:
        return (f'  mail: {{kind: smtp, host: 127.0.0.1, port: {self.port}, from: radnode@example.org, '
                f'to: [ops@example.org], ca_certificates: {self.certificate}, events: [job_succeeded]}}\n')


def queued_mail(db: Database, config: Config, job_id: int) -> int:
    """A job_succeeded notification for channel ``mail`` of the ran job: its id."""
    with db.session() as session:
        job = session.get_one(Job, job_id)
        queue_notifications(session, {"mail": config.notifications["mail"]}, job,
                            NotificationEvent.JOB_SUCCEEDED, f"attempt {job.attempts}")
    return notifications(db)[-1].id


def test_an_email_goes_out_over_starttls_with_the_json_body(ran_job, tmp_path) -> None:
    mailbox = Mailbox(tmp_path).start()
    try:
        config, db = copy_of(ran_job, tmp_path, "http://127.0.0.1:1/", more=mailbox.channel())
        mail_id = queued_mail(db, config, ran_job[1])
        assert send_until_done(db, config, mail_id) == 1
    finally:
        mailbox.stop()
    ((sender, recipients, data, over_tls),) = mailbox.messages
    assert (sender, recipients, over_tls) == ("radnode@example.org", ["ops@example.org"], True)
    message = email.message_from_bytes(data, policy=email.policy.default)
    row = notifications(db)[-1]
    assert message["Message-ID"].strip() == f"<{row.idempotency_key}@radnode>"  # folded: a long line
    assert message["Subject"] == f"radnode: job_succeeded job {ran_job[1]} (lung-qct)"
    assert json.loads(message.get_content()) == row.body
    assert (row.state, row.attempts) == (DeliveryState.SENT, 1)
    db.dispose()


def test_an_smtp_server_down_then_up_gets_the_mail_once(ran_job, tmp_path) -> None:
    mailbox = Mailbox(tmp_path)
    config, db = copy_of(ran_job, tmp_path, "http://127.0.0.1:1/", more=mailbox.channel())
    mail_id = queued_mail(db, config, ran_job[1])
    assert attempt_notification(db, config, mail_id) is not None  # nobody listening
    assert "cannot send mail through 127.0.0.1" in notifications(db)[-1].last_error
    mailbox.start()
    try:
        assert send_until_done(db, config, mail_id) == 1
    finally:
        mailbox.stop()
    assert len(mailbox.messages) == 1
    assert (notifications(db)[-1].state, notifications(db)[-1].attempts) == (DeliveryState.SENT, 2)
    db.dispose()
