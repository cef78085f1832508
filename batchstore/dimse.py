"""DIMSE command sets (PS3.7): encoding and decoding the group 0000 elements of C-STORE and C-ECHO.

Command sets are always Implicit VR Little Endian and small, so they are built and parsed here directly
with ``struct`` instead of through pydicom datasets: the C-STORE hot path encodes one request and decodes
one response per file, and pynetdicom's dataset-based DIMSE messages cost more per file than the whole
rest of the send loop (see perf/).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030

NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0000

PRIORITY_MEDIUM = 0x0000

_ELEM = struct.Struct("<HHL")
_US = struct.Struct("<H")

# Tags of group 0000 (element numbers)
AFFECTED_SOP_CLASS_UID = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
MOVE_DESTINATION = 0x0600
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
OFFENDING_ELEMENT = 0x0901
ERROR_COMMENT = 0x0902
ERROR_ID = 0x0903
AFFECTED_SOP_INSTANCE_UID = 0x1000
MOVE_ORIGINATOR_AET = 0x1030
MOVE_ORIGINATOR_MESSAGE_ID = 0x1031

_US_ELEMENTS = {
    COMMAND_FIELD,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    PRIORITY,
    COMMAND_DATA_SET_TYPE,
    STATUS,
    ERROR_ID,
    MOVE_ORIGINATOR_MESSAGE_ID,
}


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """Encode group 0000 `elements` (element number, value bytes), in ascending order, with the group length."""
    body = b"".join(_ELEM.pack(0, elem, len(value)) + value for elem, value in elements)
    return _ELEM.pack(0, 0, 4) + struct.pack("<L", len(body)) + body


def c_store_rq(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    priority: int = PRIORITY_MEDIUM,
    move_originator_aet: str | None = None,
    move_originator_id: int | None = None,
) -> bytes:
    """Return the encoded C-STORE-RQ command set."""
    elements = [
        (AFFECTED_SOP_CLASS_UID, _ui(sop_class_uid)),
        (COMMAND_FIELD, _US.pack(C_STORE_RQ)),
        (MESSAGE_ID, _US.pack(message_id & 0xFFFF)),
        (PRIORITY, _US.pack(priority)),
        (COMMAND_DATA_SET_TYPE, _US.pack(DATA_SET_PRESENT)),
        (AFFECTED_SOP_INSTANCE_UID, _ui(sop_instance_uid)),
    ]
    if move_originator_aet is not None:
        elements.append((MOVE_ORIGINATOR_AET, move_originator_aet.encode("ascii").ljust(16)))
    if move_originator_id is not None:
        elements.append((MOVE_ORIGINATOR_MESSAGE_ID, _US.pack(move_originator_id)))
    return encode_command(elements)


def c_store_rsp(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    status: int,
    error_comment: str | None = None,
) -> bytes:
    """Return the encoded C-STORE-RSP command set."""
    elements = [
        (AFFECTED_SOP_CLASS_UID, _ui(sop_class_uid)),
        (COMMAND_FIELD, _US.pack(C_STORE_RSP)),
        (MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(message_id & 0xFFFF)),
        (COMMAND_DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
        (STATUS, _US.pack(status)),
    ]
    if error_comment:
        elements.append((ERROR_COMMENT, _text(error_comment[:64])))
    elements.append((AFFECTED_SOP_INSTANCE_UID, _ui(sop_instance_uid)))
    return encode_command(elements)


def c_echo_rq(message_id: int) -> bytes:
    """Return the encoded C-ECHO-RQ command set."""
    return encode_command(
        [
            (AFFECTED_SOP_CLASS_UID, _ui("1.2.840.10008.1.1")),
            (COMMAND_FIELD, _US.pack(C_ECHO_RQ)),
            (MESSAGE_ID, _US.pack(message_id & 0xFFFF)),
            (COMMAND_DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
        ]
    )


def c_echo_rsp(message_id: int, status: int = 0) -> bytes:
    """Return the encoded C-ECHO-RSP command set."""
    return encode_command(
        [
            (AFFECTED_SOP_CLASS_UID, _ui("1.2.840.10008.1.1")),
            (COMMAND_FIELD, _US.pack(C_ECHO_RSP)),
            (MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(message_id & 0xFFFF)),
            (COMMAND_DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
            (STATUS, _US.pack(status)),
        ]
    )


@dataclass
class Command:
    """A decoded command set: the fields batchstore uses, plus every raw element by element number."""

    command_field: int = 0
    message_id: int = 0
    message_id_responded: int = 0
    status: int | None = None
    data_set_present: bool = False
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    error_comment: str = ""
    raw: dict[int, bytes] = field(default_factory=dict)


def _uid_value(raw: bytes) -> str:
    return raw.rstrip(b"\0 ").decode("ascii", "replace")


def decode_command(data: bytes | memoryview) -> Command:
    """Decode an Implicit VR Little Endian command set.

    Raises
    ------
    ValueError
        If an element runs past the end of the data or a tag is not in group 0000.
    """
    buf = bytes(data)
    cmd = Command()
    offset = 0
    end = len(buf)
    while offset < end:
        if offset + 8 > end:
            raise ValueError("truncated command set")
        group, elem, length = _ELEM.unpack_from(buf, offset)
        offset += 8
        if group != 0 or offset + length > end:
            raise ValueError(f"malformed command element ({group:04X},{elem:04X})")
        value = buf[offset : offset + length]
        offset += length
        cmd.raw[elem] = value
        if elem in _US_ELEMENTS and length >= 2:
            number = _US.unpack_from(value)[0]
            if elem == COMMAND_FIELD:
                cmd.command_field = number
            elif elem == MESSAGE_ID:
                cmd.message_id = number
            elif elem == MESSAGE_ID_BEING_RESPONDED_TO:
                cmd.message_id_responded = number
            elif elem == STATUS:
                cmd.status = number
            elif elem == COMMAND_DATA_SET_TYPE:
                cmd.data_set_present = number != NO_DATA_SET
        elif elem == AFFECTED_SOP_CLASS_UID:
            cmd.sop_class_uid = _uid_value(value)
        elif elem == AFFECTED_SOP_INSTANCE_UID:
            cmd.sop_instance_uid = _uid_value(value)
        elif elem == ERROR_COMMENT:
            cmd.error_comment = value.rstrip(b"\0 ").decode("ascii", "replace")
    return cmd
