"""``send --cluster``: batches run as Dask tasks on the workers of a Dask distributed cluster.

The coordinator is `coordinator.Coordinator` with another transport (docs/design.md, "Beyond one machine"):

- A slot is one association: at most ``-j`` of them across the cluster. Each slot lives on one Dask worker
  (placed where the fewest slots are per worker thread) and every message the coordinator would send a
  worker process (`RunBatch`, `Connect`, `Stop`) becomes a task restricted to that Dask worker.
- On the Dask worker (`cluster_task.run_task`), the task finds the slot's `worker.Worker` in process-wide
  state: the association it opened in an earlier task is still open, so a peer sees one association per
  slot, not one per batch. What the worker would tell the coordinator comes back as an event of the run's
  topic (sooner than the task's result, which is fetched only if the event has not come when Dask says
  the task finished), and the coordinator handles it as it handles a worker process's messages
  (adaptive concurrency, give-back, retries).
- A Dask worker killed mid-batch loses its task's outcomes with it: Dask runs the task again on another
  worker (a loose restriction), which sends the whole batch (C-STORE is idempotent) and returns its
  outcomes once, so the journal records every file once. If Dask gives up on the task, the coordinator
  requeues the batch as it does for a dead worker process.
- A slot's first batch goes in the same task as its `Connect`. Its next batch is submitted while its
  current one runs (`ClusterCoordinator._queue_next`), so its
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

Dask is imported only here and in `cluster_task`, and these modules only with ``--cluster``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import cluster_task
from .cluster_task import halt_here, results_topic, run_task
from .coordinator import Coordinator, _Slot
from .messages import Connect, Halt, RunBatch, ToCoordinator, ToWorker
from .plan import Batch
from .report import Outcome, Report
from .worker import WorkerConfig

log = logging.getLogger("batchstore.dispatch")

#: How long to wait for a scheduler, and for a LocalCluster's workers, before giving up.
CONNECT_TIMEOUT = 10.0


#: The scheduler's copy of a run's events is dropped after this many (each holds a batch's outcomes,
#: about 100 KB for 500 files; Dask keeps up to 1,000 per topic).
FORGET_EVENTS_EVERY = 200
#: The last batches of a run are cut in two when each half has at least this many files (`_halve_tail`).
TAIL_HALF_MIN = 20

#: Threads of each ``local:N`` worker, which holds one slot (``-j`` defaults to N): one sends, the other
#: runs the slot's next batch, which waits on the slot's lock and sends the moment the current one ends,
#: without waiting for the Dask worker's event loop to start it (`cluster_task._Held`).
LOCAL_THREADS = 2

#: A LocalCluster's Dask settings (``local:N``). Dask's statistical profiler samples every worker thread 100
#: times a second, and its event-loop watchdog, system monitor and memory monitor wake every process 50, 2
#: and 10 times a second: on a send loop, CPU the peer on the same machine does not get (docs/design.md,
#: "Beyond one machine"). The dashboard's profile page stays empty and its system graphs are coarser.
#: Work stealing would move a slot's queued batch to another worker, where it finds no association and
#: comes back untouched: a wasted round trip. The active memory manager (every 2 s), the GIL monitor
#: (every 1 ms, when ``gilknocker`` is installed) and the client's look at the scheduler (every 2 s) serve
#: nothing a send needs.
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.scheduler.work-stealing": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.scheduler.active-memory-manager.start": False,
    "distributed.client.scheduler-info-interval": "10s",
    # Dask's own, without MALLOC_TRIM_THRESHOLD_, which turns glibc's adaptive mmap threshold off: every
    # block of 128 KiB or more (a converted data set, a task's message) is then mapped and unmapped anew.
    # Reading 513 KB into a new bytes object: 129 page faults and 180-260 us instead of 0 and 28-36 us.
    "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1},
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

    def workers(self, max_age: float = 5.0) -> dict[str, int]:
        """Address -> threads of every Dask worker, at most `max_age` seconds old (each look is a round
        trip to the scheduler; a worker that left in the meantime only costs a task that Dask runs on
        another worker)."""
        now = time.monotonic()
        if now - self._seen > max_age:
            info = self.client.scheduler_info(n_workers=-1)
            self._workers = {addr: int(w.get("nthreads", 1)) for addr, w in info["workers"].items()}
            self._seen = now
        return self._workers

    @property
    def threads(self) -> int:
        """The associations ``-j`` allows by default: one per worker thread, one per worker of ``local:N``."""
        if self.local is not None:
            return len(self.workers(max_age=0))
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
            _check_main_module(spec)
            import dask

            with dask.config.set(LOCAL_CLUSTER_CONFIG):
                local = LocalCluster(
                    n_workers=count,
                    threads_per_worker=LOCAL_THREADS,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",  # a free port: runs side by side never collide
                    preload=[cluster_task.__name__],  # the tasks' code, imported while the workers start, not by the first task
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


def _check_main_module(spec: str) -> None:
    """``local:N`` starts its worker processes fresh (multiprocessing's spawn), and each runs the calling
    program's main module again from its file first: a program read from standard input has none, and its
    workers would die with a traceback. Say so before anything starts."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path and not os.path.isfile(path):
        raise ClusterUnavailable(
            f"--cluster {spec}: its worker processes start by running this program's main module from its "
            f"file, and {path!r} is not a file (a script read from standard input?): run the script from a "
            "file, or start a scheduler and workers and give its address"
        )


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


class _Task:
    """A submitted task; `said` is what its messages did, once known (from its event, or its result)."""

    def __init__(self, future: Any) -> None:
        self.future = future
        self.said: tuple[str, tuple[bytes | None, ...]] | None = None


class _Part:
    """What the coordinator waits for: one message's result within a task (a task that associates and
    then sends a batch has two), with the task's status. Known when the task's event arrives (the usual
    way) or when its result is fetched (if the event has not arrived when Dask says the task finished)."""

    def __init__(self, task: _Task, index: int = 0) -> None:
        self.task = task
        self.index = index

    @property
    def status(self) -> str:
        return "finished" if self.task.said is not None else str(self.task.future.status)

    @property
    def key(self) -> str:
        return str(self.task.future.key)

    def done(self) -> bool:
        return self.task.said is not None or bool(self.task.future.done())

    def ended_quietly(self) -> bool:
        """The task ended, and its event has not come (it failed, or the event is late)."""
        return self.task.said is None and self.task.future is not None and bool(self.task.future.done())

    def result(self) -> tuple[str, bytes | None]:
        """The Dask worker's address, and what the worker said (pickled; None: a queued batch not run)."""
        if self.task.said is None:
            self.task.said = self.task.future.result()
        address, said = self.task.said
        return address, said[self.index]

    def exception(self, timeout: float | None = None) -> object:
        return self.task.future.exception(timeout=timeout)

    def cancel(self) -> None:
        self.task.future.cancel()


@dataclass
class _Queued:
    """A batch submitted to the slot's Dask worker while its current task runs (it starts when that ends)."""

    future: _Part
    batch: Batch
    start_index: int
    rides: bool = False  # in the same task as the slot's `Connect`


class _SlotChannel:
    """The coordinator's side of a slot: every message becomes a task on the slot's Dask worker.

    A `Connect` waits for the end of the coordinator's dispatch round (`ClusterCoordinator._dispatch`): the
    slot's first batch, known by then, goes in the same task (`run_task`'s `then`)."""

    def __init__(self, owner: ClusterCoordinator, wid: int, address: str) -> None:
        self.owner = owner
        self.wid = wid
        self.address = address
        self.future: _Part | None = None  # what the slot waits for
        self.queued: deque[_Queued] = deque()  # the batches after it, already on the Dask worker
        self.connect_group = -1  # the context group of the last `Connect`
        self.pending: Connect | None = None  # a `Connect` not submitted yet

    def send(self, message: ToWorker) -> None:
        if isinstance(message, Halt):
            self.owner.set_halt()
            return
        if isinstance(message, Connect):
            self.connect_group = message.group
            self.pending = message
            return
        self.future = self.submit(message)

    def submit_connect(self, then: tuple[Batch, int] | None = None) -> None:
        """Submit the pending `Connect`, and with it the batch `then` (as a queued one) when given."""
        message, self.pending = self.pending, None
        assert message is not None
        if then is None:
            self.future = self.submit(message)
            return
        batch, start = then
        self.future = self.submit(message, then=RunBatch(batch, start))
        self.queued.append(_Queued(_Part(self.future.task, 1), batch, start, rides=True))

    def queue(self, batch: Batch, start: int) -> None:
        """Submit `batch` to run after the slot's current task and those already queued."""
        self.queued.append(_Queued(self.submit(RunBatch(batch, start), queued=True), batch, start))

    def submit(self, message: ToWorker, queued: bool = False, then: RunBatch | None = None) -> _Part:
        owner = self.owner
        if self.address not in owner.cluster.workers():  # its Dask worker left: another one takes it
            self.address = owner.place(exclude=self.wid)
        key = f"batchstore-{type(message).__name__.lower()}-{owner.run_id}-{self.wid}-{uuid.uuid4().hex[:8]}"
        task = _Task(None)
        waited = _Part(task)
        owner.waiting[key] = (self.wid, waited)  # before the task exists: its event may come at once
        task.future = owner.cluster.client.submit(
            run_task,
            owner.run_id,
            self.wid,
            owner.config_blob,
            owner.halt_event,
            pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL),
            queued,
            None if then is None else pickle.dumps(then, protocol=pickle.HIGHEST_PROTOCOL),
            workers=[self.address],
            allow_other_workers=True,  # if that worker dies, Dask runs the task elsewhere
            pure=False,
            key=key,
        )
        return waited


def _forget_events(topic: str) -> Callable[..., None]:
    """What the scheduler runs at the end of a run to drop the run's events it keeps (up to Dask's
    ``distributed.admin.low-level-log-length`` per topic), which nobody reads any more. A local function:
    Dask sends it by value, so the scheduler needs no batchstore."""

    def forget(dask_scheduler: Any = None) -> None:
        dask_scheduler._broker.truncate(topic)

    return forget


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
        self.done: queue.Queue[tuple[int, _Part]] = queue.Queue()
        self._halt_set = False
        self.topic = results_topic(self.run_id)
        #: task key -> the slot and what it waits for, until the task's event arrives (`_on_event`)
        self.waiting: dict[str, tuple[int, _Part]] = {}
        self._tail_halved = False
        self._events = 0  # tasks whose outcomes came as events, for `_forget_events`

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
        client = self.cluster.client
        client.subscribe_topic(self.topic, self._on_event)
        try:
            super().run()
        finally:
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(self.topic)
            if self.cluster.local is None:  # a scheduler that outlives the run: its copy of the events
                self._forget_events()
            if self._halt_set:  # the scheduler forgets a cleared event nobody waits on
                from distributed import Event

                with contextlib.suppress(Exception):
                    Event(self.halt_event, client=client).clear()

    def _forget_events(self) -> None:
        """Drop the scheduler's copy of the run's events (best effort: Dask's event log is internal). A
        LocalCluster's scheduler is in this process."""
        with contextlib.suppress(Exception):
            forget = _forget_events(self.topic)
            if self.cluster.local is not None:
                forget(dask_scheduler=self.cluster.local.scheduler)
            else:
                self.cluster.client.run_on_scheduler(forget)

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        """A task's event (in the Dask client's thread): what its messages did, for `_poll`. A task that
        Dask ran again (its worker died after the event) sends it twice: the second is ignored."""
        message = event[1]
        entry = self.waiting.pop(message["key"], None)
        if entry is not None:
            wid, part = entry
            if part.task.said is None:
                part.task.said = (message["address"], tuple(message["said"]))
            self.done.put((wid, part))

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
        self._halve_tail()
        super()._dispatch()
        self._queue_next()
        for slot in self.slots.values():  # a `Connect` no batch went with
            if slot.conn.pending is not None:
                slot.conn.submit_connect()

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
            channel: _SlotChannel = slot.conn
            while not any(not q.rides for q in channel.queued) and (slot.batch is not None or slot.connecting):
                if sum(len(q) for q in self.queues.values()) <= len(live):
                    # the last batches go to whichever slot is free first: queued ahead, one slot could
                    # be left with two while the other has none (up to a batch of idle time at the end)
                    return
                # the group its association will hold when the current task ends
                group = slot.batch.context_group if slot.batch is not None else channel.connect_group
                pending = self.queues.get(group)
                if not pending or id(pending[0][0]) in self._retry_of:
                    break
                batch, start = pending.popleft()
                if channel.pending is not None:  # associating: the batch goes in the same task
                    channel.submit_connect(then=(batch, start))
                else:
                    channel.queue(batch, start)

    def _halve_tail(self) -> None:
        """Once, when no more batches are queued than there are slots: cut each in two halves. A run
        ends when its slowest slot does, up to a batch after the others on a host where two Dask
        workers' speeds differ (batches up to 500 files on a cluster, `api.AUTO_BATCH_FILES_CLUSTER`):
        two more tasks per run halve that."""
        if self._tail_halved or self.halted:
            return
        live = sum(1 for s in self.slots.values() if not s.finished)
        if not live or sum(len(q) for q in self.queues.values()) > live:
            return
        self._tail_halved = True
        for group, pending in self.queues.items():
            cut: deque[tuple[Batch, int]] = deque()
            for batch, start in pending:
                half = len(batch.instances) // 2
                if id(batch) in self._retry_of or half < TAIL_HALF_MIN:
                    cut.append((batch, start))
                    continue
                for part, at in ((batch.instances[:half], start), (batch.instances[half:], start + half)):
                    cut.append((batch._replace(instances=part, nbytes=sum(i.size for i in part)), at))
            self.queues[group] = cut

    def _promote(self, wid: int, slot: _Slot) -> None:
        """The slot's current task ended: its first queued batch is now its batch."""
        channel: _SlotChannel = slot.conn
        if not channel.queued or slot.batch is not None:
            return
        queued = channel.queued.popleft()
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
        channel: _SlotChannel = slot.conn
        while channel.queued:  # the last first: each goes to the front of its queue
            queued = channel.queued.pop()
            queued.future.cancel()
            self._hand_back(queued)
        super()._worker_died(wid, slot)  # its current batch goes in front of the queued ones

    def _poll(self) -> None:
        # tasks that ended without their event: failed, or finished before it came (their result is
        # fetched); looked at here rather than in a Dask done-callback, a thread hop per task
        items = [
            (wid, slot.conn.future)
            for wid, slot in self.slots.items()
            if not slot.finished and slot.conn.future is not None and slot.conn.future.ended_quietly()
        ]
        if not items:
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
            if self.waiting.pop(future.key, None) is None:  # its event came
                self._events += 1
                if self._events % FORGET_EVENTS_EVERY == 0:
                    self._forget_events()
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
