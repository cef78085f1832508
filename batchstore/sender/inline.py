"""A small send without worker processes: the coordinator runs its one worker in its own process.

For a run of a few hundred small files, forking a worker, the pipe's round trips and pickling the batches
and outcomes cost more than a second association gains (docs/design.md, "Small runs"). `InlineCoordinator`
keeps everything else of `Coordinator`: the same `Worker` sends the files (retries, their classification,
files set aside, halt and ``-nh``), the same messages reach the same handlers (report, journal, progress,
association failures, backoff), only the transport is a function call instead of a pipe:

- what the worker sends is handled at once (`Coordinator._handle`), so outcomes reach the journal and the
  progress bar as they do from a worker process, chunk by chunk;
- what the coordinator sends (`RunBatch`, `Connect`, `Halt`, `Stop`) waits in the worker's inbox, and
  `_poll` runs the worker on the next message, as `worker.worker_main` would;
- Ctrl-C and SIGTERM set the coordinator's stop flag, which the worker reads between files (it has no
  pipe to poll) and the watchdog below within `WATCH_SECONDS` (the warning, the halt); a second one stops the file in flight: the association is aborted, the answered files
  are recorded, the rest of the batch is "not sent: run interrupted";
- a worker that raises is replaced as a dead worker process is: its answered files are kept, the rest of
  its batch goes back to the queue;
- while the worker waits for the peer, a watchdog thread notices a slow peer (`Coordinator._watch_peer`),
  as the process transport's loop does; it ends with the run.

What it gives up is the isolation of a process: a crash in a codec would end the run. So `runs_inline`
chooses it only when no file can need a codec (uncompressed and deflated syntaxes only, no compression
proposed), with the lean engine, without ``--cluster``, and for one association (``-j 1``) or an automatic
``-j`` on a small run (`INLINE_MAX_FILES`, `INLINE_MAX_BYTES`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..dicom.uids import is_encapsulated
from . import outcomes as st
from .coordinator import Coordinator, _Slot
from .messages import Connect, Halt, Ready, RunBatch, ToCoordinator
from .report import Outcome
from .worker import CHECK_SECONDS, Worker, WorkerConfig

if TYPE_CHECKING:
    from .plan import Batch

log = logging.getLogger("batchstore.dispatch")

#: With an automatic ``-j``, a run of at most this many files (and `INLINE_MAX_BYTES`) runs inline.
INLINE_MAX_FILES = 200
INLINE_MAX_BYTES = 32 * 2**20
#: How often the watchdog looks for a slow peer while the worker sends.
WATCH_SECONDS = 0.25


def runs_inline(batches: list[Batch], workers: int, config: WorkerConfig, automatic: bool) -> bool:
    """Whether the run goes through `InlineCoordinator` rather than worker processes.

    `workers` is ``-j`` (or the automatic count when `automatic`); `batches` the run's batches (with
    ``--repeat``, every repetition).
    """
    if config.engine != "batchstore" or not batches:
        return False
    if not automatic and workers != 1:
        return False  # -j N: N associations, as asked
    files = sum(len(b.instances) for b in batches)
    if automatic and workers > 1 and (
        files > INLINE_MAX_FILES or sum(b.nbytes for b in batches) > INLINE_MAX_BYTES
    ):
        return False
    # no codec in this process: nothing compressed to send, nothing to compress into
    if any(is_encapsulated(b.transfer_syntax) for b in batches):
        return False
    return not any(
        is_encapsulated(ts)
        for group in config.context_groups
        for pc in group.contexts
        for ts in pc.transfer_syntaxes
    )


class _Inbox(deque):  # type: ignore[type-arg]
    """The coordinator's end of an inline worker's "pipe": what it sends waits here for the worker."""

    def send(self, message: Any) -> None:
        self.append(message)


class _WorkerEnd:
    """The worker's end: what the worker sends is handled by the coordinator at once."""

    def __init__(self, coordinator: InlineCoordinator, wid: int) -> None:
        self.coordinator = coordinator
        self.wid = wid
        self.slot: _Slot | None = None

    def send(self, message: ToCoordinator) -> None:
        assert self.slot is not None
        self.coordinator._handle(self.wid, self.slot, message)


class InlineWorker(Worker):
    """`Worker` in the coordinator's process: it learns of a halt or a stop from the coordinator itself."""

    def __init__(self, worker_id: int, conn: Any, config: WorkerConfig, coordinator: InlineCoordinator) -> None:
        super().__init__(worker_id, conn, config)
        self.coordinator = coordinator

    def check_halt(self) -> None:
        """Between files: a Ctrl-C or SIGTERM (the coordinator's stop flag), or a halt."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_SECONDS
        coordinator = self.coordinator
        coordinator.notice_stop()
        if coordinator.halted:
            self.halted = True


class _InlineProcess:
    """What the coordinator knows of an inline worker as a process (`coordinator.WorkerHandle`)."""

    def __init__(self, worker: InlineWorker) -> None:
        self.worker = worker
        self.exitcode: int | None = None

    def end(self, code: int, graceful: bool) -> None:
        if self.exitcode is None:
            self.exitcode = code
            self.worker.close_association(graceful)

    def terminate(self) -> None:
        self.end(-15, graceful=False)

    def kill(self) -> None:
        self.end(-9, graceful=False)

    def join(self, timeout: float | None = None) -> None:
        return None

    def is_alive(self) -> bool:
        return self.exitcode is None


class InlineCoordinator(Coordinator):
    """`Coordinator` whose worker runs in this process (see the module's docstring)."""

    def run(self) -> None:
        files = sum(len(batch.instances) for queue in self.queues.values() for batch, _ in queue)
        log.info("%d file(s): sent from this process, over one association (no worker process)", files)
        self._lock = threading.Lock()  # the coordinator's state, between this thread and the watchdog
        self._stepping = False
        done = threading.Event()
        watchdog = threading.Thread(target=self._watchdog, args=(done,), name="batchstore-slow-peer", daemon=True)
        watchdog.start()
        try:
            super().run()
        finally:
            done.set()
            watchdog.join()

    def _watchdog(self, done: threading.Event) -> None:
        """While the worker waits for the peer, notice a stop and a slow peer as the process transport's
        loop does (`Coordinator._watch_peer`: the log, ``on_wait``, the summary); the loop does it between
        turns."""
        while not done.wait(WATCH_SECONDS):
            self.notice_stop()
            with self._lock:
                if self._stepping:
                    Coordinator._watch_peer(self)

    def notice_stop(self) -> None:
        """A Ctrl-C or SIGTERM (the stop flag `request_stop` set): say so and halt, once, as the process
        transport's loop does; the worker finishes the file in flight."""
        if self.stop_requested and not self.report.interrupted:
            with self._lock:
                if self.report.interrupted:
                    return
                log.warning("interrupted: finishing the C-STOREs in flight, then stopping")
                self.report.interrupted = True
                self.halt()

    def _watch_peer(self, final: bool = False) -> None:
        with self._lock:
            super()._watch_peer(final)

    def _handle(self, wid: int, slot: _Slot, message: ToCoordinator) -> None:
        with self._lock:
            super()._handle(wid, slot, message)

    def _spawn(self) -> None:
        wid = self.next_worker_id
        self.next_worker_id += 1
        end = _WorkerEnd(self, wid)
        worker = InlineWorker(wid, end, self.config, self)
        slot = _Slot(_InlineProcess(worker), _Inbox())
        end.slot = slot
        self.slots[wid] = slot
        end.send(Ready(wid, worker.group))

    def _poll(self) -> None:
        """Run a worker on the next message it was sent; with none (a worker parked after an association
        failure), wait as the process transport does, at most 0.2 s."""
        for wid, slot in list(self.slots.items()):
            if not slot.finished and slot.conn:
                self._step(wid, slot, slot.conn.popleft())
                return
        now = time.monotonic()
        waits = [s.parked_until - now for s in self.slots.values() if not s.finished and s.parked_until > now - 0.05]
        time.sleep(max(0.0, min([0.2, *waits])))

    def _step(self, wid: int, slot: _Slot, message: Any) -> None:
        """One turn of `worker.worker_main`'s loop."""
        process: _InlineProcess = slot.process  # type: ignore[assignment]
        worker = process.worker
        self._stepping = True
        try:
            if isinstance(message, RunBatch):
                worker.run_batch(message.batch, message.start_index, message.retry_of)
                worker.conn.send(worker.ready())
            elif isinstance(message, Connect):
                worker.connect(message.group)
            elif isinstance(message, Halt):
                worker.halted = True
                worker.conn.send(worker.ready())
            else:  # Stop
                process.end(0, graceful=True)
                slot.finished = True  # its `Bye`
        except KeyboardInterrupt:  # a second Ctrl-C: the file in flight is given up
            self._interrupted(wid, slot, process)
            raise
        except Exception:
            log.exception("worker %d failed", wid)
            process.end(1, graceful=False)
            self._keep_answered(worker)
            self._worker_died(wid, slot)
        finally:
            self._stepping = False

    def _keep_answered(self, worker: InlineWorker) -> None:
        """Record the outcomes the worker holds but has not passed on yet (the peer answered them)."""
        try:
            worker.flush()
        except Exception:  # noqa: BLE001 - the outcomes are lost; the files are requeued or marked unsent
            log.exception("worker %d: outcomes lost", worker.id)

    def _interrupted(self, wid: int, slot: _Slot, process: _InlineProcess) -> None:
        process.end(130, graceful=False)
        self._keep_answered(process.worker)
        slot.finished = True
        batch, slot.batch = slot.batch, None
        if batch is not None:
            rest = self._unreported(wid, batch, slot.done_in_batch)
            self._record(
                wid,
                [Outcome.of(inst, st.NOT_SENT, "not sent: run interrupted", worker=wid) for inst in rest],
                count_retries=False,
            )
