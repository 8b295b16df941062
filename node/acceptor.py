"""pynetdicom's association acceptor, with the waits taken out of its receive path.

pynetdicom 3.0 runs each association as two threads: the DUL reads PDUs from the socket and
queues complete DIMSE messages; the association's reactor takes them off the queue and calls the
handlers. Measured on one storescu association (py-spy, BENCHMARKS.md), three of its habits cost
time on every instance, and are changed here by subclassing, not by patching pynetdicom:

- the reactor sleeps a fixed 1 ms before each look at the message queue, so each complete
  request waits up to 1 ms before its handler runs: :class:`ReceivingAssociation` waits on the
  queue itself and serves a request the moment it is complete;
- the socket is read 4 KiB per ``recv`` call (128 calls, each a new bytes object, for a 512 KiB
  CT slice): :class:`ReceivingSocket` reads each PDU into one buffer with ``recv_into``;
- the DUL polls the socket (``select`` with a zero timeout) and sleeps whenever neither the
  socket nor its queue of outgoing primitives had anything, which delays each request and each
  response by up to that sleep (1 ms), or, with a shorter sleep, spends the CPU on polling:
  :class:`ReceivingSocket` waits in ``select`` on the socket *and* on a wake-up pipe that the
  queue of outgoing primitives writes to, so the DUL sleeps until there is work and starts it at once;
- each C-STORE response is built as a pydicom Dataset, encoded element by element and framed
  (0.9 ms of the ~7 ms a CT slice took): :class:`RespondingDIMSE` writes its seven elements
  straight to bytes (:func:`store_response_command`), the same bytes pynetdicom would send,
  and leaves every other message, and any response with an error comment, to pynetdicom.

Everything else (state machine, negotiation, events, timeouts, TLS) is pynetdicom's own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import ssl
import struct
import threading
import weakref
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

__all__ = [
    "ReceivingAssociation", "ReceivingSocket", "RespondingDIMSE", "start_receiving_server",
    "store_response_command",
]

# pynetdicom's association log, so that radnode's associations log as any other pynetdicom one
LOGGER = logging.getLogger("pynetdicom.association")

# How often the reactor and the DUL, while nothing arrives, check their timers and whether they
# were stopped (release, abort, ARTIM and network timeouts): pynetdicom's own 1 ms.
REACTOR_CHECK_SECONDS = 0.001


class ReceivingSocket(AssociationSocket):
    """An association socket that reads a whole PDU into one buffer, and whose :attr:`ready`
    waits until the peer sent data or :meth:`wake` was called (at most REACTOR_CHECK_SECONDS).
    """

    def enable_wakeup(self) -> None:
        """Create the wake-up pipe; it is closed when nothing can use it any more (garbage
        collection of this socket, which the DUL and the outgoing queue both hold)."""
        self._wake_receive, self._wake_send = os.pipe()
        os.set_blocking(self._wake_receive, False)
        os.set_blocking(self._wake_send, False)
        weakref.finalize(self, _close_pipe, self._wake_receive, self._wake_send)

    def wake(self) -> None:
        """End a wait in :attr:`ready`: the DUL has an outgoing primitive to send."""
        with contextlib.suppress(OSError):  # already pending (buffer full), or the association ended
            os.write(self._wake_send, b"\0")

    @property
    def ready(self) -> bool:
        """Whether data from the peer can be read, after waiting for it or for :meth:`wake`."""
        peer = self.socket if self._is_connected else None
        if isinstance(peer, ssl.SSLSocket) and peer.pending():
            return True  # TLS data already decrypted, which select cannot see
        watched: list[Any] = [self._wake_receive] if peer is None else [self._wake_receive, peer]
        try:
            readable, _, _ = select.select(watched, [], [], REACTOR_CHECK_SECONDS)
        except (OSError, ValueError):
            if peer is not None:  # Evt17: transport connection closed, as pynetdicom's socket says
                self.event_queue.put("Evt17")
            return False
        if self._wake_receive in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_receive, 4096)
        return peer is not None and peer in readable

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (fewer only if the peer closed the connection), as pynetdicom's."""
        buffer = bytearray(nr_bytes)
        nr_read = 0
        with memoryview(buffer) as view:
            while nr_read < nr_bytes:
                count = self.socket.recv_into(view[nr_read:], nr_bytes - nr_read)  # type: ignore[union-attr]
                if not count:
                    break
                nr_read += count
        if nr_read < nr_bytes:
            del buffer[nr_read:]
        return buffer


def _close_pipe(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


class ReceivingAssociation(Association):
    """An acceptor whose reactor serves each request as soon as the DUL has decoded it."""

    def _next_message(self) -> tuple[Any, Any]:
        try:
            return self.dimse.msg_queue.get(timeout=REACTOR_CHECK_SECONDS)
        except queue.Empty:
            return None, None

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's acceptor reactor, with its fixed 1 ms sleep replaced by a wait on the
        DIMSE message queue; every check it makes (release, abort, DUL alive, network timeout)
        is made in the same order, at least every :data:`REACTOR_CHECK_SECONDS`.
        """
        self._is_paused = False
        while not self._kill:
            # other threads pause the reactor (send_*() from an acceptor) through this checkpoint
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self._next_message()
            if msg:
                self._serve_request(msg, context_id)

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                LOGGER.info(
                    "Association Aborted" + (" (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else "")
                )
                self.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV fires for subscribers
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
_LAST_COMMAND_FRAGMENT = b"\x03"  # message control header: command, last fragment (PS3.8 E.2)


def _element(element: int, value: bytes) -> bytes:
    """One command element, Implicit VR Little Endian (the command set's encoding, PS3.7 6.3.1)."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid(value: str) -> bytes:
    encoded = value.encode("ascii")
    return encoded + b"\0" if len(encoded) % 2 else encoded


def store_response_command(rsp: C_STORE) -> bytes | None:
    """The encoded command set of a C-STORE response (PS3.7 9.3.1.2), or None when it carries more
    than status and UIDs (an error comment or offending element: pynetdicom encodes those)."""
    if rsp.MessageIDBeingRespondedTo is None or rsp.Status is None:
        return None
    if rsp.ErrorComment or rsp.OffendingElement:
        return None
    body = b"".join((
        _element(0x0002, _uid(rsp.AffectedSOPClassUID)) if rsp.AffectedSOPClassUID else b"",
        _element(0x0100, struct.pack("<H", _C_STORE_RSP)),
        _element(0x0120, struct.pack("<H", rsp.MessageIDBeingRespondedTo)),
        _element(0x0800, struct.pack("<H", _NO_DATA_SET)),
        _element(0x0900, struct.pack("<H", rsp.Status)),
        _element(0x1000, _uid(rsp.AffectedSOPInstanceUID)) if rsp.AffectedSOPInstanceUID else b"",
    ))
    return _element(0x0000, struct.pack("<I", len(body))) + body


class RespondingDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider; a plain C-STORE response goes out as bytes built directly."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        command = store_response_command(primitive) if isinstance(primitive, C_STORE) else None
        limit = self.maximum_pdu_size  # 0: no limit; a PDV adds 6 bytes to its fragment
        if command is None or 0 < limit < len(command) + 6 or self._sent_handlers_bound():
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + cast(bytes, command)))
        self.dul.send_pdu(pdata)

    def _sent_handlers_bound(self) -> bool:
        """Whether anything but pynetdicom's logging handler (which logs nothing for a C-STORE
        response) listens for sent messages: those need pynetdicom's message object."""
        return any(handler is not standard_dimse_sent_handler
                   for handler, _ in self.assoc.get_handlers(evt.EVT_DIMSE_SENT))


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """The DUL's queue of outgoing primitives; each put wakes the DUL's wait on the socket."""

    def __init__(self, sock: ReceivingSocket) -> None:
        super().__init__()
        self._socket = sock

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._socket.wake()


class _ReceivingRequestHandler(RequestHandler):
    """pynetdicom's request handler, building radnode's association and socket classes.

    pynetdicom constructs both inline; the subclasses only override methods, so the objects it
    built are given their class before the association thread starts.
    """

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.__class__ = ReceivingAssociation
        assoc.dimse.__class__ = RespondingDIMSE
        sock = cast(ReceivingSocket, assoc.dul.socket)
        sock.__class__ = ReceivingSocket
        sock.enable_wakeup()
        assoc.dul.to_provider_queue = _WakingQueue(sock)
        assoc.dul._run_loop_delay = 0  # the DUL waits in ReceivingSocket.ready instead
        return assoc


def start_receiving_server(ae: AE, address: tuple[str, int], **kwargs: Any) -> ThreadedAssociationServer:
    """Like ``ae.start_server(address, block=False, **kwargs)``, with the classes above."""
    server = ae.make_server(
        address, server_class=ThreadedAssociationServer, request_handler=_ReceivingRequestHandler, **kwargs
    )
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{address[1]}", daemon=True)
    thread.start()
    ae._servers.append(server)  # what start_server does: server.shutdown() removes it again
    return server
