"""The sender's per-file costs that are not the file's: what crosses the pipe between the coordinator and a
worker (batches out, outcomes back, as plain tuples) and the ACKs the C-STORE loop re-arms (only for a
response that arrives in parts). docs/design.md, "The send side, issue 17"."""

from __future__ import annotations

import dataclasses
import inspect
import multiprocessing
import pickle
import time
from pathlib import Path

import pytest
from peers import BatchstoreReceiver, DcmtkStorescp, make_corpus, received_index

from batchstore.dicom.part10 import Instance, read_dataset_bytes, read_instance
from batchstore.net import pdu
from batchstore.net.acse import PresentationContextProposal
from batchstore.sender import outcomes as st
from batchstore.sender.messages import Results, RunBatch
from batchstore.sender.plan import INSTANCE_FIELDS, Batch, ContextGroup
from batchstore.sender.report import OUTCOME_FIELDS, Outcome
from batchstore.sender.scu import AssociationOptions, StoreSCU

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def _through_a_pipe(message: object) -> object:
    """`message` as the other end of a real `multiprocessing` pipe receives it."""
    left, right = multiprocessing.Pipe()
    try:
        left.send(message)
        return right.recv()
    finally:
        left.close()
        right.close()


def test_the_wire_field_lists_are_the_dataclasses_fields() -> None:
    assert OUTCOME_FIELDS == Outcome._fields == tuple(inspect.signature(Outcome).parameters)
    assert INSTANCE_FIELDS == Instance._fields == tuple(inspect.signature(Instance).parameters)


def test_outcomes_cross_the_pipe_whole_and_as_tuples() -> None:
    outcomes = [
        Outcome("/a/1.dcm", CT, "1.2.3.1", EXPLICIT, EXPLICIT, False, st.SUCCESS, 0, "", 1, 1, 0.25, 1, 1, 1024),
        Outcome("/a/2.dcm", CT, "1.2.3.2", EXPLICIT, IMPLICIT, True, st.WARNING, 0xB000, "", 2, 3, 1.5, 2, 1, 9),
        Outcome("/a/3.dcm", MR, "1.2.3.3", EXPLICIT, "", False, st.PERMANENT, None, "cannot read: gone", 0, 0,
                0.0, 0, 2, 7),
        Outcome.of(Instance("/a/4.dcm", CT, "1.2.3.4", EXPLICIT, 5, 0, 1), st.NOT_SENT, "not sent: run halted"),
    ]  # fmt: skip
    message = Results(2, 7, outcomes, 2)
    got = _through_a_pipe(message)
    assert got == message and isinstance(got, Results)
    assert all(type(o) is Outcome for o in got.outcomes)  # type: ignore[attr-defined]
    got.outcomes[0].association = 5  # type: ignore[attr-defined]  # the coordinator numbers them in place
    # compact: the outcomes travel as tuples, not as objects of a class named in every record
    assert pickle.dumps(message, pickle.HIGHEST_PROTOCOL).count(b"Outcome") == 0
    assert _through_a_pipe(Results(1, 0, [], 0)) == Results(1, 0, [], 0)


def _instances(count: int, sop_class: str = CT, syntax: str = EXPLICIT) -> tuple[Instance, ...]:
    return tuple(
        Instance(f"/in/{i:04d}.dcm", sop_class, f"1.2.826.0.1.{i}", syntax, 1024 + i, 330 + i % 3, 10**18 + i)
        for i in range(count)
    )


def test_a_batch_crosses_the_pipe_whole() -> None:
    batch = Batch(4, CT, EXPLICIT, 1, _instances(100), 110_000)
    got = _through_a_pipe(RunBatch(batch, 300))
    assert got == RunBatch(batch, 300)
    received = got.batch  # type: ignore[attr-defined]
    assert [hash(i) for i in received.instances] == [hash(i) for i in batch.instances]
    with pytest.raises(dataclasses.FrozenInstanceError):
        received.instances[0].size = 1
    # the SOP class and syntax travel once: every file of the received batch shares the batch's strings
    assert all(i.sop_class_uid is received.sop_class_uid for i in received.instances)
    assert all(i.transfer_syntax is received.transfer_syntax for i in received.instances)


def test_the_frozen_records_behave_as_their_dataclasses_did() -> None:
    """`Instance`, `Batch`, `ContextGroup` and `Outcome` are hand-written now (start-up): the constructor,
    equality, hashing, ``repr``, pickling, copies and (but for `Outcome`) the refusal to change stay what the
    dataclasses gave."""
    inst = Instance("/in/a.dcm", CT, "1.2.3", EXPLICIT, 1024, 330, 7)
    assert repr(inst) == (
        f"Instance(path='/in/a.dcm', sop_class_uid='{CT}', sop_instance_uid='1.2.3', "
        f"transfer_syntax='{EXPLICIT}', size=1024, data_offset=330, mtime_ns=7)"
    )
    same = Instance(path="/in/a.dcm", sop_class_uid=CT, sop_instance_uid="1.2.3", transfer_syntax=EXPLICIT,
                    size=1024, data_offset=330, mtime_ns=7)  # fmt: skip
    assert same == inst and hash(same) == hash(inst) and len({inst, same}) == 1
    assert inst != Instance("/in/a.dcm", CT, "1.2.3", EXPLICIT, 1024, 330, 8)
    assert inst != tuple(getattr(inst, f) for f in INSTANCE_FIELDS)  # not a tuple
    assert "__dict__" in dir(inst) and vars(inst) == dict(zip(INSTANCE_FIELDS, inst._values(), strict=True))
    moved = inst._replace(path="/in/b.dcm")
    assert (moved.path, moved.size, inst.path) == ("/in/b.dcm", 1024, "/in/a.dcm")
    with pytest.raises(TypeError):
        inst._replace(colour="red")
    for record in (inst, Batch(0, CT, EXPLICIT, 1, (inst,), 1024)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.size = 1  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            del record.path  # type: ignore[misc]
        assert pickle.loads(pickle.dumps(record)) == record
    group = ContextGroup(1, (PresentationContextProposal(1, CT, (EXPLICIT,)),), (), "never")
    assert pickle.loads(pickle.dumps(group)) == group and hash(group) == hash(pickle.loads(pickle.dumps(group)))
    assert group._replace(decompress="lossy") == ContextGroup(1, group.contexts, (), "lossy")
    assert repr(group).startswith("ContextGroup(index=1, contexts=(PresentationContextProposal(context_id=1, ")
    outcome = Outcome("/in/a.dcm", CT, category=st.SUCCESS, status=0)
    assert outcome == Outcome("/in/a.dcm", CT, "", "", "", False, st.SUCCESS, 0)
    assert repr(outcome).startswith(f"Outcome(path='/in/a.dcm', sop_class_uid='{CT}', sop_instance_uid='', ")
    outcome.association = 3  # numbered in place by the coordinator
    assert outcome != Outcome("/in/a.dcm", CT, category=st.SUCCESS, status=0)
    assert outcome._replace(worker=2).worker == 2 and outcome.worker == 0
    with pytest.raises(TypeError):
        hash(outcome)  # mutable: not hashable, as the dataclass was not
    assert pickle.loads(pickle.dumps(outcome)) == outcome


def test_a_batch_of_files_of_several_classes_crosses_whole() -> None:
    """Not a batch `make_plan` cuts, but one the wire form must not change."""
    mixed = _instances(3) + _instances(2, MR, IMPLICIT)
    batch = Batch(0, CT, EXPLICIT, 0, mixed, 1)
    assert _through_a_pipe(batch) == batch
    assert _through_a_pipe(Batch(1, CT, EXPLICIT, 0, (), 0)) == Batch(1, CT, EXPLICIT, 0, (), 0)


def _store_all(port: int, files: list[Instance], count: list[int]) -> float:
    """Send `files` on one association (the worker's C-STORE loop); seconds spent, `count` the re-arms of
    TCP_QUICKACK while storing."""
    inst = files[0]
    scu = StoreSCU(AssociationOptions("127.0.0.1", port), ((1, inst.sop_class_uid, (inst.transfer_syntax,)),))
    scu.open()
    count.clear()
    start = time.monotonic()
    for inst in files:
        data = read_dataset_bytes(inst.path, inst.data_offset, inst.size - inst.data_offset)
        assert scu.store_bytes(1, inst.sop_class_uid, inst.sop_instance_uid, data).status == 0
    seconds = time.monotonic() - start
    count.append(0)  # the stores are over: what follows is not counted
    scu.release()
    return seconds


@pytest.fixture
def quickacks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts `quickack` calls of the PDU reader (one entry per call, while the list's last item is not 0)."""
    calls: list[int] = []
    real = pdu.quickack

    def counting(sock: object) -> None:
        if not calls or calls[-1] != 0:
            calls.append(1)
        real(sock)  # type: ignore[arg-type]

    monkeypatch.setattr(pdu, "quickack", counting)
    return calls


def _corpus(tmp_path: Path, count: int) -> list[Instance]:
    make_corpus(tmp_path / "c", count, seed=11, profile="uniform", size=1024)
    files = [read_instance(str(p)) for p in sorted((tmp_path / "c").rglob("*.dcm"))]
    assert all(isinstance(f, Instance) for f in files) and len(files) == count
    return files  # type: ignore[return-value]


@pytest.mark.needs_dcmtk
def test_a_peer_with_nagle_on_gets_its_ack_at_once(tmp_path: Path, quickacks: list[int]) -> None:
    """storescp without TCP_NODELAY writes each C-STORE-RSP in two parts and holds the second until our
    ACK of the first: each response is acknowledged once, at once (a delayed ACK would cost ~40 ms)."""
    files = _corpus(tmp_path, 60)
    with DcmtkStorescp(out_dir=tmp_path / "out", nodelay=False, verbose=False) as scp:
        seconds = _store_all(scp.port, files, quickacks)
    assert len(received_index(tmp_path / "out")) == 60
    assert seconds < 1.2, f"{seconds:.2f} s for 60 files: waiting on delayed ACKs"
    assert sum(quickacks) == 60  # one per response: the one that completes it needs none


def test_a_response_that_arrives_whole_is_not_reacknowledged(tmp_path: Path, quickacks: list[int]) -> None:
    """batchstore's receiver writes each C-STORE-RSP at once: the store loop re-arms no ACK at all (our
    next C-STORE carries it)."""
    files = _corpus(tmp_path, 30)
    with BatchstoreReceiver(tmp_path / "out", fork=False) as receiver:
        _store_all(receiver.port, files, quickacks)
    assert len(received_index(tmp_path / "out")) == 30
    assert sum(quickacks) == 0
