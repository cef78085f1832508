"""The process pool: a coordinator hands batches to worker processes and collects their outcomes as they come.

Each worker holds one association (per context group) across batches and asks for more work naming the
context group it holds, so the coordinator can keep affinity and workers re-associate only to change
group or after a failure. Workers stream outcomes back in small chunks, so progress and the report never
wait for a whole batch. A worker that dies is replaced and the files of its batch that have no outcome
yet go back to the queue.

Adaptive concurrency: a worker that cannot open an association for a transient reason (A-ASSOCIATE-RJ
transient, connection refused or reset) gives the rest of its batch back instead of failing files; the
coordinator parks it for a backoff and, when other workers are connected, lowers the number of workers it
keeps busy (the peer's association limit). 0xA7xx answers lower it too. It grows back by one every
`GROW_SECONDS` without trouble. Only when no worker is connected and a worker has failed to associate more
than ``retries`` times in a row do the files fail (transient).

Ctrl-C and SIGTERM stop the dispatch: workers finish the C-STORE in flight, report the rest of their batch
as not sent and release their associations. Workers exit when the coordinator is gone (EOF on the pipe or
a new parent process).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait

from ..dicom.transcode import EditOptions, encode_dataset
from ..dicom.uids import DEFLATED_EXPLICIT_VR_LE, ts_name
from ..net.errors import NetError
from . import outcomes as st
from .plan import Batch, ContextGroup, choose_context
from .report import AssociationRecord, Outcome, Report
from .scan import SMALL_DATASET, read_dataset_bytes, verify_bytes, verify_dataset
from .scu import AssociationOptions, StoreSCU

log = logging.getLogger("batchstore.dispatch")

#: Outcomes are sent to the coordinator when this many are buffered, or after `FLUSH_SECONDS`.
FLUSH_COUNT = 64
FLUSH_SECONDS = 0.2
#: How often a worker looks for a halt from the coordinator (or its death) while sending.
CHECK_SECONDS = 0.01
#: Without association trouble for this long, the coordinator allows one more busy worker.
GROW_SECONDS = 5.0
#: A 0xA7xx answer lowers the number of busy workers at most once per this many seconds.
SHRINK_INTERVAL = 1.0


class CoordinatorGone(Exception):
    """The coordinator process died: a worker stops instead of sending on."""


class _GiveBack(Exception):
    """No association for a transient reason: the worker gives the rest of its batch back."""


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs; pickled once per worker."""

    association: AssociationOptions
    context_groups: tuple[ContextGroup, ...]
    edits: EditOptions = EditOptions()
    read_dataset_only: bool = False
    halt_on_failure: bool = True
    abort_at_end: bool = False
    retries: int = 3
    retry_wait: float = 1.0
    verify: bool = True
    engine: str = "batchstore"  # "batchstore" (StoreSCU, the lean loop) or "pynetdicom" (PynetdicomSCU)


#: Garbage collector thresholds while a run sends: allocation-driven collections scanned the
#: coordinator's thousands of scanned instances and outcomes over and over (perf/: ~5 % of a 1 KB run).
#: Nothing on the send path makes reference cycles, so collecting rarely frees the same memory.
GC_THRESHOLDS = (50_000, 50, 50)


def quiet_gc() -> Callable[[], None]:
    """Move every object alive now out of the collector's sight and collect rarely.

    Returns the function that undoes it. A process that had frozen objects itself (an API caller's
    pre-fork server, say) keeps its freeze: only the thresholds change then.
    """
    previous = gc.get_threshold()
    froze = gc.get_freeze_count() == 0
    if froze:
        gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

    def restore() -> None:
        if froze:
            gc.unfreeze()
        gc.set_threshold(*previous)

    return restore


def backoff(attempt: int, base: float) -> float:
    """Exponential backoff with full jitter: a random wait in [base/2, base * 2**(attempt-1)], capped at 60 s."""
    ceiling = min(60.0, base * (2 ** max(0, attempt - 1)))
    return random.uniform(min(base / 2, ceiling), ceiling) if ceiling > 0 else 0.0


class Worker:
    """Runs batches on one association at a time; lives in a worker process."""

    def __init__(self, worker_id: int, conn: Connection, config: WorkerConfig) -> None:
        self.id = worker_id
        self.conn = conn
        self.config = config
        self.scu: StoreSCU | None = None
        self.group = -1
        # (SOP class, file syntax) -> choose_context's answer on the current association
        self._choices: dict[tuple[str, str], tuple[int, str, str] | None] = {}
        self.local_assoc = 0
        self.halted = False
        self._buffer: list[Outcome] = []
        self._last_flush = time.monotonic()
        self._next_check = 0.0
        self._batch_index = -1
        self.parent = os.getppid()

    # -- messages --------------------------------------------------------------------------------
    def flush(self) -> None:
        if self._buffer:
            self.conn.send(("results", self.id, self._batch_index, self._buffer))
            self._buffer = []
        self._last_flush = time.monotonic()

    def emit(self, outcome: Outcome) -> None:
        self._buffer.append(outcome)
        if len(self._buffer) >= FLUSH_COUNT or time.monotonic() - self._last_flush > FLUSH_SECONDS:
            self.flush()

    def check_halt(self) -> None:
        """Notice a halt/stop from the coordinator, or the coordinator's death; at most every `CHECK_SECONDS`.

        Two system calls per file (a pipe poll and getppid) were a measurable share of a 1 KB file's cost.
        """
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_SECONDS
        if os.getppid() != self.parent:
            raise CoordinatorGone
        if not self.halted and self.conn.poll():
            message = self.conn.recv()
            if message[0] in ("halt", "stop"):
                self.halted = True

    # -- associations ----------------------------------------------------------------------------
    def close_association(self, graceful: bool = True) -> None:
        scu, self.scu = self.scu, None
        if scu is None:
            return
        if not graceful:
            scu.close()
        elif self.config.abort_at_end:
            scu.abort()
        else:
            scu.release()

    def association(self, group: int) -> StoreSCU:
        if self.scu is not None and self.scu.is_open and self.group == group:
            return self.scu
        self.close_association()
        contexts = tuple(
            (pc.context_id, pc.abstract_syntax, tuple(pc.transfer_syntaxes))
            for pc in self.config.context_groups[group].contexts
        )
        if self.config.engine == "pynetdicom":
            from .scu_pynetdicom import PynetdicomSCU

            scu: StoreSCU = PynetdicomSCU(self.config.association, contexts)  # type: ignore[assignment]
        else:
            scu = StoreSCU(self.config.association, contexts)
        accept = scu.open()
        self.scu = scu
        self.group = group
        self._choices = {}
        self.local_assoc += 1
        self.conn.send(
            (
                "assoc",
                self.id,
                self.local_assoc,
                AssociationRecord(
                    number=0,
                    worker=self.id,
                    context_group=group,
                    proposed=len(contexts),
                    accepted=len(accept.accepted()),
                    peer_max_pdu=accept.max_pdu,
                ),
            )
        )
        return scu

    # -- sending ---------------------------------------------------------------------------------
    def run_batch(self, batch: Batch, start_index: int) -> None:
        self._batch_index = batch.index
        for offset, inst in enumerate(batch.instances):
            self.check_halt()
            if self.halted:
                self.emit(self._outcome(inst, st.NOT_SENT, error="not sent: run halted"))
                continue
            try:
                outcome = self.send_one(batch, inst, start_index + offset)
            except _GiveBack as exc:
                self.flush()
                self.conn.send(("giveback", self.id, batch.index, offset, str(exc)))
                return
            self.emit(outcome)
            if self.config.halt_on_failure and outcome.category in (st.TRANSIENT, st.PERMANENT):
                self.halted = True  # storescu's default: halt on the first unsuccessful store
                self.flush()
        self.flush()

    def _outcome(self, inst, category: str, **kw) -> Outcome:  # type: ignore[no-untyped-def]
        return Outcome.of(inst, category, worker=self.id, **kw)

    def send_one(self, batch: Batch, inst, index: int) -> Outcome:  # type: ignore[no-untyped-def]
        config = self.config
        start = time.perf_counter()
        data: bytes | None = None  # a small data set, read once: checked and sent from memory
        if config.verify and not config.read_dataset_only:
            if (
                inst.size - inst.data_offset <= SMALL_DATASET
                and inst.transfer_syntax != DEFLATED_EXPLICIT_VR_LE
            ):
                try:
                    data = read_dataset_bytes(inst.path, inst.data_offset, inst.size - inst.data_offset)
                except OSError as exc:
                    return self._outcome(inst, st.PERMANENT, error=f"cannot read: {exc.strerror or exc}")
                reason = verify_bytes(data, inst.transfer_syntax)
            else:
                reason = verify_dataset(inst.path, inst.data_offset, inst.transfer_syntax)
            if reason:
                return self._outcome(inst, st.PERMANENT, error=reason, attempts=0)
        attempts = 0
        while True:
            attempts += 1
            try:
                scu = self.association(batch.context_group)
            except (OSError, NetError) as exc:
                category = st.classify_error(exc)
                if category == st.TRANSIENT:
                    # the coordinator decides: another worker, later, or fail once the peer stays away
                    log.info("worker %d: association failed (%s); giving the batch back", self.id, exc)
                    raise _GiveBack(st.describe_error(exc)) from exc
                return self._outcome(
                    inst,
                    category,
                    error=st.describe_error(exc),
                    attempts=attempts,
                    duration_ms=(time.perf_counter() - start) * 1000,
                )
            key = (inst.sop_class_uid, inst.transfer_syntax)
            try:
                choice = self._choices[key]
            except KeyError:
                group = config.context_groups[batch.context_group]
                choice = self._choices[key] = choose_context(group, *key, scu.accepted())
            if choice is None:
                return self._outcome(
                    inst,
                    st.PERMANENT,
                    error=f"no accepted presentation context for {ts_name(inst.transfer_syntax)}",
                    attempts=attempts,
                    association=self.local_assoc,
                )
            context_id, send_ts, mode = choice
            uid = inst.sop_instance_uid
            try:
                if mode == "as-is" and not config.edits.any:
                    if data is not None:
                        rsp = scu.store_bytes(context_id, inst.sop_class_uid, uid, data)
                    else:
                        rsp = scu.store_file(context_id, inst.sop_class_uid, uid, inst.path, inst.data_offset)
                else:
                    try:
                        data, uid = encode_dataset(
                            inst.path,
                            inst.transfer_syntax,
                            send_ts,
                            config.edits,
                            index,
                            config.read_dataset_only,
                        )
                    except Exception as exc:  # pydicom could not decode or encode this file
                        return self._outcome(
                            inst,
                            st.PERMANENT,
                            error=f"cannot convert to {ts_name(send_ts)}: {exc}",
                            attempts=attempts,
                        )
                    rsp = scu.store_bytes(context_id, inst.sop_class_uid, uid, data)
            except (OSError, NetError) as exc:
                if isinstance(exc, FileNotFoundError) or (
                    isinstance(exc, OSError) and exc.filename == inst.path
                ):
                    # The file itself, not the network: the association may be mid-message; drop it.
                    self.close_association(graceful=False)
                    return self._outcome(inst, st.PERMANENT, error=f"cannot read: {exc}", attempts=attempts)
                self.close_association(graceful=False)
                category = st.classify_error(exc)
                if category == st.TRANSIENT and attempts <= config.retries:
                    log.info("worker %d: %s while sending %s; retrying", self.id, exc, inst.path)
                    time.sleep(backoff(attempts, config.retry_wait))
                    continue
                return self._outcome(
                    inst,
                    category,
                    error=st.describe_error(exc),
                    attempts=attempts,
                    association=self.local_assoc,
                    context_id=context_id,
                    sent_ts=send_ts,
                    duration_ms=(time.perf_counter() - start) * 1000,
                )
            category = st.classify_status(rsp.status)
            if category == st.TRANSIENT:
                self.conn.send(("busy", self.id, rsp.status))  # the peer is out of resources: fewer workers
            if category == st.TRANSIENT and attempts <= config.retries:
                time.sleep(backoff(attempts, config.retry_wait))
                continue
            error = ""
            if category not in (st.SUCCESS,):
                error = st.status_text(rsp.status) + (f": {rsp.error_comment}" if rsp.error_comment else "")
            return self._outcome(
                inst,
                category,
                sop_instance_uid=uid,
                status=rsp.status,
                error=error,
                attempts=attempts,
                association=self.local_assoc,
                context_id=context_id,
                sent_ts=send_ts,
                duration_ms=(time.perf_counter() - start) * 1000,
            )


def worker_main(worker_id: int, conn: Connection, config: WorkerConfig) -> None:
    """Entry point of a worker process: ask for batches until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides what Ctrl-C means
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    quiet_gc()
    worker = Worker(worker_id, conn, config)
    try:
        conn.send(("ready", worker_id, worker.group))
        while True:
            try:
                if not conn.poll(1.0):
                    if os.getppid() != worker.parent:
                        break  # the coordinator is gone (and another process holds our pipe open)
                    continue
                message = conn.recv()
            except (EOFError, OSError):
                break  # the coordinator is gone: do not send on
            if message[0] == "batch":
                try:
                    worker.run_batch(message[1], message[2])
                    conn.send(("ready", worker_id, worker.group if worker.scu is not None else -1))
                except (CoordinatorGone, EOFError, OSError):
                    break
            elif message[0] == "connect":
                # associate before taking a batch: a peer that makes us wait (full backlog) or turns us
                # away holds no files hostage
                try:
                    worker.association(message[1])
                except (OSError, NetError) as exc:
                    transient = st.classify_error(exc) == st.TRANSIENT
                    conn.send(("connect-failed", worker_id, st.describe_error(exc), transient))
                conn.send(("ready", worker_id, worker.group if worker.scu is not None else -1))
            elif message[0] == "halt":
                worker.halted = True
                conn.send(("ready", worker_id, worker.group if worker.scu is not None else -1))
            else:
                break
    finally:
        worker.close_association()
        try:
            conn.send(("bye", worker_id))
        except (OSError, ValueError):
            pass


@dataclass
class _Slot:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    batch: Batch | None = None
    start_index: int = 0
    done_in_batch: int = 0
    finished: bool = False
    idle: bool = False  # said "ready" and has no batch yet
    connecting: bool = False  # told to associate; no batch yet
    group: int = -1  # the context group its association holds (-1: none)
    connected: bool = False  # holds an association (as far as the coordinator knows)
    assoc_failures: int = 0  # association failures in a row
    parked_until: float = 0.0  # no batch before this time (backoff after an association failure)


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
    ) -> None:
        self.config = config
        self.report = report
        self.on_outcomes = on_outcomes
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
        self._ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")

    def _spawn(self) -> None:
        wid = self.next_worker_id
        self.next_worker_id += 1
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(  # type: ignore[attr-defined]
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
                    slot.conn.send(("halt",))
                except OSError:
                    pass

    def _record(self, wid: int, outcomes: list[Outcome], count_retries: bool = True) -> None:
        # Outcomes arrive unpickled, so they are this process's own: number their associations in place.
        numbers = self.assoc_numbers
        for o in outcomes:
            if o.association:
                o.association = numbers.get((wid, o.association), 0)
        self.report.outcomes.extend(outcomes)
        if count_retries:
            self.report.retries += sum(max(0, o.attempts - 1) for o in outcomes)
        if self.on_outcomes:
            self.on_outcomes(outcomes)
        if self.config.halt_on_failure and any(o.category in (st.TRANSIENT, st.PERMANENT) for o in outcomes):
            self.report.halted = True
            self.halt()

    def _handle(self, wid: int, slot: _Slot, message: tuple) -> None:
        kind = message[0]
        if kind == "results":
            slot.done_in_batch += len(message[3])
            self._record(wid, message[3])
        elif kind == "assoc":
            slot.connected = True
            slot.assoc_failures = 0
            number = len(self.report.associations) + 1
            self.assoc_numbers[(wid, message[2])] = number
            self.report.associations.append(replace(message[3], number=number))
        elif kind == "ready":
            slot.batch = None
            slot.connecting = False
            slot.idle = True
            slot.group = message[2]
            if slot.group < 0:
                slot.connected = False
        elif kind == "giveback":
            self._give_back(wid, slot, message[3], message[4])
        elif kind == "connect-failed":
            slot.connecting = False
            self._connect_failed(wid, slot, message[2], message[3])
        elif kind == "busy":
            self._shrink(f"the peer answered 0x{message[2]:04X}", interval=SHRINK_INTERVAL)
        elif kind == "bye":
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
        if transient and others:
            self._shrink(f"association refused while {others} other(s) connected ({error})", limit=others)
        elif not transient:
            nxt = self._next_batch(slot.group)
            if nxt is not None:
                self._fail_batch(
                    wid, nxt[0], st.PERMANENT, f"association failed: {error}", slot.assoc_failures
                )
            return
        elif slot.assoc_failures > self.config.retries:
            # Nobody is connected and the retries are spent: the peer is unreachable. Fail what is left
            # now (transient: a resume with --journal sends it) rather than retrying batch after batch.
            self._fail_queued(wid, f"association failed: {error}", slot.assoc_failures)
        self.report.retries += 1
        slot.parked_until = time.monotonic() + backoff(min(slot.assoc_failures, 8), self.config.retry_wait)

    def _give_back(self, wid: int, slot: _Slot, offset: int, error: str) -> None:
        """A worker could not associate (transient): requeue the rest of its batch, park it, adapt."""
        batch, start = slot.batch, slot.start_index
        slot.batch = None
        slot.connected = False
        slot.assoc_failures += 1
        if batch is None:
            return
        rest = batch.instances[offset:]
        others = sum(1 for w, s in self.slots.items() if w != wid and s.connected and not s.finished)
        if others:
            self._shrink(f"association refused while {others} other(s) connected ({error})", limit=others)
        elif slot.assoc_failures > self.config.retries:
            remainder = replace(batch, instances=tuple(rest))
            self._fail_batch(
                wid, remainder, st.TRANSIENT, f"association failed: {error}", slot.assoc_failures
            )
            self._fail_queued(wid, f"association failed: {error}", slot.assoc_failures)
            return
        self.report.retries += 1
        if rest:
            requeued = replace(batch, instances=tuple(rest), nbytes=sum(i.size for i in rest))
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
                        slot.conn.send(("stop",))
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
            slot.idle = False
            if slot.connected:
                nxt = self._next_batch(slot.group)
                assert nxt is not None
                slot.batch, slot.start_index = nxt
                slot.done_in_batch = 0
                slot.conn.send(("batch", slot.batch, slot.start_index))
                busy += 1
            else:
                slot.connecting = True
                slot.conn.send(("connect", self._peek_group(slot.group)))
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
            rest = batch.instances[slot.done_in_batch :]
            log.warning(
                "worker %d died (exit code %s) with %d file(s) of its batch unsent; requeued",
                wid,
                code,
                len(rest),
            )
            if rest:
                requeued = replace(batch, instances=tuple(rest), nbytes=sum(i.size for i in rest))
                self.queues.setdefault(batch.context_group, deque()).appendleft(
                    (requeued, slot.start_index + slot.done_in_batch)
                )
        if not self.halted and any(self.queues.values()) and self.respawns_left > 0:
            self.respawns_left -= 1
            self._spawn()

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
            live = {s.conn: wid for wid, s in self.slots.items() if not s.finished}
            sentinels = {self.slots[wid].process.sentinel: wid for wid in live.values()}
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
