"""The listener stores durably before answering Success, and refuses bad input precisely.

A real pynetdicom listener on a free loopback port, real files from tests/data, real SQLite; the
peers are pynetdicom's SCU and DCMTK's echoscu/storescu.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from node.config import NodeConfig
from node.db import Database, Instance, Series, SeriesState
from node.dimse import StoreStatus
from node.receive.listener import AssociationTracker, Listener
from node.spool.store import Spool
from tests.dcmtk import echoscu, storescu
from tests.dimse_bytes import store_request_command
from tests.orthanc import wait_for
from tests.ports import free_port

AE_TITLE = "RADNODE"


class _Node:
    def __init__(self, root: Path, **config: object) -> None:
        self.port = free_port()
        self.spool = Spool(root / "spool", min_free_bytes=0)
        self.db = Database(f"sqlite:///{root / 'radnode.db'}")
        self.db.create_schema()
        self.tracker = AssociationTracker()
        config = NodeConfig(ae_title=AE_TITLE, port=self.port, bind_address="127.0.0.1", **config)
        self.listener = Listener(config, self.spool, self.db, self.tracker)

    def stored_uids(self) -> set[str]:
        with self.db.session() as session:
            return set(session.scalars(select(Instance.sop_instance_uid)))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[_Node]:
    node = _Node(tmp_path)
    node.listener.start()
    yield node
    node.listener.stop()
    node.db.dispose()


@pytest.fixture(autouse=True)
def send_files_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pynetdicom put a file's bytes on the wire undecoded, as a broken modality would."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)


@pytest.fixture
def association(node: _Node) -> Iterator:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
    assert assoc.is_established
    yield assoc
    if assoc.is_established:
        assoc.release()


def _slices(chest_ct_dir: Path, count: int) -> list[Path]:
    return sorted(chest_ct_dir.glob("*.dcm"))[:count]


def _write_with_body(path: Path, template: Path, body: bytes) -> Path:
    """A Part 10 file whose meta comes from a real file and whose dataset bytes are ``body``."""
    meta_end = _meta_end(template)
    path.write_bytes(template.read_bytes()[:meta_end] + body)
    return path


def _meta_end(path: Path) -> int:
    with open(path, "rb") as handle:
        pydicom.filereader.read_preamble(handle, force=False)
        pydicom.filereader._read_file_meta_info(handle)
        return handle.tell()


def test_success_is_answered_only_after_the_file_and_its_row_exist(
    node: _Node, association, chest_ct_dir: Path
) -> None:
    for path in _slices(chest_ct_dir, 3):
        ds = pydicom.dcmread(path)
        status = association.send_c_store(path)
        assert status.Status == StoreStatus.SUCCESS
        # At the moment Success arrived, the row was committed (another connection sees it) …
        with node.db.session() as session:
            row = session.scalar(
                select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID)
            )
        assert row is not None
        # … and the file is complete: the received bytes, decodable, pixel data intact.
        stored = pydicom.dcmread(row.path)
        assert stored.SOPInstanceUID == ds.SOPInstanceUID
        assert stored.PixelData == ds.PixelData
        assert Path(row.path) == node.spool.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / (
            f"{ds.SOPInstanceUID}.dcm"
        )
    assert not list(node.spool.root.rglob("*.tmp")), "no temporary file may remain"


def test_free_space_floor_answers_out_of_resources_and_the_association_goes_on(
    node: _Node, association, chest_ct_dir: Path
) -> None:
    first, second = _slices(chest_ct_dir, 2)
    node.spool.min_free_bytes = 2**62  # more than any disk: the floor is reached
    refused = association.send_c_store(first)
    assert refused.Status == StoreStatus.OUT_OF_RESOURCES
    assert "free-space floor" in refused.ErrorComment
    node.spool.min_free_bytes = 0  # space returns
    accepted = association.send_c_store(second)
    assert accepted.Status == StoreStatus.SUCCESS
    assert node.stored_uids() == {pydicom.dcmread(second, stop_before_pixels=True).SOPInstanceUID}
    assert not [p for p in node.spool.root.rglob("*") if p.is_file() and p.suffix != ".dcm"]


def test_non_dicom_bytes_get_cannot_understand_and_a_log_line(
    node: _Node, association, chest_ct_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    template = _slices(chest_ct_dir, 1)[0]
    garbage = _write_with_body(tmp_path / "garbage.dcm", template, b"this is not a dataset\x00" * 40)
    with caplog.at_level(logging.WARNING, logger="radnode.listener"):
        status = association.send_c_store(garbage)
    assert status.Status == StoreStatus.CANNOT_DECODE
    assert "cannot decode" in status.ErrorComment
    assert any("instance refused" in r.getMessage() for r in caplog.records)
    assert node.stored_uids() == set()
    # the same association still serves a good instance
    assert association.send_c_store(template).Status == StoreStatus.SUCCESS


def test_truncated_dataset_is_refused_without_storing_anything(
    node: _Node, association, chest_ct_dir: Path, tmp_path: Path
) -> None:
    template = _slices(chest_ct_dir, 1)[0]
    body = template.read_bytes()[_meta_end(template):]
    truncated = _write_with_body(tmp_path / "truncated.dcm", template, body[:300])
    status = association.send_c_store(truncated)
    assert status.Status in (StoreStatus.CANNOT_DECODE, StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS)
    assert node.stored_uids() == set()
    assert not list(node.spool.root.rglob("*.dcm"))


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_dataset_missing_a_uid_is_refused_naming_it(
    node: _Node, association, chest_ct_dir: Path, tmp_path: Path, keyword: str
) -> None:
    ds = pydicom.dcmread(_slices(chest_ct_dir, 1)[0])
    sop_uid = ds.SOPInstanceUID
    delattr(ds, keyword)
    path = tmp_path / "missing.dcm"
    ds.save_as(path)
    if keyword == "SOPInstanceUID":  # pynetdicom needs it for the request: keep it there only
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        path = _write_with_body(path, path, _encode_without(ds, keyword))
    status = association.send_c_store(path)
    assert status.Status == StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert keyword in status.ErrorComment
    assert node.stored_uids() == set()


def _encode_without(ds: Dataset, keyword: str) -> bytes:
    copy = Dataset(ds)
    delattr(copy, keyword)
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    write_dataset(buffer, copy)
    return buffer.getvalue()


@pytest.mark.parametrize("bad_uid", ["../../../../tmp/escaped", "1.2.3/../../4", "1.2.3\\4"])
def test_uid_that_would_escape_the_spool_is_refused(
    node: _Node, association, chest_ct_dir: Path, tmp_path: Path, bad_uid: str
) -> None:
    ds = pydicom.dcmread(_slices(chest_ct_dir, 1)[0])
    with warnings.catch_warnings():  # pydicom rightly warns about the invalid UID we make
        warnings.simplefilter("ignore", UserWarning)
        ds.SeriesInstanceUID = bad_uid
    path = tmp_path / "escape.dcm"
    ds.save_as(path)
    status = association.send_c_store(path)
    assert status.Status == StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "SeriesInstanceUID" in status.ErrorComment
    assert node.stored_uids() == set()
    assert not list(tmp_path.parent.rglob("escaped*"))
    assert not list(node.spool.root.rglob("*.dcm"))


def test_resent_instance_is_stored_once_and_reopens_its_series(
    node: _Node, association, chest_ct_dir: Path
) -> None:
    path = _slices(chest_ct_dir, 1)[0]
    assert association.send_c_store(path).Status == StoreStatus.SUCCESS
    with node.db.session() as session:
        session.scalars(select(Series)).one().state = SeriesState.COMPLETE
    assert association.send_c_store(path).Status == StoreStatus.SUCCESS
    with node.db.session() as session:
        assert len(session.scalars(select(Instance)).all()) == 1
        assert session.scalars(select(Series)).one().state == SeriesState.RECEIVING


def test_dcmtk_echoscu_and_storescu_work_against_the_listener(
    node: _Node, chest_ct_dir: Path
) -> None:
    assert echoscu("127.0.0.1", node.port, AE_TITLE).returncode == 0
    files = _slices(chest_ct_dir, 5)
    result = storescu("127.0.0.1", node.port, AE_TITLE, files)
    assert result.returncode == 0, result.stderr
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
    assert node.stored_uids() == expected


def test_open_association_keeps_its_series_busy_until_released(
    node: _Node, chest_ct_dir: Path
) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
    path = _slices(chest_ct_dir, 1)[0]
    assert assoc.send_c_store(path).Status == StoreStatus.SUCCESS
    series_uid = pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID
    assert node.tracker.busy_series() == {series_uid}
    assoc.release()
    wait_for(node.tracker.busy_series, until=lambda busy: not busy, timeout=5, what="release")


def test_storescu_in_4_kib_pdus_is_stored_byte_for_byte(node: _Node, chest_ct_dir: Path) -> None:
    """A CT slice in 128 P-DATA PDUs: the receive path joins its fragments into the data set sent."""
    sent = _slices(chest_ct_dir, 2)
    result = storescu("127.0.0.1", node.port, AE_TITLE, sent, extra_args=["--max-send-pdu", "4096"])
    assert result.returncode == 0, result.stderr

    for path in sent:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        [stored] = node.spool.root.rglob(f"{uid}.dcm")
        assert pydicom.dcmread(stored) == pydicom.dcmread(path)  # storescu may send it implicit VR


def test_store_left_to_pynetdicom_is_stored_and_the_next_one_is_served_directly(
    node: _Node, association, chest_ct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose command set comes in two fragments goes through pynetdicom's own path."""
    from pynetdicom.dsutils import encode

    from node.receive.pdata import COMMAND, LAST, p_data_tf
    from node.receive.stream_to_disk import StoringDUL

    served_directly: list[str] = []
    respond = StoringDUL._respond
    monkeypatch.setattr(StoringDUL, "_respond", lambda dul, request: (
        served_directly.append(str(request.command.sop_instance_uid)), respond(dul, request)))

    first, second = _slices(chest_ct_dir, 2)
    ds = pydicom.dcmread(first)
    context = next(cx for cx in association.accepted_contexts
                   if cx.transfer_syntax[0] == ImplicitVRLittleEndian)
    command = store_request_command(41, ds.SOPClassUID, ds.SOPInstanceUID)
    data_set = encode(ds, True, True)
    association._reactor_checkpoint.clear()  # as pynetdicom's send_*() do: its reactor must not
    while not association._is_paused:        # take the response off the queue first
        time.sleep(0.001)
    try:
        association.dul.socket.send(
            p_data_tf([(context.context_id, COMMAND, command[:40])])
            + p_data_tf([(context.context_id, COMMAND | LAST, command[40:])])
            + p_data_tf([(context.context_id, LAST, data_set)])
        )
        _, response = association.dimse.get_msg(block=True)
    finally:
        association._reactor_checkpoint.set()

    assert (response.MessageIDBeingRespondedTo, response.Status) == (41, StoreStatus.SUCCESS)
    assert served_directly == []
    assert association.send_c_store(second).Status == StoreStatus.SUCCESS
    assert served_directly == [pydicom.dcmread(second).SOPInstanceUID]
    assert node.stored_uids() == {ds.SOPInstanceUID, pydicom.dcmread(second).SOPInstanceUID}


def test_data_set_is_written_as_it_arrives_and_dropped_when_the_association_aborts_mid_way(
    node: _Node, association, chest_ct_dir: Path
) -> None:
    from pynetdicom.dsutils import encode

    from node.receive.pdata import COMMAND, LAST, p_data_tf

    ds = pydicom.dcmread(_slices(chest_ct_dir, 1)[0])
    context = association.accepted_contexts[0]
    data_set = encode(ds, context.transfer_syntax[0].is_implicit_VR, True)
    incoming = node.spool.root / ".incoming"

    command = store_request_command(1, ds.SOPClassUID, ds.SOPInstanceUID)
    association.dul.socket.send(
        p_data_tf([(context.context_id, COMMAND | LAST, command)])
        + p_data_tf([(context.context_id, 0, data_set[:300_000])])  # not the last fragment
    )
    [partial] = wait_for(lambda: list(incoming.glob("*.part")), until=lambda found: found, timeout=5,
                         what="the first part of the data set on disk")
    wait_for(lambda: partial.stat().st_size, until=lambda size: size > 300_000, timeout=5,
             what="300 kB of it written")
    association.abort()

    wait_for(lambda: list(incoming.glob("*.part")), until=lambda found: not found, timeout=5,
             what="the partial file dropped")
    assert node.stored_uids() == set()
    assert not list(node.spool.root.rglob("*.dcm"))


def test_command_with_a_malformed_uid_is_refused_and_the_association_goes_on(
    node: _Node, association, chest_ct_dir: Path
) -> None:
    from pynetdicom.dsutils import encode

    from node.receive.pdata import COMMAND, LAST, p_data_tf

    first, second = _slices(chest_ct_dir, 2)
    ds = pydicom.dcmread(first)
    context = next(cx for cx in association.accepted_contexts
                   if cx.transfer_syntax[0] == ImplicitVRLittleEndian)
    command = store_request_command(9, ds.SOPClassUID, "1.2.826.0.1.3680043.8.498.77")
    command = command.replace(b"1.2.826.0.1.3680043.8.498.77", b"1.2.826.0.1.3680043.8.498.\xe9\xe9")
    association._reactor_checkpoint.clear()  # as in the test above: the response is read here
    while not association._is_paused:
        time.sleep(0.001)
    try:
        association.dul.socket.send(p_data_tf([(context.context_id, COMMAND | LAST, command)])
                                    + p_data_tf([(context.context_id, LAST, encode(ds, True, True))]))
        _, response = association.dimse.get_msg(block=True)
    finally:
        association._reactor_checkpoint.set()

    assert response.MessageIDBeingRespondedTo == 9
    assert response.Status != StoreStatus.SUCCESS
    assert "invalid AffectedSOPInstanceUID" in response.ErrorComment
    assert association.send_c_store(second).Status == StoreStatus.SUCCESS
    assert node.stored_uids() == {pydicom.dcmread(second).SOPInstanceUID}


def test_broken_data_fragment_aborts_the_association_and_leaves_no_file(
    node: _Node, association, chest_ct_dir: Path
) -> None:
    from node.receive.pdata import COMMAND, LAST, p_data_tf

    ds = pydicom.dcmread(_slices(chest_ct_dir, 1)[0])
    context = association.accepted_contexts[0]
    command = store_request_command(1, ds.SOPClassUID, ds.SOPInstanceUID)
    association.dul.socket.send(
        p_data_tf([(context.context_id, COMMAND | LAST, command)])
        + b"\x04\x00\x00\x00\x00\x03abc"  # a P-DATA-TF PDU of 3 bytes: too short for a PDV item
    )

    wait_for(lambda: association.is_aborted, timeout=5, what="the listener to abort the association")
    wait_for(lambda: list((node.spool.root / ".incoming").glob("*.part")), until=lambda found: not found,
             timeout=5, what="the partial file dropped")
    assert node.stored_uids() == set()


def test_association_left_idle_is_ended_after_the_network_timeout(tmp_path: Path, chest_ct_dir: Path) -> None:
    node = _Node(tmp_path, network_timeout_seconds=1)
    node.listener.start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
        assert assoc.send_c_store(_slices(chest_ct_dir, 1)[0]).Status == StoreStatus.SUCCESS
        started = time.monotonic()
        wait_for(lambda: assoc.is_established, until=lambda up: not up, timeout=10,
                 what="the listener to end the idle association")
        assert 0.9 < time.monotonic() - started < 5
        assert len(node.stored_uids()) == 1
    finally:
        node.listener.stop()
        node.db.dispose()


def test_partial_files_left_by_a_crash_are_removed_when_the_listener_starts(tmp_path: Path) -> None:
    node = _Node(tmp_path)
    leftover = node.spool.root / ".incoming" / "4242-1-0.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"\0" * 1000)
    node.listener.start()
    try:
        assert not leftover.exists()
    finally:
        node.listener.stop()
        node.db.dispose()


@pytest.mark.parametrize("sop_instance", ["1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.12"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.4.50"])
def test_received_file_begins_byte_for_byte_as_pynetdicom_would_write_it(
    sop_instance: str, syntax: str
) -> None:
    from pynetdicom.dsutils import create_file_meta, encode_file_meta

    from node.receive.part10 import PREAMBLE, file_meta

    expected = b"\x00" * 128 + b"DICM" + encode_file_meta(
        create_file_meta(sop_class_uid=CTImageStorage, sop_instance_uid=sop_instance, transfer_syntax=syntax)
    )
    assert PREAMBLE + file_meta(CTImageStorage, sop_instance, syntax) == expected


def test_each_admitted_association_is_logged_once_with_its_caller(
    node: _Node, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="radnode.listener"):
        ae = AE(ae_title="CT_SCANNER")
        ae.add_requested_context(Verification)
        association = ae.associate("127.0.0.1", node.port, ae_title="RADNODE")
        assert association.send_c_echo().Status == 0
        association.release()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("association accepted")]
    assert lines == ["association accepted calling_ae=CT_SCANNER address=127.0.0.1 called_ae=RADNODE "
                     "contexts=1"]
