"""Conformance: both send engines (batchstore's lean loop and pynetdicom's AE) against the same real peers.

Every case runs once per engine (``engine`` = "batchstore" or "pynetdicom") and asserts what arrived at the
peer (SOP Instance UIDs, data set bytes), how the association ended (A-RELEASE or A-ABORT, as the peer saw
it), the per-file categories of the report and the exit code. Peers: DCMTK storescp (peer max PDU 4,096 to
131,072 bytes), ``batchstore receive``, pynetdicom's own SCP (max PDU unlimited), Orthanc, a scripted SCP
for statuses, and one that aborts mid-data-set. Plus pynetdicom's SCU against ``batchstore receive``.

``batchstore receive -pdu`` accepts 4096..131072 only (like storescp), so "unlimited" is covered by
pynetdicom's SCP (``maximum_pdu_size = 0``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner
from peers import (
    Corpus,
    DcmtkStorescp,
    Orthanc,
    dataset_bytes,
    make_corpus,
    received_index,
)
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.presentation import build_context
from scripted_scp import ScriptedSCP
from test_receive_helpers import Receiver, wait_for

import batchstore
from batchstore.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    RLE_LOSSLESS,
    VERIFICATION_SOP_CLASS,
)
from batchstore.net import acse
from batchstore.sender import outcomes as st
from batchstore.sender.report import (
    EXIT_NOTHING_SENT,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_SOME_FAILED_RETRYABLE,
    EXIT_USAGE,
    Report,
)
from batchstore.sender.scu import AssociationOptions, StoreSCU
from batchstore.sender.scu_pynetdicom import PynetdicomSCU, _pause_reactor

ENGINES = ("batchstore", "pynetdicom")
SCU_CLASSES: dict[str, type[StoreSCU] | type[PynetdicomSCU]] = {
    "batchstore": StoreSCU,
    "pynetdicom": PynetdicomSCU,
}
CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = VERIFICATION_SOP_CLASS
IMPLICIT = IMPLICIT_VR_LE
EXPLICIT_LE = EXPLICIT_VR_LE
#: Larger than scu.STREAM_CHUNK (4 MiB): batchstore streams it in chunks instead of one gather write.
BIG_FILE_SIZE = 5 * 2**20


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """50 mixed files (8 SOP classes, 4 transfer syntaxes, one ~3 MB) plus two 5 MiB CT files."""
    root = tmp_path_factory.mktemp("conformance") / "corpus"
    mixed = make_corpus(root / "mixed", 50, seed=41, profile="mixed")
    big = make_corpus(root / "big", 2, seed=42, profile="uniform", size=BIG_FILE_SIZE)
    files = [dict(f, path="mixed/" + f["path"]) for f in mixed.files]
    files += [dict(f, path="big/" + f["path"]) for f in big.files]
    assert len({f["sop_instance_uid"] for f in files}) == len(files) == 52
    assert sum(f["size"] > 2**20 for f in files) >= 3  # data sets that span many PDUs
    assert len({f["transfer_syntax"] for f in files}) >= 4
    return Corpus(root, {"files": files, "junk": []})


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Five 200 KB CT files: every data set spans 13 PDUs at a 16 KB peer maximum."""
    return make_corpus(tmp_path_factory.mktemp("small") / "c", 5, seed=43, profile="uniform", size=200_000)


def send(paths: list[Path] | Path, port: int, engine: str, **kw: object) -> Report:
    options: dict[str, object] = {
        "workers": 1,
        "engine": engine,
        "scan_directories": True,
        "recurse": True,
        "retry_wait": 0.01,
    }
    options.update(kw)
    targets = [str(p) for p in (paths if isinstance(paths, list) else [paths])]
    return batchstore.send(targets, "127.0.0.1", port, **options)  # type: ignore[arg-type]


def assert_identical(corpus: Corpus, received: Mapping[str, bytes | str | Path]) -> None:
    """Every corpus file arrived, data set byte for byte (`received`: UID -> bytes or stored file)."""
    assert set(received) == corpus.uids()
    for record in corpus.files:
        got = received[record["sop_instance_uid"]]
        data = got if isinstance(got, bytes) else dataset_bytes(got)
        assert data == dataset_bytes(corpus.path(record)), record["path"]


def assert_all_delivered(report: Report, count: int, category: str = st.SUCCESS) -> None:
    failed = [(o.path, o.category, o.status, o.error) for o in report.outcomes if not o.delivered]
    assert report.exit_code() == EXIT_OK, (report.summary_lines(), failed)
    assert report.counts()[category] == count == len(report.outcomes)


# --------------------------------------------------------------------------------------------------------
# the same interface and the same exceptions


@pytest.fixture
def pynetdicom_scp() -> Iterator[Callable[..., PynetdicomSCP]]:
    servers: list[PynetdicomSCP] = []

    def start(**kw: object) -> PynetdicomSCP:
        server = PynetdicomSCP(**kw)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


class PynetdicomSCP:
    """pynetdicom's own Storage SCP in a thread: keeps every received data set's bytes and counts how each
    association ended (EVT_RELEASED / EVT_ABORTED)."""

    def __init__(self, max_pdu: int = 0, require_called_aet: bool = False) -> None:
        from pynetdicom.sop_class import _STORAGE_CLASSES, Verification

        ae = AE(ae_title="PYNETDICOM")
        ae.maximum_pdu_size = max_pdu  # 0: unlimited
        ae.require_called_aet = require_called_aet
        # pynetdicom accepts in its own order of preference: each file's own syntax before implicit VR, so
        # nothing is transcoded and every data set can be compared byte for byte
        syntaxes = [EXPLICIT_LE, EXPLICIT_VR_BE, RLE_LOSSLESS, DEFLATED_EXPLICIT_VR_LE, IMPLICIT]
        for uid in _STORAGE_CLASSES.values():
            ae.add_supported_context(uid, syntaxes)
        ae.add_supported_context(Verification)
        self.received: dict[str, bytes] = {}
        self.implementations: set[str] = set()  # the requestors' Implementation Version Names
        self.released = 0
        self.aborted = 0
        self.lock = threading.Lock()
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: evt.Event) -> int:
        data = event.request.DataSet.getvalue()  # type: ignore[attr-defined]
        with self.lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] = bytes(data)  # type: ignore[attr-defined]
            self.implementations.add(str(event.assoc.requestor.implementation_version_name))
        return 0x0000

    def _on_released(self, event: evt.Event) -> None:
        with self.lock:
            self.released += 1

    def _on_aborted(self, event: evt.Event) -> None:
        with self.lock:
            self.aborted += 1

    def shutdown(self) -> None:
        self.server.shutdown()


@pytest.mark.parametrize("kind", ENGINES)
def test_both_scus_negotiate_echo_and_fail_alike(
    kind: str, pynetdicom_scp: Callable[..., PynetdicomSCP]
) -> None:
    """Same accepted contexts (under our context IDs), echo status, rejection and refusal exceptions."""
    cls = SCU_CLASSES[kind]
    scp = pynetdicom_scp(max_pdu=16384, require_called_aet=True)
    contexts = ((1, CT, (EXPLICIT_LE,)), (3, "1.2.3.4.5.6", (IMPLICIT,)), (5, VERIFICATION, (IMPLICIT,)))
    scu = cls(AssociationOptions("127.0.0.1", scp.port, called_ae="PYNETDICOM"), contexts)
    accept = scu.open()
    assert scu.is_open
    assert scu.accepted() == {1: EXPLICIT_LE, 5: IMPLICIT}
    assert accept.results[3][0] == acse.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED
    assert accept.max_pdu == 16384
    assert scu.echo(5) == 0
    scu.release()
    assert not scu.is_open
    # called AE title not recognised: A-ASSOCIATE-RJ rejected-permanent, service user, reason 7
    scu = cls(AssociationOptions("127.0.0.1", scp.port, called_ae="SOMEONE-ELSE"), contexts)
    with pytest.raises(acse.AssociationRejected) as rejected:
        scu.open()
    assert (rejected.value.result, rejected.value.source, rejected.value.reason) == (1, 1, 7)
    assert not rejected.value.transient
    # -rsp: a positive user identity response was asked for and none came (pynetdicom's SCP has no
    # EVT_USER_ID handler): refused before any message
    identity = acse.UserIdentity(2, b"user", b"secret", positive_response=True)
    options = AssociationOptions("127.0.0.1", scp.port, called_ae="PYNETDICOM", user_identity=identity)
    with pytest.raises(PermissionError):
        cls(options, contexts).open()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        cls(AssociationOptions("127.0.0.1", port), contexts).open()


# --------------------------------------------------------------------------------------------------------
# real peers: everything arrives, byte for byte, and the association is released


@pytest.mark.parametrize("pdu", [4096, 16384, 131072])
@pytest.mark.needs_dcmtk
def test_to_dcmtk_storescp_at_every_pdu_size(
    corpus: Corpus, engine: str, pdu: int, storescp: Callable[..., DcmtkStorescp]
) -> None:
    scp = storescp(["+xa", "+B", "-pdu", str(pdu)])
    report = send(corpus.root, scp.port, engine)
    assert_all_delivered(report, len(corpus.files))
    assert [a.peer_max_pdu for a in report.associations] == [pdu]
    assert_identical(corpus, scp.wait_files(len(corpus.files), timeout=10))
    log = scp.log()
    assert log.count("Association Received") == 1
    assert log.count("Association Release") == 1  # an orderly A-RELEASE, as storescp saw it
    assert "Aborted" not in log


@pytest.mark.needs_dcmtk
def test_abort_option_aborts_instead_of_releasing(
    small: Corpus, engine: str, storescp: Callable[..., DcmtkStorescp]
) -> None:
    scp = storescp(["+xa", "+B"])
    report = send(small.root, scp.port, engine, abort_at_end=True)
    assert_all_delivered(report, len(small.files))
    assert set(scp.wait_files(len(small.files), timeout=10)) == small.uids()
    assert wait_for(lambda: "Association Aborted" in scp.log(), timeout=5)
    assert "Association Release" not in scp.log()


def test_to_batchstore_receive(corpus: Corpus, engine: str, tmp_path: Path) -> None:
    with Receiver(tmp_path, ["+xa", "+B", "-pdu", "131072"]) as rx:
        report = send(corpus.root, rx.port, engine)
        assert_all_delivered(report, len(corpus.files))
        assert [a.peer_max_pdu for a in report.associations] == [131072]
        received = wait_for(
            lambda: len(received_index(rx.out)) == len(corpus.files) and received_index(rx.out)
        )
        assert received, rx.log()[-2000:]
        assert_identical(corpus, received)
        assert rx.stop() == 0


def test_to_pynetdicom_scp_with_unlimited_pdu(
    corpus: Corpus, small: Corpus, engine: str, pynetdicom_scp: Callable[..., PynetdicomSCP]
) -> None:
    scp = pynetdicom_scp(max_pdu=0)
    report = send(corpus.root, scp.port, engine)
    assert_all_delivered(report, len(corpus.files))
    assert [a.peer_max_pdu for a in report.associations] == [0]
    assert_identical(corpus, scp.received)
    # the engine really is the one asked for: pynetdicom's AE announces itself as pynetdicom
    assert [name.split("_")[0] for name in scp.implementations] == [engine.upper()]
    assert wait_for(lambda: scp.released == 1, timeout=5), "the SCP saw no A-RELEASE"
    assert scp.aborted == 0
    # --abort: the SCP sees an A-ABORT and no release
    report = send(small.root, scp.port, engine, abort_at_end=True)
    assert_all_delivered(report, len(small.files))
    assert wait_for(lambda: scp.aborted == 1, timeout=5), "the SCP saw no A-ABORT"
    assert scp.released == 1


@pytest.fixture(scope="module")
def orthanc_server() -> Iterator[Orthanc]:
    """One Orthanc for the module; the tests using it are marked needs_orthanc (checked before this starts)."""
    with Orthanc() as server:
        yield server


@pytest.mark.needs_orthanc
def test_to_orthanc(engine: str, orthanc_server: Orthanc, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "c", 20, seed=50 + ENGINES.index(engine), profile="mixed")
    report = send(corpus.root, orthanc_server.dicom_port, engine, called_ae="ORTHANC")
    assert_all_delivered(report, len(corpus.files))
    assert corpus.uids() <= orthanc_server.instance_uids()


# --------------------------------------------------------------------------------------------------------
# A-ABORT from the peer mid-data-set


@pytest.mark.parametrize("which", ["gathered", "streamed"])
def test_peer_abort_mid_data_set_fails_one_file_and_the_rest_go_on_a_new_association(
    small: Corpus, corpus: Corpus, engine: str, which: str
) -> None:
    """200 KB data sets (batchstore: one gather write) and 5 MiB ones (batchstore: streamed in chunks)."""
    root, abort_during = (small.root, 2) if which == "gathered" else (corpus.root / "big", 1)
    uids = {r["sop_instance_uid"]: r for r in corpus.files + small.files}
    with ScriptedSCP(abort_during=abort_during) as scp:
        report = send(root, scp.port, engine, retries=0, halt_on_failure=False)
    assert report.exit_code() == EXIT_SOME_FAILED_RETRYABLE
    failed = [o for o in report.outcomes if not o.delivered]
    assert [o.sop_instance_uid for o in failed] == [scp.aborted_uid]
    assert failed[0].category == st.TRANSIENT and failed[0].error, failed[0]
    assert report.counts()[st.SUCCESS] == len(report.outcomes) - 1 >= 1
    # the abort ended association 1; the files after it went out on association 2
    assert scp.associations == len(report.associations) == 2
    assert sorted(scp.stored) == sorted(o.sop_instance_uid for o in report.outcomes if o.delivered)
    for uid in scp.stored:
        source = (small if uid in small.uids() else corpus).path(uids[uid])
        assert scp.data[uid] == dataset_bytes(source)


def test_peer_abort_mid_data_set_is_retried(small: Corpus, engine: str) -> None:
    with ScriptedSCP(abort_during=3) as scp:
        report = send(small.root, scp.port, engine, retries=2)
    assert_all_delivered(report, len(small.files))
    assert report.retries == 1
    assert sorted(scp.stored) == sorted(small.uids())
    assert scp.associations == 2


@pytest.mark.parametrize("kind", ENGINES)
def test_association_aborted_while_idle_is_not_reused(kind: str, small: Corpus) -> None:
    """An A-ABORT that arrives between messages (a peer's idle timeout) closes the association for the
    SCU: ``is_open`` turns False, so the worker re-associates instead of spending a file's attempt."""
    path = small.path(small.files[0])
    offset = len(path.read_bytes()) - len(dataset_bytes(path))
    with ScriptedSCP(lambda n, uid: "abort-after" if n == 1 else 0) as scp:
        scu = SCU_CLASSES[kind](AssociationOptions("127.0.0.1", scp.port), ((1, CT, (EXPLICIT_LE,)),))
        scu.open()
        rsp = scu.store_file(1, CT, small.files[0]["sop_instance_uid"], str(path), offset)
        assert rsp.status == 0
        assert wait_for(lambda: not scu.is_open, timeout=2), "an aborted association still looks open"
        scu.close()


def test_peer_abort_between_data_sets_costs_no_file(small: Corpus, engine: str) -> None:
    with ScriptedSCP(lambda n, uid: "abort-after" if n == 2 else 0) as scp:
        report = send(small.root, scp.port, engine, retries=0, halt_on_failure=False)
    assert_all_delivered(report, len(small.files))
    assert scp.associations == len(report.associations) == 2
    assert sorted(scp.stored) == sorted(small.uids())


def test_batchstore_receive_abort_during_every_store(small: Corpus, engine: str, tmp_path: Path) -> None:
    """A peer that aborts every C-STORE mid-data-set: each file is transient with an error, each attempt
    on a new association, nothing crashes, and the exit code says nothing was sent."""
    files = small.paths()[:2]
    with Receiver(tmp_path, ["--abort-during"]) as rx:
        report = send(files, rx.port, engine, retries=1, halt_on_failure=False)
        assert rx.log().count("ABORT initiated") == 4
        assert rx.stop() == 0
    assert report.exit_code() == EXIT_NOTHING_SENT
    assert len(report.outcomes) == 2
    assert all(o.category == st.TRANSIENT and o.error and o.attempts == 2 for o in report.outcomes)
    assert len(report.associations) == 4
    assert received_index(rx.out) == {}


# --------------------------------------------------------------------------------------------------------
# warning and failure statuses


def test_warning_status_is_delivered(small: Corpus, engine: str) -> None:
    with ScriptedSCP(lambda n, uid: 0xB000) as scp:
        report = send(small.root, scp.port, engine)
    assert_all_delivered(report, len(small.files), st.WARNING)
    assert {o.status for o in report.outcomes} == {0xB000}
    assert all(o.error.startswith("0xB000 Warning") for o in report.outcomes)
    assert sorted(scp.stored) == sorted(small.uids())


def test_permanent_failure_is_not_retried(small: Corpus, engine: str) -> None:
    bad = sorted(small.uids())[0]
    with ScriptedSCP(lambda n, uid: 0xA900 if uid == bad else 0) as scp:
        report = send(small.root, scp.port, engine, retries=3, halt_on_failure=False)
    assert report.exit_code() == EXIT_SOME_FAILED
    failed = [o for o in report.outcomes if not o.delivered]
    assert [(o.sop_instance_uid, o.category, o.status, o.attempts) for o in failed] == [
        (bad, st.PERMANENT, 0xA900, 1)
    ]
    assert scp.count == len(small.files)  # asked once each


def test_transient_failure_is_retried_then_delivered(small: Corpus, engine: str) -> None:
    with ScriptedSCP(lambda n, uid: 0xA700 if n == 1 else 0) as scp:
        report = send(small.root, scp.port, engine, retries=2)
    assert_all_delivered(report, len(small.files))
    assert report.retries == 1
    assert sorted(o.attempts for o in report.outcomes) == [1] * (len(small.files) - 1) + [2]
    assert scp.count == len(small.files) + 1
    assert sorted(scp.stored) == sorted(small.uids())


# --------------------------------------------------------------------------------------------------------
# pynetdicom's SCU against our SCP, and the command line


def test_pynetdicom_scu_to_batchstore_receive(corpus: Corpus, tmp_path: Path) -> None:
    pairs = sorted({(f["sop_class_uid"], f["transfer_syntax"]) for f in corpus.files})
    ae = AE(ae_title="PYNETDICOM")
    contexts = [build_context(sop_class, ts) for sop_class, ts in pairs]
    chunked = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # send each file's data set as it is on disk
    try:
        with Receiver(tmp_path, ["+xa", "+B"]) as rx:
            assoc = ae.associate("127.0.0.1", rx.port, contexts=contexts, ae_title="BATCHSTORE")
            assert assoc.is_established
            statuses = []
            for f in corpus.files:
                # send_c_store's own reactor pause races with the reactor, which then takes the
                # C-STORE-RSP ("Received unexpected C-STORE service message", then a DIMSE timeout):
                # pause it the way PynetdicomSCU does, send_c_store resumes it
                _pause_reactor(assoc)
                statuses.append(assoc.send_c_store(corpus.path(f)).get("Status"))
            assoc.release()
            assert statuses == [0] * len(corpus.files)
            assert rx.stop() == 0
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = chunked
    assert_identical(corpus, received_index(rx.out))


@pytest.mark.needs_dcmtk
def test_cli_engine_pynetdicom(small: Corpus, tmp_path: Path, storescp: Callable[..., DcmtkStorescp]) -> None:
    scp = storescp(["+xa", "+B"])
    report_path = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "batchstore", "send", "--engine", "pynetdicom", "-j", "1", "+sd", "+r",
         "--report", str(report_path), "127.0.0.1", str(scp.port), str(small.root)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    assert json.loads(report_path.read_text())["summary"]["success"] == len(small.files)
    assert set(scp.wait_files(len(small.files), timeout=10)) == small.uids()
    assert "Association Release" in scp.log()


def test_cli_rejects_unknown_engine() -> None:
    from batchstore.cli.send import command

    result = CliRunner().invoke(command, ["--engine", "dcmtk", "127.0.0.1", "104", "x.dcm"])
    assert result.exit_code == EXIT_USAGE
    assert "batchstore" in result.output and "pynetdicom" in result.output
