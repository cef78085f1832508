"""Shared helpers of the perf/ benchmarks: peers, corpora, timing, delivery checks, the summary table.

Every benchmark module exposes ``run(work: Path, quick: bool) -> dict`` returning at least ``summary``
(a list of summary rows, see `summary_row`) and ``details``; its ``main()`` runs it alone, prints its own
tables and writes ``perf/results/<name>.json``. ``perf/run_all.py`` runs them all in one process and prints
one summary table.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "perf" / "results"
for _sub in ("scripts", "tests"):
    if str(ROOT / _sub) not in sys.path:
        sys.path.insert(0, str(ROOT / _sub))

# tests/peers.py is the one harness of tests and benchmarks: peers, the batchstore receiver, corpora
import peers  # noqa: E402
from peers import (  # noqa: E402
    DCMTK_STORESCP,
    DCMTK_STORESCU,
    DcmtkStorescp,
    Orthanc,
    count_files,
    dcmtk_env,
    free_port,
    wait_count,
)
from peers import cached_corpus as make_corpus  # noqa: E402

__all__ = [
    "DCMTK_STORESCP",
    "DCMTK_STORESCU",
    "BatchstoreReceiver",
    "DcmtkStorescp",
    "Orthanc",
    "ROOT",
    "RESULTS",
    "batchstore_cmd",
    "batchstore_env",
    "count_files",
    "dcmtk_env",
    "format_table",
    "free_port",
    "git_head",
    "make_corpus",
    "print_summary",
    "run_timed",
    "summary_row",
    "wait_count",
    "work_dir",
    "write_json",
]

_COMPILED = False


def compile_package() -> None:
    """Write batchstore's bytecode caches, as ``pip install`` does for an installed package.

    With ``PYTHONDONTWRITEBYTECODE=1`` in the environment (some CI images set it) an editable checkout
    would recompile every module on every run: ~50 ms of each ``batchstore send`` that a user's
    installed copy never pays. The benchmarks measure the installed state.
    """
    global _COMPILED
    if not _COMPILED:
        import compileall

        compileall.compile_dir(str(ROOT / "batchstore"), quiet=1)
        _COMPILED = True


def batchstore_env() -> dict[str, str]:
    """Environment for a batchstore subprocess: this checkout first on the import path, bytecode compiled."""
    compile_package()
    return peers.batchstore_env()


def batchstore_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "batchstore", *args]


def run_timed(
    cmd: Sequence[str], env: dict[str, str], timeout: float = 600.0, cpu: list[float] | None = None
) -> float:
    """Run ``cmd`` to completion; its wall seconds. Raises with the tail of stderr on a non-zero exit.

    ``cpu``: append the CPU seconds (user + system) of ``cmd`` and the children it waited for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        list(cmd),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        timeout=timeout,
    )
    elapsed = time.perf_counter() - start
    if cpu is not None:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed


class BatchstoreReceiver(peers.BatchstoreReceiver):
    """`peers.BatchstoreReceiver` (``batchstore receive --fork --host 127.0.0.1 --port-file F -od OUT
    [extra] 0``), started from the compiled package as every benchmark runs it."""

    def start(self) -> BatchstoreReceiver:
        compile_package()
        super().start()
        return self


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------


def summary_row(
    scenario: str,
    *,
    target: str,
    met: bool | None,
    dcmtk_s: float | None = None,
    batchstore_s: float | None = None,
    ratio: float | None = None,
    result: str | None = None,
    files: int | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One line of the summary table. ``met`` None: informational (no target)."""
    return {
        "scenario": scenario,
        "files": files,
        "dcmtk_s": None if dcmtk_s is None else round(dcmtk_s, 3),
        "batchstore_s": None if batchstore_s is None else round(batchstore_s, 3),
        "ratio": None if ratio is None else round(ratio, 2),
        "result": result or "",
        "target": target,
        "met": met,
        "note": note,
    }


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A plain-text table; ``align`` has one char per column, ``<`` or ``>`` (default: first left)."""
    align = align or "<" + ">" * (len(headers) - 1)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(f"{h:{a}{w}}" for h, a, w in zip(headers, align, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def print_summary(rows: Sequence[dict[str, Any]], title: str = "summary", quick: bool = False) -> str:
    """Print (and return) the summary table: scenario, DCMTK s, batchstore s, ratio, result, target, met.

    ``quick``: a smoke run, whose sizes are too small to judge the targets: "met" is shown in brackets.
    """
    cells = []
    for r in rows:
        met = {True: "yes", False: "NO", None: "info"}.get(r["met"], str(r["met"]))
        if quick and r["met"] is not None:
            met = f"({met.lower()})"
        cells.append(
            [
                r["scenario"],
                _cell(r.get("files")),
                _cell(r.get("dcmtk_s"), "{:.2f}"),
                _cell(r.get("batchstore_s"), "{:.2f}"),
                _cell(r.get("ratio"), "{:.2f}x"),
                r.get("result", ""),
                r["target"],
                met,
            ]
        )
    text = format_table(
        ["scenario", "files", "DCMTK s", "batchstore s", "ratio", "result", "target", "met"],
        cells,
        "<>>>>><<",
    )
    print(f"\n== {title}\n{text}", flush=True)
    notes = [f"  {r['scenario']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        print("notes:\n" + "\n".join(notes), flush=True)
    return text


def git_head() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except Exception:
        return None


def environment() -> dict[str, Any]:
    import platform

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "timestamp": time.time(),
        "git_head": git_head(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "work_base": _default_base() or tempfile.gettempdir(),
    }


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**environment(), **data}, indent=1) + "\n")
    return path


#: Where temporary work directories go: tmpfs when the machine has one. Every receiver (DCMTK's and
#: batchstore's) then writes to memory: on this VM's ext4 a single file creation took from 100 to 500 us
#: from one run to the next (strace -c of storescp and batchstore receive), which swamped the protocol
#: costs the benchmarks compare. Set BATCHSTORE_PERF_DIR (or --work) to measure on a disk instead.
def _default_base() -> str | None:
    base = os.environ.get("BATCHSTORE_PERF_DIR")
    if base:
        return base
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 8 * 2**30:
        return shm
    return None


def work_dir(work: str | None):
    """A context manager yielding the work directory: ``work`` (kept) or a temporary one (removed).

    The temporary one is created on tmpfs when there is one with 8 GiB free (see `_default_base`).
    """
    import contextlib

    if work:
        path = Path(work)
        path.mkdir(parents=True, exist_ok=True)
        return contextlib.nullcontext(path)

    @contextlib.contextmanager
    def _tmp():
        with tempfile.TemporaryDirectory(prefix="bs-perf-", dir=_default_base()) as tmp:
            yield Path(tmp)

    return _tmp()
