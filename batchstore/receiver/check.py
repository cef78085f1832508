"""What the receiver reads of a data set without decoding it: the SOP Class and Instance UIDs the
C-STORE-RQ is checked against, and the keys ``-ss``/``-su``/``-sp`` sort by. The elements are read by
`batchstore.dicom.walk.read_elements`, the one element walker (nesting bounded by its `MAX_NESTING`).
"""

from __future__ import annotations

import logging
import struct

from ..dicom.uids import NATIVE_CONVERTIBLE
from ..dicom.walk import read_elements
from ..net.status import CANNOT_UNDERSTAND, DATA_SET_DOES_NOT_MATCH_SOP_CLASS, SUCCESS

__all__ = [
    "TAG_PATIENT_NAME",
    "TAG_SOP_CLASS_UID",
    "TAG_SOP_INSTANCE_UID",
    "TAG_SPECIFIC_CHARACTER_SET",
    "TAG_STUDY_INSTANCE_UID",
    "compare_uids",
    "read_elements",
]

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

#: One unpack per explicit VR little endian element header, for the store's fast check of the two UIDs.
_EXPLICIT_LE_HEADER = struct.Struct("<HH2sH").unpack_from


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


def compare_uids(expected_class: str, expected_instance: str, values: dict[int, str]) -> int:
    """The C-STORE-RSP status for a data set whose UIDs (`values`, as read) should be the request's."""
    sop_class = values.get(TAG_SOP_CLASS_UID)
    sop_instance = values.get(TAG_SOP_INSTANCE_UID)
    if sop_class is None or sop_instance is None:
        log.error("bad DICOM file: no SOP Class/Instance UID in the data set of %s", expected_instance)
        return CANNOT_UNDERSTAND
    if sop_class != expected_class or sop_instance != expected_instance:
        log.error(
            "data set (%s, %s) does not match the C-STORE-RQ (%s, %s)",
            sop_class,
            sop_instance,
            expected_class,
            expected_instance,
        )
        return DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    return SUCCESS
