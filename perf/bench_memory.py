"""Memory benchmark: peak RSS while sending and receiving one ~1 GB DICOM file.

Writes one Part 10 file by hand (file meta, a small CT data set, then a 1 GiB OW Pixel Data element written
in 8 MiB chunks, so this script never holds the pixels in memory), sends it with ``batchstore send -j 1``
to ``batchstore receive --fork`` on loopback, and samples with psutil every ~20 ms the RSS of

- the send coordinator (the ``batchstore send`` process) and its worker processes (its children),
- the receive parent and the association child it forks for the transfer.

Targets: each send worker < 100 MB, the receive child < 100 MB (the coordinator and the receive parent are
reported for information). The received file must arrive with at least the pixel bytes. If the work
directory's file system has less than 5 GB free, 256 MiB is used instead (and said so). Both files are
deleted at the end.

Run alone: ``python perf/bench_memory.py [--quick] [--size-mb N]``; writes ``perf/results/memory.json``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import psutil
from common import (
    RESULTS,
    BatchstoreReceiver,
    batchstore_cmd,
    batchstore_env,
    summary_row,
    work_dir,
    write_json,
)

TARGET_MB = 100.0
FULL_SIZE = 1 << 30
SMALL_SIZE = 256 << 20
MIN_FREE = 5 << 30
CHUNK = 8 << 20
INTERVAL = 0.02
MB = 1 << 20


def write_big_dicom(path: Path, pixel_bytes: int) -> int:
    """A CT Part 10 file (Explicit VR Little Endian) whose Pixel Data is ``pixel_bytes`` long; its size."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    assert pixel_bytes % (2 * 4096) == 0
    sop_class = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    instance = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "MEMORY^BENCH"
    ds.PatientID = "MEM0001"
    ds.StudyDate = "20240101"
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 4096
    columns = pixel_bytes // (2 * 4096)
    if columns > 0xFFFF:  # Columns is a US: make frames of 4096 x 4096 instead (the pixels are never decoded)
        columns = 4096
        ds.NumberOfFrames = pixel_bytes // (2 * 4096 * 4096)
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    buf = BytesIO()
    try:
        dcmwrite(buf, ds, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.is_little_endian, ds.is_implicit_VR = True, False
        dcmwrite(buf, ds, write_like_original=False)
    header = buf.getvalue()
    # (7FE0,0010) OW, 2 reserved bytes, 4-byte length
    element = b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little")
    chunk = bytes(range(256)) * (CHUNK // 256)
    with open(path, "wb") as fh:
        fh.write(header + element)
        left = pixel_bytes
        while left:
            n = min(left, CHUNK)
            fh.write(chunk[:n])
            left -= n
    return path.stat().st_size


def _serving(pid: int) -> bool:
    """A receive child still holding its association's connection (the idle child the receiver keeps
    forked ahead holds none, and stays until the receiver stops)."""
    try:
        return bool(psutil.Process(pid).net_connections(kind="inet"))
    except psutil.Error:
        return False


class RssSampler:
    """Samples, every ``INTERVAL`` s in a thread, the RSS of roots and all their descendants (peak per pid)."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots  # label -> pid
        self.peaks: dict[int, dict[str, Any]] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _note(self, proc: psutil.Process, role: str) -> None:
        try:
            rss = proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return
        entry = self.peaks.get(proc.pid)
        if entry is None:
            try:
                cmdline = " ".join(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                cmdline = ""
            if "resource_tracker" in cmdline or "semaphore_tracker" in cmdline:
                role = role.replace("child", "helper")
            entry = self.peaks[proc.pid] = {
                "pid": proc.pid,
                "role": role,
                "peak_rss": 0,
                "cmdline": cmdline[:200],
            }
        entry["peak_rss"] = max(entry["peak_rss"], rss)

    def _loop(self) -> None:
        roots = {}
        for label, pid in self.roots.items():
            try:
                roots[label] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                pass
        while not self._stop.is_set():
            for label, root in roots.items():
                self._note(root, label)
                try:
                    children = root.children(recursive=True)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    children = []
                for child in children:
                    self._note(child, f"{label} child")
            self.samples += 1
            self._stop.wait(INTERVAL)

    def peak(self, role: str) -> tuple[float | None, int]:
        """Largest peak RSS (MB) among processes of ``role`` and how many there were."""
        values = [e["peak_rss"] for e in self.peaks.values() if e["role"] == role]
        return (max(values) / MB if values else None), len(values)


def run(work: Path, quick: bool = False, size_mb: int | None = None) -> dict[str, Any]:
    free = shutil.disk_usage(work).free
    note = ""
    if size_mb:
        pixel_bytes = size_mb << 20
    elif quick:
        pixel_bytes = FULL_SIZE // 8
        note = "quick run: 128 MiB instead of 1 GiB"
    elif free < MIN_FREE:
        pixel_bytes = SMALL_SIZE
        note = f"only {free / (1 << 30):.1f} GB free on {work}: 256 MiB instead of 1 GiB"
    else:
        pixel_bytes = FULL_SIZE
    src_dir = work / "memory-src"
    out_dir = work / "memory-out"
    shutil.rmtree(src_dir, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    src_dir.mkdir(parents=True)
    path = src_dir / "big.dcm"
    try:
        t0 = time.perf_counter()
        file_size = write_big_dicom(path, pixel_bytes)
        write_s = time.perf_counter() - t0
        with BatchstoreReceiver(out_dir) as receiver:
            send = subprocess.Popen(
                batchstore_cmd("send", "-q", "-j", "1", "127.0.0.1", str(receiver.port), str(path)),
                env=batchstore_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
            assert receiver.proc is not None
            start = time.perf_counter()
            with RssSampler({"send coordinator": send.pid, "receive parent": receiver.proc.pid}) as sampler:
                try:
                    _out, err = send.communicate(timeout=600)
                except subprocess.TimeoutExpired:
                    send.kill()
                    _out, err = send.communicate()
                seconds = time.perf_counter() - start
                # the child writes and renames after the last PDU; wait for the file under its final name
                deadline = time.monotonic() + 60
                received = []
                while time.monotonic() < deadline:
                    received = [p for p in out_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
                    if received and not any(
                        e["role"] == "receive parent child" and _serving(e["pid"]) for e in sampler.peaks.values()
                    ):
                        break
                    time.sleep(0.05)
            if send.returncode != 0:
                raise RuntimeError(f"batchstore send exited {send.returncode}: {err[-2000:]}")
        if len(received) != 1:
            raise RuntimeError(f"{len(received)} files arrived, expected 1")
        received_size = received[0].stat().st_size
        if received_size < pixel_bytes:
            raise RuntimeError(
                f"received file has {received_size} bytes, fewer than the {pixel_bytes} pixel bytes"
            )
    finally:
        shutil.rmtree(src_dir, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)

    coordinator, _ = sampler.peak("send coordinator")
    worker, n_workers = sampler.peak("send coordinator child")
    parent, _ = sampler.peak("receive parent")
    child, n_children = sampler.peak("receive parent child")
    worker_note = ""
    if worker is None:  # the worker ran inside the coordinator
        worker, worker_note = coordinator, "no worker child process seen: the coordinator's RSS is used"
    mb = f"{file_size / MB:,.0f} MB"
    lines = [
        f"memory: one {mb} file (written in {write_s:.1f} s), batchstore send -j 1 -> batchstore receive --fork, "
        f"{seconds:.2f} s ({file_size / MB / seconds:,.0f} MB/s), {sampler.samples} RSS samples every "
        f"{INTERVAL * 1000:.0f} ms",
        f"  send coordinator      peak RSS {coordinator or 0:7.1f} MB",
        f"  send worker(s) x{n_workers}     peak RSS {worker or 0:7.1f} MB   (target < {TARGET_MB:g} MB)",
        f"  receive parent        peak RSS {parent or 0:7.1f} MB",
        f"  receive child(ren) x{n_children} peak RSS {child or 0:7.1f} MB   (target < {TARGET_MB:g} MB)",
    ]
    if note:
        lines.append(f"  note: {note}")
    if worker_note:
        lines.append(f"  note: {worker_note}")
    text = "\n".join(lines)
    print(text, flush=True)
    summary = [
        summary_row(
            f"memory: send {mb}, worker peak RSS",
            files=1,
            batchstore_s=seconds,
            result=f"{worker:.0f} MB",
            target=f"< {TARGET_MB:g} MB",
            met=worker < TARGET_MB,
            note="; ".join(filter(None, [note, worker_note, f"coordinator peak {coordinator or 0:.0f} MB"])),
        ),
        summary_row(
            f"memory: receive {mb}, child peak RSS",
            files=1,
            batchstore_s=seconds,
            result=f"{child or 0:.0f} MB",
            target=f"< {TARGET_MB:g} MB",
            met=child is not None and child < TARGET_MB,
            note=f"receive parent peak {parent or 0:.0f} MB",
        ),
    ]
    details = {
        "file_bytes": file_size,
        "pixel_bytes": pixel_bytes,
        "free_bytes_before": free,
        "seconds": round(seconds, 3),
        "samples": sampler.samples,
        "interval_s": INTERVAL,
        "peak_rss_mb": {
            "send_coordinator": coordinator,
            "send_workers": worker,
            "receive_parent": parent,
            "receive_children": child,
        },
        "processes": list(sampler.peaks.values()),
        "note": "; ".join(filter(None, [note, worker_note])),
    }
    return {"summary": summary, "details": details, "table": text}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="128 MiB instead of 1 GiB (smoke run)")
    parser.add_argument("--size-mb", type=int, help="pixel data size in MiB (default 1024)")
    parser.add_argument("--work", help="work directory (default: a temporary one under /tmp)")
    parser.add_argument("--json", default=str(RESULTS / "memory.json"))
    args = parser.parse_args()
    with work_dir(args.work) as work:
        result = run(work, args.quick, args.size_mb)
    write_json(Path(args.json), {"benchmark": "memory", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
