"""How batchstore send treats the peer's statuses and aborts: classified, retried when transient, reported.

The peer is `ScriptedSCP`, which answers each C-STORE with the status the test chooses.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gen_corpus import generate
from scripted_scp import ScriptedSCP

import batchstore
from batchstore.sender import outcomes as st
from batchstore.sender.report import EXIT_NOTHING_SENT, EXIT_OK, EXIT_SOME_FAILED, EXIT_SOME_FAILED_RETRYABLE


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("st")
    manifest = generate(str(root / "c"), 12, seed=21, profile="uniform", size=2048)
    return root / "c", manifest


def _send(corpus: Path, port: int, **kw: object) -> batchstore.sender.report.Report:
    options = {"scan_directories": True, "recurse": True, "workers": 1, "retry_wait": 0.01}
    options.update(kw)
    return batchstore.send([str(corpus)], "127.0.0.1", port, **options)


def test_classifier() -> None:
    assert st.classify_status(0x0000) == st.SUCCESS
    for warning in (0x0001, 0x0107, 0xB000, 0xB006, 0xB007):
        assert st.classify_status(warning) == st.WARNING
    for transient in (0xA700, 0xA7FF, 0x0213):
        assert st.classify_status(transient) == st.TRANSIENT
    for permanent in (0xA900, 0xA9FF, 0xC000, 0xC123, 0x0122, 0x0124):
        assert st.classify_status(permanent) == st.PERMANENT
    assert st.status_text(0xA700) == "0xA700 Failure: out of resources"


def test_transient_status_is_retried_until_success(corpus: tuple[Path, dict]) -> None:
    path, manifest = corpus
    with ScriptedSCP(lambda n, uid: 0xA700 if n <= 2 else 0) as scp:
        report = _send(path, scp.port, retries=3)
    assert report.exit_code() == EXIT_OK
    assert sorted(scp.stored) == sorted(f["sop_instance_uid"] for f in manifest["files"])
    assert report.retries == 2
    assert max(o.attempts for o in report.outcomes) == 3


def test_transient_status_that_repeats_for_some_files_is_theirs(corpus: tuple[Path, dict]) -> None:
    """Issue 11: 0xA7xx repeating for the same files while the peer accepts the others is those files'
    problem (Orthanc answers 0xA700 for a data set without a Study Instance UID): permanent after one
    retry, exit 6, not "retrying may help"."""
    path, manifest = corpus
    busy = set(sorted(f["sop_instance_uid"] for f in manifest["files"])[:3])
    with ScriptedSCP(lambda n, uid: 0xA701 if uid in busy else 0) as scp:
        report = _send(path, scp.port, retries=3, halt_on_failure=False, batch_size=len(manifest["files"]))
    assert report.exit_code() == EXIT_SOME_FAILED
    failed = [o for o in report.outcomes if not o.delivered]
    assert {o.sop_instance_uid for o in failed} == busy
    assert all(o.category == st.PERMANENT and o.attempts == 2 for o in failed)  # one retry, not three
    assert all(o.error.startswith("0xA701 Failure: out of resources") for o in failed)
    assert all("this data set's problem" in o.error for o in failed)
    assert scp.count == len(manifest["files"]) + len(busy)


def test_transient_status_for_every_file_stays_transient(corpus: tuple[Path, dict]) -> None:
    """A peer answering 0xA7xx to everything for a while is the peer's trouble: retried with backoff."""
    path, manifest = corpus
    with ScriptedSCP(lambda n, uid: 0xA701 if n <= len(manifest["files"]) else 0) as scp:
        report = _send(path, scp.port, retries=3, halt_on_failure=False, batch_size=len(manifest["files"]))
    assert report.exit_code() == EXIT_OK, report.summary_lines()
    assert sorted(scp.stored) == sorted(f["sop_instance_uid"] for f in manifest["files"])


def test_transient_status_that_persists_for_a_lone_file_is_exit_5(corpus: tuple[Path, dict]) -> None:
    """Without another file accepted around it (a batch of one), a repeating 0xA7xx stays transient."""
    path, manifest = corpus
    busy = set(sorted(f["sop_instance_uid"] for f in manifest["files"])[:3])
    with ScriptedSCP(lambda n, uid: 0xA701 if uid in busy else 0) as scp:
        files = [str(path / f["path"]) for f in manifest["files"] if f["sop_instance_uid"] in busy]
        report = batchstore.send(files, "127.0.0.1", scp.port, workers=1, retries=1, retry_wait=0.01,
                                 halt_on_failure=False, batch_size=1)  # fmt: skip
    assert report.exit_code() == EXIT_NOTHING_SENT
    assert all(o.category == st.TRANSIENT and o.attempts == 2 for o in report.outcomes)


def test_peer_that_never_answers_times_out_as_transient(corpus: tuple[Path, dict]) -> None:
    """-td: a C-STORE-RSP that never comes ends in a timeout (transient), then the next file goes out."""
    path, manifest = corpus
    first = sorted(f["sop_instance_uid"] for f in manifest["files"])[0]
    with ScriptedSCP(lambda n, uid: "silent" if uid == first else 0) as scp:
        started = time.monotonic()
        report = _send(path, scp.port, retries=0, halt_on_failure=False, dimse_timeout=0.5)
        elapsed = time.monotonic() - started
    assert report.exit_code() == EXIT_SOME_FAILED_RETRYABLE
    failed = [o for o in report.outcomes if not o.delivered]
    assert [(o.sop_instance_uid, o.category, o.error) for o in failed] == [
        (first, st.TRANSIENT, "timeout waiting for the peer")
    ]
    assert sorted(scp.stored) == sorted(
        f["sop_instance_uid"] for f in manifest["files"] if f["sop_instance_uid"] != first
    )
    assert elapsed < 10


def test_nothing_delivered_is_exit_9(corpus: tuple[Path, dict]) -> None:
    path, _ = corpus
    with ScriptedSCP(lambda n, uid: 0xA701) as scp:
        report = _send(path, scp.port, retries=0, halt_on_failure=False)
    assert report.exit_code() == EXIT_NOTHING_SENT
    assert "retrying may help" in "\n".join(report.summary_lines())


def test_permanent_status_is_not_retried(corpus: tuple[Path, dict]) -> None:
    path, manifest = corpus
    bad = sorted(f["sop_instance_uid"] for f in manifest["files"])[0]
    with ScriptedSCP(lambda n, uid: 0xA900 if uid == bad else 0) as scp:
        report = _send(path, scp.port, retries=3, halt_on_failure=False)
    assert report.exit_code() == EXIT_SOME_FAILED
    failed = [o for o in report.outcomes if not o.delivered]
    assert [o.sop_instance_uid for o in failed] == [bad]
    assert failed[0].attempts == 1 and failed[0].status == 0xA900
    assert scp.count == len(manifest["files"])


def test_warning_counts_as_delivered(corpus: tuple[Path, dict]) -> None:
    path, manifest = corpus
    with ScriptedSCP(lambda n, uid: 0xB000) as scp:
        report = _send(path, scp.port)
    assert report.exit_code() == EXIT_OK
    assert report.counts()[st.WARNING] == len(manifest["files"])


def test_abort_mid_run_is_retried_on_a_new_association(corpus: tuple[Path, dict]) -> None:
    path, manifest = corpus
    with ScriptedSCP(lambda n, uid: "abort" if n == 4 else 0) as scp:
        report = _send(path, scp.port, retries=2)
    assert report.exit_code() == EXIT_OK
    assert sorted(set(scp.stored)) == sorted(f["sop_instance_uid"] for f in manifest["files"])
    assert scp.associations == 2
    assert len(report.associations) == 2
