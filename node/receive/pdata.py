"""P-DATA-TF PDUs and DIMSE command sets, read and written as bytes (PS3.8 9.3.5, PS3.7 6.3, 9.3.1).

The receive path (node/receive/stream_to_disk.py) reads C-STORE requests itself instead of through
pynetdicom's PDU, primitive and message objects, which copy a CT slice's 512 KiB several times
and cost most of the listener's CPU per instance (BENCHMARKS.md). This module is the little it
needs: the presentation data values of a P-DATA-TF PDU, the elements of a command set, and the
bytes of a C-STORE response, the same bytes pynetdicom sends (tests/test_pdata.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "COMMAND", "ITEM_HEADER", "LAST", "PDU_HEADER", "P_DATA_TF", "Command", "PresentationDataValue",
    "p_data_tf", "presentation_data_values", "read_command", "store_response_command",
]

P_DATA_TF = 0x04  # PDU type (PS3.8 9.3.5)
# Message control header bits (PS3.8 E.2): bit 0 set: a command fragment; bit 1 set: the last one
COMMAND = 0x01
LAST = 0x02

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101  # CommandDataSetType (0000,0800): no data set follows

PDU_HEADER = struct.Struct(">BBL")  # PDU type, reserved, length
ITEM_HEADER = struct.Struct(">LBB")  # PDV item length, presentation context ID, message control header
_ELEMENT_HEADER = struct.Struct("<HHL")  # implicit VR little endian: group, element, length
_US = struct.Struct("<H")

_AFFECTED_SOP_CLASS_UID = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
_COMMAND_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_ERROR_COMMENT = 0x0902
_AFFECTED_SOP_INSTANCE_UID = 0x1000
_ERROR_COMMENT_MAX = 64  # ErrorComment is LO


@dataclass(frozen=True)
class PresentationDataValue:
    """One PDV item: a fragment of a command set or of a data set (``value``, not copied)."""

    context_id: int
    control: int
    value: memoryview


def count_items(body: bytes | bytearray | memoryview, *, stop_after: int) -> int:
    """How many PDV items a P-DATA-TF PDU's body holds, counting no further than ``stop_after`` + 1
    (a malformed item ends the count: decoding reports it)."""
    count, position = 0, 0
    while position + 4 <= len(body) and count <= stop_after:
        position += 4 + int.from_bytes(body[position:position + 4], "big")
        count += 1
    return count


def presentation_data_values(body: bytes | bytearray | memoryview) -> list[PresentationDataValue]:
    """The PDV items of a P-DATA-TF PDU's body (the bytes after its 6-byte header).

    Raises ValueError for an item that runs past the PDU or is too short for its own header:
    the caller leaves such a PDU to pynetdicom, which reports it as an invalid PDU.
    """
    view = memoryview(body)
    items: list[PresentationDataValue] = []
    position = 0
    while position < len(view):
        if position + ITEM_HEADER.size > len(view):
            raise ValueError("a PDV item header runs past the end of the PDU")
        length, context_id, control = ITEM_HEADER.unpack_from(view, position)
        end = position + 4 + length
        if length < 2 or end > len(view):
            raise ValueError(f"a PDV item of length {length} does not fit the PDU")
        items.append(PresentationDataValue(context_id, control, view[position + ITEM_HEADER.size:end]))
        position = end
    return items


def p_data_tf(items: list[tuple[int, int, bytes | memoryview]]) -> bytes:
    """A P-DATA-TF PDU of (presentation context ID, message control header, fragment) items."""
    encoded = b"".join(
        ITEM_HEADER.pack(len(value) + 2, context_id, control) + bytes(value)
        for context_id, control, value in items
    )
    return PDU_HEADER.pack(P_DATA_TF, 0, len(encoded)) + encoded


@dataclass(frozen=True)
class Command:
    """What the receive path reads of a command set; None for an element that is absent."""

    command_field: int | None
    message_id: int | None
    sop_class_uid: str | None
    sop_instance_uid: str | None
    has_data_set: bool

    @property
    def is_store_request(self) -> bool:
        """A C-STORE-RQ with everything a response needs, and a data set to store."""
        return (self.command_field == C_STORE_RQ and self.message_id is not None and self.has_data_set
                and bool(self.sop_class_uid) and bool(self.sop_instance_uid))


def read_command(command_set: bytes | bytearray | memoryview) -> Command:
    """The elements of an encoded command set (always implicit VR little endian, PS3.7 6.3.1).

    Raises ValueError when an element runs past the end.
    """
    view = memoryview(command_set)
    values: dict[int, memoryview] = {}
    position = 0
    while position < len(view):
        if position + _ELEMENT_HEADER.size > len(view):
            raise ValueError("a command element header runs past the end of the command set")
        _, element, length = _ELEMENT_HEADER.unpack_from(view, position)
        start = position + _ELEMENT_HEADER.size
        if start + length > len(view):
            raise ValueError(f"command element (0000,{element:04X}) runs past the end of the command set")
        values[element] = view[start:start + length]
        position = start + length
    data_set_type = _unsigned(values.get(_COMMAND_DATA_SET_TYPE))
    return Command(
        command_field=_unsigned(values.get(_COMMAND_FIELD)),
        message_id=_unsigned(values.get(_MESSAGE_ID)),
        sop_class_uid=_uid_text(values.get(_AFFECTED_SOP_CLASS_UID)),
        sop_instance_uid=_uid_text(values.get(_AFFECTED_SOP_INSTANCE_UID)),
        has_data_set=data_set_type is not None and data_set_type != NO_DATA_SET,
    )


def _unsigned(value: memoryview | None) -> int | None:
    return _US.unpack(value)[0] if value is not None and len(value) == _US.size else None


def _uid_text(value: memoryview | None) -> str | None:
    return bytes(value).decode("ascii", "replace").rstrip("\0 ") if value is not None else None


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT_HEADER.pack(0x0000, element, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    encoded = text.encode("ascii", "replace")
    return encoded + pad if len(encoded) % 2 else encoded


def store_response_command(
    message_id: int, sop_class_uid: str | None, sop_instance_uid: str | None, status: int,
    error_comment: str = "",
) -> bytes:
    """The encoded command set of a C-STORE response (PS3.7 9.3.1.2), elements in tag order."""
    comment = error_comment[:_ERROR_COMMENT_MAX]
    body = b"".join((
        _element(_AFFECTED_SOP_CLASS_UID, _padded(sop_class_uid, b"\0")) if sop_class_uid else b"",
        _element(_COMMAND_FIELD, _US.pack(C_STORE_RSP)),
        _element(_MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(message_id)),
        _element(_COMMAND_DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
        _element(_STATUS, _US.pack(status)),
        _element(_ERROR_COMMENT, _padded(comment, b" ")) if comment else b"",
        _element(_AFFECTED_SOP_INSTANCE_UID, _padded(sop_instance_uid, b"\0")) if sop_instance_uid else b"",
    ))
    return _element(0x0000, struct.pack("<L", len(body))) + body
