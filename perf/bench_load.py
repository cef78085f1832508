"""Load generator benchmark: can ``batchstore load`` push a peer at least as hard as ``batchstore send``?

1. Against ``storescp --fork`` (``TCP_NODELAY=1``), at 1 and 2 associations, 5 alternating rounds (medians): ``batchstore load`` (closed
   loop, 1 KB data sets with fresh UIDs, ``--duration``) against ``batchstore send -j N`` of 1 KB files.
   send's steady rate is its marginal one, ``(N_big - N_small) / (t_big - t_small)``, so its fixed start-up
   (~0.2 s: interpreter, scan, plan) does not count against it. Target: load >= send at each level. Both
   sides' CPU per C-STORE is reported too (send's from ``RUSAGE_CHILDREN``, marginal like its rate; load's
   from its report): on a shared 2-core machine it is the steadier figure, and the peer gets what the
   generator leaves.
2. The generator's own cost per request, without the network, in µs: the timed path of the loop (the UID
   patch, two ``perf_counter`` calls, the appends) and, after the clock stops, turning the raw figures
   into HDR histograms. Measured in-process with ``time.process_time`` (CPU), which the other processes
   of a shared machine disturb less than wall time.
3. A concurrency sweep (1, 2, 4, 8, 16 associations) against ``storescp --fork`` and Orthanc with its
   defaults: the table the README and the design record quote. Each level is short (``--quick``: 1 s).

Run alone: ``python perf/bench_load.py [--quick] [--html FILE]``; writes ``perf/results/load.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from array import array
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    DcmtkStorescp,
    Orthanc,
    batchstore_cmd,
    batchstore_env,
    format_table,
    make_corpus,
    run_timed,
    summary_row,
    wait_count,
    work_dir,
    write_json,
)

LEVELS = (1, 2)
SWEEP = (1, 2, 4, 8, 16)


def _load(port: int, files: list[str], levels: str, seconds: float, out: Path, *extra: str) -> dict[str, Any]:
    report = out / f"load-{time.monotonic_ns()}.json"
    cmd = batchstore_cmd("load", "-q", "--no-progress", "--concurrency", levels, "--duration", f"{seconds}s",
                         "--warmup", "0.3s", "--json", str(report), *extra, "127.0.0.1", str(port), *files)  # fmt: skip
    run_timed(cmd, batchstore_env(), timeout=120 + 4 * seconds * len(levels.split(",")))
    data: dict[str, Any] = json.loads(report.read_text())
    report.unlink()
    return data


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _send_rate(
    port: int, corpus_big: Path, big: int, corpus_small: Path, small: int, j: int
) -> tuple[float, float, float]:
    """``batchstore send -j j`` to storescp at `port`: (marginal C-STOREs/s, wall C-STOREs/s, marginal CPU
    µs per file of all its processes, from ``RUSAGE_CHILDREN``)."""
    env = batchstore_env()
    cpu0 = _children_cpu()
    t_small = run_timed(
        batchstore_cmd("send", "-q", "-j", str(j), "+sd", "+r", "127.0.0.1", str(port), str(corpus_small)),
        env,
    )
    cpu1 = _children_cpu()
    t_big = run_timed(
        batchstore_cmd("send", "-q", "-j", str(j), "+sd", "+r", "127.0.0.1", str(port), str(corpus_big)), env
    )
    cpu2 = _children_cpu()
    cpu_per_file = ((cpu2 - cpu1) - (cpu1 - cpu0)) / (big - small) * 1e6
    return (big - small) / max(t_big - t_small, 1e-6), big / t_big, cpu_per_file


def against_send(work: Path, quick: bool) -> tuple[list[dict[str, Any]], str, list[dict[str, Any]]]:
    big, small = (1000, 100) if quick else (5000, 500)
    seconds = 1.0 if quick else 3.0
    corpus_big = make_corpus(work, "1k", big, 1024)
    corpus_small = make_corpus(work, "1k-small", small, 1024, seed=8)  # other UIDs than corpus_big
    files = [str(p) for p in sorted(corpus_small.rglob("*.dcm"))[:3]]
    rows, cells, summary = [], [], []
    rounds = 1 if quick else 5
    for j in LEVELS:
        out = work / f"out-load-{j}"
        out.mkdir(parents=True, exist_ok=True)
        sends: list[tuple[float, float, float]] = []
        levels: list[dict[str, Any]] = []
        with DcmtkStorescp(["--fork"], out_dir=out, nodelay=True, verbose=False) as scp:
            for _ in range(rounds):  # alternating, medians: the machine is shared
                sends.append(_send_rate(scp.port, corpus_big, big, corpus_small, small, j))
                levels.append(_load(scp.port, files, str(j), seconds, work)["levels"][0])
            wait_count(out, big + small + sum(lv["completed"] + lv["warmup"] for lv in levels), timeout=60)
        send_marginal = statistics.median(s[0] for s in sends)
        send_wall = statistics.median(s[1] for s in sends)
        send_cpu = statistics.median(s[2] for s in sends)
        level = sorted(levels, key=lambda lv: lv["stores_per_s"])[len(levels) // 2]
        rate = level["stores_per_s"]
        rows.append({"associations": j, "send_marginal_per_s": round(send_marginal, 1), "send_wall_per_s": round(send_wall, 1),
                     "send_cpu_per_file_us": round(send_cpu, 1), "load_per_s": rate,
                     "load_p99_ms": level["latency_ms"]["p99"], "rounds": rounds,
                     "load_generator_cpu_per_request_us": level["generator"]["cpu_per_request_us"]})  # fmt: skip
        cells.append([str(j), f"{send_wall:,.0f}", f"{send_marginal:,.0f}", f"{rate:,.0f}", f"{rate / send_marginal:.2f}x",
                      f"{send_cpu:.0f}", f"{level['generator']['cpu_per_request_us']:.0f}"])  # fmt: skip
        summary.append(summary_row(f"load vs send to storescp --fork, {j} association(s) (C-STOREs/s)",
                                   target="load >= send", met=rate >= send_marginal, ratio=rate / send_marginal,
                                   result=f"{rate:,.0f} vs {send_marginal:,.0f}/s"))  # fmt: skip
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    text = (
        "load generator vs batchstore send, 1 KB data sets -> storescp --fork (TCP_NODELAY=1)\n"
        + format_table(
            [
                "associations",
                "send /s (wall)",
                "send /s (marginal)",
                "load /s",
                "load/send",
                "send CPU/file us",
                "load CPU/req us",
            ],
            cells,
        )
    )
    return rows, text, summary


def overhead(quick: bool) -> dict[str, float]:
    """µs of CPU per request the generator spends around the network (timed path; histograms after)."""
    import numpy as np

    from batchstore.dicom.uids import EXPLICIT_VR_LE
    from batchstore.loadgen.figures import histogram_of
    from batchstore.loadgen.templates import FreshUids, Template, with_slots

    n = 20_000 if quick else 200_000
    # a small explicit VR little endian data set, as the generator prepares one
    data = b"\x08\x00\x16\x00UI\x0a\x001.2.3.4.5\x00" + b"\x28\x00\x10\x00US\x02\x00\x00\x02"
    payload, slots = with_slots(data, EXPLICIT_VR_LE)
    template = Template(None, 1, "1.2.3", "1.2.3.4", EXPLICIT_VR_LE, payload, slots)  # type: ignore[arg-type]
    fresh = FreshUids()
    perf = time.perf_counter
    due_ms, latency_us, sizes = array("I"), array("Q"), array("I")
    statuses: dict[int, int] = {}
    t0 = perf()
    cpu0 = time.process_time()
    for i in range(n):
        ref = perf()
        fresh.apply(template, i)
        memoryview(template.payload)
        done = perf()
        due_ms.append(int((ref - t0) * 1000))
        latency_us.append(max(1, int((done - ref) * 1e6)))
        sizes.append(template.size)
        statuses[0] = statuses.get(0, 0) + 1
    timed = (time.process_time() - cpu0) / n * 1e6
    lat = np.frombuffer(latency_us, dtype=np.uint64) + np.random.default_rng(1).integers(100, 5000, n).astype(
        np.uint64
    )
    cpu0 = time.process_time()
    histogram_of(lat)
    after = (time.process_time() - cpu0) / n * 1e6
    return {"timed_path_us": round(timed, 2), "histogram_after_us": round(after, 3), "requests": n}


def sweep(work: Path, quick: bool) -> tuple[dict[str, Any], str]:
    seconds = 1.0 if quick else 2.0
    corpus = make_corpus(work, "1k-sweep", 3, 1024)
    files = [str(p) for p in sorted(corpus.rglob("*.dcm"))]
    levels = ",".join(str(k) for k in SWEEP)
    reports: dict[str, Any] = {}
    out = work / "out-load-sweep"
    out.mkdir(parents=True, exist_ok=True)
    with DcmtkStorescp(["--fork"], out_dir=out, nodelay=True, verbose=False) as scp:
        reports["storescp --fork"] = _load(scp.port, files, levels, seconds, work)
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    with Orthanc() as orthanc:
        reports["Orthanc (defaults)"] = _load(
            orthanc.dicom_port, files, levels, seconds, work, "-aec", "ORTHANC"
        )
    cells = []
    for peer, report in reports.items():
        for lv in report["levels"]:
            lat = lv["latency_ms"]
            cells.append([peer, str(lv["concurrency"]), f"{lv['stores_per_s']:,.0f}", f"{lv['mb_per_s']:.2f}",
                          f"{lat['p50']:.2f}", f"{lat['p99']:.2f}", f"{lat['max']:.1f}", f"{lv['setup_ms']['p50']:.1f}",
                          str(lv["failed"]), f"{lv['generator']['cpu_percent']:.0f}%",
                          f"{lv['generator']['machine_cpu_percent']:.0f}%"])  # fmt: skip
    text = (
        f"sweep, closed loop, 1 KB data sets with fresh UIDs, {seconds:g} s per level (latency ms)\n"
        + format_table(
            [
                "peer",
                "assoc",
                "C-STORE/s",
                "MB/s",
                "p50",
                "p99",
                "max",
                "setup",
                "failed",
                "gen CPU",
                "machine",
            ],
            cells,
        )
    )
    return reports, text


def run(work: Path, quick: bool = False) -> dict[str, Any]:
    t0 = time.monotonic()
    rows, text, summary = against_send(work, quick)
    print(text, flush=True)
    cost = overhead(quick)
    print(f"generator overhead per request (CPU, no network): timed path {cost['timed_path_us']} us, "
          f"histograms after the clock {cost['histogram_after_us']} us", flush=True)  # fmt: skip
    summary.append(summary_row("load generator: timing overhead per request (CPU)", target="stated", met=None,
                               result=f"{cost['timed_path_us']:.1f} us + {cost['histogram_after_us']:.2f} us after"))  # fmt: skip
    reports, sweep_text = sweep(work, quick)
    print(sweep_text, flush=True)
    best = {peer: max(lv["stores_per_s"] for lv in r["levels"]) for peer, r in reports.items()}
    for peer, rate in best.items():
        summary.append(summary_row(f"load sweep 1-16 associations, {peer}: best C-STOREs/s", target="-", met=None,
                                   result=f"{rate:,.0f}/s"))  # fmt: skip
    print(f"  load: done in {time.monotonic() - t0:.0f} s", flush=True)
    return {
        "summary": summary,
        "details": {"against_send": rows, "overhead": cost, "sweep": reports},
        "table": text + "\n" + sweep_text,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller corpora, 1 s levels")
    parser.add_argument("--work", help="work directory (kept; default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS / "load.json"))
    args = parser.parse_args()
    with work_dir(args.work) as work:
        result = run(work, args.quick)
    write_json(Path(args.json), {"benchmark": "load", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
