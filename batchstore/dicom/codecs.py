"""Pixel data codecs: which transfer syntaxes the installed plugins decode and encode, and the calls to them.

Every decoder and encoder is a plugin of pydicom's ecosystem, declared as a dependency of the package:
pylibjpeg with pylibjpeg-libjpeg (JPEG), pylibjpeg-openjpeg (JPEG 2000, HTJ2K) and pylibjpeg-rle (RLE),
pyjpegls (JPEG-LS), and python-gdcm for the JPEG encoders nothing else provides (lossless SV1, baseline,
extended: storescu's ``-xs``, ``-xy``, ``-xx``). Nothing here decodes or encodes by itself.

The tables `DECODABLE` and `ENCODABLE` are static (what the declared dependencies provide), so that choosing
a presentation context imports nothing; pydicom, numpy and the plugins are imported inside the functions,
on the conversion path only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, cast

from .uids import (
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_LOSSY,
    RLE_LOSSLESS,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "DECODABLE",
    "ENCODABLE",
    "NotEncodable",
    "can_decode",
    "can_encode",
    "decode_monochrome",
    "encode_pixels",
    "iter_decoded_frames",
    "lossy_method",
    "FAST_DECODER",
]

#: Transfer syntaxes whose pixel data the installed plugins decode (pydicom's decoders).
DECODABLE: Final = frozenset(
    (
        RLE_LOSSLESS,
        JPEG_BASELINE,
        JPEG_EXTENDED,
        JPEG_LOSSLESS,
        JPEG_LOSSLESS_SV1,
        JPEG_LS_LOSSLESS,
        JPEG_LS_LOSSY,
        JPEG_2000_LOSSLESS,
        JPEG_2000,
        HTJ2K_LOSSLESS,
        HTJ2K_LOSSLESS_RPCL,
        HTJ2K,
    )
)

#: Encoders of pydicom's own ``Dataset.compress`` (pylibjpeg-rle, pyjpegls, pylibjpeg-openjpeg).
_PYDICOM_ENCODED: Final = frozenset(
    (RLE_LOSSLESS, JPEG_LS_LOSSLESS, JPEG_LS_LOSSY, JPEG_2000_LOSSLESS, JPEG_2000)
)
#: Encoders only GDCM has (storescu's -xs, -xy, -xx, and process 14 with any predictor).
_GDCM_ENCODED: Final = {
    JPEG_LOSSLESS_SV1: "JPEGLosslessProcess14_1",
    JPEG_LOSSLESS: "JPEGLosslessProcess14",
    JPEG_BASELINE: "JPEGBaselineProcess1",
    JPEG_EXTENDED: "JPEGExtendedProcess2_4",
}
#: Transfer syntaxes uncompressed pixel data can be compressed into.
ENCODABLE: Final = _PYDICOM_ENCODED | frozenset(_GDCM_ENCODED)

#: Lossy Image Compression Method (0028,2114) of each lossy syntax (PS3.3 C.7.6.1.1.5.1).
_LOSSY_METHOD: Final = {
    JPEG_BASELINE: "ISO_10918_1",
    JPEG_EXTENDED: "ISO_10918_1",
    JPEG_LS_LOSSY: "ISO_14495_1",
    JPEG_2000: "ISO_15444_1",
    HTJ2K: "ISO_15444_15",
}

#: Settings of the lossy encoders (storescu's defaults where it has the codec: JPEG quality 90,
#: JPEG-LS near-lossless deviation 2; a 10:1 JPEG 2000 compression ratio).
JPEG_QUALITY = 90
JPEG_LS_NEAR = 2
J2K_RATIO = 10


#: Decoding plugins, fastest first (perf/bench_transcode.py, 512 x 512 x 16 bit: JPEG-LS pyjpegls 7 ms,
#: pylibjpeg 17-53 ms; JPEG lossless GDCM 11 ms, pylibjpeg 17 ms; RLE pylibjpeg 2 ms, pydicom 11 ms).
#: A plugin that fails on the first frame hands over to the next (GDCM's JPEG 2000 decoder fails on a
#: pixel representation mismatch that pylibjpeg decodes).
_DEFAULT_DECODERS: Final = ("pylibjpeg", "pyjpegls", "pydicom", "gdcm")
_JPEG_DECODERS: Final = ("gdcm", "pylibjpeg")
_DECODER_PREFERENCE: Final = {
    JPEG_LS_LOSSLESS: ("pyjpegls", "gdcm", "pylibjpeg"),
    JPEG_LS_LOSSY: ("pyjpegls", "gdcm", "pylibjpeg"),
    JPEG_BASELINE: _JPEG_DECODERS,
    JPEG_EXTENDED: _JPEG_DECODERS,
    JPEG_LOSSLESS: _JPEG_DECODERS,
    JPEG_LOSSLESS_SV1: _JPEG_DECODERS,
}


#: The fast path (`decode_monochrome`): the decoder that turns a monochrome image of these syntaxes into
#: native bytes fastest, measured per 512 x 512 x 16-bit frame with ``python perf/bench_transcode.py
#: --decoders`` (CPU ms, median): JPEG lossless GDCM reading the file into the output buffer 4.3, GDCM
#: through pydicom 10.2 (half of it GDCM's bytes-to-str-to-bytes round trip), pylibjpeg 13.0; JPEG-LS
#: lossless GDCM into the buffer 5.4, pyjpegls 6.5, GDCM through pydicom 13.5, pylibjpeg 24.6; RLE
#: pylibjpeg-rle 0.9, pydicom's numpy decoder 10.7 (GDCM's RLE reader gives up on some 16-bit images).
FAST_DECODER: Final = {
    JPEG_LOSSLESS: "gdcm",
    JPEG_LOSSLESS_SV1: "gdcm",
    JPEG_LS_LOSSLESS: "gdcm",
    RLE_LOSSLESS: "pylibjpeg-rle",
}


#: The largest image GDCM decodes on the fast path: it decodes a whole file into one buffer that is
#: then copied into the sent one, so a larger image goes frame by frame through pydicom instead.
GDCM_FAST_LIMIT = 32 << 20


def decode_monochrome(
    path: str,
    source_ts: str,
    frames: list[bytes] | list[memoryview] | None,
    rows: int,
    columns: int,
    bits_allocated: int,
    out: memoryview,
) -> None:
    """Decode a monochrome image (one sample per pixel, all its frames) of `source_ts` (a key of
    `FAST_DECODER`) into `out` as native little-endian pixels, exactly ``len(out)`` bytes, with the fastest
    decoder: GDCM reads the file `path` itself; pylibjpeg-rle decodes `frames` (the encoded frames,
    one by one, each straight into its place). Neither imports pydicom.

    Raises
    ------
    ValueError
        The decoder failed, or gave another length than the data set describes (the caller falls back to
        `iter_decoded_frames`).
    """
    decoder = FAST_DECODER.get(source_ts)
    if decoder == "gdcm" and len(out) <= GDCM_FAST_LIMIT:
        out[:] = _gdcm_decode_file(path, len(out))
    elif decoder == "pylibjpeg-rle" and frames:
        from rle.utils import decode_pixel_data

        size = len(out) // len(frames)
        pos = 0
        for frame in frames:
            decoded = cast(
                bytearray,
                decode_pixel_data(
                    bytes(frame),
                    version=2,
                    rows=rows,
                    columns=columns,
                    bits_allocated=bits_allocated,
                    byteorder="<",
                ),
            )
            if len(decoded) != size:
                raise ValueError(f"decoded {len(decoded)} bytes where {size} were expected")
            out[pos : pos + size] = decoded
            pos += size
        if pos != len(out):
            raise ValueError("the frames do not fill the image")
    else:
        raise ValueError(f"no fast decoder for {source_ts}")


def _gdcm_decode_file(path: str, expected: int) -> bytearray:
    """GDCM decodes the whole image of file `path` into a buffer of `expected` bytes."""
    import gdcm

    gdcm.Trace.WarningOff()
    reader = gdcm.ImageRegionReader()
    reader.SetFileName(path)
    if not reader.ReadInformation():
        raise ValueError("GDCM cannot read the image")
    x, y, z = gdcm.ImageHelper.GetDimensionsValue(reader.GetFile())
    box = gdcm.BoxRegion()
    box.SetDomain(0, x - 1, 0, y - 1, 0, z - 1)
    reader.SetRegion(box)
    if reader.ComputeBufferLength() != expected:
        raise ValueError("GDCM sees another image size than the data set describes")
    out = bytearray(expected)
    if not reader.ReadIntoBuffer(out):
        raise ValueError("GDCM cannot decode the image")
    return out


class NotEncodable(ValueError):
    """This data set cannot go out in that compressed syntax (no pixel data, a bit depth the codec lacks)."""


def can_decode(ts: str) -> bool:
    """Whether the installed plugins decode pixel data in `ts` (no import)."""
    return ts in DECODABLE


def can_encode(ts: str) -> bool:
    """Whether the installed plugins compress uncompressed pixel data into `ts` (no import)."""
    return ts in ENCODABLE


def lossy_method(ts: str) -> str:
    """The Lossy Image Compression Method of lossy syntax `ts` (``ISO_10918_1`` for JPEG ...)."""
    return _LOSSY_METHOD.get(ts, "")


def iter_decoded_frames(ds: Dataset, source_ts: str) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Decode `ds`'s pixel data frame by frame: yields (numpy array of one frame, its pixel description).

    The description is pydicom's (``photometric_interpretation``, ``planar_configuration``,
    ``samples_per_pixel`` ...) after decoding; colour data in YCbCr comes out as RGB, as pydicom's
    ``decompress`` gives it. One frame is held at a time.
    """
    from pydicom.pixels import get_decoder

    decoder = get_decoder(source_ts)
    if not decoder.is_available:
        raise RuntimeError(f"no decoder available ({'; '.join(decoder.missing_dependencies)})")
    available = list(decoder.available_plugins)
    preference = _DECODER_PREFERENCE.get(source_ts, _DEFAULT_DECODERS)
    plugins = [p for p in preference if p in available] + [p for p in available if p not in preference]
    errors: list[str] = []
    for plugin in plugins:
        frames = decoder.iter_array(ds, as_rgb=True, decoding_plugin=plugin)
        try:
            first = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # this plugin cannot decode it: the next one may
            errors.append(f"{plugin}: {exc}")
            continue
        yield first
        yield from frames
        return
    raise RuntimeError("; ".join(errors) or "no decoder plugin")


def encode_pixels(ds: Dataset, target_ts: str) -> None:
    """Compress `ds`'s uncompressed pixel data into `target_ts`, in place, and set its Lossy attributes.

    Raises
    ------
    NotEncodable
        The data set has no pixel data, or the codec cannot encode it (bit depth, photometric ...).
    """
    if "PixelData" not in ds:
        raise NotEncodable("no pixel data to compress")
    before = len(ds.PixelData)
    try:
        if target_ts in _GDCM_ENCODED:
            _encode_gdcm(ds, target_ts)
        else:
            kwargs: dict[str, Any] = {}
            if target_ts == JPEG_2000:
                kwargs["j2k_cr"] = [J2K_RATIO]
            elif target_ts == JPEG_LS_LOSSY:
                kwargs["jls_error"] = JPEG_LS_NEAR
            # never GDCM's plugin here: its RLE encoder aborts the whole process on some images
            plugin = "pyjpegls" if target_ts in (JPEG_LS_LOSSLESS, JPEG_LS_LOSSY) else "pylibjpeg"
            ds.compress(target_ts, encoding_plugin=plugin, generate_instance_uid=False, **kwargs)
    except NotEncodable:
        raise
    except Exception as exc:  # the plugins raise ValueError, RuntimeError, and their own
        raise NotEncodable(str(exc) or type(exc).__name__) from exc
    method = lossy_method(target_ts)
    if method:
        after = max(1, len(ds.PixelData))
        mark_lossy(ds, method, before / after)


def mark_lossy(ds: Dataset, method: str, ratio: float | None) -> None:
    """Record lossy compression in `ds` (PS3.3 C.7.6.1.1.5): (0028,2110) "01"; with a `ratio` (a new lossy
    step) the method and ratio are appended; without (decompressing an already lossy image) the method is
    added only when no method is recorded yet."""
    ds.LossyImageCompression = "01"
    methods = _as_list(ds.get("LossyImageCompressionMethod"))
    if ratio is not None:
        ratios = _as_list(ds.get("LossyImageCompressionRatio"))
        ds.LossyImageCompressionMethod = [*methods, method]
        ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.4g}"[:16]]
    elif not methods and method:
        ds.LossyImageCompressionMethod = method


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes, int, float)):
        return [value]
    return list(value)


def _encode_gdcm(ds: Dataset, target_ts: str) -> None:
    """Compress with GDCM's JPEG codec: through a temporary file, GDCM reads and writes files only."""
    import gdcm
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    bits = int(ds.get("BitsAllocated", 0))
    if target_ts == JPEG_BASELINE and bits != 8:
        raise NotEncodable(f"JPEG baseline holds 8-bit samples, not {bits}-bit")
    if target_ts == JPEG_EXTENDED and bits not in (8, 16):
        raise NotEncodable(f"JPEG extended holds 8 or 12-bit samples, not {bits}-bit")
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd_in, path_in = tempfile.mkstemp(suffix=".dcm", dir=directory)
    os.close(fd_in)
    path_out = path_in + ".out"
    original_meta = getattr(ds, "file_meta", None)
    try:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta = meta
        ds.save_as(path_in, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(path_in)
        if not reader.Read():
            raise NotEncodable("GDCM cannot read the image")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, _GDCM_ENCODED[target_ts])))
        if target_ts in (JPEG_BASELINE, JPEG_EXTENDED):
            codec = gdcm.JPEGCodec()
            codec.SetLossless(False)
            codec.SetQuality(JPEG_QUALITY)
            change.SetUserCodec(codec)
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise NotEncodable(f"GDCM cannot compress this image as {_GDCM_ENCODED[target_ts]}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(path_out)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise NotEncodable("GDCM cannot write the compressed image")
        out = pydicom.dcmread(path_out)
        ds.PixelData = out.PixelData
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.PhotometricInterpretation = out.PhotometricInterpretation
        ds.file_meta = original_meta if original_meta is not None else FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(target_ts)
    finally:
        for path in (path_in, path_out):
            try:
                os.unlink(path)
            except OSError:
                pass
