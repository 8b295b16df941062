"""The DICOM listener: Verification and every Storage SOP class, stored durably.

The C-STORE handler is thin: it reads the identifying attributes (never the pixel data), writes
the received bytes as they are (no transcoding) with fsync, records the row, and only then answers
Success. Any failure becomes a precise failure status with an ErrorComment and a log line; the
association goes on serving the next instance.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import defaultdict

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from node.catalog import record_instance
from node.config import NodeConfig
from node.db import Database
from node.dimse import StoreStatus
from node.errors import InvalidInstance, OutOfSpace, StorageError
from node.store import Spool, read_header

__all__ = ["AssociationTracker", "Listener"]

log = logging.getLogger("radnode.listener")

_ERROR_COMMENT_MAX = 64  # ErrorComment (0000,0902) is LO


class AssociationTracker:
    """Which series are still being received on an open association.

    Completion must not fire for a series while an association that sent to it is open; this
    is listener-process state (after a restart no association is open).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series_by_association: dict[int, set[str]] = defaultdict(set)

    def saw(self, association_id: int, series_uid: str) -> None:
        with self._lock:
            self._series_by_association[association_id].add(series_uid)

    def ended(self, association_id: int) -> None:
        with self._lock:
            self._series_by_association.pop(association_id, None)

    def busy_series(self) -> set[str]:
        """Series UIDs that an open association has sent instances of."""
        with self._lock:
            return set().union(*self._series_by_association.values())


def _status(code: StoreStatus, comment: str) -> Dataset:
    status = Dataset()
    status.Status = int(code)
    status.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    return status


class Listener:
    """A pynetdicom SCP bound to the configured address and port."""

    def __init__(self, config: NodeConfig, spool: Spool, db: Database, tracker: AssociationTracker):
        self.config = config
        self.spool = spool
        self.db = db
        self.tracker = tracker
        self._server: ThreadedAssociationServer | None = None

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.network_timeout = self.config.network_timeout_seconds
        ae.acse_timeout = self.config.network_timeout_seconds
        ae.dimse_timeout = self.config.network_timeout_seconds
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        # Every storage class, with every transfer syntax: stored as received, decoded by workers.
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.require_called_aet = False
        return ae

    def start(self) -> None:
        """Start serving in background threads; returns once the port is bound."""
        ae = self._make_ae()
        handlers = [
            (evt.EVT_C_ECHO, lambda event: StoreStatus.SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            (evt.EVT_CONN_CLOSE, self._on_end),
        ]
        self._server = ae.start_server(
            (self.config.bind_address, self.config.port), block=False, evt_handlers=handlers
        )
        self._server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info(
            "listening ae_title=%s address=%s port=%d",
            self.config.ae_title,
            self.config.bind_address,
            self.config.port,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_end(self, event: evt.Event) -> None:
        self.tracker.ended(id(event.assoc))

    def _on_store(self, event: evt.Event) -> Dataset | int:
        calling = event.assoc.requestor.ae_title
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            part10 = event.encoded_dataset(include_meta=True)
            header = read_header(part10)
            if header.sop_instance_uid != sop_uid:
                raise InvalidInstance(
                    f"SOPInstanceUID {header.sop_instance_uid} differs from the request's "
                    f"AffectedSOPInstanceUID {sop_uid}"
                )
            self.tracker.saw(id(event.assoc), header.series_instance_uid)
            path = self.spool.write(header, part10)
            record_instance(
                self.db,
                header,
                path=path,
                size_bytes=len(part10),
                transfer_syntax_uid=str(event.context.transfer_syntax),
                calling_ae_title=calling,
            )
        except OutOfSpace as exc:
            log.error("instance refused calling_ae=%s sop=%s reason=%s", calling, sop_uid, exc)
            return _status(StoreStatus.OUT_OF_RESOURCES, "Out of resources: spool free-space floor")
        except InvalidInstance as exc:
            log.warning("instance refused calling_ae=%s sop=%s reason=%s", calling, sop_uid, exc)
            code = (
                StoreStatus.CANNOT_DECODE
                if exc.undecodable
                else StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
            )
            return _status(code, str(exc))
        except (StorageError, SQLAlchemyError) as exc:
            log.error("instance not stored calling_ae=%s sop=%s reason=%s", calling, sop_uid, exc)
            return _status(StoreStatus.OUT_OF_RESOURCES, f"Out of resources: {type(exc).__name__}")
        log.debug("instance stored calling_ae=%s sop=%s", calling, sop_uid)
        return StoreStatus.SUCCESS
