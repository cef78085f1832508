"""The Python API: `send` scans, plans, dispatches and returns the `Report` that the CLI prints.

Scripts call it directly::

    import batchstore
    report = batchstore.send(["/data/dicom"], "pacs.example", 104, workers=4, scan_directories=True,
                             recurse=True, called_ae="PACS")
    print(report.exit_code(), report.delivered)

`load` load-tests a Storage SCP and returns the same figures ``batchstore load`` prints::

    report = batchstore.load(["ct.dcm"], "127.0.0.1", 11112, concurrency=(1, 2, 4), duration=10)
    print(report.levels[0].stores_per_s, report.levels[0].latency_ms["p99"])
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

from .dicom.part10 import Instance, ScanFailure
from .dicom.transcode import EditOptions
from .net.acse import UserIdentity
from .sender import outcomes as st
from .sender.coordinator import Coordinator
from .sender.inline import InlineCoordinator, runs_inline
from .sender.plan import Plan, PlanOptions, make_plan
from .sender.report import SKIPPED, Outcome, Report
from .sender.scan import scan
from .sender.scu import AssociationOptions
from .sender.worker import WorkerConfig

if TYPE_CHECKING:
    from .loadgen.figures import LoadReport
    from .loadgen.run import LoadOptions, LoadProgress
    from .net.tls import TLSOptions
    from .sender.cluster import Cluster
    from .sender.commitment import CommitOptions, CommitResult
    from .sender.journal import Journal

log = logging.getLogger("batchstore")


class SendOptions(NamedTuple):
    """Every option of ``batchstore send`` that is not an address (see `send`).

    A named tuple, not a frozen dataclass: creating this one class cost 1.9 ms of every send's start-up
    (docs/design.md, "Small runs"). ``options._replace(workers=4)`` gives a changed copy.
    """

    calling_ae: str = "STORESCU"
    called_ae: str = "ANY-SCP"
    workers: int = 0  # 0: automatic, one per CPU (os.cpu_count); a small run then needs no worker process
    family: int = socket.AF_INET
    scan_directories: bool = False
    recurse: bool = False
    pattern: str | None = None
    read_mode: str = "auto"  # +f auto, +fo file-only, -f dataset
    plan: PlanOptions = PlanOptions()  # frozen: one shared default is safe
    batch_size: int | None = None  # None: automatic
    max_pdu: int = 16384
    max_send_pdu: int = 0
    connect_timeout: float | None = None
    socket_timeout: float | None = 60.0
    acse_timeout: float | None = 30.0
    dimse_timeout: float | None = None
    user_identity: UserIdentity | None = None
    tls: TLSOptions | None = None  # +tls / +tla (batchstore.net.tls)
    edits: EditOptions = EditOptions()  # frozen
    halt_on_failure: bool = True
    abort_at_end: bool = False
    repeat: int = 1
    retries: int = 3
    retry_wait: float = 1.0
    retry_budget: float = 120.0  # --retry-budget: seconds a file may cost before its retries stop
    rename: bool = False  # +rn: append .done / .bad
    journal: str | None = None  # --journal: SQLite file; a rerun sends only what is not done
    journal_new_destination: bool = False  # the journal records another destination: start a fresh record
    engine: str = "batchstore"  # --engine: "batchstore" (lean synchronous loop) or "pynetdicom"
    read_dicomdir: bool = False  # +rd: send the files a DICOMDIR references (a DICOMDIR itself is skipped)
    cluster: str | None = None  # --cluster: a Dask scheduler's address, or "local:N" (sender/cluster.py)


def default_workers() -> int:
    """One worker per CPU core (logical CPUs, as ``psutil.cpu_count()`` counts them; 1 if unknown).

    ``os.cpu_count`` gives the same number without importing psutil, which cost 12-20 ms of every
    ``batchstore send`` without ``-j`` (docs/design.md, "Small runs")."""
    return os.cpu_count() or 1


#: At most this many files per automatic batch; on a cluster a batch is a Dask task, whose round trip
#: (~10 ms) a larger batch pays less often (docs/design.md, "Beyond one machine").
AUTO_BATCH_FILES = 100
AUTO_BATCH_FILES_CLUSTER = 500


def auto_batch_size(files: int, workers: int, most: int = AUTO_BATCH_FILES) -> int:
    """Batches small enough that every worker gets several, at most `most` files."""
    return max(1, min(most, math.ceil(files / max(1, workers * 4))))


def plan_run(
    paths: Sequence[str],
    options: SendOptions,
    select: Callable[[list[Instance], list[ScanFailure]], list[Instance]] | None = None,
) -> tuple[Plan, list[Instance], list[ScanFailure]]:
    """Scan `paths` and plan batches and presentation contexts; no network.

    `select`, when given, sees every scanned instance and returns those to plan (the journal's resume).
    """
    instances, failures = scan(
        list(paths),
        scan_directories=options.scan_directories,
        recurse=options.recurse,
        pattern=options.pattern,
        read_mode=options.read_mode,
    )
    if options.read_dicomdir:
        instances, failures = _with_dicomdir_files(instances, failures, options)
    if select is not None:
        instances = select(instances, failures)
    workers = options.workers or default_workers()
    plan_options = options.plan
    most = AUTO_BATCH_FILES_CLUSTER if options.cluster else AUTO_BATCH_FILES
    size = options.batch_size or auto_batch_size(len(instances) * max(1, options.repeat), workers, most)
    if plan_options.batch_size != size:
        plan_options = plan_options._replace(batch_size=size)
    return make_plan(instances, plan_options), instances, failures


def _with_dicomdir_files(
    instances: list[Instance], failures: list[ScanFailure], options: SendOptions
) -> tuple[list[Instance], list[ScanFailure]]:
    """dcmsend ``+rd``: add the files each scanned DICOMDIR references (scanned like any input)."""
    from .dicom.dicomdir import referenced_files
    from .dicom.uids import MEDIA_STORAGE_DIRECTORY

    seen = {os.path.abspath(i.path) for i in instances}
    extra: list[str] = []
    for inst in instances:
        if inst.sop_class_uid != MEDIA_STORAGE_DIRECTORY:
            continue
        try:
            paths = referenced_files(inst.path)
        except ValueError as exc:
            failures.append(ScanFailure(inst.path, str(exc)))
            continue
        for path in paths:
            if os.path.abspath(path) not in seen:
                seen.add(os.path.abspath(path))
                extra.append(path)
    if extra:
        more, more_failures = scan(extra, read_mode=options.read_mode)
        instances = instances + more
        failures = failures + more_failures
    return instances, failures


def _failure_outcome(failure: ScanFailure) -> Outcome:
    return Outcome(path=failure.path, category=st.PERMANENT, error=failure.reason)


def send(
    paths: Sequence[str],
    host: str,
    port: int,
    options: SendOptions | None = None,
    on_outcomes: Callable[[list[Outcome]], None] | None = None,
    on_plan: Callable[[Plan, list[ScanFailure]], None] | None = None,
    on_wait: Callable[[float | None], None] | None = None,
    **overrides: object,
) -> Report:
    """Send every DICOM file under `paths` to the Storage SCP at `host`:`port`.

    Parameters
    ----------
    paths : sequence of str
        Files (and directories, with ``scan_directories=True``).
    host, port : str, int
        The peer.
    options : SendOptions, optional
        All other settings; keyword `overrides` replace single fields (``workers=4``).
    on_outcomes : callable, optional
        Called with each chunk of per-file outcomes as workers report them.
    on_plan : callable, optional
        Called once with the plan and the scan failures, before any association.
    on_wait : callable, optional
        Called about once a second with the seconds the run has been waiting on a slow peer (files in
        flight, none answered for `coordinator.SLOW_PEER_SECONDS`), and with None when it answers again.

    Returns
    -------
    Report
        One `Outcome` per input file (per repetition with ``repeat``); ``report.exit_code()`` is the
        documented exit status. With ``journal="FILE"`` it is a `JournalReport`: files already done in
        the journal (and unchanged since) are not sent, only counted (``already_done``); every outcome is
        journaled as it arrives, so a run killed at any point resumes where it stopped. The journal is
        bound to its destination (`called_ae`, `host`, `port`): another destination raises
        `journal.DestinationMismatch` before anything is sent, unless ``journal_new_destination=True``.
    """
    try:
        options = (options or SendOptions())._replace(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:  # an unknown field, as a dataclass would have said it
        raise TypeError(f"send() got an unexpected keyword argument: {exc}") from None
    started = time.perf_counter()
    if options.cluster:
        from .sender.cluster import open_cluster  # Dask only with --cluster

        with open_cluster(options.cluster) as cluster:
            # -j bounds the associations across the cluster; by default one per Dask worker thread
            options = options._replace(workers=options.workers or cluster.threads)
            return _send_journaled(
                paths, host, port, options, started, on_outcomes, on_plan, on_wait, cluster
            )
    return _send_journaled(paths, host, port, options, started, on_outcomes, on_plan, on_wait)


def _send_journaled(
    paths: Sequence[str],
    host: str,
    port: int,
    options: SendOptions,
    started: float,
    on_outcomes: Callable[[list[Outcome]], None] | None,
    on_plan: Callable[[Plan, list[ScanFailure]], None] | None,
    on_wait: Callable[[float | None], None] | None,
    cluster: Cluster | None = None,
) -> Report:
    journal: Journal | None = None
    if options.journal:
        from .sender.journal import Destination, Journal  # sqlite3 only with --journal

        journal = Journal(options.journal)
        try:
            destination = Destination(options.called_ae, host, port)
            journal.bind_destination(destination, new=options.journal_new_destination)
        except BaseException:
            journal.close()
            raise
        journal.begin_run(str(destination))
    try:
        return _send(paths, host, port, options, journal, started, on_outcomes, on_plan, on_wait, cluster)
    finally:
        if journal is not None:
            journal.close()


def _send(
    paths: Sequence[str],
    host: str,
    port: int,
    options: SendOptions,
    journal: Journal | None,
    started: float,
    on_outcomes: Callable[[list[Outcome]], None] | None,
    on_plan: Callable[[Plan, list[ScanFailure]], None] | None,
    on_wait: Callable[[float | None], None] | None = None,
    cluster: Cluster | None = None,
) -> Report:
    scanned = 0

    def select(instances: list[Instance], failures: list[ScanFailure]) -> list[Instance]:
        nonlocal scanned
        scanned = len(instances)
        assert journal is not None
        return journal.register(instances, failures)

    plan, _instances, failures = plan_run(paths, options, select if journal else None)
    if on_plan:
        on_plan(plan, failures)
    report: Report
    if journal is not None:
        from .sender.journal import JournalReport

        report = JournalReport(
            journal_path=journal.path, already_done=scanned - len(_instances), run_id=journal.run_id or 0
        )
        user_callback = on_outcomes

        def journaled(chunk: list[Outcome]) -> None:
            journal.record(chunk)  # acknowledge, then journal, then tell the caller
            if user_callback:
                user_callback(chunk)

        on_outcomes = journaled
    else:
        report = Report()
    report.context_groups = len(plan.context_groups)
    report.contexts_proposed = sum(len(g.contexts) for g in plan.context_groups)
    early = [_failure_outcome(f) for f in failures]
    early += [Outcome.of(inst, st.PERMANENT, reason) for inst, reason in plan.unplannable]
    skipped = [Outcome.of(inst, SKIPPED, reason) for inst, reason in plan.skipped]
    report.outcomes.extend(early + skipped)
    if on_outcomes and (early or skipped):
        on_outcomes(early + skipped)
    edits = options.edits
    if edits.invent_instance and not edits.run_id:
        import uuid  # +II only (uuid loads platform: 4 ms of every start-up)

        edits = edits._replace(run_id=uuid.uuid4().hex)
    config = WorkerConfig(
        association=AssociationOptions(
            host=host,
            port=port,
            calling_ae=options.calling_ae,
            called_ae=options.called_ae,
            family=options.family,
            max_pdu=options.max_pdu,
            max_send_pdu=options.max_send_pdu,
            connect_timeout=options.connect_timeout,
            socket_timeout=options.socket_timeout,
            acse_timeout=options.acse_timeout,
            dimse_timeout=options.dimse_timeout,
            user_identity=options.user_identity,
            tls=options.tls,
        ),
        context_groups=plan.context_groups,
        edits=edits,
        read_dataset_only=options.read_mode == "dataset",
        halt_on_failure=options.halt_on_failure,
        abort_at_end=options.abort_at_end,
        retries=options.retries,
        retry_wait=options.retry_wait,
        retry_budget=options.retry_budget,
        engine=options.engine,
    )
    batches = list(plan.batches) * max(1, options.repeat)
    if options.halt_on_failure and early:
        report.halted = True
        batches = []
        report.outcomes.extend(
            Outcome.of(i, st.NOT_SENT, "not sent: run halted") for b in plan.batches for i in b.instances
        )
    workers = options.workers or default_workers()
    coordinator: Coordinator
    if cluster is not None:
        from .sender.cluster import ClusterCoordinator

        coordinator = ClusterCoordinator(
            batches, workers, config, report, on_outcomes, on_wait, cluster=cluster
        )
    elif runs_inline(batches, workers, config, automatic=not options.workers):
        # a small run: one association from this process, no worker process (docs/design.md, "Small runs")
        coordinator = InlineCoordinator(batches, 1, config, report, on_outcomes, on_wait)
    else:
        coordinator = Coordinator(batches, workers, config, report, on_outcomes, on_wait)
    coordinator.run()
    report.input_count = len(report.outcomes)
    report.elapsed_s = time.perf_counter() - started
    if journal is not None:
        journal.finish_run(report)  # every outcome is journaled (and committed) before any +rn rename
    if options.rename:
        rename_processed(report)
    return report


def rename_processed(report: Report) -> None:
    """storescu ``+rn``: append ``.done`` to delivered files and ``.bad`` to failed ones.

    An existing ``.done``/``.bad`` file is never overwritten: the source is left as it is, with a warning.
    """
    for outcome in report.outcomes:
        if outcome.category == st.NOT_SENT or not os.path.isfile(outcome.path):
            continue
        target = outcome.path + (".done" if outcome.delivered else ".bad")
        try:
            _rename_no_clobber(outcome.path, target)
        except FileExistsError:
            log.warning("not renaming %s: %s already exists", outcome.path, target)
        except OSError as exc:
            log.warning("cannot rename %s: %s", outcome.path, exc.strerror)


def _rename_no_clobber(source: str, target: str) -> None:
    """Rename `source` to `target`, raising `FileExistsError` if `target` exists.

    A hard link and an unlink make the check and the rename one step; where the file system has no hard
    links, the check comes just before the rename.
    """
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "File exists", target) from None
        os.rename(source, target)
        return
    os.unlink(source)


def commit(
    journal: str,
    calling_ae: str = "STORESCU",
    called_ae: str | None = None,
    options: CommitOptions | None = None,
    *,
    acse_timeout: float = 30.0,
    socket_timeout: float | None = 60.0,
    connect_timeout: float | None = None,
    tls: TLSOptions | None = None,
) -> CommitResult:
    """Ask the destination the send `journal` records (host, port, called AE title unless `called_ae`) to
    commit every stored file not committed yet (storage commitment), and journal its answers.

    The per-file states are in the journal (``batchstore journal FILE --report``); the result counts them.

    Raises
    ------
    JournalError
        If `journal` is not a journal, or records no destination (nothing was sent with it).
    """
    from .sender.commitment import CommitOptions, commit_journal
    from .sender.journal import Journal, JournalError

    with Journal(journal, create=False) as opened:
        current = opened.destination()
    if current is None:
        raise JournalError(f"journal {journal} records no destination: nothing was sent with it")
    destination = current[1]
    assoc = AssociationOptions(
        host=destination.host,
        port=destination.port,
        calling_ae=calling_ae,
        called_ae=called_ae or destination.called_ae,
        family=socket.AF_UNSPEC,
        connect_timeout=connect_timeout,
        acse_timeout=acse_timeout,
        socket_timeout=socket_timeout,
        tls=tls,
    )
    return commit_journal(journal, assoc, options or CommitOptions())


def load(
    paths: Sequence[str],
    host: str,
    port: int,
    options: LoadOptions | None = None,
    progress: LoadProgress | None = None,
    **overrides: object,
) -> LoadReport:
    """Load-test the Storage SCP at `host`:`port` with the DICOM files under `paths`.

    Parameters
    ----------
    paths : sequence of str
        Files (and directories, with ``scan_directories=True``); each is encoded once, before the clock
        starts, and sent over and over, with fresh UIDs per C-STORE unless ``fresh_uids=False``.
    host, port : str, int
        The peer. A peer that is not a loopback address is refused unless ``allow_remote=True``.
    options : batchstore.loadgen.run.LoadOptions, optional
        All other settings; keyword `overrides` replace single fields (``concurrency=(1, 2, 4)``,
        ``duration=10``, ``count=1000``, ``warmup=2``, ``rate=200``, ``stores_per_association=100``...),
        those of its `association` too (``called_ae="PACS"``, ``max_pdu=65536``, ``tls=...``).
    progress : LoadProgress, optional
        Told when each level starts, about four times a second while it runs, and when it ends.

    Returns
    -------
    batchstore.loadgen.figures.LoadReport
        One `Level` per concurrency level: C-STOREs/s, MB/s, latency percentiles (ms) from an HDR
        histogram, association setup latency, counts by DIMSE status and by failure kind, the load
        generator's CPU and RSS, a per-second series; ``write_json`` and ``exit_code()`` as the CLI uses.

    Raises
    ------
    batchstore.loadgen.run.LoadError
        The test cannot start: a remote peer without ``allow_remote``, no input (`NoInput`), a peer that
        cannot be associated with, a file that cannot be prepared.
    """
    from .loadgen.run import LoadOptions
    from .loadgen.run import load as run_load

    options = options or LoadOptions()
    network = {k: v for k, v in overrides.items() if k in _ASSOCIATION_FIELDS}
    if network:
        options = replace(options, association=options.association._replace(**network))  # type: ignore[arg-type]
    rest = {k: v for k, v in overrides.items() if k not in network}
    options = replace(options, **rest)  # type: ignore[arg-type]
    return run_load(paths, host, port, options, progress)


#: `AssociationOptions` fields `load` takes as keywords (``called_ae="PACS"``) besides `LoadOptions`' own.
_ASSOCIATION_FIELDS = frozenset(AssociationOptions._fields) - {"host", "port"}
