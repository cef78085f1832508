"""Scan parser benchmark: batchstore's header reader against pydicom on the same files, in one process.

What a scan needs from each file is its SOP Class UID, SOP Instance UID, transfer syntax and where the
data set starts. Three ways of getting it are timed on the same files:

- ``batchstore``: ``read_instance(path)`` (``batchstore.dicom.part10``; ``batchstore.sender.scan`` before
  the layout moved it), the reader ``batchstore scan`` and ``batchstore send`` use;
- ``dcmread``: ``pydicom.dcmread(path, stop_before_pixels=True)``, then reading the three UIDs from the
  result (pydicom converts a value when it is first accessed, so the access is part of the work);
- ``meta``: ``pydicom.filereader.read_file_meta_info(path)`` and its three UIDs: the file meta group only
  (what a scan could use at the least; it does not see the data set's own UIDs).

Corpora: generated uniform CT files (``scripts/gen_corpus.py`` through ``perf/common.py``'s ``make_corpus``),
1 KB and 513 KB, and pydicom's own test files that ship with the package (the local part of
``pydicom.data.get_testdata_files()``, nothing is downloaded: many transfer syntaxes, big and little endian,
deflated, odd writers). On the test files the timing covers the files all three
readers accept; the others are counted per reader.

Each corpus is read once by every reader to warm the page cache and the imports, then ``--rounds``
(default 7) rounds, each reader in turn (the order rotating from round to round) and each round reading the
files as often as it takes to make 2,000 calls (500 with ``--quick``); the per-file time of a reader is the
median over the rounds of (round seconds / calls). The ratio is pydicom's microseconds per
file over batchstore's.

Run alone: ``python perf/bench_parser.py [--quick] [--rounds N]``; writes ``perf/results/parser.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, format_table, make_corpus, summary_row, work_dir, write_json

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:  # the layout of issue 9 moves the reader from the sender to the DICOM leaf
    from batchstore.dicom.part10 import Instance, read_instance
except ImportError:  # pragma: no cover - an older tree
    from batchstore.sender.scan import Instance, read_instance  # type: ignore[no-redef]

CT_513K = 525312

#: name -> files, size (full run); ``--quick`` takes a tenth
CORPORA: dict[str, dict[str, int]] = {
    "1k": {"count": 2000, "size": 1024},
    "513k": {"count": 200, "size": CT_513K},
}
READERS = ("batchstore", "dcmread", "meta")


def _batchstore(path: str) -> tuple[str, str, str]:
    found = read_instance(path)
    if not isinstance(found, Instance):
        raise ValueError(found.reason)
    return found.sop_class_uid, found.sop_instance_uid, found.transfer_syntax


def _dcmread(path: str) -> tuple[str, str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta = ds.file_meta
    return (
        str(ds.get("SOPClassUID", "")),
        str(ds.get("SOPInstanceUID", "")),
        str(meta.get("TransferSyntaxUID", "")),
    )


def _meta(path: str) -> tuple[str, str, str]:
    from pydicom.filereader import read_file_meta_info

    meta = read_file_meta_info(path)
    return (
        str(meta.get("MediaStorageSOPClassUID", "")),
        str(meta.get("MediaStorageSOPInstanceUID", "")),
        str(meta.get("TransferSyntaxUID", "")),
    )


FUNCTIONS: dict[str, Callable[[str], tuple[str, str, str]]] = {
    "batchstore": _batchstore,
    "dcmread": _dcmread,
    "meta": _meta,
}


def _accepted(paths: list[str]) -> tuple[list[str], dict[str, int]]:
    """The paths every reader reads without an error, and how many each one refused."""
    refused = dict.fromkeys(READERS, 0)
    ok = []
    for path in paths:
        good = True
        for name in READERS:
            try:
                FUNCTIONS[name](path)
            except Exception:
                refused[name] += 1
                good = False
        if good:
            ok.append(path)
    return ok, refused


def time_readers(paths: list[str], rounds: int, min_calls: int = 2000) -> dict[str, Any]:
    """Median microseconds per file of every reader over ``rounds`` rotating rounds (after one warm-up).

    A round reads the files as many times as it takes to make ``min_calls`` calls, so that a small corpus
    is not timed over a few milliseconds that another process's time slice can double.
    """
    for name in READERS:  # warm-up: page cache, imports, pydicom's dictionaries
        for path in paths:
            FUNCTIONS[name](path)
    passes = max(1, -(-min_calls // len(paths)))
    samples: dict[str, list[float]] = {name: [] for name in READERS}
    for r in range(rounds):
        order = READERS[r % len(READERS) :] + READERS[: r % len(READERS)]
        for name in order:
            fn = FUNCTIONS[name]
            start = time.perf_counter()
            for _ in range(passes):
                for path in paths:
                    fn(path)
            samples[name].append((time.perf_counter() - start) / (passes * len(paths)) * 1e6)
    return {
        name: {"us_per_file": round(statistics.median(v), 1), "rounds_us": [round(x, 1) for x in v]}
        for name, v in samples.items()
    }


def _corpus_paths(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def _testdata_paths() -> list[str]:
    """pydicom's test files that ship with the package: the local part of ``get_testdata_files()``.

    ``get_testdata_files()`` itself also fetches the external test files from GitHub (about 80) when the
    network allows; a benchmark must not download, and must time the same files on every machine.
    """
    from pydicom.data.data_manager import DATA_ROOT

    base = Path(DATA_ROOT) / "test_files"
    return sorted(str(p) for p in base.glob("**/*") if p.is_file() and p.suffix != ".py")


def run(work: Path, quick: bool = False, rounds: int = 7) -> dict[str, Any]:
    rounds = 3 if quick else rounds
    rows = []
    sets: list[tuple[str, list[str], str]] = []
    for name, spec in CORPORA.items():
        count = max(20, spec["count"] // 10) if quick else spec["count"]
        corpus = make_corpus(work, f"parser-{name}", count, spec["size"], seed=13)
        size = "1 KB" if spec["size"] == 1024 else f"{spec['size'] // 1024} KB"
        sets.append((name, _corpus_paths(corpus), f"generated CT, {size}"))
    sets.append(("pydicom", _testdata_paths(), "pydicom test files"))
    for name, paths, label in sets:
        t0 = time.monotonic()
        usable, refused = _accepted(paths)
        if not usable:
            raise RuntimeError(f"no file of {label} is read by all three readers")
        timings = time_readers(usable, rounds, 500 if quick else 2000)
        base = timings["batchstore"]["us_per_file"]
        rows.append(
            {
                "corpus": name,
                "label": label,
                "files": len(paths),
                "timed_files": len(usable),
                "refused": refused,
                "timings": timings,
                "ratio_dcmread": round(timings["dcmread"]["us_per_file"] / base, 2),
                "ratio_meta": round(timings["meta"]["us_per_file"] / base, 2),
            }
        )
        print(f"  parser/{name}: done in {time.monotonic() - t0:.0f} s", flush=True)
    text = table(rows)
    text += f"\n(median of {rounds} rotating rounds; us per file, one process, warm page cache)"
    print(f"parser: batchstore's read_instance vs pydicom\n{text}", flush=True)
    return {
        "summary": summary(rows),
        "details": {"rounds": rounds, "rows": rows},
        "table": text,
    }


def table(rows: list[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        t = r["timings"]
        cells.append(
            [
                r["label"],
                f"{r['timed_files']}/{r['files']}",
                f"{t['batchstore']['us_per_file']:.1f}",
                f"{t['dcmread']['us_per_file']:.1f}",
                f"{t['meta']['us_per_file']:.1f}",
                f"{r['ratio_dcmread']:.2f}x",
                f"{r['ratio_meta']:.2f}x",
            ]
        )
    return format_table(
        ["corpus", "timed", "batchstore us", "dcmread us", "meta-only us", "dcmread/bs", "meta/bs"], cells
    )


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        t = r["timings"]
        out.append(
            summary_row(
                f"scan parser vs pydicom dcmread ({r['label']})",
                files=r["timed_files"],
                ratio=r["ratio_dcmread"],
                result=f"{t['batchstore']['us_per_file']:.0f} vs {t['dcmread']['us_per_file']:.0f} us/file",
                target="-",
                met=None,
                note=(
                    f"read_file_meta_info: {t['meta']['us_per_file']:.0f} us/file ({r['ratio_meta']:.2f}x)"
                    if r["corpus"] == "1k"
                    else ""
                ),
            )
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the generated files, 3 rounds")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per corpus (median)")
    parser.add_argument("--work", help="work directory (kept; default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS / "parser.json"))
    args = parser.parse_args()
    with work_dir(args.work) as work:
        result = run(work, args.quick, args.rounds)
    write_json(Path(args.json), {"benchmark": "parser", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
