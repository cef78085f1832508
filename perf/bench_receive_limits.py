"""Receive limits benchmark: what ``--fsync`` costs, and a bounded soak of ``batchstore receive --fork``.

(a) ``--fsync``: DCMTK ``storescu`` (``TCP_NODELAY=1``) sends 1,000 x 1 KB files in one association to
``batchstore receive --fork``, with and without ``--fsync``, alternating, and the table shows the median
wall seconds of each (sender start to sender end) and the cost per file. It runs once with the output
directory in the work directory (tmpfs by default, where a sync is nearly free) and once on a disk
(``--disk-dir``, default ``/var/tmp``), where the sync is the cost.

(b) soak: 8 concurrent sender processes x 2,000 files into ``batchstore receive --fork``, a new association
every few files (thousands of associations, each a child of the receiver); the receiver parent's RSS is
sampled every 1,000 associations and must stay flat (docs/design.md, "Hostile peers": the parent keeps
nothing per association). The senders speak the protocol with batchstore's own PDU primitives, so that
thousands of associations do not cost thousands of process start-ups.

Writes ``perf/results/receive_limits.json``. Run: ``python perf/bench_receive_limits.py [--quick]
[--only fsync|soak] [--files N] [--repeat N] [--disk-dir DIR]``; ``--quick`` is 200 files, 1 round, and a
soak of 8 x 250 files (about 20 s in all).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import RESULTS, BatchstoreReceiver, summary_row, work_dir, write_json
from gen_corpus import generate
from peers import DCMTK_STORESCU, dcmtk_env

SOAK_SENDERS = 8


def _filesystem(path: Path) -> str:
    """The file system type of `path` (from /proc/mounts; "?" when unknown)."""
    best, kind = "", "?"
    try:
        real = os.path.realpath(path)
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 2 and (real == fields[1] or real.startswith(fields[1].rstrip("/") + "/")):
                    if len(fields[1]) >= len(best):
                        best, kind = fields[1], fields[2]
    except OSError:
        pass
    return kind


# --------------------------------------------------------------------------------------------------------
# (a) --fsync


def _send_once(corpus: Path, out: Path, work: Path, fsync: bool, files: int) -> float:
    out.mkdir(parents=True)
    with BatchstoreReceiver(out, ["--fsync"] if fsync else [], fork=True, work_dir=work, graceful=True) as rx:
        start = time.perf_counter()
        proc = subprocess.run(
            [DCMTK_STORESCU, "+sd", "+r", "127.0.0.1", str(rx.port), str(corpus)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=dcmtk_env(True),
            timeout=600,
        )
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"storescu exited {proc.returncode}: {proc.stderr[-2000:]}")
    stored = sum(1 for entry in os.scandir(out) if entry.is_file() and not entry.name.startswith("."))
    if stored != files:
        raise RuntimeError(f"{stored} of {files} files stored in {out}")
    shutil.rmtree(out)
    return seconds


def run_fsync(work: Path, files: int, repeat: int, disk_dir: str | None) -> dict:
    corpus = work / f"fsync-corpus-{files}"
    marker = work / f".{corpus.name}.complete"
    if not marker.exists():
        generate(str(corpus), files, seed=300, profile="uniform", size=1024)
        marker.write_text("ok\n")
    places: list[tuple[str, Path]] = [("work", work)]
    disk_tmp = None
    if disk_dir and os.path.isdir(disk_dir):
        disk_tmp = Path(tempfile.mkdtemp(prefix="bs-fsync-", dir=disk_dir))
        if os.stat(disk_tmp).st_dev != os.stat(work).st_dev:
            places.append(("disk", disk_tmp))
    results = []
    try:
        for label, base in places:
            runs: dict[bool, list[float]] = {False: [], True: []}
            for n in range(max(1, repeat)):
                for fsync in (False, True):
                    runs[fsync].append(_send_once(corpus, base / f"out-{label}-{n}-{int(fsync)}", work, fsync, files))
            plain, synced = statistics.median(runs[False]), statistics.median(runs[True])
            results.append(
                {
                    "place": label,
                    "directory": str(base),
                    "filesystem": _filesystem(base),
                    "seconds_without_fsync": round(plain, 3),
                    "seconds_with_fsync": round(synced, 3),
                    "all_without": [round(s, 3) for s in runs[False]],
                    "all_with": [round(s, 3) for s in runs[True]],
                    "cost_per_file_us": round((synced - plain) / files * 1e6, 1),
                    "ratio": round(synced / plain, 2),
                }
            )
    finally:
        if disk_tmp is not None:
            shutil.rmtree(disk_tmp, ignore_errors=True)
    lines = [
        f"--fsync: storescu (TCP_NODELAY=1) x {files} files of ~1 KB into batchstore receive --fork "
        f"(median of {max(1, repeat)} alternating rounds)",
        f"{'output on':<22} {'without s':>10} {'with s':>8} {'per file':>10} {'ratio':>6}",
    ]
    for row in results:
        lines.append(
            f"{row['place'] + ' (' + row['filesystem'] + ')':<22} {row['seconds_without_fsync']:>10.2f} "
            f"{row['seconds_with_fsync']:>8.2f} {row['cost_per_file_us']:>8.0f}us {row['ratio']:>5.2f}x"
        )
    print("\n".join(lines), flush=True)
    return {"files": files, "repeat": max(1, repeat), "results": results, "table": "\n".join(lines)}


# --------------------------------------------------------------------------------------------------------
# (b) soak


CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _data_set(uid: str) -> bytes:
    """A ~1 KB CT data set, Explicit VR Little Endian, without file meta."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = uid
    ds.PatientName = "Soak^Test"
    ds.PatientID = "SOAK"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.9.7781.8.1"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = 16
    ds.PixelData = bytes(range(256)) * 3
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def _soak_sender(port: int, index: int, files: int, per_association: int, counter, errors) -> None:  # type: ignore[no-untyped-def]
    """One sender process: `files` small data sets, `per_association` per association."""
    from batchstore.net import acse, dimse, sockets
    from batchstore.net import pdu as net

    template_uid = f"1.2.826.0.1.3680043.9.7781.8.{index + 1}.1000000"  # same length for every file
    template = _data_set(template_uid)
    request = acse.AssociationRequest("SOAK", "STORESCP", ((1, CT, (EXPLICIT_LE,)),), 16384)
    sent = 0
    while sent < files:
        try:
            sock = sockets.connect("127.0.0.1", port, 30)
            stream = net.PDUStream(sock)
            stream.settimeout(30)
            accept = acse.request_association(stream, request)
            max_pdu = accept.max_pdu or 16384
            for _ in range(min(per_association, files - sent)):
                uid = f"{template_uid[:-7]}1{sent:06d}"
                data = template.replace(template_uid.encode(), uid.encode())
                parts = net.pdata_parts(1, dimse.c_store_rq(sent + 1, CT, uid), True, max_pdu)
                stream.send_parts(parts + net.pdata_parts(1, data, False, max_pdu))
                command = bytearray()
                last = False
                while not last:
                    _type, body = stream.read_pdu()
                    for _ctx, control, fragment in net.iter_pdvs(body):
                        command += fragment
                        last = bool(control & 2)
                status = dimse.decode_command(bytes(command)).status
                if status != 0:
                    raise RuntimeError(f"status 0x{status:04X}")
                sent += 1
            acse.release(stream)
            with counter.get_lock():
                counter.value += 1
        except (OSError, RuntimeError) as exc:
            with errors.get_lock():
                errors.value += 1
            print(f"soak sender {index}: {exc}", file=sys.stderr)
            return


def run_soak(work: Path, files: int, per_association: int) -> dict:
    out = work / f"soak-out-{time.monotonic_ns()}"
    out.mkdir()
    context = multiprocessing.get_context("fork")
    counter = context.Value("l", 0)
    errors = context.Value("l", 0)
    expected_associations = SOAK_SENDERS * -(-files // per_association)
    samples: list[dict] = []
    with BatchstoreReceiver(out, [], fork=True, work_dir=work, graceful=True) as rx:
        assert rx.proc is not None
        parent = psutil.Process(rx.proc.pid)
        samples.append({"associations": 0, "rss_kib": parent.memory_info().rss // 1024})
        start = time.perf_counter()
        senders = [
            context.Process(target=_soak_sender, args=(rx.port, i, files, per_association, counter, errors))
            for i in range(SOAK_SENDERS)
        ]
        for proc in senders:
            proc.start()
        next_sample = 1000
        while any(p.is_alive() for p in senders):
            if counter.value >= next_sample:
                samples.append({"associations": counter.value, "rss_kib": parent.memory_info().rss // 1024})
                next_sample += 1000
            time.sleep(0.01)
        for proc in senders:
            proc.join()
        seconds = time.perf_counter() - start
        samples.append({"associations": counter.value, "rss_kib": parent.memory_info().rss // 1024})
        children_left = len(parent.children())
    stored = sum(1 for entry in os.scandir(out) if entry.is_file() and not entry.name.startswith("."))
    shutil.rmtree(out, ignore_errors=True)
    # flat: after the first 1,000 associations (imports, first fork), the parent grows by less than 2 MiB
    settled = [s["rss_kib"] for s in samples[1:]] or [samples[0]["rss_kib"]]
    growth_kib = max(settled) - min(settled)
    flat = growth_kib < 2048 and errors.value == 0 and stored == SOAK_SENDERS * files
    lines = [
        f"soak: {SOAK_SENDERS} senders x {files} files, {per_association} per association, into "
        f"batchstore receive --fork: {counter.value} associations ({expected_associations} expected), "
        f"{stored} files, {seconds:.1f} s, sender errors {errors.value}",
        "parent RSS (KiB) every 1,000 associations: "
        + ", ".join(f"{s['associations']}: {s['rss_kib']}" for s in samples),
        f"growth after the first sample: {growth_kib} KiB -> {'flat' if flat else 'NOT FLAT'}",
    ]
    print("\n".join(lines), flush=True)
    return {
        "senders": SOAK_SENDERS,
        "files_per_sender": files,
        "files_per_association": per_association,
        "associations": counter.value,
        "stored": stored,
        "seconds": round(seconds, 2),
        "sender_errors": errors.value,
        "children_left": children_left,
        "samples": samples,
        "growth_kib": growth_kib,
        "flat": flat,
        "table": "\n".join(lines),
    }


# --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 files, 1 round; soak of 8 x 250 files")
    parser.add_argument("--only", choices=["fsync", "soak"], help="run one of the two parts")
    parser.add_argument("--files", type=int, default=1000, help="files for the --fsync comparison (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds of the --fsync comparison")
    parser.add_argument("--soak-files", type=int, default=2000, help="files per soak sender (default 2000)")
    parser.add_argument("--per-association", type=int, default=4, help="soak files per association (default 4)")
    parser.add_argument("--disk-dir", default="/var/tmp", help="a directory on a disk for the --fsync comparison")
    parser.add_argument("--work", help="work directory (kept; default: a temporary directory, removed afterwards)")
    parser.add_argument("--output", default=str(RESULTS / "receive_limits.json"))
    args, _unknown = parser.parse_known_args(argv)
    files, repeat, soak_files, per_association = args.files, args.repeat, args.soak_files, args.per_association
    with work_dir(args.work) as work:
        result = run(work, args.quick, args.only, files, repeat, soak_files, per_association, args.disk_dir)
    output = write_json(Path(args.output), result)
    print(f"wrote {output}")
    ok = result.get("soak", {}).get("flat", True)
    return 0 if ok else 1


def run(
    work: Path,
    quick: bool = False,
    only: str | None = None,
    files: int = 1000,
    repeat: int = 3,
    soak_files: int = 2000,
    per_association: int = 4,
    disk_dir: str = "/var/tmp",
) -> dict:
    """Both parts (or `only` one) in `work`; the dict ``make perf`` (perf/run_all.py) collects."""
    if quick:
        files, repeat, soak_files, per_association = 200, 1, 250, 2
    result: dict = {"quick": quick}
    summary = []
    if only in (None, "fsync"):
        fsync = result["fsync"] = run_fsync(work, files, repeat, disk_dir)
        for row in fsync["results"]:
            summary.append(
                summary_row(
                    f"receive --fsync, {files} x 1 KB, output on {row['place']} ({row['filesystem']})",
                    files=files,
                    batchstore_s=row["seconds_with_fsync"],
                    result=f"{row['ratio']}x of without ({row['cost_per_file_us']:.0f} us/file)",
                    target="informational",
                    met=None,
                )
            )
    if only in (None, "soak"):
        soak = result["soak"] = run_soak(work, soak_files, per_association)
        summary.append(
            summary_row(
                f"receive soak {SOAK_SENDERS} x {soak_files} files, {soak['associations']} associations",
                files=soak["stored"],
                batchstore_s=soak["seconds"],
                result=f"parent RSS +{soak['growth_kib']} KiB",
                target="flat (< 2 MiB)",
                met=soak["flat"],
            )
        )
    return {**result, "summary": summary}


if __name__ == "__main__":
    sys.exit(main())
