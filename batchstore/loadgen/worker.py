"""One association's load loop, in a process of its own (as ``send`` runs one association per process).

Closed loop: the next C-STORE-RQ goes out as soon as the previous response arrived; latency is from the
request to its response. Open loop (``rate``): request `k` is due at ``first + k / rate``; the loop sleeps
until it is due, or sends at once when it is late, and latency is measured from the time it was *due*,
so a stalled peer cannot hide its stall by holding back the requests that would have waited on it (no
coordinated omission, as wrk2 measures).

The timed path is a patch of the prepared payload (`templates.FreshUids`), one gather write, one read
and two ``perf_counter`` calls; figures are appended to flat arrays and turned into histograms after the
clock stops (`figures.histograms`).
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..net.acse import AssociationRejected
from ..net.errors import NetError, PeerAborted, ProtocolError
from ..sender.plan import ContextGroup
from ..sender.scu import AssociationOptions, StoreSCU
from .templates import FreshUids, PrepareError, Template, prepare

#: Pause after a failed association attempt before the next one, so a refusing peer is not hammered.
RECONNECT_PAUSE = 0.05


@dataclass(frozen=True)
class Schedule:
    """What one association does during one level (times are ``time.perf_counter`` values)."""

    slot: int  # the association's index in the level
    start: float  # the first request may go out at this time (warm-up begins)
    measure_from: float  # requests due before this are warm-up, left out of the figures
    end: float  # no request goes out at or after this time
    quota: int = 0  # with --count: measured requests this association sends, then stops (0: no quota)
    interval: float = 0.0  # open loop: seconds between due times (0: closed loop)
    first_due: float = 0.0  # open loop: when its first request is due
    stores_per_association: int = 0  # release and associate again after this many C-STOREs (0: never)


@dataclass
class WorkerResult:
    """What one association reports after its level; `figures` merges them."""

    slot: int
    #: measured requests: due time (ms after `measure_from`), latency (µs), bytes
    due_ms: array = field(default_factory=lambda: array("I"))
    latency_us: array = field(default_factory=lambda: array("Q"))
    sizes: array = field(default_factory=lambda: array("I"))
    bytes_sent: int = 0
    warmup: int = 0  # requests in the warm-up
    statuses: dict[int, int] = field(default_factory=dict)  # DIMSE status -> measured responses
    failures: dict[str, int] = field(default_factory=dict)  # failure kind -> measured requests
    failure_ms: array = field(default_factory=lambda: array("I"))  # when each measured failure was due
    setup_us: list[int] = field(default_factory=list)  # every association setup that succeeded
    setup_failures: dict[str, int] = field(default_factory=dict)
    last_done: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time while measuring
    rss: int = 0  # resident memory at the end
    max_rss: int = 0
    late_at_end: int = 0  # open loop: requests due before the end that never went out
    error: str = ""


def failure_kind(exc: BaseException) -> str:
    """A short name for what went wrong, the key of the report's failure counts."""
    if isinstance(exc, AssociationRejected):
        return "association rejected (transient)" if exc.transient else "association rejected (permanent)"
    if isinstance(exc, PeerAborted):
        return "aborted by peer"
    if isinstance(exc, ProtocolError):
        return "protocol error"
    if isinstance(exc, NetError):
        return "peer error"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)) or getattr(exc, "errno", None) in (
        errno.ECONNRESET,
        errno.EPIPE,
    ):
        return "connection reset"
    if isinstance(exc, EOFError):
        return "connection closed"
    if isinstance(exc, PermissionError):
        return "user identity refused"
    return type(exc).__name__


def _contexts(group: ContextGroup) -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    return tuple((pc.context_id, pc.abstract_syntax, tuple(pc.transfer_syntaxes)) for pc in group.contexts)


class LoadWorker:
    """One association and its loop; `open_first` before the clock, `run` on it."""

    def __init__(
        self,
        association: AssociationOptions,
        group: ContextGroup,
        templates: Sequence[Template],
        accepted: Mapping[int, str],
        fresh: FreshUids | None,
        read_dataset_only: bool = False,
    ) -> None:
        self.association = association
        self.group = group
        self.contexts = _contexts(group)
        self.templates = list(templates)
        self.accepted = dict(accepted)
        self.fresh = fresh
        self.read_dataset_only = read_dataset_only
        self.scu: StoreSCU | None = None
        self.result = WorkerResult(slot=-1)
        self._measuring = False

    def _open(self) -> StoreSCU:
        scu = StoreSCU(self.association, self.contexts)
        t = time.perf_counter()
        try:
            accept = scu.open()
        except (OSError, NetError, EOFError) as exc:
            kind = failure_kind(exc)
            self.result.setup_failures[kind] = self.result.setup_failures.get(kind, 0) + 1
            raise
        self.result.setup_us.append(max(1, int((time.perf_counter() - t) * 1e6)))
        accepted = accept.accepted()
        if accepted != self.accepted:
            # this association was accepted differently from the probe's: prepare for it (rare)
            self.templates = prepare(
                [t.instance for t in self.templates],
                self.group,
                accepted,
                fresh=self.fresh is not None,
                read_dataset_only=self.read_dataset_only,
            )
            self.accepted = accepted
        return scu

    def open_first(self) -> str:
        """Associate before the clock starts; return an error message, or "" when open."""
        try:
            self.scu = self._open()
        except (OSError, NetError, EOFError, PrepareError) as exc:
            return f"{failure_kind(exc)}: {exc}"
        return ""

    def close(self, release: bool = True) -> None:
        scu, self.scu = self.scu, None
        if scu is not None:
            if release:
                scu.release()
            else:
                scu.close()

    def run(self, plan: Schedule, live: Any = None) -> WorkerResult:
        """Send until `plan.end` (or the quota, or a stop from the parent); return the figures.

        `live`, shared with the parent: ``live[2 * slot]`` and ``live[2 * slot + 1]`` count this
        association's completed and failed requests (the progress line); its last element, set non-zero
        by the parent (Ctrl-C), stops every association after the request in flight.
        """
        res = self.result
        res.slot = plan.slot
        perf = time.perf_counter
        templates = self.templates
        count_templates = len(templates)
        fresh = self.fresh
        due_ms, latency_us, sizes = res.due_ms, res.latency_us, res.sizes
        statuses = res.statuses
        measure_from, end, quota = plan.measure_from, plan.end, plan.quota
        interval = plan.interval
        due = plan.first_due if interval else plan.start
        per_assoc = plan.stores_per_association
        on_assoc = 0
        measured = 0
        n = 0
        live_index = 2 * plan.slot
        cpu0 = time.process_time()
        now = perf()
        if now < plan.start:
            time.sleep(plan.start - now)
        stop_index = len(live) - 1 if live is not None else 0
        while live is None or not live[stop_index]:
            now = perf()
            if interval:
                if due >= end:
                    break
                if now < due:
                    time.sleep(due - now)
                    now = perf()
                ref = due
                due += interval
            else:
                if now >= end:
                    break
                ref = now
            measuring = ref >= measure_from
            if measuring and not self._measuring:
                self._measuring = True
                cpu0 = time.process_time()
            if quota and measuring and measured >= quota:
                break
            if self.scu is None or (per_assoc and on_assoc >= per_assoc):
                self.close()
                on_assoc = 0
                try:
                    self.scu = self._open()
                except (OSError, NetError, EOFError, PrepareError) as exc:
                    if measuring:
                        measured += 1
                        self._fail(failure_kind(exc), ref, measure_from)
                    else:
                        res.warmup += 1
                    time.sleep(RECONNECT_PAUSE)
                    continue
            template = templates[n % count_templates]
            uid = fresh.apply(template, n) if fresh is not None else template.sop_instance_uid
            n += 1
            on_assoc += 1
            scu = self.scu
            try:
                status = scu.store_bytes(
                    template.context_id, template.sop_class_uid, uid, memoryview(template.payload)
                ).status
            except (OSError, NetError, EOFError) as exc:
                self.close(release=False)
                if live is not None:
                    live[live_index + 1] += 1
                if measuring:
                    measured += 1
                    self._fail(failure_kind(exc), ref, measure_from)
                else:
                    res.warmup += 1
                continue
            done = perf()
            if live is not None:
                live[live_index] += 1
            if not measuring:
                res.warmup += 1
                continue
            measured += 1
            due_ms.append(int((ref - measure_from) * 1000))
            latency_us.append(max(1, int((done - ref) * 1e6)))
            res.bytes_sent += template.size
            sizes.append(template.size)
            statuses[status] = statuses.get(status, 0) + 1
            res.last_done = done
        if interval:
            res.late_at_end = max(0, int((min(perf(), end) - due) / interval) + 1) if due < end else 0
        res.cpu_s = time.process_time() - cpu0
        self.close()
        res.max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        try:
            import psutil

            res.rss = psutil.Process(os.getpid()).memory_info().rss
        except Exception:  # pragma: no cover - psutil is a dependency; the figure is optional
            res.rss = res.max_rss
        return res

    def _fail(self, kind: str, ref: float, measure_from: float) -> None:
        res = self.result
        res.failures[kind] = res.failures.get(kind, 0) + 1
        res.failure_ms.append(int((ref - measure_from) * 1000))
        res.last_done = time.perf_counter()


def worker_main(conn: Any, worker: LoadWorker, live: Any) -> None:
    """A worker process: associate, say ready, wait for the schedule, run, send the result back."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through `live`
    error = worker.open_first()
    conn.send(("ready", error))
    message = conn.recv()
    if message[0] != "go":
        worker.close()
        return
    result = worker.run(message[1], live)
    conn.send(("done", result))
    conn.close()
