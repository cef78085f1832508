"""Small runs: what a router or a modality sees, where start-up and per-association costs dominate.

(a) ``send``: 100 x 1 KB files to ``storescp --fork`` (``TCP_NODELAY=1``), ``batchstore send`` (default
``-j``) against DCMTK ``storescu``, end to end (process start to exit), alternating rounds, medians; and
the time from ``batchstore send``'s process start to its first C-STORE answered, measured by a scripted
SCP in this process (``tests/scripted_scp.py``) that records when it answers the first C-STORE; and each
sender's CPU (user + system, with the worker processes it waited for), which the load of other processes
moves less than the wall times.
Targets: no slower than storescu; first C-STORE within 100 ms.

(b) ``associations``: 100 associations of one 1 KB file each, one after the other, into
``batchstore receive --fork`` and into ``storescp --fork``, alternating rounds, medians. The sender is
one process of this benchmark speaking the protocol with batchstore's own PDU primitives, the same for
both receivers, so its cost is the same on both sides and no process start-up is measured. Also the
receiver's CPU per association (``psutil``: the parent's own, and its reaped children's), the steadier
figure on a shared machine. Target: no slower than storescp.

Writes ``perf/results/small.json``. Run: ``python perf/bench_small.py [--quick] [--repeat N]
[--only send|associations]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from bench_receive_limits import _soak_sender
from common import (
    RESULTS,
    BatchstoreReceiver,
    batchstore_cmd,
    batchstore_env,
    run_timed,
    summary_row,
    wait_count,
    work_dir,
    write_json,
)
from peers import DCMTK_STORESCU, DcmtkStorescp, cached_corpus, dcmtk_env
from scripted_scp import ScriptedSCP


def run_send(work: Path, files: int, repeat: int) -> dict[str, Any]:
    corpus = cached_corpus(work, "small", files, 1024)
    out = work / "small-out"
    out.mkdir(exist_ok=True)
    dcmtk: list[float] = []
    ours: list[float] = []
    dcmtk_cpu: list[float] = []  # the sender's CPU (and its workers'), which the other processes disturb less
    ours_cpu: list[float] = []
    with DcmtkStorescp(["--fork"], out_dir=out, nodelay=True, verbose=False) as scp:
        for _ in range(repeat):
            dcmtk.append(
                run_timed(
                    [DCMTK_STORESCU, "+sd", "+r", "127.0.0.1", str(scp.port), str(corpus)],
                    dcmtk_env(True),
                    cpu=dcmtk_cpu,
                )
            )
            ours.append(
                run_timed(
                    batchstore_cmd("send", "-q", "+sd", "+r", "127.0.0.1", str(scp.port), str(corpus)),
                    batchstore_env(),
                    cpu=ours_cpu,
                )
            )
        wait_count(out, files)
    first: list[float] = []
    answered: list[float] = []

    def policy(n: int, uid: str) -> int:  # n counts across associations: one peer per run
        if n == 1:
            answered.append(time.monotonic())
        return 0

    for _ in range(repeat):
        answered.clear()
        with ScriptedSCP(policy) as peer:
            start = time.monotonic()
            run_timed(
                batchstore_cmd("send", "-q", "+sd", "+r", "127.0.0.1", str(peer.port), str(corpus)),
                batchstore_env(),
            )
        first.append(answered[0] - start)
    return {
        "files": files,
        "storescu_s": round(statistics.median(dcmtk), 4),
        "batchstore_s": round(statistics.median(ours), 4),
        "storescu_runs_s": [round(x, 4) for x in dcmtk],
        "batchstore_runs_s": [round(x, 4) for x in ours],
        "ratio": round(statistics.median(dcmtk) / statistics.median(ours), 2),
        "storescu_cpu_s": round(statistics.median(dcmtk_cpu), 4),
        "batchstore_cpu_s": round(statistics.median(ours_cpu), 4),
        "first_cstore_ms": round(1000 * statistics.median(first), 1),
        "first_cstore_runs_ms": [round(1000 * x, 1) for x in first],
    }


def send_associations(port: int, count: int, index: int) -> None:
    """`count` associations one after the other, one C-STORE each (the soak sender of
    ``bench_receive_limits``, batchstore's own PDU primitives); raises if any failed."""
    counter = multiprocessing.Value("l", 0)
    errors = multiprocessing.Value("l", 0)
    _soak_sender(port, index, count, 1, counter, errors)
    if errors.value or counter.value != count:
        raise RuntimeError(f"{counter.value} of {count} associations completed")


def _receiver_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of receiver `pid` itself, and of its children: those it has reaped,
    and those still running (a spare child, batchstore's fork server), so far."""
    process = psutil.Process(pid)
    times = process.cpu_times()
    children = times.children_user + times.children_system
    for child in process.children():
        try:
            own = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        children += own.user + own.system
    return times.user + times.system, children


def _wait_reaped(pid: int, keep: int, timeout: float = 10.0) -> None:
    """Wait until receiver `pid` has at most `keep` children left (those it keeps between associations),
    the others reaped."""
    deadline = time.monotonic() + timeout
    parent = psutil.Process(pid)
    while len(parent.children()) > keep and time.monotonic() < deadline:
        time.sleep(0.01)


def run_associations(work: Path, count: int, repeat: int) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"storescp": [], "batchstore": []}
    # CPU per association, ms: the receiver's parent, its children, and both
    cpu: dict[str, dict[str, list[float]]] = {
        kind: {"parent": [], "children": [], "total": []} for kind in runs
    }
    for r in range(repeat):
        for kind in ("storescp", "batchstore"):
            out = work / f"assoc-{kind}-{r}"
            out.mkdir()
            if kind == "storescp":
                peer: Any = DcmtkStorescp(["--fork"], out_dir=out, nodelay=True, verbose=False)
            else:
                peer = BatchstoreReceiver(out, [], fork=True, work_dir=work, graceful=True)
            with peer:
                port = peer.port
                pid = peer.proc.pid
                time.sleep(0.2)  # a --fork batchstore starts its fork server and a spare child
                keep = len(psutil.Process(pid).children())
                parent0, children0 = _receiver_cpu(pid)
                start = time.perf_counter()
                send_associations(port, count, 10 * r + int(kind == "batchstore") + 20)
                runs[kind].append(time.perf_counter() - start)
                arrived = wait_count(out, count)
                _wait_reaped(pid, keep)
                parent1, children1 = _receiver_cpu(pid)
            if arrived != count:
                raise RuntimeError(f"{kind}: {arrived} of {count} files arrived")
            per = 1000 / count
            cpu[kind]["parent"].append((parent1 - parent0) * per)
            cpu[kind]["children"].append((children1 - children0) * per)
            cpu[kind]["total"].append((parent1 - parent0 + children1 - children0) * per)
    dcmtk = statistics.median(runs["storescp"])
    ours = statistics.median(runs["batchstore"])
    cpu_ms = {
        kind: {part: round(statistics.median(values), 2) for part, values in parts.items()}
        for kind, parts in cpu.items()
    }
    return {
        "associations": count,
        "storescp_s": round(dcmtk, 4),
        "batchstore_s": round(ours, 4),
        "storescp_runs_s": [round(x, 4) for x in runs["storescp"]],
        "batchstore_runs_s": [round(x, 4) for x in runs["batchstore"]],
        "storescp_ms_per_association": round(1000 * dcmtk / count, 2),
        "batchstore_ms_per_association": round(1000 * ours / count, 2),
        "ratio": round(dcmtk / ours, 2),
        # CPU per association (ms, medians over the rounds): the receiver's parent, its reaped children
        "storescp_cpu_ms": cpu_ms["storescp"],
        "batchstore_cpu_ms": cpu_ms["batchstore"],
        "cpu_ratio": round(cpu_ms["storescp"]["total"] / cpu_ms["batchstore"]["total"], 2)
        if cpu_ms["batchstore"]["total"]
        else None,
        "storescp_cpu_runs_ms": [round(x, 2) for x in cpu["storescp"]["total"]],
        "batchstore_cpu_runs_ms": [round(x, 2) for x in cpu["batchstore"]["total"]],
    }


def run(work: Path, quick: bool = False, repeat: int = 5, only: str = "") -> dict[str, Any]:
    result: dict[str, Any] = {}
    rows = []
    if only in ("", "send"):
        send = run_send(work, 100, max(1, repeat))
        result["send"] = send
        rows.append(
            summary_row(
                "small send: 100 x 1 KB, end to end",
                dcmtk_s=send["storescu_s"],
                batchstore_s=send["batchstore_s"],
                ratio=send["ratio"],
                files=100,
                target=">= 1.0x; first C-STORE <= 100 ms",
                met=send["ratio"] >= 1.0 and send["first_cstore_ms"] <= 100,
                note=f"first C-STORE {send['first_cstore_ms']} ms after start",
            )
        )
    if only in ("", "associations"):
        assoc = run_associations(work, 30 if quick else 100, max(1, repeat if not quick else 1))
        result["associations"] = assoc
        rows.append(
            summary_row(
                f"receive: {assoc['associations']} one-file associations --fork",
                dcmtk_s=assoc["storescp_s"],
                batchstore_s=assoc["batchstore_s"],
                ratio=assoc["ratio"],
                files=assoc["associations"],
                target=">= 1.0x",
                met=assoc["ratio"] >= 1.0,
                note=(
                    f"{assoc['batchstore_ms_per_association']} vs {assoc['storescp_ms_per_association']} ms each; "
                    f"CPU {assoc['batchstore_cpu_ms']['total']} vs {assoc['storescp_cpu_ms']['total']} ms"
                ),
            )
        )
    result["summary"] = rows
    write_json(RESULTS / "small.json", result)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=5, help="alternating rounds (median)")
    parser.add_argument("--only", choices=("send", "associations"), default="")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    with work_dir(args.work) as work:
        result = run(work, args.quick, args.repeat, args.only)
    for key in ("send", "associations"):
        if key in result:
            print(key, {k: v for k, v in result[key].items() if not k.endswith(("runs_s", "runs_ms"))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
