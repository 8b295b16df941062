"""Compressed and unusual data: stored exactly as received, and decodable by the workers.

Each case is a real file (tests/data/transfer_syntaxes, ../shared/data) or one made from it by a
DCMTK tool in the test, sent to a real listener by DCMTK's storescu (proposing the file's own
transfer syntax) and by pynetdicom (which puts the file's data set bytes on the wire unchanged).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom
import pytest
from pydicom.uid import JPEGLSLossless, generate_uid
from pynetdicom import AE

from inference.volume import load_series
from node.dimse import StoreStatus
from tests.conftest import DATA_DIR
from tests.dcmtk import DCMTK_BIN, dcmtk_env, storescu
from tests.listener_node import ListenerNode, dataset_bytes, dataset_values

SAMPLES = DATA_DIR / "transfer_syntaxes"
PRIVATE_SOP_CLASS = "1.3.6.1.4.1.5962.301.1"  # a private (vendor) storage class, not in any list


@dataclass(frozen=True)
class Case:
    """A file to send: ``source`` (made by ``convert``, a DCMTK command, if given) and the
    storescu option that proposes its transfer syntax."""

    name: str
    source: Path
    storescu_option: str
    convert: tuple[str, ...] = ()


CASES = [
    Case("explicit-vr-little-endian-dx", SAMPLES / "dx_image.dcm", "-xe"),
    Case("implicit-vr-little-endian", SAMPLES / "dx_image.dcm", "-xi", ("dcmconv", "+ti")),
    Case("explicit-vr-big-endian", SAMPLES / "dx_image.dcm", "-xb", ("dcmconv", "+tb")),
    Case("deflated", SAMPLES / "dx_image.dcm", "-xd", ("dcmconv", "+td")),
    Case("jpeg-baseline", SAMPLES / "dx_image.dcm", "-xy", ("dcmcjpeg", "+eb")),
    Case("jpeg-lossless-sv1", SAMPLES / "JPEG-LL.dcm", "-xs"),
    Case("jpeg-ls-lossless-enhanced-mr", SAMPLES / "emri_small_jpeg_ls_lossless.dcm", "-xt"),
    Case("jpeg-2000-lossless-ct", SAMPLES / "693_J2KR.dcm", "-xv"),
    Case("jpeg-2000-lossy-cr", DATA_DIR / "cr_chest_pydicom" / "RG1_J2KI.dcm", "-xw"),
    Case("rle-enhanced-mr", SAMPLES / "emri_small_RLE.dcm", "-xr"),
    Case("enhanced-ct-multiframe", DATA_DIR / "enhanced_multiframe" / "eCT_Supplemental.dcm", "-xe"),
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ListenerNode]:
    with ListenerNode(tmp_path_factory.mktemp("node")) as listener_node:
        yield listener_node


def _prepare(case: Case, folder: Path) -> Path:
    """The file to send: a copy with a fresh SOP Instance UID (so each send is a new instance)."""
    source = case.source
    if case.convert:
        source = folder / "converted.dcm"
        tool, *options = case.convert
        subprocess.run([str(DCMTK_BIN / tool), *options, str(case.source), str(source)],
                       env=dcmtk_env(), check=True, capture_output=True)
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / f"{case.name}.dcm"
    ds.save_as(path)
    return path


def _stored(node: ListenerNode, sent: Path) -> tuple[Path, str]:
    ds = pydicom.dcmread(sent, stop_before_pixels=True)
    row = node.instances()[ds.SOPInstanceUID]
    return Path(row.path), row.transfer_syntax_uid


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_storescu_instance_is_stored_in_its_transfer_syntax(
    case: Case, node: ListenerNode, tmp_path: Path
) -> None:
    sent = _prepare(case, tmp_path)
    result = storescu("127.0.0.1", node.port, node.ae_title, [sent], extra_args=[case.storescu_option])
    assert result.returncode == 0, result.stderr
    path, transfer_syntax = _stored(node, sent)
    original = pydicom.dcmread(sent)
    stored = pydicom.dcmread(path)
    assert transfer_syntax == stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    # storescu may re-encode lengths (and fix a VR: OB for encapsulated pixel data), never values
    assert dataset_values(stored) == dataset_values(original)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_pynetdicom_instance_is_stored_byte_for_byte(
    case: Case, node: ListenerNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)  # bytes as in the file
    sent = _prepare(case, tmp_path)
    original = pydicom.dcmread(sent, stop_before_pixels=True)
    assert _send_with_pynetdicom(node, sent, original.SOPClassUID, original.file_meta.TransferSyntaxUID) \
        == StoreStatus.SUCCESS
    path, transfer_syntax = _stored(node, sent)
    assert transfer_syntax == original.file_meta.TransferSyntaxUID
    assert dataset_bytes(path.read_bytes()) == dataset_bytes(sent.read_bytes())


def _send_with_pynetdicom(node: ListenerNode, path: Path, sop_class: str, transfer_syntax: str) -> int:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(sop_class, [transfer_syntax])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def test_private_storage_sop_class_is_stored_as_is(
    node: ListenerNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = pydicom.dcmread(SAMPLES / "dx_image.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sent = tmp_path / "private.dcm"
    ds.save_as(sent)
    status = _send_with_pynetdicom(node, sent, PRIVATE_SOP_CLASS, ds.file_meta.TransferSyntaxUID)
    assert status == StoreStatus.SUCCESS
    path, _ = _stored(node, sent)
    assert node.instances()[ds.SOPInstanceUID].sop_class_uid == PRIVATE_SOP_CLASS
    assert dataset_bytes(path.read_bytes()) == dataset_bytes(sent.read_bytes())


def test_unknown_sop_classes_can_be_refused(tmp_path: Path) -> None:
    before = pynetdicom._config.UNRESTRICTED_STORAGE_SERVICE
    with ListenerNode(tmp_path, accept_unknown_sop_classes=False) as strict:
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(PRIVATE_SOP_CLASS)
        assoc = ae.associate("127.0.0.1", strict.port, ae_title=strict.ae_title)
        assert not assoc.is_established  # its only presentation context was rejected
    assert before == pynetdicom._config.UNRESTRICTED_STORAGE_SERVICE  # restored when it stopped


def test_workers_load_a_jpeg_ls_series_exactly_as_the_uncompressed_one(
    chest_ct_dir: Path, tmp_path: Path
) -> None:
    originals = sorted(chest_ct_dir.glob("*.dcm"))[20:36]
    compressed = []
    for path in originals:
        target = tmp_path / path.name
        subprocess.run([str(DCMTK_BIN / "dcmcjpls"), "+el", str(path), str(target)],  # lossless
                       env=dcmtk_env(), check=True, capture_output=True)
        compressed.append(target)
    assert pydicom.dcmread(compressed[0], stop_before_pixels=True).file_meta.TransferSyntaxUID \
        == JPEGLSLossless
    plain, decoded = load_series(originals), load_series(compressed)
    assert np.array_equal(plain.voxels.numpy(), decoded.voxels.numpy())
