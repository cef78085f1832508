"""``send --cluster``, on the Dask worker: the task that runs a slot's messages (`run_task`), the slots'
workers and associations kept between tasks, and the halt broadcast (`halt_here`).

`cluster.py` is the coordinator's side and says how the two fit together (docs/design.md, "Beyond one
machine"). A LocalCluster's workers import this module while they start (``preload``), not in the first task.
"""

from __future__ import annotations

import contextlib
import gc
import pickle
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import outcomes as st
from .messages import Bye, Connect, Halt, Results, RunBatch, Stop, ToCoordinator, ToWorker
from .worker import GC_THRESHOLDS, CoordinatorGone, Worker

#: An association left idle this long on a Dask worker (its coordinator gone) is released.
IDLE_RELEASE_SECONDS = 30.0
#: What an unreadable input's error adds on a cluster: the worker, and where inputs must be.
SHARED_STORAGE_NOTE = (
    " (on Dask worker {worker}: inputs must be on storage every worker sees at the same path)"
)


@dataclass
class _Held:
    """A slot's `Worker` (and its association) on this Dask worker process, between tasks.

    Its lock is held while a task sends over the association. A slot's next batch, started by Dask in
    another thread while the current one sends (`cluster.LOCAL_THREADS`), waits on it and sends the moment
    the current task lets go: no trip through the Dask worker's event loop between two batches."""

    worker: Worker
    lock: threading.RLock = field(default_factory=threading.RLock)
    last_used: float = field(default_factory=time.monotonic)


#: (run, slot) -> the slot's worker, for the batches of that slot this process runs
_HELD: dict[tuple[str, int], _Held] = {}
_HELD_LOCK = threading.Lock()
_reaper: threading.Thread | None = None
#: the runs whose coordinator broadcast a halt (`halt_here`)
_HALTED: set[str] = set()


def halt_here(run: str) -> None:
    """Run by `Client.run` on every Dask worker process (in its event loop, while tasks send): `run`
    halted. Its batches stop at their next file; its queued batches do not start."""
    _HALTED.add(run)


class _TaskChannel:
    """A `Worker`'s connection inside one task: what it sends is the task's result; what it polls is
    whether the run halted (`halt_here`)."""

    def __init__(self, run: str) -> None:
        self.out: list[ToCoordinator] = []
        self.run = run

    def send(self, message: ToCoordinator) -> None:
        self.out.append(message)

    def poll(self, timeout: float | None = None) -> bool:
        return self.run in _HALTED

    def recv(self) -> ToWorker:
        return Halt()


def _release_idle() -> None:
    """Release the associations of slots idle for `IDLE_RELEASE_SECONDS` (their coordinator is gone or
    has no work for them); runs in a daemon thread of the Dask worker process."""
    while True:
        time.sleep(IDLE_RELEASE_SECONDS / 6)
        now = time.monotonic()
        with _HELD_LOCK:
            idle = [(key, held) for key, held in _HELD.items() if now - held.last_used > IDLE_RELEASE_SECONDS]
        for key, held in idle:
            if held.lock.acquire(blocking=False):
                try:
                    held.worker.close_association()
                    with _HELD_LOCK:
                        _HELD.pop(key, None)
                finally:
                    held.lock.release()


def _held(run: str, wid: int, config: bytes, create: bool) -> tuple[_Held | None, bool]:
    """The slot's `_Held` in this process, and whether it was created now."""
    global _reaper
    with _HELD_LOCK:
        held = _HELD.get((run, wid))
        if held is not None or not create:
            return held, False
        worker = Worker(wid, None, pickle.loads(config))  # type: ignore[arg-type]
        held = _HELD[(run, wid)] = _Held(worker)
        if _reaper is None:
            _reaper = threading.Thread(target=_release_idle, name="batchstore-release", daemon=True)
            _reaper.start()
        return held, True


@contextlib.contextmanager
def _quiet_gc() -> Iterator[None]:
    """The send loop's collector thresholds (`worker.GC_THRESHOLDS`) while a task sends; the Dask
    worker's own afterwards."""
    previous = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def _missed_halt(run: str, halt_event: str) -> None:
    """A batch whose slot is new here (its Dask worker left, and Dask ran the task on this one): a halt
    broadcast before this process joined the cluster did not reach it; the run's halt event says. (Not
    for every task: a Dask worker's first `Event` starts a client of its own, which costs every run.)"""
    from distributed import Event

    if run not in _HALTED and Event(halt_event).is_set():
        _HALTED.add(run)


def results_topic(run: str) -> str:
    """The Dask event topic on which a run's tasks send back what their messages did."""
    return f"batchstore-{run}"


def run_task(
    run: str,
    wid: int,
    config: bytes,
    halt_event: str,
    blob: bytes,
    queued: bool = False,
    then: bytes | None = None,
) -> tuple[str, tuple[bytes | None, ...]]:
    """One task on a Dask worker: run the pickled message `blob` as slot `wid`'s worker process would.

    Returns this Dask worker's address and, per message, what the worker said (pickled), and sends the
    same at once as an event of the run's topic (`results_topic`), which reaches the coordinator sooner
    than a task's result, fetched on request. A `queued` batch (submitted while the slot's previous one
    ran) is sent only over the association the slot holds here, and only if the run has not halted; else
    nothing is done and what the worker said is None: the coordinator requeues the batch. `then`, with a
    `Connect`: a batch run as a queued one right after it, in the same task (one task fewer per
    association)."""
    from distributed import get_worker

    dask_worker = get_worker()
    address = dask_worker.address
    message = pickle.loads(blob)
    if then is None:
        said = [_run_message(run, wid, config, halt_event, message, queued, address)]
    else:
        # the lock across both: the slot's next batch, waiting for it in another thread, goes after this one
        held, _ = _held(run, wid, config, create=True)
        assert held is not None
        batch = pickle.loads(then)
        with held.lock:
            said = [_run_message(run, wid, config, halt_event, message, queued, address)]
            said.append(_run_message(run, wid, config, halt_event, batch, True, address))
    key = dask_worker.get_current_task()
    dask_worker.log_event(results_topic(run), {"key": key, "address": address, "said": said})
    return address, tuple(said)


def _run_message(
    run: str, wid: int, config: bytes, halt_event: str, message: ToWorker, queued: bool, address: str
) -> bytes | None:
    """`run_task`'s work for one message: what the worker said, pickled (None: a queued batch not run)."""
    held, created = _held(run, wid, config, create=not (queued or isinstance(message, Stop)))
    if created and isinstance(message, RunBatch):
        _missed_halt(run, halt_event)
    if held is None:  # a Stop for a slot this process never held (its worker died): nothing to release
        return None if queued else _pack([Bye(wid)])
    with held.lock, _quiet_gc():
        worker = held.worker
        if queued and (run in _HALTED or worker.halted or worker.scu is None or not worker.scu.is_open):
            return None
        channel = _TaskChannel(run)
        worker.conn = channel  # type: ignore[assignment]
        try:
            if isinstance(message, RunBatch):
                try:
                    worker.run_batch(message.batch, message.start_index, message.retry_of)
                except CoordinatorGone:
                    pass
                worker.flush()
                channel.send(worker.ready())
            elif isinstance(message, Connect):
                worker.connect(message.group)
            elif isinstance(message, Stop):
                worker.close_association()
                with _HELD_LOCK:
                    _HELD.pop((run, wid), None)
                channel.send(Bye(wid))
        finally:
            held.last_used = time.monotonic()
    _note_unreadable(channel.out, address)
    return _pack(channel.out)


def _pack(messages: list[ToCoordinator]) -> bytes:
    return pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)


def _note_unreadable(messages: list[ToCoordinator], address: str) -> None:
    """Say on which Dask worker an input could not be read, and that inputs must be on shared storage."""
    for message in messages:
        if isinstance(message, Results) and message.failures:
            for outcome in message.outcomes:
                if outcome.category == st.PERMANENT and outcome.error.startswith("cannot read"):
                    outcome.error += SHARED_STORAGE_NOTE.format(worker=address)
