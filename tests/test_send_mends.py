"""Small mends of ``batchstore send`` (issue 9): ``--version``, ``-d`` with the default engine, ``-lc`` given
a DCMTK logger.cfg, and ``+rn`` never overwriting an existing ``.done``/``.bad``. No DICOM peer needed.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from gen_corpus import generate
from scripted_scp import ScriptedSCP

import batchstore
from batchstore.api import rename_processed
from batchstore.sender import outcomes as st
from batchstore.sender.report import Outcome, Report


def run_send(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchstore", "send", *args], capture_output=True, text=True, timeout=timeout
    )


def test_send_version() -> None:
    proc = run_send("--version")
    assert proc.returncode == 0, proc.stderr
    assert batchstore.__version__ in proc.stdout


def test_log_config_in_log4cplus_format_is_a_one_line_usage_error(tmp_path: Path) -> None:
    cfg = tmp_path / "logger.cfg"
    cfg.write_text(
        "# DCMTK's logger.cfg\n"
        "log4cplus.rootLogger = DEBUG, console\n"
        "log4cplus.appender.console = log4cplus::ConsoleAppender\n"
        "log4cplus.appender.console.layout = log4cplus::PatternLayout\n"
    )
    proc = run_send("-lc", str(cfg), "127.0.0.1", "104", str(tmp_path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "log4cplus" in lines[0], proc.stderr
    broken = tmp_path / "broken.ini"
    broken.write_text("[loggers]\nkeys=root\n")  # no [logger_root], no handlers
    proc = run_send("-lc", str(broken), "127.0.0.1", "104", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_debug_shows_negotiation_and_every_message_with_the_default_engine(tmp_path: Path) -> None:
    manifest = generate(str(tmp_path / "c"), 3, seed=5, profile="uniform", size=1024)
    with ScriptedSCP() as scp:
        debug = run_send("-d", "-j", "1", "+sd", "+r", "127.0.0.1", str(scp.port), str(tmp_path / "c"))
        verbose = run_send("-v", "-j", "1", "+sd", "+r", "127.0.0.1", str(scp.port), str(tmp_path / "c"))
    assert debug.returncode == 0 and verbose.returncode == 0, debug.stderr[-2000:]
    for marker in ("A-ASSOCIATE-RQ", "A-ASSOCIATE-AC", "  context 1"):
        assert marker in debug.stderr, debug.stderr[-2000:]
    assert debug.stderr.count("C-STORE-RQ") == 3 and debug.stderr.count("C-STORE-RSP") == 3
    for uid in (f["sop_instance_uid"] for f in manifest["files"]):
        assert uid in debug.stderr
    assert "C-STORE-RQ" not in verbose.stderr and "A-ASSOCIATE-RQ" not in verbose.stderr


def test_rename_never_overwrites_an_existing_done_or_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sent, failed, fresh = tmp_path / "a.dcm", tmp_path / "b.dcm", tmp_path / "c.dcm"
    for path in (sent, failed, fresh):
        path.write_bytes(b"new " + path.name.encode())
    (tmp_path / "a.dcm.done").write_bytes(b"an earlier run's a")
    (tmp_path / "b.dcm.bad").write_bytes(b"an earlier run's b")
    report = Report()
    report.outcomes = [
        Outcome(path=str(sent), category=st.SUCCESS),
        Outcome(path=str(failed), category=st.PERMANENT, error="refused"),
        Outcome(path=str(fresh), category=st.SUCCESS),
    ]
    with caplog.at_level(logging.WARNING, logger="batchstore"):
        rename_processed(report)
    assert (tmp_path / "a.dcm.done").read_bytes() == b"an earlier run's a"
    assert (tmp_path / "b.dcm.bad").read_bytes() == b"an earlier run's b"
    assert sent.read_bytes() == b"new a.dcm" and failed.read_bytes() == b"new b.dcm"  # left as they are
    assert not fresh.exists() and (tmp_path / "c.dcm.done").read_bytes() == b"new c.dcm"
    assert sum("already exists" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("retries", [0, 2])
def test_retries_counts_the_retries_that_happened(tmp_path: Path, retries: int) -> None:
    """Nobody listens: one worker tries `retries` + 1 associations, so `retries` retries, not one more."""
    from peers import free_port

    generate(str(tmp_path / "c"), 3, seed=11, profile="uniform", size=512)
    report = batchstore.send([str(tmp_path / "c")], "127.0.0.1", free_port(), scan_directories=True,
                             recurse=True, workers=1, retries=retries, retry_wait=0.01)
    assert report.retries == retries
    assert report.counts()[st.SUCCESS] == 0 and report.exit_code() != 0
    assert ("Retries:" in "\n".join(report.summary_lines())) == (retries > 0)
