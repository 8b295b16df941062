"""Finding DICOM Part 10 files on disk (test folders also hold licences and READMEs)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["dicom_files_under", "is_dicom_file"]

_PREAMBLE_BYTES = 128
_MAGIC = b"DICM"


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` is a DICOM Part 10 file (PS3.10 7.1: 128-byte preamble, then ``DICM``)."""
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(_PREAMBLE_BYTES + len(_MAGIC))
    except OSError:
        return False
    return head[_PREAMBLE_BYTES:] == _MAGIC


def dicom_files_under(folder: Path) -> list[Path]:
    """The DICOM Part 10 files under ``folder``, recursively, sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_dicom_file(p))
