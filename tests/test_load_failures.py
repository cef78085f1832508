"""``batchstore load`` when the peer refuses, aborts or is interrupted: every request is counted under what
happened to it, and a level always ends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from peers import batchstore_env, make_corpus
from scripted_scp import ScriptedSCP

import batchstore


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    corpus = make_corpus(tmp_path_factory.mktemp("load_fail"), 2, seed=6, profile="uniform", size=1024)
    return [str(p) for p in corpus.paths()]


def test_statuses_and_aborts_are_counted_and_associations_come_back(files) -> None:
    def policy(n: int, uid: str) -> int | str:
        if n % 50 == 0:
            return "abort"
        return 0xA700 if n % 10 == 0 else 0

    with ScriptedSCP(policy) as scp:
        report = batchstore.load(files, "127.0.0.1", scp.port, concurrency=(2,), duration=1.0)
        answered = scp.count
    level = report.levels[0]
    aborted = level.failures.get("aborted by peer", 0)
    assert aborted >= 2 and set(level.failures) == {"aborted by peer"}, level.failures
    assert level.statuses.get("0xA700", 0) >= 5 and level.statuses.get("0x0000", 0) > 0, level.statuses
    assert level.completed == sum(level.statuses.values()) and level.failed == aborted
    # every abort cost its association and the next request opened another (except after each
    # association's last request): two at the start plus at least one per abort but two
    assert level.setups >= 2 + aborted - 2, (level.setups, aborted)
    assert level.completed + level.failed + level.warmup <= answered
    assert report.exit_code() == 5


def test_count_and_reassociation(files) -> None:
    with ScriptedSCP() as scp:
        report = batchstore.load(files, "127.0.0.1", scp.port, concurrency=(2,), count=301,
                                 stores_per_association=40)  # fmt: skip
        answered = scp.count
    level = report.levels[0]
    assert level.completed == 301 == answered and level.failed == 0
    assert level.setups == 2 * 4  # 151 and 150 C-STOREs on associations of 40: 4 each
    assert abs(level.stores_per_s * level.elapsed_s - 301) <= 1
    assert report.exit_code() == 0


def test_interrupt_stops_the_level_and_keeps_the_figures(files, tmp_path) -> None:
    report_path = tmp_path / "load.json"
    with ScriptedSCP() as scp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchstore", "load", "--duration", "60s", "--concurrency", "2", "--no-progress",
             "--json", str(report_path), "127.0.0.1", str(scp.port), *files],
            env=batchstore_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(2.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - started
    assert proc.returncode == 130, err[-2000:]
    assert stopped_in < 10
    data = json.loads(report_path.read_text())
    assert data["interrupted"] and data["levels"][0]["completed"] > 0
    assert "C-STORE/s" in out
