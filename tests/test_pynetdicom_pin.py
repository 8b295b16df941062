"""An upgrade of pynetdicom fails here, by name, before it can change the receive path silently.

node/receive/acceptor.py, node/receive/bounded_dul.py and node/receive/stream_to_disk.py subclass
pynetdicom 3.0's DUL, association, request handler and server (node/delivery/send.py its AE and
socket, for outgoing associations), use some of their private attributes, and carry copies of two
of its loops (the DUL's and the acceptor's reactor) and of the server's ``get_request``. This test
pins what they rely on: the version pyproject.toml allows, each private name, and the source of
each upstream function that radnode copied or whose behaviour it builds on. When one fails, read
the new upstream code, carry its change into radnode's copy, then update the hash.
"""

from __future__ import annotations

import hashlib
import inspect
import tomllib
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from packaging.specifiers import SpecifierSet
from pynetdicom import _config, _handlers
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

#: upstream function → SHA-256 (first 16 hex digits) of its source in the pinned release
UPSTREAM_SOURCES: dict[Any, str] = {
    DULServiceProvider.run_reactor: "e3a10eb3a0931e48",  # copied: StoringDUL.run_reactor
    Association._run_reactor: "f28838c5559e462a",  # copied: ReceivingAssociation._run_reactor
    ThreadedAssociationServer.get_request: "925a4f3a3042f6e4",  # copied: _ReceivingServer.get_request
    DULServiceProvider._read_pdu_data: "19f2d4e38c13c835",  # reads recv(6), recv(length): BoundedDUL
    RequestHandler.handle: "034823fb4df3a874",  # called after the TLS handshake
    RequestHandler._create_association: "05c8d12b79863cdb",  # its objects get radnode's classes
    AssociationSocket.recv: "6bc20a33b1b7cfe7",  # replaced by ReceivingSocket.recv
    ApplicationEntity._create_socket: "f56bca8888e1ce9f",  # copied: RequestorAE._create_socket
    AssociationSocket._shutdown_socket: "e2b2628faa81a578",  # leaves a refused socket open: _ClosingSocket
}

#: private names radnode reads or sets, by owner
PRIVATE_NAMES: dict[Any, tuple[str, ...]] = {
    DULServiceProvider: ("_idle_timer", "_kill_thread", "_process_recv_primitive", "_is_transport_event",
                         "_read_pdu_data", "_run_loop_delay", "_decode_pdu"),
    Association: ("_run_reactor", "_kill", "_is_paused", "_reactor_checkpoint", "_serve_request",
                  "_dul_ready"),
    AssociationSocket: ("_is_connected", "_shutdown_socket"),
    ApplicationEntity: ("_servers", "_create_socket"),
    RequestHandler: ("_create_association",),
}


def _source_hash(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def test_installed_pynetdicom_is_the_version_pyproject_allows() -> None:
    (requirement,) = [r for r in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
                      if r.startswith("pynetdicom")]
    allowed = SpecifierSet(requirement.removeprefix("pynetdicom"))
    assert pynetdicom.__version__ in allowed, (pynetdicom.__version__, requirement)
    assert not list(allowed.filter(["3.1.0"])), "the pin must exclude the next minor version"


@pytest.mark.parametrize("function", list(UPSTREAM_SOURCES), ids=lambda f: f.__qualname__)
def test_upstream_code_radnode_copied_or_builds_on_is_unchanged(function: Any) -> None:
    assert _source_hash(function) == UPSTREAM_SOURCES[function], (
        f"pynetdicom {pynetdicom.__version__} changed {function.__module__}.{function.__qualname__}: "
        "compare it with radnode's copy (node/receive/acceptor.py, node/receive/stream_to_disk.py, "
        "node/receive/bounded_dul.py, node/delivery/send.py)"
    )


@pytest.mark.parametrize("owner", list(PRIVATE_NAMES), ids=lambda owner: owner.__name__)
def test_private_names_radnode_uses_still_exist(owner: Any) -> None:
    instance_attributes = inspect.getsource(owner.__init__) if hasattr(owner, "__init__") else ""
    missing = [name for name in PRIVATE_NAMES[owner]
               if not hasattr(owner, name) and f"self.{name}" not in instance_attributes]
    assert not missing, f"pynetdicom {pynetdicom.__version__}: {owner.__name__} has no {missing}"


def test_module_level_switches_radnode_sets_still_exist() -> None:
    assert isinstance(_config.UNRESTRICTED_STORAGE_SERVICE, bool)
    assert hasattr(_config, "LOG_HANDLER_LEVEL")
    assert _handlers.__name__ == "pynetdicom._handlers"
