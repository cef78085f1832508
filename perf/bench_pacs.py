"""Real-PACS benchmark: pydicom's own test files sent to Orthanc by batchstore and by DCMTK storescu.

pydicom ships a directory of test files (``pydicom.data``, next to its ``__init__.py``: valid files in many
transfer syntaxes, truncated and malformed ones, files without a Study Instance UID, non-DICOM files). They
are copied into the work directory (nothing is downloaded) and sent, in one run, to a fresh Orthanc each
(the harness's configuration with Orthanc's default DICOM timeout of 30 s and, as deployed, Nagle on) by

- DCMTK: ``/usr/bin/storescu -nh +sd +r 127.0.0.1 PORT DIR`` with ``TCP_NODELAY=1`` in its environment;
- batchstore: ``batchstore send -q -nh +sd +r 127.0.0.1 PORT DIR`` (default workers).

Reported: wall seconds of each sender, its exit code, and the instances Orthanc stored (``/statistics``).
Target: batchstore within 1.5x of storescu's time (ratio = storescu s / batchstore s >= 0.67), delivering
at least as many instances.

Run alone: ``python perf/bench_pacs.py``; writes ``perf/results/pacs.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    DCMTK_STORESCU,
    RESULTS,
    Orthanc,
    batchstore_cmd,
    batchstore_env,
    dcmtk_env,
    format_table,
    summary_row,
    work_dir,
    write_json,
)

#: batchstore may take at most this many times storescu's seconds
TARGET_FACTOR = 1.5


def pydicom_corpus(work: Path) -> Path:
    """A copy of the files pydicom ships in ``pydicom.data`` (its test files), without Python caches."""
    import pydicom.data

    source = Path(pydicom.data.__file__).resolve().parent
    dest = work / "pydicom-data"
    if not dest.exists():
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def count_files(root: Path) -> int:
    return sum(len(names) for _r, _d, names in os.walk(root))


def _timed(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[float, int, str]:
    """Run to completion: (wall seconds, exit code, stderr tail). A non-zero exit is expected here."""
    start = time.perf_counter()
    proc = subprocess.run(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        timeout=timeout,
    )
    return time.perf_counter() - start, proc.returncode, proc.stderr[-1500:]


def send_to_fresh_orthanc(cmd_for_port, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """A fresh Orthanc (Nagle on, as deployed), one sender run; seconds, exit code, instances stored."""
    with Orthanc(nodelay=False) as orthanc:
        seconds, code, tail = _timed(cmd_for_port(orthanc.dicom_port), env, timeout)
        time.sleep(0.5)  # let Orthanc index what it acknowledged last
        stored = orthanc.count_instances()
    return {"seconds": round(seconds, 3), "exit_code": code, "stored": stored, "stderr_tail": tail}


def run(work: Path, quick: bool = False, timeout: float = 900.0) -> dict[str, Any]:
    corpus = pydicom_corpus(work)
    files = count_files(corpus)
    dcmtk = send_to_fresh_orthanc(
        lambda port: [DCMTK_STORESCU, "-nh", "+sd", "+r", "127.0.0.1", str(port), str(corpus)],
        dcmtk_env(True),
        timeout,
    )
    ours = send_to_fresh_orthanc(
        lambda port: batchstore_cmd("send", "-q", "-nh", "+sd", "+r", "127.0.0.1", str(port), str(corpus)),
        batchstore_env(),
        timeout,
    )
    ratio = dcmtk["seconds"] / ours["seconds"] if ours["seconds"] else None
    met = ours["seconds"] <= TARGET_FACTOR * dcmtk["seconds"] and ours["stored"] >= dcmtk["stored"]
    table = format_table(
        ["sender", "input files", "seconds", "exit", "stored by Orthanc"],
        [
            [
                "storescu -nh +sd +r (TCP_NODELAY=1)",
                str(files),
                f"{dcmtk['seconds']:.2f}",
                str(dcmtk["exit_code"]),
                str(dcmtk["stored"]),
            ],
            [
                "batchstore send -nh +sd +r",
                str(files),
                f"{ours['seconds']:.2f}",
                str(ours["exit_code"]),
                str(ours["stored"]),
            ],
        ],
    )
    summary = [
        summary_row(
            "pydicom test files -> Orthanc (defaults), -nh +sd +r",
            files=files,
            dcmtk_s=dcmtk["seconds"],
            batchstore_s=ours["seconds"],
            ratio=ratio,
            result=f"stored {ours['stored']} vs {dcmtk['stored']}",
            target=f"<= {TARGET_FACTOR:g}x storescu's time, >= its instances",
            met=met,
        )
    ]
    return {
        "summary": summary,
        "table": table,
        "details": {"input_files": files, "storescu": dcmtk, "batchstore": ours},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", help="work directory (kept; default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=900.0, help="per sender run (default 900 s)")
    parser.add_argument("--json", default=str(RESULTS / "pacs.json"))
    args = parser.parse_args()
    with work_dir(args.work) as work:
        result = run(work, timeout=args.timeout)
    print(result["table"])
    from common import print_summary

    print_summary(result["summary"], "pacs")
    write_json(Path(args.json), {"benchmark": "pacs", **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
