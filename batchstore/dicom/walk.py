"""The one DICOM element walker: element headers, items and nested data sets, read without decoding values.

Two policies share it. The sender's (strict, the default) checks that every element fits and explains
what does not in a `WalkError` a person can act on (`walk_dataset`; `part10` reads headers with
it). The receiver's
(``lenient=True``, used by `read_elements`) reads as far as the bytes make sense and returns what it
found. Nesting is bounded (`MAX_NESTING`): a pathological file gives a `WalkError`, never a
`RecursionError`.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Iterable
from typing import Final

__all__ = [
    "ALL_VRS",
    "LONG_VRS",
    "MAX_NESTING",
    "Source",
    "WalkError",
    "fmt_tag",
    "pure_python",
    "read_elements",
    "read_header",
    "skip_plain_explicit_le",
    "walk_dataset",
    "walk_items",
]

Buffer = bytes | bytearray | memoryview | mmap.mmap

UNDEFINED: Final = 0xFFFFFFFF
_UNDEFINED: Final = UNDEFINED
_ITEM: Final = 0xFFFEE000
_ITEM_DELIM: Final = 0xFFFEE00D
_SEQ_DELIM: Final = 0xFFFEE0DD
_ITEM_GROUP: Final = 0xFFFE0000

#: Sequences nested deeper than this are refused (a real data set nests a few levels; each level costs
#: two stack frames, and Python's default recursion limit is 1000).
MAX_NESTING: Final = 256

#: Explicit VRs with a 2-byte reserved field and a 4-byte length.
LONG_VRS: Final = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
ALL_VRS: Final = LONG_VRS | frozenset(
    (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH")
    + (b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US")
)
_LONG_VRS = LONG_VRS
_ALL_VRS = ALL_VRS

_WALK_CHUNK: Final = 65536  # read size while walking a data set in a file

# struct formats: (group, element) and the two length layouts, per byte order
_TAG = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}
_U16 = {True: struct.Struct("<H"), False: struct.Struct(">H")}
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}


class WalkError(Exception):
    """A structural problem; the message is the user-facing reason."""


class Source:
    """Random access to a file through one cached window (``pread``; no seeking state).

    With ``fd=-1`` and the whole data set as `head`, the same walker reads from memory.
    """

    __slots__ = ("fd", "size", "buf", "start", "chunk")

    def __init__(self, fd: int, size: int, head: Buffer = b"", chunk: int = _WALK_CHUNK) -> None:
        self.fd = fd
        self.size = size
        self.buf = head
        self.start = 0
        self.chunk = chunk

    def get(self, pos: int, n: int) -> bytes | None:
        """Return `n` bytes at `pos`, or None if the file ends first."""
        off = pos - self.start
        if off >= 0 and off + n <= len(self.buf):
            return self.buf[off : off + n]  # type: ignore[return-value]
        if pos + n > self.size:
            return None
        self.buf = os.pread(self.fd, max(n, self.chunk), pos)
        self.start = pos
        if len(self.buf) < n:  # the file shrank under us
            return None
        return self.buf[:n]  # type: ignore[return-value]


def fmt_tag(tag: int) -> str:
    """``(GGGG,EEEE)`` of a tag."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


_fmt = fmt_tag


def read_header(src: Source, pos: int, explicit: bool, little: bool) -> tuple[int, bytes | None, int, int]:
    """Read one element header at `pos`: (tag, VR or None, value length, value position).

    An explicit data set's element without a valid VR is read as implicitly encoded (a 4-byte length),
    as DCMTK and pydicom do.
    """
    head = src.get(pos, 8)
    if head is None:
        remain = src.size - pos
        raise WalkError(
            f"truncated data set: {remain} byte(s) at offset {pos} are not a complete element header"
        )
    group, elem = _TAG[little].unpack_from(head)
    tag = group << 16 | elem
    if group == 0xFFFE or not explicit:
        return tag, None, _U32[little].unpack_from(head, 4)[0], pos + 8
    vr = head[4:6]
    if vr in _LONG_VRS:
        ext = src.get(pos + 8, 4)
        if ext is None:
            raise WalkError(f"truncated data set: incomplete header of element {_fmt(tag)} at offset {pos}")
        return tag, vr, _U32[little].unpack_from(ext)[0], pos + 12
    if vr in _ALL_VRS or (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        return tag, vr, _U16[little].unpack_from(head, 6)[0], pos + 8
    # Not a VR: an implicitly encoded element inside an explicit data set; DCMTK and pydicom cope too.
    return tag, None, _U32[little].unpack_from(head, 4)[0], pos + 8


def _read_header_lenient(
    src: Source, pos: int, explicit: bool, little: bool
) -> tuple[int, bytes | None, int, int]:
    """`read_header` for the receiver's policy: every explicit VR but the long ones has a 2-byte length.

    Unpacks the VR with `struct` so that it is `bytes` whatever buffer type the data set is in.
    """
    head = src.get(pos, 8)
    if head is None:
        raise WalkError("truncated data set")
    if not explicit:
        group, elem, length = _IMPLICIT_TAG_LENGTH[little].unpack_from(head)
        return group << 16 | elem, None, length, pos + 8
    group, elem, vr, length = _EXPLICIT_TAG_VR_LENGTH[little].unpack_from(head)
    tag = group << 16 | elem
    if group == 0xFFFE:
        return tag, None, _U32[little].unpack_from(head, 4)[0], pos + 8
    if vr in _LONG_VRS:
        ext = src.get(pos + 8, 4)
        if ext is None:
            raise WalkError("truncated data set")
        return tag, vr, _U32[little].unpack_from(ext)[0], pos + 12
    return tag, vr, length, pos + 8


_IMPLICIT_TAG_LENGTH = {True: struct.Struct("<HHI"), False: struct.Struct(">HHI")}
_EXPLICIT_TAG_VR_LENGTH = {True: struct.Struct("<HH2sH"), False: struct.Struct(">HH2sH")}


def walk_items(
    src: Source, pos: int, explicit: bool, little: bool, owner: int, depth: int = 1, lenient: bool = False
) -> int:
    """Walk the items (or fragments) of an undefined-length value; return the position after it.

    `depth` is the nesting level of this value (1 for a top-level element). With `lenient`, any
    (FFFE,xxxx) tag is taken for an item, as the receiver always did.
    """
    if depth > MAX_NESTING:
        raise WalkError("corrupt data set: sequences nested too deeply")
    tag_s, u32 = _TAG[little], _U32[little]
    while True:
        head = src.get(pos, 8)
        if head is None:
            raise WalkError(f"truncated data set: {_fmt(owner)} ends without a sequence delimitation item")
        group, elem = tag_s.unpack_from(head)
        tag = group << 16 | elem
        length = u32.unpack_from(head, 4)[0]
        if tag == _SEQ_DELIM:
            return pos + 8
        if tag != _ITEM and (not lenient or group != 0xFFFE):
            raise WalkError(
                f"corrupt data set: {_fmt(tag)} inside {_fmt(owner)} at offset {pos} is not an item"
            )
        if length == _UNDEFINED:
            pos = walk_dataset(src, pos + 8, explicit, little, True, depth, lenient)
        else:
            remain = src.size - pos - 8
            if length > remain:
                raise WalkError(
                    f"truncated data set: item in {_fmt(owner)} needs {length} bytes, {remain} remain"
                )
            pos += 8 + length


def walk_dataset(
    src: Source,
    pos: int,
    explicit: bool,
    little: bool,
    nested: bool = False,
    depth: int = 0,
    lenient: bool = False,
) -> int:
    """Check that every element from `pos` fits in the file; return the end position.

    With `nested`, walk an undefined-length item up to and including its item delimitation item;
    `depth` is the nesting level of the sequence holding it. With `lenient` (the receiver's policy),
    (FFFE,xxxx) tags other than the item delimiter are skipped as 8 bytes, zero-filled stretches are
    read as elements, and an explicit element without a valid VR has a 2-byte length.
    """
    header = _read_header_lenient if lenient else read_header
    size = src.size
    while pos < size:
        tag, vr, length, vpos = header(src, pos, explicit, little)
        if tag >= _ITEM_GROUP:  # rare: (FFFE,xxxx) or (FFFF,xxxx)
            if tag == _ITEM_DELIM:
                if nested:
                    return vpos
                pos = vpos  # stray delimiter at the top level: DCMTK and pydicom skip it
                continue
            if lenient and tag >> 16 == 0xFFFE:
                pos = vpos
                continue
        if tag == 0 and length == 0 and vr is None and not lenient and src.get(pos, 8) == bytes(8):
            raise WalkError(f"truncated data set: zero-filled from offset {pos}")
        if length == _UNDEFINED:
            if vr == b"UN":  # CP-246: undefined-length UN holds implicit VR little endian items
                pos = walk_items(src, vpos, False, True, tag, depth + 1, lenient)
            else:  # SQ, or encapsulated pixel data (fragments are items of defined length)
                pos = walk_items(src, vpos, explicit, little, tag, depth + 1, lenient)
            continue
        remain = size - vpos
        if length > remain:
            raise WalkError(f"truncated data set: element {_fmt(tag)} needs {length} bytes, {remain} remain")
        pos = vpos + length
    if nested:
        raise WalkError("truncated data set: item ends without an item delimitation item")
    return pos


_EXPLICIT_LE_HEADER: Final = struct.Struct("<HH2sH")


def skip_plain_explicit_le_py(buf: Buffer, pos: int) -> int:
    """Skip the leading run of ordinary, defined-length explicit VR little endian elements in `buf`.

    Returns the position (`pos` >= 0) of the first element it does not handle (undefined length, an
    unknown VR, a value running past the end, or the end itself); `walk_dataset` takes over from there
    and produces the exact reason when something is wrong. This loop is the common case of every small
    file and is about 3x faster than the general walker (perf/: verification was a third of a 1 KB
    file's CPU). `skip_plain_explicit_le` is its compiled twin where that is built, this function
    otherwise (docs/design.md, "A compiled walker").
    """
    unpack = _EXPLICIT_LE_HEADER.unpack_from
    u32 = _U32[True].unpack_from
    long_vrs, all_vrs = _LONG_VRS, _ALL_VRS
    end = len(buf)
    while pos + 8 <= end:
        _group, _elem, vr, length = unpack(buf, pos)
        if vr in long_vrs:
            if pos + 12 > end:
                return pos
            length = u32(buf, pos + 8)[0]
            nxt = pos + 12 + length
        elif vr in all_vrs:
            nxt = pos + 8 + length
        else:
            return pos
        if length == _UNDEFINED or nxt > end:
            return pos
        pos = nxt
    return pos


def pure_python() -> bool:
    """True with ``BATCHSTORE_PURE_PYTHON=1``: every compiled twin (this walker's, the receiver's
    one-message path) stays unused, as where they are not built; the tests and benchmarks use it to run
    the Python code."""
    return os.environ.get("BATCHSTORE_PURE_PYTHON") == "1"


def _compiled_skip() -> Callable[[Buffer, int], int] | None:
    """The compiled `skip_plain_explicit_le_py`, given this module's VR sets; None where it is not built
    or `pure_python` asks for the Python one."""
    if pure_python():
        return None
    try:
        from . import _walkfast  # type: ignore[attr-defined]
    except ImportError:
        return None
    _walkfast.set_vrs(_ALL_VRS, _LONG_VRS)
    skip: Callable[[Buffer, int], int] = _walkfast.skip_plain_explicit_le
    return skip


_COMPILED_SKIP = _compiled_skip()
#: True when `skip_plain_explicit_le` is the compiled one.
COMPILED: Final = _COMPILED_SKIP is not None
skip_plain_explicit_le: Callable[[Buffer, int], int] = _COMPILED_SKIP or skip_plain_explicit_le_py


# --- the receiver's reading of a few top-level values ------------------------------------------------

# One unpack per element header: tag, VR and the 16-bit length of the short VRs (explicit VR), or tag, an
# empty VR and the 32-bit length (implicit VR).
_EXPLICIT_HEADER = {order: struct.Struct(order + "HH2sH") for order in "<>"}
_IMPLICIT_HEADER = {order: struct.Struct(order + "HH0sL") for order in "<>"}
_LENGTH32 = {order: struct.Struct(order + "L") for order in "<>"}


def read_elements(
    data: Buffer,
    explicit_vr: bool,
    little_endian: bool,
    wanted: Iterable[int],
) -> dict[int, bytes]:
    """Read the raw values of top-level elements `wanted` from an encoded data set without decoding it.

    Parameters
    ----------
    data : bytes-like
        The data set, from its first element.
    explicit_vr, little_endian : bool
        Its encoding.
    wanted : iterable of int
        Tags (``group << 16 | element``); not empty.

    Returns
    -------
    dict of int to bytes
        Tag -> raw value for the wanted tags found. Sequences are skipped (defined or undefined length,
        nested; undefined-length UN holds implicit VR little endian). Stray (FFFE,xxxx) tags at the top
        level are skipped. Reading stops after the largest wanted tag or at the end of `data`; anything
        malformed or truncated ends the reading with what was found so far (a wanted tag whose value is
        truncated is left out).
    """
    want = wanted if isinstance(wanted, frozenset) else frozenset(wanted)
    found: dict[int, bytes] = {}
    try:
        _read_top_level(data, explicit_vr, little_endian, want, max(want), found)
    except (WalkError, struct.error):
        pass
    return found


def _read_top_level(
    data: Buffer,
    explicit: bool,
    little: bool,
    want: frozenset[int],
    stop: int,
    found: dict[int, bytes],
) -> None:
    order = "<" if little else ">"
    header = (_EXPLICIT_HEADER if explicit else _IMPLICIT_HEADER)[order].unpack_from
    length32 = _LENGTH32[order].unpack_from
    wanted = len(want)
    end = len(data)
    pos = 0
    src: Source | None = None  # built on the first undefined-length value
    while pos + 8 <= end:
        group, element, vr, length = header(data, pos)
        tag = group << 16 | element
        if group == 0xFFFE:  # a stray item or delimiter tag
            pos += 8
            continue
        if tag > stop:
            return
        if not explicit:
            pos += 8
        elif vr in _LONG_VRS:
            if pos + 12 > end:
                return
            (length,) = length32(data, pos + 8)
            pos += 12
        else:
            pos += 8
        if length == _UNDEFINED:
            # a sequence (UN with undefined length is Implicit VR Little Endian inside)
            if src is None:
                src = Source(-1, end, data)
            if vr == b"UN":
                pos = walk_items(src, pos, False, True, tag, 1, True)
            else:
                pos = walk_items(src, pos, explicit, little, tag, 1, True)
            continue
        if pos + length > end:
            return
        if tag in want:
            found[tag] = bytes(data[pos : pos + length])
            if len(found) == wanted:  # every wanted element found: the rest of the data set does not matter
                return
        pos += length
