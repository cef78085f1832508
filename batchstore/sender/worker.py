"""A worker process: runs the batches the coordinator hands it over one association at a time.

Each worker holds one association (per context group) across batches and asks for more work naming the
context group it holds. It streams outcomes back in chunks of at most `FLUSH_COUNT` and looks for a halt
from the coordinator (or the coordinator's death) at most every `CHECK_SECONDS`. A worker that cannot
open an association for a transient reason gives the rest of its batch back (`messages.GiveBack`).
Workers exit when the coordinator is gone (EOF on the pipe or a new parent process).
"""

from __future__ import annotations

import gc
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

from ..dicom.part10 import SMALL_DATASET, Instance, read_dataset_bytes, verify_bytes, verify_dataset
from ..dicom.transcode import EditOptions, encode_dataset
from ..dicom.uids import DEFLATED_EXPLICIT_VR_LE, ts_name
from ..net.errors import NetError
from . import outcomes as st
from .engine import StoreEngine
from .messages import (
    AssociationOpened,
    Busy,
    Bye,
    Connect,
    ConnectFailed,
    GiveBack,
    Halt,
    Ready,
    Results,
    RunBatch,
    Stop,
)
from .plan import Batch, ContextGroup, choose_context
from .report import AssociationRecord, Outcome
from .scu import AssociationOptions, StoreSCU

log = logging.getLogger("batchstore.dispatch")

#: Outcomes are sent to the coordinator when this many are buffered, or after `FLUSH_SECONDS`.
FLUSH_COUNT = 64
FLUSH_SECONDS = 0.2
#: How often a worker looks for a halt from the coordinator (or its death) while sending.
CHECK_SECONDS = 0.01


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
        self.scu: StoreEngine | None = None
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
            self.conn.send(Results(self.id, self._batch_index, self._buffer))
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
            if isinstance(message, (Halt, Stop)):
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

    def association(self, group: int) -> StoreEngine:
        if self.scu is not None and self.scu.is_open and self.group == group:
            return self.scu
        self.close_association()
        contexts = tuple(
            (pc.context_id, pc.abstract_syntax, tuple(pc.transfer_syntaxes))
            for pc in self.config.context_groups[group].contexts
        )
        scu: StoreEngine
        if self.config.engine == "pynetdicom":
            from .scu_pynetdicom import PynetdicomSCU

            scu = PynetdicomSCU(self.config.association, contexts)
        else:
            scu = StoreSCU(self.config.association, contexts)
        accept = scu.open()
        self.scu = scu
        self.group = group
        self._choices = {}
        self.local_assoc += 1
        self.conn.send(
            AssociationOpened(
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
                self.conn.send(GiveBack(self.id, batch.index, offset, str(exc)))
                return
            self.emit(outcome)
            if self.config.halt_on_failure and outcome.category in (st.TRANSIENT, st.PERMANENT):
                self.halted = True  # storescu's default: halt on the first unsuccessful store
                self.flush()
        self.flush()

    def _outcome(self, inst: Instance, category: str, **kw) -> Outcome:  # type: ignore[no-untyped-def]
        return Outcome.of(inst, category, worker=self.id, **kw)

    def send_one(self, batch: Batch, inst: Instance, index: int) -> Outcome:
        """Check, send (retrying transient failures) and classify one file; never raises for the file's sake.

        The file's own bytes (`data`, read once when small) and an attempt's converted data set (`payload`)
        are kept apart: an attempt on an as-is context always sends the file's own bytes.
        """
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
                        payload, uid = encode_dataset(
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
                    rsp = scu.store_bytes(context_id, inst.sop_class_uid, uid, payload)
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
                self.conn.send(Busy(self.id, rsp.status))  # the peer is out of resources: fewer workers
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
        conn.send(Ready(worker_id, worker.group))
        while True:
            try:
                if not conn.poll(1.0):
                    if os.getppid() != worker.parent:
                        break  # the coordinator is gone (and another process holds our pipe open)
                    continue
                message = conn.recv()
            except (EOFError, OSError):
                break  # the coordinator is gone: do not send on
            if isinstance(message, RunBatch):
                try:
                    worker.run_batch(message.batch, message.start_index)
                    conn.send(Ready(worker_id, worker.group if worker.scu is not None else -1))
                except (CoordinatorGone, EOFError, OSError):
                    break
            elif isinstance(message, Connect):
                # associate before taking a batch: a peer that makes us wait (full backlog) or turns us
                # away holds no files hostage
                try:
                    worker.association(message.group)
                except (OSError, NetError) as exc:
                    transient = st.classify_error(exc) == st.TRANSIENT
                    conn.send(ConnectFailed(worker_id, st.describe_error(exc), transient))
                conn.send(Ready(worker_id, worker.group if worker.scu is not None else -1))
            elif isinstance(message, Halt):
                worker.halted = True
                conn.send(Ready(worker_id, worker.group if worker.scu is not None else -1))
            else:
                break
    finally:
        worker.close_association()
        try:
            conn.send(Bye(worker_id))
        except (OSError, ValueError):
            pass
