"""DIMSE command sets encoded by pynetdicom, for tests that put raw P-DATA on the wire."""

from __future__ import annotations

import io

from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

__all__ = ["store_request_command"]


def store_request_command(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """A C-STORE-RQ command set (medium priority, a data set follows), as pynetdicom encodes it."""
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class_uid
    request.AffectedSOPInstanceUID = sop_instance_uid
    request.Priority = 2
    request.DataSet = io.BytesIO(b"\0\0")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return encode(message.command_set, True, True)
