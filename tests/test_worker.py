"""The worker's pure parts and its per-file attempts, without a network or worker processes."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

import batchstore.sender.worker as worker_module
from batchstore.dicom.part10 import Instance, read_instance
from batchstore.dicom.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from batchstore.net.acse import AssociationAccept
from batchstore.sender import outcomes as st
from batchstore.sender.engine import StoreResponse
from batchstore.sender.plan import PlanOptions, make_plan
from batchstore.sender.scu import AssociationOptions
from batchstore.sender.worker import GC_THRESHOLDS, WorkerConfig, backoff, quiet_gc

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_quiet_gc_restores_the_callers_collector() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    garbage = [[i] for i in range(1000)]
    restore = quiet_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() >= len(garbage)
    restore()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_quiet_gc_keeps_a_freeze_it_did_not_make() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        restore = quiet_gc()
        restore()
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_backoff_stays_within_its_bounds() -> None:
    for attempt in range(1, 12):
        for _ in range(50):
            wait = backoff(attempt, 1.0)
            assert 0.5 <= wait <= min(60.0, 2 ** (attempt - 1))
    assert backoff(3, 0.0) == 0.0


# --- one file's attempts, driven without a network ---------------------------------------------------------


class _Conn:
    """The worker's end of the pipe: records what the worker tells the coordinator."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, message: object) -> None:
        self.sent.append(message)

    def poll(self, timeout: float = 0.0) -> bool:
        return False


def test_a_retry_on_an_as_is_context_sends_the_files_own_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 converts (the peer accepted only Implicit VR LE) and the connection drops; attempt 2, on an
    association that accepts the file's own Explicit VR LE, must send the file's bytes, not attempt 1's.
    """
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Retry^Test"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "f.dcm"
    ds.save_as(path, enforce_file_format=True)
    inst = read_instance(str(path))
    assert isinstance(inst, Instance)
    own = path.read_bytes()[inst.data_offset :]
    plan = make_plan([inst], PlanOptions())
    group = plan.context_groups[0]
    cid = group.candidates(CT, EXPLICIT_VR_LE)[0]
    engines: list[_FakeEngine] = []

    class _FakeEngine:
        def __init__(self, options: AssociationOptions, contexts: tuple) -> None:  # type: ignore[type-arg]
            self.number = len(engines) + 1
            self.sent: list[tuple[int, bytes]] = []
            self.open_ = False
            engines.append(self)

        def open(self) -> AssociationAccept:
            self.open_ = True
            ts = IMPLICIT_VR_LE if self.number == 1 else EXPLICIT_VR_LE
            return AssociationAccept(max_pdu=16384, results={cid: (0, ts)})

        @property
        def is_open(self) -> bool:
            return self.open_

        def accepted(self) -> dict[int, str]:
            return {cid: IMPLICIT_VR_LE if self.number == 1 else EXPLICIT_VR_LE}

        def store_bytes(self, context_id: int, sop_class: str, uid: str, dataset: bytes) -> StoreResponse:
            self.sent.append((context_id, bytes(dataset)))
            if self.number == 1:
                raise ConnectionResetError(104, "Connection reset by peer")
            return StoreResponse(0)

        def store_file(self, *args: object) -> StoreResponse:
            raise AssertionError("a small data set is sent from memory")

        def release(self) -> None:
            self.open_ = False

        abort = close = release

    monkeypatch.setattr(worker_module, "StoreSCU", _FakeEngine)
    config = WorkerConfig(
        association=AssociationOptions(host="127.0.0.1", port=1),
        context_groups=plan.context_groups,
        retry_wait=0.0,
    )
    worker = worker_module.Worker(1, _Conn(), config)  # type: ignore[arg-type]
    outcome = worker.send_one(plan.batches[0], inst, 0)
    assert outcome.category == st.SUCCESS and outcome.attempts == 2, outcome
    assert len(engines) == 2
    assert engines[0].sent[0][1] != own  # attempt 1 sent a converted data set
    assert engines[1].sent == [(cid, own)]
    assert outcome.sent_ts == EXPLICIT_VR_LE
