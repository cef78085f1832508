"""Reading a few top-level elements of a received data set without decoding it: the SOP Class and
Instance UIDs the C-STORE-RQ is checked against, and the keys ``-ss``/``-su``/``-sp`` sort by.
"""

from __future__ import annotations

import logging
import mmap
import struct
from collections.abc import Iterable

from ..dicom.uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE, NATIVE_CONVERTIBLE

log = logging.getLogger("batchstore.storage")

# Tags read from the data set without decoding it.
TAG_SPECIFIC_CHARACTER_SET = 0x00080005
TAG_SOP_CLASS_UID = 0x00080016
TAG_SOP_INSTANCE_UID = 0x00080018
TAG_PATIENT_NAME = 0x00100010
TAG_STUDY_INSTANCE_UID = 0x0020000D

_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)


class _Truncated(Exception):
    pass


#: Sequences nested deeper than this end the reading (as a truncated data set would): a peer's data set
#: cannot make the reader recurse without bound.
MAX_NESTING = 32


def read_elements(
    data: bytes | bytearray | memoryview | mmap.mmap,
    explicit_vr: bool,
    little_endian: bool,
    wanted: Iterable[int],
) -> dict[int, bytes]:
    """Read the raw values of top-level elements `wanted` from an encoded data set without decoding it.

    Sequences are skipped (defined or undefined length, nested). Reading stops after the largest wanted tag
    or at the end of `data`; tags not found are missing from the result.
    """
    want = wanted if isinstance(wanted, frozenset) else frozenset(wanted)
    found: dict[int, bytes] = {}
    try:
        _walk(data, 0, len(data), explicit_vr, "<" if little_endian else ">", want, max(want), found, False)
    except (_Truncated, struct.error):
        pass
    return found


# One unpack per element header: tag, VR and the 16-bit length of the short VRs (explicit VR), or tag, an
# empty VR and the 32-bit length (implicit VR).
_EXPLICIT_HEADER = {order: struct.Struct(order + "HH2sH") for order in "<>"}
_IMPLICIT_HEADER = {order: struct.Struct(order + "HH0sL") for order in "<>"}
_LENGTH32 = {order: struct.Struct(order + "L") for order in "<>"}
_EXPLICIT_LE_HEADER = _EXPLICIT_HEADER["<"].unpack_from


def _walk(
    data: bytes | bytearray | memoryview | mmap.mmap,
    pos: int,
    end: int,
    explicit: bool,
    order: str,
    want: frozenset[int],
    stop: int,
    found: dict[int, bytes],
    in_item: bool,
    depth: int = 0,
) -> int:
    header = (_EXPLICIT_HEADER if explicit else _IMPLICIT_HEADER)[order].unpack_from
    length32 = _LENGTH32[order].unpack_from
    wanted = len(want) if not in_item else -1
    while pos + 8 <= end:
        group, element, vr, length = header(data, pos)
        tag = group << 16 | element
        if group == 0xFFFE:  # item delimiter (in an undefined-length item) or stray item tag
            pos += 8
            if in_item and element == 0xE00D:
                return pos
            continue
        if not in_item and tag > stop:
            return pos
        if not explicit:
            pos += 8
        elif vr in _LONG_VRS:
            if pos + 12 > end:
                raise _Truncated
            (length,) = length32(data, pos + 8)
            pos += 12
        else:
            pos += 8
        if length == 0xFFFFFFFF:
            # undefined length: a sequence (UN with undefined length is Implicit VR Little Endian inside)
            inner_explicit = explicit and vr != b"UN"
            inner_order = "<" if vr == b"UN" else order
            pos = _skip_items(data, pos, end, inner_explicit, inner_order, depth + 1)
            continue
        if pos + length > end:
            if not in_item and tag in want:
                raise _Truncated
            pos += length
            continue
        if not in_item and tag in want:
            found[tag] = bytes(data[pos : pos + length])
            if len(found) == wanted:  # every wanted element found: the rest of the data set does not matter
                return pos + length
        pos += length
    if pos > end or in_item:
        raise _Truncated
    return pos


def _skip_items(
    data: bytes | bytearray | memoryview | mmap.mmap,
    pos: int,
    end: int,
    explicit: bool,
    order: str,
    depth: int = 1,
) -> int:
    if depth > MAX_NESTING:
        raise _Truncated
    fmt = order + "HHL"
    while pos + 8 <= end:
        group, element, length = struct.unpack_from(fmt, data, pos)
        pos += 8
        if group != 0xFFFE:
            raise _Truncated  # malformed: give up rather than guess
        if element == 0xE0DD:  # sequence delimiter
            return pos
        if length == 0xFFFFFFFF:
            pos = _walk(data, pos, end, explicit, order, frozenset(), 0, {}, True, depth)
        else:
            pos += length
    raise _Truncated


def _decode_text(raw: bytes, charset: bytes | None) -> str:
    terms = (charset or b"").decode("ascii", "replace").strip().split("\\")
    if any(t.strip() and t.strip() not in ("ISO_IR 100", "ISO_IR 6") for t in terms):
        text = raw.decode("latin-1")
        if not text.isascii():
            log.warning(
                "character set %s not supported for -sp: patient name read as Latin-1", "\\".join(terms)
            )
        return text.strip(" \0")
    return raw.decode("latin-1").strip(" \0")


def _known_encoding(transfer_syntax: str) -> bool:
    """True for the transfer syntaxes whose data set encoding is known (all standard ones)."""
    return transfer_syntax in NATIVE_CONVERTIBLE or transfer_syntax.startswith(
        ("1.2.840.10008.1.2.4.", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.98")
    )


def _encoding_of(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """(explicit VR, little endian, deflated) of a transfer syntax; compressed ones are Explicit VR LE."""
    if transfer_syntax == IMPLICIT_VR_LE:
        return False, True, False
    if transfer_syntax == EXPLICIT_VR_BE:
        return True, False, False
    return True, True, transfer_syntax == DEFLATED_EXPLICIT_VR_LE

