"""Delivery: C-STORE of result objects to a destination, judged by the peer's status.

Network and association failures are DestinationUnreachable (retried with backoff by the
caller); a failure status from the peer is DestinationRefused (not retried).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from node.config import Config, DeliveryConfig, Destination
from node.db import Database, Delivery, DeliveryState, utcnow
from node.dimse import StoreStatus
from node.errors import DestinationRefused, DestinationUnreachable

__all__ = ["attempt_delivery", "backoff_seconds", "send_files"]

log = logging.getLogger("radnode.delivery")

def backoff_seconds(config: DeliveryConfig, attempt: int) -> float:
    """Delay before retry number ``attempt`` (1-based): doubling, capped."""
    return min(config.first_backoff_seconds * 2 ** (attempt - 1), config.max_backoff_seconds)


def send_files(
    destination: Destination, paths: Sequence[Path], *, calling_ae_title: str, timeout_seconds: float
) -> None:
    """C-STORE each file to ``destination`` on one association, or raise why not."""
    ae = AE(ae_title=destination.calling_ae_title or calling_ae_title)
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
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except OSError as exc:
        raise DestinationUnreachable(f"cannot connect to {where}: {exc}") from exc
    if not assoc.is_established:
        if assoc.is_rejected:
            raise DestinationUnreachable(f"{where} rejected the association")
        raise DestinationUnreachable(f"no association with {where} (connection refused or timed out)")
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
    destination = config.destinations.get(name)
    state, error, status, retry_in = DeliveryState.SENT, "", None, None
    if destination is None:
        state, error = DeliveryState.FAILED, f"destination {name!r} is no longer configured"
    else:
        try:
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
                state, retry_in = DeliveryState.RETRYING, backoff_seconds(config.delivery, attempt)
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        delivery.state = state
        delivery.last_error = error
        delivery.last_status = status
        if state is DeliveryState.SENT:
            delivery.sent_at = utcnow()
        delivery.next_attempt_at = (
            utcnow() + timedelta(seconds=retry_in) if retry_in is not None else None
        )
    if state is not DeliveryState.SENT:
        log.warning("delivery %d to %s: %s (%s)", delivery_id, name, state.value, error)
    return retry_in
