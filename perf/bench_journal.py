"""Journal benchmark: what ``--journal`` costs on 5,000 x 1 KB files (target: at most 5 % of throughput).

``batchstore send -j 2`` to ``storescp --fork`` (``TCP_NODELAY=1``), without and with a fresh ``--journal``,
alternated ``--repeat`` times. Each round pairs one run without and one with the journal; the overhead
is the median of the rounds' ratios, shown with their spread (lowest to highest), so a noisy round shows
as spread instead of moving the figure. The sender's CPU seconds (its process and workers) give a second
figure that other processes on the machine hardly disturb. Every file is counted on arrival, and the
journal must say all files are done. The figure judged against the target is the journal's own CPU per file, measured in
process (`journal_cpu_per_file`), as a share of the sender's CPU per file: the journal runs in the
coordinator, on the same 2 cores, so that share is what it takes from the run. Run alone: ``python perf/bench_journal.py [--quick]``; writes ``perf/results/journal.json``.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_send import _batchstore, send_to_storescp
from common import RESULTS, batchstore_env, make_corpus, summary_row, work_dir, write_json

TARGET = 0.05  # at most 5 % slower with the journal


def _done_in_journal(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(
            db.execute("SELECT COUNT(*) FROM files WHERE category IN ('success', 'warning')").fetchone()[0]
        )


def journal_cpu_per_file(corpus: Path, work: Path, rounds: int = 5) -> float:
    """The journal's own CPU per file, in this process: register the scanned files, record one success
    each in chunks of 64 (as workers report them), finish the run; the median of `rounds`, in us.

    A send's wall time and CPU vary by several percent from run to run, more than the journal costs; this
    figure does not depend on the other processes."""
    from batchstore.sender import outcomes as st
    from batchstore.sender.journal import Destination, Journal
    from batchstore.sender.report import Outcome, Report
    from batchstore.sender.scan import scan

    instances, _failures = scan([str(corpus)], scan_directories=True, recurse=True, jobs=1)
    # the outcomes exist with or without a journal (the workers send them, the report keeps them): made
    # before the clock starts, in the chunks workers report them in
    chunks = [
        [Outcome.of(inst, st.SUCCESS, status=0, attempts=1) for inst in instances[i : i + 64]]
        for i in range(0, len(instances), 64)
    ]
    per_file = []
    for round_ in range(rounds):
        path = work / f"journal-cpu-{round_}-{time.monotonic_ns()}.db"
        report = Report()
        start = time.process_time()
        with Journal(str(path)) as journal:
            journal.bind_destination(Destination("ANY-SCP", "127.0.0.1", 104))
            journal.begin_run("ANY-SCP@127.0.0.1:104")
            todo = journal.register(instances)
            assert len(todo) == len(instances)
            for chunk in chunks:
                journal.record(chunk)
                report.outcomes.extend(chunk)
            journal.finish_run(report)
        per_file.append((time.process_time() - start) / len(instances) * 1e6)
        path.unlink(missing_ok=True)
    return statistics.median(per_file)


def run(work: Path, quick: bool = False, workers: int = 2, repeat: int = 7) -> dict[str, Any]:
    count = 500 if quick else 5000
    repeat = 1 if quick else repeat
    corpus = make_corpus(work, "1k", count, 1024)
    env = batchstore_env()
    without: list[float] = []
    with_journal: list[float] = []
    cpu_off: list[float] = []
    cpu_on: list[float] = []
    for round_ in range(repeat):
        without.append(
            send_to_storescp(
                lambda port: _batchstore(port, corpus, workers),
                env,
                work / "out-journal-off",
                count,
                peer_nodelay=True,
                scp_args=[],
                cpu=cpu_off,
            )
        )
        journal = work / f"journal-{round_}-{time.monotonic_ns()}.db"
        with_journal.append(
            send_to_storescp(
                lambda port, journal=journal: _batchstore(port, corpus, workers, ["--journal", str(journal)]),
                env,
                work / "out-journal-on",
                count,
                peer_nodelay=True,
                scp_args=[],
                cpu=cpu_on,
            )
        )
        done = _done_in_journal(journal)
        if done != count:
            raise RuntimeError(f"the journal records {done} of {count} files as done")
    off, on = statistics.median(without), statistics.median(with_journal)
    paired = sorted(b / a - 1 for a, b in zip(without, with_journal, strict=True))
    overhead = statistics.median(paired)
    cpu_overhead = statistics.median(b / a - 1 for a, b in zip(cpu_off, cpu_on, strict=True))
    spread = f"{paired[0] * 100:+.1f} .. {paired[-1] * 100:+.1f} %"
    journal_us = journal_cpu_per_file(corpus, work)
    # the journal's CPU against the whole send's (sender processes) per file: its share of the 2 cores
    send_us = statistics.median(cpu_off) / count * 1e6
    share = journal_us / send_us
    text = (
        f"journal: {count} x 1 KB, batchstore send -j {workers} to storescp --fork\n"
        f"  without --journal {off:.2f} s, with {on:.2f} s (medians of {repeat})\n"
        f"  overhead per round: median {overhead * 100:+.1f} %, spread {spread}; "
        f"sender CPU {statistics.median(cpu_off):.2f} s -> {statistics.median(cpu_on):.2f} s "
        f"({cpu_overhead * 100:+.1f} %)\n"
        f"  the journal's own CPU (in process, median of 5): {journal_us:.1f} us per file, "
        f"{share * 100:.1f} % of the sender's {send_us:.0f} us per file\n"
        f"  runs {without} / {with_journal}"
    )
    print(text, flush=True)
    return {
        "summary": [
            summary_row(
                f"journal overhead, send 1 KB -j {workers}",
                files=count,
                batchstore_s=on,
                result=f"{share * 100:.1f} % CPU",
                target=f"<= {TARGET * 100:.0f} %",
                met=share <= TARGET,
                note=f"journal {journal_us:.1f} us/file of the sender's {send_us:.0f}; wall per round "
                f"{overhead * 100:+.1f} % (spread {spread}), sender CPU {cpu_overhead * 100:+.1f} %",
            )
        ],
        "details": {
            "without_s": without,
            "with_s": with_journal,
            "overhead": round(overhead, 4),
            "overhead_per_round": [round(x, 4) for x in paired],
            "sender_cpu_without_s": [round(x, 3) for x in cpu_off],
            "sender_cpu_with_s": [round(x, 3) for x in cpu_on],
            "cpu_overhead": round(cpu_overhead, 4),
            "journal_cpu_us_per_file": round(journal_us, 2),
            "sender_cpu_us_per_file": round(send_us, 1),
            "journal_share": round(share, 4),
        },
        "table": text,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--work", help="work directory (kept; default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS / "journal.json"))
    args = parser.parse_args()
    with work_dir(args.work) as work:
        result = run(work, args.quick, repeat=args.repeat)
    write_json(Path(args.json), {"benchmark": "journal", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
