"""Scan benchmark: ``batchstore scan +sd +r DIR`` (scan and plan, no network) of 100,000 files, warm cache.

Generates 100,000 uniform 1 KB CT files (1,000 series directories) once, then runs ``batchstore scan`` as a
subprocess twice and reports the second run (page cache warm), against the target of 5 s. The plan's file
count (first line of the output) must equal the number of generated files. A third run with
``BATCHSTORE_PURE_PYTHON=1`` gives the pure-Python header parse's time for comparison (informational).

Run alone: ``python perf/bench_scan.py [--quick] [--files N]``; writes ``perf/results/scan.json``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, batchstore_cmd, batchstore_env, make_corpus, summary_row, work_dir, write_json

TARGET_S = 5.0
RUNS = 2  # the first warms the cache and the interpreter's own files; the second is reported


def scan_once(corpus: Path, pure_python: bool = False) -> tuple[float, int]:
    """Seconds of one ``batchstore scan +sd +r`` and the file count it planned."""
    cmd = batchstore_cmd("scan", "+sd", "+r", str(corpus))
    env = batchstore_env()
    if pure_python:
        env["BATCHSTORE_PURE_PYTHON"] = "1"
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"batchstore scan exited {proc.returncode}: {proc.stderr[-2000:]}")
    match = re.search(r"^(\d+) file\(s\)", proc.stdout, re.MULTILINE)
    if not match:
        raise RuntimeError(f"cannot find the file count in the scan output: {proc.stdout[:500]!r}")
    return seconds, int(match.group(1))


def run(work: Path, quick: bool = False, files: int = 100_000) -> dict[str, Any]:
    count = max(100, files // 10) if quick else files
    t0 = time.perf_counter()
    corpus = make_corpus(work, "scan", count, 1024, seed=11)
    generated_s = time.perf_counter() - t0
    runs = []
    try:
        for _ in range(RUNS):
            seconds, planned = scan_once(corpus)
            if planned != count:
                raise RuntimeError(f"scan planned {planned} files, {count} generated")
            runs.append(round(seconds, 3))
        pure_s, planned = scan_once(corpus, pure_python=True)
        if planned != count:
            raise RuntimeError(f"scan (pure Python) planned {planned} files, {count} generated")
    finally:
        shutil.rmtree(corpus, ignore_errors=True)
        (work / f".{corpus.name}.complete").unlink(missing_ok=True)
    reported = runs[-1]
    text = (
        f"scan: batchstore scan +sd +r of {count} files of 1 KB in {count // 100} directories "
        f"(generated in {generated_s:.1f} s)\n"
        f"runs (s): {', '.join(f'{s:.2f}' for s in runs)}; reported (warm cache): {reported:.2f} s; "
        f"{count / reported:,.0f} files/s; target < {TARGET_S:g} s; "
        f"pure-Python header parse (BATCHSTORE_PURE_PYTHON=1): {pure_s:.2f} s"
    )
    print(text, flush=True)
    target = f"< {TARGET_S:g} s" + ("" if count == 100_000 else f" (for 100,000; {count} here)")
    summary = [
        summary_row(
            "scan+plan, warm cache",
            files=count,
            batchstore_s=reported,
            result=f"{reported:.2f} s",
            target=target,
            met=reported < TARGET_S if count >= 100_000 else None,
            note=f"pure-Python header parse {pure_s:.2f} s",
        )
    ]
    details = {
        "files": count,
        "runs_s": runs,
        "reported_s": reported,
        "pure_python_s": round(pure_s, 3),
        "generate_s": round(generated_s, 2),
    }
    return {"summary": summary, "details": details, "table": text}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="a tenth of the files (smoke run)")
    parser.add_argument("--work", help="work directory (kept; default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS / "scan.json"))
    args = parser.parse_args()
    with work_dir(args.work) as work:
        result = run(work, args.quick, args.files)
    write_json(Path(args.json), {"benchmark": "scan", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
