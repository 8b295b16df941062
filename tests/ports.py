"""Free TCP ports for test servers (the approach of pynetdicom's ``tests/utils.py::get_port``).

The kernel picks an unused port for a socket bound to port 0; the socket is closed and the number
handed out. Another process can take the port in between, so servers started on it should retry on
"address in use". Ports already handed out by this process are never handed out twice.
"""

from __future__ import annotations

import socket
import threading

__all__ = ["free_port"]

_HANDED_OUT: set[int] = set()
_LOCK = threading.Lock()
_MAX_TRIES = 50


def free_port() -> int:
    """Return a TCP port that is free on every interface right now and not handed out before."""
    with _LOCK:
        for _ in range(_MAX_TRIES):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                # Bound on all interfaces: Orthanc and storescp listen on 0.0.0.0, not only loopback.
                sock.bind(("", 0))
                port: int = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise RuntimeError(f"no free TCP port found in {_MAX_TRIES} tries")
