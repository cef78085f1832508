"""Engine benchmark: batchstore's lean C-STORE loop against pynetdicom's ``Association``, with storescu as the anchor.

The same corpus goes to the same peer, a fresh DCMTK ``storescp --fork`` with ``TCP_NODELAY=1`` for every
run, from:

- ``storescu``: DCMTK's ``/usr/bin/storescu +sd +r`` with ``TCP_NODELAY=1`` (the anchor);
- ``batchstore -j N``: ``batchstore send --engine batchstore -j N`` (the default engine, ``sender/scu.py``);
- ``pynetdicom -j N``: ``batchstore send --engine pynetdicom -j N`` (``sender/scu_pynetdicom.py``: pynetdicom's
  ``AE``/``Association`` on a tuned transport: ``TCP_NODELAY``, and ``TCP_QUICKACK`` set at connect), so the
  scan, plan, workers and reporting are the same and only the engine differs.

Corpora: 2,000 x 1 KB and 300 x 513 KB (525,312 bytes, CT-sized) uniform CT files; every file is counted on
arrival. ``-j 1`` and ``-j 2``. The senders alternate over ``--repeat`` rounds (default 3) and medians are
reported. Ratios: storescu seconds / sender seconds (above 1: faster than storescu), and pynetdicom seconds /
batchstore seconds at the same ``-j`` (how much the lean loop gains).

Per C-STORE costs at ``-j 1``: each single-process sender also sends a 10-file corpus of the same size in each
round; ``(x(N) - x(10)) / (N - 10)`` of wall time and of the sender's CPU time (its own and its reaped
workers', from ``getrusage(RUSAGE_CHILDREN)``) is the cost of one more C-STORE with start-up, scan and
association set-up taken out. Wall time per C-STORE includes the peer's time (the exchange is synchronous);
wall minus CPU is the time the sender spends waiting.

Report only, no target. Run alone: ``python perf/bench_engines.py [--quick] [--repeat N] [--sizes 1k,513k]``;
writes ``perf/results/engines.json``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    DCMTK_STORESCU,
    RESULTS,
    DcmtkStorescp,
    batchstore_cmd,
    batchstore_env,
    dcmtk_env,
    format_table,
    make_corpus,
    run_timed,
    summary_row,
    wait_count,
    work_dir,
    write_json,
)

CT_513K = 525312
FIXED_FILES = 10  # the small corpus whose cost is subtracted to get per-C-STORE figures

#: name -> files, size
SIZES: dict[str, dict[str, int]] = {
    "1k": {"count": 2000, "size": 1024},
    "513k": {"count": 300, "size": CT_513K},
}
DEFAULT_SIZES = "1k,513k"

#: sender label -> (engine or None for storescu, workers)
SENDERS: dict[str, tuple[str | None, int]] = {
    "storescu": (None, 1),
    "batchstore -j 1": ("batchstore", 1),
    "pynetdicom -j 1": ("pynetdicom", 1),
    "batchstore -j 2": ("batchstore", 2),
    "pynetdicom -j 2": ("pynetdicom", 2),
}
#: the senders whose per-C-STORE cost is measured (single process or one worker)
PER_MESSAGE = ("storescu", "batchstore -j 1", "pynetdicom -j 1")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _command(sender: str, port: int, corpus: Path) -> list[str]:
    engine, workers = SENDERS[sender]
    if engine is None:
        return [DCMTK_STORESCU, "+sd", "+r", "127.0.0.1", str(port), str(corpus)]
    return batchstore_cmd(
        "send", "-q", "--engine", engine, "-j", str(workers), "+sd", "+r", "127.0.0.1", str(port), str(corpus)
    )


def deliver(sender: str, corpus: Path, expected: int, out: Path) -> tuple[float, float]:
    """Send ``corpus`` to a fresh ``storescp --fork`` (``TCP_NODELAY=1``); wall and sender CPU seconds.

    The CPU is that of the sender and the processes it reaped (batchstore's workers): the only child this
    process reaps while the sender runs is the sender itself (storescp is stopped afterwards).
    """
    env = dcmtk_env(True) if SENDERS[sender][0] is None else batchstore_env()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        with DcmtkStorescp(["--fork"], out_dir=out, nodelay=True, verbose=False) as scp:
            cpu0 = _children_cpu()
            seconds = run_timed(_command(sender, scp.port, corpus), env)
            cpu = _children_cpu() - cpu0
            arrived = wait_count(out, expected)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if arrived != expected:
        raise RuntimeError(f"{sender}: {arrived} of {expected} files arrived at storescp")
    return seconds, cpu


def run_size(name: str, work: Path, quick: bool, repeat: int, log: Callable[[str], None]) -> dict[str, Any]:
    spec = SIZES[name]
    count = max(FIXED_FILES * 2, spec["count"] // 10) if quick else spec["count"]
    corpus = make_corpus(work, f"engines-{name}", count, spec["size"])
    fixed = make_corpus(work, f"engines-{name}-fixed", FIXED_FILES, spec["size"])
    out = work / f"out-engines-{name}"
    wall: dict[str, list[float]] = {s: [] for s in SENDERS}
    cpu: dict[str, list[float]] = {s: [] for s in SENDERS}
    wall_fixed: dict[str, list[float]] = {s: [] for s in PER_MESSAGE}
    cpu_fixed: dict[str, list[float]] = {s: [] for s in PER_MESSAGE}
    for i in range(repeat):
        t0 = time.monotonic()
        for sender in SENDERS:
            seconds, used = deliver(sender, corpus, count, out)
            wall[sender].append(round(seconds, 3))
            cpu[sender].append(round(used, 3))
            if sender in PER_MESSAGE:
                seconds, used = deliver(sender, fixed, FIXED_FILES, out)
                wall_fixed[sender].append(round(seconds, 3))
                cpu_fixed[sender].append(round(used, 3))
        log(f"  engines/{name}: round {i + 1} of {repeat} in {time.monotonic() - t0:.0f} s")
    senders: dict[str, dict[str, Any]] = {}
    anchor = statistics.median(wall["storescu"])
    for sender in SENDERS:
        seconds = statistics.median(wall[sender])
        row: dict[str, Any] = {
            "seconds": seconds,
            "runs_s": wall[sender],
            "cpu_s": statistics.median(cpu[sender]),
            "cpu_runs_s": cpu[sender],
            "files_per_s": round(count / seconds, 1),
            "vs_storescu": round(anchor / seconds, 2),
        }
        if sender in PER_MESSAGE:
            extra = count - FIXED_FILES
            per_wall = [(w - f) / extra * 1e6 for w, f in zip(wall[sender], wall_fixed[sender], strict=True)]
            per_cpu = [(c - f) / extra * 1e6 for c, f in zip(cpu[sender], cpu_fixed[sender], strict=True)]
            row.update(
                {
                    "fixed_s": statistics.median(wall_fixed[sender]),
                    "fixed_cpu_s": statistics.median(cpu_fixed[sender]),
                    "per_store_wall_us": round(statistics.median(per_wall)),
                    "per_store_cpu_us": round(statistics.median(per_cpu)),
                }
            )
        senders[sender] = row
    lean_gain = {
        j: round(senders[f"pynetdicom -j {j}"]["seconds"] / senders[f"batchstore -j {j}"]["seconds"], 2)
        for j in (1, 2)
    }
    return {
        "size_name": name,
        "files": count,
        "size": spec["size"],
        "repeat": repeat,
        "senders": senders,
        "batchstore_over_pynetdicom": lean_gain,
    }


def _size_label(size: int) -> str:
    return "1 KB" if size == 1024 else f"{size // 1024} KB"


def table(rows: list[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        for sender, s in r["senders"].items():
            per = s.get("per_store_wall_us")
            cells.append(
                [
                    f"{_size_label(r['size'])} {sender}",
                    str(r["files"]),
                    f"{s['seconds']:.2f}",
                    f"{s['files_per_s']:.0f}",
                    f"{s['vs_storescu']:.2f}x",
                    f"{s['cpu_s']:.2f}",
                    "-" if per is None else f"{per}",
                    "-" if per is None else f"{s['per_store_cpu_us']}",
                ]
            )
    text = format_table(
        ["sender", "files", "wall s", "files/s", "vs storescu", "CPU s", "us/C-STORE", "CPU us/C-STORE"],
        cells,
    )
    gains = "; ".join(
        f"{_size_label(r['size'])}: "
        + ", ".join(f"-j {j} {g:.2f}x" for j, g in r["batchstore_over_pynetdicom"].items())
        for r in rows
    )
    return f"{text}\nlean loop over pynetdicom (pynetdicom s / batchstore s): {gains}"


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        anchor = r["senders"]["storescu"]["seconds"]
        for j in (1, 2):
            lean, pyn = r["senders"][f"batchstore -j {j}"], r["senders"][f"pynetdicom -j {j}"]
            note = ""
            if j == 1:
                note = (
                    f"per C-STORE at -j 1: lean {lean['per_store_wall_us']} us wall / "
                    f"{lean['per_store_cpu_us']} us CPU, pynetdicom {pyn['per_store_wall_us']} us / "
                    f"{pyn['per_store_cpu_us']} us, storescu {r['senders']['storescu']['per_store_wall_us']} us"
                )
            for engine, s in (("pynetdicom", pyn), ("batchstore", lean)):
                out.append(
                    summary_row(
                        f"engines: {_size_label(r['size'])} -> storescp --fork, --engine {engine} -j {j}",
                        files=r["files"],
                        dcmtk_s=anchor,
                        batchstore_s=s["seconds"],
                        ratio=s["vs_storescu"],
                        result=f"{s['files_per_s']:.0f} files/s",
                        target="-",
                        met=None,
                    )
                )
            out.append(
                summary_row(
                    f"engines: {_size_label(r['size'])} lean loop / pynetdicom, -j {j}",
                    files=r["files"],
                    ratio=r["batchstore_over_pynetdicom"][j],
                    result=f"{pyn['seconds']:.2f} / {lean['seconds']:.2f} s",
                    target="-",
                    met=None,
                    note=note,
                )
            )
    return out


def run(work: Path, quick: bool = False, repeat: int = 3, sizes: str = DEFAULT_SIZES) -> dict[str, Any]:
    repeat = 1 if quick else max(1, repeat)
    rows = []
    for name in [s.strip() for s in sizes.split(",") if s.strip()]:
        rows.append(run_size(name, work, quick, repeat, lambda line: print(line, flush=True)))
    text = (
        "engines: batchstore send --engine batchstore|pynetdicom vs /usr/bin/storescu, to storescp --fork "
        f"(TCP_NODELAY=1){'' if repeat == 1 else f', median of {repeat} alternating rounds'}\n{table(rows)}"
    )
    print(text, flush=True)
    return {"summary": summary(rows), "details": {"repeat": repeat, "rows": rows}, "table": text}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the files, one round (smoke run)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated subset of {DEFAULT_SIZES}")
    parser.add_argument("--work", help="work directory (kept; default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS / "engines.json"))
    args = parser.parse_args()
    with work_dir(args.work) as work:
        result = run(work, args.quick, args.repeat, args.sizes)
    write_json(Path(args.json), {"benchmark": "engines", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
