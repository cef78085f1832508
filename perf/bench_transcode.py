"""Transfer syntax conversion on the fly (issue 12): decompressing for an uncompressed-only peer.

1. Throughput: a losslessly compressed corpus (RLE, JPEG-LS lossless, JPEG lossless SV1, made here from
   generated 512 x 512 16-bit CT-like images with the codec plugins) to ``storescp`` with its default,
   uncompressed-only acceptance: ``batchstore send -j 2`` against ``/usr/bin/dcmsend`` (which decompresses
   in one process), files/s, same files, same run. Target: >= 2x dcmsend.
2. Memory: one generated multi-frame RLE file (default 256 frames of 512 x 512 x 16 bit, 128 MiB decoded)
   sent by ``batchstore send -j 1`` to the same peer; the worker's peak RSS (psutil, polled every 10 ms)
   must stay under 3x the decoded size.

    python perf/bench_transcode.py [--quick] [--files N] [--frames N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    DcmtkStorescp,
    batchstore_cmd,
    batchstore_env,
    dcmtk_env,
    print_summary,
    run_timed,
    summary_row,
    work_dir,
    write_json,
)

ROWS = COLS = 512
DCMSEND = "/usr/bin/dcmsend"
SYNTAXES = ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.70")


def _image(seed: int):  # type: ignore[no-untyped-def]
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:ROWS, 0:COLS]
    body = ((x - COLS / 2) ** 2 + (y - ROWS / 2) ** 2 < (ROWS * 0.42) ** 2).astype(np.int32)
    img = 1000 + body * (400 + (x * 3 + y * seed) % 300) + rng.integers(0, 20, (ROWS, COLS))
    return img.astype(np.uint16)


def _dataset(pixels, frames: int = 1):  # type: ignore[no-untyped-def]
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "TRANSCODE"
    ds.PatientName = "BENCH^TRANSCODE"
    ds.Modality = "CT"
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def make_corpus(directory: Path, count: int) -> Path:
    """`count` compressed files, a third each RLE, JPEG-LS lossless and JPEG lossless SV1 (plugins + GDCM)."""
    from batchstore.dicom.codecs import encode_pixels

    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        ds = _dataset(_image(i % 16))
        encode_pixels(ds, SYNTAXES[i % len(SYNTAXES)])
        ds.save_as(directory / f"f{i:05d}.dcm", enforce_file_format=True)
    return directory


def make_multiframe(path: Path, frames: int) -> int:
    """One multi-frame RLE file of `frames` frames (one encoded frame, repeated); its decoded size."""
    import numpy as np
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    one = _dataset(_image(3))
    one.compress(RLELossless, encoding_plugin="pylibjpeg")
    from pydicom.encaps import generate_frames

    fragment = next(generate_frames(one.PixelData, number_of_frames=1))
    ds = _dataset(np.zeros((1,), np.uint16), frames)
    ds.PixelData = encapsulate([fragment] * frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.save_as(path, enforce_file_format=True)
    return ROWS * COLS * 2 * frames


def _peak_worker_rss(proc: subprocess.Popen, stop: threading.Event, peak: list[int]) -> None:
    import psutil

    parent = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            for child in parent.children(recursive=True):
                try:
                    peak[0] = max(peak[0], child.memory_info().rss)
                except psutil.Error:
                    pass
        except psutil.Error:
            return
        time.sleep(0.01)


def run(work: Path, quick: bool, files: int | None = None, frames: int | None = None) -> dict[str, Any]:
    files = files or (90 if quick else 300)
    frames = frames or (64 if quick else 256)
    corpus = make_corpus(work / "corpus", files)
    big = work / "big" / "multiframe.dcm"
    big.parent.mkdir(parents=True, exist_ok=True)
    decoded = make_multiframe(big, frames)
    env = batchstore_env()
    with DcmtkStorescp(out_dir=work / "out-dcmtk", verbose=False) as scp:
        dcmtk_s = run_timed([DCMSEND, "-nh", "+sd", "127.0.0.1", str(scp.port), str(corpus)], dcmtk_env())
    with DcmtkStorescp(out_dir=work / "out-bs", verbose=False) as scp:
        bs_s = run_timed(
            batchstore_cmd("send", "-q", "-j", "2", "-nh", "+sd", "127.0.0.1", str(scp.port), str(corpus)),
            env,
        )
        delivered = sum(1 for _ in (work / "out-bs").iterdir())
        proc = subprocess.Popen(
            batchstore_cmd("send", "-q", "-j", "1", "127.0.0.1", str(scp.port), str(big)),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        stop, peak = threading.Event(), [0]
        watcher = threading.Thread(target=_peak_worker_rss, args=(proc, stop, peak), daemon=True)
        started = time.perf_counter()
        watcher.start()
        _, err = proc.communicate(timeout=600)
        big_s = time.perf_counter() - started
        stop.set()
        watcher.join()
        if proc.returncode != 0:
            raise RuntimeError(f"multi-frame send failed: {err.decode(errors='replace')[-2000:]}")
    ratio = dcmtk_s / bs_s
    memory_ratio = peak[0] / decoded
    summary = [
        summary_row(
            f"send {files} compressed (RLE, JPEG-LS, JPEG lossless) to uncompressed-only storescp, -j 2",
            target=">= 2x dcmsend",
            met=ratio >= 2.0 and delivered == files,
            dcmtk_s=dcmtk_s,
            batchstore_s=bs_s,
            ratio=ratio,
            files=files,
            result=f"{files / dcmtk_s:.0f} vs {files / bs_s:.0f} files/s",
        ),
        summary_row(
            f"decompress one {frames}-frame RLE file ({decoded / 2**20:.0f} MiB decoded), worker peak RSS",
            target="< 3x decoded size",
            met=memory_ratio < 3.0,
            batchstore_s=big_s,
            result=f"{peak[0] / 2**20:.0f} MiB ({memory_ratio:.2f}x)",
        ),
    ]
    details = {
        "files": files,
        "delivered": delivered,
        "dcmsend_s": dcmtk_s,
        "batchstore_s": bs_s,
        "frames": frames,
        "decoded_bytes": decoded,
        "worker_peak_rss": peak[0],
        "multiframe_s": big_s,
    }
    return {"summary": summary, "details": details}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="90 files, 64 frames (smoke run)")
    parser.add_argument("--files", type=int, help="compressed files in the corpus (default 300)")
    parser.add_argument("--frames", type=int, help="frames of the multi-frame file (default 256: 128 MiB)")
    parser.add_argument("--work", help="work directory (default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS / "transcode.json"))
    args = parser.parse_args()
    with work_dir(args.work) as work:
        result = run(work, args.quick, args.files, args.frames)
    print_summary(result["summary"], "transcode", args.quick)
    write_json(Path(args.json), {"benchmark": "transcode", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
