"""The process pool: a coordinator hands batches to worker processes and collects their outcomes as they come.

Each worker holds one association (per context group) across batches and asks for more work naming the
context group it holds, so the coordinator can keep affinity and workers re-associate only to change
group or after a failure. Workers stream outcomes back in small chunks, so progress and the report never
wait for a whole batch. A worker that dies is replaced and the files of its batch that have no outcome
yet go back to the queue.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait

from . import status as st
from .acse import AssociationRejected
from .net import ProtocolError
from .plan import Batch, ContextGroup, choose_context
from .report import AssociationRecord, Outcome, Report
from .scan import verify_dataset
from .scu import AssociationOptions, StoreSCU
from .transcode import EditOptions, encode_dataset
from .uids import ts_name

log = logging.getLogger("batchstore.dispatch")

#: Outcomes are sent to the coordinator when this many are buffered, or after `FLUSH_SECONDS`.
FLUSH_COUNT = 64
FLUSH_SECONDS = 0.2


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
        self.local_assoc = 0
        self.halted = False
        self._buffer: list[Outcome] = []
        self._last_flush = time.monotonic()
        self._batch_index = -1

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
        scu = StoreSCU(self.config.association, contexts)
        accept = scu.open()
        self.scu = scu
        self.group = group
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
            outcome = self.send_one(batch, inst, start_index + offset)
            self.emit(outcome)
            if self.config.halt_on_failure and outcome.category in (st.TRANSIENT, st.PERMANENT):
                self.halted = True  # storescu's default: halt on the first unsuccessful store
                self.flush()
        self.flush()

    def _outcome(self, inst, category: str, **kw) -> Outcome:  # type: ignore[no-untyped-def]
        return Outcome(
            path=inst.path,
            sop_class_uid=inst.sop_class_uid,
            sop_instance_uid=kw.pop("sop_instance_uid", inst.sop_instance_uid),
            original_ts=inst.transfer_syntax,
            category=category,
            worker=self.id,
            size=inst.size,
            **kw,
        )

    def send_one(self, batch: Batch, inst, index: int) -> Outcome:  # type: ignore[no-untyped-def]
        config = self.config
        start = time.perf_counter()
        if config.verify and not config.read_dataset_only:
            reason = verify_dataset(inst.path, inst.data_offset, inst.transfer_syntax)
            if reason:
                return self._outcome(inst, st.PERMANENT, error=reason, attempts=0)
        attempts = 0
        while True:
            attempts += 1
            try:
                scu = self.association(batch.context_group)
            except (OSError, AssociationRejected, ProtocolError, PermissionError) as exc:
                category = st.classify_error(exc)
                if category == st.TRANSIENT and attempts <= config.retries:
                    log.info("worker %d: association failed (%s); retrying", self.id, exc)
                    time.sleep(backoff(attempts, config.retry_wait))
                    continue
                return self._outcome(
                    inst,
                    category,
                    error=st.describe_error(exc),
                    attempts=attempts,
                    duration_ms=(time.perf_counter() - start) * 1000,
                )
            group = config.context_groups[batch.context_group]
            choice = choose_context(group, inst.sop_class_uid, inst.transfer_syntax, scu.accepted())
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
            except (OSError, ProtocolError) as exc:
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
    worker = Worker(worker_id, conn, config)
    try:
        conn.send(("ready", worker_id, worker.group))
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the coordinator is gone: do not send on
            if message[0] == "batch":
                worker.run_batch(message[1], message[2])
                conn.send(("ready", worker_id, worker.group))
            elif message[0] == "halt":
                worker.halted = True
                conn.send(("ready", worker_id, worker.group))
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

    def _record(self, wid: int, outcomes: list[Outcome]) -> None:
        fixed = []
        for o in outcomes:
            number = self.assoc_numbers.get((wid, o.association), 0) if o.association else 0
            fixed.append(replace(o, association=number))
        self.report.outcomes.extend(fixed)
        self.report.retries += sum(max(0, o.attempts - 1) for o in fixed)
        if self.on_outcomes:
            self.on_outcomes(fixed)
        if self.config.halt_on_failure and any(o.category in (st.TRANSIENT, st.PERMANENT) for o in fixed):
            self.report.halted = True
            self.halt()

    def _handle(self, wid: int, slot: _Slot, message: tuple) -> None:
        kind = message[0]
        if kind == "results":
            slot.done_in_batch += len(message[3])
            self._record(wid, message[3])
        elif kind == "assoc":
            number = len(self.report.associations) + 1
            self.assoc_numbers[(wid, message[2])] = number
            self.report.associations.append(replace(message[3], number=number))
        elif kind == "ready":
            slot.batch = None
            nxt = self._next_batch(message[2])
            if nxt is None:
                slot.conn.send(("stop",))
            else:
                slot.batch, slot.start_index = nxt
                slot.done_in_batch = 0
                slot.conn.send(("batch", slot.batch, slot.start_index))
        elif kind == "bye":
            slot.finished = True

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

    def run(self) -> None:
        """Dispatch every batch; return when all workers have finished."""
        for _ in range(self.workers):
            self._spawn()
        try:
            self._loop()
        except KeyboardInterrupt:
            self.report.interrupted = True
            self.halt()
            self._loop()
        finally:
            for slot in self.slots.values():
                slot.process.join(timeout=5)
                if slot.process.is_alive():
                    slot.process.kill()
            self._mark_unsent()

    def _loop(self) -> None:
        while any(not s.finished for s in self.slots.values()):
            live = {s.conn: wid for wid, s in self.slots.items() if not s.finished}
            sentinels = {self.slots[wid].process.sentinel: wid for wid in live.values()}
            ready = wait(list(live) + list(sentinels), timeout=1.0)
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
                    unsent.append(
                        Outcome(
                            path=inst.path,
                            sop_class_uid=inst.sop_class_uid,
                            sop_instance_uid=inst.sop_instance_uid,
                            original_ts=inst.transfer_syntax,
                            category=st.NOT_SENT,
                            error=reason,
                            size=inst.size,
                        )
                    )
        if unsent:
            self.report.outcomes.extend(unsent)
            if self.on_outcomes:
                self.on_outcomes(unsent)
