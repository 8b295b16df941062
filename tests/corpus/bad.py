"""The bad-input corpus, built from a real slice and from synthetic series at test time.

Two kinds of case:

- ``wire_cases``: what a broken modality puts on the wire (a data set's bytes); the listener
  must answer each with a clear failure status and store nothing;
- ``series_cases``: series that are stored fine but cannot be one volume; their job must end
  failed or not applicable with a reason, never crash the worker.
"""

from __future__ import annotations

import copy
import math
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from tests.corpus import synthetic_series

__all__ = ["file_cases", "series_cases", "wire_cases"]

SERIES_SLICES = 12
_SAGITTAL = [0, 1, 0, 0, 0, -1]


def _encode(ds: Dataset) -> bytes:
    """The data set (no meta) in Explicit VR Little Endian."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _element_offset(body: bytes, tag: int) -> int:
    """Offset of an explicit-VR element's tag in ``body`` (group, element little endian)."""
    return body.index(struct.pack("<HH", tag >> 16, tag & 0xFFFF))


def _with_length(body: bytes, tag: int, length: int) -> bytes:
    """``body`` with the 2-byte length of a short-VR element set to ``length``."""
    at = _element_offset(body, tag) + 6
    return body[:at] + struct.pack("<H", length) + body[at + 2 :]


def _with_vr(body: bytes, tag: int, vr: bytes) -> bytes:
    at = _element_offset(body, tag) + 4
    return body[:at] + vr + body[at + 2 :]


def _huge_pixel_length(body: bytes) -> bytes:
    """PixelData (OW, 4-byte length) declaring 0xFFFFFFF0 bytes, far more than follow."""
    at = _element_offset(body, 0x7FE00010) + 8
    return body[:at] + struct.pack("<I", 0xFFFFFFF0) + body[at + 4 :]


def _uid(ds: Dataset, keyword: str, value: str) -> Dataset:
    with warnings.catch_warnings():  # pydicom rightly warns about the invalid UID made here
        warnings.simplefilter("ignore", UserWarning)
        setattr(ds, keyword, value)
    return ds


def wire_cases(template: Dataset) -> dict[str, bytes]:
    """Data set bytes (Explicit VR LE) a broken sender might send, by case name."""
    good = _encode(template)
    without = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        ds = copy.deepcopy(template)
        delattr(ds, keyword)
        without[f"missing {keyword}"] = _encode(ds)
    return {
        "truncated to 10 bytes": good[:10],
        "truncated mid-header": good[:300],
        "truncated mid-pixel-data": good[: len(good) - 100],
        "not a data set at all": b"MZ\x90\x00" + b"\xff" * 500,
        "bad VR code": _with_vr(good, 0x0020000D, b"\x00\x01"),
        "length past the end": _with_length(good, 0x0020000E, 0xFFF0),
        "odd length on a UID": _with_length(good, 0x0020000D, 3),
        "huge declared pixel length": _huge_pixel_length(good),
        **without,
        "UID with path characters": _encode(
            _uid(copy.deepcopy(template), "SeriesInstanceUID", "../../etc/x")
        ),
        "UID with a slash": _encode(_uid(copy.deepcopy(template), "StudyInstanceUID", "1.2/3")),
        "UID too long": _encode(_uid(copy.deepcopy(template), "SeriesInstanceUID", "1." + "2" * 70)),
    }


def file_cases(real_file: Path) -> dict[str, bytes]:
    """Whole Part 10 files that are broken at the file level (for read_header / load_series)."""
    data = real_file.read_bytes()
    return {
        "wrong preamble magic": data[:128] + b"DICN" + data[132:],
        "no preamble": data[132:],
        "empty file": b"",
        "only the preamble": data[:132],
        "truncated mid-meta": data[:160],
    }


def _mutate_all(series: list[Dataset], change: Callable[[int, Dataset], None]) -> list[Dataset]:
    for index, ds in enumerate(series):
        change(index, ds)
    return series


def _short_pixels(index: int, ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


def series_cases() -> dict[str, list[Dataset]]:
    """Series the listener stores but no volume can be made of, by case name."""
    def each(change: Callable[[int, Dataset], None]) -> list[Dataset]:
        return _mutate_all(synthetic_series(SERIES_SLICES), change)

    def set_(keyword: str, value: object) -> Callable[[int, Dataset], None]:
        return lambda index, ds: setattr(ds, keyword, value)

    return {
        "pixel data shorter than rows x columns": each(_short_pixels),
        "zero pixel spacing": each(set_("PixelSpacing", [0, 0])),
        "NaN pixel spacing": each(set_("PixelSpacing", [math.nan, 1.0])),
        "all slices at one position": each(lambda i, ds: setattr(ds, "ImagePositionPatient", [0, 0, 0])),
        "conflicting orientations": each(
            lambda i, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0] if i % 2 else _SAGITTAL)
        ),
        "degenerate orientation": each(set_("ImageOrientationPatient", [1, 0, 0, 1, 0, 0])),
        "NaN position": each(
            lambda i, ds: setattr(ds, "ImagePositionPatient", [0, 0, math.nan if i == 3 else i])
        ),
        "missing ImagePositionPatient": each(lambda i, ds: delattr(ds, "ImagePositionPatient")),
        "rows differ between slices": each(lambda i, ds: setattr(ds, "Rows", 4) if i == 5 else None),
        "one slice": synthetic_series(1),
    }


def real_slice(path: Path) -> Dataset:
    """A real slice, read in full (the template for wire cases)."""
    return pydicom.dcmread(path)
