"""Peers that break the Upper Layer protocol on purpose cannot stop, bloat or fool the listener.

Each case is written by hand with tests/raw_peer.py on loopback against an in-process listener
(tests/inprocess_node.py) with a 2 s network timeout: declared lengths that lie, PDUs over the
limits, stalls at every stage, garbage after a protocol error, a C-STORE on another class's
presentation context, a deflate bomb, malformed header values, an instance re-sent under a
corrected series, and a bounded fuzz run of PDU streams (Hypothesis, fixed seed and count).
Each asserts what the node did (closed the connection, answered a status, stored or not) and
that the listener's memory grew by less than :data:`MEMORY_BOUND`, a good peer (pynetdicom) was
answered within :data:`GOOD_PEER_S`, and no partial file was left behind.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification
from sqlalchemy import select

from node.db import Instance
from node.dimse import StoreStatus
from node.receive.pdata import COMMAND, LAST, P_DATA_TF, PDU_HEADER, p_data_tf
from node.spool.store import InstanceHeader, read_header
from tests.dimse_bytes import store_request_command
from tests.inprocess_node import AE_TITLE, InProcessNode
from tests.raw_peer import A_ABORT, A_ASSOCIATE_AC, Context, RawPeer, associate_rq, pdu

NETWORK_TIMEOUT_S = 2.0
MEMORY_BOUND = 64 << 20  # what one hostile connection may add to the listener's memory
GOOD_PEER_S = 1.0  # a good peer's C-ECHO, while the hostile ones are connected
ADMISSION_TRIES = 50  # every 0.1 s: connections that just closed end their threads first
CONTEXTS = [Context(1, Verification), Context(3, CTImageStorage), Context(5, MRImageStorage)]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessNode]:
    with InProcessNode(tmp_path_factory.mktemp("node"), network_timeout_seconds=NETWORK_TIMEOUT_S,
                       max_associations=8) as running:
        yield running


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _echo_seconds(port: int) -> float:
    """How long a good peer's association and C-ECHO take; fails if it is not answered Success."""
    ae = AE(ae_title="GOODPEER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    start = time.monotonic()
    association = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert association.is_established, "a good peer was not admitted"
    status = association.send_c_echo()
    association.release()
    assert status.Status == 0
    return time.monotonic() - start


def _explicit_le(ds: pydicom.Dataset) -> bytes:
    """``ds`` as a data set on the wire: Explicit VR Little Endian, no file meta."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _ct_data_set(chest_ct_dir: Path) -> tuple[pydicom.Dataset, bytes]:
    ds = pydicom.dcmread(sorted(chest_ct_dir.glob("*.dcm"))[0])
    return ds, _explicit_le(ds)


def read_header_of(ds: pydicom.Dataset) -> InstanceHeader:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return read_header(buffer.getvalue())


def _incoming_files(node: InProcessNode) -> list[Path]:
    folder = node.spool.root / ".incoming"
    return sorted(folder.iterdir()) if folder.exists() else []


# --- memory: nothing allocated from a declared length ---------------------------------------------

def test_pdus_declaring_4_gib_cost_no_memory_are_aborted_and_a_good_peer_is_served(node) -> None:
    before = _rss()
    peers = [RawPeer(node.port) for _ in range(3)]
    try:
        for peer in peers:  # an A-ASSOCIATE-RQ "of 4 GiB", 10 bytes of it sent
            peer.send(PDU_HEADER.pack(0x01, 0, 0xFFFF_FFF0) + b"0123456789")
        assert _echo_seconds(node.port) < GOOD_PEER_S
        for peer in peers:
            answer = peer.read_pdu()
            assert answer is not None and answer[0] == A_ABORT, answer
            assert peer.closed_within(NETWORK_TIMEOUT_S + 5) is not None, "the hostile connection stayed open"
    finally:
        for peer in peers:
            peer.close()
    assert _rss() - before < MEMORY_BOUND * len(peers)


def test_a_p_data_pdu_longer_than_the_announced_maximum_is_aborted_before_its_body(node) -> None:
    before = _rss()
    with RawPeer(node.port) as peer:
        assert peer.associate(AE_TITLE, CONTEXTS) == {1, 3, 5}
        peer.send(PDU_HEADER.pack(P_DATA_TF, 0, 1 << 30) + bytes(4096))  # "1 GiB", maximum is 1 MiB
        answer = peer.read_pdu()
        assert answer is not None and answer[0] == A_ABORT, answer
        assert peer.closed_within(NETWORK_TIMEOUT_S + 5) is not None
    assert _rss() - before < MEMORY_BOUND
    assert _echo_seconds(node.port) < GOOD_PEER_S


def _empty_pdvs(context_id: int, control: int) -> bytes:
    """A 1 MiB P-DATA-TF of empty PDV items: 174,762 objects once decoded."""
    count = ((1 << 20) - 6) // 6
    return pdu(P_DATA_TF, (struct.pack(">LBB", 2, context_id, control)) * count)


@pytest.mark.parametrize("inside_a_data_set", [False, True], ids=["between messages", "inside a data set"])
def test_a_p_data_pdu_of_countless_empty_pdvs_is_aborted_for_it(
    node, inside_a_data_set: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    before = _rss()
    with RawPeer(node.port) as peer:
        assert peer.associate(AE_TITLE, CONTEXTS) == {1, 3, 5}
        if inside_a_data_set:
            peer.send(p_data_tf([(3, COMMAND | LAST, store_request_command(1, CTImageStorage, "1.2.3.5"))]))
        peer.send(_empty_pdvs(3, 0) if inside_a_data_set else _empty_pdvs(1, COMMAND))
        answer = peer.read_pdu()
        assert answer is not None and answer[0] == A_ABORT, answer
        assert peer.closed_within(NETWORK_TIMEOUT_S + 5) is not None
    assert _rss() - before < MEMORY_BOUND
    assert _echo_seconds(node.port) < GOOD_PEER_S
    assert "1.2.3.5" not in node.stored_uids()
    lines = [record.getMessage() for record in caplog.records]
    assert any("more than 128 PDV items" in line for line in lines), lines


# --- time: a stall anywhere ends the association after the network timeout ------------------------

def _stall_before_associating(peer: RawPeer) -> None:
    pass


def _stall_inside_the_associate_request(peer: RawPeer) -> None:
    request = associate_rq(AE_TITLE, "STALLING", CONTEXTS)
    peer.send(request[: len(request) // 2])


def _stall_inside_a_pdu(peer: RawPeer) -> None:
    peer.associate(AE_TITLE, CONTEXTS)
    peer.send(PDU_HEADER.pack(P_DATA_TF, 0, 1000) + bytes(100))


def _stall_inside_a_data_set(peer: RawPeer) -> None:
    peer.associate(AE_TITLE, CONTEXTS)
    peer.send(p_data_tf([(3, COMMAND | LAST, store_request_command(1, CTImageStorage, "1.2.3.4"))]))
    fragment = bytes(64 * 1024)
    peer.send(PDU_HEADER.pack(P_DATA_TF, 0, 6 + len(fragment)) + (len(fragment) + 2).to_bytes(4, "big")
              + bytes([3, 0]) + fragment[: len(fragment) // 2])


@pytest.mark.parametrize("stall", [_stall_before_associating, _stall_inside_the_associate_request,
                                   _stall_inside_a_pdu, _stall_inside_a_data_set],
                         ids=lambda stall: stall.__name__.removeprefix("_stall_"))
def test_a_peer_that_stalls_is_dropped_after_the_network_timeout_and_leaves_no_file(node, stall) -> None:
    peers = [RawPeer(node.port) for _ in range(4)]
    try:
        for peer in peers:
            stall(peer)
        assert _echo_seconds(node.port) < GOOD_PEER_S  # served while they stall
        for peer in peers:
            closed = peer.closed_within(NETWORK_TIMEOUT_S * 3 + 5)
            assert closed is not None, f"a peer stalling {stall.__name__} was never dropped"
    finally:
        for peer in peers:
            peer.close()
    deadline = time.monotonic() + 5
    while _incoming_files(node) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _incoming_files(node) == [], "a partly received file was left behind"


# --- logs: after a protocol error, the rest is dropped unread -------------------------------------

def test_after_a_protocol_error_the_rest_of_the_connection_is_dropped_with_one_line(
    node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with RawPeer(node.port) as peer:
        peer.associate(AE_TITLE, CONTEXTS)
        garbage = bytes(range(256)) * 8192  # 2 MiB; every 6 bytes read as a header is "a PDU"
        peer.send(pdu(0x09, b"no such PDU type") + garbage)
        assert peer.closed_within(NETWORK_TIMEOUT_S * 3 + 5) is not None
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) <= 3, lines
    assert any("unknown PDU type 0x09" in line for line in lines), lines
    assert _echo_seconds(node.port) < GOOD_PEER_S


def test_connections_that_never_associate_are_capped_and_their_slots_come_back_when_they_close(
    tmp_path: Path,
) -> None:
    with InProcessNode(tmp_path, network_timeout_seconds=30, max_associations=1) as small:
        idle = [RawPeer(small.port) for _ in range(2)]  # 2 × max_associations: all the slots
        try:
            time.sleep(0.5)
            with RawPeer(small.port) as extra:
                assert extra.closed_within(5) is not None, "a third unassociated connection was taken on"
        finally:
            for peer in idle:
                peer.close()
        # the idle ones are gone: their slots are free at once, not after the 30 s network timeout
        _admitted(small.port).close()


# --- integrity: a C-STORE only on its own presentation context ------------------------------------

def test_a_store_on_a_context_negotiated_for_another_class_is_refused_and_not_stored(
    node, chest_ct_dir: Path
) -> None:
    ds, data_set = _ct_data_set(chest_ct_dir)
    command = store_request_command(7, CTImageStorage, ds.SOPInstanceUID)
    with RawPeer(node.port) as peer:
        assert peer.associate(AE_TITLE, CONTEXTS) == {1, 3, 5}
        assert peer.store(1, command, data_set) == StoreStatus.SOP_CLASS_NOT_SUPPORTED  # Verification
        assert peer.store(5, command, data_set) == StoreStatus.SOP_CLASS_NOT_SUPPORTED  # MR Image
        assert ds.SOPInstanceUID not in node.stored_uids()
        assert peer.store(3, command, data_set) == StoreStatus.SUCCESS  # CT Image: its own
    assert ds.SOPInstanceUID in node.stored_uids()


def _before_pixel_data(ds: pydicom.Dataset) -> bytes:
    without = copy.deepcopy(ds)
    del without.PixelData
    return _explicit_le(without)


@pytest.mark.parametrize("cut", ["inside the pixel data", "before the pixel data"])
def test_a_data_set_flagged_complete_before_its_end_is_refused_and_not_stored(
    node, chest_ct_dir: Path, cut: str
) -> None:
    ds, _ = _ct_data_set(chest_ct_dir)
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["cut", cut])
    whole = _explicit_le(ds)
    sent = whole[: len(whole) - 1000] if cut == "inside the pixel data" else _before_pixel_data(ds)
    command = store_request_command(11, CTImageStorage, ds.SOPInstanceUID)
    with RawPeer(node.port) as peer:
        assert peer.associate(AE_TITLE, CONTEXTS) == {1, 3, 5}
        assert peer.store(3, command, sent) == StoreStatus.CANNOT_DECODE  # the last fragment came early
        assert peer.store(3, command, whole) == StoreStatus.SUCCESS  # the same association goes on
    assert ds.SOPInstanceUID in node.stored_uids()
    stored = node.spool.path_for(read_header_of(ds))
    assert stored.read_bytes().endswith(whole), "what was stored is not the whole instance"


# --- memory: a deflated data set is inflated as a stream, within node.max_inflated_mb -------------

DEFLATED = "1.2.840.10008.1.2.1.99"


def _deflated(identifiers: bytes, zeros: int) -> bytes:
    """``identifiers`` then Pixel Data of ``zeros`` zero bytes, deflated in steps (never whole)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    pixel_header = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, zeros)
    parts = [deflater.compress(identifiers + pixel_header)]
    step = bytes(1 << 20)
    for start in range(0, zeros, len(step)):
        parts.append(deflater.compress(step[: min(len(step), zeros - start)]))
    return b"".join([*parts, deflater.flush()])


def test_a_deflated_data_set_is_inflated_as_a_stream_and_refused_past_the_ceiling(
    tmp_path: Path, chest_ct_dir: Path
) -> None:
    ds, _ = _ct_data_set(chest_ct_dir)
    identifiers = pydicom.Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"):
        setattr(identifiers, keyword, getattr(ds, keyword))
    bomb = _deflated(_explicit_le(identifiers), 64 << 20)  # 64 MiB of zeros: ~64 KiB on the wire
    small = _deflated(_explicit_le(identifiers), 1 << 20)
    command = store_request_command(1, CTImageStorage, ds.SOPInstanceUID)
    with InProcessNode(tmp_path, max_inflated_mb=16) as node, RawPeer(node.port) as peer:
        assert peer.associate(AE_TITLE, [Context(1, CTImageStorage, (DEFLATED,))]) == {1}
        before = _rss()
        assert peer.store(1, command, bomb) == StoreStatus.OUT_OF_RESOURCES
        assert _rss() - before < 16 << 20  # inflated in 1 MiB steps, never held
        assert node.stored_uids() == set() and _incoming_files(node) == []
        assert peer.store(1, command, small) == StoreStatus.SUCCESS  # within the ceiling: stored
        assert node.stored_uids() == {ds.SOPInstanceUID}


# --- parsing: every header value the listener reads, read defensively -----------------------------

def _with_raw_value(ds: pydicom.Dataset, tag: int, vr: str, value: bytes) -> bytes:
    """``ds`` encoded (explicit VR LE) with the element ``tag`` holding exactly ``value``'s bytes:
    written with a placeholder of the same length, which the bytes then replace."""
    placeholder = ("7" if vr == "IS" else "Z") * len(value)  # a value pydicom can write in that VR
    changed = copy.deepcopy(ds)
    with pydicom.config.disable_value_validation():
        changed[tag] = pydicom.DataElement(tag, vr, placeholder)
        encoded = _explicit_le(changed)
    assert encoded.count(placeholder.encode()) == 1
    return encoded.replace(placeholder.encode(), value)


@pytest.mark.parametrize(("tag", "vr", "value", "stored"), [
    (0x00200011, "IS", b"twelve", True),  # Series Number not a number: kept as unknown
    (0x00200011, "IS", b"99999999999999999999", True),  # not an IS (12 characters at most)
    (0x00080060, "CS", b"CT" * 300, True),  # a Modality 600 characters long
    (0x0020000D, "UI", b"1.2.3\n4", False),  # a newline in the Study Instance UID
    (0x0020000E, "UI", b"\xff\xfe", False),  # not even text
], ids=["series-number-text", "series-number-too-long", "modality-too-long", "uid-newline", "uid-binary"])
def test_a_malformed_header_value_gets_a_status_and_one_line_never_a_traceback(
    node, chest_ct_dir: Path, caplog: pytest.LogCaptureFixture, tag: int, vr: str, value: bytes, stored: bool
) -> None:
    caplog.set_level(logging.DEBUG)
    ds, _ = _ct_data_set(chest_ct_dir)
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[f"{tag:08X}", value.hex()])
    data_set = _with_raw_value(ds, tag, vr, value)
    with RawPeer(node.port) as peer:
        peer.associate(AE_TITLE, CONTEXTS)
        status = peer.store(3, store_request_command(1, CTImageStorage, ds.SOPInstanceUID), data_set)
    tracebacks = [record.getMessage() for record in caplog.records if record.exc_info]
    assert not tracebacks, tracebacks
    if stored:
        assert status == StoreStatus.SUCCESS and ds.SOPInstanceUID in node.stored_uids()
    else:
        assert status == StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
        assert ds.SOPInstanceUID not in node.stored_uids()
        refused = [r.getMessage() for r in caplog.records if "instance refused" in r.getMessage()]
        assert len(refused) == 1, refused


# --- fuzz: PDU streams no sender writes, within a fixed budget ------------------------------------

FUZZ_PDU_EXAMPLES = 60
_PDU_TYPES = st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]) | st.integers(0, 255)
_FRAGMENT = st.tuples(st.sampled_from([1, 3, 5]) | st.integers(0, 255), st.integers(0, 3),
                      st.binary(max_size=600))


@st.composite
def _hostile_pdu(draw: st.DrawFn, store_command: bytes) -> bytes:
    """One PDU as a broken or hostile peer writes it: any type, a true or lying length, any body;
    a P-DATA-TF of PDV items on any context with any control bits, a real C-STORE command among them."""
    pdu_type = draw(_PDU_TYPES)
    if pdu_type == P_DATA_TF and draw(st.booleans()):
        items = draw(st.lists(_FRAGMENT, min_size=1, max_size=5))
        if draw(st.booleans()):
            items.insert(0, (3, COMMAND | LAST, store_command))
        body = p_data_tf(items)[PDU_HEADER.size:]
    else:
        body = draw(st.binary(max_size=2000))
    declared = draw(st.just(len(body)) | st.integers(0, 2**32 - 1))
    return PDU_HEADER.pack(pdu_type, 0, declared) + body


def _admitted(port: int) -> RawPeer:
    """A peer whose association was accepted: the previous examples' connections may still be
    ending (the listener counts them against node.max_associations for a moment)."""
    for _ in range(ADMISSION_TRIES):
        peer = RawPeer(port)
        peer.send(associate_rq(AE_TITLE, "FUZZER", CONTEXTS))
        answer = peer.read_pdu()
        if answer is not None and answer[0] == A_ASSOCIATE_AC:
            return peer
        peer.close()
        time.sleep(0.1)
    raise AssertionError(f"the listener admitted no association for {ADMISSION_TRIES / 10} s")


def test_fuzzed_pdu_streams_leave_the_listener_serving_bounded_and_consistent(node) -> None:
    command = store_request_command(9, CTImageStorage, "1.2.826.0.1.3680043.10.1.99")
    before = _rss()
    cases = {"closed by the node": 0, "left open": 0}

    @settings(derandomize=True, database=None, deadline=None, max_examples=FUZZ_PDU_EXAMPLES,
              suppress_health_check=list(HealthCheck))
    @given(associate_first=st.booleans(), pdus=st.lists(_hostile_pdu(command), min_size=1, max_size=4))
    def hostile(associate_first: bool, pdus: list[bytes]) -> None:
        with _admitted(node.port) if associate_first else RawPeer(node.port) as peer:
            try:
                for data in pdus:
                    peer.send(data)
            except OSError:
                pass  # the node already dropped the connection
            closed = peer.closed_within(0.3)
        cases["closed by the node" if closed is not None else "left open"] += 1

    hostile()
    print(f"fuzzed PDU streams: {cases}")
    _admitted(node.port).close()  # the last examples' associations may still be ending
    assert _echo_seconds(node.port) < GOOD_PEER_S
    assert _rss() - before < MEMORY_BOUND
    deadline = time.monotonic() + NETWORK_TIMEOUT_S * 3
    while _incoming_files(node) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _incoming_files(node) == [], "partly received files were left behind"
    assert cases["closed by the node"] > 0


def test_an_instance_re_sent_under_a_corrected_series_moves_there_and_survives_recovery(
    tmp_path: Path, chest_ct_dir: Path
) -> None:
    ds, _ = _ct_data_set(chest_ct_dir)
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["re-sent", ds.SOPInstanceUID])
    corrected = copy.deepcopy(ds)
    corrected.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["fixed", ds.SeriesInstanceUID])
    with InProcessNode(tmp_path) as node:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ds.file_meta.TransferSyntaxUID)
        association = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
        for sent in (ds, corrected):
            assert association.send_c_store(sent).Status == StoreStatus.SUCCESS
        association.release()
        old_path = node.spool.path_for(read_header_of(ds))
        with node.db.session() as session:
            query = select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID)
            row = session.scalars(query).one()
            assert row.series.series_instance_uid == corrected.SeriesInstanceUID
            path = Path(row.path)
        assert path == node.spool.path_for(read_header_of(corrected)) and path.is_file()
        assert not old_path.exists(), "the file of the series it left is still there"
        assert node.listener.catalog.recover() == 0  # what a restart after a crash would remove
    assert node.stored_uids() == {ds.SOPInstanceUID}
