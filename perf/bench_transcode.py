"""Transfer syntax conversion on the fly (issue 12): decompressing for an uncompressed-only peer.

1. Throughput: a losslessly compressed corpus (RLE, JPEG-LS lossless, JPEG lossless SV1, made here from
   generated 512 x 512 16-bit CT-like images with the codec plugins) to ``storescp --fork`` with its
   default, uncompressed-only acceptance: ``batchstore send -j 2`` against ``/usr/bin/dcmsend`` (which
   decompresses in one process), files/s, same files, same run, runs alternated (``--rounds``). Target:
   >= 2x dcmsend. The machine is shared, so each run's CPU time per file is reported too: the sender's
   (every process of it) and the peer's (storescp and its children).
2. Memory: one generated multi-frame RLE file (default 256 frames of 512 x 512 x 16 bit, 128 MiB decoded)
   sent by ``batchstore send -j 1`` to the same peer; the worker's peak RSS (psutil, polled every 10 ms)
   must stay under 3x the decoded size.
3. The receiving side: CPU per file of ``batchstore receive +te`` decompressing (in-process, the
   conversion alone), against writing an uncompressed file of the same size with ``+te``.

``--decoders`` prints CPU ms per 512 x 512 x 16-bit frame of every installed decoder for each syntax
(the table behind `batchstore.dicom.codecs.FAST_DECODER`) and of the conversion per file, then exits.

    python perf/bench_transcode.py [--quick] [--files N] [--frames N] [--rounds N] [--decoders]
"""

from __future__ import annotations

import argparse
import resource
import statistics
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


def _cpu_timed(cmd: list[str], env: dict[str, str], scp: DcmtkStorescp) -> dict[str, float]:
    """Run `cmd` (a sender) to completion: wall seconds, the sender's CPU seconds (all its processes) and
    the peer's (storescp and its reaped children)."""
    import psutil

    peer = psutil.Process(scp.proc.pid)  # type: ignore[union-attr]

    def peer_cpu() -> float:
        t = peer.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peer_before = peer_cpu()
    wall = run_timed(cmd, env)
    time.sleep(0.3)  # storescp reaps the last association's child
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sender = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "sender": sender, "peer": peer_cpu() - peer_before}


def uncompressed_copy(corpus: Path, directory: Path) -> Path:
    """The files of `corpus` decompressed (Explicit VR Little Endian, same UIDs), in `directory`."""
    import pydicom

    directory.mkdir(parents=True, exist_ok=True)
    for path in sorted(corpus.iterdir()):
        ds = pydicom.dcmread(path)
        ds.decompress(generate_instance_uid=False)
        ds.save_as(directory / path.name, enforce_file_format=True)
    return directory


def receive_cpu(corpus: Path, plain: Path, work: Path) -> dict[str, float]:
    """CPU ms per file of the receiver's ``+te`` re-encoding (`reencode_file`, in this process): the
    compressed files decompressed, per syntax, and the same files already uncompressed (`plain`)."""
    import pydicom

    from batchstore.dicom.reencode import reencode_file

    class Options:  # storescp's defaults with +te
        write_meta, write_xfer, new_vr, group_length = True, "little", True, "recalc"
        explicit_length, padding, convert_un, compression_level = True, None, False, None

    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {}
    for i, path in enumerate(sorted(corpus.iterdir())[:60]):
        meta = pydicom.dcmread(path, stop_before_pixels=True)
        ts = str(meta.file_meta.TransferSyntaxUID)
        for label, src in ((ts, path), ("uncompressed", plain / path.name)):
            dst = work / f"out{i}-{label}.dcm"
            started = time.process_time()
            reencode_file(str(src), str(dst), Options(), meta.SOPClassUID, meta.SOPInstanceUID)
            times.setdefault(label, []).append(time.process_time() - started)
    return {label: statistics.median(v) * 1000 for label, v in times.items()}


def decoders(corpus: Path) -> None:
    """Print CPU ms per frame of every installed decoder, per syntax, and of the conversion per file."""
    import pydicom
    from pydicom.pixels import get_decoder

    from batchstore.dicom.codecs import _gdcm_decode_file
    from batchstore.dicom.transcode import encode_dataset

    def median_ms(fn, paths) -> float:  # type: ignore[no-untyped-def]
        spent = []
        for path in paths * 2:
            started = time.process_time()
            fn(path)
            spent.append(time.process_time() - started)
        return statistics.median(spent) * 1000

    by_ts: dict[str, list[Path]] = {}
    for path in sorted(corpus.iterdir()):
        ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        by_ts.setdefault(ts, []).append(path)
    for ts, paths in by_ts.items():
        paths = paths[:10]
        decoder = get_decoder(ts)
        print(pydicom.uid.UID(ts).name)
        for plugin in decoder.available_plugins:
            def through_pydicom(path, plugin=plugin, decoder=decoder):  # type: ignore[no-untyped-def]
                for _ in decoder.iter_array(pydicom.dcmread(path), decoding_plugin=plugin):
                    pass
            try:
                print(f"  {plugin:<10} through pydicom   {median_ms(through_pydicom, paths):6.2f} ms")
            except Exception as exc:
                print(f"  {plugin:<10} fails: {exc}")
        if ts != "1.2.840.10008.1.2.5":
            gdcm_ms = median_ms(lambda p: _gdcm_decode_file(str(p), ROWS * COLS * 2), paths)
            print(f"  {'gdcm':<10} file into buffer {gdcm_ms:6.2f} ms")
        convert_ms = median_ms(lambda p, ts=ts: encode_dataset(str(p), ts, "1.2.840.10008.1.2.1"), paths)
        print(f"  conversion per file (batchstore's path) {convert_ms:6.2f} ms")


def run(
    work: Path, quick: bool, files: int | None = None, frames: int | None = None, rounds: int = 2
) -> dict[str, Any]:
    files = files or (90 if quick else 300)
    frames = frames or (64 if quick else 256)
    corpus = make_corpus(work / "corpus", files)
    big = work / "big" / "multiframe.dcm"
    big.parent.mkdir(parents=True, exist_ok=True)
    decoded = make_multiframe(big, frames)
    env = batchstore_env()
    plain = uncompressed_copy(corpus, work / "corpus-uncompressed")
    runs: dict[str, list[dict[str, float]]] = {}
    senders = {
        "dcmsend": (lambda port, files: [DCMSEND, "-nh", "+sd", "127.0.0.1", port, files], dcmtk_env()),
        "batchstore": (
            lambda port, files: batchstore_cmd("send", "-q", "-j", "2", "-nh", "+sd", "127.0.0.1", port, files),
            env,
        ),
    }
    delivered = 0
    for round_ in range(rounds):
        order = ("dcmsend", "batchstore") if round_ % 2 == 0 else ("batchstore", "dcmsend")
        # each sender on the compressed corpus, then on the same files uncompressed: the difference is
        # what decompressing costs it, in place
        for tool, source in [(t, c) for c in (corpus, plain) for t in order]:
            label = tool if source == corpus else f"{tool} uncompressed"
            out = work / f"out-{label.replace(' ', '-')}-{round_}"
            with DcmtkStorescp(["--fork"], out_dir=out, verbose=False) as scp:
                make_cmd, cmd_env = senders[tool]
                runs.setdefault(label, []).append(_cpu_timed(make_cmd(str(scp.port), str(source)), cmd_env, scp))
                if label == "batchstore":
                    delivered = sum(1 for _ in out.iterdir())
    dcmtk_s = statistics.median(r["wall"] for r in runs["dcmsend"])
    bs_s = statistics.median(r["wall"] for r in runs["batchstore"])
    with DcmtkStorescp(["--fork"], out_dir=work / "out-big", verbose=False) as scp:
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
    cpu = {
        tool: {k: statistics.median(r[k] for r in rs) * 1000 / files for k in ("sender", "peer")}
        for tool, rs in runs.items()
    }
    in_place = {tool: cpu[tool]["sender"] - cpu[f"{tool} uncompressed"]["sender"] for tool in senders}
    summary = [
        summary_row(
            f"send {files} compressed (RLE, JPEG-LS, JPEG lossless) to uncompressed-only storescp, -j 2",
            target=">= 2x dcmsend",
            met=ratio >= 2.0 and delivered == files,
            dcmtk_s=dcmtk_s,
            batchstore_s=bs_s,
            ratio=ratio,
            files=files,
            result=f"{files / dcmtk_s:.0f} vs {files / bs_s:.0f} files/s; CPU ms/file sender+peer: "
            f"dcmsend {cpu['dcmsend']['sender']:.2f}+{cpu['dcmsend']['peer']:.2f}, "
            f"batchstore {cpu['batchstore']['sender']:.2f}+{cpu['batchstore']['peer']:.2f}; decompressing "
            f"alone: dcmsend {in_place['dcmsend']:.2f}, batchstore {in_place['batchstore']:.2f}",
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
        "rounds": runs,
        "cpu_ms_per_file": cpu,
        "decompression_cpu_ms_per_file": in_place,
        "receive_cpu_ms_per_file": receive_cpu(corpus, plain, work / "receive"),
    }
    return {"summary": summary, "details": details}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="90 files, 64 frames (smoke run)")
    parser.add_argument("--files", type=int, help="compressed files in the corpus (default 300)")
    parser.add_argument("--frames", type=int, help="frames of the multi-frame file (default 256: 128 MiB)")
    parser.add_argument("--rounds", type=int, default=2, help="alternated runs of each sender (default 2)")
    parser.add_argument("--decoders", action="store_true", help="decoder CPU per syntax, then exit")
    parser.add_argument("--work", help="work directory (default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS / "transcode.json"))
    args = parser.parse_args()
    with work_dir(args.work) as work:
        if args.decoders:
            decoders(make_corpus(work / "corpus", 30))
            return 0
        result = run(work, args.quick, args.files, args.frames, args.rounds)
    print_summary(result["summary"], "transcode", args.quick)
    write_json(Path(args.json), {"benchmark": "transcode", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
