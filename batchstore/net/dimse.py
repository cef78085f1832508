"""DIMSE command sets (PS3.7): encoding and decoding the group 0000 elements of C-STORE, C-ECHO, and the
N-ACTION and N-EVENT-REPORT of Storage Commitment (their data sets: `net.commitment`).

Command sets are always Implicit VR Little Endian and small, so they are built and parsed here directly
with ``struct`` instead of through pydicom datasets: the C-STORE hot path encodes one request and decodes
one response per file, and pynetdicom's dataset-based DIMSE messages cost more per file than the whole
rest of the send loop (see perf/).
"""

from __future__ import annotations

import struct

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
N_EVENT_REPORT_RQ = 0x0100
N_EVENT_REPORT_RSP = 0x8100
N_ACTION_RQ = 0x0130
N_ACTION_RSP = 0x8130

NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0000

PRIORITY_MEDIUM = 0x0000

_ELEM = struct.Struct("<HHL")
_US = struct.Struct("<H")

# Tags of group 0000 (element numbers)
AFFECTED_SOP_CLASS_UID = 0x0002
REQUESTED_SOP_CLASS_UID = 0x0003
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
REQUESTED_SOP_INSTANCE_UID = 0x1001
EVENT_TYPE_ID = 0x1002
ACTION_TYPE_ID = 0x1008
MOVE_ORIGINATOR_AET = 0x1030
MOVE_ORIGINATOR_MESSAGE_ID = 0x1031


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    """A short text value (Error Comment, LO): printable ASCII, anything else as ``?``."""
    raw = "".join(c if " " <= c <= "~" else "?" for c in value).encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


#: The longest UID the standard allows (PS3.5 9.1).
MAX_UID_LENGTH = 64


def encodable_uid(value: str) -> bool:
    """True when `value` can go back to the peer as a UID in a response: 1..64 ASCII characters."""
    return 0 < len(value) <= MAX_UID_LENGTH and value.isascii()


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """Encode group 0000 `elements` (element number, value bytes), in ascending order, with the group length."""
    body = b"".join(_ELEM.pack(0, elem, len(value)) + value for elem, value in elements)
    return _ELEM.pack(0, 0, 4) + struct.pack("<L", len(body)) + body


_GROUP_LENGTH = struct.Struct("<HHLL")  # (0000,0000), length 4, value
#: (SOP class, priority) -> the C-STORE-RQ bytes before and after the message ID value, and the group
#: length without the SOP Instance UID element's value: built once per SOP class, not once per file.
_STORE_RQ_PARTS: dict[tuple[str, int], tuple[bytes, bytes, int]] = {}


def _command_head(sop_class_uid: str, command_field: int, id_element: int) -> bytes:
    """Affected SOP Class UID, Command Field and the header of the message ID element (its value follows)."""
    sop_class = _ui(sop_class_uid)
    return (
        _ELEM.pack(0, AFFECTED_SOP_CLASS_UID, len(sop_class))
        + sop_class
        + _ELEM.pack(0, COMMAND_FIELD, 2)
        + _US.pack(command_field)
        + _ELEM.pack(0, id_element, 2)
    )


def _store_rq_parts(sop_class_uid: str, priority: int) -> tuple[bytes, bytes, int]:
    before = _command_head(sop_class_uid, C_STORE_RQ, MESSAGE_ID)
    after = _ELEM.pack(0, PRIORITY, 2) + _US.pack(priority) + _ELEM.pack(0, COMMAND_DATA_SET_TYPE, 2)
    after += _US.pack(DATA_SET_PRESENT)
    return before, after, len(before) + 2 + len(after) + 8


def c_store_rq(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    priority: int = PRIORITY_MEDIUM,
    move_originator_aet: str | None = None,
    move_originator_id: int | None = None,
) -> bytes:
    """Return the encoded C-STORE-RQ command set."""
    if move_originator_aet is None and move_originator_id is None:
        # The per-file case: only the message ID and the SOP Instance UID change (2.0 -> 0.8 us).
        parts = _STORE_RQ_PARTS.get((sop_class_uid, priority))
        if parts is None:
            parts = _STORE_RQ_PARTS[(sop_class_uid, priority)] = _store_rq_parts(sop_class_uid, priority)
        before, after, fixed = parts
        uid = _ui(sop_instance_uid)
        return b"".join(
            (
                _GROUP_LENGTH.pack(0, 0, 4, fixed + len(uid)),
                before,
                _US.pack(message_id & 0xFFFF),
                after,
                _ELEM.pack(0, AFFECTED_SOP_INSTANCE_UID, len(uid)),
                uid,
            )
        )
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


#: SOP class -> the C-STORE-RSP bytes before the message ID value, and its fixed length (see c_store_rsp)
_STORE_RSP_PARTS: dict[str, tuple[bytes, int]] = {}
_RSP_TAIL = struct.Struct("<HHHLHHHLHHHL")  # message ID, data set type, status, instance UID header


def c_store_rsp(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    status: int,
    error_comment: str | None = None,
) -> bytes:
    """Return the encoded C-STORE-RSP command set.

    With an `error_comment` (up to 64 characters, as printable ASCII) the two UIDs are optional: an empty
    one, or one `encodable_uid` refuses (what a peer sent that no response can carry), is left out.
    """
    if not error_comment:
        # The per-file case of a receiver: one cached prefix per SOP class, one pack for the rest.
        parts = _STORE_RSP_PARTS.get(sop_class_uid)
        if parts is None:
            before = _command_head(sop_class_uid, C_STORE_RSP, MESSAGE_ID_BEING_RESPONDED_TO)
            parts = _STORE_RSP_PARTS[sop_class_uid] = (before, len(before) + _RSP_TAIL.size)
        before, fixed = parts
        uid = _ui(sop_instance_uid)
        tail = _RSP_TAIL.pack(
            message_id & 0xFFFF,
            0,
            COMMAND_DATA_SET_TYPE,
            2,
            NO_DATA_SET,
            0,
            STATUS,
            2,
            status,
            0,
            AFFECTED_SOP_INSTANCE_UID,
            len(uid),
        )
        return _GROUP_LENGTH.pack(0, 0, 4, fixed + len(uid)) + before + tail + uid
    elements = [(AFFECTED_SOP_CLASS_UID, _ui(sop_class_uid))] if encodable_uid(sop_class_uid) else []
    elements += [
        (COMMAND_FIELD, _US.pack(C_STORE_RSP)),
        (MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(message_id & 0xFFFF)),
        (COMMAND_DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
        (STATUS, _US.pack(status)),
        (ERROR_COMMENT, _text(error_comment[:64])),
    ]
    if encodable_uid(sop_instance_uid):
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


def n_action_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str, action_type: int) -> bytes:
    """Return the encoded N-ACTION-RQ command set (a data set, the Action Information, follows)."""
    return _n_rq(N_ACTION_RQ, message_id, (REQUESTED_SOP_CLASS_UID, REQUESTED_SOP_INSTANCE_UID),
                 sop_class_uid, sop_instance_uid, ACTION_TYPE_ID, action_type)  # fmt: skip


def _n_rq(
    field: int,
    message_id: int,
    uid_elems: tuple[int, int],
    sop_class: str,
    instance: str,
    type_elem: int,
    kind: int,
) -> bytes:
    """An N-service request with a data set: SOP class, command, message ID, SOP instance, type ID."""
    return encode_command(
        [
            (uid_elems[0], _ui(sop_class)),
            (COMMAND_FIELD, _US.pack(field)),
            (MESSAGE_ID, _US.pack(message_id & 0xFFFF)),
            (COMMAND_DATA_SET_TYPE, _US.pack(DATA_SET_PRESENT)),
            (uid_elems[1], _ui(instance)),
            (type_elem, _US.pack(kind)),
        ]
    )


def n_action_rsp(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, action_type: int, status: int
) -> bytes:
    """Return the encoded N-ACTION-RSP command set, without an Action Reply data set."""
    return _n_rsp(
        N_ACTION_RSP, message_id, sop_class_uid, sop_instance_uid, status, ACTION_TYPE_ID, action_type
    )


def n_event_report_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str, event_type: int) -> bytes:
    """Return the encoded N-EVENT-REPORT-RQ command set (a data set, the Event Information, follows)."""
    return _n_rq(N_EVENT_REPORT_RQ, message_id, (AFFECTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID),
                 sop_class_uid, sop_instance_uid, EVENT_TYPE_ID, event_type)  # fmt: skip


def n_event_report_rsp(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, event_type: int, status: int
) -> bytes:
    """Return the encoded N-EVENT-REPORT-RSP command set, without an Event Reply data set."""
    return _n_rsp(
        N_EVENT_REPORT_RSP, message_id, sop_class_uid, sop_instance_uid, status, EVENT_TYPE_ID, event_type
    )


def _n_rsp(
    field: int,
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    status: int,
    type_elem: int,
    kind: int,
) -> bytes:
    elements = [(AFFECTED_SOP_CLASS_UID, _ui(sop_class_uid))] if encodable_uid(sop_class_uid) else []
    elements += [
        (COMMAND_FIELD, _US.pack(field)),
        (MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(message_id & 0xFFFF)),
        (COMMAND_DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
        (STATUS, _US.pack(status)),
    ]
    if encodable_uid(sop_instance_uid):
        elements.append((AFFECTED_SOP_INSTANCE_UID, _ui(sop_instance_uid)))
    if kind:
        elements.append((type_elem, _US.pack(kind)))
    return encode_command(elements)


def uid_element(cmd: Command, element: int) -> str:
    """A UID element of `cmd` (Requested SOP Class UID...) as text, "" when absent or not a usable UID."""
    raw = cmd.raw.get(element)
    if raw is None:
        return ""
    value = raw.rstrip(b"\0 ").decode("ascii", "replace")
    return value if encodable_uid(value) and "\ufffd" not in value else ""


def us_element(cmd: Command, element: int) -> int | None:
    """An unsigned short element of `cmd` (Event Type ID...), None when absent or not 2 bytes long."""
    raw = cmd.raw.get(element)
    if raw is None or len(raw) != 2:
        return None
    return int(_US.unpack(raw)[0])


class Command:
    """A decoded command set: the fields batchstore uses, plus every raw element by element number.

    A plain class with slots, not a dataclass: one is built per C-STORE-RSP (or -RQ on the receiving
    side), and this halves its cost.
    """

    __slots__ = (
        "command_field",
        "message_id",
        "message_id_responded",
        "status",
        "data_set_present",
        "sop_class_uid",
        "sop_instance_uid",
        "error_comment",
        "problem",
        "raw",
    )

    def __init__(self) -> None:
        self.command_field = 0
        self.message_id = 0
        self.message_id_responded = 0
        self.status: int | None = None
        self.data_set_present = False
        self.sop_class_uid = ""
        self.sop_instance_uid = ""
        self.error_comment = ""
        self.problem = ""  # why a UID cannot be used (not ASCII, longer than 64): "" when both can
        self.raw: dict[int, bytes] = {}

    def __repr__(self) -> str:
        return (
            f"Command(command_field=0x{self.command_field:04X}, message_id={self.message_id}, "
            f"message_id_responded={self.message_id_responded}, status={self.status}, "
            f"sop_instance_uid={self.sop_instance_uid!r})"
        )


def _uid_value(cmd: Command, raw: bytes, name: str) -> str:
    raw = raw.rstrip(b"\0 ")
    try:
        value = raw.decode("ascii")
    except UnicodeDecodeError:
        cmd.problem = f"{name} is not ASCII"
        return raw.decode("ascii", "replace")
    if len(value) > MAX_UID_LENGTH:
        cmd.problem = f"{name} is longer than {MAX_UID_LENGTH} characters"
    return value


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """Decode an Implicit VR Little Endian command set.

    UIDs no response could carry (not ASCII, longer than 64 characters) are kept
    (non-ASCII bytes as U+FFFD) and named in `Command.problem`.

    Raises
    ------
    ValueError
        If an element runs past the end of the data or a tag is not in group 0000.
    """
    buf = bytes(data)
    cmd = Command()
    raw = cmd.raw
    unpack = _ELEM.unpack_from
    offset = 0
    end = len(buf)
    while offset < end:
        if offset + 8 > end:
            raise ValueError("truncated command set")
        group, elem, length = unpack(buf, offset)
        offset += 8
        stop = offset + length
        if group != 0 or stop > end:
            raise ValueError(f"malformed command element ({group:04X},{elem:04X})")
        raw[elem] = buf[offset:stop]
        offset = stop
    # the fields batchstore uses, picked out once the whole set is known to be well formed
    for elem, name in _US_FIELDS:
        value = raw.get(elem)
        if value is not None and len(value) >= 2:
            setattr(cmd, name, _US.unpack_from(value)[0])
    value = raw.get(COMMAND_DATA_SET_TYPE)
    if value is not None and len(value) >= 2:
        cmd.data_set_present = _US.unpack_from(value)[0] != NO_DATA_SET
    value = raw.get(AFFECTED_SOP_CLASS_UID)
    if value is not None:
        cmd.sop_class_uid = _uid_value(cmd, value, "Affected SOP Class UID")
    value = raw.get(AFFECTED_SOP_INSTANCE_UID)
    if value is not None:
        cmd.sop_instance_uid = _uid_value(cmd, value, "Affected SOP Instance UID")
    value = raw.get(ERROR_COMMENT)
    if value is not None:
        cmd.error_comment = value.rstrip(b"\0 ").decode("ascii", "replace")
    return cmd


def store_request(data: bytes | bytearray | memoryview, start: int, end: int) -> tuple[int, str, str] | None:
    """The message ID, Affected SOP Class UID and Affected SOP Instance UID of the command set
    ``data[start:end]`` when it is a plain C-STORE-RQ with a data set: every element well formed, the
    command field, message ID and data set type each 2 bytes, both UIDs present and ones a response can
    carry. None for anything else, which `decode_command` then decodes and names.

    The receiver's per-file case, without a `Command` and its element dictionary; element values are read
    where they lie. The layout every storage SCU sends (group length, SOP class, command field, message
    ID, priority, data set type, SOP instance; PS3.7 9.3.1.1) is matched with two unpacks, each element's
    tag and length compared as one integer; any other layout is read element by element.
    """
    if end - start >= 70:
        group_length, _value, class_header = _STORE_RQ_HEAD.unpack_from(data, start)
        class_end = start + 20 + (class_header >> 32)
        if (
            group_length == _GROUP_LENGTH_HEADER
            and class_header & 0xFFFFFFFF == _CLASS_TAG
            and class_end + 48 <= end
        ):
            field_h, field, id_h, message_id, priority_h, _priority, type_h, data_set_type, instance_h = (
                _STORE_RQ_TAIL.unpack_from(data, class_end)
            )
            if (
                field_h == _FIELD_HEADER
                and id_h == _ID_HEADER
                and priority_h == _PRIORITY_HEADER
                and type_h == _TYPE_HEADER
                and instance_h & 0xFFFFFFFF == _INSTANCE_TAG
                and class_end + 48 + (instance_h >> 32) == end
            ):
                if field != C_STORE_RQ or data_set_type == NO_DATA_SET:
                    return None
                return _store_uids(message_id, bytes(data[start + 20 : class_end]), bytes(data[class_end + 48 : end]))
    unpack = _ELEM.unpack_from
    pos = start
    field = message_id = data_set_type = -1
    sop_class = sop_instance = b""
    while pos < end:
        if pos + 8 > end:
            return None
        group, elem, length = unpack(data, pos)
        pos += 8
        stop = pos + length
        if group or stop > end:
            return None
        if elem == AFFECTED_SOP_INSTANCE_UID:
            sop_instance = bytes(data[pos:stop])
        elif elem == AFFECTED_SOP_CLASS_UID:
            sop_class = bytes(data[pos:stop])
        elif elem == COMMAND_FIELD or elem == MESSAGE_ID or elem == COMMAND_DATA_SET_TYPE:
            if length != 2:
                return None
            value = data[pos] | data[pos + 1] << 8
            if elem == COMMAND_FIELD:
                field = value
            elif elem == MESSAGE_ID:
                message_id = value
            else:
                data_set_type = value
        pos = stop
    if field != C_STORE_RQ or message_id < 0 or data_set_type < 0 or data_set_type == NO_DATA_SET:
        return None
    return _store_uids(message_id, sop_class, sop_instance)


def _store_uids(message_id: int, sop_class: bytes, sop_instance: bytes) -> tuple[int, str, str] | None:
    sop_class = sop_class.rstrip(b"\0 ")
    sop_instance = sop_instance.rstrip(b"\0 ")
    if not (sop_class and sop_instance and sop_class.isascii() and sop_instance.isascii()):
        return None
    if len(sop_class) > MAX_UID_LENGTH or len(sop_instance) > MAX_UID_LENGTH:
        return None
    return message_id, sop_class.decode(), sop_instance.decode()


# `store_request`'s layout: an element's tag and length as one little-endian 64-bit integer (group and
# element in the low 32 bits, the value length in the high ones)
_STORE_RQ_HEAD = struct.Struct("<QLQ")  # group length element, its value, the SOP class UID's header
_STORE_RQ_TAIL = struct.Struct("<QHQHQHQHQ")  # four 2-byte elements, the SOP instance UID's header


def _header(element: int, length: int) -> int:
    return element << 16 | length << 32


_GROUP_LENGTH_HEADER = _header(0, 4)
_CLASS_TAG = _header(AFFECTED_SOP_CLASS_UID, 0)
_FIELD_HEADER = _header(COMMAND_FIELD, 2)
_ID_HEADER = _header(MESSAGE_ID, 2)
_PRIORITY_HEADER = _header(PRIORITY, 2)
_TYPE_HEADER = _header(COMMAND_DATA_SET_TYPE, 2)
_INSTANCE_TAG = _header(AFFECTED_SOP_INSTANCE_UID, 0)


_US_FIELDS = (
    (COMMAND_FIELD, "command_field"),
    (MESSAGE_ID, "message_id"),
    (MESSAGE_ID_BEING_RESPONDED_TO, "message_id_responded"),
    (STATUS, "status"),
)
