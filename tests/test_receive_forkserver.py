"""`receive --fork`'s fork server (`receiver.spawner`): the process that forks the association children for
the receiver, so that the receiver's own pages are not copied at each association.

The fork server is the compiled `receiver._sibling`; ``make test`` builds it. With
``BATCHSTORE_PURE_PYTHON=1`` it is not used and the receiver forks its children itself: these tests then
check only that.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
from test_receive_helpers import RawSCU, Receiver, ct_dataset, encode, wait_for

from batchstore.receiver import spawner

PURE = os.environ.get("BATCHSTORE_PURE_PYTHON") == "1"
UID_ROOT = "1.2.826.0.1.3680043.9.7781.19"


def _fork_server_pid(rx: Receiver) -> int | None:
    """The fork server's pid, as the receiver logs it with ``-d`` (None if it has none)."""
    found = re.search(r"fork server (\d+) forks", rx.log())
    return int(found.group(1)) if found else None


def _store(port: int, uids: list[str]) -> None:
    """One association per UID, one C-STORE each, every one answered with success."""
    for uid in uids:
        scu = RawSCU(port)
        assert scu.store(encode(ct_dataset(uid)), uid).status == 0
        scu.release()


def _minor_faults(pid: int) -> int:
    """The page faults process `pid` has taken without I/O (copy-on-write among them)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[7])


def test_fork_server_is_used_where_it_is_built(tmp_path: Path) -> None:
    """The compiled fork server is found where it is built, and nowhere with ``BATCHSTORE_PURE_PYTHON``."""
    assert (spawner.compiled is None) == PURE


@pytest.mark.skipif(PURE or spawner.compiled is None, reason="no fork server with the pure-Python path")
def test_receiver_survives_its_fork_server_and_leaves_no_process(tmp_path: Path) -> None:
    """A killed fork server costs nothing: the receiver says so once, forks its children itself, stores
    every file; on SIGTERM it exits 0 and no process of its is left (the fork server included)."""
    with Receiver(tmp_path, ["--fork", "-d"]) as rx:
        assert rx.proc is not None
        server = psutil.Process(rx.proc.pid)
        assert wait_for(lambda: _fork_server_pid(rx) is not None)
        forker = _fork_server_pid(rx)
        assert forker is not None and psutil.Process(forker).ppid() == rx.proc.pid
        uids = [f"{UID_ROOT}.71.{i}" for i in range(4)]
        _store(rx.port, uids[:2])
        os.kill(forker, signal.SIGKILL)
        assert wait_for(lambda: "the fork server" in rx.log())
        _store(rx.port, uids[2:])
        assert sorted(p.name for p in rx.out_dir.iterdir()) == sorted(f"CT.{uid}" for uid in uids)
        assert forker not in [child.pid for child in server.children()]
        assert rx.log().count("forking association children in the receiver") == 1
        children = server.children()
        assert rx.stop() == 0
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


@pytest.mark.skipif(PURE or spawner.compiled is None, reason="no fork server with the pure-Python path")
def test_fork_server_spares_the_receiver_copying_its_pages(tmp_path: Path) -> None:
    """What the fork server is for: per association the receiver takes a fraction of the copy-on-write
    page faults it takes when it forks the children itself (~240 on the machine this was written on,
    against ~20 with the fork server); both receivers store every file."""
    faults = {}
    for on in ("0", "1"):
        env = {**os.environ, "BATCHSTORE_FORK_SERVER": on}
        out = tmp_path / f"out{on}"
        (tmp_path / on).mkdir()
        with Receiver(tmp_path / on, ["--fork"], out=out, env=env) as rx:
            assert rx.proc is not None
            _store(rx.port, [f"{UID_ROOT}.72.{on}.0"])  # the first association's one-time costs
            time.sleep(0.2)
            before = _minor_faults(rx.proc.pid)
            uids = [f"{UID_ROOT}.72.{on}.{i}" for i in range(1, 31)]
            _store(rx.port, uids)
            assert wait_for(lambda out=out: len(list(out.iterdir())) == 31)  # type: ignore[misc]
            faults[on] = (_minor_faults(rx.proc.pid) - before) / len(uids)
    assert faults["1"] * 3 < faults["0"], faults


@pytest.mark.skipif(PURE or spawner.compiled is None, reason="no fork server with the pure-Python path")
def test_fork_server_and_spare_exit_when_the_receiver_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the receiver leaves nothing running: the fork server and the waiting child see their
    channels close and exit."""
    with Receiver(tmp_path, ["--fork", "-d"]) as rx:
        assert rx.proc is not None
        server = psutil.Process(rx.proc.pid)
        assert wait_for(lambda: len(server.children()) == 2)
        children = server.children()
        assert _fork_server_pid(rx) in [child.pid for child in children]
        rx.proc.kill()
        rx.proc.wait(10)

        def gone(child: psutil.Process) -> bool:
            try:
                return child.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        assert wait_for(lambda: all(gone(child) for child in children))
