"""The receive path's fast header scan reads exactly what pydicom reads, or leaves it to pydicom."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from node.errors import InvalidInstance
from node.spool.dicom_header import IDENTIFYING_KEYWORDS, cut_short, scan_identifiers
from node.spool.store import read_header
from tests.conftest import DATA_DIR
from tests.corpus.bad import wire_cases

REAL_FILES = sorted(DATA_DIR.rglob("*.dcm"))


def _pydicom_values(data: bytes) -> dict[str, str | None]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return {keyword: str(ds[keyword].value) if keyword in ds else None for keyword in IDENTIFYING_KEYWORDS}


def _part10(ds: Dataset, syntax: str) -> bytes:
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = syntax
    big_endian = syntax == ExplicitVRBigEndian
    if big_endian:  # pydicom re-encodes everything but pixel data into big endian
        del ds.PixelData
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=not big_endian, force_encoding=big_endian,
                     little_endian=not big_endian, implicit_vr=syntax == ImplicitVRLittleEndian)
    return buffer.getvalue()


@pytest.fixture
def ct_slice(chest_ct_dir: Path) -> Dataset:
    return pydicom.dcmread(sorted(chest_ct_dir.glob("*.dcm"))[0])


def test_every_repository_file_the_scan_reads_gives_the_values_pydicom_reads() -> None:
    scanned = 0
    for path in REAL_FILES:
        data = path.read_bytes()
        values = scan_identifiers(data)
        if values is None:
            continue
        scanned += 1
        expected = _pydicom_values(data)
        assert {keyword: values.get(keyword) for keyword in IDENTIFYING_KEYWORDS} == expected, path
    assert scanned >= len(REAL_FILES) * 0.9, "the fast scan should read nearly every real file"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_little_endian_data_sets_are_scanned_in_either_vr_encoding(ct_slice: Dataset, syntax: str) -> None:
    values = scan_identifiers(_part10(ct_slice, syntax))
    assert values is not None
    assert values["SeriesInstanceUID"] == ct_slice.SeriesInstanceUID
    assert values["SOPInstanceUID"] == ct_slice.SOPInstanceUID


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_undefined_length_sequences_before_the_uids_are_skipped(ct_slice: Dataset, syntax: str) -> None:
    ds = copy.deepcopy(ct_slice)
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3.4"
    inner.ReferencedSOPClassUID = ct_slice.SOPClassUID
    nested = Dataset()
    nested.ReferencedImageSequence = Sequence([inner])
    nested.ReferencedImageSequence.is_undefined_length = True
    ds.ReferencedStudySequence = Sequence([nested])  # (0008,1110): before every UID of group 0020
    ds.ReferencedStudySequence.is_undefined_length = True
    for item in (inner, nested):
        item.is_undefined_length_sequence_item = True
    data = _part10(ds, syntax)
    assert b"\xfe\xff\xdd\xe0" in data  # written with Sequence Delimitation Items
    assert scan_identifiers(data) == {
        keyword: value for keyword, value in _pydicom_values(data).items() if value is not None
    }


@pytest.mark.parametrize("syntax", [DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_deflated_and_big_endian_data_sets_are_left_to_pydicom(ct_slice: Dataset, syntax: str) -> None:
    data = _part10(ct_slice, syntax)
    assert scan_identifiers(data) is None
    assert read_header(data).sop_instance_uid == ct_slice.SOPInstanceUID


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # pydicom warns about what it refuses
@pytest.mark.parametrize("case", ["bad VR code", "length past the end", "odd length on a UID",
                                  "truncated to 10 bytes", "truncated mid-header", "not a data set at all"])
def test_broken_data_sets_are_left_to_pydicom_and_refused(ct_slice: Dataset, case: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ct_slice.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ct_slice.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    data = buffer.getvalue() + wire_cases(ct_slice)[case]
    assert scan_identifiers(data) is None
    with pytest.raises(InvalidInstance):
        read_header(data)


def test_every_repository_file_is_whole_and_every_cut_of_one_is_seen() -> None:
    for path in REAL_FILES:
        data = path.read_bytes()
        image = UID(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID).name.endswith("Image Storage")
        assert cut_short(data, needs_pixel_data=image) is None, path
    data = sorted((DATA_DIR / "ct_chest_lungdx_a0001").glob("*.dcm"))[0].read_bytes()
    for cut in (1, 3, 7, 100, len(data) // 2, len(data) - 400):
        assert cut_short(data[:-cut], needs_pixel_data=True) is not None, cut
