"""Nothing lost: crash recovery, retries and adaptive concurrency against peers on loopback.

The peer is a `ScriptedSCP` running in the test process (so it outlives the sender we kill), extended here
with a fixed port (a peer that comes up late), an association limit answered with A-ASSOCIATE-RJ
(rejected-transient, local limit exceeded) and pacing (so a kill lands mid-run). Every test checks the
SOP Instance UIDs that arrived, the exit code and the report.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from gen_corpus import generate
from peers import free_port
from scripted_scp import Policy, ScriptedSCP

import batchstore
from batchstore.net import acse
from batchstore.net.pdu import A_ASSOCIATE_RJ, PDUStream
from batchstore.sender.journal import Journal
from batchstore.sender.report import EXIT_INTERRUPTED, EXIT_OK

ROOT = Path(__file__).resolve().parent.parent


class PeerSCP(ScriptedSCP):
    """`ScriptedSCP` with a chosen port, an association limit and a count of rejections."""

    def __init__(self, policy: Policy, port: int = 0, limit: int | None = None) -> None:
        super().__init__(policy)
        if port:
            self.sock.close()
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", port))
            self.sock.listen(16)
            self.port = port
        self.limit = limit
        self.active = 0
        self.peak = 0
        self.rejected = 0

    def _association(self, conn: socket.socket) -> None:
        with self._lock:
            over = self.limit is not None and self.active >= self.limit
            if over:
                self.rejected += 1
            else:
                self.active += 1
                self.peak = max(self.peak, self.active)
        if over:
            stream = PDUStream(conn)
            try:
                stream.read_pdu()
                stream.pdu(
                    A_ASSOCIATE_RJ,
                    acse.encode_reject(
                        acse.RESULT_REJECTED_TRANSIENT,
                        acse.SOURCE_PRESENTATION_PROVIDER,
                        acse.REASON_LOCAL_LIMIT_EXCEEDED,
                    ),
                )
            except OSError:
                pass
            finally:
                stream.close()
            return
        try:
            super()._association(conn)
        finally:
            with self._lock:
                self.active -= 1


def paced(seconds: float) -> Policy:
    def policy(n: int, uid: str) -> int:
        time.sleep(seconds)
        return 0

    return policy


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    root = tmp_path_factory.mktemp("rec")
    manifest = generate(str(root / "c"), 240, seed=5, profile="uniform", size=1024)
    return root / "c", {f["sop_instance_uid"] for f in manifest["files"]}


def start_send(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "batchstore", "send", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_send(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = start_send(*args)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def settle(scp: ScriptedSCP, quiet: float = 0.3) -> None:
    """Wait until `scp` has received nothing for `quiet` seconds."""
    last, since = scp.count, time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.02)
        if scp.count != last:
            last, since = scp.count, time.monotonic()


def test_sigkill_of_the_process_group_then_resume(corpus: tuple[Path, set[str]], tmp_path: Path) -> None:
    path, uids = corpus
    journal = str(tmp_path / "j.db")
    args = ("-j", "2", "--batch-size", "10", "--journal", journal, "+sd", "+r")
    in_flight = 0  # files that had arrived but were not journaled at a kill: the resume sends them again
    with ScriptedSCP(paced(0.004)) as scp:
        for fraction in (0.2, 0.6):
            proc = start_send(*args, "127.0.0.1", str(scp.port), str(path))
            wait_until(lambda f=fraction: len(set(scp.stored)) >= f * len(uids))  # type: ignore[misc]
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            assert proc.returncode == -signal.SIGKILL
            settle(scp)  # a C-STORE already in the socket still arrives after the kill
            assert len(set(scp.stored)) < len(uids), "the kill came too late to test anything"
            with Journal(journal) as j:  # consistent after SIGKILL: never more done than arrived
                done = {p for p, c in j.categories().items() if c in ("success", "warning")}
                assert len(done) <= len(set(scp.stored))
            in_flight += len(set(scp.stored)) - len(done)
        resumed = run_send(*args, "127.0.0.1", str(scp.port), str(path))
        assert resumed.returncode == EXIT_OK, resumed.stderr[-2000:]
        assert "Already done:" in resumed.stderr
        assert set(scp.stored) == uids
        count = scp.count
        final = run_send(*args, "127.0.0.1", str(scp.port), str(path))
        assert final.returncode == EXIT_OK, final.stderr[-2000:]
        assert "Nothing to send" in final.stderr
        assert scp.count == count  # not a single C-STORE
        # duplicates are the price of "acknowledge, then journal": exactly what had arrived unjournaled
        # at the kills (how many that is depends on the machine's load, not on batchstore)
        assert count - len(uids) <= in_flight


def test_sigterm_exits_130_and_resume_completes(corpus: tuple[Path, set[str]], tmp_path: Path) -> None:
    path, uids = corpus
    journal = str(tmp_path / "j.db")
    args = ("-j", "2", "--batch-size", "10", "--journal", journal, "+sd", "+r")
    with PeerSCP(paced(0.004)) as scp:
        proc = start_send(*args, "127.0.0.1", str(scp.port), str(path))
        wait_until(lambda: scp.count >= 0.3 * len(uids))
        proc.send_signal(signal.SIGTERM)  # the coordinator only, as a service manager would
        _out, err = proc.communicate(timeout=20)
        assert proc.returncode == EXIT_INTERRUPTED, err[-2000:]
        assert "Interrupted" in err
        wait_until(lambda: scp.active == 0, timeout=5)  # associations were released, not left hanging
        with Journal(journal) as j:
            summary = j.summary()
            assert summary.last_run is not None and summary.last_run["interrupted"] == 1
            assert summary.last_run["exit_code"] == EXIT_INTERRUPTED
            # every file the peer acknowledged and the sender heard of is done; nothing is done that did not arrive
            assert 0 < summary.done <= len(set(scp.stored)) < len(uids)
            assert summary.pending == len(uids) - summary.done
        resumed = run_send(*args, "127.0.0.1", str(scp.port), str(path))
        assert resumed.returncode == EXIT_OK, resumed.stderr[-2000:]
        assert set(scp.stored) == uids
        assert scp.count == len(uids)  # in-flight C-STOREs finished and were journaled: no duplicates


def test_worker_killed_mid_batch(corpus: tuple[Path, set[str]], tmp_path: Path) -> None:
    path, uids = corpus
    report = tmp_path / "r.json"
    with ScriptedSCP(paced(0.004)) as scp:
        proc = start_send(
            "-j", "2", "--batch-size", "20", "--report", str(report), "+sd", "+r",
            "127.0.0.1", str(scp.port), str(path),
        )  # fmt: skip
        wait_until(lambda: scp.count >= 60 and len(psutil.Process(proc.pid).children()) == 2)
        victim = psutil.Process(proc.pid).children()[0]
        victim.send_signal(signal.SIGKILL)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == EXIT_OK, err[-2000:]
        assert "died" in err
        assert set(scp.stored) == uids
    data = json.loads(report.read_text())
    assert data["summary"]["success"] == len(uids)
    assert {f["sop_instance_uid"] for f in data["files"]} == uids
    assert max(f["worker"] for f in data["files"]) == 3  # the replacement worker did part of the work


def test_peer_down_at_start_comes_up_later(corpus: tuple[Path, set[str]]) -> None:
    path, uids = corpus
    port = free_port()
    holder: list[PeerSCP] = []

    def come_up() -> None:
        holder.append(PeerSCP(lambda n, uid: 0, port=port).__enter__())

    timer = threading.Timer(1.5, come_up)
    timer.start()
    try:
        report = batchstore.send(
            [str(path)], "127.0.0.1", port, scan_directories=True, recurse=True,
            workers=2, retries=8, retry_wait=0.5,
        )  # fmt: skip
    finally:
        timer.join()
        for scp in holder:
            scp.__exit__()
    assert report.exit_code() == EXIT_OK, report.summary_lines()
    assert set(holder[0].stored) == uids
    assert report.retries >= 2
    assert all(o.attempts == 1 for o in report.outcomes)  # association retries burn no per-file attempts


def test_peer_out_of_resources_and_aborting_for_a_while(corpus: tuple[Path, set[str]]) -> None:
    path, uids = corpus

    def policy(n: int, uid: str) -> int | str:
        if 10 <= n < 18:
            return 0xA700
        if n in (60, 61):
            return "abort"
        return 0

    with ScriptedSCP(policy) as scp:
        report = batchstore.send(
            [str(path)], "127.0.0.1", scp.port, scan_directories=True, recurse=True,
            workers=2, retries=8, retry_wait=0.01,
        )  # fmt: skip
    assert report.exit_code() == EXIT_OK, report.summary_lines()
    assert set(scp.stored) == uids
    assert report.retries >= 10  # 8 out-of-resources answers and 2 aborts, each retried
    assert "Retries:" in "\n".join(report.summary_lines())
    assert scp.associations >= 3


def test_peer_with_two_associations_and_six_workers(corpus: tuple[Path, set[str]]) -> None:
    path, uids = corpus
    with PeerSCP(paced(0.001), limit=2) as scp:
        report = batchstore.send(
            [str(path)], "127.0.0.1", scp.port, scan_directories=True, recurse=True,
            workers=6, batch_size=10, retries=2, retry_wait=0.1,
        )  # fmt: skip
    assert report.exit_code() == EXIT_OK, report.summary_lines()  # halt-on-failure is on: nothing failed
    assert set(scp.stored) == uids
    assert scp.peak <= 2
    # The limit was hit: at least one worker was turned away. How many depends on timing, because the
    # coordinator lowers its concurrency at the first rejection and later workers may never try.
    assert scp.rejected >= 1
    assert report.retries >= scp.rejected
    assert all(o.delivered and o.attempts == 1 for o in report.outcomes)


def test_workers_exit_when_the_coordinator_dies(corpus: tuple[Path, set[str]]) -> None:
    path, uids = corpus
    with PeerSCP(paced(0.004)) as scp:
        proc = start_send("-j", "2", "--batch-size", "60", "+sd", "+r", "127.0.0.1", str(scp.port), str(path))
        wait_until(lambda: scp.count >= 20 and len(psutil.Process(proc.pid).children()) == 2)
        workers = psutil.Process(proc.pid).children()
        proc.kill()  # the coordinator only: its workers are orphaned mid-batch
        proc.wait(timeout=10)
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, "orphaned workers kept running"
        # the peer reports every association over and the senders are gone: nothing can arrive after this
        wait_until(lambda: scp.active == 0, timeout=10)
        count = scp.count
        assert scp.count == count < 120  # they stopped sending before finishing their first batches (2 x 60)
