"""The coordinator: hands batches to worker processes and collects their outcomes as they come.

It keeps context-group affinity (a worker asks for more work naming the group its association holds, so
workers re-associate only to change group or after a failure). A worker that dies is replaced and the
files of its batch that have no outcome yet go back to the queue.

Adaptive concurrency: a worker that cannot open an association for a transient reason (A-ASSOCIATE-RJ
transient, connection refused or reset) gives the rest of its batch back instead of failing files; the
coordinator parks it for a backoff and, when other workers are connected, lowers the number of workers it
keeps busy (the peer's association limit). 0xA7xx answers lower it too. It grows back by one every
`GROW_SECONDS` without trouble. Only when no worker is connected and a worker has failed to associate more
than ``retries`` times in a row do the files fail (transient).

Ctrl-C and SIGTERM stop the dispatch: workers finish the C-STORE in flight, report the rest of their batch
as not sent and release their associations.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..dicom.part10 import Instance
from . import outcomes as st
from .messages import (
    AssociationOpened,
    Busy,
    Bye,
    Connect,
    ConnectFailed,
    GiveBack,
    Halt,
    Later,
    Ready,
    Results,
    RunBatch,
    Stop,
    ToCoordinator,
)
from .plan import Batch
from .report import Outcome, Report
from .worker import WorkerConfig, backoff, quiet_gc, worker_main

log = logging.getLogger("batchstore.dispatch")

#: Without association trouble for this long, the coordinator allows one more busy worker.
GROW_SECONDS = 5.0
#: A 0xA7xx answer lowers the number of busy workers at most once per this many seconds.
SHRINK_INTERVAL = 1.0
#: With files in flight and no outcome for this long, the run is waiting on a slow peer: it says so.
SLOW_PEER_SECONDS = 5.0


class WorkerHandle(Protocol):
    """What the coordinator does with a worker: a process here, a Dask worker's tasks in `cluster.py`."""

    @property
    def exitcode(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


class _Slot:
    """A worker as the coordinator sees it.

    A plain class, not a dataclass: creating a dataclass runs its generated methods' source through
    `exec` at import, about 5 million instructions of every send's start-up for this one
    (docs/design.md, "Small runs").
    """

    __slots__ = (
        "process", "conn", "batch", "start_index", "done_in_batch", "finished", "idle", "connecting",
        "group", "connected", "assoc_failures", "parked_until", "later",
    )  # fmt: skip

    def __init__(self, process: WorkerHandle, conn: Any, idle: bool = False) -> None:
        self.process = process
        self.conn: Any = conn  # a multiprocessing Connection; `cluster.py`'s channel has its send()
        self.batch: Batch | None = None
        self.start_index = 0
        self.done_in_batch = 0
        self.finished = False
        self.idle = idle  # said "ready" and has no batch yet
        self.connecting = False  # told to associate; no batch yet
        self.group = -1  # the context group its association holds (-1: none)
        self.connected = False  # holds an association (as far as the coordinator knows)
        self.assoc_failures = 0  # association failures in a row
        self.parked_until = 0.0  # no batch before this time (backoff after an association failure)
        self.later: set[str] | None = None  # paths of its batch sent back with `Later` (requeued already)


class Coordinator:
    """Runs `batches` over `workers` processes and fills `report`.

    Parameters
    ----------
    batches : sequence of Batch
        In plan order; each is given to one worker at a time.
    on_outcomes : callable, optional
        Called with each chunk of outcomes as it arrives (progress bar, journal).
    """

    def __init__(
        self,
        batches: list[Batch],
        workers: int,
        config: WorkerConfig,
        report: Report,
        on_outcomes: Callable[[list[Outcome]], None] | None = None,
        on_wait: Callable[[float | None], None] | None = None,
    ) -> None:
        self.config = config
        self.report = report
        self.on_outcomes = on_outcomes
        #: called about once a second with the seconds the run has waited on the peer, None when it answers
        self.on_wait = on_wait
        self._results = False  # outcomes arrived since the last `_watch_peer`
        self.last_progress = time.monotonic()
        self._stalled = False
        self._told_wait = 0.0
        #: id(batch) -> the earlier failures of its files, for batches of files sent back with `Later`
        self._retry_of: dict[int, tuple[tuple[st.Attribution, ...], int]] = {}
        self.accepted = 0  # files the peer accepted so far (counted per chunk of outcomes)
        self.queues: dict[int, deque[tuple[Batch, int]]] = {}
        index = 0
        for batch in batches:
            self.queues.setdefault(batch.context_group, deque()).append((batch, index))
            index += len(batch.instances)
        self.workers = max(1, min(workers, len(batches))) if batches else 0
        self.slots: dict[int, _Slot] = {}
        self.assoc_numbers: dict[tuple[int, int], int] = {}
        self.next_worker_id = 1
        self.halted = False
        self.respawns_left = 3 * self.workers + 3
        self.target = self.workers  # how many workers may hold a batch at once (adaptive)
        self.last_change = time.monotonic()
        self.stop_requested = False

    def _spawn(self) -> None:
        # multiprocessing only here and in `_poll`: a run without worker processes (sender/inline.py)
        # does not load it (5 ms of a small send's start-up)
        import multiprocessing

        ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
        wid = self.next_worker_id
        self.next_worker_id += 1
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(  # type: ignore[attr-defined]
            target=worker_main, args=(wid, child, self.config), name=f"batchstore-worker-{wid}", daemon=True
        )
        proc.start()
        child.close()
        self.slots[wid] = _Slot(proc, parent)

    def _next_batch(self, group: int) -> tuple[Batch, int] | None:
        if self.halted:
            return None
        queue = self.queues.get(group)
        if not queue:
            candidates = [g for g, q in self.queues.items() if q]
            if not candidates:
                return None
            queue = self.queues[max(candidates, key=lambda g: len(self.queues[g]))]
        return queue.popleft()

    def halt(self) -> None:
        """Stop dispatching; workers finish the file in flight and report the rest as not sent."""
        if self.halted:
            return
        self.halted = True
        for slot in self.slots.values():
            if not slot.finished:
                try:
                    slot.conn.send(Halt())
                except OSError:
                    pass

    def _record(
        self, wid: int, outcomes: list[Outcome], count_retries: bool = True, failures: int | None = None
    ) -> None:
        """Take a chunk of outcomes; `failures`: how many of them were not delivered, when known (none:
        no need to look for one that halts the run)."""
        # Outcomes arrive unpickled, so they are this process's own: number their associations in place.
        numbers = self.assoc_numbers
        retries = 0
        for o in outcomes:  # one pass per chunk: the per-file part of the coordinator's work
            if o.association:
                o.association = numbers.get((wid, o.association), 0)
            if o.attempts > 1:
                retries += o.attempts - 1
        self.report.outcomes.extend(outcomes)
        if count_retries:
            self.report.retries += retries
        if self.on_outcomes:
            self.on_outcomes(outcomes)
        if (
            self.config.halt_on_failure
            and failures != 0
            and any(o.category in (st.TRANSIENT, st.PERMANENT) for o in outcomes)
        ):
            self.report.halted = True
            self.halt()

    def _handle(self, wid: int, slot: _Slot, message: ToCoordinator) -> None:
        if isinstance(message, Results):  # by far the most frequent: first
            self._results = True
            self.accepted += len(message.outcomes) - message.failures
            slot.done_in_batch += len(message.outcomes)
            self._record(wid, message.outcomes, failures=message.failures)
        elif isinstance(message, AssociationOpened):
            slot.connected = True
            slot.assoc_failures = 0
            number = len(self.report.associations) + 1
            self.assoc_numbers[(wid, message.local_number)] = number
            self.report.associations.append(message.record._replace(number=number))
        elif isinstance(message, Ready):
            slot.batch = None
            slot.connecting = False
            slot.idle = True
            slot.group = message.group
            if slot.group < 0:
                slot.connected = False
        elif isinstance(message, GiveBack):
            self._give_back(wid, slot, message.offset, message.error, message.deferred)
        elif isinstance(message, Later):
            self._later(slot, message)
        elif isinstance(message, ConnectFailed):
            slot.connecting = False
            self._connect_failed(wid, slot, message.error, message.transient)
        elif isinstance(message, Busy):
            self._shrink(f"the peer answered 0x{message.status:04X}", interval=SHRINK_INTERVAL)
        elif isinstance(message, Bye):
            slot.finished = True

    def _shrink(self, why: str, limit: int | None = None, interval: float = 0.0) -> None:
        now = time.monotonic()
        if interval and now - self.last_change < interval:
            return
        busy = sum(1 for s in self.slots.values() if s.batch is not None and not s.finished)
        new = max(1, min(self.target, busy) - 1 if limit is None else min(self.target - 1, limit))
        self.last_change = now
        if new < self.target:
            log.info("%s: %d worker(s) busy at most (was %d)", why, new, self.target)
            self.target = new

    def _fail_batch(self, wid: int, batch: Batch, category: str, error: str, attempts: int) -> None:
        log.warning("worker %d: cannot associate (%s); %d file(s) failed", wid, error, len(batch.instances))
        failed = [
            Outcome.of(inst, category, error, attempts=attempts, worker=wid) for inst in batch.instances
        ]
        self._record(wid, failed, count_retries=False)

    def _fail_queued(self, wid: int, error: str, attempts: int) -> None:
        """Fail every batch still queued as transient (the peer could not be reached)."""
        while True:
            nxt = self._next_batch(-1)
            if nxt is None:
                return
            self._fail_batch(wid, nxt[0], st.TRANSIENT, error, attempts)

    def _connect_failed(self, wid: int, slot: _Slot, error: str, transient: bool) -> None:
        """A worker told to associate could not: park it and adapt, or fail the batch it would have had."""
        slot.connected = False
        slot.assoc_failures += 1
        others = sum(1 for w, s in self.slots.items() if w != wid and s.connected and not s.finished)
        spent = not others and slot.assoc_failures > self.config.retries  # no retry follows
        if transient and others:
            self._shrink(f"association refused while {others} other(s) connected ({error})", limit=others)
        elif not transient:
            nxt = self._next_batch(slot.group)
            if nxt is not None:
                self._fail_batch(
                    wid, nxt[0], st.PERMANENT, f"association failed: {error}", slot.assoc_failures
                )
            return
        elif spent:
            # Nobody is connected and the retries are spent: the peer is unreachable. Fail what is left
            # now (transient: a resume with --journal sends it) rather than retrying batch after batch.
            self._fail_queued(wid, f"association failed: {error}", slot.assoc_failures)
        if not spent:
            self.report.retries += 1
        slot.parked_until = time.monotonic() + backoff(min(slot.assoc_failures, 8), self.config.retry_wait)

    def _give_back(
        self, wid: int, slot: _Slot, offset: int, error: str, deferred: tuple[int, ...] = ()
    ) -> None:
        """A worker could not associate (transient): requeue the rest of its batch, park it, adapt."""
        batch, start = slot.batch, slot.start_index
        slot.batch = None
        slot.connected = False
        slot.assoc_failures += 1
        if batch is None:
            return
        rest = tuple(batch.instances[i] for i in deferred) + batch.instances[offset:]
        if deferred:
            offset = min(offset, *deferred)
        others = sum(1 for w, s in self.slots.items() if w != wid and s.connected and not s.finished)
        if others:
            self._shrink(f"association refused while {others} other(s) connected ({error})", limit=others)
        elif slot.assoc_failures > self.config.retries:
            remainder = batch._replace(instances=tuple(rest))
            self._fail_batch(
                wid, remainder, st.TRANSIENT, f"association failed: {error}", slot.assoc_failures
            )
            self._fail_queued(wid, f"association failed: {error}", slot.assoc_failures)
            return
        self.report.retries += 1
        if rest:
            requeued = batch._replace(instances=tuple(rest), nbytes=sum(i.size for i in rest))
            self.queues.setdefault(batch.context_group, deque()).appendleft((requeued, start + offset))
        slot.parked_until = time.monotonic() + backoff(min(slot.assoc_failures, 8), self.config.retry_wait)

    def _dispatch(self) -> None:
        """Give batches to idle workers, at most `target` busy at once; stop idle workers when all is done."""
        now = time.monotonic()
        if self.target < self.workers and now - self.last_change > GROW_SECONDS:
            self.target += 1
            self.last_change = now
            log.info(
                "no association trouble for %.0f s: %d worker(s) busy at most", GROW_SECONDS, self.target
            )
        busy = sum(1 for s in self.slots.values() if s.batch is not None and not s.finished)
        if self.halted or (not any(self.queues.values()) and busy == 0):
            # nothing can come back to the queue any more: stop idle workers, and cut short the ones
            # still waiting for an A-ASSOCIATE-AC (they hold no files)
            for _wid, slot in self.slots.items():
                if slot.finished:
                    continue
                if slot.idle:
                    slot.idle = False
                    try:
                        slot.conn.send(Stop())
                    except OSError:
                        pass  # it died; its sentinel tells the loop
                elif slot.connecting:
                    slot.connecting = False
                    slot.process.terminate()
            return
        idle = [(wid, s) for wid, s in self.slots.items() if s.idle and not s.finished]
        connecting = sum(1 for s in self.slots.values() if s.connecting and not s.finished)
        idle.sort(key=lambda item: (not item[1].connected, item[1].parked_until))
        for _wid, slot in idle:
            if busy + connecting >= self.target or not any(self.queues.values()):
                break
            if slot.parked_until > now:
                continue
            if slot.connected:
                nxt = self._next_batch(slot.group)
                assert nxt is not None
                if self._waits_for_evidence(nxt[0], busy + connecting):
                    # to the back: this worker takes another batch, if there is one that need not wait
                    self.queues.setdefault(nxt[0].context_group, deque()).append(nxt)
                    nxt = self._next_batch(slot.group)
                    assert nxt is not None
                    if self._waits_for_evidence(nxt[0], busy + connecting):
                        self.queues.setdefault(nxt[0].context_group, deque()).append(nxt)
                        continue
                slot.idle = False
                slot.batch, slot.start_index = nxt
                slot.done_in_batch = 0
                slot.later = None
                slot.conn.send(RunBatch(slot.batch, slot.start_index, self._last_chance(slot.batch)))
                busy += 1
            else:
                slot.idle = False
                slot.connecting = True
                slot.conn.send(Connect(self._peek_group(slot.group)))
                connecting += 1

    def _peek_group(self, group: int) -> int:
        """The context group of the batch `_next_batch(group)` would return."""
        if self.queues.get(group):
            return group
        return max((g for g, q in self.queues.items() if q), key=lambda g: len(self.queues[g]))

    def _worker_died(self, wid: int, slot: _Slot) -> None:
        slot.finished = True
        batch = slot.batch
        code = slot.process.exitcode
        if batch is not None:
            rest = self._unreported(wid, batch, slot.done_in_batch)
            log.warning(
                "worker %d died (exit code %s) with %d file(s) of its batch unsent; requeued",
                wid,
                code,
                len(rest),
            )
            if rest:
                requeued = batch._replace(instances=tuple(rest), nbytes=sum(i.size for i in rest))
                self.queues.setdefault(batch.context_group, deque()).appendleft(
                    (requeued, slot.start_index + slot.done_in_batch)
                )
        if not self.halted and any(self.queues.values()) and self.respawns_left > 0:
            self.respawns_left -= 1
            self._spawn()

    def _waits_for_evidence(self, batch: Batch, others_active: int) -> bool:
        """A batch sent back with `Later` (just taken from its queue) waits while the peer has accepted
        nothing since and other files are still to come (workers sending or connecting, batches queued):
        their outcomes will say whether the peer is fine, and then its files are judged."""
        entry = self._retry_of.get(id(batch))
        if entry is None or self.accepted > entry[1]:
            return False
        queued = sum(len(q) for q in self.queues.values())
        plain_queued = queued - (len(self._retry_of) - 1)  # queued batches that are not sent-back ones
        return others_active > 0 or plain_queued > 0

    def _last_chance(self, batch: Batch) -> tuple[st.Attribution, ...]:
        """The earlier failures of a batch sent back with `Later`, marked when the peer has accepted
        files (from any worker) since: then a failure that repeats is the file's."""
        entry = self._retry_of.pop(id(batch), None)
        if entry is None:
            return ()
        first, mark = entry
        if self.accepted > mark:
            return tuple(f._replace(previous_ok=True) for f in first)
        return first

    def _later(self, slot: _Slot, message: Later) -> None:
        """Files a worker could not judge: to the end of the queue, one batch, for a last retry."""
        batch = slot.batch
        if batch is None or not message.offsets:
            return
        files = tuple(batch.instances[i] for i in message.offsets)
        later = batch._replace(instances=files, nbytes=sum(i.size for i in files))
        self._retry_of[id(later)] = (message.first, self.accepted)
        self.queues.setdefault(batch.context_group, deque()).append(
            (later, slot.start_index + message.offsets[0])
        )
        slot.later = {inst.path for inst in files}  # requeued already: a death of this worker does not

    def _unreported(self, wid: int, batch: Batch, done: int) -> tuple[Instance, ...]:
        """The files of `batch` worker `wid` reported no outcome for, `done` outcomes in.

        Usually the tail after the first `done` files; but a file put aside after a transient failure is
        reported after the rest of its batch, so the reported paths are looked up (only when a worker dies).
        """
        seen: set[str] = set(self.slots[wid].later or ())
        if done == 0:
            return (
                tuple(inst for inst in batch.instances if inst.path not in seen) if seen else batch.instances
            )
        done += len(seen)
        for outcome in reversed(self.report.outcomes):
            if outcome.worker == wid:
                seen.add(outcome.path)
                if len(seen) >= done:
                    break
        return tuple(inst for inst in batch.instances if inst.path not in seen)

    def request_stop(self, signum: int = signal.SIGINT, frame: object = None) -> None:
        """Ctrl-C / SIGTERM: stop dispatching and let in-flight C-STOREs finish; a second one is forceful."""
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True

    def run(self) -> None:
        """Dispatch every batch; return when all workers have finished."""
        previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                previous[number] = signal.signal(number, self.request_stop)
        restore_gc = quiet_gc()  # before forking, so the workers inherit a frozen heap too
        try:
            for _ in range(self.workers):
                self._spawn()
            self._loop()
        except KeyboardInterrupt:
            self.report.interrupted = True
            self.halt()
            self._loop()
        finally:
            for signum_, handler in previous.items():
                signal.signal(signum_, handler)  # type: ignore[arg-type]
            restore_gc()  # an API caller's process goes on as it was
            if self._stalled:
                self._watch_peer(final=True)
            for slot in self.slots.values():
                slot.process.join(timeout=5)
                if slot.process.is_alive():
                    slot.process.kill()
            self._mark_unsent()

    def _loop(self) -> None:
        while any(not s.finished for s in self.slots.values()):
            if self.stop_requested and not self.report.interrupted:
                log.warning("interrupted: finishing the C-STOREs in flight, then stopping")
                self.report.interrupted = True
                self.halt()
            self._dispatch()
            self._poll()
            self._watch_peer()

    # -- the transport: worker processes over pipes (`cluster.py` overrides `_spawn` and `_poll`) ------
    def _poll(self) -> None:
        """Wait up to 0.2 s for the workers; handle what they said, and the deaths of those that died."""
        from multiprocessing.connection import wait

        live = {s.conn: wid for wid, s in self.slots.items() if not s.finished}
        sentinels = {self.slots[wid].process.sentinel: wid for wid in live.values()}  # type: ignore[attr-defined]
        ready = wait(list(live) + list(sentinels), timeout=0.2)
        for item in ready:
            if item in live:
                wid = live[item]
                slot = self.slots[wid]
                try:
                    while not slot.finished and slot.conn.poll():
                        self._handle(wid, slot, slot.conn.recv())
                except (EOFError, OSError):
                    slot.process.join(timeout=5)
                    if not slot.finished:
                        self._worker_died(wid, slot)
        for sentinel, wid in sentinels.items():
            slot = self.slots[wid]
            if sentinel in ready and not slot.finished:
                # drain what it managed to send before dying
                try:
                    while slot.conn.poll():
                        self._handle(wid, slot, slot.conn.recv())
                except (EOFError, OSError):
                    pass
                if not slot.finished:
                    self._worker_died(wid, slot)

    def _watch_peer(self, final: bool = False) -> None:
        """Notice (log, progress bar, summary) when files are in flight and none has been answered for
        `SLOW_PEER_SECONDS`: the run is waiting on a slow peer (or one that holds a data set it cannot
        parse until its own timeout)."""
        now = time.monotonic()
        if self._results or final:
            self._results = False
            if self._stalled:
                self._stalled = False
                waited = now - self.last_progress
                self.report.waited_s += waited
                log.info("the peer answered again after %.0f s", waited)
                if self.on_wait:
                    self.on_wait(None)
            self.last_progress = now
            return
        silent = now - self.last_progress
        if silent < SLOW_PEER_SECONDS:
            return
        busy = sum(1 for s in self.slots.values() if s.batch is not None and not s.finished)
        if not busy:
            self.last_progress = now  # nothing in flight: not the peer's doing
            return
        if not self._stalled:
            self._stalled = True
            self.report.slow_waits += 1
            log.warning(
                "waiting on a slow peer: no file answered for %.0f s (%d association(s) with files in flight)",
                silent,
                busy,
            )
        if self.on_wait and now - self._told_wait >= 1.0:
            self._told_wait = now
            self.on_wait(silent)

    def _mark_unsent(self) -> None:
        reason = "not sent: run interrupted" if self.report.interrupted else "not sent: run halted"
        unsent: list[Outcome] = []
        for queue in self.queues.values():
            while queue:
                batch, _ = queue.popleft()
                for inst in batch.instances:
                    unsent.append(Outcome.of(inst, st.NOT_SENT, reason))
        if unsent:
            self.report.outcomes.extend(unsent)
            if self.on_outcomes:
                self.on_outcomes(unsent)
