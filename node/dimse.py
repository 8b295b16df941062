"""DIMSE status codes radnode returns or interprets, named once (PS3.4 Annex B.2.3, PS3.7 C)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["FindStatus", "StoreStatus"]


class StoreStatus(IntEnum):
    """C-STORE response statuses (PS3.4 Table B.2-1)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # pynetdicom's refinements of "cannot understand" (0xC000-0xCFFF)
    CANNOT_DECODE = 0xC210
    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.4.2: refused, SOP Class not supported

    @classmethod
    def is_success(cls, status: int) -> bool:
        """Success or a warning (0xB000, 0xB007, 0xB006): the peer stored the instance."""
        return status == cls.SUCCESS or (status & 0xF000) == 0xB000


class FindStatus(IntEnum):
    """C-FIND response statuses (PS3.4 Table C.4-1)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    PENDING_OPTIONAL_KEYS_UNSUPPORTED = 0xFF01
