"""Re-encoding a received file with storescp's output options (``+te +tb +ti +td``, ``+g -g``, ``-e``,
``+p``, ``-u``, ``+uc``, ``+cl``), through pydicom: the receiver's slow path.

The options come as any object with the attributes of `OutputEncoding` (the receiver's `StorageOptions`
has them), so this module needs nothing of the receiver.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from typing import Protocol

from .meta import file_meta
from .transcode import SWAP_WIDTH, swap_bytes
from .uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    NATIVE_CONVERTIBLE,
    ts_name,
)

log = logging.getLogger("batchstore.storage")

#: ``+t…`` option value -> output transfer syntax (None: the one received).
WRITE_XFER = {
    "same": None,
    "little": EXPLICIT_VR_LE,
    "big": EXPLICIT_VR_BE,
    "implicit": IMPLICIT_VR_LE,
    "deflated": DEFLATED_EXPLICIT_VR_LE,
}

# Tags whose values `reencode_file` returns (the receiver checks and sorts by them).
TAG_SOP_CLASS_UID = 0x00080016
TAG_SOP_INSTANCE_UID = 0x00080018
TAG_PATIENT_NAME = 0x00100010
TAG_STUDY_INSTANCE_UID = 0x0020000D
TAG_PIXEL_DATA = 0x7FE00010


class OutputEncoding(Protocol):
    """The output options `reencode_file` reads (see `batchstore.receiver.options.StorageOptions`)."""

    @property
    def write_meta(self) -> bool: ...

    @property
    def write_xfer(self) -> str: ...

    @property
    def new_vr(self) -> bool: ...

    @property
    def group_length(self) -> str: ...

    @property
    def explicit_length(self) -> bool: ...

    @property
    def padding(self) -> tuple[int, int] | None: ...

    @property
    def convert_un(self) -> bool: ...

    @property
    def compression_level(self) -> int | None: ...


def dataset_encoding(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """(explicit VR, little endian, deflated) of a transfer syntax; compressed ones are Explicit VR LE."""
    if transfer_syntax == IMPLICIT_VR_LE:
        return False, True, False
    if transfer_syntax == EXPLICIT_VR_BE:
        return True, False, False
    return True, True, transfer_syntax == DEFLATED_EXPLICIT_VR_LE


#: VRs storescp's ``-u`` writes as OB ("post-1993" value representations).
NEW_VRS = frozenset(("UN", "UT", "UC", "UR", "OD", "OF", "OL", "OV"))
_PADDING_TAG = 0xFFFCFFFC


class _Encoder:
    """Encodes a pydicom data set with storescp's output options: byte order, VR, group lengths,
    sequence/item lengths, item padding."""

    def __init__(self, explicit: bool, little: bool, swap: bool, options: OutputEncoding) -> None:
        self.explicit = explicit
        self.little = little
        self.order = "<" if little else ">"
        self.swap = swap
        #: byte-swap width of an element when the byte order changes, where it is not its VR's word size
        self.swap_width: dict[int, int] = {}
        self.group_length = options.group_length
        self.undefined = not options.explicit_length
        self.new_vr = options.new_vr
        self.item_pad = options.padding[1] if options.padding else 0
        self.strip_padding = options.padding is not None

    def _buffer(self):  # type: ignore[no-untyped-def]
        from pydicom.filebase import DicomBytesIO

        fp = DicomBytesIO()
        fp.is_little_endian = self.little
        fp.is_implicit_VR = not self.explicit
        return fp

    def dataset(self, ds, parent_encoding) -> bytes:  # type: ignore[no-untyped-def]
        encodings = ds.get("SpecificCharacterSet", parent_encoding)
        groups: dict[int, list[int]] = {}
        had_length: set[int] = set()
        for tag in sorted(ds.keys()):
            group = tag >> 16
            if group <= 0x0002:
                continue  # command/file meta elements never belong in a data set
            if tag & 0xFFFF == 0:
                had_length.add(group)
                continue
            if tag == _PADDING_TAG and self.strip_padding:
                continue
            groups.setdefault(group, []).append(tag)
        out = self._buffer()
        for group in sorted(groups):
            with_length = group < 0xFFFC and (
                self.group_length == "create" or (self.group_length == "recalc" and group in had_length)
            )
            target = self._buffer() if with_length else out
            for tag in groups[group]:
                self.element(target, ds[tag], encodings)
            if with_length:
                body = target.getvalue()
                out.write(self._short_element(group << 16, b"UL", struct.pack(self.order + "L", len(body))))
                out.write(body)
        return bytes(out.getvalue())

    def _short_element(self, tag: int, vr: bytes, value: bytes) -> bytes:
        head = struct.pack(self.order + "HH", tag >> 16, tag & 0xFFFF)
        if self.explicit:
            return head + vr + struct.pack(self.order + "H", len(value)) + value
        return head + struct.pack(self.order + "L", len(value)) + value

    def padding(self, length: int, multiple: int) -> bytes:
        """A (FFFC,FFFC) element making `length` plus itself a multiple of `multiple` (b"" if aligned)."""
        if multiple <= 1 or length % multiple == 0:
            return b""
        header = 12 if self.explicit else 8
        pad = -(length + header) % multiple
        if pad % 2:
            pad += multiple
            if pad % 2:
                return b""
        head = struct.pack(self.order + "HH", 0xFFFC, 0xFFFC)
        if self.explicit:
            head += b"OB\0\0"
        return head + struct.pack(self.order + "L", pad) + bytes(pad)

    def element(self, fp, elem, encodings) -> None:  # type: ignore[no-untyped-def]
        from pydicom.dataelem import DataElement
        from pydicom.filewriter import write_data_element

        vr = elem.VR
        if vr == "SQ":
            body = b"".join(self.item(item, encodings) for item in elem.value or ())
            fp.write(struct.pack(self.order + "HH", elem.tag >> 16, elem.tag & 0xFFFF))
            if self.explicit:
                fp.write(b"SQ\0\0")
            if self.undefined:
                fp.write(struct.pack(self.order + "L", 0xFFFFFFFF) + body)
                fp.write(struct.pack(self.order + "HHL", 0xFFFE, 0xE0DD, 0))
            else:
                fp.write(struct.pack(self.order + "L", len(body)) + body)
            return
        if not self.new_vr and vr in NEW_VRS and self.explicit:
            elem = DataElement(elem.tag, "OB", self._value_bytes(elem, encodings))
        elif (
            self.swap and vr in SWAP_WIDTH and isinstance(elem.value, bytes) and not elem.is_undefined_length
        ):
            width = self.swap_width.get(elem.tag, SWAP_WIDTH[vr])
            elem = DataElement(elem.tag, vr, swap_bytes(elem.value, width))
        write_data_element(fp, elem, encodings)

    def item(self, ds, encodings) -> bytes:  # type: ignore[no-untyped-def]
        content = self.dataset(ds, encodings)
        if self.item_pad:
            content += self.padding(len(content), self.item_pad)
        if self.undefined:
            return (
                struct.pack(self.order + "HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
                + content
                + struct.pack(self.order + "HHL", 0xFFFE, 0xE00D, 0)
            )
        return struct.pack(self.order + "HHL", 0xFFFE, 0xE000, len(content)) + content

    def _value_bytes(self, elem, encodings) -> bytes:  # type: ignore[no-untyped-def]
        from pydicom.filewriter import write_data_element

        fp = self._buffer()
        fp.is_implicit_VR = True
        write_data_element(fp, elem, encodings)
        return bytes(fp.getvalue()[8:])


def reencode_file(
    src: str,
    dst: str,
    options: OutputEncoding,
    sop_class_uid: str,
    sop_instance_uid: str,
    source_ae: str = "",
) -> dict[int, str]:
    """Read the Part 10 file `src` with pydicom and write it to `dst` with the output options.

    Returns the data set's SOP Class/Instance UID, Study Instance UID and Patient's Name (for the check
    against the request and for sorting). A compressed data set keeps its transfer syntax (with a warning)
    when another one is asked for: storescp does not decompress either.
    """
    import pydicom
    from pydicom import config

    saved = (config.replace_un_with_known_vr, config.settings.reading_validation_mode)
    saved_writing = config.settings.writing_validation_mode
    config.replace_un_with_known_vr = options.convert_un
    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds = pydicom.dcmread(src)
        ts_in = str(ds.file_meta.TransferSyntaxUID)
        ts_out = WRITE_XFER[options.write_xfer] or ts_in
        if ts_out != ts_in and ts_in not in NATIVE_CONVERTIBLE and "PixelData" in ds:
            ts_out = _decompress(ds, src, ts_in, ts_out, sop_instance_uid)
        explicit, little, deflated = dataset_encoding(ts_out)
        _explicit_in, little_in, _deflated_in = dataset_encoding(ts_in)
        pydicom.filewriter.correct_ambiguous_vr(ds, little)
        encoder = _Encoder(explicit, little, little != little_in, options)
        if ts_in != ts_out and ts_in not in NATIVE_CONVERTIBLE and not little:
            encoder.swap_width[TAG_PIXEL_DATA] = _sample_width(ds)  # decoded: one swap per sample
        body = encoder.dataset(ds, "iso8859")
        values: dict[int, str] = {}
        for tag, keyword in (
            (TAG_SOP_CLASS_UID, "SOPClassUID"),
            (TAG_SOP_INSTANCE_UID, "SOPInstanceUID"),
            (TAG_STUDY_INSTANCE_UID, "StudyInstanceUID"),
        ):
            if keyword in ds:
                values[tag] = str(ds[keyword].value).rstrip("\0 ")
        if "PatientName" in ds:
            values[TAG_PATIENT_NAME] = str(ds.PatientName)
    finally:
        config.replace_un_with_known_vr, config.settings.reading_validation_mode = saved
        config.settings.writing_validation_mode = saved_writing
    meta = file_meta(sop_class_uid, sop_instance_uid, ts_out, source_ae) if options.write_meta else b""
    if options.padding is not None and options.write_meta:
        if deflated:
            log.warning("+p: no file padding with the deflated transfer syntax")
        else:
            body += encoder.padding(len(meta) + len(body), options.padding[0])
    if deflated:
        level = 6 if options.compression_level is None else options.compression_level
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
        body = compressor.compress(body) + compressor.flush()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    with os.fdopen(fd, "wb") as out:
        out.write(meta + body if meta else body)
    return values


def _decompress(ds, src: str, ts_in: str, ts_out: str, sop_instance_uid: str) -> str:  # type: ignore[no-untyped-def]
    """Decode `ds`'s compressed pixel data in place for writing it as `ts_out`; return the syntax to write:
    `ts_out`, or `ts_in` (written as received, with a warning) when no installed codec decodes it."""
    from .codecs import can_decode
    from .transcode import decompress_in_place

    if not can_decode(ts_in):
        reason = "no decoder for this transfer syntax"
    else:
        try:
            decompress_in_place(ds, ts_in, src)
        except Exception as exc:  # the plugins raise ValueError, RuntimeError and their own
            reason = f"cannot decode its pixel data ({type(exc).__name__}: {exc})"
        else:
            log.debug("%s: decompressed from %s, written as %s", sop_instance_uid, ts_name(ts_in), ts_name(ts_out))
            return ts_out
    log.warning(
        "cannot write %s as %s: %s; written as received, in %s",
        sop_instance_uid,
        ts_name(ts_out),
        reason,
        ts_name(ts_in),
    )
    return ts_in


def _sample_width(ds) -> int:  # type: ignore[no-untyped-def]
    """Bytes per decoded sample (Bits Allocated rounded up to bytes; 1 to 8)."""
    return max(1, min(8, (int(ds.get("BitsAllocated", 16)) + 7) // 8))
