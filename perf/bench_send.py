"""Send benchmark: ``batchstore send -j N`` against DCMTK ``storescu``, same data, same receiver, one run.

Scenarios (each sender gets a fresh receiver; every file is counted on arrival):

- ``1k``:     5,000 x 1 KB to ``storescp --fork``, fair (``TCP_NODELAY=1`` on both DCMTK sides). Target 2.5x.
- ``513k``:   1,000 x 513 KB (525,312 bytes, CT-sized) to ``storescp --fork``, fair, the receiver writing to
  the work directory (tmpfs by default). Target 3x.
- ``513k-disk``: the same with the receiver writing to a disk (``BATCHSTORE_PERF_DISK``, default
  ``/var/tmp``), where the peer's file creation and page cache are part of every C-STORE. Informational.
- ``nagle``:  200 x 1 KB to ``storescp --fork`` that keeps Nagle on (no ``TCP_NODELAY``), storescu as
  deployed (no ``TCP_NODELAY`` either). Target 20x. Also reported: storescu with ``TCP_NODELAY=1``
  against the same peer (``nagle/fair``, informational).
- ``orthanc``: 200 x 1 KB to Orthanc with its default settings (Debian's Orthanc links DCMTK: Nagle on),
  storescu as deployed. A fresh Orthanc per sender; delivery checked with ``/statistics``. Target 20x.
  Also ``orthanc/fair``: storescu with ``TCP_NODELAY=1`` (informational).

The fair scenarios run ``--repeat`` (default 3) alternating rounds and report medians; the ratio is DCMTK seconds / batchstore seconds (= batchstore files/s over storescu files/s).
Run alone: ``python perf/bench_send.py [--quick] [-j 2] [--scenarios 1k,513k,nagle,orthanc]``;
writes ``perf/results/send.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    DCMTK_STORESCU,
    RESULTS,
    DcmtkStorescp,
    Orthanc,
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

#: Where the ``513k-disk`` receiver writes (a disk, not tmpfs).
DISK = os.environ.get("BATCHSTORE_PERF_DISK", "/var/tmp")

#: name -> files, size, peer ("storescp"/"orthanc"), peer keeps Nagle on, target ratio (None: informational),
#: receiver output on `DISK`
SCENARIOS: dict[str, dict[str, Any]] = {
    "1k": {"count": 5000, "size": 1024, "peer": "storescp", "peer_nagle": False, "target": 2.5},
    "513k": {"count": 1000, "size": CT_513K, "peer": "storescp", "peer_nagle": False, "target": 3.0},
    "513k-disk": {
        "count": 1000,
        "size": CT_513K,
        "peer": "storescp",
        "peer_nagle": False,
        "target": None,
        "disk": True,
    },
    "nagle": {"count": 200, "size": 1024, "peer": "storescp", "peer_nagle": True, "target": 20.0},
    "orthanc": {"count": 200, "size": 1024, "peer": "orthanc", "peer_nagle": True, "target": 20.0},
}
DEFAULT = "1k,513k,513k-disk,nagle,orthanc"


def _storescu(port: int, corpus: Path) -> list[str]:
    return [DCMTK_STORESCU, "+sd", "+r", "127.0.0.1", str(port), str(corpus)]


def _batchstore(port: int, corpus: Path, workers: int, extra: list[str] | None = None) -> list[str]:
    return batchstore_cmd(
        "send", "-q", "-j", str(workers), *(extra or []), "+sd", "+r", "127.0.0.1", str(port), str(corpus)
    )


def send_to_storescp(
    cmd_for_port,
    env: dict[str, str],
    out: Path,
    expected: int,
    *,
    peer_nodelay: bool,
    scp_args: list[str],
    cpu: list[float] | None = None,
) -> float:
    """Start a fresh ``storescp --fork`` (+ ``scp_args``), run the sender, check every file arrived
    (``cpu``: append the sender's CPU seconds)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with DcmtkStorescp(["--fork", *scp_args], out_dir=out, nodelay=peer_nodelay, verbose=False) as scp:
        seconds = run_timed(cmd_for_port(scp.port), env, cpu=cpu)
        arrived = wait_count(out, expected)
    shutil.rmtree(out, ignore_errors=True)
    if arrived != expected:
        raise RuntimeError(f"{arrived} of {expected} files arrived at storescp")
    return seconds


def send_to_orthanc(cmd_for_port, env: dict[str, str], expected: int, *, peer_nodelay: bool) -> float:
    """Start a fresh Orthanc (default Nagle behaviour unless ``peer_nodelay``), send, check /statistics."""
    with Orthanc(nodelay=peer_nodelay) as orthanc:
        before = orthanc.count_instances()
        seconds = run_timed(cmd_for_port(orthanc.dicom_port), env)
        after = orthanc.wait_instances(before + expected, timeout=30)
    if after - before != expected:
        raise RuntimeError(f"Orthanc /statistics: {after - before} of {expected} instances arrived")
    return seconds


def run_scenario(name: str, work: Path, workers: int, quick: bool, repeat: int = 3) -> dict[str, Any]:
    spec = SCENARIOS[name]
    count = max(10, spec["count"] // 10) if quick else spec["count"]
    corpus = make_corpus(work, name, count, spec["size"])
    peer_nodelay = not spec["peer_nagle"]

    def deliver(cmd_for_port, env: dict[str, str], label: str, cpu: list[float] | None = None) -> float:
        if spec["peer"] == "orthanc":
            return send_to_orthanc(cmd_for_port, env, count, peer_nodelay=peer_nodelay)
        out = (
            Path(DISK) / f"batchstore-perf-{os.getpid()}-{name}-{label}"
            if spec.get("disk")
            else work / f"out-{name}-{label}"
        )
        try:
            return send_to_storescp(
                cmd_for_port, env, out, count, peer_nodelay=peer_nodelay, scp_args=[], cpu=cpu
            )
        finally:
            shutil.rmtree(out, ignore_errors=True)

    row: dict[str, Any] = {
        "scenario": name,
        "files": count,
        "size": spec["size"],
        "peer": spec["peer"],
        "peer_tcp_nodelay": peer_nodelay,
        "workers": workers,
    }
    # DCMTK as deployed (Nagle scenarios) and/or fair, then batchstore; alternated ``repeat`` times for the
    # fair scenarios (median reported), once for the slow Nagle ones.
    dcmtk_variants = [("fair", True)] if peer_nodelay else [("deployed", False), ("fair", True)]
    rounds = max(1, repeat) if peer_nodelay else 1
    runs: dict[str, list[float]] = {}
    # The senders' CPU seconds (storescp's not included): on a shared 2-core machine wall times swing with
    # the other processes, CPU time much less; the summary's note gives the medians (storescp peers only).
    cpu: dict[str, list[float]] = {}
    for _ in range(rounds):
        for variant, nodelay in dcmtk_variants:
            seconds = deliver(
                lambda port: _storescu(port, corpus), dcmtk_env(nodelay), f"dcmtk-{variant}",
                cpu.setdefault(f"dcmtk_{variant}_cpu_s", []),
            )  # fmt: skip
            runs.setdefault(f"dcmtk_{variant}_s", []).append(round(seconds, 3))
        seconds = deliver(
            lambda port: _batchstore(port, corpus, workers), batchstore_env(), "batchstore",
            cpu.setdefault("batchstore_cpu_s", []),
        )  # fmt: skip
        runs.setdefault("batchstore_s", []).append(round(seconds, 3))
    for key, values in runs.items():
        row[key] = statistics.median(values)
        row[key.replace("_s", "_runs_s")] = values
    for key, values in cpu.items():
        if values:
            row[key] = round(statistics.median(values), 3)
    seconds = row["batchstore_s"]
    row["batchstore_files_per_s"] = round(count / seconds, 1)
    main_variant = "fair" if peer_nodelay else "deployed"
    row["dcmtk_s"] = row[f"dcmtk_{main_variant}_s"]
    row["ratio"] = round(row["dcmtk_s"] / seconds, 2)
    if not peer_nodelay:
        row["ratio_fair"] = round(row["dcmtk_fair_s"] / seconds, 2)
    return row


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        target = SCENARIOS[r["scenario"]]["target"]
        size = "1 KB" if r["size"] == 1024 else f"{r['size'] // 1024} KB"
        peer = "storescp --fork" if r["peer"] == "storescp" else "Orthanc"
        if SCENARIOS[r["scenario"]].get("disk"):
            label = f"send {size} -> {peer} on disk ({DISK}, fair)"
        elif r["peer_tcp_nodelay"]:
            label = f"send {size} -> {peer} (fair)"
        else:
            label = f"send {size} -> {peer} Nagle (as deployed)"
        out.append(
            summary_row(
                f"{label} -j {r['workers']}",
                files=r["files"],
                dcmtk_s=r["dcmtk_s"],
                batchstore_s=r["batchstore_s"],
                ratio=r["ratio"],
                target="-" if target is None else f">= {target:g}x",
                met=None if target is None else r["ratio"] >= target,
                note=(
                    f"sender CPU {r['batchstore_cpu_s']:.2f} s vs storescu {r['dcmtk_fair_cpu_s']:.2f} s"
                    if "batchstore_cpu_s" in r and "dcmtk_fair_cpu_s" in r
                    else ""
                ),
            )
        )
        if not r["peer_tcp_nodelay"]:
            out.append(
                summary_row(
                    f"send {size} -> {peer} Nagle (storescu TCP_NODELAY=1)",
                    files=r["files"],
                    dcmtk_s=r["dcmtk_fair_s"],
                    batchstore_s=r["batchstore_s"],
                    ratio=r["ratio_fair"],
                    target="-",
                    met=None,
                )
            )
    return out


def table(rows: list[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        for variant in ("deployed", "fair"):
            key = f"dcmtk_{variant}_s"
            if key not in r:
                continue
            label = f"{r['scenario']} ({'storescu TCP_NODELAY=1' if variant == 'fair' else 'as deployed'})"
            dcmtk = r[key]
            cells.append(
                [
                    label,
                    str(r["files"]),
                    f"{dcmtk:.2f}",
                    f"{r['files'] / dcmtk:.0f}",
                    f"{r['batchstore_s']:.2f}",
                    f"{r['batchstore_files_per_s']:.0f}",
                    f"{dcmtk / r['batchstore_s']:.2f}x",
                ]
            )
    return format_table(
        ["scenario", "files", "DCMTK s", "files/s", "batchstore s", "files/s", "ratio"], cells
    )


def run(
    work: Path, quick: bool = False, workers: int = 2, scenarios: str = DEFAULT, repeat: int = 3
) -> dict[str, Any]:
    repeat = 1 if quick else repeat
    rows = []
    for name in [s.strip() for s in scenarios.split(",") if s.strip()]:
        t0 = time.monotonic()
        rows.append(run_scenario(name, work, workers, quick, repeat))
        print(f"  send/{name}: done in {time.monotonic() - t0:.0f} s", flush=True)
    text = table(rows)
    print(f"send: batchstore send -j {workers} vs /usr/bin/storescu\n{text}", flush=True)
    if repeat > 1:
        text += f"\n(fair scenarios: median of {repeat} alternating runs each; Nagle scenarios: one run)"
    return {
        "summary": summary(rows),
        "details": {"workers": workers, "repeat": repeat, "rows": rows},
        "table": text,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", "-j", type=int, default=2)
    parser.add_argument("--scenarios", default=DEFAULT, help=f"comma-separated subset of {DEFAULT}")
    parser.add_argument("--quick", action="store_true", help="a tenth of the files, one run (smoke run)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="alternating runs of the fair scenarios (median)"
    )
    parser.add_argument("--work", help="work directory (kept; default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS / "send.json"))
    args = parser.parse_args()
    with work_dir(args.work) as work:
        result = run(work, args.quick, args.workers, args.scenarios, args.repeat)
    write_json(Path(args.json), {"benchmark": "send", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
