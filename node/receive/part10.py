"""The start of the DICOM file (PS3.10) of a received C-STORE data set: preamble and File Meta
Information, written directly.

pynetdicom's ``Event.encoded_dataset(include_meta=True)`` builds the meta information as a pydicom
Dataset and encodes it element by element, then copies the data set twice: about a quarter of the
listener's CPU time per CT slice (py-spy, BENCHMARKS.md). The group is seven fixed elements, so
they are written here as bytes, the same bytes pynetdicom writes (tests/test_listener.py); the
data set follows them into the file as it arrives (node/receive/stream_to_disk.py).
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

__all__ = ["PREAMBLE", "file_meta"]

PREAMBLE = b"\x00" * 128 + b"DICM"


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    """An Explicit VR Little Endian element with a 2-byte length (UI, SH, UL)."""
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    encoded = text.encode("ascii")
    return encoded + pad if len(encoded) % 2 else encoded


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """The encoded File Meta Information group (PS3.10 7.1), group length first."""
    version = struct.pack("<HH", 0x0002, 0x0001) + b"OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01"
    body = b"".join((
        version,
        _short(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
        _short(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
        _short(0x0010, b"UI", _padded(transfer_syntax_uid, b"\x00")),
        _short(0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
        _short(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
    ))
    return _short(0x0000, b"UL", struct.pack("<I", len(body))) + body
