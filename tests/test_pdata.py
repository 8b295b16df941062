"""The C-STORE receive path's own reading of P-DATA: the same bytes pynetdicom reads and writes.

node/receive/pdata.py and node/receive/stream_to_disk.py read command sets and PDV items without pynetdicom's
objects; these tests hold them to pynetdicom's encoders, and to the hand-back of every message
the path does not serve.
"""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage

from node.dimse import StoreStatus
from node.receive.pdata import (
    COMMAND,
    LAST,
    Command,
    p_data_tf,
    presentation_data_values,
    read_command,
    store_response_command,
)
from node.receive.stream_to_disk import ProtocolError, StoreMessages
from tests.dimse_bytes import store_request_command

_CONTEXT = 1
_SYNTAX = "1.2.840.10008.1.2.1"
_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
_CONTEXTS = {_CONTEXT: (_CT_IMAGE, _SYNTAX)}
_SOP = "1.2.826.0.1.3680043.8.498.1"


def _store_command(message_id: int = 7, sop_instance: str = _SOP) -> bytes:
    return store_request_command(message_id, CTImageStorage, sop_instance)


def _echo_command() -> bytes:
    request = C_ECHO()
    request.MessageID = 3
    request.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(request)
    return encode(message.command_set, True, True)


def _body(pdu: bytes) -> bytes:
    return pdu[6:]


class _Received:
    """What the listener's Incoming is to StoreMessages: the data set, as written."""

    def __init__(self, command: Command, context: tuple[str, str]) -> None:
        self.command, (self.abstract_syntax, self.transfer_syntax) = command, context
        self.data = bytearray()
        self.discarded = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def finish(self) -> tuple[int, str]:
        return 0, ""

    def discard(self) -> None:
        self.discarded = True


def _messages() -> StoreMessages:
    return StoreMessages(_CONTEXTS, _Received)


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "status", "comment"),
    [
        (CTImageStorage, "1.2.826.0.1.3680043.8.498.1", StoreStatus.SUCCESS, ""),  # odd length: padded
        (CTImageStorage, "1.2.826.0.1.3680043.8.498.12", 0xB000, ""),  # even length; a warning
        (None, "1.2.3", StoreStatus.SUCCESS, ""),  # the UIDs are optional in a response
        (CTImageStorage, None, StoreStatus.OUT_OF_RESOURCES, "Out of resources"),
        (CTImageStorage, "1.2.3.4", 0xA900, "SOPInstanceUID 1.2 differs"),  # odd comment: space-padded
    ],
)
def test_store_response_is_byte_for_byte_pynetdicoms(
    sop_class: str | None, sop_instance: str | None, status: int, comment: str
) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 65535
    if sop_class:
        rsp.AffectedSOPClassUID = sop_class
    if sop_instance:
        rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)

    assert store_response_command(65535, sop_class, sop_instance, status, comment) == encode(
        message.command_set, True, True
    )


def test_command_set_encoded_by_pynetdicom_is_read_back() -> None:
    command = read_command(_store_command(message_id=513))
    assert (command.command_field, command.message_id) == (0x0001, 513)
    assert (command.sop_class_uid, command.sop_instance_uid) == (CTImageStorage, _SOP)
    assert command.has_data_set and command.is_store_request
    assert not read_command(_echo_command()).is_store_request


def test_store_request_in_many_fragments_is_written_whole_and_in_order() -> None:
    data_set = bytes(range(256)) * 40
    messages = _messages()
    first = p_data_tf([(_CONTEXT, COMMAND | LAST, _store_command()), (_CONTEXT, 0, data_set[:1000])])
    assert messages.take(_body(first)) == ([], None)
    middle = p_data_tf([(_CONTEXT, 0, data_set[1000:5000]), (_CONTEXT, 0, data_set[5000:9000])])
    assert messages.take(_body(middle)) == ([], None)

    complete, rest = messages.take(_body(p_data_tf([(_CONTEXT, LAST, data_set[9000:])])))

    assert rest is None
    [request] = complete
    assert request.command.message_id == 7
    assert request.incoming.data == data_set and request.incoming.transfer_syntax == _SYNTAX


def test_echo_goes_back_to_pynetdicom_and_the_next_store_is_served_here() -> None:
    messages = _messages()
    echo = p_data_tf([(_CONTEXT, COMMAND | LAST, _echo_command())])
    assert messages.take(_body(echo)) == ([], echo)

    store = p_data_tf([(_CONTEXT, COMMAND | LAST, _store_command()), (_CONTEXT, LAST, b"\x08\x00")])
    complete, rest = messages.take(_body(store))
    assert rest is None and len(complete) == 1


def test_store_with_a_fragmented_command_stays_pynetdicoms_to_its_last_data_fragment() -> None:
    """From the first item not served here, that message's items all go to pynetdicom."""
    messages = _messages()
    command = _store_command()
    served = p_data_tf([(_CONTEXT, COMMAND | LAST, _store_command(1, "1.2.3")),
                        (_CONTEXT, LAST, b"\x08\x00")])
    foreign_start = [(_CONTEXT, COMMAND, command[:30])]

    # one PDU: a request served here, then the start of one that is not
    pdu = p_data_tf([(_CONTEXT, COMMAND | LAST, _store_command(1, "1.2.3")), (_CONTEXT, LAST, b"\x08\x00"),
                     *foreign_start])
    complete, rest = messages.take(_body(pdu))
    assert [r.command.sop_instance_uid for r in complete] == ["1.2.3"]
    assert rest == p_data_tf(foreign_start)

    for items in ([(_CONTEXT, COMMAND | LAST, command[30:])], [(_CONTEXT, 0, b"\x08\x00")],
                  [(_CONTEXT, LAST, b"\x10\x00")]):
        pdu = p_data_tf(items)
        assert messages.take(_body(pdu)) == ([], pdu)

    complete, rest = messages.take(_body(served))
    assert rest is None and len(complete) == 1


def test_store_on_a_context_that_was_not_accepted_is_left_to_pynetdicom() -> None:
    pdu = p_data_tf([(3, COMMAND | LAST, _store_command())])
    assert _messages().take(_body(pdu)) == ([], pdu)


def test_data_set_interrupted_by_another_command_is_a_protocol_error_and_its_file_dropped() -> None:
    received: list[_Received] = []

    def begin(command: Command, context: tuple[str, str]) -> _Received:
        received.append(_Received(command, context))
        return received[-1]

    messages = StoreMessages(_CONTEXTS, begin)
    messages.take(_body(p_data_tf([(_CONTEXT, COMMAND | LAST, _store_command()), (_CONTEXT, 0, b"\0\0")])))
    assert messages.receiving
    with pytest.raises(ProtocolError, match="interrupted by a command fragment on presentation context 1"):
        messages.take(_body(p_data_tf([(_CONTEXT, COMMAND | LAST, _store_command())])))
    assert not messages.receiving and received[0].discarded


@pytest.mark.parametrize("body", [b"\x00\x00\x00\x09\x01\x03ab", b"\x00\x00\x00\x01\x01", b"\x00\x00"])
def test_item_that_does_not_fit_its_pdu_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError, match="PDV item"):
        presentation_data_values(body)
