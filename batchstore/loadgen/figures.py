"""A load test's figures: per concurrency level, merged from its associations, kept as HDR histograms.

Latencies are recorded in microseconds into `hdrh` (HdrHistogram_py) histograms with 3 significant digits
from 1 µs to one hour, the format wrk2 and the HdrHistogram family share: the JSON report carries each
level's histogram in HdrHistogram's compressed base64 encoding, which any HdrHistogram implementation
decodes. Percentiles are read from the histogram, never averaged over associations.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..sender.outcomes import SUCCESS, WARNING, classify_status
from .worker import WorkerResult

#: Percentiles reported for latency, in order.
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3
#: A worker process busier than this share of its wall time was limited by its own CPU.
BUSY_WORKER = 0.9
#: The machine's CPU above this share during a level: the peer and the generator compete for it.
BUSY_MACHINE = 0.95

EXIT_OK = 0
EXIT_NO_INPUT = 3
EXIT_SOME_FAILED = 5
EXIT_NOTHING = 9


def new_histogram() -> Any:
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, HIGHEST_US, SIGNIFICANT_DIGITS)


def histogram_of(values: Any) -> Any:
    """An HDR histogram of integer microsecond `values` (a numpy array), recorded per distinct value."""
    import numpy as np

    hist = new_histogram()
    if len(values):
        distinct, counts = np.unique(np.minimum(values, HIGHEST_US), return_counts=True)
        for value, count in zip(distinct.tolist(), counts.tolist(), strict=True):
            hist.record_value(max(1, value), count)
    return hist


def latency_summary(hist: Any) -> dict[str, float]:
    """p50 ... p99.9, max and mean of a microsecond histogram, in milliseconds (0 when empty)."""
    if hist.get_total_count() == 0:
        return {**{_pname(p): 0.0 for p in PERCENTILES}, "max": 0.0, "mean": 0.0}
    out = {_pname(p): hist.get_value_at_percentile(p) / 1000 for p in PERCENTILES}
    out["max"] = hist.get_max_value() / 1000
    out["mean"] = round(hist.get_mean_value() / 1000, 3)
    return out


def _pname(p: float) -> str:
    return f"p{p:g}"


@dataclass
class Generator:
    """The load generator's own cost during a level: was it, rather than the peer, the limit?"""

    processes: int
    cpu_percent: float  # all its processes, in % of one core
    cpu_per_request_us: float
    busiest_worker_percent: float  # the busiest association's process, in % of one core
    machine_cpu_percent: float  # the whole machine (psutil), in % of all its cores
    cores: int
    rss_bytes: int  # all its processes at the end of the level
    bound: bool  # a worker process was busy nearly all the time, or the machine was saturated
    note: str = ""


@dataclass
class Level:
    """The figures of one concurrency level."""

    concurrency: int
    mode: str  # "closed" or "open"
    requested_rate: float | None
    elapsed_s: float  # from the end of the warm-up to the last response
    completed: int  # measured C-STOREs answered (any status)
    failed: int  # measured requests without a response (see failures)
    warmup: int
    bytes: int
    stores_per_s: float
    mb_per_s: float
    latency_ms: dict[str, float]
    setup_ms: dict[str, float]
    setups: int
    statuses: dict[str, int]
    failures: dict[str, int]
    setup_failures: dict[str, int]
    late_at_end: int
    generator: Generator
    series: list[dict[str, float]] = field(default_factory=list)
    histogram: str = ""  # HdrHistogram compressed base64 of the measured latencies (µs)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        """Responses with a success or warning status."""
        return sum(n for s, n in self.statuses.items() if classify_status(int(s, 16)) in (SUCCESS, WARNING))


def merge_level(
    concurrency: int,
    rate: float | None,
    results: Sequence[WorkerResult],
    measure_from: float,
    end: float,
    machine_cpu_percent: float,
    parent_cpu_s: float,
    errors: Sequence[str] = (),
    quota: bool = False,
) -> Level:
    """One `Level` from its associations' results."""
    import numpy as np

    lat = (
        np.concatenate([np.frombuffer(r.latency_us, dtype=np.uint64) for r in results])
        if results
        else np.zeros(0, np.uint64)
    )
    due = (
        np.concatenate([np.frombuffer(r.due_ms, dtype=np.uint32) for r in results])
        if results
        else np.zeros(0, np.uint32)
    )
    fail_ms = (
        np.concatenate([np.frombuffer(r.failure_ms, dtype=np.uint32) for r in results])
        if results
        else np.zeros(0, np.uint32)
    )
    hist = histogram_of(lat)
    setup = histogram_of(np.array([u for r in results for u in r.setup_us], dtype=np.uint64))
    last_done = max((r.last_done for r in results if r.last_done), default=0.0)
    # with a duration the window is the duration (longer if a response came after its end); with --count,
    # it ends with the last response
    elapsed = (last_done if quota else max(last_done, end)) - measure_from
    elapsed = max(elapsed, 1e-9)
    completed = int(len(lat))
    nbytes = sum(r.bytes_sent for r in results)
    statuses: dict[str, int] = {}
    failures: dict[str, int] = {}
    setup_failures: dict[str, int] = {}
    for r in results:
        for status, n in r.statuses.items():
            key = f"0x{status:04X}"
            statuses[key] = statuses.get(key, 0) + n
        for kind, n in r.failures.items():
            failures[kind] = failures.get(kind, 0) + n
        for kind, n in r.setup_failures.items():
            setup_failures[kind] = setup_failures.get(kind, 0) + n
    cpu = sum(r.cpu_s for r in results) + parent_cpu_s
    busiest = max((r.cpu_s for r in results), default=0.0) / elapsed
    cores = os.cpu_count() or 1
    bound = busiest >= BUSY_WORKER or machine_cpu_percent >= BUSY_MACHINE * 100
    note = ""
    if busiest >= BUSY_WORKER:
        note = (
            f"an association's process was busy {busiest:.0%} of the time: the load generator, not only the "
            "peer, limited this level"
        )
    elif machine_cpu_percent >= BUSY_MACHINE * 100:
        note = (
            f"the machine's CPU was {machine_cpu_percent:.0f}% busy (generator {cpu / elapsed / cores:.0%} of it): "
            "peer and generator competed for it"
        )
    generator = Generator(
        processes=len(results) + 1,
        cpu_percent=round(cpu / elapsed * 100, 1),
        cpu_per_request_us=round(cpu / completed * 1e6, 1) if completed else 0.0,
        busiest_worker_percent=round(busiest * 100, 1),
        machine_cpu_percent=round(machine_cpu_percent, 1),
        cores=cores,
        rss_bytes=sum(r.rss for r in results),
        bound=bound,
        note=note,
    )
    return Level(
        concurrency=concurrency,
        mode="open" if rate else "closed",
        requested_rate=rate,
        elapsed_s=round(elapsed, 4),
        completed=completed,
        failed=sum(failures.values()),
        warmup=sum(r.warmup for r in results),
        bytes=nbytes,
        stores_per_s=round(completed / elapsed, 2),
        mb_per_s=round(nbytes / elapsed / 1e6, 3),
        latency_ms=latency_summary(hist),
        setup_ms=latency_summary(setup),
        setups=int(setup.get_total_count()),
        statuses=dict(sorted(statuses.items())),
        failures=dict(sorted(failures.items())),
        setup_failures=dict(sorted(setup_failures.items())),
        late_at_end=sum(r.late_at_end for r in results),
        generator=generator,
        series=_series(lat, due, fail_ms, results, elapsed),
        histogram=hist.encode().decode("ascii") if completed else "",
        errors=list(errors),
    )


def _series(
    lat: Any, due: Any, fail_ms: Any, results: Sequence[WorkerResult], elapsed: float
) -> list[dict[str, float]]:
    """Per second of the measured window (by due time): C-STOREs/s, MB/s, p50/p99/max latency, failures."""
    import numpy as np

    if not len(lat) and not len(fail_ms):
        return []
    sizes = (
        np.concatenate([np.frombuffer(r.sizes, dtype=np.uint32) for r in results]) if results else np.zeros(0)
    )
    # whole seconds of the window; a last partial second shorter than 0.1 s (the responses to requests due
    # just before the end) is counted in the one before it
    seconds = max(1, int(elapsed) + (1 if elapsed - int(elapsed) >= 0.1 else 0))
    second = np.minimum(due // 1000, seconds - 1) if len(due) else due
    failed_second = np.minimum(fail_ms // 1000, seconds - 1) if len(fail_ms) else fail_ms
    out: list[dict[str, float]] = []
    order = np.argsort(second, kind="stable")
    second_sorted = second[order]
    lat_sorted = lat[order]
    size_sorted = sizes[order] if len(sizes) == len(lat) else np.zeros(len(lat))
    bounds = np.searchsorted(second_sorted, np.arange(seconds + 1))
    for s in range(seconds):
        a, b = int(bounds[s]), int(bounds[s + 1])
        window = max(min(1.0, elapsed - s), 0.1) if s == seconds - 1 else 1.0
        hist = histogram_of(lat_sorted[a:b])
        summary = latency_summary(hist)
        out.append(
            {
                "t": s,
                "stores_per_s": round((b - a) / window, 2),
                "mb_per_s": round(float(size_sorted[a:b].sum()) / window / 1e6, 3),
                "p50_ms": summary["p50"],
                "p99_ms": summary["p99"],
                "max_ms": summary["max"],
                "failed": int((failed_second == s).sum()) if len(failed_second) else 0,
            }
        )
    return out


@dataclass
class LoadReport:
    """A load test: its settings and one `Level` per concurrency level, in the order they ran."""

    peer: str
    port: int
    files: int
    file_bytes: int
    fresh_uids: bool
    settings: dict[str, Any]
    levels: list[Level] = field(default_factory=list)
    started_at: str = ""
    interrupted: bool = False

    def exit_code(self) -> int:
        """0: every measured request was answered with success or warning; 5: some were not; 9: none."""
        if not self.levels:
            return EXIT_NOTHING
        total = sum(lv.completed + lv.failed for lv in self.levels)
        ok = sum(lv.ok for lv in self.levels)
        if total and ok == total:
            return EXIT_OK
        return EXIT_SOME_FAILED if ok else EXIT_NOTHING

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str) -> None:
        """Every figure, with each level's raw histogram; written to a temporary file, then renamed."""
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.as_dict(), fh, indent=1)
            fh.write("\n")
        os.replace(tmp, path)

    def table(self) -> str:
        """The end table: one row per level."""
        head = (
            f"{'assoc':>5} {'rate':>7} {'C-STORE/s':>10} {'MB/s':>8} {'p50':>8} {'p90':>8} {'p95':>8} "
            f"{'p99':>8} {'p99.9':>8} {'max':>8} {'setup':>7} {'ok':>8} {'failed':>6} {'gen CPU':>8}"
        )
        lines = [
            head,
            "latency in ms; setup: association setup p50 (ms); gen CPU: load generator, % of one core",
        ]
        for lv in self.levels:
            lat = lv.latency_ms
            rate = f"{lv.requested_rate:g}" if lv.requested_rate else "closed"
            flag = " *" if lv.generator.bound else ""
            lines.append(
                f"{lv.concurrency:>5} {rate:>7} {lv.stores_per_s:>10.1f} {lv.mb_per_s:>8.2f} {lat['p50']:>8.2f} "
                f"{lat['p90']:>8.2f} {lat['p95']:>8.2f} {lat['p99']:>8.2f} {lat['p99.9']:>8.2f} "
                f"{lat['max']:>8.2f} {lv.setup_ms['p50']:>7.2f} {lv.ok:>8} {lv.failed:>6} "
                f"{lv.generator.cpu_percent:>7.0f}%{flag}"
            )
        for lv in self.levels:
            bad = {s: n for s, n in lv.statuses.items() if s != "0x0000"}
            for what, counts in (
                ("statuses", bad),
                ("failures", lv.failures),
                ("setup failures", lv.setup_failures),
            ):
                if counts:
                    text = ", ".join(f"{k}: {v}" for k, v in counts.items())
                    lines.append(f"  {lv.concurrency} associations, {what}: {text}")
            if lv.generator.note:
                lines.append(f"  * {lv.concurrency} associations: {lv.generator.note}")
            if lv.late_at_end:
                lines.append(
                    f"  {lv.concurrency} associations: {lv.late_at_end} requests due before the end never went out"
                )
            for error in lv.errors:
                lines.append(f"  {lv.concurrency} associations: {error}")
        return "\n".join(lines)
