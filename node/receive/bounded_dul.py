"""pynetdicom's DUL, reading each PDU within limits before pynetdicom parses it (PS3.8 9.3, D.1).

pynetdicom reads a PDU's 6-byte header and then as many bytes as the header declares, in one
allocation; a read that fails or stalls is logged with a traceback; after an abort it goes on
parsing whatever the peer still sends, logging each "PDU". Here each PDU is checked and read
whole first, then handed to pynetdicom from memory:

- a PDU type PS3.8 does not define, or a length over radnode's limit (P-DATA-TF: the maximum PDU
  length radnode announced; any other PDU: :data:`MAXIMUM_CONTROL_PDU_BYTES`), is a protocol
  error: one log line, and the state machine aborts (Evt19) before a byte of the body is read;
- so is a P-DATA-TF of more than :data:`MAXIMUM_PDVS_PER_PDU` PDV items: a 1 MiB PDU holds up to
  174,762 empty ones, each an object once decoded (over 100 MB), where real senders put one or two;
- a connection that closes or stalls (the socket has the network timeout, node/receive/acceptor.py)
  inside a PDU ends the association with one log line (Evt17);
- once the association is aborting (Sta13, awaiting the transport's close), what arrives is
  discarded unread, in bounded reads, until the peer closes or the ARTIM timer closes it.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom.dul import DULServiceProvider

from node.receive.pdata import P_DATA_TF, PDU_HEADER, count_items

__all__ = [
    "MAXIMUM_CONTROL_PDU_BYTES", "MAXIMUM_PDVS_PER_PDU", "UNLIMITED_PDU_BYTES", "BoundedDUL", "lost_reason",
]

LOGGER = logging.getLogger("pynetdicom.dul")

#: A-ASSOCIATE-RQ/AC/RJ, A-RELEASE and A-ABORT: 128 presentation contexts of 45 transfer syntaxes
#: each take about 150 KiB; no real peer comes near this.
MAXIMUM_CONTROL_PDU_BYTES = 1 << 20
#: DCMTK, dcm4che, pynetdicom and Orthanc send one PDV per PDU, a command and its data set two.
MAXIMUM_PDVS_PER_PDU = 128
#: The P-DATA-TF limit when radnode announces no maximum (0, "unlimited"): still a limit.
UNLIMITED_PDU_BYTES = 64 << 20
_PDU_TYPES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", P_DATA_TF: "P-DATA-TF",
              0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}
_ABORTING = "Sta13"  # awaiting the transport connection's close (PS3.8 9.2)
_AWAITING_REQUEST = "Sta2"  # transport connection open, awaiting A-ASSOCIATE-RQ
_DISCARD_BYTES = 64 * 1024


def lost_reason(exc: OSError | EOFError, inside: str) -> str:
    """Why a read ``inside`` a PDU or data set did not complete, for the one log line."""
    if isinstance(exc, EOFError):
        return f"the peer closed the connection inside {inside}"
    if isinstance(exc, TimeoutError):
        return f"no data within the network timeout, inside {inside}"
    return f"connection error: {exc}"


class BoundedDUL(DULServiceProvider):
    """A DUL that reads a PDU only within radnode's limits, then lets pynetdicom decode it."""

    def _read_pdu_data(self) -> None:
        if self.state_machine.current_state == _ABORTING:
            self._discard()
            return
        header = self._read_pdu_header()
        if header is None:
            return
        body = self._read_exactly(PDU_HEADER.unpack(header)[2])
        if body is None or (header[0] == P_DATA_TF and self.too_many_items(body)):
            return
        sock: Any = self.socket
        sock.push_back(header + body)  # pynetdicom decodes it from memory: no read can block
        super()._read_pdu_data()

    def _read_pdu_header(self) -> bytearray | None:
        """The next PDU's header, once its type and length are within the limits; else None (the
        state machine has its event: transport closed, or an invalid PDU)."""
        header = self._read_exactly(PDU_HEADER.size)
        if header is None:
            return None
        pdu_type, _, length = PDU_HEADER.unpack(header)
        name = _PDU_TYPES.get(pdu_type)
        limit = self._limit(pdu_type)
        if name is None or length > limit:
            reason = (f"unknown PDU type 0x{pdu_type:02X}" if name is None
                      else f"a {name} PDU of {length} bytes exceeds the limit of {limit}")
            self._protocol_error(reason)
            return None
        return header

    def too_many_items(self, body: bytes | bytearray) -> bool:
        """Whether a P-DATA-TF body holds more PDV items than allowed (then the abort has begun)."""
        if count_items(body, stop_after=MAXIMUM_PDVS_PER_PDU) <= MAXIMUM_PDVS_PER_PDU:
            return False
        self._protocol_error(f"a P-DATA-TF PDU holds more than {MAXIMUM_PDVS_PER_PDU} PDV items")
        return True

    def _limit(self, pdu_type: int) -> int:
        if pdu_type != P_DATA_TF:
            return MAXIMUM_CONTROL_PDU_BYTES
        announced = int(self.assoc.acceptor.maximum_length or 0)
        return announced if announced > 0 else UNLIMITED_PDU_BYTES

    def _read_exactly(self, count: int) -> bytearray | None:
        """``count`` bytes from the peer, or None when it closed or stalled (then Evt17)."""
        sock: Any = self.socket
        try:
            data: bytearray = sock.recv(count)
        except OSError as exc:
            self._transport_lost(lost_reason(exc, "a PDU"))
            return None
        if len(data) < count:
            self._transport_lost(lost_reason(EOFError(), "a PDU") if data else
                                 "the peer closed the connection")
            return None
        return data

    def _transport_lost(self, reason: str) -> None:
        LOGGER.error("Association dropped address=%s reason=%s", self._peer(), reason)
        self._end_the_wait_for_a_request()
        self.event_queue.put("Evt17")  # transport connection closed

    def _protocol_error(self, reason: str) -> None:
        """Abort: one line; the rest of what the peer sends is discarded (Sta13), not parsed."""
        LOGGER.error("Association aborted address=%s reason=%s (PS3.8 9.3)", self._peer(), reason)
        self._end_the_wait_for_a_request()
        self.event_queue.put("Evt19")  # invalid PDU: A-ABORT, then await the close

    def _end_the_wait_for_a_request(self) -> None:
        """Before an A-ASSOCIATE-RQ the association thread waits for it up to the ACSE timeout,
        holding its negotiation slot (node/receive/acceptor.py) after the connection is gone; ``None`` is
        what that wait returns on its timeout: the thread ends the association now."""
        if self.state_machine.current_state == _AWAITING_REQUEST:
            self.to_user_queue.put(None)  # type: ignore[arg-type]

    def _discard(self) -> None:
        sock: Any = self.socket
        try:
            received = sock.socket.recv(_DISCARD_BYTES) if sock.socket is not None else b""
        except OSError:
            received = b""
        if not received:
            self.event_queue.put("Evt17")

    def _peer(self) -> str:
        return str(self.assoc.requestor.address or "?")
