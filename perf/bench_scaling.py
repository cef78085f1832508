"""Scaling benchmark: batchstore send throughput against the worker count and the peer's max PDU.

1. Workers: 5,000 x 1 KB to ``storescp --fork`` (``TCP_NODELAY=1``) with ``batchstore send -j 1, 2, 4, 8``;
   DCMTK ``storescu`` once as the reference.
2. Max PDU: 1,000 x 513 KB with ``-j 2`` to ``storescp --fork -pdu N`` for N = 16384, 65536, 131072 (the
   largest PDU the peer announces, so the largest batchstore may send), storescu at each N as the reference.
   "Unlimited" (a peer announcing 0) cannot be had from storescp (4096..131072); it is measured against
   ``batchstore receive --fork -pdu 0`` when batchstore accepts 0 there, and otherwise reported as not
   available.

Every sender runs 3 alternating rounds and its median is reported; every run counts the files that arrived. Run alone: ``python perf/bench_scaling.py [--quick]``;
writes ``perf/results/scaling.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_send import CT_513K, _batchstore, _storescu, send_to_storescp
from common import (
    RESULTS,
    BatchstoreReceiver,
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

WORKERS = (1, 2, 4, 8)
PDUS = (16384, 65536, 131072)


def _fps(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}"


def _median_runs(rounds: int, senders: list[Any]) -> list[float]:
    """Run every sender once per round, alternating, and return each one's median seconds."""
    times: list[list[float]] = [[] for _ in senders]
    for _ in range(rounds):
        for i, sender in enumerate(senders):
            times[i].append(sender())
    return [statistics.median(t) for t in times]


def workers_table(work: Path, quick: bool, rounds: int = 3) -> tuple[list[dict[str, Any]], str]:
    count = 500 if quick else 5000
    corpus = make_corpus(work, "1k", count, 1024)
    out = work / "out-scaling-j"

    def storescu() -> float:
        return send_to_storescp(
            lambda p: _storescu(p, corpus), dcmtk_env(True), out, count, peer_nodelay=True, scp_args=[]
        )

    def batchstore(j: int) -> float:
        return send_to_storescp(
            lambda p: _batchstore(p, corpus, j), batchstore_env(), out, count, peer_nodelay=True, scp_args=[]
        )

    medians = _median_runs(rounds, [storescu] + [lambda j=j: batchstore(j) for j in WORKERS])
    rows = [{"sender": "storescu", "workers": 1, "files": count, "seconds": round(medians[0], 3)}]
    rows += [
        {"sender": "batchstore", "workers": j, "files": count, "seconds": round(seconds, 3)}
        for j, seconds in zip(WORKERS, medians[1:], strict=True)
    ]
    ref = rows[0]["seconds"]
    cells = [
        [
            "storescu (TCP_NODELAY=1)" if r["sender"] == "storescu" else f"batchstore send -j {r['workers']}",
            f"{r['seconds']:.2f}",
            _fps(count, r["seconds"]),
            f"{ref / r['seconds']:.2f}x",
        ]
        for r in rows
    ]
    text = f"scaling by workers: {count} x 1 KB -> storescp --fork (TCP_NODELAY=1)\n" + format_table(
        ["sender", "seconds", "files/s", "vs storescu"], cells
    )
    return rows, text


def _receive_accepts_pdu_zero(work: Path) -> tuple[bool, str]:
    """Whether ``batchstore receive --fork -pdu 0`` starts (and so announces an unlimited max PDU)."""
    receiver = BatchstoreReceiver(work / "out-pdu0-probe", ["-pdu", "0"], start_timeout=15)
    try:
        with receiver:
            return True, ""
    except RuntimeError:
        lines = [line for line in receiver.log().strip().splitlines() if line.strip()]
        shutil.rmtree(receiver._tmp, ignore_errors=True)
        return False, lines[-1] if lines else "did not start"
    finally:
        shutil.rmtree(work / "out-pdu0-probe", ignore_errors=True)


def _to_batchstore_receiver(cmd_for_port, env: dict[str, str], out: Path, expected: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    with BatchstoreReceiver(out, ["-pdu", "0"]) as receiver:
        seconds = run_timed(cmd_for_port(receiver.port), env)
        arrived = wait_count(out, expected)
    shutil.rmtree(out, ignore_errors=True)
    if arrived != expected:
        raise RuntimeError(f"{arrived} of {expected} files arrived at batchstore receive")
    return seconds


def pdu_table(
    work: Path, quick: bool, workers: int = 2, rounds: int = 3
) -> tuple[list[dict[str, Any]], str, str]:
    count = 100 if quick else 1000
    corpus = make_corpus(work, "513k", count, CT_513K)
    out = work / "out-scaling-pdu"
    rows = []
    for pdu in PDUS:
        row: dict[str, Any] = {"peer": f"storescp --fork -pdu {pdu}", "pdu": pdu, "files": count}
        senders = [
            lambda pdu=pdu: send_to_storescp(
                lambda p: _storescu(p, corpus),
                dcmtk_env(True),
                out,
                count,
                peer_nodelay=True,
                scp_args=["-pdu", str(pdu)],
            ),
            lambda pdu=pdu: send_to_storescp(
                lambda p: _batchstore(p, corpus, workers),
                batchstore_env(),
                out,
                count,
                peer_nodelay=True,
                scp_args=["-pdu", str(pdu)],
            ),
        ]
        storescu_s, batchstore_s = _median_runs(rounds, senders)
        row["storescu_s"] = round(storescu_s, 3)
        row["batchstore_s"] = round(batchstore_s, 3)
        rows.append(row)
    accepted, why = _receive_accepts_pdu_zero(work)
    note = ""
    if accepted:
        row = {"peer": "batchstore receive --fork -pdu 0", "pdu": 0, "files": count}
        storescu_s, batchstore_s = _median_runs(
            rounds,
            [
                lambda: _to_batchstore_receiver(lambda p: _storescu(p, corpus), dcmtk_env(True), out, count),
                lambda: _to_batchstore_receiver(
                    lambda p: _batchstore(p, corpus, workers), batchstore_env(), out, count
                ),
            ],
        )
        row["storescu_s"] = round(storescu_s, 3)
        row["batchstore_s"] = round(batchstore_s, 3)
        rows.append(row)
    else:
        note = (
            "unlimited PDU not measured: storescp -pdu accepts 4096..131072 only and "
            f"`batchstore receive -pdu 0` is refused ({why})"
        )
    cells = []
    for r in rows:
        cells.append(
            [
                r["peer"],
                f"{r['storescu_s']:.2f}",
                _fps(count, r["storescu_s"]),
                f"{r['batchstore_s']:.2f}",
                _fps(count, r["batchstore_s"]),
                f"{r['storescu_s'] / r['batchstore_s']:.2f}x",
            ]
        )
    if not accepted:
        cells.append(["unlimited (0)", "n/a", "-", "n/a", "-", "-"])
    text = (
        f"scaling by peer max PDU: {count} x 513 KB, batchstore send -j {workers} vs storescu (TCP_NODELAY=1)\n"
        + format_table(["peer", "storescu s", "files/s", "batchstore s", "files/s", "ratio"], cells)
    )
    if note:
        text += f"\nnote: {note}"
    return rows, text, note


def run(work: Path, quick: bool = False) -> dict[str, Any]:
    t0 = time.monotonic()
    j_rows, j_text = workers_table(work, quick)
    print(j_text, flush=True)
    p_rows, p_text, note = pdu_table(work, quick)
    print(p_text, flush=True)
    print(f"  scaling: done in {time.monotonic() - t0:.0f} s", flush=True)
    ref = j_rows[0]["seconds"]
    summary = [
        summary_row(
            f"scaling: send 1 KB -j {r['workers']}",
            files=r["files"],
            dcmtk_s=ref,
            batchstore_s=r["seconds"],
            ratio=ref / r["seconds"],
            target="-",
            met=None,
        )
        for r in j_rows[1:]
    ] + [
        summary_row(
            f"scaling: send 513 KB -j 2, peer -pdu {r['pdu'] or 'unlimited'}",
            files=r["files"],
            dcmtk_s=r["storescu_s"],
            batchstore_s=r["batchstore_s"],
            ratio=r["storescu_s"] / r["batchstore_s"],
            target="-",
            met=None,
        )
        for r in p_rows
    ]
    if note:
        summary.append(
            summary_row(
                "scaling: send 513 KB -j 2, peer -pdu unlimited",
                target="-",
                met=None,
                result="n/a",
                note=note,
            )
        )
    details = {"workers": j_rows, "pdu": p_rows, "note": note}
    return {"summary": summary, "details": details, "table": j_text + "\n\n" + p_text}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the files (smoke run)")
    parser.add_argument("--work", help="work directory (kept; default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS / "scaling.json"))
    args = parser.parse_args()
    with work_dir(args.work) as work:
        result = run(work, args.quick)
    write_json(Path(args.json), {"benchmark": "scaling", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
