"""The slow path: decode a file with pydicom, edit it, and encode its data set for another transfer syntax.

Used only when a file cannot go out as its own bytes: the peer accepted a different uncompressed (or
deflated) transfer syntax, the user proposed a compressed syntax for uncompressed input (``-xs``, ``-xv``,
``-xr`` ...), a compressed file must be decompressed (its own syntax was rejected, dcmsend's
``--decompress-lossless``/``--decompress-lossy``), or the user asked for edits (``+II``/``+IR``/``+IS``/``+IP``
invented UIDs, ``-up`` UID padding correction, ``-u`` no post-1993 VRs). The codecs are `codecs`'s.

Decompression writes the decoded frames one at a time into the one buffer that is sent, so a large
multi-frame file costs its compressed size plus its decoded size (docs/design.md, "Transfer syntax
conversion"). Every deflated data set is padded to an even length (PS3.5 A.5; DCMTK and Orthanc abort
on an odd fragment).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from .uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    IMPLICIT_VR_LE,
    is_encapsulated,
    is_lossy,
    ts_name,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# pydicom and numpy are imported inside the functions: this module is imported by every send run, and
# most runs never take the slow path.

#: Word size of the binary VRs whose bytes must be swapped when the byte order changes (pydicom keeps
#: their values as raw bytes).
SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_NEW_VRS = {"UN", "UT", "UC", "UR", "OD", "OL", "OV", "SV", "UV"}


# The two classes below are named tuples, not frozen dataclasses: each dataclass created at import cost a
# send ~0.7 ms of start-up (docs/design.md, "Small runs"). ``edits._replace(run_id=...)`` gives a changed copy.
class EditOptions(NamedTuple):
    """Edits applied on the slow path (storescu's ``+II +IR +IS +IP -up -u``)."""

    invent_instance: bool = False
    invent_series_after: int = 0  # +IR n (0: off)
    invent_study_after: int = 0  # +IS n
    invent_patient_after: int = 0  # +IP n
    uid_padding: bool = False  # -up
    disable_new_vr: bool = False  # -u
    compression_level: int = 6  # +cl, for deflated output
    run_id: str = ""  # makes invented UIDs unique per run and identical across workers

    @property
    def any(self) -> bool:
        return self.invent_instance or self.uid_padding or self.disable_new_vr


def swap_bytes(value: bytes | bytearray, width: int) -> bytes:
    """`value` with the byte order of every `width`-byte word reversed; a trailing partial word is kept."""
    import numpy as np

    usable = len(value) - len(value) % width
    swapped = np.frombuffer(value, dtype=f"<u{width}", count=usable // width).byteswap().tobytes()
    return swapped + bytes(value[usable:])


def _swap_raw(ds: Dataset) -> None:
    """Byte-swap raw multi-byte values (OW/OF/OL/OD/OV) in place, recursively: pydicom leaves them raw."""
    for elem in ds.iterall():
        width = SWAP_WIDTH.get(elem.VR)
        if width and isinstance(elem.value, (bytes, bytearray)) and len(elem.value) % width == 0:
            elem.value = swap_bytes(elem.value, width)


def _strip_uid_padding(ds: Dataset) -> None:
    for elem in ds.iterall():
        if elem.VR == "UI" and isinstance(elem.value, str):
            elem.value = elem.value.rstrip(" \0")


def _old_vrs(ds: Dataset) -> None:
    for elem in ds.iterall():
        if elem.VR in _NEW_VRS:
            value = elem.value
            if isinstance(value, str):
                value = value.encode("latin-1", "replace")
            elif not isinstance(value, (bytes, bytearray)):
                continue
            elem.VR = "OB"
            elem.value = bytes(value)


def invent_uids(ds: Dataset, index: int, edits: EditOptions) -> None:
    """Give `ds` new UIDs the way storescu's ``+II +IR +IS +IP`` do, for the `index`-th file of the run.

    The `index`-th file gets a new SOP Instance UID; a new series starts every ``invent_series_after``
    files, a new study every ``invent_study_after`` series and a new patient every
    ``invent_patient_after`` studies. UIDs derive from (run_id, number), so every worker invents the
    same series/study/patient UIDs for the same numbers.
    """
    from pydicom.uid import generate_uid

    run = edits.run_id
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[run, "instance", str(index)])
    if edits.invent_series_after:
        series = index // edits.invent_series_after
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[run, "series", str(series)])
        if edits.invent_study_after:
            study = series // edits.invent_study_after
            ds.StudyInstanceUID = generate_uid(entropy_srcs=[run, "study", str(study)])
            if edits.invent_patient_after:
                patient = study // edits.invent_patient_after
                ds.PatientID = f"BS{run[:8]}{patient:06d}"[:64]
                ds.PatientName = f"BATCHSTORE^{run[:8]}{patient:06d}"


class Encoded(NamedTuple):
    """A data set re-encoded for sending."""

    payload: bytes | bytearray
    sop_instance_uid: str
    pixels_decoded: bool = False  # compressed pixel data were decoded (decompressed)


def deflate(data: bytes | bytearray, level: int = 6) -> bytes:
    """Deflate a data set (raw deflate, no zlib header), padded with a zero byte to an even length."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = compressor.compress(data) + compressor.flush()
    return out + b"\0" if len(out) % 2 else out


def read_padded(path: str, data_offset: int) -> bytes:
    """The data set of `path` as is, plus a zero byte when its length is odd (a deflated file's stream)."""
    with open(path, "rb") as fh:
        fh.seek(data_offset)
        data = fh.read()
    return data + b"\0" if len(data) % 2 else data


def encode_dataset(
    path: str,
    source_ts: str,
    target_ts: str,
    edits: EditOptions | None = None,
    index: int = 0,
    read_dataset_only: bool = False,
) -> Encoded:
    """Read `path` and return its data set encoded in `target_ts`, with the SOP Instance UID sent.

    Parameters
    ----------
    source_ts : str
        The file's own transfer syntax (as scanned).
    target_ts : str
        An uncompressed or deflated transfer syntax (a compressed source is decompressed), a compressed
        one (an uncompressed source is compressed; `codecs.NotEncodable` if it cannot be), or `source_ts`
        itself (edits only).
    read_dataset_only : bool
        The file is a bare data set without file meta information (storescu ``-f``).
    """
    edits = edits or EditOptions()
    decompress = is_encapsulated(source_ts) and not is_encapsulated(target_ts)
    if decompress and not edits.any and not read_dataset_only:
        fast = fast_decompressed(path, source_ts, target_ts)
        if fast is not None:
            fast_payload, fast_uid = fast
            if target_ts == DEFLATED_EXPLICIT_VR_LE:
                return Encoded(deflate(fast_payload, edits.compression_level), fast_uid, True)
            return Encoded(fast_payload, fast_uid, True)
    import pydicom

    from .codecs import encode_pixels

    # a worker process: files are sent as they are, not validated (values pydicom finds invalid, such as
    # over-long UIDs, are the file's own and go out unchanged, as storescu sends them)
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    ds = pydicom.dcmread(path, force=True)
    if read_dataset_only or not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(source_ts)  # as scanned: the data set's real encoding
    if edits.uid_padding:
        _strip_uid_padding(ds)
    if edits.invent_instance:
        invent_uids(ds, index, edits)
    if edits.disable_new_vr:
        _old_vrs(ds)
    uid = str(ds.get("SOPInstanceUID") or ds.file_meta.get("MediaStorageSOPInstanceUID") or "")
    if decompress and "PixelData" in ds:
        payload: bytes | bytearray = _decompressed(ds, source_ts, target_ts)
        if target_ts == DEFLATED_EXPLICIT_VR_LE:
            payload = deflate(payload, edits.compression_level)
        return Encoded(payload, uid, True)
    if is_encapsulated(target_ts) and target_ts != source_ts:
        if is_encapsulated(source_ts):
            raise ValueError(f"no conversion from {ts_name(source_ts)} to {ts_name(target_ts)}")
        encode_pixels(ds, target_ts)
    source_little = source_ts != EXPLICIT_VR_BE
    target_little = target_ts != EXPLICIT_VR_BE
    if source_little != target_little:
        _swap_raw(ds)
    data = _write(ds, target_ts)
    if target_ts == DEFLATED_EXPLICIT_VR_LE:
        return Encoded(deflate(data, edits.compression_level), uid)
    return Encoded(data, uid)


def _write(ds: Dataset, target_ts: str) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_implicit_VR = target_ts == IMPLICIT_VR_LE
    fp.is_little_endian = target_ts != EXPLICIT_VR_BE
    write_dataset(fp, ds)
    return fp.getvalue()


_PIXEL_DATA = 0x7FE00010


class DecodedPixels:
    """The pixel data of a data set being decompressed: `count` frames of `frame_size` bytes each, and
    `frames`, each frame's bytes (flat uint8 arrays, one held at a time). See `start_decoding`."""

    def __init__(self, frame_size: int, count: int, frames: Iterator[Any]) -> None:
        self.frame_size = frame_size
        self.count = count
        self.frames = frames
        self.total = frame_size * count

    def write_into(self, view: memoryview) -> None:
        """Write every frame, one after the other, into `view` (at least `total` bytes long)."""
        import numpy as np

        pos = 0
        done = 0
        for arr in self.frames:
            if done == self.count:
                raise ValueError(f"the decoder gave more frames than Number of Frames ({self.count})")
            flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
            if flat.nbytes != self.frame_size:
                raise ValueError("decoded frames differ in size")
            view[pos : pos + self.frame_size] = flat.data
            pos += self.frame_size
            done += 1
        if done != self.count:
            raise ValueError(f"decoded {done} of {self.count} frames")


#: Elements that describe encapsulated pixel data only, dropped when it is decompressed.
_ENCAPSULATION_ONLY = (0x7FE00001, 0x7FE00002)  # Extended Offset Table, Extended Offset Table Lengths


def start_decoding(ds: Dataset, source_ts: str) -> DecodedPixels:
    """Decode the first frame of `ds`'s compressed pixel data and describe the rest.

    `ds` is updated for the decoded pixels: Photometric Interpretation and Planar Configuration as the
    decoder gives them (YCbCr comes out as RGB), Lossy Image Compression kept "01" for a lossy source,
    the elements of encapsulation only removed. Its Pixel Data element is not touched.

    Raises
    ------
    ValueError, RuntimeError
        No plugin decodes it, or it decodes to more than an element can hold.
    """
    from .codecs import iter_decoded_frames, lossy_method, mark_lossy

    frames = iter_decoded_frames(ds, source_ts)
    first, info = next(frames)
    count = int(ds.get("NumberOfFrames") or 1)
    decoded = DecodedPixels(first.nbytes, count, _chain(first, (a for a, _ in frames)))
    if decoded.total >= 2**32 - 2:
        raise ValueError("decoded pixel data longer than a DICOM element can hold")
    ds.PhotometricInterpretation = info["photometric_interpretation"]
    if int(info.get("samples_per_pixel", 1)) > 1:
        ds.PlanarConfiguration = int(info.get("planar_configuration", 0))
    if is_lossy(source_ts):
        mark_lossy(ds, lossy_method(source_ts), None)  # the data stay lossy; keep saying so
    for tag in _ENCAPSULATION_ONLY:
        if tag in ds:
            del ds[tag]
    return decoded


def decompress_in_place(ds: Dataset, source_ts: str, path: str = "") -> None:
    """Replace `ds`'s compressed pixel data by the decoded pixels (native, little endian, padded to an
    even length; OB up to 8 bits allocated, OW above), with the attributes `start_decoding` sets.

    An image the fast path takes (`fast_decompressed`) is decoded by `codecs.decode_monochrome`; GDCM
    reads it from `path`, the file `ds` was read from (without it, not GDCM). When decoding fails, `ds` is
    left as it was (the receiver then writes it as received) and the error raised.
    """
    if _decode_fast_in_place(ds, source_ts, path):
        return
    from pydicom.dataelem import DataElement

    saved = {tag: (ds[tag].VR, ds[tag].value) for tag in _DECODING_CHANGES if tag in ds}
    try:
        decoded = start_decoding(ds, source_ts)
        buf = bytearray(decoded.total + decoded.total % 2)
        decoded.write_into(memoryview(buf))
    except BaseException:
        for tag in _DECODING_CHANGES:
            if tag in ds:
                del ds[tag]
        for tag, (vr, value) in saved.items():
            ds[tag] = DataElement(tag, vr, value)
        raise
    _set_native(ds, bytes(buf))


#: What `start_decoding` may change in a data set besides Pixel Data: Photometric Interpretation, Planar
#: Configuration, Lossy Image Compression, its Ratio and Method, the Extended Offset Table and its Lengths.
_DECODING_CHANGES = (0x00280004, 0x00280006, 0x00282110, 0x00282112, 0x00282114, 0x7FE00001, 0x7FE00002)


def _set_native(ds: Dataset, pixels: bytes) -> None:
    ds.PixelData = pixels
    elem = ds["PixelData"]
    elem.VR = "OB" if int(ds.get("BitsAllocated", 8)) <= 8 else "OW"
    elem.is_undefined_length = False


def _decode_fast_in_place(ds: Dataset, source_ts: str, path: str) -> bool:
    """`decompress_in_place` by the fast decoders; False (`ds` untouched) when the image does not qualify."""
    from .codecs import FAST_DECODER, decode_monochrome

    decoder = FAST_DECODER.get(source_ts)
    if decoder is None or (decoder == "gdcm" and not path) or "PixelData" not in ds:
        return False
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    bits_allocated = int(ds.get("BitsAllocated") or 0)
    count = int(ds.get("NumberOfFrames") or 1)
    if not _fast_image(
        int(ds.get("SamplesPerPixel") or 0),
        str(ds.get("PhotometricInterpretation") or "").encode("ascii", "replace"),
        bits_allocated,
        int(ds.get("BitsStored") or 0),
        int(ds.get("PixelRepresentation") or 0) == 1,
        rows,
        columns,
        count,
    ):
        return False
    frames = None
    if decoder == "pylibjpeg-rle":
        from pydicom.encaps import generate_frames

        frames = list(generate_frames(ds.PixelData, number_of_frames=count))
    total = rows * columns * count * (bits_allocated // 8)
    buf = bytearray(total + total % 2)
    try:
        with memoryview(buf) as view:
            decode_monochrome(path, source_ts, frames, rows, columns, bits_allocated, view[:total])
    except ValueError:
        return False
    for tag in _ENCAPSULATION_ONLY:
        if tag in ds:
            del ds[tag]
    _set_native(ds, bytes(buf))
    return True


def _fast_image(
    samples: int,
    photometric: bytes,
    bits_allocated: int,
    bits_stored: int,
    signed: bool,
    rows: int,
    columns: int,
    count: int,
) -> bool:
    """Whether the fast decoders take this image: monochrome, 8 or 16 bits allocated, unsigned or using
    every bit (their output is then the native pixel data as is), and not empty."""
    return (
        samples == 1
        and photometric in (b"MONOCHROME1", b"MONOCHROME2")
        and bits_allocated in (8, 16)
        and (not signed or bits_stored == bits_allocated)
        and rows > 0
        and columns > 0
        and count > 0
    )


def _decompressed(ds: Dataset, source_ts: str, target_ts: str) -> bytearray:
    """Decode `ds`'s pixel data frame by frame into one buffer holding the whole re-encoded data set.

    Peak memory: the file as read (compressed pixel data) + the decoded data set + one frame.
    """
    from pydicom.dataset import Dataset

    if target_ts == EXPLICIT_VR_BE:
        raise ValueError("decompressing into big endian is not supported; propose little endian")
    decoded = start_decoding(ds, source_ts)
    head_ds, tail_ds = Dataset(), Dataset()
    for elem in ds:
        if elem.tag < _PIXEL_DATA:
            head_ds.add(elem)
        elif elem.tag > _PIXEL_DATA:
            tail_ds.add(elem)
    head = _write(head_ds, target_ts)
    tail = _write(tail_ds, target_ts) if len(tail_ds) else b""
    total = decoded.total
    pad = total % 2
    length = total + pad
    if target_ts == IMPLICIT_VR_LE:
        element = struct.pack("<HHI", 0x7FE0, 0x0010, length)
    else:
        vr = b"OB" if int(ds.get("BitsAllocated", 8)) <= 8 else b"OW"
        element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr, 0, length)
    start = len(head) + len(element)
    buf = bytearray(start + length + len(tail))
    buf[: len(head)] = head
    buf[len(head) : start] = element
    decoded.write_into(memoryview(buf)[start : start + total])
    buf[start + length :] = tail
    return buf


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


# ---- the fast path of decompression: no pydicom data set, the decoder writes into the sent buffer

_TAG_SOP_INSTANCE_UID = 0x00080018
_TAG_SAMPLES = 0x00280002
_TAG_PHOTOMETRIC = 0x00280004
_TAG_FRAMES = 0x00280008
_TAG_ROWS = 0x00280010
_TAG_COLUMNS = 0x00280011
_TAG_BITS_ALLOCATED = 0x00280100
_TAG_BITS_STORED = 0x00280101
_TAG_PIXEL_REPRESENTATION = 0x00280103
_FAST_WANTED = frozenset(
    (
        _TAG_SOP_INSTANCE_UID,
        _TAG_SAMPLES,
        _TAG_PHOTOMETRIC,
        _TAG_FRAMES,
        _TAG_ROWS,
        _TAG_COLUMNS,
        _TAG_BITS_ALLOCATED,
        _TAG_BITS_STORED,
        _TAG_PIXEL_REPRESENTATION,
    )
)
_PIXEL_GROUP = 0x7FE00000


def fast_decompressed(path: str, source_ts: str, target_ts: str) -> tuple[bytearray, str] | None:
    """The data set of `path` with its pixel data decoded, encoded in `target_ts` (uncompressed little
    endian or deflated, before deflating), and its SOP Instance UID; None when the file does not qualify
    for this path and goes through pydicom (`_decompressed`).

    It qualifies when its syntax has a fast decoder (`codecs.FAST_DECODER`: lossless JPEG, JPEG-LS, RLE)
    and its image is monochrome with 8 or 16 bits allocated, unsigned or using every bit: then nothing
    but the Pixel Data element changes. The elements before and after it are copied as they are (Explicit
    VR Little Endian, the encoding of every compressed syntax) or re-encoded alone for Implicit VR; the
    decoder writes the pixels into the buffer that is sent, and pydicom is not imported (a worker that
    only takes this path saves its 0.3-0.5 s import; docs/design.md, "Transfer syntax conversion").
    """
    from .codecs import FAST_DECODER, decode_monochrome
    from .part10 import data_set_offset
    from .walk import Source, WalkError, read_elements, read_header, skip_plain_explicit_le, walk_items

    if source_ts not in FAST_DECODER or target_ts == EXPLICIT_VR_BE:
        return None
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        offset = data_set_offset(data[: 1 << 20])  # the file meta information (a copy of its start)
        values = read_elements(memoryview(data)[offset:], True, True, _FAST_WANTED)
        rows, columns = _us(values.get(_TAG_ROWS)), _us(values.get(_TAG_COLUMNS))
        bits_allocated = _us(values.get(_TAG_BITS_ALLOCATED))
        count = int(values.get(_TAG_FRAMES, b"1").strip(b" \0") or b"1")
        if not _fast_image(
            _us(values.get(_TAG_SAMPLES)),
            values.get(_TAG_PHOTOMETRIC, b"").strip(b" \0"),
            bits_allocated,
            _us(values.get(_TAG_BITS_STORED)),
            _us(values.get(_TAG_PIXEL_REPRESENTATION)) == 1,
            rows,
            columns,
            count,
        ):
            return None
        # the Pixel Data element: skip the elements before it (sequences included)
        src = Source(-1, len(data), data)
        pos = skip_plain_explicit_le(data, offset)
        pixel_start = value_pos = -1
        while pos < len(data):
            tag, _vr, length, vpos = read_header(src, pos, True, True)
            if tag >= _PIXEL_GROUP and pixel_start < 0:
                pixel_start = pos
            if tag == _PIXEL_DATA:
                if length != UNDEFINED_LENGTH:
                    return None
                value_pos = vpos
                break
            if tag >= _PIXEL_GROUP and tag not in _ENCAPSULATION_ONLY:
                return None
            pos = walk_items(src, vpos, True, True, tag) if length == UNDEFINED_LENGTH else vpos + length
            if tag < _PIXEL_GROUP:
                pos = skip_plain_explicit_le(data, pos)
        if value_pos < 0:
            return None
        fragments, pixel_end = _fragments(data, value_pos)
    except (ValueError, WalkError, struct.error):
        return None  # pydicom's path decides, and explains a failure
    if count == 1:
        frames: list[bytes] | list[memoryview] | None = [b"".join(fragments)]
    else:  # one fragment per frame, as RLE has it; otherwise only GDCM, which reads the file, takes it
        frames = fragments if len(fragments) == count else None
    head: bytes | memoryview = memoryview(data)[offset:pixel_start]
    tail: bytes | memoryview = memoryview(data)[pixel_end:]
    if target_ts == IMPLICIT_VR_LE:
        head, tail = _implicit(head), _implicit(tail)
    total = rows * columns * count * (bits_allocated // 8)
    length = total + total % 2
    if target_ts == IMPLICIT_VR_LE:
        element = struct.pack("<HHI", 0x7FE0, 0x0010, length)
    else:
        element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB" if bits_allocated == 8 else b"OW", 0, length)
    start = len(head) + len(element)
    out = bytearray(start + length + len(tail))
    out[: len(head)] = head
    out[len(head) : start] = element
    out[start + length :] = tail
    try:
        with memoryview(out) as view:
            decode_monochrome(path, source_ts, frames, rows, columns, bits_allocated, view[start : start + total])
    except ValueError:
        return None
    uid = bytes(values.get(_TAG_SOP_INSTANCE_UID, b"")).rstrip(b"\0 ").decode("ascii", "replace")
    return out, uid


def _fragments(data: bytes, pos: int) -> tuple[list[memoryview], int]:
    """The fragments of the encapsulated Pixel Data value at `pos` (its Basic Offset Table left out) and
    the position after its Sequence Delimitation Item.

    Raises
    ------
    ValueError
        Something other than an item inside it, or an item running past the end.
    """
    unpack = struct.Struct("<HHI").unpack_from
    fragments: list[memoryview] = []
    view = memoryview(data)
    first = True
    while True:
        group, element, length = unpack(data, pos)
        pos += 8
        if (group, element) == (0xFFFE, 0xE0DD):
            return fragments, pos
        if (group, element) != (0xFFFE, 0xE000) or pos + length > len(data):
            raise ValueError("malformed encapsulated pixel data")
        if not first:
            fragments.append(view[pos : pos + length])
        first = False
        pos += length


UNDEFINED_LENGTH = 0xFFFFFFFF


def _us(raw: bytes | None) -> int:
    """An unsigned short value (US, little endian); 0 when absent or malformed."""
    return int.from_bytes(raw[:2], "little") if raw and len(raw) >= 2 else 0


def _implicit(explicit_le: bytes | memoryview) -> bytes:
    """Explicit VR Little Endian elements re-encoded as Implicit VR Little Endian (pydicom)."""
    if not len(explicit_le):
        return b""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    fp = DicomBytesIO(bytes(explicit_le))
    ds = read_dataset(fp, is_implicit_VR=False, is_little_endian=True)  # type: ignore[arg-type]
    return _write(ds, IMPLICIT_VR_LE)
