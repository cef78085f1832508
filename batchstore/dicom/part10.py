"""Reading a DICOM Part 10 file's header and checking its data set, without decoding pixel data.

Owns `Instance` and `ScanFailure` (what a file holds and where its data set starts, or why it cannot be
sent), `read_instance` (preamble, file meta information, the data set's SOP UIDs), and the structural
completeness check run before a file is sent as its own bytes (`verify_dataset`, `verify_bytes`). The
element walking itself is `walk`'s.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections.abc import Callable
from typing import Final, Literal, NamedTuple

from .records import Frozen
from .uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE
from .walk import (
    ALL_VRS,
    COMPILED,
    LONG_VRS,
    UNDEFINED,
    Source,
    WalkError,
    read_header,
    skip_plain_explicit_le,
    walk_dataset,
    walk_items,
)

__all__ = [
    "COMPILED_SCAN",
    "SMALL_DATASET",
    "Instance",
    "ReadMode",
    "ScanFailure",
    "data_set_offset",
    "find_uids",
    "not_regular_kind",
    "read_dataset_bytes",
    "read_instance",
    "verify_bytes",
    "verify_dataset",
]

ReadMode = Literal["auto", "file-only", "dataset"]


_set = object.__setattr__


class Instance(Frozen):
    """One readable input file: what it holds and where its data set starts.

    A `Frozen` record, not a frozen dataclass (start-up, docs/design.md "Small runs"): the same
    constructor, attributes, equality, hashing and ``repr``; ``inst._replace(path=...)`` gives a changed
    copy. No ``__slots__``: `sender.plan` rebuilds a batch's instances by filling their ``__dict__``.

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

    _fields = ("path", "sop_class_uid", "sop_instance_uid", "transfer_syntax", "size", "data_offset", "mtime_ns")
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    size: int
    data_offset: int
    mtime_ns: int

    def __init__(
        self,
        path: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        size: int,
        data_offset: int,
        mtime_ns: int,
    ) -> None:
        # one call per field, as the dataclass's __init__ made them (not `Frozen._set`'s loop: this is
        # once per scanned file)
        _set(self, "path", path)
        _set(self, "sop_class_uid", sop_class_uid)
        _set(self, "sop_instance_uid", sop_instance_uid)
        _set(self, "transfer_syntax", transfer_syntax)
        _set(self, "size", size)
        _set(self, "data_offset", data_offset)
        _set(self, "mtime_ns", mtime_ns)


#: A named tuple, not a frozen dataclass: each dataclass created at import cost a send ~0.5 ms of start-up
#: (docs/design.md, "Small runs").
class ScanFailure(NamedTuple):
    """An input that cannot be sent, with a reason a person can act on."""

    path: str
    reason: str


_SOP_CLASS: Final = 0x00080016
_SOP_INSTANCE: Final = 0x00080018
_NATIVE: Final = (IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE)
_HEAD_SIZE: Final = 8192  # first read: preamble, meta and the start of the data set of nearly every file

_TAG = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}
_META_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 2-byte length


def _clean_uid(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\0 ").strip()


def _looks_explicit(vr: bytes) -> bool:
    return vr in ALL_VRS


def _detect_encoding(src: Source, pos: int) -> tuple[bool, bool] | None:
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


def find_uids(src: Source, pos: int, explicit: bool, little: bool, strict: bool) -> tuple[str, str]:
    """Return the data set's (SOP Class UID, SOP Instance UID); empty strings where absent.

    Walks top-level elements only until (0008,0018). With `strict` (a bare data set, not yet known
    to be DICOM) tags must ascend and values must fit, else `WalkError` is raised.
    """
    sop_class = sop_instance = ""
    previous = -1
    size = src.size
    while pos < size:
        tag, vr, length, vpos = read_header(src, pos, explicit, little)
        if tag > _SOP_INSTANCE:
            break
        if strict and tag <= previous:
            raise WalkError("not a data set")
        previous = tag
        if length == UNDEFINED:
            pos = walk_items(src, vpos, explicit if vr != b"UN" else False, little or vr == b"UN", tag)
            continue
        if length > size - vpos:
            raise WalkError("value beyond end of file")
        if tag == _SOP_CLASS or tag == _SOP_INSTANCE:
            raw = src.get(vpos, length)
            value = _clean_uid(raw or b"")
            if tag == _SOP_CLASS:
                sop_class = value
            else:
                sop_instance = value
        pos = vpos + length
    return sop_class, sop_instance


def _inflated_head(src: Source, pos: int, limit: int = 65536) -> bytes:
    """Inflate the start of a deflated data set (enough to find the SOP UIDs)."""
    raw = src.get(pos, min(limit, src.size - pos)) or b""
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw, limit)
    except zlib.error:
        return b""


def _read_meta(src: Source, pos: int) -> tuple[dict[int, str], int]:
    """Parse the group 0002 elements from `pos`: ({element: value}, data set offset).

    File meta information is explicit VR little endian; like pydicom, fall back to implicit VR for
    writers that got that wrong. Raises `WalkError` if an element runs past the end of the file.
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
                raise WalkError("truncated file meta information")
            buf, off = head, 0
        group, elem, vr, short = unpack_short(buf, off)
        if group != 0x0002:
            break
        if implicit is None:
            implicit = vr not in ALL_VRS
        if implicit:
            length, vpos = unpack_u32(buf, off + 4)[0], pos + 8
        elif vr in LONG_VRS:
            if off + 12 > len(buf):
                raise WalkError("truncated file meta information")
            length, vpos = unpack_u32(buf, off + 8)[0], pos + 12
        else:
            length, vpos = short, pos + 8
        if length == UNDEFINED:
            raise WalkError(f"invalid file meta information: undefined length in (0002,{elem:04X})")
        if vpos + length > size:
            raise WalkError("truncated file meta information")
        if elem == 0x0002 or elem == 0x0003 or elem == 0x0010:
            values[elem] = _clean_uid(src.get(vpos, length) or b"")
        pos = vpos + length
    return values, pos


def read_instance(
    path: str, read_mode: ReadMode | str = "auto", regular: bool = False
) -> Instance | ScanFailure:
    """Read the header of one file: SOP class and instance, transfer syntax, data set offset.

    Parameters
    ----------
    path : str
        File to read.
    read_mode : {"auto", "file-only", "dataset"}
        storescu's ``+f`` (file format, or a bare data set if there is no "DICM" prefix), ``+fo``
        (file format only: a preamble and "DICM" prefix, or file meta information without them, as DCMTK
        reads it) and ``-f`` (a bare data set). A file that does have a preamble and
        "DICM" prefix is read as file format in every mode: sending its meta information as part
        of the data set would corrupt it.
    regular : bool
        The caller has just seen a regular file at `path` (`sender.inputs.iter_paths` does, with the
        stat or directory entry it lists it from): the first ``stat`` is skipped. The file is still
        opened without blocking and checked with ``fstat``, as for any path.

    Returns
    -------
    Instance or ScanFailure
        Never raises for bad input. Reads only the first few kilobytes (meta information and the
        data set up to (0008,0018)); pixel data is never read.
    """
    # A FIFO, socket or device is never opened: opening a FIFO blocks until a writer comes, and opening
    # a device can have effects. stat first; O_NONBLOCK covers a file swapped for a FIFO in between.
    if not regular:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return ScanFailure(path, "no such file or directory")
        except OSError as exc:
            return ScanFailure(path, f"cannot read: {exc.strerror or exc}")
        if not stat.S_ISREG(st.st_mode):
            return _not_regular(path, st.st_mode)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return ScanFailure(path, "no such file or directory")
    except OSError as exc:
        return ScanFailure(path, f"cannot read: {exc.strerror or exc}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return _not_regular(path, st.st_mode)
        if st.st_size == 0:
            return ScanFailure(path, "empty file")
        head = os.pread(fd, _HEAD_SIZE, 0)
        src = Source(fd, st.st_size, head, chunk=_HEAD_SIZE)
        return _parse(path, src, read_mode, st)
    except OSError as exc:
        return ScanFailure(path, f"cannot read: {exc.strerror or exc}")
    finally:
        os.close(fd)


#: How every input is opened: never blocking (a FIFO that replaced a file since its stat), never
#: becoming the controlling terminal. O_NONBLOCK changes nothing for regular files.
_OPEN_FLAGS: Final = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)


def not_regular_kind(mode: int) -> str:
    """A person's name for an inode that is not a regular file ("FIFO (named pipe)", "socket", ...)."""
    for test, name in (
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "unknown file type"


def _not_regular(path: str, mode: int) -> ScanFailure:
    if stat.S_ISDIR(mode):
        return ScanFailure(path, "is a directory; use +sd/--scan-directories")
    return ScanFailure(path, f"not a regular file: {not_regular_kind(mode)}")


def _compiled_scan() -> Callable[[bytes, int], tuple[str, str, str, int] | None] | None:
    """`_parse`'s compiled twin for the usual file (docs/design.md, "A compiled walker"), when the
    compiled walker is in use (`walk.COMPILED`: built, and ``BATCHSTORE_PURE_PYTHON`` not set)."""
    if not COMPILED:
        return None
    from . import _walkfast  # type: ignore[attr-defined]

    scan: Callable[[bytes, int], tuple[str, str, str, int] | None] = _walkfast.scan_part10
    return scan


#: `_parse` of a file with a preamble, explicit VR little endian meta information and its SOP UIDs in its
#: first read, in C: (SOP class, SOP instance, transfer syntax, data set offset), or None where the Python
#: parser must look (anything else, every error). `read_instance` of a 1 KB file: ~8 us with it, ~19 us
#: without (docs/design.md, "A compiled walker").
_SCAN_COMPILED = _compiled_scan()
#: True when `read_instance` parses the usual file in C.
COMPILED_SCAN: Final = _SCAN_COMPILED is not None


def _parse(path: str, src: Source, read_mode: str, st: os.stat_result) -> Instance | ScanFailure:
    if read_mode not in ("auto", "file-only", "dataset"):
        raise ValueError(f"unknown read mode {read_mode!r}")
    head: bytes = src.buf  # type: ignore[assignment]  # read_instance filled it from a file
    if _SCAN_COMPILED is not None:
        found = _SCAN_COMPILED(head, src.size)
        if found is not None:
            sop_class, sop_instance, ts, offset = found
            return Instance(path, sop_class, sop_instance, ts, st.st_size, offset, st.st_mtime_ns)
    return _parse_py(path, src, read_mode, st, head)


def _parse_py(
    path: str, src: Source, read_mode: str, st: os.stat_result, head: bytes
) -> Instance | ScanFailure:
    meta: dict[int, str] = {}
    if len(head) >= 132 and head[128:132] == b"DICM":
        part10 = True
        try:
            meta, offset = _read_meta(src, 132)
        except WalkError as exc:
            return ScanFailure(path, str(exc))
    else:
        part10 = False
        offset = 0
        if head[:2] == b"\x02\x00" and _looks_explicit(head[4:6]):
            # file meta information without the preamble: pydicom and DCMTK accept it, DCMTK in every
            # read mode (storescu +fo sends such a file: it is file format, only the preamble is missing)
            try:
                meta, offset = _read_meta(src, 0)
            except WalkError:
                meta, offset = {}, 0
            part10 = bool(meta)
        if read_mode == "file-only" and not part10:
            return ScanFailure(
                path, "not a DICOM file format file (no DICM prefix; +fo/--read-file-only given)"
            )

    ts = meta.get(0x0010, "")
    walk_src, walk_pos = src, offset
    if ts == DEFLATED_EXPLICIT_VR_LE:
        inflated = _inflated_head(src, offset)
        walk_src, walk_pos = Source(-1, len(inflated), inflated), 0
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
    damage = ""  # why the walk to the SOP UIDs stopped, for a file that has none in its meta either
    try:
        sop_class, sop_instance = find_uids(walk_src, walk_pos, *encoding, strict=not part10)
    except WalkError as exc:
        if not part10:
            return ScanFailure(path, "not a DICOM file (no DICM prefix, not a data set)")
        sop_class, sop_instance, damage = "", "", f": {exc}"
    sop_class = sop_class or meta.get(0x0002, "")
    sop_instance = sop_instance or meta.get(0x0003, "")
    if not sop_class:
        return ScanFailure(path, "missing SOP Class UID" + damage)
    if not sop_instance:
        return ScanFailure(path, "missing SOP Instance UID" + damage)
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
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return _not_regular(path, info.st_mode).reason
        size = info.st_size
        if data_offset > size:
            return (
                f"truncated file: data set offset {data_offset} is beyond the end of the file ({size} bytes)"
            )
        src = Source(fd, size)
        if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
            return _verify_deflated(src, data_offset)
        return _verify(src, data_offset, transfer_syntax)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    finally:
        os.close(fd)


def _verify(src: Source, data_offset: int, transfer_syntax: str) -> str | None:
    try:
        if _is_standard(transfer_syntax):
            encoding = _encoding_of(transfer_syntax)
            if transfer_syntax not in _NATIVE:
                reason = _contradiction(src, data_offset, transfer_syntax, encoding)
                if reason:
                    return reason
        else:  # a private transfer syntax: trust the bytes
            encoding = _detect_encoding(src, data_offset) or (True, True)
        if src.fd < 0 and encoding == (True, True):  # in memory: skip the plain elements fast
            data_offset = skip_plain_explicit_le(src.buf, data_offset)
        walk_dataset(src, data_offset, *encoding)
        return None
    except WalkError as exc:
        return str(exc)
    except RecursionError:
        return "corrupt data set: sequences nested too deeply"


def _contradiction(src: Source, pos: int, ts: str, encoding: tuple[bool, bool]) -> str | None:
    """A data set whose first element says another encoding than its compressed transfer syntax's
    (pydicom's ``SC_rgb_jpeg.dcm``: JPEG baseline in the header, implicit VR in the data set): the
    peer could not parse it, so it fails here, before any byte goes out (as storescu and dcmsend do)."""
    detected = _detect_encoding(src, pos)
    if detected is None or detected == encoding:
        return None
    from .uids import ts_name  # only on this rare error path: the name needs pydicom

    found = "implicit VR little endian" if not detected[0] else "explicit VR big endian"
    return (
        f"data set encoding contradicts its header: the header says {ts_name(ts)} (explicit VR little "
        f"endian), the data set is {found}"
    )


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
    fd = os.open(path, _OPEN_FLAGS)
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


def data_set_offset(data: bytes) -> int:
    """Offset of the data set in a Part 10 file held in memory: after the preamble and file meta information.

    Raises
    ------
    ValueError
        If `data` has no "DICM" prefix at offset 128 or its file meta information is truncated.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM marker at offset 128)")
    try:
        return _read_meta(Source(-1, len(data), bytes(data)), 132)[1]
    except WalkError as exc:
        raise ValueError(str(exc)) from exc


def verify_bytes(data: bytes, transfer_syntax: str) -> str | None:
    """`verify_dataset` for a data set already in memory (`data` starts with its first element).

    A deflated data set is not checked here (use `verify_dataset` on the file).
    """
    if transfer_syntax == EXPLICIT_VR_LE and skip_plain_explicit_le(data, 0) == len(data):
        return None  # the usual 1 KB file: every element plain, as `_verify` would find after its skip
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        return None
    return _verify(Source(-1, len(data), bytes(data)), 0, transfer_syntax)


def _verify_deflated(src: Source, pos: int) -> str | None:
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
