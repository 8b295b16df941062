"""A DICOM peer that writes the Upper Layer protocol by hand (PS3.8 9.3), PDU by PDU.

For the tests of what the listener does with what no polite sender writes: lengths that lie,
PDUs cut short, stalls, garbage, commands on the wrong presentation context. Loopback only.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from node.receive.pdata import COMMAND, LAST, PDU_HEADER, p_data_tf, presentation_data_values, read_command

__all__ = ["A_ABORT", "A_ASSOCIATE_AC", "Context", "RawPeer", "associate_rq", "pdu"]

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ABORT = 0x01, 0x02, 0x07
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


@dataclass(frozen=True)
class Context:
    """A proposed presentation context: its ID (odd), abstract syntax and transfer syntaxes."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...] = (EXPLICIT_VR_LITTLE_ENDIAN,)


def pdu(pdu_type: int, body: bytes) -> bytes:
    """A PDU: type, reserved byte, big endian length, body."""
    return PDU_HEADER.pack(pdu_type, 0, len(body)) + body


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def associate_rq(called: str, calling: str, contexts: list[Context], max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing ``contexts``."""
    fixed = struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + bytes(32)
    items = _item(0x10, APPLICATION_CONTEXT.encode())
    for context in contexts:
        sub_items = _item(0x30, context.abstract_syntax.encode()) + b"".join(
            _item(0x40, syntax.encode()) for syntax in context.transfer_syntaxes)
        items += _item(0x20, struct.pack(">BBBB", context.context_id, 0, 0, 0) + sub_items)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, b"1.2.826.0.1.3680043.10.1.1")
    return pdu(A_ASSOCIATE_RQ, fixed + items + _item(0x50, user))


def _accepted_contexts(body: bytes) -> set[int]:
    """The IDs of the presentation contexts an A-ASSOCIATE-AC body accepted (result 0)."""
    accepted, position = set(), 68  # protocol version … reserved: 68 bytes before the items
    while position + 4 <= len(body):
        item_type, _, length = struct.unpack_from(">BBH", body, position)
        if item_type == 0x21 and body[position + 6] == 0:
            accepted.add(body[position + 4])
        position += 4 + length
    return accepted


class RawPeer:
    """One TCP connection to the listener, driven byte by byte."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self) -> tuple[int, bytes] | None:
        """The next PDU (type, body), or None when the listener closed the connection."""
        header = self._read(PDU_HEADER.size)
        if header is None:
            return None
        pdu_type, _, length = PDU_HEADER.unpack(header)
        body = self._read(length)
        return None if body is None else (pdu_type, body)

    def associate(self, called: str, contexts: list[Context]) -> set[int]:
        """Associate; the accepted context IDs. Fails unless the listener accepts."""
        self.send(associate_rq(called, "RAWPEER", contexts))
        answer = self.read_pdu()
        assert answer is not None and answer[0] == A_ASSOCIATE_AC, f"not accepted: {answer!r}"
        return _accepted_contexts(answer[1])

    def store(self, context_id: int, command: bytes, data_set: bytes) -> int:
        """Send a C-STORE-RQ command and data set in one PDU each; the response's Status."""
        self.send(p_data_tf([(context_id, COMMAND | LAST, command)]))
        self.send(p_data_tf([(context_id, LAST, data_set)]))
        return self.response_status()

    def response_status(self) -> int:
        """The Status (0000,0900) of the next command the listener sends."""
        answer = self.read_pdu()
        assert answer is not None and answer[0] == 0x04, f"no P-DATA-TF answer: {answer!r}"
        (item,) = presentation_data_values(answer[1])
        assert read_command(item.value).command_field is not None
        return _status(bytes(item.value))

    def closed_within(self, seconds: float) -> float | None:
        """Seconds until the listener closed the connection (whatever it sent first, read and
        dropped), or None if it is still open after ``seconds``."""
        start = time.monotonic()
        self.sock.settimeout(0.2)
        while time.monotonic() - start < seconds:
            try:
                if not self.sock.recv(65536):
                    return time.monotonic() - start
            except TimeoutError:
                continue
            except ConnectionResetError:
                return time.monotonic() - start
        return None

    def _read(self, count: int) -> bytes | None:
        data = bytearray()
        while len(data) < count:
            try:
                chunk = self.sock.recv(count - len(data))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
        return bytes(data)


def _status(command_set: bytes) -> int:
    position = 0
    while position + 8 <= len(command_set):
        _, element, length = struct.unpack_from("<HHL", command_set, position)
        if element == 0x0900:
            return int(struct.unpack_from("<H", command_set, position + 8)[0])
        position += 8 + length
    raise AssertionError("the command has no Status")
