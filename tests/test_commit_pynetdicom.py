"""Storage commitment against pynetdicom's own implementation: pynetdicom as the commitment SCU of
``batchstore receive --commitment`` (the report on the same association), and as the SCP that
``batchstore commit`` asks (the report on the same association, sent from another thread after the
N-ACTION-RSP, as pynetdicom's documentation does it)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from peers import BatchstoreReceiver, make_corpus, received_index
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import StorageCommitmentPushModel
from test_commit import LOOPBACK, journal_states, run_cli

from batchstore.net import commitment as sc
from batchstore.sender.report import EXIT_NOT_COMMITTED, EXIT_OK


def _request(uids: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = "1.2.826.0.1.3680043.9.7777.1"
    items = []
    for uid, sop_class in uids.items():
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def test_pynetdicom_asks_batchstore_receive_and_gets_the_report_on_its_association(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 3, profile="uniform", size=1024)
    reports: list[tuple[int, Dataset]] = []

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append((event.request.EventTypeID, event.event_information))
        return 0x0000, None

    with BatchstoreReceiver(tmp_path / "out", ["--commitment"], fork=False) as scp:
        sent = run_cli("send", "+sd", "+r", LOOPBACK, str(scp.port), str(tmp_path / "in"))
        assert sent.returncode == EXIT_OK, sent.stderr[-2000:]
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate(LOOPBACK, scp.port, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
        assert assoc.is_established
        wanted = {r["sop_instance_uid"]: r["sop_class_uid"] for r in corpus.files}
        wanted["1.2.826.0.1.3680043.9.7777.404"] = sorted(wanted.values())[0]  # never sent
        status, _reply = assoc.send_n_action(
            _request(wanted), 1, StorageCommitmentPushModel, sc.STORAGE_COMMITMENT_INSTANCE
        )
        deadline = time.monotonic() + 10
        while not reports and time.monotonic() < deadline:
            time.sleep(0.05)
        assoc.release()
    assert status.Status == 0x0000
    assert len(reports) == 1
    event_type, info = reports[0]
    assert event_type == 2 and info.TransactionUID == "1.2.826.0.1.3680043.9.7777.1"
    assert {i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence} == corpus.uids()
    assert corpus.uids() == set(received_index(tmp_path / "out"))
    assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in info.FailedSOPSequence] == [
        ("1.2.826.0.1.3680043.9.7777.404", 0x0112)
    ]


def test_batchstore_commit_asks_pynetdicom_which_reports_on_the_same_association(tmp_path: Path) -> None:
    """pynetdicom as the archive: it keeps a set of SOP instances, answers the N-ACTION, then reports from
    another thread on the same association; one instance it does not keep comes back failed."""
    make_corpus(tmp_path / "in", 4, profile="uniform", size=1024)
    kept: set[str] = set()

    def on_store(event: evt.Event) -> int:
        kept.add(event.request.AffectedSOPInstanceUID)
        return 0x0000

    def on_action(event: evt.Event) -> tuple[int, None]:
        request = event.action_information
        assoc = event.assoc

        def report() -> None:
            time.sleep(0.2)  # after the N-ACTION-RSP
            info = Dataset()
            info.TransactionUID = request.TransactionUID
            done, failed = [], []
            for item in request.ReferencedSOPSequence:
                out = Dataset()
                out.ReferencedSOPClassUID = item.ReferencedSOPClassUID
                out.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
                if item.ReferencedSOPInstanceUID in kept:
                    done.append(out)
                else:
                    out.FailureReason = 0x0112
                    failed.append(out)
            info.ReferencedSOPSequence = done
            if failed:
                info.FailedSOPSequence = failed
            assoc.send_n_event_report(
                info, 2 if failed else 1, StorageCommitmentPushModel, sc.STORAGE_COMMITMENT_INSTANCE
            )

        threading.Thread(target=report, daemon=True).start()
        return 0x0000, None

    ae = AE(ae_title="ARCHIVE")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(StorageCommitmentPushModel)
    server = ae.start_server(
        (LOOPBACK, 0),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_N_ACTION, on_action)],
    )
    try:
        port = server.server_address[1]
        journal = tmp_path / "j.db"
        sent = run_cli("send", "-aec", "ARCHIVE", "+sd", "+r", "--journal", str(journal), LOOPBACK, str(port),
                       str(tmp_path / "in"))  # fmt: skip
        assert sent.returncode == EXIT_OK, sent.stderr[-2000:]
        forgotten = sorted(kept)[1]
        kept.discard(forgotten)
        proc = run_cli("commit", "-v", "--commit-timeout", "15", str(journal))
    finally:
        server.shutdown()
    assert proc.returncode == EXIT_NOT_COMMITTED, proc.stderr[-3000:]
    assert "(same association)" in proc.stderr
    code, states = journal_states(journal, tmp_path)
    assert code == EXIT_NOT_COMMITTED
    assert states[forgotten]["commitment"] == "failed"
    assert {row["commitment"] for uid, row in states.items() if uid != forgotten} == {"committed"}
