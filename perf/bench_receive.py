"""Receive benchmark: ``batchstore receive --fork`` against DCMTK ``storescp --fork``, same senders, one run.

Two concurrent DCMTK ``storescu`` processes (``TCP_NODELAY=1``) each send 5,000 x 1 KB files (their own
corpus, distinct UIDs) to the receiver on loopback; the receiver writes to a fresh directory on the same
file system. For each receiver the table shows wall seconds from the first sender's start to the last
sender's end, files/s, and the receiver's CPU seconds (its process and the association children it
reaped); the ratio is batchstore files/s divided by storescp files/s. CPU/file is the receiver's CPU less
its start-up, per file: the median over the runs, with its user-mode part beside it (the rest is the
kernel: the network stack, the file system, switching to and from the senders). It is the figure of the
"receiver CPU per 1 KB file" row (target: at most 0.5x storescp's); the table says whether the receiver
ran its compiled one-message path (``BATCHSTORE_PURE_PYTHON=1`` measures the Python one).

``--nagle`` leaves Nagle's algorithm on in the DCMTK processes (as Debian deploys them) instead.
Writes ``perf/results/receive.json``. Run: ``python perf/bench_receive.py [--quick] [--files N]``;
``perf/run_all.py`` folds the result into the common summary table (target: ratio >= 1.0).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from common import RESULTS, ROOT, summary_row, work_dir, write_json
from gen_corpus import generate
from peers import DCMTK_STORESCP, DCMTK_STORESCU, dcmtk_env, free_port, wait_listening

SENDERS = 2


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _children_user() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime


def _count_files(directory: Path) -> int:
    return sum(1 for entry in os.scandir(directory) if entry.is_file() and not entry.name.startswith("."))


def _receiver_command(kind: str, out: Path, port: int, port_file: Path) -> list[str]:
    if kind == "storescp":
        return [DCMTK_STORESCP, "--fork", "-od", str(out), str(port)]
    return [
        sys.executable,
        "-m",
        "batchstore",
        "receive",
        "--fork",
        "--host",
        "127.0.0.1",
        "--port-file",
        str(port_file),
        "-od",
        str(out),
        "0",
    ]


def run_receiver(kind: str, corpora: list[Path], work: Path, nodelay: bool, expected: int) -> dict:
    out = work / f"out-{kind}-{time.monotonic_ns()}"
    out.mkdir()
    port_file = work / f"{kind}.port"
    port_file.unlink(missing_ok=True)
    port = free_port()
    env = dcmtk_env(nodelay) if kind == "storescp" else dict(os.environ, PYTHONPATH=str(ROOT))
    command = _receiver_command(kind, out, port, port_file)
    cpu_before = _children_cpu()
    user_before = _children_user()
    receiver = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        if kind == "storescp":
            wait_listening(port, 15, receiver, kind)
        else:
            deadline = time.monotonic() + 20
            while not (port_file.exists() and port_file.read_text().endswith("\n")):
                if receiver.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"batchstore receive did not start: {receiver.stderr.read() if receiver.stderr else ''}"
                    )
                time.sleep(0.02)
            port = int(port_file.read_text())
        # its start-up (interpreter, imports, listening socket): subtracted for the per-file figure
        times = psutil.Process(receiver.pid).cpu_times()
        startup_cpu = times.user + times.system
        startup_user = times.user
        errors: list[str] = []

        def send(corpus: Path) -> None:
            proc = subprocess.run(
                [DCMTK_STORESCU, "+sd", "+r", "127.0.0.1", str(port), str(corpus)],
                env=dcmtk_env(nodelay),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            if proc.returncode != 0:
                errors.append(proc.stderr[-2000:])

        threads = [threading.Thread(target=send, args=(corpus,)) for corpus in corpora]
        sender_cpu_before = _children_cpu()
        sender_user_before = _children_user()
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - start
        senders_cpu = _children_cpu() - sender_cpu_before
        senders_user = _children_user() - sender_user_before
        if errors:
            raise RuntimeError(f"storescu failed against {kind}: {errors[0]}")
        time.sleep(0.3)  # let the last children exit and be reaped
    finally:
        receiver.send_signal(signal.SIGTERM)
        try:
            receiver.wait(30)
        except subprocess.TimeoutExpired:
            receiver.kill()
            receiver.wait()
    receiver_cpu = _children_cpu() - cpu_before - senders_cpu
    receiver_user = _children_user() - user_before - senders_user - startup_user
    stored = _count_files(out)
    shutil.rmtree(out, ignore_errors=True)
    if stored != expected:
        raise RuntimeError(f"{kind} stored {stored} files, expected {expected}")
    return {
        "receiver": kind,
        "command": " ".join(command),
        "seconds": round(seconds, 3),
        "files_per_second": round(expected / seconds, 1),
        "receiver_cpu_seconds": round(receiver_cpu, 2),
        "receiver_startup_cpu_seconds": round(startup_cpu, 3),
        "receiver_cpu_per_file_us": round((receiver_cpu - startup_cpu) / expected * 1e6, 1),
        "receiver_user_per_file_us": round(receiver_user / expected * 1e6, 1),
        "senders_cpu_seconds": round(senders_cpu, 2),
        "stored": stored,
    }


def compiled_path() -> bool:
    """Whether the receiver runs the compiled one-message path (``batchstore/receiver/_onemessage.c`` built,
    ``BATCHSTORE_PURE_PYTHON`` not set): the CPU per file depends on it."""
    code = "from batchstore.receiver import onemessage; print(onemessage.compiled is not None)"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def _median(rows: list[dict]) -> dict:
    """The run with the median time, plus every run's seconds; the CPU per file (and its user part) are
    the medians over all runs, each taken on its own: on a shared machine they vary from run to run
    independently of the wall time."""
    ordered = sorted(rows, key=lambda row: row["seconds"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["all_seconds"] = [row["seconds"] for row in rows]
    for key in ("receiver_cpu_per_file_us", "receiver_user_per_file_us"):
        chosen[f"all_{key}"] = [row[key] for row in rows]
        chosen[key] = statistics.median(chosen[f"all_{key}"])
    return chosen


def run(
    work: Path, quick: bool = False, files: int = 5000, size: int = 1024, nagle: bool = False, repeat: int = 5
) -> dict:
    """Both receivers against the same two concurrent storescu senders; summary rows and details."""
    files = max(10, files // 10) if quick else files
    repeat = 1 if quick else repeat
    corpora = []
    for i in range(SENDERS):
        corpus = work / f"recv-corpus-{files}-{size}-{i}"
        marker = work / f".{corpus.name}.complete"  # outside the corpus: storescu +sd would send it
        if not marker.exists():
            generate(str(corpus), files, seed=100 + i, profile="uniform", size=size)
            marker.write_text("ok\n")
        corpora.append(corpus)
    expected = files * SENDERS
    runs: dict[str, list[dict]] = {"storescp": [], "batchstore": []}
    for _ in range(max(1, repeat)):
        for kind in runs:
            runs[kind].append(run_receiver(kind, corpora, work, not nagle, expected))
    results = [_median(rows) for rows in runs.values()]
    dcmtk, ours = results
    ratio = ours["files_per_second"] / dcmtk["files_per_second"]
    cpu_ratio = ours["receiver_cpu_per_file_us"] / dcmtk["receiver_cpu_per_file_us"]
    compiled = compiled_path()
    lines = [
        f"receive: {SENDERS} concurrent storescu (TCP_NODELAY={'0' if nagle else '1'}) x {files} files of ~{size} bytes"
        f" (batchstore's compiled one-message path: {'on' if compiled else 'off'})",
        f"{'receiver':<34} {'seconds':>8} {'files/s':>9} {'recv CPU s':>11} {'start-up':>9} {'CPU/file':>9}"
        f" {'user':>7}",
    ]
    for row in results:
        label = "storescp --fork" if row["receiver"] == "storescp" else "batchstore receive --fork"
        lines.append(
            f"{label:<34} {row['seconds']:>8.2f} {row['files_per_second']:>9.0f} {row['receiver_cpu_seconds']:>11.2f}"
            f" {row['receiver_startup_cpu_seconds']:>9.2f} {row['receiver_cpu_per_file_us']:>7.0f}us"
            f" {row['receiver_user_per_file_us']:>5.0f}us"
        )
    if repeat > 1:
        lines.append(f"(median of {repeat} alternating runs each; CPU/file: median over the runs, user: its user-mode part)")
    lines.append(f"ratio (batchstore / storescp files/s): {ratio:.2f}")
    text = "\n".join(lines)
    print(text, flush=True)
    label = f"receive {SENDERS} x storescu {'as deployed' if nagle else '(fair)'} --fork"
    summary = [
        summary_row(
            label,
            files=expected,
            dcmtk_s=dcmtk["seconds"],
            batchstore_s=ours["seconds"],
            ratio=ratio,
            target=">= 1.0x",
            met=ratio >= 1.0,
            note=f"receiver CPU s over its whole life, start-up included: storescp {dcmtk['receiver_cpu_seconds']}, "
            f"batchstore {ours['receiver_cpu_seconds']}",
        ),
        summary_row(
            "receiver CPU per 1 KB file (start-up excluded)",
            files=expected,
            ratio=cpu_ratio,
            result=f"{ours['receiver_cpu_per_file_us']:.0f} vs {dcmtk['receiver_cpu_per_file_us']:.0f} us",
            target="<= 0.5x storescp's",
            met=cpu_ratio <= 0.5,
            note="batchstore's CPU / storescp's: parent and association children, less the parent's start-up",
        ),
    ]
    details = {
        "benchmark": "receive",
        "senders": SENDERS,
        "files_per_sender": files,
        "file_size": size,
        "tcp_nodelay_dcmtk": not nagle,
        "repeat": max(1, repeat),
        "compiled_one_message_path": compiled,
        "results": results,
        "ratio_files_per_second": round(ratio, 3),
    }
    return {"summary": summary, "details": details, "table": text}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000, help="files per sender (default 5000)")
    parser.add_argument(
        "--size", type=int, default=1024, help="approximate file size in bytes (default 1024)"
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the files per sender")
    parser.add_argument("--nagle", action="store_true", help="leave Nagle on in DCMTK (as deployed)")
    parser.add_argument(
        "--repeat", type=int, default=5, help="alternate the receivers N times and report medians (default 5)"
    )
    parser.add_argument(
        "--work", help="work directory (kept; default: a temporary directory, removed afterwards)"
    )
    parser.add_argument("--output", default=str(RESULTS / "receive.json"))
    args, _unknown = parser.parse_known_args(argv)
    with work_dir(args.work) as work:
        result = run(work, args.quick, args.files, args.size, args.nagle, args.repeat)
    output = write_json(Path(args.output), {"quick": args.quick, **result})
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
