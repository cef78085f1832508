"""Finding input files and reading just enough of each to plan and send it, without decoding pixel data.

Owns storescu's input semantics (``+sd``/``+r``/``+sp``, ``+f``/``+fo``/``-f``, ``@file`` command
files), the header reader that yields `Instance` records, and `verify_dataset`, the structural
completeness check run before a file is sent as its own bytes.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import stat
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from ..dicom.uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
)

__all__ = [
    "CommandFileError",
    "Instance",
    "ReadMode",
    "ScanFailure",
    "expand_command_files",
    "iter_paths",
    "read_instance",
    "scan",
    "verify_dataset",
]

ReadMode = Literal["auto", "file-only", "dataset"]


@dataclass(frozen=True)
class Instance:
    """One readable input file: what it holds and where its data set starts.

    Attributes
    ----------
    path : str
        The path as given on the command line or found in a scanned directory.
    sop_class_uid, sop_instance_uid : str
        From the data set's (0008,0016)/(0008,0018), else from the file meta information.
    transfer_syntax : str
        The transfer syntax the data set is encoded in.
    size : int
        File size in bytes.
    data_offset : int
        Byte offset of the data set (after preamble and file meta information; 0 for a bare data set).
    mtime_ns : int
        Modification time, for resume bookkeeping.
    """

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    size: int
    data_offset: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanFailure:
    """An input that cannot be sent, with a reason a person can act on."""

    path: str
    reason: str


class CommandFileError(ValueError):
    """An ``@file`` command file argument cannot be expanded."""


# --- low-level reading ------------------------------------------------------------------------------

_UNDEFINED: Final = 0xFFFFFFFF
_ITEM: Final = 0xFFFEE000
_ITEM_DELIM: Final = 0xFFFEE00D
_SEQ_DELIM: Final = 0xFFFEE0DD
_PIXEL_DATA: Final = 0x7FE00010
_SOP_CLASS: Final = 0x00080016
_SOP_INSTANCE: Final = 0x00080018

#: Explicit VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS: Final = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_ALL_VRS: Final = _LONG_VRS | frozenset(
    (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH")
    + (b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US")
)

_NATIVE: Final = (IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE)
_HEAD_SIZE: Final = 8192  # first read: preamble, meta and the start of the data set of nearly every file
_WALK_CHUNK: Final = 65536  # read size while walking a data set

# struct formats: (group, element) and the two length layouts, per byte order
_TAG = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}
_U16 = {True: struct.Struct("<H"), False: struct.Struct(">H")}
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}
_META_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 2-byte length


class _Bad(Exception):
    """A structural problem; the message is the user-facing reason."""


class _Source:
    """Random access to a file through one cached window (``pread``; no seeking state)."""

    __slots__ = ("fd", "size", "buf", "start", "chunk")

    def __init__(self, fd: int, size: int, head: bytes = b"", chunk: int = _WALK_CHUNK) -> None:
        self.fd = fd
        self.size = size
        self.buf = head
        self.start = 0
        self.chunk = chunk

    def get(self, pos: int, n: int) -> bytes | None:
        """Return `n` bytes at `pos`, or None if the file ends first."""
        off = pos - self.start
        if off >= 0 and off + n <= len(self.buf):
            return self.buf[off : off + n]
        if pos + n > self.size:
            return None
        self.buf = os.pread(self.fd, max(n, self.chunk), pos)
        self.start = pos
        if len(self.buf) < n:  # the file shrank under us
            return None
        return self.buf[:n]


def _clean_uid(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\0 ").strip()


def _looks_explicit(vr: bytes) -> bool:
    return vr in _ALL_VRS


def _detect_encoding(src: _Source, pos: int) -> tuple[bool, bool] | None:
    """Guess (explicit, little endian) of a data set from its first element, like DCMTK does.

    The first element of a data set that has a SOP Class UID is in group 0002-0008, which tells
    the byte order; a valid VR after the tag tells explicit from implicit.
    """
    head = src.get(pos, 8)
    if head is None:
        return None
    vr = head[4:6]
    g_le = _TAG[True].unpack_from(head)[0]
    g_be = _TAG[False].unpack_from(head)[0]
    explicit = _looks_explicit(vr)
    if g_le in (0x0002, 0x0004, 0x0006, 0x0008):
        return explicit, True
    if explicit and g_be in (0x0002, 0x0004, 0x0006, 0x0008):
        return True, False
    return None


def _encoding_of(ts: str) -> tuple[bool, bool]:
    """(explicit VR, little endian) of a data set in transfer syntax `ts` (deflated: after inflating)."""
    if ts == IMPLICIT_VR_LE:
        return False, True
    if ts == EXPLICIT_VR_BE:
        return True, False
    return True, True


def _read_header(src: _Source, pos: int, explicit: bool, little: bool) -> tuple[int, bytes | None, int, int]:
    """Read one element header at `pos`: (tag, VR or None, value length, value position)."""
    head = src.get(pos, 8)
    if head is None:
        remain = src.size - pos
        raise _Bad(f"truncated data set: {remain} byte(s) at offset {pos} are not a complete element header")
    group, elem = _TAG[little].unpack_from(head)
    tag = group << 16 | elem
    if group == 0xFFFE or not explicit:
        return tag, None, _U32[little].unpack_from(head, 4)[0], pos + 8
    vr = head[4:6]
    if vr in _LONG_VRS:
        ext = src.get(pos + 8, 4)
        if ext is None:
            raise _Bad(f"truncated data set: incomplete header of element {_fmt(tag)} at offset {pos}")
        return tag, vr, _U32[little].unpack_from(ext)[0], pos + 12
    if vr in _ALL_VRS or (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        return tag, vr, _U16[little].unpack_from(head, 6)[0], pos + 8
    # Not a VR: an implicitly encoded element inside an explicit data set; DCMTK and pydicom cope too.
    return tag, None, _U32[little].unpack_from(head, 4)[0], pos + 8


def _fmt(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _walk_items(src: _Source, pos: int, explicit: bool, little: bool, owner: int) -> int:
    """Walk the items (or fragments) of an undefined-length value; return the position after it."""
    tag_s, u32 = _TAG[little], _U32[little]
    while True:
        head = src.get(pos, 8)
        if head is None:
            raise _Bad(f"truncated data set: {_fmt(owner)} ends without a sequence delimitation item")
        group, elem = tag_s.unpack_from(head)
        tag = group << 16 | elem
        length = u32.unpack_from(head, 4)[0]
        if tag == _SEQ_DELIM:
            return pos + 8
        if tag != _ITEM:
            raise _Bad(f"corrupt data set: {_fmt(tag)} inside {_fmt(owner)} at offset {pos} is not an item")
        if length == _UNDEFINED:
            pos = _walk_dataset(src, pos + 8, explicit, little, nested=True)
        else:
            remain = src.size - pos - 8
            if length > remain:
                raise _Bad(f"truncated data set: item in {_fmt(owner)} needs {length} bytes, {remain} remain")
            pos += 8 + length


def _walk_dataset(src: _Source, pos: int, explicit: bool, little: bool, nested: bool = False) -> int:
    """Check that every element from `pos` fits in the file; return the end position.

    With `nested`, walk an undefined-length item up to and including its item delimitation item.
    """
    size = src.size
    while pos < size:
        tag, vr, length, vpos = _read_header(src, pos, explicit, little)
        if tag == _ITEM_DELIM:
            if nested:
                return vpos
            pos = vpos  # stray delimiter at the top level: DCMTK and pydicom skip it
            continue
        if tag == 0 and length == 0 and vr is None and src.get(pos, 8) == bytes(8):
            raise _Bad(f"truncated data set: zero-filled from offset {pos}")
        if length == _UNDEFINED:
            if vr == b"UN":  # CP-246: undefined-length UN holds implicit VR little endian items
                pos = _walk_items(src, vpos, False, True, tag)
            else:  # SQ, or encapsulated pixel data (fragments are items of defined length)
                pos = _walk_items(src, vpos, explicit, little, tag)
            continue
        remain = size - vpos
        if length > remain:
            raise _Bad(f"truncated data set: element {_fmt(tag)} needs {length} bytes, {remain} remain")
        pos = vpos + length
    if nested:
        raise _Bad("truncated data set: item ends without an item delimitation item")
    return pos


def _find_uids(src: _Source, pos: int, explicit: bool, little: bool, strict: bool) -> tuple[str, str]:
    """Return the data set's (SOP Class UID, SOP Instance UID); empty strings where absent.

    Walks top-level elements only until (0008,0018). With `strict` (a bare data set, not yet known
    to be DICOM) tags must ascend and values must fit, else `_Bad` is raised.
    """
    sop_class = sop_instance = ""
    previous = -1
    size = src.size
    while pos < size:
        tag, vr, length, vpos = _read_header(src, pos, explicit, little)
        if tag > _SOP_INSTANCE:
            break
        if strict and tag <= previous:
            raise _Bad("not a data set")
        previous = tag
        if length == _UNDEFINED:
            pos = _walk_items(src, vpos, explicit if vr != b"UN" else False, little or vr == b"UN", tag)
            continue
        if length > size - vpos:
            raise _Bad("value beyond end of file")
        if tag == _SOP_CLASS or tag == _SOP_INSTANCE:
            raw = src.get(vpos, length)
            value = _clean_uid(raw or b"")
            if tag == _SOP_CLASS:
                sop_class = value
            else:
                sop_instance = value
        pos = vpos + length
    return sop_class, sop_instance


def _inflated_head(src: _Source, pos: int, limit: int = 65536) -> bytes:
    """Inflate the start of a deflated data set (enough to find the SOP UIDs)."""
    raw = src.get(pos, min(limit, src.size - pos)) or b""
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw, limit)
    except zlib.error:
        return b""


def _read_meta(src: _Source, pos: int) -> tuple[dict[int, str], int]:
    """Parse the group 0002 elements from `pos`: ({element: value}, data set offset).

    File meta information is explicit VR little endian; like pydicom, fall back to implicit VR for
    writers that got that wrong. Raises `_Bad` if an element runs past the end of the file.
    """
    values: dict[int, str] = {}
    size = src.size
    unpack_short, unpack_u32 = _META_SHORT.unpack_from, _U32[True].unpack_from
    implicit: bool | None = None
    while pos < size:
        # fast path: the header is in the cached window (nearly always: meta is in the first read)
        off = pos - src.start
        buf = src.buf
        if off < 0 or off + 12 > len(buf):
            head = src.get(pos, 12) or src.get(pos, 8)
            if head is None:
                raise _Bad("truncated file meta information")
            buf, off = head, 0
        group, elem, vr, short = unpack_short(buf, off)
        if group != 0x0002:
            break
        if implicit is None:
            implicit = vr not in _ALL_VRS
        if implicit:
            length, vpos = unpack_u32(buf, off + 4)[0], pos + 8
        elif vr in _LONG_VRS:
            if off + 12 > len(buf):
                raise _Bad("truncated file meta information")
            length, vpos = unpack_u32(buf, off + 8)[0], pos + 12
        else:
            length, vpos = short, pos + 8
        if length == _UNDEFINED:
            raise _Bad(f"invalid file meta information: undefined length in (0002,{elem:04X})")
        if vpos + length > size:
            raise _Bad("truncated file meta information")
        if elem == 0x0002 or elem == 0x0003 or elem == 0x0010:
            values[elem] = _clean_uid(src.get(vpos, length) or b"")
        pos = vpos + length
    return values, pos


def read_instance(path: str, read_mode: ReadMode | str = "auto") -> Instance | ScanFailure:
    """Read the header of one file: SOP class and instance, transfer syntax, data set offset.

    Parameters
    ----------
    path : str
        File to read.
    read_mode : {"auto", "file-only", "dataset"}
        storescu's ``+f`` (file format, or a bare data set if there is no "DICM" prefix), ``+fo``
        (file format only) and ``-f`` (a bare data set). A file that does have a preamble and
        "DICM" prefix is read as file format in every mode: sending its meta information as part
        of the data set would corrupt it.

    Returns
    -------
    Instance or ScanFailure
        Never raises for bad input. Reads only the first few kilobytes (meta information and the
        data set up to (0008,0018)); pixel data is never read.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return ScanFailure(path, "no such file or directory")
    except OSError as exc:
        return ScanFailure(path, f"cannot read: {exc.strerror or exc}")
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return ScanFailure(path, "is a directory; use +sd/--scan-directories")
        if not stat.S_ISREG(st.st_mode):
            return ScanFailure(path, "not a regular file")
        if st.st_size == 0:
            return ScanFailure(path, "empty file")
        head = os.pread(fd, _HEAD_SIZE, 0)
        src = _Source(fd, st.st_size, head, chunk=_HEAD_SIZE)
        return _parse(path, src, read_mode, st)
    except OSError as exc:
        return ScanFailure(path, f"cannot read: {exc.strerror or exc}")
    finally:
        os.close(fd)


def _parse(path: str, src: _Source, read_mode: str, st: os.stat_result) -> Instance | ScanFailure:
    if read_mode not in ("auto", "file-only", "dataset"):
        raise ValueError(f"unknown read mode {read_mode!r}")
    head = src.buf
    meta: dict[int, str] = {}
    if len(head) >= 132 and head[128:132] == b"DICM":
        part10 = True
        try:
            meta, offset = _read_meta(src, 132)
        except _Bad as exc:
            return ScanFailure(path, str(exc))
    else:
        part10 = False
        if read_mode == "file-only":
            return ScanFailure(
                path, "not a DICOM file format file (no DICM prefix; +fo/--read-file-only given)"
            )
        offset = 0
        if head[:2] == b"\x02\x00" and _looks_explicit(head[4:6]):
            # file meta information without the preamble: pydicom and DCMTK accept it
            try:
                meta, offset = _read_meta(src, 0)
            except _Bad:
                meta, offset = {}, 0
            part10 = bool(meta)

    ts = meta.get(0x0010, "")
    walk_src, walk_pos = src, offset
    if ts == DEFLATED_EXPLICIT_VR_LE:
        inflated = _inflated_head(src, offset)
        walk_src, walk_pos = _Source(-1, len(inflated), inflated), 0
        encoding = (True, True)
    else:
        detected = _detect_encoding(src, offset) if offset < src.size else None
        if not ts:
            if detected is None:
                if part10:
                    return ScanFailure(
                        path, "missing Transfer Syntax UID and cannot tell the data set's encoding"
                    )
                return ScanFailure(path, "not a DICOM file (no DICM prefix, not a data set)")
            ts = _ts_for(detected)
        encoding = _encoding_of(ts)
        if detected is not None and not _is_standard(ts):
            encoding = detected  # a private transfer syntax: trust the bytes for finding the UIDs
        elif detected is not None and detected != encoding and ts in _NATIVE:
            # The data set is not encoded the way the meta information says (a known writer bug);
            # record what it really is so that it goes out as its own bytes under the right syntax.
            ts, encoding = _ts_for(detected), detected
    try:
        sop_class, sop_instance = _find_uids(walk_src, walk_pos, *encoding, strict=not part10)
    except _Bad:
        if not part10:
            return ScanFailure(path, "not a DICOM file (no DICM prefix, not a data set)")
        sop_class, sop_instance = "", ""
    sop_class = sop_class or meta.get(0x0002, "")
    sop_instance = sop_instance or meta.get(0x0003, "")
    if not sop_class:
        return ScanFailure(path, "missing SOP Class UID")
    if not sop_instance:
        return ScanFailure(path, "missing SOP Instance UID")
    return Instance(
        path=path,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax=ts,
        size=st.st_size,
        data_offset=offset,
        mtime_ns=st.st_mtime_ns,
    )


def _is_standard(ts: str) -> bool:
    return ts in _NATIVE or ts.startswith("1.2.840.10008.1.2.")


def _ts_for(encoding: tuple[bool, bool]) -> str:
    explicit, little = encoding
    if not explicit:
        return IMPLICIT_VR_LE
    return EXPLICIT_VR_LE if little else EXPLICIT_VR_BE


# --- verification before sending --------------------------------------------------------------------


def verify_dataset(path: str, data_offset: int, transfer_syntax: str) -> str | None:
    """Check that a data set is structurally complete, without reading element values.

    Walks every element from `data_offset`, seeking past values; recurses into undefined-length
    sequences, items and encapsulated pixel data fragments. A deflated data set is inflated (output
    discarded) to check that the deflate stream is complete.

    Parameters
    ----------
    path : str
        The file.
    data_offset : int
        Where the data set starts (`Instance.data_offset`).
    transfer_syntax : str
        The data set's transfer syntax (`Instance.transfer_syntax`).

    Returns
    -------
    str or None
        None if complete, else a reason such as ``"truncated data set: element (7FE0,0010) needs
        524288 bytes, 314572 remain"``.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    try:
        size = os.fstat(fd).st_size
        if data_offset > size:
            return (
                f"truncated file: data set offset {data_offset} is beyond the end of the file ({size} bytes)"
            )
        src = _Source(fd, size)
        if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
            return _verify_deflated(src, data_offset)
        return _verify(src, data_offset, transfer_syntax)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    finally:
        os.close(fd)


_EXPLICIT_LE_HEADER: Final = struct.Struct("<HH2sH")


def _skip_plain_explicit_le(buf: bytes, pos: int) -> int:
    """Skip the leading run of ordinary, defined-length explicit VR little endian elements in `buf`.

    Returns the position of the first element it does not handle (undefined length, an unknown VR, a
    value running past the end, or the end itself); `_walk_dataset` takes over from there and produces
    the exact reason when something is wrong. This loop is the common case of every small file and is
    about 3x faster than the general walker (perf/: verification was a third of a 1 KB file's CPU).
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


def _verify(src: _Source, data_offset: int, transfer_syntax: str) -> str | None:
    try:
        if _is_standard(transfer_syntax):
            encoding = _encoding_of(transfer_syntax)
        else:  # a private transfer syntax: trust the bytes
            encoding = _detect_encoding(src, data_offset) or (True, True)
        if src.fd < 0 and encoding == (True, True):  # in memory: skip the plain elements fast
            data_offset = _skip_plain_explicit_le(src.buf, data_offset)
        _walk_dataset(src, data_offset, *encoding)
        return None
    except _Bad as exc:
        return str(exc)
    except RecursionError:
        return "corrupt data set: sequences nested too deeply"


#: Data sets up to this size are read whole by the sender, checked with `verify_bytes` and sent from
#: memory: one open and one read per file instead of two of each (perf/: ~15 % of a 1 KB file's cost).
SMALL_DATASET: Final = 65536


def read_dataset_bytes(path: str, data_offset: int, expected: int = SMALL_DATASET) -> bytes:
    """Return the data set of `path` (the bytes from `data_offset` to the end of the file).

    `expected` is the data set's size as scanned: one ``pread`` of one byte more than that reads the
    whole file and proves it ended there (open, pread, close: 3 system calls, where a buffered
    ``open().read()`` makes 8). A file that grew since the scan is read to its new end.

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, expected + 1, data_offset)
        if len(data) <= expected:
            return data
        chunks = [data]
        offset = data_offset + len(data)
        while True:
            chunk = os.pread(fd, 1 << 20, offset)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)


def verify_bytes(data: bytes, transfer_syntax: str) -> str | None:
    """`verify_dataset` for a data set already in memory (`data` starts with its first element).

    A deflated data set is not checked here (use `verify_dataset` on the file).
    """
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        return None
    return _verify(_Source(-1, len(data), bytes(data)), 0, transfer_syntax)


def _verify_deflated(src: _Source, pos: int) -> str | None:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        while pos < src.size and not inflater.eof:
            chunk = os.pread(src.fd, 1 << 20, pos)
            if not chunk:
                break
            pos += len(chunk)
            data = chunk
            while data and not inflater.eof:
                inflater.decompress(data, 1 << 22)
                data = inflater.unconsumed_tail
    except zlib.error as exc:
        return f"corrupt data set: invalid deflate stream ({exc})"
    if not inflater.eof:
        return "truncated data set: the deflate stream ends before its end marker"
    return None


# --- input files ------------------------------------------------------------------------------------


def iter_paths(
    inputs: Iterable[str],
    scan_directories: bool = False,
    recurse: bool = False,
    pattern: str | None = None,
) -> Iterator[str | ScanFailure]:
    """Expand command-line inputs into file paths the way storescu does, in a deterministic order.

    Parameters
    ----------
    inputs : iterable of str
        Files and directories as given.
    scan_directories : bool
        ``+sd``: look for files in directory arguments. Without it a directory argument yields a
        `ScanFailure` (storescu only warns and ignores it).
    recurse : bool
        ``+r``: also descend into subdirectories of scanned directories.
    pattern : str, optional
        ``+sp``: fnmatch wildcard on file names, applied only to files found in scanned directories,
        never to files named explicitly.

    Yields
    ------
    str or ScanFailure
        Paths (as given, or joined onto the directory as given), directory entries sorted by name.
    """
    for arg in inputs:
        try:
            st = os.stat(arg)
        except FileNotFoundError:
            yield ScanFailure(
                arg, "broken symbolic link" if os.path.islink(arg) else "no such file or directory"
            )
            continue
        except OSError as exc:
            yield ScanFailure(arg, f"cannot access: {exc.strerror or exc}")
            continue
        if not stat.S_ISDIR(st.st_mode):
            yield arg
        elif not scan_directories:
            yield ScanFailure(arg, "is a directory; use +sd/--scan-directories")
        else:
            yield from _scan_dir(arg, recurse, pattern, {(st.st_dev, st.st_ino)})


def _scan_dir(
    directory: str, recurse: bool, pattern: str | None, ancestors: set[tuple[int, int]]
) -> Iterator[str | ScanFailure]:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield ScanFailure(directory, f"cannot read directory: {exc.strerror or exc}")
        return
    for entry in entries:
        path = os.path.join(directory, entry.name)
        try:
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
        except OSError as exc:
            yield ScanFailure(path, f"cannot access: {exc.strerror or exc}")
            continue
        if is_dir:
            if not recurse:
                continue
            try:
                st = entry.stat()
            except OSError as exc:
                yield ScanFailure(path, f"cannot access: {exc.strerror or exc}")
                continue
            key = (st.st_dev, st.st_ino)
            if key in ancestors:  # a symbolic link back up the tree
                continue
            yield from _scan_dir(path, recurse, pattern, ancestors | {key})
        elif pattern is not None and not fnmatch.fnmatchcase(entry.name, pattern):
            continue
        elif is_file:
            yield path
        elif entry.is_symlink():
            yield ScanFailure(path, "broken symbolic link")
        # sockets, FIFOs and devices are not candidates


#: Below this many files the scan reads headers in one process: a fork and the pickled results cost
#: more than they save (perf/: ~3 ms fixed, ~2 us per file, against ~20 us per file read).
PARALLEL_SCAN_MIN: Final = 1000
#: At most this many processes read headers (the coordinator and its forks).
MAX_SCAN_JOBS: Final = 4


def scan_jobs() -> int:
    """How many processes `scan` reads headers with by default: the usable CPUs, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_SCAN_JOBS, cpus))


def scan(
    inputs: Iterable[str],
    scan_directories: bool = False,
    recurse: bool = False,
    pattern: str | None = None,
    read_mode: ReadMode | str = "auto",
    jobs: int | None = None,
) -> tuple[list[Instance], list[ScanFailure]]:
    """Find and read all inputs.

    Parameters
    ----------
    inputs : iterable of str
        Files and directories as given on the command line.
    scan_directories, recurse, pattern
        As for `iter_paths`.
    read_mode : {"auto", "file-only", "dataset"}
        As for `read_instance`.
    jobs : int, optional
        Processes that read file headers (default `scan_jobs`). With more than one and at least
        `PARALLEL_SCAN_MIN` files, the file list is split into contiguous shares and all but the first
        are read by forked processes; results are the same, in the same order.

    Returns
    -------
    (list of Instance, list of ScanFailure)
        Readable files in input order, and everything that cannot be sent.
    """
    if read_mode not in ("auto", "file-only", "dataset"):
        raise ValueError(f"unknown read mode {read_mode!r}")
    items = list(iter_paths(inputs, scan_directories, recurse, pattern))
    paths = [item for item in items if not isinstance(item, ScanFailure)]
    jobs = scan_jobs() if jobs is None else jobs
    if jobs > 1 and len(paths) >= PARALLEL_SCAN_MIN and hasattr(os, "fork"):
        read = iter(_read_parallel(paths, read_mode, jobs))
    else:
        read = (read_instance(path, read_mode) for path in paths)
    instances: list[Instance] = []
    failures: list[ScanFailure] = []
    for item in items:
        result = item if isinstance(item, ScanFailure) else next(read)
        if isinstance(result, Instance):
            instances.append(result)
        else:
            failures.append(result)
    return instances, failures


def _collect(child: tuple[int, int], expected: int) -> list[Instance | ScanFailure] | None:
    """The results a scan fork sends through its pipe; None if it failed in any way."""
    import pickle

    pid, r = child
    chunks = []
    try:
        while True:
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return None
    try:
        part = pickle.loads(b"".join(chunks))
    except Exception:  # noqa: BLE001 - a broken share is read again by the caller
        return None
    return part if isinstance(part, list) and len(part) == expected else None


def _read_parallel(paths: list[str], read_mode: str, jobs: int) -> list[Instance | ScanFailure]:
    """`read_instance` of every path, the shares after the first read by forked processes.

    A share whose process fails for any reason is read here instead, so the result never depends on
    the forks working.
    """
    import pickle

    size = -(-len(paths) // jobs)
    shares = [paths[i : i + size] for i in range(0, len(paths), size)]
    children: list[tuple[int, int] | None] = []
    for share in shares[1:]:
        try:
            r, w = os.pipe()
        except OSError:
            children.append(None)
            continue
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            children.append(None)
            continue
        if pid == 0:  # the child: read its share, send the results, never return
            code = 1
            try:
                os.close(r)
                data = pickle.dumps(
                    [read_instance(path, read_mode) for path in share], pickle.HIGHEST_PROTOCOL
                )
                view = memoryview(data)
                while view:
                    view = view[os.write(w, view) :]
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        children.append((pid, r))
    try:
        results = [read_instance(path, read_mode) for path in shares[0]]
        for k, share in enumerate(shares[1:]):
            child, children[k] = children[k], None  # _collect closes and reaps it, whatever happens
            part = _collect(child, len(share)) if child is not None else None
            results.extend(part if part is not None else (read_instance(path, read_mode) for path in share))
    finally:  # interrupted (Ctrl-C): no fork is left running or unreaped
        for child in children:
            if child is not None:
                pid, r = child
                os.close(r)
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except OSError:
                    pass
    return results


# --- @file command files ----------------------------------------------------------------------------


def _split_command_file(text: str) -> list[tuple[str, bool]]:
    """Split command file text like DCMTK's OFCommandLine: (token, was quoted)."""
    tokens: list[tuple[str, bool]] = []
    value: list[str] = []
    block = ""
    quoted = False
    for c in text:
        if c in "\"'":
            if block == c:  # closing quote: also yields an empty value
                tokens.append(("".join(value), True))
                value, block, quoted = [], "", False
            elif not block:
                block, quoted = c, True
            else:
                value.append(c)
        elif c in " \t\n\r" and not block:
            if value:
                tokens.append(("".join(value), quoted))
                value, quoted = [], False
        else:
            value.append(c)
    if value:
        tokens.append(("".join(value), quoted))
    return tokens


def expand_command_files(argv: list[str]) -> list[str]:
    """Replace every ``@name`` argument by the arguments in command file ``name`` (DCMTK semantics).

    Parameters
    ----------
    argv : list of str
        Command-line arguments without the program name.

    Returns
    -------
    list of str
        The expanded arguments. Whitespace separates arguments unless inside single or double
        quotes; a lone ``@`` is kept as it is.

    Raises
    ------
    CommandFileError
        If a command file cannot be read, or names another command file (an unquoted ``@name``
        inside a command file: they do not nest).
    """
    out: list[str] = []
    for arg in argv:
        if len(arg) < 2 or not arg.startswith("@"):
            out.append(arg)
            continue
        name = arg[1:]
        try:
            with open(name, "rb") as fh:
                text = fh.read().decode("utf-8", "surrogateescape")
        except OSError as exc:
            raise CommandFileError(f"cannot open command file {name}: {exc.strerror or exc}") from exc
        for token, quoted in _split_command_file(text):
            if not quoted and len(token) > 1 and token.startswith("@"):
                raise CommandFileError(
                    f"command file {name} refers to command file {token[1:]}: command files cannot be nested"
                )
            out.append(token)
    return out
