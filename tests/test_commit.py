"""Storage commitment end to end: ``send --commit``, ``batchstore commit`` and ``batchstore journal`` against
batchstore's own receiver as commitment SCP, reporting on the same association and on a new one; a report
that never comes (timeout, retry, then a rerun that asks again); Orthanc as the PACS."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from peers import BatchstoreReceiver, Orthanc, batchstore_env, free_port, make_corpus, received_index
from tls_certs import make_pki

import batchstore
from batchstore.sender.commitment import CommitOptions
from batchstore.sender.report import EXIT_NOT_COMMITTED, EXIT_OK, EXIT_USAGE

LOOPBACK = "127.0.0.1"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batchstore", *args], capture_output=True, text=True,
                          env=batchstore_env(), timeout=timeout)  # fmt: skip


def journal_states(journal: Path, tmp_path: Path) -> tuple[int, dict[str, dict[str, str]]]:
    """``batchstore journal JOURNAL --report``: its exit code, and SOP Instance UID -> report record."""
    report = tmp_path / f"{journal.stem}-states.csv"
    proc = run_cli("journal", str(journal), "--report", str(report))
    with open(report, newline="") as fh:
        return proc.returncode, {row["sop_instance_uid"]: row for row in csv.DictReader(fh)}


def test_send_commit_on_the_same_association(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 12, profile="uniform", size=1024)
    journal = tmp_path / "j.db"
    with BatchstoreReceiver(tmp_path / "out", ["--commitment", "--fsync"], fork=True, verbose=True) as scp:
        proc = run_cli("send", "-v", "+sd", "+r", "-j", "2", "--journal", str(journal), "--commit",
                       "--commit-batch", "5", "--commit-timeout", "20", LOOPBACK, str(scp.port), str(tmp_path / "in"))  # fmt: skip
        log = scp.log()
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    assert "3 transaction(s)" in proc.stderr and proc.stderr.count("(same association)") == 3, proc.stderr[
        -3000:
    ]
    assert log.count("storage commitment, transaction") == 3
    code, states = journal_states(journal, tmp_path)
    assert code == EXIT_OK
    assert set(states) == corpus.uids() == set(received_index(tmp_path / "out"))
    assert {row["commitment"] for row in states.values()} == {"committed"}
    assert len({row["commit_transaction_uid"] for row in states.values()}) == 3


def test_commit_reported_on_a_new_association_with_a_failure(tmp_path: Path) -> None:
    """The receiver reports on an association it opens to ``--commit-port``; a file deleted from its
    output directory before the request is reported failed (0x0112), and the exit code says so."""
    corpus = make_corpus(tmp_path / "in", 8, profile="uniform", size=1024)
    journal = tmp_path / "j.db"
    listen = free_port()
    extra = ["--commit-reply-to", f"{LOOPBACK}:{listen}", "--commit-reply-aet", "MIGRATOR"]
    with BatchstoreReceiver(tmp_path / "out", extra, fork=False, verbose=True) as scp:
        sent = run_cli("send", "-aet", "MIGRATOR", "+sd", "+r", "--journal", str(journal), LOOPBACK, str(scp.port),
                       str(tmp_path / "in"))  # fmt: skip
        assert sent.returncode == EXIT_OK, sent.stderr[-3000:]
        stored = received_index(tmp_path / "out")
        lost = sorted(stored)[0]
        Path(stored[lost]).unlink()
        commit = ["--commit-port", str(listen), "--commit-host", LOOPBACK, "--commit-timeout", "20"]
        proc = run_cli("commit", "-v", "-aet", "MIGRATOR", *commit, str(journal))
        log = scp.log()
        code, states = journal_states(journal, tmp_path)
        # a rerun of the send with --commit sends the file the peer could not commit again
        rerun = run_cli("send", "-aet", "MIGRATOR", "+sd", "+r", "--journal", str(journal), "--commit", *commit,
                        LOOPBACK, str(scp.port), str(tmp_path / "in"))  # fmt: skip
        assert rerun.returncode == EXIT_OK, rerun.stderr[-3000:]
        assert "Sent, success:         1" in rerun.stderr and lost in received_index(tmp_path / "out")
    assert proc.returncode == EXIT_NOT_COMMITTED, proc.stderr[-3000:]
    assert "new association from STORESCP" in proc.stderr and "N-EVENT-REPORT-RSP from MIGRATOR" in log
    assert code == EXIT_NOT_COMMITTED and set(states) == corpus.uids()
    assert states[lost]["commitment"] == "failed"
    assert states[lost]["commit_failure"] == "0x0112 no such object instance"
    assert {states[uid]["commitment"] for uid in states if uid != lost} == {"committed"}
    summary = run_cli("journal", str(journal))
    assert summary.returncode == EXIT_OK and "Committed:             8" in summary.stdout, summary.stdout
    code, states = journal_states(journal, tmp_path)
    assert code == EXIT_OK and {row["commitment"] for row in states.values()} == {"committed"}


def test_a_lost_report_is_asked_again_then_by_a_rerun(tmp_path: Path) -> None:
    """Reports go to a port where nobody listens: the request times out, is asked again once (a new
    transaction), and the files stay requested (exit 7). `batchstore.commit` (the Python API of
    ``batchstore commit``) later asks for them again and gets them committed."""
    make_corpus(tmp_path / "in", 6, profile="uniform", size=1024)
    journal = tmp_path / "j.db"
    port = free_port()
    nobody = free_port()
    out = tmp_path / "out"
    lost = ["--commit-reply-to", f"{LOOPBACK}:{nobody}", "-ts", "2", str(port)]
    with BatchstoreReceiver(out, lost, fork=False, port_arg=False):
        proc = run_cli("send", "+sd", "+r", "--journal", str(journal), "--commit", "--commit-timeout", "1",
                       "--commit-retries", "1", LOOPBACK, str(port), str(tmp_path / "in"))  # fmt: skip
    assert proc.returncode == EXIT_NOT_COMMITTED, proc.stderr[-3000:]
    assert "asking again" in proc.stderr and "2 transaction(s)" in proc.stderr
    code, states = journal_states(journal, tmp_path)
    assert code == EXIT_NOT_COMMITTED and {row["commitment"] for row in states.values()} == {"requested"}
    first = {row["commit_transaction_uid"] for row in states.values()}
    with BatchstoreReceiver(out, ["--commitment", str(port)], fork=False, port_arg=False):
        again = batchstore.commit(str(journal), options=CommitOptions(timeout=20))  # the Python API
    assert again.complete and (again.requested, again.committed, again.transactions) == (6, 6, 1), again
    code, states = journal_states(journal, tmp_path)
    assert code == EXIT_OK and {row["commitment"] for row in states.values()} == {"committed"}
    assert not first & {row["commit_transaction_uid"] for row in states.values()}  # a new transaction


def test_commit_needs_a_journal_and_commit_a_journal(tmp_path: Path) -> None:
    make_corpus(tmp_path / "in", 1, profile="uniform", size=1024)
    proc = run_cli("send", "--commit", "+sd", LOOPBACK, "104", str(tmp_path / "in"))
    assert proc.returncode == EXIT_USAGE and "--commit needs --journal" in proc.stderr
    proc = run_cli("commit", str(tmp_path / "missing.db"))
    assert proc.returncode == 1 and "no such journal" in proc.stderr


@pytest.mark.needs_orthanc
def test_orthanc_commits_what_it_has_and_reports_a_deleted_instance_failed(tmp_path: Path) -> None:
    """Orthanc as the PACS: it reports on an association it opens to the modality it knows by batchstore's
    AE title (``DicomModalities``): everything sent is committed and in its ``/instances``; an instance
    deleted through its REST API before the request comes back failed."""
    first = make_corpus(tmp_path / "a", 10, profile="uniform", size=1024, seed=3)
    second = make_corpus(tmp_path / "b", 5, profile="uniform", size=1024, seed=4)
    listen = free_port()
    modalities = {"DicomModalities": {"migrator": ["MIGRATOR", LOOPBACK, listen]}}
    commit = ["--commit-port", str(listen), "--commit-host", LOOPBACK, "--commit-timeout", "20"]
    with Orthanc(extra_config=modalities) as orthanc:
        proc = run_cli("send", "-v", "-aet", "MIGRATOR", "+sd", "+r", "--journal", str(tmp_path / "a.db"), "--commit",
                       *commit, LOOPBACK, str(orthanc.dicom_port), str(tmp_path / "a"))  # fmt: skip
        assert proc.returncode == EXIT_OK, proc.stderr[-3000:] + orthanc.log()[-2000:]
        sent = run_cli("send", "-aet", "MIGRATOR", "+sd", "+r", "--journal", str(tmp_path / "b.db"), LOOPBACK,
                       str(orthanc.dicom_port), str(tmp_path / "b"))  # fmt: skip
        assert sent.returncode == EXIT_OK, sent.stderr[-3000:]
        lost = sorted(second.uids())[2]
        found = requests.post(f"{orthanc.url}/tools/lookup", data=lost, timeout=10).json()
        requests.delete(f"{orthanc.url}/instances/{found[0]['ID']}", timeout=10).raise_for_status()
        unknown = run_cli("commit", "-aet", "STRANGER", *commit, str(tmp_path / "b.db"))
        proc_b = run_cli("commit", "-aet", "MIGRATOR", *commit, str(tmp_path / "b.db"))
        in_orthanc = orthanc.instance_uids()
    assert "new association from" in proc.stderr
    assert unknown.returncode == EXIT_NOT_COMMITTED and "does it know the calling AE title" in unknown.stderr
    code, states = journal_states(tmp_path / "a.db", tmp_path)
    assert code == EXIT_OK and set(states) == first.uids() <= in_orthanc
    assert {row["commitment"] for row in states.values()} == {"committed"}
    assert proc_b.returncode == EXIT_NOT_COMMITTED, proc_b.stderr[-3000:]
    code, states = journal_states(tmp_path / "b.db", tmp_path)
    assert code == EXIT_NOT_COMMITTED and set(states) == second.uids()
    assert states[lost]["commitment"] == "failed" and states[lost]["commit_failure"].startswith("0x0112")
    assert {states[uid]["commitment"] for uid in states if uid != lost} == {"committed"}
    assert second.uids() - in_orthanc == {lost}


def test_commit_over_tls(tmp_path: Path) -> None:
    """The commitment request goes over TLS like the files (same +tls options); the report comes back on
    that association."""
    pki = make_pki(tmp_path / "pki")
    corpus = make_corpus(tmp_path / "in", 4, profile="uniform", size=1024)
    journal = tmp_path / "j.db"
    server = ["+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca), "--commitment"]
    with BatchstoreReceiver(tmp_path / "out", server, fork=True) as scp:
        proc = run_cli("send", "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca), "+sd",
                       "+r", "--journal", str(journal), "--commit", "--commit-timeout", "20", LOOPBACK,
                       str(scp.port), str(tmp_path / "in"))  # fmt: skip
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    code, states = journal_states(journal, tmp_path)
    assert code == EXIT_OK and set(states) == corpus.uids()
    assert {row["commitment"] for row in states.values()} == {"committed"}


def test_a_peer_that_refuses_commitment_leaves_the_journal_saying_not_committed(tmp_path: Path) -> None:
    """The receiver without ``--commitment`` stores the files but refuses the commitment association: the
    send exits 7, and so does ``batchstore journal``, with every file stored and not requested."""
    corpus = make_corpus(tmp_path / "in", 4, profile="uniform", size=1024)
    journal = tmp_path / "j.db"
    with BatchstoreReceiver(tmp_path / "out", [], fork=True) as scp:
        proc = run_cli("send", "+sd", "+r", "--journal", str(journal), "--commit", "--commit-timeout", "5",
                       LOOPBACK, str(scp.port), str(tmp_path / "in"))  # fmt: skip
    assert proc.returncode == EXIT_NOT_COMMITTED, proc.stderr[-3000:]
    assert set(received_index(tmp_path / "out")) == corpus.uids()
    code, states = journal_states(journal, tmp_path)
    assert code == EXIT_NOT_COMMITTED
    assert set(states) == corpus.uids() and {row["commitment"] for row in states.values()} == {"not requested"}
    summary = run_cli("journal", str(journal))
    assert summary.returncode == EXIT_NOT_COMMITTED and "Stored, not requested: 4" in summary.stdout + summary.stderr


def test_reports_on_a_new_association_over_tls(tmp_path: Path) -> None:
    """With +tls on both sides the report association is TLS too: the receiver reports to the sender's
    ``--commit-port`` listener as a TLS client, with its own certificate, and the files are committed."""
    pki = make_pki(tmp_path / "pki")
    corpus = make_corpus(tmp_path / "in", 6, profile="uniform", size=1024)
    journal = tmp_path / "j.db"
    listen = free_port()
    server = ["+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca), "--commitment",
              "--commit-reply-to", f"{LOOPBACK}:{listen}"]  # fmt: skip
    with BatchstoreReceiver(tmp_path / "out", server, fork=True, verbose=True) as scp:
        proc = run_cli("send", "-v", "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca), "+sd",
                       "+r", "--journal", str(journal), "--commit", "--commit-timeout", "20", "--commit-port",
                       str(listen), "--commit-host", LOOPBACK, LOOPBACK, str(scp.port), str(tmp_path / "in"))  # fmt: skip
        log = scp.log()
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    assert "new association from STORESCP" in proc.stderr, proc.stderr[-3000:]
    assert "N-EVENT-REPORT-RSP from STORESCU" in log, log[-3000:]
    code, states = journal_states(journal, tmp_path)
    assert code == EXIT_OK and set(states) == corpus.uids()
    assert {row["commitment"] for row in states.values()} == {"committed"}


def test_the_tls_report_listener_takes_no_plain_or_untrusted_report(tmp_path: Path) -> None:
    """The listener of a TLS run accepts a report only over TLS from a certificate it trusts: a plain
    association and one whose certificate another CA signed deliver nothing; a trusted one delivers."""
    from batchstore.net import commitment as sc
    from batchstore.net.errors import NetError
    from batchstore.net.tls import TLSOptions
    from batchstore.receiver.commitment import report_on_new_association
    from batchstore.sender.commit_listener import ReportListener

    pki = make_pki(tmp_path / "pki")
    sender = TLSOptions(key_file=str(pki.client_key), cert_file=str(pki.client_cert), ca_files=(str(pki.ca),))
    trusted = TLSOptions(key_file=str(pki.server_key), cert_file=str(pki.server_cert), ca_files=(str(pki.ca),))
    untrusting = TLSOptions(key_file=str(pki.server_key), cert_file=str(pki.server_cert),
                            ca_files=(str(pki.wrong_ca),))  # fmt: skip
    ref = sc.Reference("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5")
    report = sc.EventReport("1.2.3.99", 1, committed=[ref])
    with ReportListener(LOOPBACK, 0, "MIGRATOR", timeout=5, tls=sender) as listener:
        with pytest.raises((OSError, NetError)):
            report_on_new_association(LOOPBACK, listener.port, "PACS", "MIGRATOR", report, 5)
        with pytest.raises(NetError, match="certificate"):
            report_on_new_association(LOOPBACK, listener.port, "PACS", "MIGRATOR", report, 5, untrusting)
        assert listener.reports.empty()
        report_on_new_association(LOOPBACK, listener.port, "PACS", "MIGRATOR", report, 5, trusted)
        got, calling_ae = listener.reports.get(timeout=5)
    assert calling_ae == "PACS" and got.transaction_uid == "1.2.3.99"
    assert [r.sop_instance_uid for r in got.committed] == ["1.2.3.4.5"]


def test_commit_port_with_anonymous_tls_is_refused_up_front(tmp_path: Path) -> None:
    proc = run_cli("send", "+tla", "+sd", "--journal", str(tmp_path / "j.db"), "--commit", "--commit-port",
                   str(free_port()), LOOPBACK, str(free_port()), str(tmp_path))  # fmt: skip
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "--commit-port" in proc.stderr and "private key and certificate" in proc.stderr, proc.stderr
