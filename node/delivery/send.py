"""Delivery: C-STORE (or STOW-RS, PS3.18 10.5) of result objects to a destination, judged by its answer.

Network and association failures are DestinationUnreachable (retried with backoff by the
caller); a failure status from the peer is DestinationRefused (not retried). For STOW-RS, HTTP
5xx, 408 and 429 count as unreachable; any other 4xx, or a Failed SOP Sequence in the response
(its Failure Reason is the DIMSE status), is a refusal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AddressInformation, AssociationSocket
from sqlalchemy import select

from node.config import Config, Destination
from node.db import Database, Delivery, DeliveryState, NotificationEvent, Result, utcnow
from node.dimse import StoreStatus
from node.errors import ConfigError, DestinationRefused, DestinationUnreachable
from node.metrics import DELIVERY_ATTEMPTS, JOB_STAGE_SECONDS
from node.notify.outbox import queue_notifications
from node.tls import client_context

__all__ = [
    "RequestorAE", "attempt_delivery", "open_association", "send_files", "stow_files",
]

log = logging.getLogger("radnode.delivery")

class _ClosingSocket(AssociationSocket):
    """pynetdicom's socket, closed even when it never connected.

    pynetdicom (3.0, pinned) closes a socket only after ``shutdown()`` succeeds, which it never does
    on a connection that was refused: each attempt at a PACS that is down left a socket open until
    the garbage collector found it.
    """

    def _shutdown_socket(self) -> None:
        sock = self.socket
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


class RequestorAE(AE):
    """The AE radnode opens associations with (deliveries, completion notices): its sockets are
    :class:`_ClosingSocket`."""

    def _create_socket(self, assoc: Association, address: AddressInformation,
                       tls_args: tuple[ssl.SSLContext, str] | None) -> AssociationSocket:
        sock = _ClosingSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


def open_association(ae: RequestorAE, destination: Destination) -> Association:
    """An established association from ``ae`` to a dicom ``destination`` (TLS if configured).

    Raises DestinationUnreachable (retry later) with where and why.
    """
    if destination.ae_title is None or destination.host is None or destination.port is None:
        raise ValueError("a dicom destination needs ae_title, host and port")  # as Destination validates
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    try:
        tls_args = (
            (client_context(destination.tls, f"destination {where} tls"), destination.host)
            if destination.tls is not None
            else None
        )
        assoc = ae.associate(
            destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args
        )
    except ConfigError as exc:  # a TLS file the admin can fix: retried like an outage
        raise DestinationUnreachable(str(exc)) from exc
    except OSError as exc:
        raise DestinationUnreachable(f"cannot connect to {where}: {exc}") from exc
    if not assoc.is_established:
        transport = assoc.dul.socket
        if transport is not None and transport.socket is not None:
            transport.socket.close()  # pynetdicom leaves the socket of a failed association open
        if assoc.is_rejected:
            raise DestinationUnreachable(f"{where} rejected the association")
        raise DestinationUnreachable(f"no association with {where} (connection refused or timed out)")
    return assoc


def send_files(
    destination: Destination, paths: Sequence[Path], *, calling_ae_title: str, timeout_seconds: float
) -> None:
    """C-STORE each file to ``destination`` on one association, or raise why not."""
    ae = RequestorAE(ae_title=destination.calling_ae_title or calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_seconds
    datasets = [dcmread(path) for path in paths]
    # one context per SOP class, offering each file's own transfer syntax (sent as stored)
    syntaxes: dict[str, list[str]] = {}
    for ds in datasets:
        offered = syntaxes.setdefault(str(ds.SOPClassUID), [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        if ds.file_meta.TransferSyntaxUID not in offered:
            offered.insert(0, ds.file_meta.TransferSyntaxUID)
    for sop_class, offered in syntaxes.items():
        ae.add_requested_context(sop_class, offered)
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    assoc = open_association(ae, destination)
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if "Status" not in status:
                raise DestinationUnreachable(f"{where} did not answer the C-STORE (timeout or abort)")
            code = int(status.Status)
            if not StoreStatus.is_success(code):
                comment = status.get("ErrorComment", "")
                raise DestinationRefused(
                    f"{where} refused {ds.SOPInstanceUID} with status 0x{code:04X} {comment}".strip(),
                    code,
                )
            log.debug("sent destination=%s sop=%s status=0x%04X", where, ds.SOPInstanceUID, code)
    finally:
        if assoc.is_established:
            assoc.release()


_RETRYABLE_HTTP = frozenset({408, 429})
_FAILED_SOP_SEQUENCE = "00081198"
_FAILURE_REASON = "00081197"
_REFERENCED_SOP_INSTANCE_UID = "00081155"


def _stow_refusal(where: str, answer: bytes) -> DestinationRefused | None:
    """The first failed instance in a STOW-RS response (PS3.18 Table 10.5.3-1), if any."""
    try:
        failed = json.loads(answer or b"{}").get(_FAILED_SOP_SEQUENCE, {}).get("Value", [])
    except (ValueError, AttributeError):
        return None
    if not failed:
        return None
    item = failed[0]
    reason = (item.get(_FAILURE_REASON, {}).get("Value") or [StoreStatus.PROCESSING_FAILURE])[0]
    sop = (item.get(_REFERENCED_SOP_INSTANCE_UID, {}).get("Value") or ["?"])[0]
    return DestinationRefused(f"{where} refused {sop} with Failure Reason 0x{int(reason):04X}", int(reason))


def stow_files(destination: Destination, paths: Sequence[Path], *, timeout_seconds: float) -> None:
    """POST the files to ``{url}/studies`` in one multipart/related request, or raise why not."""
    where = f"{destination.url}/studies"
    boundary = uuid.uuid4().hex
    parts = [
        b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), path.read_bytes())
        for path in paths
    ]
    request = urllib.request.Request(
        where,
        data=b"".join(parts) + b"--%s--\r\n" % boundary.encode(),
        method="POST",
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            answer = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        refusal = _stow_refusal(where, body)
        if exc.code >= 500 or exc.code in _RETRYABLE_HTTP:
            raise DestinationUnreachable(f"{where} answered HTTP {exc.code} {exc.reason}") from exc
        if refusal is not None:
            raise refusal from exc
        text = body.decode("utf-8", "replace")[:200]
        raise DestinationRefused(f"{where} refused the upload: HTTP {exc.code} {exc.reason} {text}".strip(),
                                 None) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise DestinationUnreachable(f"cannot reach {where}: {exc}") from exc
    refusal = _stow_refusal(where, answer)
    if refusal is not None:
        raise refusal
    log.debug("stored by STOW-RS destination=%s files=%d", where, len(paths))


def pending_deliveries(db: Database, job_id: int) -> list[int]:
    """Ids of the job's deliveries that were never attempted (state PENDING)."""
    with db.session() as session:
        return list(
            session.scalars(
                select(Delivery.id)
                .join(Result)
                .where(Result.job_id == job_id, Delivery.state == DeliveryState.PENDING)
                .order_by(Delivery.id)
            )
        )


def attempt_delivery(db: Database, config: Config, delivery_id: int) -> float | None:
    """Try delivery ``delivery_id`` once; return seconds until the next try, or None when done.

    Sent, refused (permanent) and out-of-attempts deliveries are done; each outcome is on the
    row (state, attempts, last status, last error) for ``radnode status``.
    """
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None or delivery.state in (DeliveryState.SENT, DeliveryState.FAILED):
            return None
        name = delivery.destination
        path = Path(delivery.result.path)
        delivery.attempts += 1
        attempt = delivery.attempts
        pipeline = delivery.result.job.pipeline
    destination = config.destinations.get(name)
    started = time.perf_counter()
    state, error, status, retry_in = DeliveryState.SENT, "", None, None
    if destination is None:
        state, error = DeliveryState.FAILED, f"destination {name!r} is no longer configured"
    else:
        try:
            if destination.kind == "dicomweb":
                stow_files(destination, [path], timeout_seconds=config.delivery.timeout_seconds)
            else:
                send_files(
                    destination,
                    [path],
                    calling_ae_title=config.node.ae_title,
                    timeout_seconds=config.delivery.timeout_seconds,
                )
        except DestinationRefused as exc:
            state, error, status = DeliveryState.FAILED, str(exc), exc.status
        except (DestinationUnreachable, OSError) as exc:
            error = str(exc)
            if attempt >= config.delivery.max_attempts:
                state, error = DeliveryState.FAILED, f"gave up after {attempt} attempts: {exc}"
            else:
                state, retry_in = DeliveryState.RETRYING, config.delivery.backoff_seconds(attempt)
    JOB_STAGE_SECONDS.labels(pipeline, "deliver").observe(time.perf_counter() - started)
    DELIVERY_ATTEMPTS.labels(name, state.value).inc()
    with db.session() as session:
        delivery = session.get_one(Delivery, delivery_id)  # read above; delivery rows are never deleted
        delivery.state = state
        delivery.last_error = error
        delivery.last_status = status
        if state is DeliveryState.SENT:
            delivery.sent_at = utcnow()
        delivery.next_attempt_at = (
            utcnow() + timedelta(seconds=retry_in) if retry_in is not None else None
        )
        if state is DeliveryState.FAILED:  # in the same transaction: the outbox
            queue_notifications(session, config.notifications, delivery.result.job,
                                NotificationEvent.DELIVERY_FAILED,
                                f"delivery {delivery_id} attempt {attempt}", delivery=delivery)
    if state is not DeliveryState.SENT:
        log.warning("delivery %d to %s: %s (%s)", delivery_id, name, state.value, error)
    return retry_in
