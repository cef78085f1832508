"""The fast path of decompression (`transcode.fast_decompressed`): the decoder writes straight into the
buffer that is sent, no pydicom data set is built, and what goes out is byte for byte what the pydicom
path (`_decompressed`) produces. Files it does not take (colour, 32 bits, signed with unused bits) go
through pydicom.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from test_receive_helpers import ct_dataset

from batchstore.dicom import transcode, uids
from batchstore.dicom.codecs import encode_pixels

TARGETS = (uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE)


def _image(path: Path, ts: str, bits: int = 16, frames: int = 1, signed: bool = False) -> Path:
    """A CT image with a sequence before its pixel data and padding after it, compressed into `ts`."""
    rng = np.random.default_rng(bits * 10 + frames)
    dtype = {8: np.uint8, 16: np.int16 if signed else np.uint16}[bits]
    top = 200 if bits == 8 else 3000
    pixels = (rng.integers(0, top, (frames, 48, 48)) - (top // 2 if signed else 0)).astype(dtype)
    ds = ct_dataset(f"1.2.826.0.1.3680043.9.7781.13.{bits}.{frames}", rows=48)
    del ds[0x00100030]  # the UN element: pydicom's writer would need it kept raw
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    encode_pixels(ds, ts)
    ds.add_new(0xFFFCFFFC, "OB", b"\0\0")  # Data Set Trailing Padding: after Pixel Data, kept
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("ts", "bits", "frames", "signed"),
    [
        (uids.RLE_LOSSLESS, 16, 1, False),
        (uids.RLE_LOSSLESS, 8, 3, False),
        (uids.JPEG_LS_LOSSLESS, 16, 1, True),
        (uids.JPEG_LOSSLESS_SV1, 16, 1, False),
        (uids.JPEG_LOSSLESS_SV1, 8, 1, False),
    ],
)
def test_fast_path_sends_what_pydicom_path_sends(
    ts: str, bits: int, frames: int, signed: bool, tmp_path: Path
) -> None:
    path = str(_image(tmp_path / "in.dcm", ts, bits, frames, signed))
    original = pydicom.dcmread(path)
    for target in TARGETS:
        fast = transcode.fast_decompressed(path, ts, target)
        assert fast is not None, "the fast path did not take a monochrome lossless file"
        payload, uid = fast
        slow = transcode._decompressed(pydicom.dcmread(path), ts, target)
        assert bytes(payload) == bytes(slow)
        assert uid == original.SOPInstanceUID
        ds = pydicom.dcmread(io.BytesIO(bytes(payload)), force=True)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = target
        assert np.array_equal(ds.pixel_array, original.pixel_array)
        assert 0xFFFCFFFC in ds  # what follows Pixel Data is kept
    encoded = transcode.encode_dataset(path, ts, uids.EXPLICIT_VR_LE)
    assert encoded.pixels_decoded and bytes(encoded.payload) == bytes(
        transcode._decompressed(pydicom.dcmread(path), ts, uids.EXPLICIT_VR_LE)
    )


@pytest.mark.parametrize(
    "name", ["SC_rgb_rle.dcm", "rtdose_rle.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPEG2000.dcm"]
)
def test_fast_path_leaves_other_images_to_pydicom(name: str) -> None:
    """Colour, 32-bit, and syntaxes without a fast decoder: None, and `encode_dataset` still decodes them."""
    path = pydicom.data.get_testdata_file(name)
    ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert transcode.fast_decompressed(path, ts, uids.EXPLICIT_VR_LE) is None
    encoded = transcode.encode_dataset(path, ts, uids.EXPLICIT_VR_LE)
    ds = pydicom.dcmread(io.BytesIO(bytes(encoded.payload)), force=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uids.EXPLICIT_VR_LE
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(path).pixel_array)


def test_failed_decoding_leaves_data_set_as_it_was() -> None:
    """The receiver writes a data set it cannot decode as received: its description must be unchanged."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("SC_rgb_rle_2frame.dcm"))
    first = next(generate_frames(ds.PixelData, number_of_frames=2))
    ds.PixelData = encapsulate([first, b"\x01" * 64])  # the second frame does not decode
    ds.PhotometricInterpretation = "YBR_FULL"  # decoding would say RGB
    before = [(elem.tag, elem.VR, elem.value) for elem in ds]
    with pytest.raises(Exception):  # noqa: B017 - whatever the plugin raises
        transcode.decompress_in_place(ds, uids.RLE_LOSSLESS)
    assert [(elem.tag, elem.VR, elem.value) for elem in ds] == before
