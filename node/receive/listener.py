"""The DICOM listener: Verification and every Storage SOP class, stored durably.

The C-STORE handler is thin: it reads the identifying attributes (never the pixel data), writes
the received bytes as they are (no transcoding), records the row, flushes both to disk (one
grouped flush, node/spool/store.py), and only then answers Success. Any failure becomes a precise
failure status with an ErrorComment and a log line; the association goes on serving the next
instance.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import defaultdict
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import, in globals()
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from node.config import NodeConfig
from node.db import Database
from node.dimse import StoreStatus
from node.errors import DataSetTooLarge, InvalidInstance, OutOfSpace, StorageError, WrongPresentationContext
from node.metrics import ASSOCIATIONS_REJECTED, INSTANCES_RECEIVED, INSTANCES_REFUSED, RECEIVED_BYTES
from node.receive.acceptor import start_receiving_server
from node.receive.access import AccessPolicy
from node.receive.part10 import PREAMBLE, file_meta
from node.receive.stream_to_disk import Incoming, StoreRequestInfo, called_ae_title
from node.spool.catalog import Catalog
from node.spool.recovery import recover
from node.spool.store import IncomingFile, Spool, check_whole, read_incoming_header, validate_uid
from node.tls import server_context

__all__ = ["AssociationTracker", "Listener"]

log = logging.getLogger("radnode.listener")

STOP_WAIT_S = 10.0  # for the associations that a stop aborted to end

_ERROR_COMMENT_MAX = 64  # ErrorComment (0000,0902) is LO
# Announced in A-ASSOCIATE-AC (PS3.8 D.1): senders cut data sets into P-DATA PDUs of at most this
# size. pynetdicom's default (16 KiB) makes a 512×512 CT slice 32 PDUs; 1 MiB makes it one,
# which measurably lowers the listener's CPU per instance (BENCHMARKS.md).
MAXIMUM_PDU_BYTES = 2**20


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


#: refusals whose status and comment depend only on the kind of error: (log level, status, comment)
_FIXED_REFUSALS: dict[type[StorageError], tuple[int, StoreStatus, str]] = {
    OutOfSpace: (logging.ERROR, StoreStatus.OUT_OF_RESOURCES, "Out of resources: spool free-space floor"),
    DataSetTooLarge: (logging.WARNING, StoreStatus.OUT_OF_RESOURCES,
                      "Out of resources: inflates past node.max_inflated_mb"),
    WrongPresentationContext: (logging.WARNING, StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                               "SOP Class differs from its context's"),
}


def _refused(code: StoreStatus, comment: str) -> tuple[int, str]:
    INSTANCES_REFUSED.labels(f"0x{int(code):04X}").inc()
    return int(code), comment[:_ERROR_COMMENT_MAX]


def _log_accepted(event: evt.Event) -> None:
    """One INFO line per association admitted (rejections are logged where they are decided)."""
    requestor = event.assoc.requestor
    log.info("association accepted calling_ae=%s address=%s called_ae=%s contexts=%d",
             requestor.ae_title, requestor.address, called_ae_title(event.assoc),
             len(event.assoc.accepted_contexts))


class Listener:
    """A pynetdicom SCP bound to the configured address and port."""

    def __init__(self, config: NodeConfig, spool: Spool, db: Database, tracker: AssociationTracker):
        self.config = config
        self.spool = spool
        self.db = db
        self.tracker = tracker
        database_file = db.engine.url.database if db.engine.dialect.name == "sqlite" else None
        # one flush per instance when the spool's sync also covers the SQLite file (node/spool/catalog.py)
        self.catalog = Catalog(
            db, deferred_durability=database_file is not None and spool.covers(Path(database_file))
        )
        self._server: ThreadedAssociationServer | None = None
        self._unrestricted_before = False

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.network_timeout = self.config.network_timeout_seconds
        ae.maximum_pdu_size = MAXIMUM_PDU_BYTES
        ae.acse_timeout = self.config.network_timeout_seconds
        ae.dimse_timeout = self.config.network_timeout_seconds
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        # Every storage class, with every transfer syntax: stored as received, decoded by workers.
        # pynetdicom's unrestricted storage service (start()) accepts them all without a list;
        # the list (~150 classes × 45 syntaxes) is deep-copied for each association: ~0.2 s.
        if not self.config.accept_unknown_sop_classes:
            for context in AllStoragePresentationContexts:
                # pynetdicom's list: each context has its abstract syntax
                ae.add_supported_context(cast(UID, context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.require_called_aet = False
        return ae

    def start(self) -> None:
        """Start serving in background threads; returns once the port is bound."""
        recover(self.spool, self.catalog)
        # pynetdicom's own switch (process-wide, so restored by stop()): private and unknown
        # abstract syntaxes are negotiated as storage, with the first transfer syntax proposed
        self._unrestricted_before = pynetdicom_config.UNRESTRICTED_STORAGE_SERVICE
        pynetdicom_config.UNRESTRICTED_STORAGE_SERVICE = self.config.accept_unknown_sop_classes
        ae = self._make_ae()
        handlers = [
            (evt.EVT_C_ECHO, lambda event: StoreStatus.SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            (evt.EVT_CONN_CLOSE, self._on_end),
            (evt.EVT_REJECTED, lambda event: ASSOCIATIONS_REJECTED.inc()),
            (evt.EVT_ACCEPTED, _log_accepted),
            (evt.EVT_REQUESTED, AccessPolicy(self.config.allowed_callers).on_requested),
        ]
        tls = server_context(self.config.tls) if self.config.tls is not None else None
        # pynetdicom's acceptor; C-STORE requests served straight from the P-DATA bytes
        # (node/receive/acceptor.py)
        self._server = start_receiving_server(
            ae, (self.config.bind_address, self.config.port), self.receive, evt_handlers=handlers,
            ssl_context=tls,
        )
        bound = cast(socket.socket, self._server.socket)  # listening by now; pynetdicom types it Optional
        bound.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info(
            "listening ae_title=%s address=%s port=%d tls=%s allowed_callers=%s",
            self.config.ae_title,
            self.config.bind_address,
            self.config.port,
            "off" if self.config.tls is None else
            "client-cert" if self.config.tls.require_client_certificate else "on",
            len(self.config.allowed_callers) or "any",
        )

    def stop(self) -> None:
        """Stop serving; the spool is marked cleanly stopped once no association is left writing."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        pynetdicom_config.UNRESTRICTED_STORAGE_SERVICE = self._unrestricted_before
        open_associations = list(server.ae.active_associations)
        for association in open_associations:
            association.abort()  # the sender gets no Success for what it was sending
        for association in open_associations:
            association.join(timeout=STOP_WAIT_S)
        if server.ae.active_associations:
            log.warning("stopped with associations still ending: the next start sweeps the spool")
        else:
            self.spool.mark_clean_stop()

    def _on_end(self, event: evt.Event) -> None:
        self.tracker.ended(id(event.assoc))

    def _on_store(self, event: evt.Event) -> Dataset | int:
        """A C-STORE request that pynetdicom served (node/receive/stream_to_disk.py serves the others)."""
        request = cast(C_STORE, event.request)  # the handler of EVT_C_STORE only
        incoming = self.receive(StoreRequestInfo(
            sop_class_uid=str(request.AffectedSOPClassUID or ""),
            sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            context_abstract_syntax=str(event.context.abstract_syntax),
            calling_ae_title=event.assoc.requestor.ae_title,
            calling_address=event.assoc.requestor.address,
            called_ae_title=called_ae_title(event.assoc),
            association_id=id(event.assoc),
        ))
        if request.DataSet is None:  # pynetdicom answers the raise with 0xC211
            raise ValueError("the C-STORE request has no data set")
        with request.DataSet.getbuffer() as data_set:
            incoming.write(data_set)
        status, comment = incoming.finish()
        if not comment:
            return status
        response = Dataset()
        response.Status = status
        response.ErrorComment = comment
        return response

    def receive(self, request: StoreRequestInfo) -> Incoming:
        """Begin receiving an instance: its file is written as its data set arrives."""
        return _IncomingInstance(self, request)

    def store(self, request: StoreRequestInfo, incoming: IncomingFile) -> tuple[int, str]:
        """Store a received file durably; the response's Status and ErrorComment ("" on success).

        Success only once the file and its row are on disk; every failure is a precise status
        with a comment and a log line, and the association goes on serving the next instance.
        """
        sop_uid = request.sop_instance_uid
        try:
            try:
                header = read_incoming_header(incoming, self.config.max_inflated_mb << 20)
                if header.sop_instance_uid != sop_uid:
                    raise InvalidInstance(
                        f"SOPInstanceUID {header.sop_instance_uid} differs from the request's "
                        f"AffectedSOPInstanceUID {sop_uid}"
                    )
                check_whole(incoming, header.sop_class_uid)
            except StorageError:  # not stored: InvalidInstance, DataSetTooLarge
                incoming.discard()
                raise
            self.tracker.saw(request.association_id, header.series_instance_uid)
            committed = self.spool.commit(incoming, header, sync=False)
            superseded = self.catalog.record(
                header,
                path=committed.path,
                flush_later=committed.pending,
                size_bytes=incoming.size,
                transfer_syntax_uid=request.transfer_syntax_uid,
                calling_ae_title=request.calling_ae_title,
                calling_address=request.calling_address,
                called_ae_title=request.called_ae_title,
            )
            if committed.pending:
                self.spool.sync()  # the file and (usually) its row reach the disk: only then Success
        except (InvalidInstance, StorageError, SQLAlchemyError) as exc:
            return self.refuse(request, exc)
        if superseded is not None:  # re-sent under another study or series: it lives there now
            log.warning("instance moved calling_ae=%s sop=%s series=%s (re-sent under another study "
                        "or series)", request.calling_ae_title, sop_uid, header.series_instance_uid)
            try:
                self.spool.remove_superseded(superseded)
            except StorageError as exc:  # stored all the same; the old file is only space
                log.error("cannot remove the superseded file of sop=%s: %s", sop_uid, exc)
        log.debug("instance stored calling_ae=%s sop=%s", request.calling_ae_title, sop_uid)
        INSTANCES_RECEIVED.labels(request.calling_ae_title).inc()
        RECEIVED_BYTES.inc(incoming.size)
        return int(StoreStatus.SUCCESS), ""

    def refuse(self, request: StoreRequestInfo, exc: Exception) -> tuple[int, str]:
        """The status, comment and log line of an instance that was not stored."""
        calling, sop_uid = request.calling_ae_title, request.sop_instance_uid
        fixed = next((refusal for kind, refusal in _FIXED_REFUSALS.items() if isinstance(exc, kind)), None)
        if fixed is not None:
            level, code, comment = fixed
            log.log(level, "instance refused calling_ae=%s sop=%s reason=%s", calling, sop_uid, exc)
            return _refused(code, comment)
        if isinstance(exc, InvalidInstance):
            log.warning("instance refused calling_ae=%s sop=%s reason=%s", calling, sop_uid, exc)
            undecodable = exc.undecodable
            return _refused(
                StoreStatus.CANNOT_DECODE if undecodable else StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                str(exc),
            )
        log.error("instance not stored calling_ae=%s sop=%s reason=%s", calling, sop_uid, exc)
        return _refused(StoreStatus.OUT_OF_RESOURCES, f"Out of resources: {type(exc).__name__}")


class _IncomingInstance:
    """An instance on its way into the spool (node/receive/stream_to_disk.py's Incoming): the Part 10 file
    begins with its meta information, the data set follows as it arrives. A refusal found early
    (a malformed UID in the command, a full disk, an I/O error) is kept, the rest of the data set
    is read and dropped, and the refusal is answered when the data set is complete."""

    def __init__(self, listener: Listener, request: StoreRequestInfo) -> None:
        self._listener = listener
        self._request = request
        self._file: IncomingFile | None = None
        self._failure: StorageError | None = None
        try:
            validate_uid(request.sop_class_uid, "AffectedSOPClassUID")  # both go into the file's meta
            validate_uid(request.sop_instance_uid, "AffectedSOPInstanceUID")
            if request.sop_class_uid != request.context_abstract_syntax:
                raise WrongPresentationContext(
                    f"AffectedSOPClassUID {request.sop_class_uid} came on a presentation context "
                    f"negotiated for {request.context_abstract_syntax}"
                )
            self._file = listener.spool.incoming()
            self._file.write(PREAMBLE + file_meta(
                request.sop_class_uid, request.sop_instance_uid, request.transfer_syntax_uid
            ))
        except StorageError as exc:
            self._fail(exc)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._file is not None:
            try:
                self._file.write(data)
            except StorageError as exc:
                self._fail(exc)

    def finish(self) -> tuple[int, str]:
        if self._file is None:
            return self._listener.refuse(self._request, cast(StorageError, self._failure))
        return self._listener.store(self._request, self._file)

    def discard(self) -> None:
        if self._file is not None:
            self._file.discard()
            self._file = None

    def _fail(self, exc: StorageError) -> None:
        self._failure = exc
        self.discard()
