"""The enumerated DICOM values radnode chooses between, defined once (highdicom style).

StrEnums, so a member equals its string and the YAML, the database and derived UIDs keep the same
values. Public functions take ``Enum | str`` and convert once with :func:`parse`. This module
imports nothing heavy: :mod:`node.config` reads the YAML with it, without highdicom.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

__all__ = ["SegType", "parse"]


class SegType(StrEnum):
    """How segments are encoded (Segmentation Type, PS3.3 C.8.20.2; LABELMAP: its own SOP class).

    The values are the YAML's (``pipelines.NAME.seg_type``); the member names are DICOM's.
    """

    BINARY = "binary"
    FRACTIONAL = "fractional"
    LABELMAP = "labelmap"


_E = TypeVar("_E", bound=StrEnum)


def parse(enum: type[_E], value: _E | str, what: str) -> _E:
    """``value`` as a member of ``enum``; a ValueError naming ``what`` and the allowed values if none."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}") from None
