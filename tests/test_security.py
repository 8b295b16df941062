"""Who may talk to the node: allowed callers (A-ASSOCIATE-RJ with PS3.8 reasons) and DICOM TLS.

Real listeners on free loopback ports; the peers are pynetdicom and DCMTK (``echoscu``,
``storescu`` and ``storescp`` with ``+tls``); certificates are made by the openssl CLI per test.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from node.config import Destination, DestinationTLS, NodeConfig, parse_config
from node.db import Database, Instance, Series
from node.delivery.send import send_files
from node.errors import ConfigError, DestinationUnreachable
from node.ops.status import render_status
from node.receive.access import RejectDiagnostic
from node.receive.listener import AssociationTracker, Listener
from node.spool.store import Spool
from tests.corpus import send_datasets, synthetic_series
from tests.dcmtk import DCMTK_BIN, dcmtk_env, echoscu, storescu
from tests.inprocess_node import AE_TITLE, InProcessNode
from tests.node_process import RadnodeProcess
from tests.orthanc import wait_for
from tests.ports import free_port

OPENSSL = "/usr/bin/openssl"


def _associate(port: int, calling: str) -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=AE_TITLE)


def _rejection(assoc: Any) -> tuple[int, int, int]:
    assert assoc.is_rejected, "the association should have been rejected"
    rj = assoc.acceptor.primitive
    return rj.result, rj.result_source, rj.diagnostic


# -- allowed callers ---------------------------------------------------------------------------


def test_unknown_calling_ae_title_is_rejected_as_not_recognised_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = [{"ae_title": "CT_SCANNER"}, {"ae_title": "PACS"}]
    with InProcessNode(tmp_path, allowed_callers=rules) as node, caplog.at_level(logging.WARNING):
        known = _associate(node.port, "CT_SCANNER")
        assert known.is_established
        assert known.send_c_echo().Status == 0
        known.release()
        stranger = _associate(node.port, "STRANGER")
        # PS3.8 Table 9-21: rejected-permanent (1), DICOM UL service-user (1), calling AE not recognised (3)
        assert _rejection(stranger) == (1, 1, RejectDiagnostic.CALLING_AE_TITLE_NOT_RECOGNIZED)
    logged = [r.getMessage() for r in caplog.records if r.name == "radnode.access"]
    assert len(logged) == 1
    assert "calling_ae=STRANGER" in logged[0] and "address=127.0.0.1" in logged[0]


def test_caller_outside_the_allowed_networks_is_rejected_with_no_reason_given(tmp_path: Path) -> None:
    rules = [{"network": "10.20.0.0/16"}, {"ae_title": "CT_SCANNER", "network": "192.168.7.0/24"}]
    with InProcessNode(tmp_path, allowed_callers=rules) as node:
        # a known AE title from the wrong address, and any AE title from outside the networks
        for calling in ("CT_SCANNER", "ANYONE"):
            diagnostic = (
                RejectDiagnostic.NO_REASON_GIVEN
                if calling == "CT_SCANNER"
                else RejectDiagnostic.CALLING_AE_TITLE_NOT_RECOGNIZED
            )
            assert _rejection(_associate(node.port, calling)) == (1, 1, diagnostic)
    network_only = [{"network": "10.0.0.0/8"}]
    with InProcessNode(tmp_path / "b", allowed_callers=network_only) as node:
        assert _rejection(_associate(node.port, "ANYONE")) == (1, 1, RejectDiagnostic.NO_REASON_GIVEN)


def test_caller_matching_title_and_network_is_admitted_and_the_rest_are_not(tmp_path: Path) -> None:
    rules = [{"ae_title": "CT_SCANNER", "network": "127.0.0.0/8"}, {"network": "::1/128"}]
    with InProcessNode(tmp_path, allowed_callers=rules) as node:
        admitted = _associate(node.port, "CT_SCANNER")
        assert admitted.is_established
        admitted.release()
        assert _rejection(_associate(node.port, "MR_SCANNER"))[2] == (
            RejectDiagnostic.CALLING_AE_TITLE_NOT_RECOGNIZED
        )
        # DCMTK, as an independent peer, sees the same rejection reason
        refused = echoscu("127.0.0.1", node.port, AE_TITLE, calling_aet="MR_SCANNER")
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
        assert echoscu("127.0.0.1", node.port, AE_TITLE, calling_aet="CT_SCANNER").returncode == 0


def test_a_bad_allowed_callers_rule_is_a_configuration_error_naming_the_key(tmp_path: Path) -> None:
    text = (
        "storage: {path: ./spool}\ndatabase: {url: 'sqlite:///x.db'}\nbroker: {url: 'sqla+sqlite:///b.db'}\n"
        "node:\n  allowed_callers:\n    - network: 10.0.0.300/8\n    - {}\n"
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(text, base=tmp_path, source="radnode.yaml")
    problems = "\n".join(raised.value.problems)
    assert "radnode.yaml:6: node.allowed_callers.0.network: not an IP network" in problems
    assert "node.allowed_callers.1: a rule needs ae_title, network, or both" in problems


def test_audit_trail_names_the_sender_ae_and_address_in_rows_and_status(
    tmp_path: Path, chest_ct_dir: Path
) -> None:
    files = sorted(chest_ct_dir.glob("*.dcm"))[:3]
    with InProcessNode(tmp_path) as node:
        assert storescu("127.0.0.1", node.port, AE_TITLE, files, calling_aet="CT_SCANNER").returncode == 0
        with node.db.session() as session:
            instances = session.scalars(select(Instance)).all()
            series = session.scalars(select(Series)).one()
            assert {(i.calling_ae_title, i.calling_address) for i in instances} == {
                ("CT_SCANNER", "127.0.0.1")
            }
            assert (series.calling_ae_title, series.calling_address) == ("CT_SCANNER", "127.0.0.1")
        assert "from CT_SCANNER@127.0.0.1" in render_status(node.db)


# -- TLS ---------------------------------------------------------------------------------------


class _PKI:
    """A test CA with a server certificate for 127.0.0.1 and a client certificate, plus a
    client certificate from another ("rogue") CA that the node must not trust."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_key, self.ca_cert = _make_ca(folder, "ca")
        self.server_key, self.server_cert = _issue(folder, "ca", "server", "IP:127.0.0.1")
        self.client_key, self.client_cert = _issue(folder, "ca", "client")
        self.rogue_ca_key, self.rogue_ca_cert = _make_ca(folder, "rogue-ca")
        self.rogue_key, self.rogue_cert = _issue(folder, "rogue-ca", "rogue")


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", key, "-out", cert)
    return key, cert


def _issue(folder: Path, ca: str, name: str, san: str | None = None) -> tuple[Path, Path]:
    key, csr, cert, ext = (folder / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key, "-out", csr)
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", csr, "-CA", folder / f"{ca}.crt", "-CAkey", folder / f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", cert)
    return key, cert


def _openssl(*args: object) -> None:
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> _PKI:
    return _PKI(tmp_path_factory.mktemp("pki"))


def _tls_args(key: Path, cert: Path, ca: Path) -> list[str]:
    return ["+tls", str(key), str(cert), "+cf", str(ca)]


def test_tls_listener_stores_from_dcmtk_over_tls_and_refuses_plain_tcp(
    tmp_path: Path, pki: _PKI, chest_ct_dir: Path
) -> None:
    files = sorted(chest_ct_dir.glob("*.dcm"))[:2]
    tls = {"certificate": pki.server_cert, "private_key": pki.server_key}
    with InProcessNode(tmp_path, tls=tls) as node:
        sent = storescu("127.0.0.1", node.port, AE_TITLE, files,
                        extra_args=_tls_args(pki.client_key, pki.client_cert, pki.ca_cert))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert echoscu("127.0.0.1", node.port, AE_TITLE, timeout=30).returncode != 0  # plain TCP
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
    assert node.stored_uids() == expected


@pytest.mark.parametrize("idle", ["tcp-connection", "half-a-client-hello"])
def test_a_connection_that_never_finishes_its_tls_handshake_holds_up_no_one(
    tmp_path: Path, pki: _PKI, chest_ct_dir: Path, idle: str
) -> None:
    # the handshake runs on the connection's own thread: the accepting one goes on accepting;
    # and it has the network timeout, after which the node drops the idle connection
    files = sorted(chest_ct_dir.glob("*.dcm"))[:1]
    tls = {"certificate": pki.server_cert, "private_key": pki.server_key}
    with InProcessNode(tmp_path, tls=tls, network_timeout_seconds=3) as node, \
            socket.create_connection(("127.0.0.1", node.port), timeout=20) as stalled:
        if idle == "half-a-client-hello":
            stalled.sendall(bytes([0x16, 0x03, 0x01, 0x02, 0x00]) + b"\x01\x00")  # a record "of 512 bytes"
        sent = storescu("127.0.0.1", node.port, AE_TITLE, files, timeout=20,
                        extra_args=_tls_args(pki.client_key, pki.client_cert, pki.ca_cert))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        start = time.monotonic()
        stalled.settimeout(20)
        assert stalled.recv(1) == b"", "the node sent something to a peer that never said hello"
        assert time.monotonic() - start < 15, "the idle connection was not dropped after the timeout"
    assert node.stored_uids() == {pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID}


def test_tls_handshakes_beyond_twice_the_association_limit_are_refused_at_once(
    tmp_path: Path, pki: _PKI
) -> None:
    tls = {"certificate": pki.server_cert, "private_key": pki.server_key}
    with InProcessNode(tmp_path, tls=tls, network_timeout_seconds=30, max_associations=1) as node:
        stalled = [socket.create_connection(("127.0.0.1", node.port), timeout=5) for _ in range(2)]
        try:
            time.sleep(0.5)  # both are shaking hands (waiting for a ClientHello)
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as extra:
                assert extra.recv(1) == b"", "a third handshake was taken on"  # closed, long before 30 s
        finally:
            for connection in stalled:
                connection.close()


def test_tls_listener_that_requires_client_certificates_admits_only_the_ca_s_clients(
    tmp_path: Path, pki: _PKI, chest_ct_dir: Path
) -> None:
    file = sorted(chest_ct_dir.glob("*.dcm"))[:1]
    tls = {
        "certificate": pki.server_cert,
        "private_key": pki.server_key,
        "ca_certificates": pki.ca_cert,
        "require_client_certificate": True,
    }
    with InProcessNode(tmp_path, tls=tls) as node:
        anonymous = storescu(
            "127.0.0.1", node.port, AE_TITLE, file, extra_args=["+tla", "+cf", str(pki.ca_cert)]
        )
        rogue = storescu("127.0.0.1", node.port, AE_TITLE, file,
                         extra_args=_tls_args(pki.rogue_key, pki.rogue_cert, pki.ca_cert))
        assert anonymous.returncode != 0 and rogue.returncode != 0
        assert node.stored_uids() == set()
        trusted = storescu("127.0.0.1", node.port, AE_TITLE, file,
                           extra_args=_tls_args(pki.client_key, pki.client_cert, pki.ca_cert))
        assert trusted.returncode == 0, trusted.stdout + trusted.stderr
        assert len(node.stored_uids()) == 1


class _TLSStoreSCP:
    """DCMTK ``storescp`` with TLS (client certificates required, its default ``-rc``): the
    independent receiver for delivery over TLS."""

    def __init__(self, folder: Path, pki: _PKI) -> None:
        self.folder, self.pki, self.port = folder, pki, free_port()
        folder.mkdir(parents=True)
        self.args = [
            str(DCMTK_BIN / "storescp"), "-aet", "TLSPACS", "-od", str(folder), "+xa", "-pm",
            *_tls_args(pki.server_key, pki.server_cert, pki.ca_cert),
            str(self.port),
        ]  # fmt: skip

    def __enter__(self) -> _TLSStoreSCP:
        self.log = open(self.folder.parent / "storescp.log", "wb")
        self.process = subprocess.Popen(self.args, env=dcmtk_env(), stdout=self.log, stderr=subprocess.STDOUT)
        tls = _tls_args(self.pki.client_key, self.pki.client_cert, self.pki.ca_cert)
        wait_for(
            lambda: subprocess.run(
                [str(DCMTK_BIN / "echoscu"), "-aec", "TLSPACS", *tls, "127.0.0.1", str(self.port)],
                capture_output=True, env=dcmtk_env(), timeout=30, check=False,
            ).returncode == 0,
            timeout=20, what="TLS storescp to answer C-ECHO",
        )
        return self

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()

    def received(self) -> list[Path]:
        return [p for p in self.folder.iterdir() if p.is_file()]


@pytest.fixture
def tls_pacs(tmp_path: Path, pki: _PKI) -> Iterator[_TLSStoreSCP]:
    with _TLSStoreSCP(tmp_path / "pacs", pki) as pacs:
        yield pacs


def _destination(port: int, tls: DestinationTLS | None) -> Destination:
    return Destination(ae_title="TLSPACS", host="127.0.0.1", port=port, tls=tls)


def test_delivery_over_tls_reaches_a_tls_peer_and_a_wrong_ca_is_refused(
    tls_pacs: _TLSStoreSCP, pki: _PKI, chest_ct_dir: Path
) -> None:
    file = sorted(chest_ct_dir.glob("*.dcm"))[:1]
    client = {"certificate": pki.client_cert, "private_key": pki.client_key}
    good = _destination(tls_pacs.port, DestinationTLS(ca_certificates=pki.ca_cert, **client))
    send_files(good, file, calling_ae_title=AE_TITLE, timeout_seconds=30)
    assert len(tls_pacs.received()) == 1
    # a peer whose certificate the configured CA did not sign is not trusted with the results
    wrong_ca = _destination(tls_pacs.port, DestinationTLS(ca_certificates=pki.rogue_ca_cert, **client))
    with pytest.raises(DestinationUnreachable):
        send_files(wrong_ca, file, calling_ae_title=AE_TITLE, timeout_seconds=30)
    # without TLS the peer is not reachable at all
    plain = _destination(tls_pacs.port, None)
    with pytest.raises(DestinationUnreachable):
        send_files(plain, file, calling_ae_title=AE_TITLE, timeout_seconds=10)
    assert len(tls_pacs.received()) == 1


def test_missing_tls_file_is_a_configuration_error_naming_the_key(tmp_path: Path, pki: _PKI) -> None:
    config = NodeConfig(
        port=free_port(), bind_address="127.0.0.1",
        tls={"certificate": tmp_path / "absent.crt", "private_key": pki.server_key},
    )
    db = Database(f"sqlite:///{tmp_path / 'radnode.db'}")
    db.create_schema()
    listener = Listener(config, Spool(tmp_path / "spool", 0), db, AssociationTracker())
    with pytest.raises(ConfigError, match=r"node\.tls\.certificate/private_key: cannot load"):
        listener.start()
    db.dispose()


# -- no patient data in logs -------------------------------------------------------------------


@pytest.mark.slow
def test_logs_of_a_whole_run_at_debug_level_carry_no_patient_name_id_or_birth_date(tmp_path: Path) -> None:
    datasets = synthetic_series(12)  # PatientName Synthetic^Patient, PatientID SYN-0001, born 19600101
    node = RadnodeProcess(
        tmp_path / "radnode", destinations={}, quiet_seconds=1,
        routes=[{"match": {"Modality": "CT"}, "pipelines": ["lung-qct"]}],
        extra={"logging": {"level": "DEBUG"}},
    )
    with node:
        assert set(send_datasets(node.port, datasets, calling="CT_SCANNER")) == {0}
        wait_for(lambda: node.cli("status").stdout, until=lambda out: "not_applicable" in out,
                 timeout=180, interval=1, what="the job to end")
    log = node.log_path.read_text(errors="replace")
    assert "job ended" in log and "CT_SCANNER" in log  # the log is there, with AE titles and UIDs
    header = datasets[0]
    for phi in ("Synthetic", "SYN-0001", str(header.PatientBirthDate), "1960-01-01"):
        assert phi not in log, phi
