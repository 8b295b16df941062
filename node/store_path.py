"""C-STORE requests served on the thread that reads the socket, straight from the P-DATA bytes.

pynetdicom hands each received PDU through its state machine, PDU and primitive objects, a queue
to the association's thread, a DIMSE message object and the service class before the C-STORE
handler runs; the data set is copied five times on the way, and the two threads take turns.
Measured on one storescu association, that was most of the listener's ~4 ms of CPU per CT slice
(BENCHMARKS.md). Here, while the association is established, the DUL thread reads each P-DATA-TF
PDU itself (node/pdata.py): a C-STORE request's data set goes from the PDU into the Part 10 file's
buffer (one copy), the handler stores it, and the response goes out as bytes from the same thread.

Everything else stays pynetdicom's: association negotiation, release, abort, timers, C-ECHO and
any message this path does not serve, which it hands back to pynetdicom as the PDU it received
(node/acceptor.py's socket puts the bytes back in front of the stream). It only takes a message
that begins a PDU's item with a whole C-STORE-RQ command set on an accepted presentation context;
from the first item it does not take, the rest of that PDU, and every item up to the end of that
message, is pynetdicom's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.dul import DULServiceProvider

from node.part10 import PREAMBLE, file_meta
from node.pdata import (
    COMMAND,
    LAST,
    P_DATA_TF,
    Command,
    PresentationDataValue,
    p_data_tf,
    presentation_data_values,
    read_command,
    store_response_command,
)

__all__ = ["ReceivedInstance", "StoreHandler", "StoreMessages", "StoreRequest", "StoringDUL"]

LOGGER = logging.getLogger("pynetdicom.dul")

_UNABLE_TO_PROCESS = 0xC211  # what pynetdicom answers when the C-STORE handler raised


@dataclass(frozen=True)
class ReceivedInstance:
    """One received C-STORE data set as a Part 10 file, and the association it came on."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    part10: bytes | bytearray
    calling_ae_title: str
    calling_address: str
    called_ae_title: str
    association_id: int


# Stores an instance; returns the response's Status and ErrorComment ("" for none).
StoreHandler = Callable[[ReceivedInstance], tuple[int, str]]


@dataclass
class StoreRequest:
    """A C-STORE request being assembled: its command and its Part 10 file so far."""

    context_id: int
    transfer_syntax_uid: str
    command: Command
    part10: bytearray


class ProtocolError(Exception):
    """The peer broke PS3.8 inside a C-STORE request: the association is aborted."""


class StoreMessages:
    """Follows the DIMSE messages of one association's P-DATA and assembles those served here."""

    def __init__(self, transfer_syntaxes: dict[int, str]) -> None:
        self._transfer_syntaxes = transfer_syntaxes  # accepted presentation context ID → its syntax
        self._request: StoreRequest | None = None  # a C-STORE request assembled here
        self._foreign_command: bytearray | None = None  # pynetdicom's message, its command so far
        self._foreign_data = False  # pynetdicom's message, its data set to come

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

    def _own(self, item: PresentationDataValue, complete: list[StoreRequest]) -> bool:
        request = self._request
        if request is None:
            if item.control != COMMAND | LAST or item.context_id not in self._transfer_syntaxes:
                return False
            try:
                command = read_command(item.value)
            except ValueError:
                return False
            if not command.is_store_request:
                return False
            syntax = self._transfer_syntaxes[item.context_id]
            prefix = PREAMBLE + file_meta(str(command.sop_class_uid), str(command.sop_instance_uid), syntax)
            self._request = StoreRequest(item.context_id, syntax, command, bytearray(prefix))
            return True
        if item.control & COMMAND or item.context_id != request.context_id:
            self._request = None
            kind = "command" if item.control & COMMAND else "data"
            raise ProtocolError(
                f"a C-STORE request's data set was interrupted by a {kind} fragment on presentation "
                f"context {item.context_id} (PS3.8 9.3.5.1)"
            )
        request.part10 += item.value
        if item.control & LAST:
            complete.append(request)
            self._request = None
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


class StoringDUL(DULServiceProvider):
    """pynetdicom's DUL, serving C-STORE requests itself while the association is established."""

    _store: StoreHandler
    _messages: StoreMessages | None

    def serve_stores(self, store: StoreHandler) -> None:
        """Serve C-STORE requests with ``store`` from now on (before the thread starts)."""
        self._store = store
        self._messages = None

    def _read_pdu_data(self) -> None:
        if self.state_machine.current_state != "Sta6":  # not established: all pynetdicom's
            super()._read_pdu_data()
            return
        sock: Any = self.socket
        header = sock.recv(6)
        if len(header) == 6 and header[0] == P_DATA_TF:
            length = int.from_bytes(header[2:6], "big")
            body = sock.recv(length)
            if len(body) == length:
                try:
                    requests, rest = self._messages_of_association().take(body)
                except ValueError:
                    requests, rest = [], bytes(header + body)
                except ProtocolError as exc:
                    LOGGER.error("Aborting the association: %s", exc)
                    self.event_queue.put("Evt19")  # invalid PDU: pynetdicom sends A-P-ABORT
                    return
                for request in requests:
                    self._respond(request)
                if rest is None:
                    return
                header, body = rest, b""
            header += body  # a short PDU: pynetdicom reports the connection closed
        sock.push_back(header)
        super()._read_pdu_data()

    def _messages_of_association(self) -> StoreMessages:
        if self._messages is None:
            syntaxes = {cx.context_id: str(cx.transfer_syntax[0]) for cx in self.assoc.accepted_contexts
                        if cx.context_id is not None and cx.transfer_syntax}
            self._messages = StoreMessages(syntaxes)
        return self._messages

    def _respond(self, request: StoreRequest) -> None:
        assoc = self.assoc
        command = request.command
        instance = ReceivedInstance(
            sop_class_uid=str(command.sop_class_uid),
            sop_instance_uid=str(command.sop_instance_uid),
            transfer_syntax_uid=request.transfer_syntax_uid,
            part10=request.part10,
            calling_ae_title=assoc.requestor.ae_title,
            calling_address=assoc.requestor.address,
            called_ae_title=str(assoc.requestor.primitive.called_ae_title).strip(),  # type: ignore[union-attr]
            association_id=id(assoc),
        )
        try:
            status, comment = self._store(instance)
        except Exception:  # as pynetdicom does when its C-STORE handler raises
            LOGGER.exception("Exception in the handler bound to 'evt.EVT_C_STORE'")
            status, comment = _UNABLE_TO_PROCESS, ""
        response = store_response_command(
            int(command.message_id or 0), command.sop_class_uid, command.sop_instance_uid, status, comment
        )
        self.socket.send(_command_pdus(request.context_id, response, assoc.requestor.maximum_length))  # type: ignore[union-attr]


def _command_pdus(context_id: int, command: bytes, maximum_pdu: int) -> bytes:
    """The P-DATA-TF PDUs of a command set, in fragments that fit the peer's maximum PDU (0: any)."""
    size = maximum_pdu - 6 if maximum_pdu > 6 + 6 else len(command)  # a PDV item adds 6 bytes
    fragments = [command[start:start + size] for start in range(0, len(command), size)]
    return b"".join(
        p_data_tf([(context_id, COMMAND | (LAST if number == len(fragments) - 1 else 0), fragment)])
        for number, fragment in enumerate(fragments)
    )
