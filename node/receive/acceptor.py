"""pynetdicom's association acceptor, with the waits and copies taken out of its receive path.

pynetdicom 3.0 runs each association as two threads: the DUL reads PDUs from the socket and
queues complete DIMSE messages; the association's reactor takes them off the queue and calls the
handlers. Measured on one storescu association (py-spy, BENCHMARKS.md), its habits cost time on
every instance, and are changed here by subclassing, not by patching pynetdicom:

- C-STORE requests pass through its state machine, PDU, primitive and message objects and both
  threads: :class:`~node.receive.stream_to_disk.StoringDUL` serves them on the DUL thread, straight from the
  P-DATA bytes, and hands every other message back to pynetdicom; its loop also drops the
  ``time.sleep(0)`` pynetdicom makes on every turn (76 µs each on a virtual machine);
- the reactor sleeps a fixed 1 ms before each look at the message queue, so each complete
  request it serves (C-ECHO, release) waits up to 1 ms: :class:`ReceivingAssociation` waits on
  the queue itself;
- the socket is read 4 KiB per ``recv`` call (128 calls, each a new bytes object, for a 512 KiB
  CT slice): :class:`ReceivingSocket` reads each PDU into one buffer with ``recv_into``;
- the DUL polls the socket (``select`` with a zero timeout) and sleeps whenever neither the
  socket nor its queue of outgoing primitives had anything, which delays each request and each
  response by up to that sleep (1 ms), or, with a shorter sleep, spends the CPU on polling:
  :class:`ReceivingSocket` waits in ``select`` on the socket *and* on a wake-up pipe that the
  queue of outgoing primitives writes to, so the DUL sleeps until there is work and starts it at once.

It also holds the association against peers that break the protocol, which pynetdicom does not:

- memory follows the bytes that arrived, never a length a peer declared: a PDU is read in steps
  (:meth:`ReceivingSocket.recv`), and one longer than radnode announced (P-DATA-TF: the maximum
  PDU length of the A-ASSOCIATE-AC; any other: :data:`MAXIMUM_CONTROL_PDU_BYTES`) aborts the
  association before its body is read (:class:`BoundedDUL`);
- every read and write has the network timeout (pynetdicom's accepted sockets have none, so a
  peer that stopped inside a PDU held its thread forever), and a TLS handshake runs on the
  connection's own thread with that timeout, never on the thread that accepts connections;
- at most :data:`NEGOTIATING_PER_ASSOCIATION` × ``maximum_associations`` connections are at once
  between their TCP connect and their association's establishment (TLS handshake, A-ASSOCIATE-RQ);
  beyond that a new connection is closed at once with one log line, so idle or slow connections
  cannot take a thread each until the network timeout ends them;
- after an abort, what the peer still sends is discarded unread until it closes or the ARTIM
  timer closes the connection, instead of being parsed (and logged) as PDU after PDU.

Everything else (state machine, negotiation, events, timers, TLS) is pynetdicom's own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import threading
import weakref
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import AE, _handlers, evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.receive.bounded_dul import BoundedDUL
from node.receive.stream_to_disk import StoreHandler, StoringDUL

__all__ = ["ReceivingAssociation", "ReceivingSocket", "start_receiving_server"]

# pynetdicom's association log, so that radnode's associations log as any other pynetdicom one
LOGGER = logging.getLogger("pynetdicom.association")

# How often the DUL, while nothing arrives, checks its timers and whether it was stopped
# (release, abort, ARTIM and network timeouts): pynetdicom's own 1 ms.
REACTOR_CHECK_SECONDS = 0.001
# How often the association's reactor checks the same without being woken. It is woken by each
# message for it and each release or abort indication; with C-STORE requests served on the DUL
# thread it has nothing else to do, and waking every millisecond took the GIL from the DUL.
ASSOCIATION_CHECK_SECONDS = 0.05
# Connections between connect and association (TLS handshake, A-ASSOCIATE-RQ) at once, per
# association the listener admits: a flood of connections that never associate costs a bounded
# number of threads (each ends at the network timeout).
NEGOTIATING_PER_ASSOCIATION = 2
# A PDU is read into memory at most this much ahead of the bytes that arrived.
RECV_STEP_BYTES = 256 * 1024


class ReceivingSocket(AssociationSocket):
    """An association socket that reads a whole PDU into one buffer, whose :attr:`ready` waits
    until the peer sent data or :meth:`wake` was called (at most REACTOR_CHECK_SECONDS), and
    that can be given back bytes already read (:meth:`push_back`).
    """

    def enable_wakeup(self) -> None:
        """Create the wake-up pipe; it is closed when nothing can use it any more (garbage
        collection of this socket, which the DUL and the outgoing queue both hold)."""
        self._pushed_back = b""
        self._wake_receive, self._wake_send = os.pipe()
        os.set_blocking(self._wake_receive, False)
        os.set_blocking(self._wake_send, False)
        weakref.finalize(self, _close_pipe, self._wake_receive, self._wake_send)

    def wake(self) -> None:
        """End a wait in :attr:`ready`: the DUL has an outgoing primitive to send."""
        with contextlib.suppress(OSError):  # already pending (buffer full), or the association ended
            os.write(self._wake_send, b"\0")

    def push_back(self, data: bytes | bytearray) -> None:
        """Make ``data`` the next bytes :meth:`recv` returns, ahead of what the peer sends next:
        a PDU read by the C-STORE path (node/receive/stream_to_disk.py) and left to pynetdicom."""
        self._pushed_back = bytes(data) + self._pushed_back

    @property
    def ready(self) -> bool:
        """Whether data from the peer can be read, after waiting for it or for :meth:`wake`."""
        if self._pushed_back:
            return True
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

    def read_into(self, view: memoryview) -> int:
        """Fill ``view``; fewer bytes only if the peer closed the connection. Returns the count."""
        nr_read = min(len(view), len(self._pushed_back))
        if nr_read:
            view[:nr_read] = self._pushed_back[:nr_read]
            self._pushed_back = self._pushed_back[nr_read:]
        while nr_read < len(view):
            count = self.socket.recv_into(view[nr_read:], len(view) - nr_read)  # type: ignore[union-attr]
            if not count:
                break
            nr_read += count
        return nr_read

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (fewer only if the peer closed the connection), as pynetdicom's.

        The buffer grows with what arrived (doubling, from :data:`RECV_STEP_BYTES`), so a peer
        that declares 4 GiB and sends 10 bytes costs 256 KiB, not 4 GiB.
        """
        buffer = bytearray(min(nr_bytes, RECV_STEP_BYTES))
        filled = 0
        while True:
            with memoryview(buffer) as view:
                filled += self.read_into(view[filled:])
            if filled < len(buffer) or filled == nr_bytes:
                del buffer[filled:]
                return buffer
            buffer.extend(bytes(min(nr_bytes, 2 * len(buffer)) - len(buffer)))


def _close_pipe(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


class ReceivingAssociation(Association):
    """An acceptor whose reactor sleeps until the DUL has a message or an indication for it, and
    that holds its connection's negotiation slot until it is established or ended."""

    _negotiation_slot: threading.BoundedSemaphore | None = None

    def hold_negotiation_slot(self, slot: threading.BoundedSemaphore) -> None:
        self._negotiation_slot = slot

    def leave_negotiation(self) -> None:
        """Give the slot back (once, whoever calls first)."""
        slot, self._negotiation_slot = self._negotiation_slot, None
        if slot is not None:
            slot.release()

    def run(self) -> None:
        """The thread's body (pynetdicom's ``run_reactor``, bound as its target): the slot is given
        back however the association ends, negotiated or not."""
        try:
            super().run()
        finally:
            self.leave_negotiation()

    def _next_message(self) -> tuple[Any, Any]:
        try:
            return self.dimse.msg_queue.get(timeout=ASSOCIATION_CHECK_SECONDS)
        except queue.Empty:
            return None, None

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's acceptor reactor, with its fixed 1 ms sleep replaced by a wait on the
        DIMSE message queue; every check it makes (release, abort, DUL alive, network timeout)
        is made in the same order, on each wake-up and at least every :data:`ASSOCIATION_CHECK_SECONDS`.
        """
        self.leave_negotiation()  # established
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


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue between the DUL and the association whose every put also wakes its reader."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


# Events that fire per PDU or per DIMSE message: a subscriber to one of them (other than
# pynetdicom's own logging) needs pynetdicom's objects, so C-STORE requests are left to pynetdicom.
_MESSAGE_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_DIMSE_RECV,
                   evt.EVT_DATA_SENT, evt.EVT_PDU_SENT, evt.EVT_DIMSE_SENT)


class _ReceivingServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, holding the handler that the C-STORE path calls; TLS is set
    up on each connection's own thread (:meth:`_ReceivingRequestHandler.handle`)."""

    store: StoreHandler | None = None
    negotiating = threading.BoundedSemaphore(1)  # set per server by start_receiving_server

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = cast(socket.socket, self.socket).accept()
        if self.ssl_context:  # the handshake waits for the peer: not here, on the accepting thread
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address


class _ReceivingRequestHandler(RequestHandler):
    """pynetdicom's request handler, building radnode's association, DUL and socket classes.

    pynetdicom constructs them inline; the subclasses only override methods, so the objects it
    built are given their class before the association thread starts.
    """

    _holder: ReceivingAssociation | None = None  # the association, once it is created

    def handle(self) -> None:
        """Give the connection the network timeout and a negotiation slot, shake hands (TLS), then
        associate; the association gives the slot back once established or ended."""
        connection = cast(socket.socket, self.request)
        connection.settimeout(self.ae.network_timeout)
        negotiating = cast(_ReceivingServer, self.server).negotiating
        if not negotiating.acquire(blocking=False):
            limit = NEGOTIATING_PER_ASSOCIATION * self.ae.maximum_associations
            LOGGER.warning("Connection refused address=%s reason=%d connections are already negotiating "
                           "(%d × node.max_associations)", self.client_address[0], limit,
                           NEGOTIATING_PER_ASSOCIATION)
            self._close(connection)
            return
        if isinstance(connection, ssl.SSLSocket) and not self._shake_hands(connection):
            negotiating.release()
            self._close(connection)
            return
        self._negotiating = negotiating
        try:
            super().handle()
        except Exception:  # the association did not start: nobody else gives the slot back
            if self._holder is None:
                negotiating.release()
            elif not self._holder.is_alive():
                self._holder.leave_negotiation()
            raise

    def _shake_hands(self, connection: ssl.SSLSocket) -> bool:
        try:
            connection.do_handshake()
            return True
        except (OSError, ValueError) as exc:  # ssl.SSLError and TimeoutError are OSErrors
            LOGGER.warning("TLS handshake failed address=%s reason=%s", self.client_address[0],
                           "no answer within the network timeout" if isinstance(exc, TimeoutError) else exc)
            return False

    @staticmethod
    def _close(connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            connection.close()

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.__class__ = ReceivingAssociation
        self._holder = cast(ReceivingAssociation, assoc)
        self._holder.hold_negotiation_slot(self._negotiating)
        sock = cast(ReceivingSocket, assoc.dul.socket)
        sock.__class__ = ReceivingSocket
        sock.enable_wakeup()
        assoc.dul.to_provider_queue = _WakingQueue(sock.wake)  # outgoing primitives wake the DUL
        # release and abort indications wake the reactor (an empty message: it looks at the DUL)
        assoc.dul.to_user_queue = _WakingQueue(lambda: assoc.dimse.msg_queue.put((None, None)))
        assoc.dul._run_loop_delay = 0  # the DUL waits in ReceivingSocket.ready instead
        assoc.dul.__class__ = BoundedDUL
        store = cast(_ReceivingServer, self.server).store
        if store is not None and not _message_handlers_bound(assoc):
            assoc.dul.__class__ = StoringDUL
            cast(StoringDUL, assoc.dul).serve_stores(store)
        return assoc


def _message_handlers_bound(assoc: Association) -> bool:
    return any(not getattr(handler, "__module__", "").startswith(_handlers.__name__)
               for event in _MESSAGE_EVENTS  # notification events: a list of (handler, arguments)
               for handler, _ in cast(list[tuple[Callable[..., object], object]], assoc.get_handlers(event)))


def start_receiving_server(
    ae: AE, address: tuple[str, int], store: StoreHandler, **kwargs: Any
) -> ThreadedAssociationServer:
    """Like ``ae.start_server(address, block=False, **kwargs)``, with the classes above; C-STORE
    requests are served by ``store`` (bind ``evt.EVT_C_STORE`` as well, for those pynetdicom serves)."""
    server = cast(_ReceivingServer, ae.make_server(
        address, server_class=_ReceivingServer, request_handler=_ReceivingRequestHandler, **kwargs
    ))
    server.store = store
    server.negotiating = threading.BoundedSemaphore(NEGOTIATING_PER_ASSOCIATION * ae.maximum_associations)
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{address[1]}", daemon=True)
    thread.start()
    ae._servers.append(server)  # what start_server does: server.shutdown() removes it again
    return server
