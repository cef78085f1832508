"""``batchstore receive +te/+tb/+ti/+td`` on compressed input (issue 12): decoded by the codecs the sender
uses and written in the syntax asked for; written as received, with a warning that says so, where no
codec decodes it.

Real peers on loopback: DCMTK's dcmsend and storescu send pydicom's own compressed test files (RLE, JPEG
lossless, JPEG-LS, JPEG 2000, deflate, and a lossy JPEG baseline) as they are, to a receiver subprocess;
the stored files are read back with pydicom and their decoded pixels compared with the originals'.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from peers import DCMTK_DCMSEND, DCMTK_ECHOSCU, BatchstoreReceiver, dcmtk_env, dcmtk_send, received_index
from pydicom.encaps import encapsulate, generate_frames

from batchstore.dicom import uids
from batchstore.dicom.codecs import encode_pixels

UID_ROOT = "1.2.826.0.1.3680043.9.7781.12"
#: pydicom test file -> (its transfer syntax, lossless)
INPUTS = {
    "MR_small_RLE.dcm": (uids.RLE_LOSSLESS, True),
    "SC_rgb_jpeg_gdcm.dcm": (uids.JPEG_LOSSLESS_SV1, True),
    "MR_small_jpeg_ls_lossless.dcm": (uids.JPEG_LS_LOSSLESS, True),
    "MR_small_jp2klossless.dcm": (uids.JPEG_2000_LOSSLESS, True),
    "image_dfl.dcm": (uids.DEFLATED_EXPLICIT_VR_LE, True),
    "SC_rgb_jpeg_dcmtk.dcm": (uids.JPEG_BASELINE, False),
}
UNDECODABLE_UID = f"{UID_ROOT}.99"
BROKEN_UID = f"{UID_ROOT}.98"
WRITTEN = {
    "+te": uids.EXPLICIT_VR_LE,
    "+tb": uids.EXPLICIT_VR_BE,
    "+ti": uids.IMPLICIT_VR_LE,
    "+td": uids.DEFLATED_EXPLICIT_VR_LE,
}


def _copy(src: str, dst: Path, uid: str, ts: str | None = None, pixel_data: bytes | None = None) -> None:
    """`src` saved as `dst` with SOP Instance UID `uid` (pydicom's MR files share one), optionally relabelled
    with another transfer syntax or given other encapsulated pixel data; the compressed stream is kept."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    if ts is not None:
        ds.file_meta.TransferSyntaxUID = ts
    if pixel_data is not None:
        ds.PixelData = pixel_data
    if ds["PixelData"].is_undefined_length:
        ds["PixelData"].VR = "OB"  # some of pydicom's files say OW, which DCMTK's storescu cannot send
    ds.save_as(dst, enforce_file_format=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SOP Instance UID -> input file: the compressed test files, an MPEG-2 labelled one (no decoder), and
    an RLE one whose stream is garbage (the decoder fails)."""
    work = tmp_path_factory.mktemp("compressed")
    files: dict[str, Path] = {}
    for i, name in enumerate(INPUTS, 1):
        uid = f"{UID_ROOT}.{i}"
        files[uid] = work / name
        _copy(pydicom.data.get_testdata_file(name), files[uid], uid)
    mr_rle = pydicom.data.get_testdata_file("MR_small_RLE.dcm")
    files[UNDECODABLE_UID] = work / "mpeg2.dcm"
    _copy(mr_rle, files[UNDECODABLE_UID], UNDECODABLE_UID, ts=uids.MPEG2_MPML)
    files[BROKEN_UID] = work / "broken_rle.dcm"
    _copy(mr_rle, files[BROKEN_UID], BROKEN_UID, pixel_data=encapsulate([b"\x07" * 64]))
    return files


def _dcmsend(port: int, paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DCMTK_DCMSEND, "-v", "127.0.0.1", str(port), *map(str, paths)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=60,
    )


def _pixels(path: Path | str) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


@pytest.mark.needs_dcmtk
@pytest.mark.parametrize("option", ["+t=", "+te", "+tb", "+ti", "+td"])
def test_compressed_input_written_in_requested_syntax(
    option: str, inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with BatchstoreReceiver(out, ["+xa", option], work_dir=tmp_path) as rx:
        sent = _dcmsend(rx.port, list(inputs.values()))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        stored = received_index(out)
        log = rx.log()
    assert set(stored) == set(inputs), log
    assert not list(out.glob(".*")), "a temporary file was left behind"
    for uid, path in inputs.items():
        original = pydicom.dcmread(path)
        written = pydicom.dcmread(stored[uid])
        written_ts = str(written.file_meta.TransferSyntaxUID)
        if option == "+t=" or uid in (UNDECODABLE_UID, BROKEN_UID):
            # as received: which also shows dcmsend sent every file in its own, compressed, syntax
            assert written_ts == str(original.file_meta.TransferSyntaxUID), path.name
            continue
        assert written_ts == WRITTEN[option], path.name
        assert "PixelData" in written and not written["PixelData"].is_undefined_length
        lossless = INPUTS[path.name][1]
        if lossless:
            assert np.array_equal(written.pixel_array, original.pixel_array), path.name
            assert "LossyImageCompression" not in written or written.LossyImageCompression == "00"
        else:  # lossy input: the same decoded pixels, and the image still says it was lossy compressed
            assert np.array_equal(written.pixel_array, original.pixel_array), path.name
            assert written.LossyImageCompression == "01"
            assert "ISO_10918_1" in written.LossyImageCompressionMethod
            assert written.PhotometricInterpretation == "RGB"
    if option != "+t=":
        assert (
            f"cannot write {UNDECODABLE_UID} as {uids.ts_name(WRITTEN[option])}: "
            f"no decoder for this transfer syntax; written as received, in {uids.ts_name(uids.MPEG2_MPML)}"
        ) in log, log
        assert f"cannot write {BROKEN_UID} as " in log and "cannot decode its pixel data" in log, log
    else:
        assert "cannot write" not in log, log


@pytest.mark.needs_dcmtk
def test_single_process_receiver_decompresses_from_storescu(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Without --fork, from storescu proposing JPEG-LS lossless (-xt), then RLE (-xr): both decoded, one
    association after the other."""
    out = tmp_path / "out"
    jls = next(p for p in inputs.values() if p.name == "MR_small_jpeg_ls_lossless.dcm")
    rle = next(p for p in inputs.values() if p.name == "MR_small_RLE.dcm")
    with BatchstoreReceiver(out, ["+xa", "+ti"], fork=False, work_dir=tmp_path) as rx:
        first = dcmtk_send([jls], rx.port, ["-xt"])
        second = dcmtk_send([rle], rx.port, ["-xr"])
        assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
        stored = received_index(out)
    assert len(stored) == 2
    for path in (jls, rle):
        written = pydicom.dcmread(stored[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID])
        assert str(written.file_meta.TransferSyntaxUID) == uids.IMPLICIT_VR_LE
        assert np.array_equal(written.pixel_array, _pixels(path))


def _slow_multiframe(path: Path, uid: str, frames: int = 24) -> Path:
    """A JPEG 2000 lossless image of `frames` noisy 512 x 512 16-bit frames: seconds of decoding."""
    rng = np.random.default_rng(12)
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = uid
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = rng.integers(0, 4000, (512, 512)).astype(np.uint16).tobytes()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uids.EXPLICIT_VR_LE
    encode_pixels(ds, uids.JPEG_2000_LOSSLESS)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([frame] * frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.needs_dcmtk
def test_fork_decoding_holds_up_no_other_association(inputs: dict[str, Path], tmp_path: Path) -> None:
    """With --fork, while one association's child decodes a large JPEG 2000 file, an echo and another
    association's store (decoded too) complete."""
    out = tmp_path / "out"
    big_uid = f"{UID_ROOT}.50"
    big = _slow_multiframe(tmp_path / "big.dcm", big_uid)
    small = next(p for p in inputs.values() if p.name == "MR_small_RLE.dcm")
    with BatchstoreReceiver(out, ["+xa", "+te"], verbose=True, work_dir=tmp_path) as rx:
        sender = subprocess.Popen(
            [DCMTK_DCMSEND, "127.0.0.1", str(rx.port), str(big)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dcmtk_env(),
        )
        try:
            deadline = time.monotonic() + 30
            while f"Received Store Request (MsgID 1, {big_uid})" not in rx.log():
                assert time.monotonic() < deadline, rx.log()
                time.sleep(0.02)
            echo = subprocess.run(
                [DCMTK_ECHOSCU, "127.0.0.1", str(rx.port)], capture_output=True, env=dcmtk_env(), timeout=30
            )
            other = _dcmsend(rx.port, [small])
            # files under their final names (the large one's temporary file is there while it decodes)
            others_done = {uid for uid, path in received_index(out).items() if not Path(path).name.startswith(".")}
            assert sender.wait(60) == 0
        finally:
            sender.kill()
        stored = received_index(out)
    assert echo.returncode == 0 and other.returncode == 0
    assert big_uid not in others_done, "the other associations waited for the decoding"
    assert others_done == {f"{UID_ROOT}.1"}
    written = pydicom.dcmread(stored[big_uid])
    assert str(written.file_meta.TransferSyntaxUID) == uids.EXPLICIT_VR_LE
    assert np.array_equal(written.pixel_array, pydicom.dcmread(big).pixel_array)
