"""C-STORE requests served on the thread that reads the socket, written to disk as they arrive.

pynetdicom hands each received PDU through its state machine, PDU and primitive objects, a queue
to the association's thread, a DIMSE message object and the service class before the C-STORE
handler runs; the data set is copied five times on the way and held whole in memory, and the two
threads take turns. Measured on one storescu association, that was most of the listener's ~4 ms
of CPU per CT slice (BENCHMARKS.md). Here, while the association is established, the DUL thread
reads each P-DATA-TF PDU itself (node/receive/pdata.py): a C-STORE request's data set goes from the
socket to the handler's file in chunks of :data:`CHUNK_BYTES` as it arrives (the file is written
while the sender is still sending, and memory stays one chunk per association whatever the
instance's size), the handler stores it, and the response goes out as bytes from the same thread.

Everything else stays pynetdicom's: association negotiation, release, abort, timers, C-ECHO and
any message this path does not serve, which it hands back to pynetdicom as the PDU it received
(node/receive/acceptor.py's socket puts the bytes back in front of the stream). It only takes a message
that begins a PDU's item with a whole C-STORE-RQ command set on an accepted presentation context;
from the first item it does not take, the rest of that PDU, and every item up to the end of that
message, is pynetdicom's.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ

from node.errors import InvalidInstance, RadnodeError
from node.receive.bounded_dul import MAXIMUM_PDVS_PER_PDU, BoundedDUL, lost_reason
from node.receive.pdata import (
    COMMAND,
    ITEM_HEADER,
    LAST,
    P_DATA_TF,
    PDU_HEADER,
    Command,
    PresentationDataValue,
    p_data_tf,
    presentation_data_values,
    read_command,
    store_response_command,
)
from node.spool.store import validate_uid

__all__ = ["CHUNK_BYTES", "Incoming", "StoreHandler", "StoreMessages", "StoreRequest", "StoreRequestInfo",
           "StoringDUL", "called_ae_title"]

LOGGER = logging.getLogger("pynetdicom.dul")

CHUNK_BYTES = 256 * 1024  # what the DUL reads from the socket and writes to the file at a time
_UNABLE_TO_PROCESS = 0xC211  # what pynetdicom answers when the C-STORE handler raised


@dataclass(frozen=True)
class StoreRequestInfo:
    """What a C-STORE request says of its instance, and the association it came on."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    context_abstract_syntax: str  # of the presentation context the request came on
    calling_ae_title: str
    calling_address: str
    called_ae_title: str
    association_id: int


class Incoming(Protocol):
    """An instance being received: its data set is written in fragments, then finished once."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next fragment of the data set; never raises (a failure is kept for finish)."""

    def finish(self) -> tuple[int, str]:
        """Store the instance; the response's Status and ErrorComment ("" for none)."""

    def discard(self) -> None:
        """Drop it: the association ended, or broke the protocol, before the data set did."""


# Begins receiving an instance; the listener's (node/receive/listener.py).
StoreHandler = Callable[[StoreRequestInfo], Incoming]


@dataclass
class StoreRequest:
    """A C-STORE request being received here."""

    context_id: int
    command: Command
    incoming: Incoming


class ProtocolError(RadnodeError):
    """The peer broke PS3.8 inside a C-STORE request: the association is aborted."""


class StoreMessages:
    """Follows the DIMSE messages of one association's P-DATA and receives those served here.

    ``begin`` opens the instance of a C-STORE request served here, given its command and its
    presentation context's (abstract syntax, transfer syntax).
    """

    def __init__(
        self, contexts: dict[int, tuple[str, str]], begin: Callable[[Command, tuple[str, str]], Incoming]
    ) -> None:
        self._contexts = contexts  # accepted presentation context ID → (abstract, transfer syntax)
        self._begin = begin
        self._request: StoreRequest | None = None  # a C-STORE request received here
        self._foreign_command: bytearray | None = None  # pynetdicom's message, its command so far
        self._foreign_data = False  # pynetdicom's message, its data set to come

    @property
    def receiving(self) -> bool:
        """Whether the next data fragment belongs to a request received here."""
        return self._request is not None

    def take(self, body: bytes | bytearray) -> tuple[list[StoreRequest], bytes | None]:
        """The requests that a P-DATA-TF PDU's body completes, and the PDU (rebuilt from its
        remaining items) to hand to pynetdicom, or None. Raises ValueError for a malformed
        PDU (pynetdicom should see it) and ProtocolError for a broken request."""
        items = presentation_data_values(body)
        complete: list[StoreRequest] = []
        for index, item in enumerate(items):
            if self._foreign_command is None and not self._foreign_data and self._own(item, complete):
                continue
            rest = items[index:]
            for foreign in rest:
                self._follow(foreign)
            return complete, p_data_tf([(pdv.context_id, pdv.control, pdv.value) for pdv in rest])
        return complete, None

    def data_fragment(self, context_id: int, control: int) -> StoreRequest:
        """The request that a data fragment streamed from the socket belongs to (while
        :attr:`receiving`); raises ProtocolError (the request is dropped) if it belongs to none."""
        request = self._request
        assert request is not None
        if control & COMMAND or context_id != request.context_id:
            self.abandon()
            kind = "command" if control & COMMAND else "data"
            raise ProtocolError(
                f"a C-STORE request's data set was interrupted by a {kind} fragment on presentation "
                f"context {context_id} (PS3.8 9.3.5.1)"
            )
        return request

    def received(self) -> None:
        """The request's last data fragment has been written."""
        self._request = None

    def abandon(self) -> None:
        """Drop the request being received (abort, release or broken protocol mid-data set)."""
        if self._request is not None:
            self._request.incoming.discard()
            self._request = None

    def _own(self, item: PresentationDataValue, complete: list[StoreRequest]) -> bool:
        if self._request is None:
            if item.control != COMMAND | LAST or item.context_id not in self._contexts:
                return False
            try:
                command = read_command(item.value)
            except ValueError:
                return False
            if not command.is_store_request:
                return False
            incoming = self._begin(command, self._contexts[item.context_id])
            self._request = StoreRequest(item.context_id, command, incoming)
            return True
        request = self.data_fragment(item.context_id, item.control)
        request.incoming.write(item.value)
        if item.control & LAST:
            complete.append(request)
            self.received()
        return True

    def _follow(self, item: PresentationDataValue) -> None:
        """Track where pynetdicom's message ends, so that the next one can be served here."""
        if item.control & COMMAND:
            command = self._foreign_command = (self._foreign_command or bytearray()) + item.value
            if item.control & LAST:
                self._foreign_command = None
                try:
                    self._foreign_data = read_command(command).has_data_set
                except ValueError:
                    self._foreign_data = False  # pynetdicom refuses it; no data set is expected
        elif item.control & LAST:
            self._foreign_command, self._foreign_data = None, False


class StoringDUL(BoundedDUL):
    """pynetdicom's DUL, serving C-STORE requests itself while the association is established.

    Its loop is pynetdicom's without the ``time.sleep(0)`` before each look at the socket: the
    socket (node/receive/acceptor.py) already waits until there is something to do, and on a virtual
    machine each such sleep lasts the kernel's 50 µs timer slack and more: 76 µs measured here,
    six per CT slice, a fifth of the time per instance (BENCHMARKS.md).
    """

    _store: StoreHandler
    _messages: StoreMessages | None
    _chunk: memoryview

    def serve_stores(self, store: StoreHandler) -> None:
        """Serve C-STORE requests with ``store`` from now on (before the thread starts)."""
        self._store = store
        self._messages = None
        self._chunk = memoryview(bytearray(CHUNK_BYTES))

    def run(self) -> None:
        """The thread's body (pynetdicom made its own loop the thread's target, before this class
        was given to the object)."""
        self.run_reactor()

    def run_reactor(self) -> None:
        """Check the ARTIM timer, send one queued primitive or read one PDU, then let the state
        machine act on one event; the wait is in the socket's ``ready``."""
        self._idle_timer.start()
        self.assoc._dul_ready.set()
        while not self._kill_thread:
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if not self._process_recv_primitive() and self._is_transport_event():
                    self._idle_timer.restart()
            except Exception:
                self._abort_on_error()
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                continue
            try:  # pynetdicom's loop lets this end the thread: a PDU it decoded but cannot act on
                self.state_machine.do_action(event)  # (an A-ABORT with an invalid source) did
            except Exception:
                self._abort_on_error()
                return

    def _abort_on_error(self) -> None:
        """What pynetdicom's loop does on an unexpected error: A-ABORT, past the state machine;
        one log line (the traceback at debug level: a hostile peer must not flood the log)."""
        error = sys.exc_info()[1]
        LOGGER.error("Association aborted address=%s reason=%s: %s", self.assoc.requestor.address,
                     type(error).__name__, error)
        LOGGER.debug("the error that aborted the association", exc_info=True)
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x00
        with contextlib.suppress(OSError):  # the peer may be gone already
            self.socket.send(abort.encode())  # type: ignore[union-attr]
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True

    def _read_pdu_data(self) -> None:
        if self.state_machine.current_state != "Sta6":  # not established: all pynetdicom's
            if self._messages is not None:
                self._messages.abandon()
            super()._read_pdu_data()
            return
        messages = self._messages_of_association()
        sock: Any = self.socket
        header = self._read_pdu_header()  # within the limits (node/receive/bounded_dul.py), else None
        if header is None:
            messages.abandon()
            return
        if header[0] == P_DATA_TF:
            length = int.from_bytes(header[2:6], "big")
            if messages.receiving:
                remaining = self._stream(messages, length)
                if not remaining:  # the whole PDU was read here (or the association is ending)
                    return
                header = bytearray(PDU_HEADER.pack(P_DATA_TF, 0, remaining))  # what follows a last fragment
                length = remaining
            body = self._read_exactly(length)
            if body is None or self.too_many_items(body):
                messages.abandon()
                return
            try:
                requests, rest = messages.take(body)
            except ValueError:
                requests, rest = [], bytes(header + body)
            except ProtocolError as exc:
                self._abort(exc)
                return
            for request in requests:
                self._respond(request)
            if rest is None:
                return
            header = bytearray(rest)
        else:
            messages.abandon()  # A-ABORT or A-RELEASE-RQ in the middle of a data set
        sock.push_back(header)
        super()._read_pdu_data()

    def _stream(self, messages: StoreMessages, length: int) -> int | None:
        """Read a P-DATA-TF PDU's data fragments from the socket into the request being received,
        chunk by chunk. Returns how many bytes of the PDU follow a last fragment (0: none), or
        None when the association is ending (connection lost, protocol broken)."""
        sock: Any = self.socket
        item_header = self._chunk[:ITEM_HEADER.size]
        remaining: int = length  # typed: less each item's length, which struct gives untyped
        items = 0
        while remaining:
            try:
                items += 1
                if items > MAXIMUM_PDVS_PER_PDU:
                    raise ProtocolError(f"a P-DATA-TF PDU holds more than {MAXIMUM_PDVS_PER_PDU} PDV items")
                if remaining < ITEM_HEADER.size:
                    raise ProtocolError(f"{remaining} bytes of a P-DATA-TF PDU are too few for a PDV item")
                if sock.read_into(item_header) < ITEM_HEADER.size:
                    raise EOFError
                item_length, context_id, control = ITEM_HEADER.unpack(item_header)
                remaining -= 4 + item_length
                if item_length < 2 or remaining < 0:
                    raise ProtocolError(f"a PDV item of length {item_length} does not fit its P-DATA-TF PDU")
                request = messages.data_fragment(context_id, control)
                fragment = item_length - 2
                while fragment:
                    chunk = self._chunk[:min(fragment, CHUNK_BYTES)]
                    if sock.read_into(chunk) < len(chunk):
                        raise EOFError
                    request.incoming.write(chunk)
                    fragment -= len(chunk)
            except (EOFError, OSError) as exc:
                messages.abandon()
                self._transport_lost(lost_reason(exc, "a data set"))
                return None
            except ProtocolError as exc:
                self._abort(exc)
                return None
            if control & LAST:
                messages.received()
                self._respond(request)
                return remaining
        return 0

    def _abort(self, exc: ProtocolError) -> None:
        self._messages_of_association().abandon()
        self._protocol_error(str(exc))

    def _messages_of_association(self) -> StoreMessages:
        if self._messages is None:
            contexts = {cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                        for cx in self.assoc.accepted_contexts
                        if cx.context_id is not None and cx.transfer_syntax}
            self._messages = StoreMessages(contexts, self._begin)
        return self._messages

    def _begin(self, command: Command, context: tuple[str, str]) -> Incoming:
        requestor = self.assoc.requestor
        abstract_syntax, transfer_syntax_uid = context
        return self._store(StoreRequestInfo(
            sop_class_uid=str(command.sop_class_uid),
            sop_instance_uid=str(command.sop_instance_uid),
            transfer_syntax_uid=transfer_syntax_uid,
            context_abstract_syntax=abstract_syntax,
            calling_ae_title=requestor.ae_title,
            calling_address=requestor.address,
            called_ae_title=called_ae_title(self.assoc),
            association_id=id(self.assoc),
        ))

    def _respond(self, request: StoreRequest) -> None:
        command = request.command
        try:
            status, comment = request.incoming.finish()
        except Exception:  # as pynetdicom does when its C-STORE handler raises
            LOGGER.exception("Exception in the handler bound to 'evt.EVT_C_STORE'")
            status, comment = _UNABLE_TO_PROCESS, ""
        response = store_response_command(
            int(command.message_id or 0), _valid(command.sop_class_uid), _valid(command.sop_instance_uid),
            status, comment,
        )
        maximum_pdu = self.assoc.requestor.maximum_length
        if maximum_pdu is None:  # PS3.8 D.1 requires one; raised, the association is aborted (run_reactor)
            raise ProtocolError("the A-ASSOCIATE-RQ had no Maximum Length Notification (PS3.8 D.1)")
        self.socket.send(_command_pdus(request.context_id, response, maximum_pdu))  # type: ignore[union-attr]


def called_ae_title(assoc: Association) -> str:
    """The Called AE Title of the association's A-ASSOCIATE-RQ, without its padding."""
    request = assoc.requestor.primitive
    if request is None:  # pynetdicom keeps it from the moment the request arrives
        raise RuntimeError("the association has no A-ASSOCIATE-RQ")
    return str(request.called_ae_title).strip()


def _valid(uid: str | None) -> str | None:
    """The request's UID, echoed in the response only if the peer can decode it (PS3.7 9.3.1.2: U)."""
    try:
        return validate_uid(uid, "UID")
    except InvalidInstance:
        return None


def _command_pdus(context_id: int, command: bytes, maximum_pdu: int) -> bytes:
    """The P-DATA-TF PDUs of a command set, in fragments that fit the peer's maximum PDU (0: any)."""
    size = maximum_pdu - 6 if maximum_pdu > 6 + 6 else len(command)  # a PDV item adds 6 bytes
    fragments = [command[start:start + size] for start in range(0, len(command), size)]
    return b"".join(
        p_data_tf([(context_id, COMMAND | (LAST if number == len(fragments) - 1 else 0), fragment)])
        for number, fragment in enumerate(fragments)
    )
