"""Storage commitment on the wire, checked against pynetdicom's encoders and decoders: the N-ACTION and
N-EVENT-REPORT command sets, their data sets, SCP/SCU role selection, the bounds on what a peer sends,
and the journal's commitment states and exit codes."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pynetdicom import pdu as pn_pdu
from pynetdicom import pdu_primitives as prim
from pynetdicom.dimse_messages import N_ACTION_RQ, N_ACTION_RSP, N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP
from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu_items import SCP_SCU_RoleSelectionSubItem

from batchstore.dicom.part10 import Instance
from batchstore.net import acse, dimse
from batchstore.net import commitment as sc
from batchstore.net.errors import ProtocolError
from batchstore.net.pdu import pdata_parts
from batchstore.sender import journal_commit as jc
from batchstore.sender.journal import Destination, Journal
from batchstore.sender.report import EXIT_NOT_COMMITTED, EXIT_OK, Outcome

EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _pynetdicom_command(message_cls: type, primitive: object) -> bytes:
    message = message_cls()
    message.primitive_to_message(primitive)
    if "CommandDataSetType" in message.command_set and message.command_set.CommandDataSetType != 0x0101:
        message.command_set.CommandDataSetType = 0x0000  # "present": pynetdicom writes 1, batchstore 0
    return bytes(encode(message.command_set, True, True))


def test_n_action_and_n_event_report_commands_are_pynetdicoms_bytes() -> None:
    action = N_ACTION()
    action.MessageID = 7
    action.RequestedSOPClassUID = sc.STORAGE_COMMITMENT
    action.RequestedSOPInstanceUID = sc.STORAGE_COMMITMENT_INSTANCE
    action.ActionTypeID = 1
    action.ActionInformation = BytesIO(b"\0")
    ours = dimse.n_action_rq(7, sc.STORAGE_COMMITMENT, sc.STORAGE_COMMITMENT_INSTANCE, 1)
    assert ours == _pynetdicom_command(N_ACTION_RQ, action)

    rsp = N_ACTION()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = sc.STORAGE_COMMITMENT
    rsp.AffectedSOPInstanceUID = sc.STORAGE_COMMITMENT_INSTANCE
    rsp.ActionTypeID = 1
    rsp.Status = 0
    ours = dimse.n_action_rsp(7, sc.STORAGE_COMMITMENT, sc.STORAGE_COMMITMENT_INSTANCE, 1, 0)
    assert ours == _pynetdicom_command(N_ACTION_RSP, rsp)

    event = N_EVENT_REPORT()
    event.MessageID = 9
    event.AffectedSOPClassUID = sc.STORAGE_COMMITMENT
    event.AffectedSOPInstanceUID = sc.STORAGE_COMMITMENT_INSTANCE
    event.EventTypeID = 2
    event.EventInformation = BytesIO(b"\0")
    ours = dimse.n_event_report_rq(9, sc.STORAGE_COMMITMENT, sc.STORAGE_COMMITMENT_INSTANCE, 2)
    assert ours == _pynetdicom_command(N_EVENT_REPORT_RQ, event)

    answer = N_EVENT_REPORT()
    answer.MessageIDBeingRespondedTo = 9
    answer.AffectedSOPClassUID = sc.STORAGE_COMMITMENT
    answer.AffectedSOPInstanceUID = sc.STORAGE_COMMITMENT_INSTANCE
    answer.EventTypeID = 2
    answer.Status = 0
    ours = dimse.n_event_report_rsp(9, sc.STORAGE_COMMITMENT, sc.STORAGE_COMMITMENT_INSTANCE, 2, 0)
    assert ours == _pynetdicom_command(N_EVENT_REPORT_RSP, answer)
    decoded = dimse.decode_command(ours)
    assert decoded.command_field == dimse.N_EVENT_REPORT_RSP and decoded.message_id_responded == 9
    assert dimse.us_element(decoded, dimse.EVENT_TYPE_ID) == 2 and decoded.status == 0


@pytest.mark.parametrize("ts", [EXPLICIT, IMPLICIT])
def test_action_information_round_trips_through_pydicom(ts: str) -> None:
    refs = [sc.Reference(CT, f"1.2.3.{n}") for n in range(3)]
    data = sc.encode_action("1.2.9.9", refs, ts)
    ds = decode(BytesIO(data), ts == IMPLICIT, True)
    assert ds.TransactionUID == "1.2.9.9"
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in ds.ReferencedSOPSequence] == [
        (r.sop_class_uid, r.sop_instance_uid) for r in refs
    ]
    assert sc.decode_action(data, ts) == ("1.2.9.9", refs)


@pytest.mark.parametrize("ts", [EXPLICIT, IMPLICIT])
def test_event_information_encoded_by_pydicom_is_decoded(ts: str) -> None:
    ds = Dataset()
    ds.TransactionUID = "1.2.9.9"
    ok = Dataset()
    ok.ReferencedSOPClassUID, ok.ReferencedSOPInstanceUID = CT, "1.2.3.1"
    bad = Dataset()
    bad.ReferencedSOPClassUID, bad.ReferencedSOPInstanceUID, bad.FailureReason = CT, "1.2.3.2", 0x0112
    ds.ReferencedSOPSequence = [ok]
    ds.FailedSOPSequence = [bad]
    data = bytes(encode(ds, ts == IMPLICIT, True))
    report = sc.decode_event(data, ts, sc.EVENT_SOME_FAILED)
    assert report.transaction_uid == "1.2.9.9"
    assert report.committed == [sc.Reference(CT, "1.2.3.1")]
    assert report.failed == [sc.Reference(CT, "1.2.3.2", 0x0112)]
    assert sc.decode_event(sc.encode_event(report, ts), ts, 2) == report
    with pytest.raises(ProtocolError, match="type 1"):
        sc.decode_event(data, ts, sc.EVENT_ALL_COMMITTED)


def _event(**changes: object) -> bytes:
    ds = Dataset()
    ds.TransactionUID = "1.2.9.9"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT, "1.2.3.2"
    ds.FailedSOPSequence = [item]
    for keyword, value in changes.items():
        target = item if keyword.startswith(("Referenced", "Failure")) else ds
        setattr(target, keyword, value)
    return bytes(encode(ds, False, True))


@pytest.mark.parametrize(
    "data, why",
    [
        (_event(FailureReason=0x0112)[:-7], "Failure Reason|cannot decode"),  # cut inside the last element
        (_event(FailureReason=0x0112, TransactionUID="not a uid"), "Transaction UID"),
        (_event(FailureReason=0x0112, ReferencedSOPInstanceUID="1." * 40), "Referenced SOP Instance UID"),
        (_event(), "Failure Reason"),  # a failed instance without its reason
        (b"\x08\x00\x95\x11UI\xff\xff", "cannot decode"),  # a length far beyond the data
    ],
)
def test_a_malformed_report_is_a_protocol_error(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        sc.decode_event(data, EXPLICIT, sc.EVENT_SOME_FAILED)
    with pytest.raises(ProtocolError):
        sc.decode_event(_event(FailureReason=0x0112), EXPLICIT, 3)  # not a commitment event type


def test_every_truncation_of_a_report_is_a_protocol_error_or_a_subset() -> None:
    whole = _event(FailureReason=0x0112)
    for end in range(len(whole)):
        try:
            report = sc.decode_event(whole[:end], EXPLICIT, sc.EVENT_SOME_FAILED)
        except ProtocolError:
            continue
        assert report.transaction_uid == "1.2.9.9" and report.failed in (
            [],
            [sc.Reference(CT, "1.2.3.2", 0x0112)],
        )


def test_message_assembler_reassembles_fragments_and_enforces_bounds() -> None:
    command = dimse.n_event_report_rq(3, sc.STORAGE_COMMITMENT, sc.STORAGE_COMMITMENT_INSTANCE, 1)
    data = sc.encode_event(sc.EventReport("1.2.9", 1, [sc.Reference(CT, "1.2.3")]), EXPLICIT)
    body = b"".join(bytes(p) for p in pdata_parts(5, command, True, 40) + pdata_parts(5, data, False, 40))
    assembler = sc.MessageAssembler()
    messages = []
    pos = 0
    while pos < len(body):  # one PDU at a time, as they arrive
        length = int.from_bytes(body[pos + 2 : pos + 6], "big")
        messages += assembler.feed(body[pos + 6 : pos + 6 + length])
        pos += 6 + length
    assert len(messages) == 1 and messages[0].context_id == 5 and messages[0].data_set == data
    assert messages[0].command.command_field == dimse.N_EVENT_REPORT_RQ and not assembler.busy

    small = sc.MessageAssembler(max_data=10)
    small.feed(b"".join(bytes(p) for p in pdata_parts(5, command, True, 0))[6:])
    with pytest.raises(ProtocolError, match="longer than 10"):
        small.feed(b"".join(bytes(p) for p in pdata_parts(5, data, False, 0))[6:])
    with pytest.raises(ProtocolError, match="without a command"):
        sc.MessageAssembler().feed(b"".join(bytes(p) for p in pdata_parts(5, data, False, 0))[6:])
    with pytest.raises(ProtocolError, match="command set longer"):
        sc.MessageAssembler().feed((20002).to_bytes(4, "big") + bytes((1, 3)) + bytes(20000))
    with pytest.raises(ProtocolError, match="malformed PDV"):
        sc.MessageAssembler().feed(b"\x00\x00\xff\xff\x01\x03")


def test_role_selection_in_both_directions_agrees_with_pynetdicom() -> None:
    request = acse.AssociationRequest(
        "PACS",
        "BSCU",
        ((1, sc.STORAGE_COMMITMENT, (EXPLICIT,)),),
        roles=((sc.STORAGE_COMMITMENT, False, True),),
    )
    body = acse.encode_request(request)
    rq = pn_pdu.A_ASSOCIATE_RQ()
    rq.decode(bytes((1, 0)) + len(body).to_bytes(4, "big") + body)
    roles = [i for i in rq.user_information.user_data if isinstance(i, SCP_SCU_RoleSelectionSubItem)]
    assert [(r.uid, r.scu_role, r.scp_role) for r in roles] == [(sc.STORAGE_COMMITMENT, 0, 1)]
    decoded, violation = acse.decode_request(body)
    assert violation is None and decoded.roles == ((sc.STORAGE_COMMITMENT, False, True),)

    accept = acse.encode_accept(
        decoded, {1: (acse.PC_ACCEPTANCE, EXPLICIT)}, 16384, roles={sc.STORAGE_COMMITMENT: (False, True)}
    )
    ac = pn_pdu.A_ASSOCIATE_AC()
    ac.decode(bytes((2, 0)) + len(accept).to_bytes(4, "big") + accept)
    primitive = ac.to_primitive()
    answered = [i for i in primitive.user_information if isinstance(i, prim.SCP_SCU_RoleSelectionNegotiation)]
    assert [(r.sop_class_uid, r.scu_role, r.scp_role) for r in answered] == [
        (sc.STORAGE_COMMITMENT, False, True)
    ]
    assert acse.decode_accept(accept).roles == {sc.STORAGE_COMMITMENT: (False, True)}
    role_item = b"\x54\x00\x00\x18\x00\x14"  # sub-item of 24 bytes: a UID of 20, then the two roles
    assert accept.count(role_item) == 1 and body.count(role_item) == 1
    wrong = b"\x54\x00\x00\x18\x00\x15"  # a UID length that does not fit its sub-item
    assert acse.decode_accept(accept.replace(role_item, wrong)).roles == {}  # ignored, not trusted
    with pytest.raises(ProtocolError, match="role selection"):
        acse.decode_request(body.replace(role_item, wrong))


def _journal_with_files(path: Path, n: int) -> Journal:
    journal = Journal(str(path))
    journal.bind_destination(Destination("PACS", "127.0.0.1", 104))
    journal.begin_run("PACS@127.0.0.1:104")
    instances = [
        Instance(f"/data/f{k}.dcm", CT, f"1.2.3.{k}", EXPLICIT, 100, 0, mtime_ns=1) for k in range(n)
    ]
    journal.register(instances)
    journal.record([Outcome(i.path, CT, i.sop_instance_uid, category="success", status=0) for i in instances])
    journal.flush()
    return journal


def test_journal_commitment_states_counts_and_exit_codes(tmp_path: Path) -> None:
    with _journal_with_files(tmp_path / "j.db", 4) as journal:
        assert journal.summary().exit_code() == EXIT_OK  # commitment never asked for: stored is done
        files = jc.uncommitted(journal.db)
        assert len(files) == 4
        jc.record_request(journal.db, "1.9.1", [p for p, _c, _i in files], journal.destination_id, 1)
        summary = journal.summary()
        assert summary.commitment[jc.REQUESTED] == 4 and summary.exit_code() == EXIT_NOT_COMMITTED
        report = sc.EventReport("1.9.1", 2, [sc.Reference(CT, "1.2.3.0"), sc.Reference(CT, "1.2.3.1")],
                                [sc.Reference(CT, "1.2.3.2", 0x0112)])  # fmt: skip
        assert jc.record_report(journal.db, report, "test") == (2, 1)
        summary = journal.summary()
        assert (summary.commitment[jc.COMMITTED], summary.commitment[jc.FAILED]) == (2, 1)
        assert summary.commitment[jc.REQUESTED] == 1 and summary.exit_code() == EXIT_NOT_COMMITTED
        assert [p for p, _c, _i in jc.uncommitted(journal.db)] == ["/data/f3.dcm"]  # failed: not asked again
        records = {r["path"]: r for r in journal.records()}
        assert records["/data/f2.dcm"]["commitment"] == "failed"
        assert records["/data/f2.dcm"]["commit_failure"] == "0x0112 no such object instance"
        assert records["/data/f0.dcm"]["commit_transaction_uid"] == "1.9.1"
        assert records["/data/f3.dcm"]["commitment"] == "requested"
        jc.record_report(journal.db, sc.EventReport("1.9.1", 1, [sc.Reference(CT, "1.2.3.3")]), "late")
        assert journal.summary().uncommitted == 1  # only the failed one is left


FAST = settings(
    max_examples=200,
    deadline=1000,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
_REPORT = sc.encode_event(
    sc.EventReport("1.2.9.9", 2, [sc.Reference(CT, "1.2.3.1")], [sc.Reference(CT, "1.2.3.2", 0x0112)]), EXPLICIT
)


@FAST
@given(
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 400),
    ts=st.sampled_from([EXPLICIT, IMPLICIT]),
)
@pytest.mark.filterwarnings("ignore")
def test_no_mutated_report_makes_the_decoder_raise_anything_but_protocol_error(
    edits: list[tuple[int, int]], cut: int | None, ts: str
) -> None:
    data = bytearray(_REPORT)
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        del data[cut % len(data) :]
    try:
        report = sc.decode_event(bytes(data), ts, sc.EVENT_SOME_FAILED)
    except ProtocolError:
        return
    for ref in report.committed + report.failed:  # what is accepted is a well-formed UID
        assert dimse.encodable_uid(ref.sop_instance_uid) and set(ref.sop_instance_uid) <= set("0123456789.")


@FAST
@given(st.binary(max_size=200))
def test_no_p_data_body_makes_the_assembler_raise_anything_but_protocol_error(body: bytes) -> None:
    try:
        sc.MessageAssembler(max_data=1000).feed(body)
    except ProtocolError:
        pass
