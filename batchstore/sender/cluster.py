"""``send --cluster``: batches run as Dask tasks on the workers of a Dask distributed cluster.

The coordinator is `coordinator.Coordinator` with another transport (docs/design.md, "Beyond one machine"):

- A slot is one association: at most ``-j`` of them across the cluster. Each slot lives on one Dask worker
  (placed where the fewest slots are per worker thread) and every message the coordinator would send a
  worker process (`RunBatch`, `Connect`, `Stop`) becomes a task restricted to that Dask worker.
- On the Dask worker, the task finds the slot's `worker.Worker` in process-wide state (`_HELD`): the
  association it opened in an earlier task is still open, so a peer sees one association per slot, not
  one per batch. What the worker would tell the coordinator is returned by the task, and the coordinator
  handles it as it handles a worker process's messages (adaptive concurrency, give-back, retries).
- A Dask worker killed mid-batch loses its task's outcomes with it: Dask runs the task again on another
  worker (a loose restriction), which sends the whole batch (C-STORE is idempotent) and returns its
  outcomes once, so the journal records every file once. If Dask gives up on the task, the coordinator
  requeues the batch as it does for a dead worker process.
- A slot's next batch is submitted while its current one runs (`ClusterCoordinator._queue_next`), so its
  Dask worker starts it as soon as the current one ends instead of idling while a result travels to the
  coordinator and a new task back. A queued batch runs only on the association its slot holds; if there
  is none (it failed, the task moved to another worker) or the run halted, the task hands the batch back
  untouched and the coordinator requeues it.
- Messages travel as one pickled blob each way: Dask would otherwise pickle and unpickle a batch's
  hundreds of `Instance` and `Outcome` objects in the scheduler as well.
- A halt (the first failure without ``-nh``, Ctrl-C) is broadcast to every Dask worker process at once
  (`Client.run`): running batches stop at their next file, queued ones do not start. It also sets a Dask
  `Event` for the run, which a batch that starts on a Dask worker without its slot (one that joined after
  the broadcast) looks at once.

Dask is imported only here, and this module only with ``--cluster``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import pickle
import queue
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import outcomes as st
from .coordinator import Coordinator, _Slot
from .messages import Bye, Connect, Halt, Results, RunBatch, Stop, ToCoordinator, ToWorker
from .plan import Batch
from .report import Outcome, Report
from .worker import GC_THRESHOLDS, CoordinatorGone, Worker, WorkerConfig

log = logging.getLogger("batchstore.dispatch")

#: An association left idle this long on a Dask worker (its coordinator gone) is released.
IDLE_RELEASE_SECONDS = 30.0
#: How long to wait for a scheduler, and for a LocalCluster's workers, before giving up.
CONNECT_TIMEOUT = 10.0
#: What an unreadable input's error adds on a cluster: the worker, and where inputs must be.
SHARED_STORAGE_NOTE = (
    " (on Dask worker {worker}: inputs must be on storage every worker sees at the same path)"
)


#: A LocalCluster's Dask settings (``local:N``). Dask's statistical profiler samples every worker thread 100
#: times a second, and its event-loop watchdog, system monitor and memory monitor wake every process 50, 2
#: and 10 times a second: on a send loop, CPU the peer on the same machine does not get (docs/design.md,
#: "Beyond one machine"). The dashboard's profile page stays empty and its system graphs are coarser.
#: Work stealing would move a slot's queued batch to another worker, where it finds no association and
#: comes back untouched: a wasted round trip.
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.scheduler.work-stealing": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
}


class ClusterUnavailable(Exception):
    """``--cluster`` cannot be used: Dask is not installed, a bad address, no scheduler, no workers."""


def parse_spec(spec: str) -> tuple[str, int]:
    """``local:N`` -> ("local", N); an address -> (address, 0). Raises `ClusterUnavailable`."""
    spec = spec.strip()
    if spec.startswith("local:"):
        count = spec[len("local:") :]
        if not count.isdigit() or int(count) < 1:
            raise ClusterUnavailable(f"--cluster {spec}: local:N needs a number of workers N >= 1")
        return "local", int(count)
    if not spec or spec.startswith("local"):
        raise ClusterUnavailable(
            f"--cluster {spec!r}: expected a scheduler address (tcp://HOST:PORT) or local:N"
        )
    return (spec if "://" in spec else f"tcp://{spec}"), 0


@dataclass
class Cluster:
    """A connected Dask client and the worker threads it can use (one association each at most)."""

    client: Any
    local: Any = None  # the LocalCluster of ``local:N``, closed with the client
    _workers: dict[str, int] = field(default_factory=dict)
    _seen: float = 0.0

    def workers(self, max_age: float = 1.0) -> dict[str, int]:
        """Address -> threads of every Dask worker, at most `max_age` seconds old."""
        now = time.monotonic()
        if now - self._seen > max_age:
            info = self.client.scheduler_info(n_workers=-1)
            self._workers = {addr: int(w.get("nthreads", 1)) for addr, w in info["workers"].items()}
            self._seen = now
        return self._workers

    @property
    def threads(self) -> int:
        return sum(self.workers(max_age=0).values())

    def close(self) -> None:
        self.client.close()
        if self.local is not None:
            self.local.close()


@contextlib.contextmanager
def open_cluster(spec: str) -> Iterator[Cluster]:
    """Connect to the scheduler `spec` names, or start ``local:N``; closed on leaving."""
    where, count = parse_spec(spec)
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ClusterUnavailable(
            "--cluster needs Dask distributed: pip install 'batchstore[cluster]'"
        ) from None
    # Dask's own log (INFO by default) only with -d: batchstore's warnings say what a user needs
    if not logging.getLogger("batchstore").isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)
    local = None
    try:
        if where == "local":
            import dask

            with dask.config.set(LOCAL_CLUSTER_CONFIG):
                local = LocalCluster(
                    n_workers=count,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",  # a free port: runs side by side never collide
                    preload=[__name__],  # the tasks' code, imported while the workers start, not by the first task
                    silence_logs=logging.ERROR,
                )
            client = Client(local, timeout=CONNECT_TIMEOUT)
            log.info("local Dask cluster: %d worker(s); dashboard %s", count, client.dashboard_link)
        else:
            client = Client(where, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        if local is not None:
            local.close()
        raise ClusterUnavailable(f"--cluster {spec}: cannot reach the Dask scheduler: {exc}") from None
    cluster = Cluster(client, local)
    try:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        except TimeoutError:
            raise ClusterUnavailable(
                f"--cluster {spec}: the scheduler has no worker (start one: dask worker {where})"
            ) from None
        yield cluster
    finally:
        cluster.close()


# --- on the Dask worker ---------------------------------------------------------------------------------


@dataclass
class _Held:
    """A slot's `Worker` (and its association) on this Dask worker process, between tasks."""

    worker: Worker
    lock: threading.Lock = field(default_factory=threading.Lock)
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


def run_task(
    run: str, wid: int, config: bytes, halt_event: str, blob: bytes, queued: bool = False
) -> tuple[str, bytes | None]:
    """One task on a Dask worker: run the pickled message `blob` as slot `wid`'s worker process would;
    return this Dask worker's address and what the worker said (pickled).

    A `queued` batch (submitted while the slot's previous one ran) is sent only over the association the
    slot holds here, and only if the run has not halted; else nothing is done and the result is None:
    the coordinator requeues the batch."""
    from distributed import get_worker

    address = get_worker().address
    message: ToWorker = pickle.loads(blob)
    held, created = _held(run, wid, config, create=not (queued or isinstance(message, Stop)))
    if created and isinstance(message, RunBatch):
        _missed_halt(run, halt_event)
    if held is None:  # a Stop for a slot this process never held (its worker died): nothing to release
        return address, None if queued else _pack([Bye(wid)])
    with held.lock, _quiet_gc():
        worker = held.worker
        if queued and (run in _HALTED or worker.halted or worker.scu is None or not worker.scu.is_open):
            return address, None
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
    return address, _pack(channel.out)


def _pack(messages: list[ToCoordinator]) -> bytes:
    return pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)


def _note_unreadable(messages: list[ToCoordinator], address: str) -> None:
    """Say on which Dask worker an input could not be read, and that inputs must be on shared storage."""
    for message in messages:
        if isinstance(message, Results) and message.failures:
            for outcome in message.outcomes:
                if outcome.category == st.PERMANENT and outcome.error.startswith("cannot read"):
                    outcome.error += SHARED_STORAGE_NOTE.format(worker=address)


# --- on the coordinator -------------------------------------------------------------------------------


class _TaskHandle:
    """A slot's stand-in for a worker process: there is no process to join or kill; its tasks end."""

    exitcode: int | None = None

    def terminate(self) -> None:
        """A slot cut short while associating ends when that task does (it then gets `Stop`)."""

    def kill(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def is_alive(self) -> bool:
        return False


@dataclass
class _Queued:
    """A slot's next batch, submitted while its current one runs."""

    future: Any
    batch: Batch
    start_index: int


class _SlotChannel:
    """The coordinator's side of a slot: every message becomes a task on the slot's Dask worker."""

    def __init__(self, owner: ClusterCoordinator, wid: int, address: str) -> None:
        self.owner = owner
        self.wid = wid
        self.address = address
        self.future: Any = None  # the task whose result the slot waits for
        self.queued: _Queued | None = None  # the next one, already on the Dask worker
        self.connect_group = -1  # the context group of the last `Connect`

    def send(self, message: ToWorker) -> None:
        if isinstance(message, Halt):
            self.owner.set_halt()
            return
        if isinstance(message, Connect):
            self.connect_group = message.group
        self.future = self.submit(message)

    def submit(self, message: ToWorker, queued: bool = False) -> Any:
        owner = self.owner
        if self.address not in owner.cluster.workers():  # its Dask worker left: another one takes it
            self.address = owner.place(exclude=self.wid)
        future = owner.cluster.client.submit(
            run_task,
            owner.run_id,
            self.wid,
            owner.config_blob,
            owner.halt_event,
            pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL),
            queued,
            workers=[self.address],
            allow_other_workers=True,  # if that worker dies, Dask runs the task elsewhere
            pure=False,
            key=f"batchstore-{type(message).__name__.lower()}-{owner.run_id}-{self.wid}-{uuid.uuid4().hex[:8]}",
        )
        wid = self.wid
        future.add_done_callback(lambda _f: owner.done.put((wid, future)))
        return future


class ClusterCoordinator(Coordinator):
    """`Coordinator` whose workers are slots on a Dask cluster (module docstring)."""

    def __init__(
        self,
        batches: list[Batch],
        workers: int,
        config: WorkerConfig,
        report: Report,
        on_outcomes: Callable[[list[Outcome]], None] | None = None,
        on_wait: Callable[[float | None], None] | None = None,
        *,
        cluster: Cluster,
    ) -> None:
        super().__init__(batches, workers, config, report, on_outcomes, on_wait)
        self.cluster = cluster
        self.config_blob = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
        self.run_id = uuid.uuid4().hex
        self.halt_event = f"batchstore-halt-{self.run_id}"
        self.done: queue.Queue[tuple[int, Any]] = queue.Queue()
        self._halt_set = False

    def set_halt(self) -> None:
        if not self._halt_set:
            from distributed import Event

            self._halt_set = True
            # to every Dask worker, in a thread: one that does not answer does not hold the coordinator up
            threading.Thread(target=self._broadcast_halt, name="batchstore-halt", daemon=True).start()
            Event(self.halt_event, client=self.cluster.client).set()

    def _broadcast_halt(self) -> None:
        with contextlib.suppress(Exception):  # a Dask worker that misses it looks at the event (`_missed_halt`)
            self.cluster.client.run(halt_here, self.run_id, on_error="ignore")

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self._halt_set:  # the scheduler forgets a cleared event nobody waits on
                from distributed import Event

                with contextlib.suppress(Exception):
                    Event(self.halt_event, client=self.cluster.client).clear()

    def place(self, exclude: int = 0) -> str:
        """The Dask worker with the fewest live slots per thread."""
        workers = self.cluster.workers()
        if not workers:
            workers = self.cluster.workers(max_age=0)
        if not workers:
            raise ClusterUnavailable("no Dask worker left in the cluster")
        used = Counter(s.conn.address for w, s in self.slots.items() if w != exclude and not s.finished)
        return min(workers, key=lambda a: (used[a] / workers[a], used[a]))

    def _spawn(self) -> None:
        wid = self.next_worker_id
        self.next_worker_id += 1
        channel = _SlotChannel(self, wid, self.place())
        # a slot needs no start-up: it is idle at once and associates (Connect) before its first batch
        self.slots[wid] = _Slot(_TaskHandle(), channel, idle=True)

    def _dispatch(self) -> None:
        super()._dispatch()
        self._queue_next()

    def _queue_next(self) -> None:
        """Submit the next batch of every slot that is sending (or associating) and has none queued, so
        that its Dask worker starts it the moment the current task ends. Only batches of the context group
        the slot's association holds, none sent back for a last retry (`Later`: they are judged when they
        are handed out), none while the peer's association limit keeps slots idle, and none once no more
        batches are queued than there are slots."""
        if self.halted or self.stop_requested:
            return
        live = [s for s in self.slots.values() if not s.finished]
        if sum(1 for s in live if s.batch is not None or s.connecting) > self.target:
            return
        for slot in live:
            if sum(len(q) for q in self.queues.values()) <= len(live):
                # the last batches go to whichever slot is free first: queued ahead, one slot could be
                # left with two while the other has none (up to a batch of idle time at the end of a run)
                return
            channel: _SlotChannel = slot.conn
            if channel.queued is not None or not (slot.batch is not None or slot.connecting):
                continue
            # the group its association will hold when the current task ends
            group = slot.batch.context_group if slot.batch is not None else channel.connect_group
            pending = self.queues.get(group)
            if not pending or id(pending[0][0]) in self._retry_of:
                continue
            batch, start = pending.popleft()
            future = channel.submit(RunBatch(batch, start), queued=True)
            channel.queued = _Queued(future, batch, start)

    def _promote(self, wid: int, slot: _Slot) -> None:
        """The slot's current task ended: its queued batch is now its batch."""
        channel: _SlotChannel = slot.conn
        if channel.queued is None or slot.batch is not None:
            return
        queued, channel.queued = channel.queued, None
        slot.batch, slot.start_index = queued.batch, queued.start_index
        slot.done_in_batch = 0
        slot.later = None
        slot.idle = slot.connecting = False
        channel.future = queued.future
        if queued.future.done():  # its result came first and was put aside
            self.done.put((wid, queued.future))

    def _hand_back(self, queued: _Queued | None = None, slot: _Slot | None = None) -> None:
        """A batch that was not sent goes back to the front of its queue."""
        if queued is not None:
            batch, start = queued.batch, queued.start_index
        else:
            assert slot is not None and slot.batch is not None
            batch, start = slot.batch, slot.start_index
            slot.batch = None
            slot.idle = True
        self.queues.setdefault(batch.context_group, deque()).appendleft((batch, start))

    def _worker_died(self, wid: int, slot: _Slot) -> None:
        queued, slot.conn.queued = slot.conn.queued, None
        if queued is not None:
            queued.future.cancel()
            self._hand_back(queued)
        super()._worker_died(wid, slot)  # its current batch goes in front of the queued one

    def _poll(self) -> None:
        try:
            items = [self.done.get(timeout=0.2)]
        except queue.Empty:
            return
        while True:
            try:
                items.append(self.done.get_nowait())
            except queue.Empty:
                break
        for wid, future in items:
            slot = self.slots[wid]
            if slot.finished or future is not slot.conn.future:
                continue  # a queued task's result waits for its promotion; a result seen twice, once
            slot.conn.future = None
            if future.status == "finished":
                address, blob = future.result()
                if blob is None:  # a queued batch its task did not send: no association there, or halted
                    self._hand_back(slot=slot)
                    self._promote(wid, slot)
                    continue
                messages: list[ToCoordinator] = pickle.loads(blob)
                if address != slot.conn.address:
                    # its Dask worker left mid-task and Dask ran the task here: the slot lives here now
                    log.warning(
                        "Dask worker %s left; slot %d's %s ran again on %s",
                        slot.conn.address, wid, future.key.split("-")[1], address,
                    )  # fmt: skip
                    slot.conn.address = address
                for message in messages:
                    self._handle(wid, slot, message)
                if not slot.finished:
                    self._promote(wid, slot)
                continue
            try:
                error: object = future.exception(timeout=1)
            except Exception as exc:  # cancelled, or the scheduler went away
                error = exc
            log.warning("slot %d on Dask worker %s: task failed: %s", wid, slot.conn.address, error)
            self._worker_died(wid, slot)
