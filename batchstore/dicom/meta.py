"""The Part 10 file meta information batchstore writes: preamble, ``DICM`` and the (0002,xxxx) group.

Built from a few cached parts per (SOP class, transfer syntax, source AE), so that only the SOP Instance
UID's bytes change from one received file to the next (`file_meta_parts`, for a vectored write).
"""

from __future__ import annotations

import functools
import struct

from .. import __version__

#: batchstore's Implementation Class UID: a UUID-derived UID (PS3.5 B.2), so no organisation root is claimed.
#: UUID-derived (2.25 + the integer of UUID 6d1c6a51-36c4-4f6e-9a43-8c2b7f1d0b5e), written out so that
#: the uuid module (and the platform module it imports) is not loaded on every run.
IMPLEMENTATION_CLASS_UID = "2.25.145033392222443471150797085216599771998"
IMPLEMENTATION_VERSION_NAME = ("BATCHSTORE_" + __version__.replace(".", ""))[:16]


def _ui(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b"\0" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str = "") -> bytes:
    """Return preamble, ``DICM`` and the (0002,xxxx) file meta group (Explicit VR Little Endian)."""
    return b"".join(file_meta_parts(sop_class_uid, sop_instance_uid, transfer_syntax, source_ae))


def file_meta_parts(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str = ""
) -> tuple[bytes, bytes, bytes]:
    """`file_meta` in three pieces (everything up to the SOP Instance UID value, the value, the rest), for a
    vectored write: only the middle one changes from one file of an association to the next."""
    instance = _ui(sop_instance_uid)
    head, tail = _meta_head(sop_class_uid, transfer_syntax, source_ae, len(instance))
    return head, instance, tail


_PREAMBLE = bytes(128) + b"DICM"
_META_GROUP_LENGTH = struct.Struct("<HH2sHL")
_META_SHORT_HEADER = struct.Struct("<HH2sH")


@functools.lru_cache(maxsize=1024)
def _meta_head(
    sop_class_uid: str, transfer_syntax: str, source_ae: str, instance_length: int
) -> tuple[bytes, bytes]:
    """Preamble to the (0002,0003) header, and what follows its value: the same for every instance UID of
    this length."""
    before, after, fixed = _meta_parts(sop_class_uid, transfer_syntax, source_ae)
    head = b"".join(
        (
            _PREAMBLE,
            _META_GROUP_LENGTH.pack(2, 0, b"UL", 4, fixed + 8 + instance_length),
            before,
            _META_SHORT_HEADER.pack(2, 3, b"UI", instance_length),
        )
    )
    return head, after


@functools.lru_cache(maxsize=1024)
def _meta_parts(sop_class_uid: str, transfer_syntax: str, source_ae: str) -> tuple[bytes, bytes, int]:
    """The file meta elements before and after (0002,0003), which only vary with these arguments."""

    def element(number: int, vr: bytes, value: bytes) -> bytes:
        return struct.pack("<HH2sH", 2, number, vr, len(value)) + value if value else b""

    before = struct.pack("<HH2sHL", 2, 1, b"OB", 0, 2) + b"\0\1" + element(2, b"UI", _ui(sop_class_uid))
    after = (
        element(0x0010, b"UI", _ui(transfer_syntax))
        + element(0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID))
        + element(0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME))
        + element(0x0016, b"AE", _text(source_ae[:16]))
    )
    return before, after, len(before) + len(after)
