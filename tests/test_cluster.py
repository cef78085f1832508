"""``send --cluster``: batches as Dask tasks on a LocalCluster and on a real ``dask scheduler`` with two
``dask worker`` processes, all on loopback.

Every test checks what arrived at the peer, the report or journal, and the exit code. The associations the
peer saw are counted from its own log (DCMTK ``storescp -v``) or by the scripted peer: one per slot held
across batches, not one per batch. A Dask worker killed with SIGKILL mid-run and a coordinator killed
mid-run lose nothing and count nothing twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gen_corpus import generate
from peers import DaskCluster, batchstore_env
from scripted_scp import Policy, ScriptedSCP
from test_recovery import PeerSCP

import batchstore
from batchstore.sender.journal import Journal
from batchstore.sender.report import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE

pytestmark = pytest.mark.needs_dask

FILES = 240
BATCH = 20  # 12 batches: more batches than associations


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    root = tmp_path_factory.mktemp("cluster")
    manifest = generate(str(root / "c"), FILES, seed=11, profile="uniform", size=1024)
    return root / "c", {f["sop_instance_uid"] for f in manifest["files"]}


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[DaskCluster]:
    """A ``dask scheduler`` and two ``dask worker`` processes, shared by this module's tests."""
    with DaskCluster(workers=2) as cluster:
        yield cluster


def start_send(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "batchstore", "send", *args],
        env=batchstore_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_send(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = start_send(*args)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_until(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def paced(seconds: float) -> Policy:
    def policy(n: int, uid: str) -> int:
        time.sleep(seconds)
        return 0

    return policy


def assert_journal_complete(journal: str, corpus_dir: Path) -> None:
    """Every input file has one record in the journal, and it is done."""
    with Journal(journal) as j:
        categories = j.categories()
    assert len(categories) == FILES
    assert set(categories.values()) == {"success"}
    assert {os.path.basename(p) for p in categories} == {p.name for p in corpus_dir.rglob("*.dcm")}


def check_run(
    result: subprocess.CompletedProcess, report: Path, journal: str, corpus: tuple[Path, set[str]]
) -> dict:
    path, uids = corpus
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["summary"]["success"] == FILES
    assert sorted(f["sop_instance_uid"] for f in data["files"]) == sorted(uids)  # each file once
    assert_journal_complete(journal, path)
    return data


@pytest.mark.needs_dcmtk
def test_local_cluster_sends_every_file_over_held_associations(
    storescp, corpus: tuple[Path, set[str]], tmp_path: Path
) -> None:
    path, uids = corpus
    scp = storescp(["--fork"])
    report, journal = tmp_path / "r.json", str(tmp_path / "j.db")
    result = run_send(
        "--cluster", "local:2", "--batch-size", str(BATCH), "-nh", "+sd", "+r",
        "--report", str(report), "--journal", journal, "127.0.0.1", str(scp.port), str(path),
    )  # fmt: skip
    data = check_run(result, report, journal, corpus)
    assert set(scp.wait_files(FILES)) == uids
    # -j defaults to one slot per worker of local:N (not per thread: each has two, `LOCAL_THREADS`), and
    # one association per slot, held across the 12 batches
    assert scp.association_count() == len(data["associations"]) == 2
    assert len({f["association"] for f in data["files"]}) == 2


@pytest.mark.needs_dcmtk
def test_scheduler_and_two_workers(
    storescp, dask_cluster: DaskCluster, corpus: tuple[Path, set[str]], tmp_path: Path
) -> None:
    path, uids = corpus
    scp = storescp(["--fork"])
    report, journal = tmp_path / "r.json", str(tmp_path / "j.db")
    # no -j: one association per Dask worker thread (two workers, one thread each)
    result = run_send(
        "--cluster", dask_cluster.address, "--batch-size", str(BATCH), "-nh", "+sd", "+r",
        "--report", str(report), "--journal", journal, "127.0.0.1", str(scp.port), str(path),
    )  # fmt: skip
    data = check_run(result, report, journal, corpus)
    assert set(scp.wait_files(FILES)) == uids
    assert scp.association_count() == len(data["associations"]) == 2
    assert scp.peak_associations() <= 2


def send_to_scripted(
    dask_cluster: DaskCluster, corpus: tuple[Path, set[str]], workers: int, batch_size: int = BATCH
) -> tuple:
    """`batchstore.send` of the corpus over the Dask cluster to a `ScriptedSCP`, with `-nh`: the report
    and the peer, after checking that every file arrived and the exit code is 0."""
    path, uids = corpus
    with ScriptedSCP() as scp:
        report = batchstore.send(
            [str(path)], "127.0.0.1", scp.port, cluster=dask_cluster.address, workers=workers,
            batch_size=batch_size, scan_directories=True, recurse=True, halt_on_failure=False,
        )  # fmt: skip
    assert report.exit_code() == EXIT_OK
    assert set(scp.stored) == uids
    return report, scp


def test_a_slots_next_batch_waits_in_another_thread_and_keeps_the_order(
    corpus: tuple[Path, set[str]],
) -> None:
    """On ``local:1`` the slot's next batch starts in the Dask worker's second thread while the current one
    sends, and waits for it: over the one association the peer gets the batches whole and in the order
    in which the coordinator records their outcomes (the first batch, in the same task as the `Connect`,
    before the one queued behind it)."""
    path, uids = corpus
    with PeerSCP(paced(0.0005)) as scp:
        report = batchstore.send(
            [str(path)], "127.0.0.1", scp.port, cluster="local:1", workers=1, batch_size=BATCH,
            scan_directories=True, recurse=True,
        )  # fmt: skip
    assert report.exit_code() == EXIT_OK, report.summary_lines()
    assert scp.associations == len(report.associations) == 1
    assert scp.stored == [o.sop_instance_uid for o in report.outcomes]
    assert set(scp.stored) == uids and len(scp.stored) == FILES


def test_minus_j_bounds_the_associations_across_the_cluster(
    dask_cluster: DaskCluster, corpus: tuple[Path, set[str]]
) -> None:
    report, scp = send_to_scripted(dask_cluster, corpus, workers=1)
    assert scp.associations == len(report.associations) == 1


@pytest.mark.parametrize("events", ["lost", "twice"])
def test_task_events_lost_or_repeated_count_each_file_once(
    dask_cluster: DaskCluster, corpus: tuple[Path, set[str]], monkeypatch: pytest.MonkeyPatch, events: str
) -> None:
    """Outcomes come back as each task's event. Without events (`lost`) the coordinator fetches the
    tasks' results; an event that comes twice (`twice`: a task Dask ran again) counts once."""
    from batchstore.sender import cluster

    on_event = cluster.ClusterCoordinator._on_event

    def patched(self: cluster.ClusterCoordinator, event: tuple) -> None:
        for _ in range(0 if events == "lost" else 2):
            on_event(self, event)

    monkeypatch.setattr(cluster.ClusterCoordinator, "_on_event", patched)
    report, _scp = send_to_scripted(dask_cluster, corpus, workers=2)
    assert sorted(o.sop_instance_uid for o in report.outcomes) == sorted(corpus[1])
    assert report.delivered == FILES


def test_the_scheduler_keeps_no_outcomes_after_the_run(
    dask_cluster: DaskCluster, corpus: tuple[Path, set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes travel as Dask events, of which a scheduler keeps the last 1,000 per topic: a run drops
    them as it goes (here every 3 tasks) and at its end, so a long-lived scheduler does not keep them."""
    from distributed import Client

    from batchstore.sender import cluster

    monkeypatch.setattr(cluster, "FORGET_EVENTS_EVERY", 3)
    send_to_scripted(dask_cluster, corpus, workers=2)
    with Client(dask_cluster.address, timeout=10) as client:
        kept = {topic: len(events) for topic, events in client.get_events().items() if "batchstore" in topic}
    assert not any(kept.values()), kept


def test_last_batches_are_cut_in_two_and_every_file_counts_once(
    dask_cluster: DaskCluster, corpus: tuple[Path, set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four batches of 60 on two slots: when two are left, they become four of 30 (a slow slot then
    holds the run up for half a batch, not a whole one); each file is sent and reported once."""
    from batchstore.sender import cluster

    halve, seen = cluster.ClusterCoordinator._halve_tail, []

    def spied(self: cluster.ClusterCoordinator) -> None:
        before = [len(b.instances) for q in self.queues.values() for b, _ in q]
        halve(self)
        if self._tail_halved and not seen:
            seen.append((before, [len(b.instances) for q in self.queues.values() for b, _ in q]))

    monkeypatch.setattr(cluster.ClusterCoordinator, "_halve_tail", spied)
    report, _scp = send_to_scripted(dask_cluster, corpus, workers=2, batch_size=60)
    assert seen == [([60, 60], [30, 30, 30, 30])]
    assert sorted(o.sop_instance_uid for o in report.outcomes) == sorted(corpus[1])
    assert report.delivered == FILES


def test_peer_association_limit_lowers_concurrency_across_the_cluster(
    dask_cluster: DaskCluster, corpus: tuple[Path, set[str]]
) -> None:
    """Three slots on two Dask workers, a peer that takes two associations: the third is turned away
    (A-ASSOCIATE-RJ transient), the run goes on with two and loses nothing."""
    path, uids = corpus
    with PeerSCP(paced(0.001), limit=2) as scp:
        report = batchstore.send(
            [str(path)], "127.0.0.1", scp.port, cluster=dask_cluster.address, workers=3, batch_size=BATCH,
            scan_directories=True, recurse=True, retries=2, retry_wait=0.1,
        )  # fmt: skip
    assert report.exit_code() == EXIT_OK, report.summary_lines()  # halting is on: nothing failed
    assert set(scp.stored) == uids
    assert scp.peak <= 2
    assert scp.rejected >= 1
    assert all(o.delivered and o.attempts == 1 for o in report.outcomes)


def test_first_failure_halts_batches_running_on_other_workers(
    dask_cluster: DaskCluster, corpus: tuple[Path, set[str]]
) -> None:
    """Without -nh the first failure halts the run: the batch another Dask worker is sending stops
    early (the run's halt event), the rest is "not sent", exit 6."""
    path, uids = corpus

    def policy(n: int, uid: str) -> int:
        time.sleep(0.01)
        return 0xA900 if n == 20 else 0

    with ScriptedSCP(policy) as scp:
        report = batchstore.send(
            [str(path)], "127.0.0.1", scp.port, cluster=dask_cluster.address, workers=2, batch_size=100,
            scan_directories=True, recurse=True,
        )  # fmt: skip
    assert report.exit_code() == EXIT_SOME_FAILED
    assert report.halted
    failed = [o for o in report.outcomes if o.category == "permanent"]
    assert len(failed) == 1 and failed[0].status == 0xA900
    not_sent = [o for o in report.outcomes if o.category == "not-sent"]
    assert len(report.outcomes) == FILES and len(not_sent) == FILES - 1 - len(set(scp.stored))
    # the other slot's batch was cut short by the halt, not sent to its end (100 files at 10 ms each)
    assert any(o.worker not in (0, failed[0].worker) for o in not_sent)
    assert len(set(scp.stored)) < 100


def test_a_file_the_worker_cannot_read_is_a_clear_per_file_error(
    dask_cluster: DaskCluster, corpus: tuple[Path, set[str]], tmp_path: Path
) -> None:
    """A file the coordinator scanned but the Dask worker cannot see (here: gone before it is sent)."""
    path, uids = corpus
    copy = tmp_path / "c"
    copy.mkdir()
    for f in sorted(path.rglob("*.dcm"))[:40]:
        (copy / f.name).write_bytes(f.read_bytes())
    gone = sorted(copy.glob("*.dcm"))[7]

    def remove_one(plan: object, failures: object) -> None:
        gone.unlink()

    with ScriptedSCP() as scp:
        report = batchstore.send(
            [str(copy)], "127.0.0.1", scp.port, cluster=dask_cluster.address, batch_size=10,
            scan_directories=True, halt_on_failure=False, on_plan=remove_one,
        )  # fmt: skip
        assert len(set(scp.stored)) == 39
    failed = [o for o in report.outcomes if not o.delivered]
    assert [o.path for o in failed] == [str(gone)]
    assert failed[0].category == "permanent"
    assert failed[0].error.startswith("cannot read")
    assert f"on Dask worker {dask_cluster.address.rsplit(':', 1)[0]}" in failed[0].error
    assert "storage every worker sees at the same path" in failed[0].error


def test_bad_cluster_address_is_a_usage_error(corpus: tuple[Path, set[str]]) -> None:
    path, _ = corpus
    result = run_send("--cluster", "local:0", "127.0.0.1", "104", str(path / "missing.dcm"))
    assert result.returncode == EXIT_USAGE
    assert "local:N needs a number of workers N >= 1" in result.stderr


def test_local_cluster_from_a_script_on_stdin_is_a_clear_error(corpus: tuple[Path, set[str]]) -> None:
    """local:N's workers re-run the main module from its file; a script read from stdin has none."""
    path, _ = corpus
    script = (
        "import batchstore\n"
        f"batchstore.send([{str(path)!r}], '127.0.0.1', 104, cluster='local:1', scan_directories=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-"], input=script, capture_output=True, text=True, env=batchstore_env(), timeout=120
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("batchstore.sender.cluster.ClusterUnavailable: --cluster local:1:"), result.stderr
    assert "'<stdin>' is not a file" in last
    assert "Nanny" not in result.stderr


def test_coordinator_killed_then_rerun_resumes(
    dask_cluster: DaskCluster, corpus: tuple[Path, set[str]], tmp_path: Path
) -> None:
    path, uids = corpus
    journal = str(tmp_path / "j.db")
    args = ("--cluster", dask_cluster.address, "--batch-size", str(BATCH), "-nh", "+sd", "+r", "--journal", journal)
    # 10 ms a file: half the files take ~0.6 s, past the journal's first commits (every 0.25 s)
    with ScriptedSCP(paced(0.01)) as scp:
        proc = start_send(*args, "127.0.0.1", str(scp.port), str(path))
        wait_until(lambda: len(set(scp.stored)) >= 0.5 * FILES)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert len(set(scp.stored)) < FILES, "the kill came too late to test anything"
        with Journal(journal) as j:
            done = {p for p, c in j.categories().items() if c == "success"}
        assert 0 < len(done) <= len(set(scp.stored))
        resumed = run_send(*args, "127.0.0.1", str(scp.port), str(path))
        assert resumed.returncode == EXIT_OK, resumed.stderr[-3000:]
        assert "Already done:" in resumed.stderr
        assert set(scp.stored) == uids
    assert_journal_complete(journal, path)


def test_sigterm_stops_batches_on_the_workers_exit_130(
    dask_cluster: DaskCluster, corpus: tuple[Path, set[str]], tmp_path: Path
) -> None:
    """SIGTERM to the coordinator: the batches running on the Dask workers stop at the halt event, the
    associations are released, the journal is flushed, exit 130; the rerun completes."""
    path, uids = corpus
    journal = str(tmp_path / "j.db")
    args = ("--cluster", dask_cluster.address, "--batch-size", "120", "-nh", "+sd", "+r", "--journal", journal)
    with PeerSCP(paced(0.01)) as scp:
        proc = start_send(*args, "127.0.0.1", str(scp.port), str(path))
        wait_until(lambda: scp.count >= 20)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == EXIT_INTERRUPTED, err[-3000:]
        stored = len(set(scp.stored))
        assert stored < 160  # two batches of 120 at 10 ms a file were cut short, not sent to their end
        wait_until(lambda: scp.active == 0, timeout=10)  # released, not left to the idle release
        with Journal(journal) as j:
            summary = j.summary()
        assert summary.done + summary.pending == FILES and summary.pending > 0
        resumed = run_send(*args, "127.0.0.1", str(scp.port), str(path))
        assert resumed.returncode == EXIT_OK, resumed.stderr[-3000:]
        assert set(scp.stored) == uids


def test_dask_worker_killed_mid_run(
    dask_cluster: DaskCluster, corpus: tuple[Path, set[str]], tmp_path: Path
) -> None:
    """SIGKILL one Dask worker while it sends a batch: Dask runs the task elsewhere, every file arrives,
    the journal and report have each file once, exit 0. (Last in this module: the nanny restarts it.)"""
    path, uids = corpus
    report, journal = tmp_path / "r.json", str(tmp_path / "j.db")
    with ScriptedSCP(paced(0.004)) as scp:
        proc = start_send(
            "--cluster", dask_cluster.address, "--batch-size", str(BATCH), "-nh", "+sd", "+r",
            "--report", str(report), "--journal", journal, "127.0.0.1", str(scp.port), str(path),
        )  # fmt: skip
        wait_until(lambda: scp.count >= 60)
        victim = dask_cluster.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        assert proc.poll() is None, "the run ended before the kill"
        out, err = proc.communicate(timeout=120)
        assert set(scp.stored) == uids
        # the killed worker's association, and the one its batch was sent on again
        assert scp.associations >= 3
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    check_run(result, report, journal, corpus)
