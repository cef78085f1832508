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
from typing import TYPE_CHECKING, NamedTuple

from ..dicom.codecs import NotEncodable
from ..dicom.part10 import SMALL_DATASET, Instance, read_dataset_bytes, verify_bytes, verify_dataset
from ..dicom.transcode import EditOptions, Encoded, encode_dataset, read_padded
from ..dicom.uids import DEFLATED_EXPLICIT_VR_LE, ts_name
from ..net.errors import NetError
from . import outcomes as st
from .engine import StoreEngine, StoreResponse
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
)
from .plan import Batch, ContextGroup, context_choices, no_context_reason
from .report import AssociationRecord, Outcome
from .scu import AssociationOptions, StoreSCU

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

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


#: What a file's error says after the retry verdict of `Worker._after_transient`.
_VERDICT_NOTE = {"permanent": st.FILE_PROBLEM, "budget": " (retry budget of {budget:g} s spent)"}


class WorkerConfig(NamedTuple):
    """Everything a worker needs; pickled once per worker (a named tuple: see `AssociationOptions`)."""

    association: AssociationOptions
    context_groups: tuple[ContextGroup, ...]
    edits: EditOptions = EditOptions()
    read_dataset_only: bool = False
    halt_on_failure: bool = True
    abort_at_end: bool = False
    retries: int = 3
    retry_wait: float = 1.0
    retry_budget: float = 120.0  # seconds a file may cost before its retries stop (--retry-budget)
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
        # (SOP class, file syntax) -> context_choices's answer on the current association
        self._choices: dict[tuple[str, str], tuple[tuple[int, str, str], ...]] = {}
        self.local_assoc = 0
        self.halted = False
        self._buffer: list[Outcome] = []
        self._last_flush = time.monotonic()
        self._next_check = 0.0
        self._batch_index = -1
        self.parent = os.getppid()
        # Learning from the peer (outcomes.Attribution): counters kept only on failures and per chunk
        self._flushed = 0  # outcomes sent to the coordinator
        self._failures = 0  # of the outcomes emitted, how many failed (counted where a failure is made)
        self._local = 0  # of those failures, how many never reached the peer (no evidence about it)
        self._flushed_failures = 0  # `_failures` at the last flush
        self._last_ok = False  # the last flushed outcome was a delivery
        #: files whose first transient failure put them aside: (file, index, what happened), retried once
        #: after the rest of their batch (-nh only)
        self._deferred: list[tuple[Instance, int, st.Attribution]] = []
        self._later: list[tuple[Instance, int, st.Attribution]] = []  # no evidence yet: `messages.Later`
        self._phase: tuple[int, int, int] | None = None  # (emitted, failures) when the put-aside files' retries began

    # -- messages --------------------------------------------------------------------------------
    def flush(self) -> None:
        if self._buffer:
            failed, self._flushed_failures = self._failures - self._flushed_failures, self._failures
            self.conn.send(Results(self.id, self._batch_index, self._buffer, failed))
            self._flushed += len(self._buffer)
            self._last_ok = self._buffer[-1].delivered
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

    def ready(self) -> Ready:
        """The message that asks for more work, naming the context group this worker's association holds."""
        return Ready(self.id, self.group if self.scu is not None else -1)

    def connect(self, group: int) -> None:
        """Associate before taking a batch (`messages.Connect`): a peer that makes us wait (full backlog)
        or turns us away holds no files hostage."""
        try:
            self.association(group)
        except (OSError, NetError) as exc:
            transient = st.classify_error(exc) == st.TRANSIENT
            self.conn.send(ConnectFailed(self.id, st.describe_error(exc), transient))
        self.conn.send(self.ready())

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
    def run_batch(self, batch: Batch, start_index: int, retry_of: tuple[st.Attribution, ...] = ()) -> None:
        self._batch_index = batch.index
        if retry_of:  # files sent back for a last retry after other files (messages.Later)
            previous_ok = self._buffer[-1].delivered if self._buffer else self._last_ok
            emitted = self._flushed + len(self._buffer)
            self._deferred = [
                (inst, start_index + k, first._replace(emitted=emitted, failures=self._failures, local=self._local,
                                                       previous_ok=previous_ok or first.previous_ok, last_chance=True))
                for k, (inst, first) in enumerate(zip(batch.instances, retry_of, strict=True))
            ]  # fmt: skip
            self._retry_deferred(batch, start_index)
            self.flush()
            return
        for offset, inst in enumerate(batch.instances):
            self.check_halt()
            if self.halted:
                self.emit(self._outcome(inst, st.NOT_SENT, error="not sent: run halted"))
                continue
            try:
                outcome = self.send_one(batch, inst, start_index + offset)
            except _GiveBack as exc:
                self._give_back(batch, offset, start_index, exc)
                return
            if outcome is None:  # put aside after a transient failure: retried after the rest of the batch
                continue
            self.emit(outcome)
            if self.config.halt_on_failure and outcome.category in (st.TRANSIENT, st.PERMANENT):
                self.halted = True  # storescu's default: halt on the first unsuccessful store
                self.flush()
        if self._deferred:
            self._retry_deferred(batch, start_index)
        self.flush()

    def _give_back(self, batch: Batch, offset: int, start_index: int, exc: _GiveBack) -> None:
        """No association: the files from `offset` on, and those put aside, go back to the coordinator."""
        aside = tuple(index - start_index for _inst, index, _first in self._deferred)
        self._deferred = []
        self.flush()
        self.conn.send(GiveBack(self.id, batch.index, offset, str(exc), aside))

    def _retry_deferred(self, batch: Batch, start_index: int) -> None:
        """Retry, once each, the files put aside after a transient failure (outcomes.repeats_for_file).

        The peer's record is read at the start of this phase: another put-aside file failing again here
        is no evidence against the peer (only deliveries in this phase count).
        """
        self._phase = (self._flushed + len(self._buffer), self._failures, self._local)
        try:
            self._retry_deferred_files(batch, start_index)
        finally:
            self._phase = None
        if self._later:
            later, self._later = self._later, []
            self.flush()
            self.conn.send(
                Later(self.id, batch.index, tuple(i - start_index for _, i, _ in later),
                      tuple(first for _, _, first in later))
            )  # fmt: skip

    def _retry_deferred_files(self, batch: Batch, start_index: int) -> None:
        while self._deferred:
            inst, index, first = self._deferred.pop(0)
            self.check_halt()
            if self.halted:
                self.emit(self._outcome(inst, st.NOT_SENT, error="not sent: run halted"))
                continue
            if not (first.previous_ok or first.last_chance) and self._evidence(first)[0] == 0:
                # nothing the peer answered around it: a retry now would tell nothing; it goes to the end
                # of the queue (messages.Later) and is retried once after other files
                self._later.append((inst, index, first))
                continue
            try:
                outcome = self.send_one(batch, inst, index, first)
            except _GiveBack as exc:
                self._deferred.insert(0, (inst, index, first))
                self._give_back(batch, len(batch.instances), start_index, exc)
                return
            if outcome is not None:
                self.emit(outcome)

    def _after_transient(
        self,
        inst: Instance,
        index: int,
        retry_of: st.Attribution | None,
        kind: str,
        error: str,
        attempts: int,
        start: float,
        status: int | None,
    ) -> str:
        """What to do after a transient failure of `inst`: "defer", "retry" (waited), "permanent" (the
        file's own problem: it repeated while the peer accepted others) or "transient" (give up).

        Runs only on failures: the evidence comes from counters the worker keeps per chunk and per
        failure (`Attribution`), never per delivered file.
        """
        config = self.config
        spent = time.perf_counter() - start
        if retry_of is None and attempts == 1 and not config.halt_on_failure and config.retries > 0:
            previous_ok = self._buffer[-1].delivered if self._buffer else self._last_ok
            if status is not None and not previous_ok:
                self.conn.send(Busy(self.id, status))  # failures in a row: the peer may be overloaded
            emitted = self._flushed + len(self._buffer)
            first = st.Attribution(kind, error, emitted, self._failures, previous_ok, spent, self._local)
            self._deferred.append((inst, index, first))
            return "defer"
        if retry_of is not None and attempts == retry_of.attempts + 1:
            sent, accepted = self._evidence(retry_of)
            if st.repeats_for_file(retry_of, kind, sent, accepted):
                return "permanent"
        if status is not None:
            self.conn.send(Busy(self.id, status))  # the peer is out of resources: fewer workers
        if attempts <= config.retries:
            wait = backoff(attempts, config.retry_wait)
            if spent + wait <= config.retry_budget:
                log.info("worker %d: %s while sending %s; retrying", self.id, error, inst.path)
                time.sleep(wait)
                return "retry"
            return "budget"
        return "transient"

    def _evidence(self, first: st.Attribution) -> tuple[int, int]:
        """(files the peer answered, files it accepted) since `first` failed; put-aside files failing
        again in the retry phase do not count against the peer (only its deliveries in the phase do)."""
        emitted, failures, local = self._flushed + len(self._buffer), self._failures, self._local
        phase_emitted, phase_failures, phase_local = self._phase or (emitted, failures, local)
        accepted = (phase_emitted - first.emitted) - (phase_failures - first.failures)
        sent = (phase_emitted - first.emitted) - (phase_local - first.local)
        since_phase = (emitted - phase_emitted) - (failures - phase_failures)  # delivered in the phase
        return sent + since_phase, accepted + since_phase

    def _outcome(self, inst: Instance, category: str, **kw) -> Outcome:  # type: ignore[no-untyped-def]
        """The outcome of a file that was not delivered (never used for a delivery: it counts failures).

        One without an `association` never reached the peer: it says nothing about the peer."""
        self._failures += 1
        if "association" not in kw:
            self._local += 1
        return Outcome.of(inst, category, worker=self.id, **kw)

    def send_one(
        self, batch: Batch, inst: Instance, index: int, retry_of: st.Attribution | None = None
    ) -> Outcome | None:
        """Check, send (retrying transient failures) and classify one file; never raises for the file's sake.

        Returns None when the file was put aside after a transient failure (`-nh`): `run_batch` retries it
        once after the rest of the batch, passing its first failure as `retry_of`.

        The file's own bytes (`data`, read once when small) and an attempt's converted data set (`payload`)
        are kept apart: an attempt on an as-is context always sends the file's own bytes.
        """
        config = self.config
        start = time.perf_counter() - (retry_of.spent if retry_of is not None else 0.0)
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
        attempts = retry_of.attempts if retry_of is not None else 0
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
                choices = self._choices[key]
            except KeyError:
                group = config.context_groups[batch.context_group]
                choices = self._choices[key] = context_choices(group, *key, scu.accepted())
            if not choices:
                return self._outcome(
                    inst,
                    st.PERMANENT,
                    error=no_context_reason(config.context_groups[batch.context_group], inst.transfer_syntax),
                    attempts=attempts,
                    association=self.local_assoc,
                )
            context_id, send_ts, mode = choices[0]
            uid = inst.sop_instance_uid
            decoded = False
            try:
                if mode == "as-is" and not config.edits.any:
                    rsp = self._store_as_is(scu, context_id, inst, data)
                else:
                    picked = self._convert(inst, choices, index)
                    if isinstance(picked, str):
                        return self._outcome(inst, st.PERMANENT, error=picked, attempts=attempts)
                    context_id, send_ts, encoded = picked
                    if encoded is None:  # the file could not be compressed: its own syntax, as is
                        rsp = self._store_as_is(scu, context_id, inst, data)
                    else:
                        uid, decoded = encoded.sop_instance_uid, encoded.pixels_decoded
                        rsp = scu.store_bytes(context_id, inst.sop_class_uid, uid, memoryview(encoded.payload))
            except (OSError, NetError) as exc:
                if isinstance(exc, FileNotFoundError) or (
                    isinstance(exc, OSError) and exc.filename == inst.path
                ):
                    # The file itself, not the network: the association may be mid-message; drop it.
                    self.close_association(graceful=False)
                    return self._outcome(inst, st.PERMANENT, error=f"cannot read: {exc}", attempts=attempts)
                self.close_association(graceful=False)
                category = st.classify_error(exc)
                error = st.describe_error(exc)
                if category == st.TRANSIENT:
                    verdict = self._after_transient(
                        inst, index, retry_of, st.failure_kind(None, exc), error, attempts, start, None
                    )
                    if verdict == "defer":
                        return None
                    if verdict == "retry":
                        continue
                    error += _VERDICT_NOTE.get(verdict, "").format(budget=config.retry_budget)
                    if verdict == "permanent":
                        category = st.PERMANENT
                return self._outcome(
                    inst,
                    category,
                    error=error,
                    attempts=attempts,
                    association=self.local_assoc,
                    context_id=context_id,
                    sent_ts=send_ts,
                    duration_ms=(time.perf_counter() - start) * 1000,
                )
            status = rsp.status
            category = st.SUCCESS if status == 0 else st.classify_status(status)
            error = ""
            if category != st.SUCCESS:
                error = st.status_text(rsp.status) + (f": {rsp.error_comment}" if rsp.error_comment else "")
                if category == st.TRANSIENT:
                    verdict = self._after_transient(
                        inst, index, retry_of, st.failure_kind(rsp.status), error, attempts, start, rsp.status
                    )
                    if verdict == "defer":
                        return None
                    if verdict == "retry":
                        continue
                    error += _VERDICT_NOTE.get(verdict, "").format(budget=config.retry_budget)
                    if verdict == "permanent":
                        category = st.PERMANENT
                if category != st.WARNING:
                    self._failures += 1
            # Outcome itself rather than Outcome.of, its fields in order (report.OUTCOME_FIELDS): calling
            # a class with keywords builds a dictionary of them first
            return Outcome(
                inst.path, inst.sop_class_uid, uid, inst.transfer_syntax, send_ts, decoded, category, status,
                error, self.local_assoc, context_id, (time.perf_counter() - start) * 1000, attempts, self.id,
                inst.size,
            )  # fmt: skip

    def _store_as_is(
        self, scu: StoreEngine, context_id: int, inst: Instance, data: bytes | None
    ) -> StoreResponse:
        """Send the file's own data set bytes: from memory when read already, else from the file."""
        if data is not None:
            return scu.store_bytes(context_id, inst.sop_class_uid, inst.sop_instance_uid, data)
        if inst.transfer_syntax == DEFLATED_EXPLICIT_VR_LE and (inst.size - inst.data_offset) % 2:
            # an odd deflate stream gets its pad byte (PS3.5 A.5): DCMTK and Orthanc abort on odd fragments
            padded = read_padded(inst.path, inst.data_offset)
            return scu.store_bytes(context_id, inst.sop_class_uid, inst.sop_instance_uid, padded)
        return scu.store_file(
            context_id, inst.sop_class_uid, inst.sop_instance_uid, inst.path, inst.data_offset
        )

    def _convert(
        self, inst: Instance, choices: tuple[tuple[int, str, str], ...], index: int
    ) -> tuple[int, str, Encoded | None] | str:
        """Encode the file for the first choice that takes it (docs/design.md, "Transfer syntax conversion").

        Returns (context ID, syntax, the encoded data set, or None to send the file as is), or the reason
        nothing worked. Compressing falls back to the next choice when the file cannot be compressed.
        """
        config = self.config
        reason = ""
        for context_id, send_ts, mode in choices:
            if mode == "as-is" and not config.edits.any:
                return context_id, send_ts, None
            try:
                encoded = encode_dataset(
                    inst.path, inst.transfer_syntax, send_ts, config.edits, index, config.read_dataset_only
                )
            except NotEncodable as exc:
                reason = f"cannot compress to {ts_name(send_ts)}: {exc}"
                continue
            except Exception as exc:  # pydicom or a codec could not decode or encode this file
                verb = "decompress" if mode == "decompress" else "convert"
                return f"cannot {verb} to {ts_name(send_ts)}: {exc}"
            return context_id, send_ts, encoded
        return reason or "no accepted presentation context"


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
                    worker.run_batch(message.batch, message.start_index, message.retry_of)
                    conn.send(worker.ready())
                except (CoordinatorGone, EOFError, OSError):
                    break
            elif isinstance(message, Connect):
                worker.connect(message.group)
            elif isinstance(message, Halt):
                worker.halted = True
                conn.send(worker.ready())
            else:
                break
    finally:
        worker.close_association()
        try:
            conn.send(Bye(worker_id))
        except (OSError, ValueError):
            pass
