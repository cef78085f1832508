"""Run a load test: check the peer, prepare the data sets once, then run each concurrency level.

A level runs one process per association (forked, as ``send`` does), so every association has a core's
worth of Python to itself and no association's latency includes waiting for another's interpreter lock;
the processes sleep in ``recv`` between requests. The parent associates once first (the probe): that
tells which transfer syntaxes the peer accepts, so every data set is encoded before any clock starts,
and a peer that is down or refuses us is a clear error before any process is started.
"""

from __future__ import annotations

import ipaddress
import logging
import multiprocessing
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Protocol

from ..net.errors import NetError
from ..sender.plan import PlanOptions, make_plan
from ..sender.scan import scan
from ..sender.scu import AssociationOptions, StoreSCU
from .figures import Level, LoadReport, merge_level
from .templates import FreshUids, PrepareError, Template, prepare
from .worker import LoadWorker, Schedule, WorkerResult, failure_kind, worker_main

log = logging.getLogger("batchstore.load")

#: Seconds per level when neither a duration nor a count is given.
DEFAULT_DURATION = 10.0
#: With --count and no --duration, a level still stops after this many seconds.
DEFAULT_TIME_BOUND = 600.0
#: After a level's end, associations get this long to finish the request in flight, then are stopped.
GRACE = 10.0


class LoadError(Exception):
    """The load test cannot start (or go on); the message says why."""


class RemotePeerRefused(LoadError):
    """The peer is not on this machine and the user did not say this is a load test."""


class NoInput(LoadError):
    """No file to send was found."""


class PeerUnavailable(LoadError):
    """The probe association failed: the peer is down, refuses us, or accepts none of the contexts."""


@dataclass(frozen=True)
class LoadOptions:
    """Every setting of ``batchstore load`` that is not an address (see `batchstore.api.load`)."""

    #: storescu's network options (-aet, -aec, -pdu, -to, -ts, -ta, -td, user identity, TLS); its host and
    #: port are the peer given to `load`
    association: AssociationOptions = field(default_factory=lambda: AssociationOptions("", 0))
    scan_directories: bool = False
    recurse: bool = False
    pattern: str | None = None
    read_mode: str = "auto"
    plan: PlanOptions = field(default_factory=PlanOptions)
    concurrency: tuple[int, ...] = (1,)  # one level per entry
    duration: float | None = None  # seconds measured per level (DEFAULT_DURATION without count)
    count: int | None = None  # measured C-STOREs per level
    warmup: float = 0.0  # seconds per level before measuring
    rate: float | None = None  # open loop: requests per second, spread over the associations
    fresh_uids: bool = True  # storescu's +II semantics per C-STORE
    series_after: int = 100  # +IR
    study_after: int = 50  # +IS
    patient_after: int = 25  # +IP
    stores_per_association: int = 0  # release and associate again after this many (0: never)
    allow_remote: bool = False  # --i-know-this-is-a-load-test
    time_bound: float = DEFAULT_TIME_BOUND


class LoadProgress(Protocol):
    """What a caller sees while a level runs (the CLI draws a tqdm line per level)."""

    def start_level(self, concurrency: int, seconds: float | None, count: int | None) -> None: ...

    def update(self, elapsed: float, completed: int, failed: int) -> None:
        """About four times a second: seconds since the warm-up ended (negative during it) and the
        requests answered and failed since then (during it: in it)."""
        ...

    def end_level(self, level: Level) -> None: ...


def is_loopback(host: str, family: int = socket.AF_UNSPEC) -> bool:
    """True when every address `host` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    try:
        return bool(infos) and all(
            ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos
        )
    except ValueError:
        return False


def check_settings(host: str, options: LoadOptions) -> None:
    """Refuse what must not run: a remote peer without the user's word, a level without an end."""
    if not options.allow_remote and not is_loopback(host, options.association.family):
        raise RemotePeerRefused(
            f"{host} is not a loopback address: a load test can take a PACS down; "
            "add --i-know-this-is-a-load-test to run it against another machine"
        )
    if not options.concurrency or min(options.concurrency) < 1:
        raise LoadError("--concurrency takes numbers of associations of at least 1")
    if options.rate is not None and options.rate <= 0:
        raise LoadError("--rate must be above 0 requests per second")
    if options.duration is not None and options.duration <= 0:
        raise LoadError("--duration must be above 0 seconds")
    if options.count is not None and options.count < 1:
        raise LoadError("--count must be at least 1")
    if options.warmup < 0:
        raise LoadError("--warmup cannot be negative")


def load(
    paths: Sequence[str],
    host: str,
    port: int,
    options: LoadOptions,
    progress: LoadProgress | None = None,
) -> LoadReport:
    """Run the load test; see `batchstore.api.load`."""
    check_settings(host, options)
    instances, failures = scan(
        list(paths),
        scan_directories=options.scan_directories,
        recurse=options.recurse,
        pattern=options.pattern,
        read_mode=options.read_mode,
    )
    for failure in failures:
        log.warning("%s: %s (not used)", failure.path, failure.reason)
    if not instances:
        raise NoInput("no DICOM file to send was found")
    plan = make_plan(instances, options.plan)
    if plan.unplannable:
        inst, reason = plan.unplannable[0]
        raise LoadError(f"{inst.path}: {reason}")
    if len(plan.context_groups) != 1:
        raise LoadError(
            f"the files need {sum(len(g.contexts) for g in plan.context_groups)} presentation contexts, more "
            "than one association carries (128): load-test with fewer SOP classes and transfer syntaxes"
        )
    group = plan.context_groups[0]
    association = options.association._replace(host=host, port=port)
    accepted = _probe(association, group)
    read_only = options.read_mode == "dataset"
    try:
        templates = prepare(instances, group, accepted, options.fresh_uids, read_only)
    except PrepareError as exc:
        raise LoadError(str(exc)) from None
    report = LoadReport(
        peer=host,
        port=port,
        files=len(templates),
        file_bytes=sum(t.size for t in templates),
        fresh_uids=options.fresh_uids,
        settings=_settings(options),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    for concurrency in options.concurrency:
        level, interrupted = _run_level(
            concurrency, association, group, templates, accepted, options, progress
        )
        report.levels.append(level)
        if progress is not None:
            progress.end_level(level)
        if interrupted:
            report.interrupted = True
            break
    return report


def _settings(options: LoadOptions) -> dict[str, Any]:
    return {
        "concurrency": list(options.concurrency),
        "duration_s": options.duration if options.duration or options.count else DEFAULT_DURATION,
        "count": options.count,
        "warmup_s": options.warmup,
        "rate_per_s": options.rate,
        "mode": "open" if options.rate else "closed",
        "fresh_uids": options.fresh_uids,
        "series_after": options.series_after,
        "study_after": options.study_after,
        "patient_after": options.patient_after,
        "stores_per_association": options.stores_per_association,
        "calling_ae": options.association.calling_ae,
        "called_ae": options.association.called_ae,
        "max_pdu": options.association.max_pdu,
        "tls": options.association.tls is not None,
    }


def _probe(association: AssociationOptions, group: Any) -> dict[int, str]:
    """Associate once: the accepted contexts, or a `LoadError` saying why the peer cannot be load-tested."""
    contexts = tuple(
        (pc.context_id, pc.abstract_syntax, tuple(pc.transfer_syntaxes)) for pc in group.contexts
    )
    scu = StoreSCU(association, contexts)
    try:
        accept = scu.open()
    except (OSError, NetError, EOFError) as exc:
        raise PeerUnavailable(
            f"cannot associate with {association.host}:{association.port}: {failure_kind(exc)}: {exc}"
        ) from None
    scu.release()
    accepted = accept.accepted()
    if not accepted:
        raise PeerUnavailable("the peer accepted none of the proposed presentation contexts")
    return accepted


def _schedules(concurrency: int, options: LoadOptions, start: float) -> list[Schedule]:
    measure_from = start + options.warmup
    if options.duration:
        end = measure_from + options.duration
    elif options.count:
        end = measure_from + options.time_bound
    else:
        end = measure_from + DEFAULT_DURATION
    interval = concurrency / options.rate if options.rate else 0.0
    schedules = []
    for slot in range(concurrency):
        quota = 0
        slot_end = end
        if options.count:
            quota = options.count // concurrency + (1 if slot < options.count % concurrency else 0)
            if quota == 0:
                slot_end = start  # more associations than requests: this one associates and sends nothing
        schedules.append(
            Schedule(
                slot=slot,
                start=start,
                measure_from=measure_from,
                end=slot_end,
                quota=quota,
                interval=interval,
                first_due=start + (slot / options.rate if options.rate else 0.0),
                stores_per_association=options.stores_per_association,
            )
        )
    return schedules


def _run_level(
    concurrency: int,
    association: AssociationOptions,
    group: Any,
    templates: list[Template],
    accepted: dict[int, str],
    options: LoadOptions,
    progress: LoadProgress | None,
) -> tuple[Level, bool]:
    """Run one level; return its figures and whether it was interrupted."""
    import psutil

    ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    live = ctx.RawArray("q", 2 * concurrency + 1)
    conns: list[Any] = []
    procs: list[Any] = []
    errors: list[str] = []
    interrupted = False
    results: dict[int, WorkerResult] = {}
    measure_from = end = time.perf_counter()
    parent_cpu = machine_cpu = 0.0
    try:
        for _slot in range(concurrency):
            fresh = (
                FreshUids(options.series_after, options.study_after, options.patient_after)
                if options.fresh_uids
                else None
            )
            worker = LoadWorker(
                association, group, templates, accepted, fresh, options.read_mode == "dataset"
            )
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child_end, worker, live), daemon=True)  # type: ignore[attr-defined]
            proc.start()
            child_end.close()
            conns.append(parent_end)
            procs.append(proc)
        setup_wait = (association.connect_timeout or 30.0) + (association.acse_timeout or 30.0) + 5.0
        for slot, conn in enumerate(conns):
            if not conn.poll(setup_wait):
                errors.append(f"association {slot + 1}: no answer from its process within {setup_wait:.0f} s")
                continue
            _, error = conn.recv()
            if error:
                errors.append(f"association {slot + 1} at start: {error}")
        start = time.perf_counter() + 0.02
        schedules = _schedules(concurrency, options, start)
        for conn, schedule in zip(conns, schedules, strict=True):
            conn.send(("go", schedule))
        measure_from, end = schedules[0].measure_from, max(s.end for s in schedules)
        if progress is not None:
            progress.start_level(
                concurrency, options.duration or (None if options.count else DEFAULT_DURATION), options.count
            )
        cpu_reset = False
        parent_cpu0 = time.process_time()
        pending = {id(c): (slot, c) for slot, c in enumerate(conns)}
        stop_at = end + GRACE
        warm = (0, 0, measure_from)  # live counts at the last look during the warm-up, and its time
        while pending:
            now = time.perf_counter()
            if not cpu_reset and now >= measure_from:
                psutil.cpu_percent(None)  # the machine's CPU from here to the level's end
                parent_cpu0 = time.process_time()
                cpu_reset = True
            if now >= stop_at:
                live[2 * concurrency] = 1
                if now >= stop_at + 5.0:
                    break
            ready = wait([c for _, c in pending.values()], timeout=0.25)
            for ready_conn in ready:
                slot, conn = pending.pop(id(ready_conn))
                try:
                    _kind, result = conn.recv()
                except (EOFError, OSError):
                    errors.append(f"association {slot + 1}: its process ended without figures")
                    continue
                results[slot] = result
            if progress is not None:
                # live counts include the warm-up: during it, and after it from where it left them
                completed = sum(live[2 * i] for i in range(concurrency))
                failed = sum(live[2 * i + 1] for i in range(concurrency))
                now = time.perf_counter()
                if now < measure_from:
                    warm = (completed, failed, max(now, measure_from - 1e-3))
                    progress.update(now - measure_from, completed, failed)
                else:  # counted from the last look during the warm-up: a few of its requests, timed
                    progress.update(now - warm[2], completed - warm[0], failed - warm[1])
        if cpu_reset:
            machine_cpu = psutil.cpu_percent(None)
        parent_cpu = time.process_time() - parent_cpu0
        for slot, _conn in pending.values():
            errors.append(
                f"association {slot + 1}: still busy {GRACE + 5:.0f} s after the level's end; stopped"
            )
    except KeyboardInterrupt:
        interrupted = True
        live[2 * concurrency] = 1
        end = min(end, time.perf_counter())
        for slot, conn in enumerate(conns):
            if slot not in results and conn.poll(5.0):
                try:
                    kind, result = conn.recv()
                    if kind == "done":
                        results[slot] = result
                except (EOFError, OSError):
                    pass
    finally:
        for proc in procs:
            proc.join(timeout=2.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
        for conn in conns:
            conn.close()
    level = merge_level(
        concurrency,
        options.rate,
        [results[s] for s in sorted(results)],
        measure_from,
        end,
        machine_cpu,
        parent_cpu,
        errors,
        quota=bool(options.count) and not options.duration,
    )
    return level, interrupted
