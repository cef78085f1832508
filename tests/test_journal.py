"""The resumable journal (``--journal``) and ``batchstore journal``: what is done is never sent again.

Peers are `ScriptedSCP` on loopback; each test checks the C-STOREs the peer saw, the journal and the report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gen_corpus import generate
from hypothesis import given, settings
from hypothesis import strategies as st_h
from scripted_scp import ScriptedSCP

import batchstore
from batchstore.dicom.part10 import ScanFailure
from batchstore.sender import outcomes as st
from batchstore.sender.journal import Journal, JournalReport, journal_key
from batchstore.sender.report import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, Outcome
from batchstore.sender.scan import scan

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("jr")
    manifest = generate(str(root / "c"), 30, seed=9, profile="uniform", size=1024)
    return root / "c", manifest["files"]


def _send(path: Path, port: int, journal: str, **kw: object) -> batchstore.sender.report.Report:
    options: dict = {"scan_directories": True, "recurse": True, "workers": 2, "retry_wait": 0.01}
    options.update(kw)
    return batchstore.send([str(path)], "127.0.0.1", port, journal=journal, **options)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchstore", *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_resume_sends_only_what_is_not_done(corpus: tuple[Path, list[dict]], tmp_path: Path) -> None:
    path, files = corpus
    uids = {f["sop_instance_uid"] for f in files}
    bad = set(sorted(uids)[:3])
    journal = str(tmp_path / "j.db")
    # one peer (the journal is bound to its destination, port included) that rejects `rejecting` at first
    rejecting = set(bad)
    with ScriptedSCP(lambda n, uid: 0xA900 if uid in rejecting else 0) as scp:
        first = _send(path, scp.port, journal, halt_on_failure=False, retries=3)
        assert first.exit_code() == EXIT_SOME_FAILED
        failed = [o for o in first.outcomes if not o.delivered]
        assert {o.sop_instance_uid for o in failed} == bad
        assert all(o.category == st.PERMANENT and o.attempts == 1 for o in failed)  # reported once
        assert scp.count == len(files)  # permanent failures are not retried
        with Journal(journal) as j:
            summary = j.summary()
        assert (summary.done, summary.failed_permanent, summary.pending) == (len(files) - 3, 3, 0)

        rejecting.clear()
        stored_before = len(scp.stored)
        second = _send(path, scp.port, journal)
        assert isinstance(second, JournalReport)
        assert second.exit_code() == EXIT_OK
        assert set(scp.stored[stored_before:]) == bad and scp.count == len(files) + 3  # only what was not done
        assert second.already_done == len(files) - 3
        third = _send(path, scp.port, journal)
        assert scp.count == len(files) + 3  # nothing sent
    assert third.exit_code() == EXIT_OK and not third.outcomes
    text = "\n".join(third.summary_lines())
    assert "Nothing to send: all 30 file(s) are already done" in text
    assert third.to_dict()["summary"]["already_done"] == 30


def test_changed_file_is_sent_again(corpus: tuple[Path, list[dict]], tmp_path: Path) -> None:
    path, files = corpus
    journal = str(tmp_path / "j.db")
    with ScriptedSCP(lambda n, uid: 0) as scp:
        assert _send(path, scp.port, journal).exit_code() == EXIT_OK
        assert scp.count == len(files)
        changed = path / files[4]["path"]
        info = changed.stat()
        os.utime(changed, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
        again = _send(path, scp.port, journal)
        assert again.exit_code() == EXIT_OK
        assert scp.count == len(files) + 1
        assert [o.sop_instance_uid for o in again.outcomes] == [files[4]["sop_instance_uid"]]


def test_done_is_never_downgraded(corpus: tuple[Path, list[dict]], tmp_path: Path) -> None:
    path, _files = corpus
    instances, _ = scan([str(path)], scan_directories=True, recurse=True)
    with Journal(str(tmp_path / "j.db")) as j:
        j.begin_run("test")
        assert len(j.register(instances)) == len(instances)
        first = instances[0].path
        j.record([Outcome(path=first, category=st.SUCCESS, status=0, attempts=1)])
        j.record([Outcome(path=first, category=st.NOT_SENT, error="not sent: run halted")])  # --repeat
        assert j.categories()[journal_key(first)] == st.SUCCESS
        assert [i.path for i in j.register(instances)] == [i.path for i in instances[1:]]


def test_journal_command_and_cli_resume(corpus: tuple[Path, list[dict]], tmp_path: Path) -> None:
    path, files = corpus
    journal = str(tmp_path / "j.db")
    bad = sorted(f["sop_instance_uid"] for f in files)[0]
    with ScriptedSCP(lambda n, uid: 0xC000 if uid == bad else 0) as scp:
        proc = run_cli("send", "-nh", "-j", "2", "--journal", journal, "+sd", "+r",
                       "127.0.0.1", str(scp.port), str(path))  # fmt: skip
        assert proc.returncode == EXIT_SOME_FAILED, proc.stderr[-2000:]
        assert "retrying will not help" in proc.stderr
    out = tmp_path / "journal.json"
    summary = run_cli("journal", journal, "--report", str(out))
    assert summary.returncode == EXIT_SOME_FAILED, summary.stderr
    assert f"Done:                  {len(files) - 1}" in summary.stdout
    assert "Failed, permanent:     1" in summary.stdout
    assert "Last run:" in summary.stdout and "exit code 6" in summary.stdout
    data = json.loads(out.read_text())
    assert len(data["files"]) == len(files)
    assert [f["sop_instance_uid"] for f in data["files"] if f["category"] == "permanent"] == [bad]
    csv_out = tmp_path / "journal.csv"
    assert run_cli("journal", journal, "--report", str(csv_out)).returncode == EXIT_SOME_FAILED
    assert len(csv_out.read_text().splitlines()) == len(files) + 1

    not_a_journal = tmp_path / "x.db"
    not_a_journal.write_text("hello, I am not SQLite" * 100)
    assert run_cli("journal", str(not_a_journal)).returncode == EXIT_ERROR
    assert run_cli("journal", str(tmp_path / "missing.db")).returncode == EXIT_ERROR


def test_rename_only_after_journaled(corpus: tuple[Path, list[dict]], tmp_path: Path) -> None:
    path, files = corpus
    copy = tmp_path / "c"
    shutil.copytree(path, copy)
    journal = str(tmp_path / "j.db")
    bad = sorted(f["sop_instance_uid"] for f in files)[0]
    with ScriptedSCP(lambda n, uid: 0xA900 if uid == bad else 0) as scp:
        report = _send(copy, scp.port, journal, halt_on_failure=False, rename=True)
    assert report.exit_code() == EXIT_SOME_FAILED
    with Journal(journal) as j:
        categories = j.categories()
    for f in files:
        original = copy / f["path"]
        suffix = ".bad" if f["sop_instance_uid"] == bad else ".done"
        assert not original.exists() and Path(str(original) + suffix).exists()
        assert categories[journal_key(str(original))] == (st.PERMANENT if suffix == ".bad" else st.SUCCESS)


def test_each_file_is_written_once_and_untried_ones_at_the_end(
    corpus: tuple[Path, list[dict]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registered file's row is written with its first outcome; files not tried yet are written as pending
    only when the run ends (or a reader asks). Later outcomes update the rows; done is never downgraded."""
    import sqlite3

    import batchstore.sender.journal as journal_module

    monkeypatch.setattr(journal_module, "COMMIT_SECONDS", 0.0)  # every record() commits
    path, _files = corpus
    instances, _ = scan([str(path)], scan_directories=True, recurse=True)
    unreadable = tmp_path / "junk.dcm"
    unreadable.write_bytes(b"not DICOM")
    a, b, c = (i.path for i in instances[:3])
    db = str(tmp_path / "j.db")

    def rows() -> dict[str, tuple]:
        with sqlite3.connect(db) as other:  # what another process (or a crash) would find
            return {
                r[0]: r[1:]
                for r in other.execute("SELECT path, category, status, attempts, tries FROM files").fetchall()
            }

    with Journal(db) as j:
        j.begin_run("test")
        j.register(instances, [ScanFailure(str(unreadable), "not a DICOM file")])
        j.record([Outcome(path=a, category=st.TRANSIENT, error="busy", attempts=1)])
        j.record([Outcome(path=a, category=st.SUCCESS, status=0, attempts=2)])
        mid_run = rows()
        assert set(mid_run) == {journal_key(a), journal_key(str(unreadable))}  # tried files only
        assert mid_run[journal_key(a)] == (st.SUCCESS, 0, 2, 2)
        j.record([Outcome(path=b, category=st.PERMANENT, status=0xA900, attempts=1)])
        j.flush()
        j.record([Outcome(path=a, category=st.NOT_SENT, error="not sent: run halted")])  # never downgraded
    final = rows()
    assert final[journal_key(a)] == (st.SUCCESS, 0, 2, 2)
    assert final[journal_key(b)] == (st.PERMANENT, 0xA900, 1, 1)
    assert final[journal_key(c)] == ("pending", None, 0, 0)
    assert final[journal_key(str(unreadable))][0] == st.PERMANENT
    assert len(final) == len(instances) + 1


@settings(max_examples=400, deadline=None)
@given(st_h.lists(st_h.sampled_from(["", ".", "..", "a", "b.dcm", ".hidden", "x..y", " "]), max_size=6),
       st_h.sampled_from(["/", "//", "///", "", "./"]), st_h.sampled_from(["", "/", "//"]))  # fmt: skip
def test_journal_key_is_abspath(parts: list[str], lead: str, trail: str) -> None:
    """The shortcut for paths that are already absolute and normal gives what `os.path.abspath` gives."""
    path = lead + "/".join(parts) + trail
    if path:
        assert journal_key(path) == os.path.abspath(path)


def test_many_outcomes_in_one_commit_are_all_written(corpus: tuple[Path, list[dict]], tmp_path: Path) -> None:
    """First outcomes go out as multi-row INSERTs of `_ROWS_PER_INSERT` rows: more rows than several of
    them, and a remainder, each written once with its own values; the untried rest written as pending."""
    import sqlite3

    from batchstore.sender import journal as journal_module

    path, _files = corpus
    instances, _ = scan([str(path)], scan_directories=True, recurse=True)
    per = journal_module._ROWS_PER_INSERT
    # the corpus's 30 files under many names: the journal keys inputs by path
    links = tmp_path / "links"
    links.mkdir()
    many = []
    for n in range(2 * per + 5 + 7):
        inst = instances[n % len(instances)]
        link = links / f"{n:04d}.dcm"
        link.symlink_to(inst.path)
        many.append(inst._replace(path=str(link)))
    db = str(tmp_path / "j.db")
    tried = many[: 2 * per + 5]
    with Journal(db) as j:
        j.begin_run("test")
        j.register(many)
        j.record(
            [
                Outcome(path=inst.path, category=st.SUCCESS, status=n % 3, attempts=1 + n % 2)
                for n, inst in enumerate(tried)
            ]
        )
    with sqlite3.connect(db) as other:
        query = "SELECT path, category, status, attempts, sop_instance_uid FROM files"
        rows = {r[0]: r[1:] for r in other.execute(query)}
    assert len(rows) == len(many)
    for n, inst in enumerate(tried):
        assert rows[journal_key(inst.path)] == (st.SUCCESS, n % 3, 1 + n % 2, inst.sop_instance_uid)
    for inst in many[len(tried) :]:
        assert rows[journal_key(inst.path)][:3] == ("pending", None, 0)
