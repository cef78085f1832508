"""Cluster benchmark: ``send --cluster local:N`` (batches as Dask tasks) against ``send -j N`` (worker
processes), same data, same peer (``storescp --fork``, ``TCP_NODELAY=1``), one run.

1. Overhead: 5,000 x 1 KB and 1,000 x 513 KB, ``-j 2`` and ``--cluster local:2`` in 7 rounds, the order
   turned round every other round (a busy stretch of the host falls on both alike). Target: local:2's
   median files/s within 15 % of -j 2's; each round's own ratio and their median are shown too. Also: each
   sender's CPU per file, split by thread (coordinator; its Dask threads; the workers' main threads, which
   send for -j and run the event loop on a Dask worker; the Dask workers' task threads, which send), and
   each slot's time outside its files' C-STOREs (start, gaps between batches, the tail).
2. Scaling: 5,000 x 1 KB with -j 1, 2, 4 and local:1, 2, 4.
3. The peer as the limit: 2,000 x 1 KB with storescp (and its children) pinned to CPU 0 and the sender
   (coordinator, Dask scheduler and workers) to CPU 1, local:1, 2, 4: where files/s stops growing, the
   peer's core is saturated; that rate is what one peer core accepts, whatever the number of senders.

Each run is a fresh interpreter (``--drive``) that calls `batchstore.send` and reports the send phase (from
the plan to the last outcome: the engine, without starting the Dask cluster), the whole run's wall time
(with it) and the CPU seconds of the sender (its own, and its reaped children's: worker processes or the
LocalCluster's Dask workers). Every run counts the files that arrived.

Run alone: ``python perf/bench_cluster.py [--quick] [--only overhead|scaling|peer]``; writes ``perf/results/cluster.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    DcmtkStorescp,
    batchstore_env,
    format_table,
    make_corpus,
    summary_row,
    wait_count,
    work_dir,
    write_json,
)

CT_513K = 525312
#: the engine's overhead: local:2's send-phase files/s at least this share of -j 2's
TARGET = 0.85
SCALING = ("-j 1", "-j 2", "-j 4", "local:1", "local:2", "local:4")
PEER_LIMITED = ("local:1", "local:2", "local:4")


def _drive(spec: str, port: int, corpus: str) -> None:
    """In a fresh interpreter: one `batchstore.send` run; print its timings as JSON."""
    import psutil

    import batchstore

    marks: dict[str, float] = {}
    start = time.perf_counter()
    me = psutil.Process()

    def cpu_now() -> float:
        """CPU seconds of this process and of its live children (workers, Dask workers)."""
        total = sum(me.cpu_times()[:2])
        for child in me.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return total

    def threads_now() -> dict[tuple[int, int], float]:
        """(process, thread) -> CPU seconds, for this process and its live children."""
        out: dict[tuple[int, int], float] = {}
        for proc in (me, *me.children(recursive=True)):
            try:
                for thread in proc.threads():
                    out[(proc.pid, thread.id)] = thread.user_time + thread.system_time
            except psutil.NoSuchProcess:
                pass
        return out

    def on_plan(plan: Any, failures: object) -> None:
        marks["cpu_plan"] = cpu_now()  # first: reading every process's CPU is no part of the send phase
        marks["threads_plan"] = threads_now()
        marks["plan"] = time.perf_counter()
        marks["expected"] = sum(len(b.instances) for b in plan.batches)
        marks["done"] = 0

    def on_outcomes(chunk: list) -> None:
        marks["last"] = time.perf_counter()
        marks["done"] += len(chunk)
        if marks["done"] == marks["expected"]:
            marks["cpu_send"] = cpu_now() - marks["cpu_plan"]
            marks["threads_send"] = threads_now()

    workers = int(spec.split()[-1].split(":")[-1])
    cluster = spec if spec.startswith("local:") else None
    report = batchstore.send(
        [corpus], "127.0.0.1", port, workers=workers, cluster=cluster, scan_directories=True,
        recurse=True, halt_on_failure=False, on_plan=on_plan, on_outcomes=on_outcomes,
    )  # fmt: skip
    end = time.perf_counter()
    cpu = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        cpu += usage.ru_utime + usage.ru_stime
    send_s = marks["last"] - marks["plan"]
    busy: dict[int, float] = {}
    for outcome in report.outcomes:
        busy[outcome.worker] = busy.get(outcome.worker, 0.0) + outcome.duration_ms / 1000
    print(json.dumps({
        "exit_code": report.exit_code(), "delivered": report.delivered, "associations": len(report.associations),
        "send_s": send_s, "run_s": end - start, "cpu_s": cpu, "send_cpu_s": marks["cpu_send"],
        "cpu_split_s": _cpu_split(marks["threads_plan"], marks["threads_send"], me.pid),
        # a slot's time in the send phase outside its files' C-STOREs: start, gaps between batches, the tail
        "idle_per_slot_s": statistics.mean(send_s - b for b in busy.values()) if busy else 0.0,
    }))  # fmt: skip


def _cpu_split(before: dict[tuple[int, int], float], after: dict[tuple[int, int], float], me: int) -> dict[str, float]:
    """A send phase's CPU by thread kind: the coordinator's main thread and its other threads (a LocalCluster's
    scheduler, client and nannies), and the workers' main threads (a worker process's send loop; a Dask
    worker's event loop) and their other threads (a Dask worker's task threads, which send)."""
    split = {"coordinator": 0.0, "coordinator_dask": 0.0, "workers_main": 0.0, "workers_threads": 0.0}
    for (pid, tid), seconds in after.items():
        used = seconds - before.get((pid, tid), 0.0)
        if pid == me:
            split["coordinator" if tid == pid else "coordinator_dask"] += used
        else:
            split["workers_main" if tid == pid else "workers_threads"] += used
    return {k: round(v, 3) for k, v in split.items()}


class _PinnedStorescp(DcmtkStorescp):
    """storescp (and its --fork children, which inherit the affinity) on one CPU."""

    cpu: int | None = None

    @property
    def command(self) -> list[str]:
        cmd = super().command
        return cmd if self.cpu is None else ["taskset", "-c", str(self.cpu), *cmd]


def measure(spec: str, corpus: Path, count: int, out: Path, pin: bool = False) -> dict[str, Any]:
    """One run of `spec` ("-j N" or "local:N") to a fresh storescp --fork; every file must arrive."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    scp = _PinnedStorescp(["--fork"], out_dir=out, verbose=False)
    scp.cpu = 0 if pin else None
    cmd = [sys.executable, __file__, "--drive", spec, "0", str(corpus)]
    if pin:
        cmd = ["taskset", "-c", "1", *cmd]
    with scp:
        cmd[cmd.index("0")] = str(scp.port)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=batchstore_env(), capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{spec}: exit {proc.returncode}: {proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        arrived = wait_count(out, count)
    shutil.rmtree(out, ignore_errors=True)
    if arrived != count or result["delivered"] != count or result["exit_code"] != 0:
        raise RuntimeError(f"{spec}: {arrived} of {count} files arrived; {result}")
    result["wall_s"] = wall
    return result


def medians(specs: tuple[str, ...], corpus: Path, count: int, out: Path, rounds: int, pin: bool = False):
    """Every spec once per round, in turn forwards and backwards (a slow or busy stretch of the host falls on
    each spec alike, and none always runs right after another); each one's median send phase, wall time
    and CPU."""
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in specs}
    for turn in range(rounds):
        for spec in specs if turn % 2 == 0 else specs[::-1]:
            runs[spec].append(measure(spec, corpus, count, out, pin))
    rows = []
    for spec, results in runs.items():
        send_s = statistics.median(r["send_s"] for r in results)
        split = {k: round(statistics.median(r["cpu_split_s"][k] for r in results) / count * 1e6) for k in results[0]["cpu_split_s"]}
        rows.append({
            "sender": f"--cluster {spec}" if spec.startswith("local") else spec,
            "files": count,
            "send_s": round(send_s, 3),
            "files_per_s": round(count / send_s),
            "wall_s": round(statistics.median(r["wall_s"] for r in results), 3),
            "cpu_us_per_file": round(statistics.median(r["send_cpu_s"] for r in results) / count * 1e6),
            "cpu_us_per_file_split": split,
            "idle_per_slot_ms": round(statistics.median(r["idle_per_slot_s"] for r in results) * 1000),
            "run_cpu_s": round(statistics.median(r["cpu_s"] for r in results), 2),
            "associations": results[0]["associations"],
            "send_runs_s": [round(r["send_s"], 3) for r in results],
        })  # fmt: skip
    return rows


def _table(title: str, rows: list[dict[str, Any]]) -> str:
    cells = [
        [r["sender"], f"{r['send_s']:.2f}", f"{r['files_per_s']:,}", str(r["cpu_us_per_file"]),
         "/".join(str(v) for v in r["cpu_us_per_file_split"].values()), str(r["idle_per_slot_ms"]),
         f"{r['wall_s']:.2f}", f"{r['run_cpu_s']:.2f}", str(r["associations"])]
        for r in rows
    ]  # fmt: skip
    return f"{title}\n" + format_table(
        ["sender", "send s", "files/s", "CPU us/file", "coord/dask/w-main/w-threads", "idle ms/slot",
         "whole run s", "whole run CPU s", "associations"], cells,
    )  # fmt: skip


SECTIONS = ("overhead", "scaling", "peer")


def run(work: Path, quick: bool = False, rounds: int = 3, sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    rounds = 1 if quick else rounds
    n1k, n513k, npeer = (500, 100, 500) if quick else (5000, 1000, 2000)
    c1k = make_corpus(work, "1k", n1k, 1024)
    c513k = make_corpus(work, "513k", n513k, CT_513K)
    out = work / "out-cluster"
    summary, tables, details = [], [], {}
    # the overhead rows carry the target: four more rounds. On this 2-core VM the same -j 2 run of 5,000 x
    # 1 KB takes 1.15 s or 1.75 s with the same CPU (the send loops wait on wake-ups, not on CPU): each
    # run of either sender falls on one side or the other by chance, more than the difference measured
    overhead_rounds = rounds if quick else rounds + 4
    for name, corpus, count in (("1k", c1k, n1k), ("513k", c513k, n513k)) if "overhead" in sections else ():
        rows = medians(("-j 2", "local:2"), corpus, count, out, overhead_rounds)
        # the figure of merit: the ratio of the two medians; each round's own ratio (its two runs back to
        # back) and their median say how far single runs scatter
        rounds_ratio = [round(j / c, 2) for j, c in zip(rows[0]["send_runs_s"], rows[1]["send_runs_s"], strict=True)]
        ratio = rows[1]["files_per_s"] / rows[0]["files_per_s"]
        of_rounds = statistics.median(rounds_ratio)
        cpu_ratio = rows[0]["cpu_us_per_file"] / rows[1]["cpu_us_per_file"]
        rows[1]["round_ratios"] = rounds_ratio
        rows[1]["median_of_round_ratios"] = round(of_rounds, 2)
        rows[1]["cpu_ratio"] = round(cpu_ratio, 2)
        details[f"overhead_{name}"] = rows
        size = "1 KB" if name == "1k" else "513 KB"
        tables.append(
            _table(f"overhead: {count} x {size}, -j 2 vs --cluster local:2 (median of {overhead_rounds})", rows)
            + f"\nratio of the medians {ratio:.2f}; per round {rounds_ratio}, median {of_rounds:.2f};"
            f" sender CPU per file -j 2 / local:2 {cpu_ratio:.2f}"
        )
        summary.append(summary_row(
            f"send {size} --cluster local:2 vs -j 2 (send phase)", files=count, dcmtk_s=rows[0]["send_s"],
            batchstore_s=rows[1]["send_s"], ratio=round(ratio, 2), target=f">= {TARGET:g}x", met=ratio >= TARGET,
            note=f"dcmtk_s column: -j 2; per round {rounds_ratio} "
            f"({sum(r >= TARGET for r in rounds_ratio)} of {len(rounds_ratio)} >= {TARGET:g}, median {of_rounds:.2f}); "
            f"sender CPU per file -j 2 / local:2 {cpu_ratio:.2f}",
        ))  # fmt: skip
    if "scaling" in sections:
        rows = medians(SCALING, c1k, n1k, out, rounds)
        details["scaling"] = rows
        tables.append(_table(f"scaling: {n1k} x 1 KB (median of {rounds})", rows))
    cpus = os.sched_getaffinity(0)
    if "peer" in sections and shutil.which("taskset") and {0, 1} <= cpus:
        cpeer = make_corpus(work, "1k-peer", npeer, 1024)
        rows = medians(PEER_LIMITED, cpeer, npeer, out, rounds, pin=True)
        details["peer_limited"] = rows
        tables.append(_table(f"the peer as the limit: {npeer} x 1 KB, storescp on CPU 0, sender on CPU 1", rows))
    text = "\n\n".join(tables)
    print(text, flush=True)
    return {"summary": summary, "details": details, "table": text}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drive", nargs=3, metavar=("SPEC", "PORT", "CORPUS"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a tenth of the files, one round (smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument(
        "--only", choices=SECTIONS, action="append", help="run this section only (repeatable; default: all)"
    )
    parser.add_argument("--work", help="work directory (kept; default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS / "cluster.json"))
    args = parser.parse_args()
    if args.drive:
        spec, port, corpus = args.drive
        _drive(spec, int(port), corpus)
        return 0
    with work_dir(args.work) as work:
        result = run(work, args.quick, args.rounds, tuple(args.only or SECTIONS))
    write_json(Path(args.json), {"benchmark": "cluster", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
