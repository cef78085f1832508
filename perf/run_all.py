"""`make perf`: every benchmark of perf/ in one run, one summary table, perf/results/perf.json
(and a dated copy perf/results/perf-<time>-<commit>.json to compare runs over time).

Benchmarks, in order (each is also runnable alone, see its docstring):

- ``send``     (bench_send.py):    batchstore send -j 2 vs storescu: 5,000 x 1 KB and 1,000 x 513 KB to
  storescp --fork (fair: TCP_NODELAY=1; 513 KB also with the receiver on a disk), 200 x 1 KB to a storescp and an Orthanc that keep Nagle on
  (storescu as deployed, and with TCP_NODELAY=1 for information).
- ``engines``  (bench_engines.py): the same 2,000 x 1 KB and 300 x 513 KB to storescp --fork from storescu,
  batchstore send --engine batchstore and --engine pynetdicom, -j 1 and -j 2 (report only, no target).
- ``receive``  (bench_receive.py): batchstore receive --fork vs storescp --fork, two concurrent storescu.
- ``scaling``  (bench_scaling.py): batchstore send with -j 1/2/4/8, and against peer max PDU sizes.
- ``scan``     (bench_scan.py):    batchstore scan of 100,000 files, warm cache.
- ``parser``   (bench_parser.py):  the scan's header parser vs pydicom.dcmread(stop_before_pixels=True) and
  read_file_meta_info, in process, us per file (report only, no target).
- ``memory``   (bench_memory.py):  peak RSS while sending / receiving one 1 GB file.
- ``tls``, ``pacs``, ``transcode``: TLS sends and receives, pydicom's test files to Orthanc, decompressing
  for an uncompressed-only peer (each against its DCMTK anchor).
- ``small``    (bench_small.py):   100 x 1 KB sent end to end and the first C-STORE's time; 100 one-file
  associations into each --fork receiver.
- ``load``     (bench_load.py):    batchstore load vs batchstore send to storescp --fork at 1 and 2
  associations, the generator's overhead per request, a 1-16 association sweep vs storescp and Orthanc.

Usage: ``python perf/run_all.py [--quick] [--only send,receive,...] [--work DIR]``. ``--quick`` runs about a
tenth of every size (a smoke run; its ratios are dominated by start-up costs and its targets are not
meaningful). Exits 1 when a benchmark failed to run (a missed target alone does not fail the run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import bench_cluster
import bench_engines
import bench_journal
import bench_load
import bench_memory
import bench_pacs
import bench_parser
import bench_receive
import bench_receive_limits
import bench_scaling
import bench_scan
import bench_send
import bench_small
import bench_tls
import bench_transcode
import psutil
from common import RESULTS, ROOT, print_summary, summary_row, work_dir, write_json

BENCHMARKS = {
    "send": bench_send.run,
    "journal": bench_journal.run,
    "engines": bench_engines.run,  # report only
    "receive": bench_receive.run,
    "receive_limits": bench_receive_limits.run,  # --fsync cost (report only), soak (flat RSS)
    "scaling": bench_scaling.run,
    "scan": bench_scan.run,
    "parser": bench_parser.run,  # report only
    "memory": bench_memory.run,
    "tls": bench_tls.run,
    "pacs": bench_pacs.run,  # pydicom's test files to Orthanc vs storescu
    "transcode": bench_transcode.run,  # decompressing for an uncompressed-only peer vs dcmsend
    "small": bench_small.run,  # 100-file send end to end, first C-STORE, one-file associations received
    "cluster": bench_cluster.run,  # send --cluster local:N vs -j N, scaling, the peer as the limit
    "load": bench_load.run,  # batchstore load vs send; generator overhead; sweep vs storescp and Orthanc
}


def _git_dirty() -> bool | None:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except Exception:
        return None


def _own_cpu() -> float:
    """CPU seconds of this process and of every child it has reaped (benchmarks wait for theirs)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _busy_cpu() -> float:
    """Busy CPU seconds of the whole machine since boot (all CPUs)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about a tenth of every size (smoke run)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--work", help="work directory (kept; default: a temporary one, removed at the end)")
    parser.add_argument("--json", default=str(RESULTS / "perf.json"))
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    started = time.monotonic()
    summary: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    failed = []
    with work_dir(args.work) as work:
        for name in names:
            print(f"\n== {name}{' (quick)' if args.quick else ''}", flush=True)
            os.sync()  # start every benchmark without the previous one's dirty pages in flight
            load = round(os.getloadavg()[0], 2)
            busy0, own0 = _busy_cpu(), _own_cpu()
            t0 = time.monotonic()
            try:
                result = BENCHMARKS[name](work, args.quick)
            except Exception as exc:  # one broken benchmark must not hide the others' figures
                traceback.print_exc()
                failed.append(name)
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                summary.append(
                    summary_row(
                        f"{name}: FAILED",
                        target="-",
                        met=False,
                        result="error",
                        note=f"{type(exc).__name__}: {str(exc)[:300]}",
                    )
                )
                continue
            result["seconds"] = round(time.monotonic() - t0, 1)
            result["loadavg_1min_before"] = load
            # machine-wide busy CPU minus ours: how much else ran on the 2 cores meanwhile (approximate)
            result["other_cpu_seconds"] = round(max(0.0, (_busy_cpu() - busy0) - (_own_cpu() - own0)), 1)
            results[name] = result
            summary.extend(result["summary"])
    total = time.monotonic() - started
    title = (
        f"summary ({'quick smoke run, ' if args.quick else ''}batchstore vs DCMTK on loopback, {total:.0f} s)"
    )
    for name in names:
        if "table" in results.get(name, {}):
            print(f"\n{results[name]['table']}")
    text = print_summary(summary, title, quick=args.quick)
    met = [r for r in summary if r["met"] is True]
    missed = [r for r in summary if r["met"] is False]
    judged = " (quick run: sizes too small to judge)" if args.quick else ""
    print(f"targets met: {len(met)} of {len(met) + len(missed)}{judged}", flush=True)
    other = [
        f"{n} {results[n]['other_cpu_seconds']:.0f} of {results[n]['seconds']:.0f} s"
        for n in names
        if "other_cpu_seconds" in results[n]
    ]
    print(
        "CPU seconds used by other processes during each benchmark (approximate; 2 cores; high = noisy): "
        + ", ".join(other),
        flush=True,
    )
    path = write_json(
        Path(args.json),
        {
            "benchmark": "all",
            "quick": args.quick,
            "git_dirty": _git_dirty(),
            "total_seconds": round(total, 1),
            "summary": summary,
            "summary_table": text,
            "benchmarks": results,
            "failed": failed,
        },
    )
    # a dated copy beside it, so that figures can be compared over time
    stamp = time.strftime("%Y%m%dT%H%M%S")
    head = json.loads(path.read_text()).get("git_head") or "nogit"
    history = path.with_name(f"{path.stem}-{stamp}-{head[:10]}{'-quick' if args.quick else ''}.json")
    shutil.copyfile(path, history)
    for p in (path, history):
        print(f"wrote {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
