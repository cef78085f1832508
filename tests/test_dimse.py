"""DIMSE command sets: batchstore's struct encoders and decoder against pydicom's reading of the same bytes."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.filereader import read_dataset

from batchstore.net import dimse

CT = "1.2.840.10008.5.1.4.1.1.2"


def _read(data: bytes):  # type: ignore[no-untyped-def]
    return read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.3.4", "1.2.826.0.1.3680043.8.498.12345678901234567890123"])
@pytest.mark.parametrize("message_id", [1, 0xFFFF, 0x10001])
def test_store_rq_encodes_what_pydicom_reads(uid: str, message_id: int) -> None:
    data = dimse.c_store_rq(message_id, CT, uid)
    ds = _read(data)
    assert ds[0x00000000].value == len(data) - 12  # group length counts what follows it
    assert ds.AffectedSOPClassUID == CT
    assert ds.CommandField == dimse.C_STORE_RQ
    assert ds.MessageID == message_id & 0xFFFF
    assert ds.Priority == dimse.PRIORITY_MEDIUM
    assert ds.CommandDataSetType == dimse.DATA_SET_PRESENT
    assert ds.AffectedSOPInstanceUID == uid
    assert all(len(elem.value if isinstance(elem.value, bytes) else b"") % 2 == 0 for elem in ds)
    assert len(data) % 2 == 0


def test_store_rq_cached_parts_match_the_general_encoder() -> None:
    """The per-SOP-class cache must produce the bytes the element-by-element encoder does."""
    for priority in (0, 1, 2):
        for uid in ("1.2.3", "1.22.333.4444"):
            fast = dimse.c_store_rq(7, CT, uid, priority=priority)
            general = dimse.encode_command(
                [
                    (dimse.AFFECTED_SOP_CLASS_UID, dimse._ui(CT)),
                    (dimse.COMMAND_FIELD, (dimse.C_STORE_RQ).to_bytes(2, "little")),
                    (dimse.MESSAGE_ID, (7).to_bytes(2, "little")),
                    (dimse.PRIORITY, priority.to_bytes(2, "little")),
                    (dimse.COMMAND_DATA_SET_TYPE, dimse.DATA_SET_PRESENT.to_bytes(2, "little")),
                    (dimse.AFFECTED_SOP_INSTANCE_UID, dimse._ui(uid)),
                ]
            )
            assert fast == general


def test_store_rq_with_move_originator() -> None:
    ds = _read(dimse.c_store_rq(3, CT, "1.2.3", move_originator_aet="MOVER", move_originator_id=9))
    assert ds.MoveOriginatorApplicationEntityTitle == "MOVER"
    assert ds.MoveOriginatorMessageID == 9


def test_decode_store_rsp_roundtrip() -> None:
    cmd = dimse.decode_command(dimse.c_store_rsp(12, CT, "1.2.3.4", 0xA700, "disk full"))
    assert (cmd.command_field, cmd.message_id_responded, cmd.status) == (dimse.C_STORE_RSP, 12, 0xA700)
    assert (cmd.sop_class_uid, cmd.sop_instance_uid, cmd.error_comment) == (CT, "1.2.3.4", "disk full")
    assert not cmd.data_set_present
    assert cmd.raw[dimse.STATUS] == (0xA700).to_bytes(2, "little")


def test_decode_store_rq_from_memoryview() -> None:
    data = dimse.c_store_rq(5, CT, "1.2.3")
    cmd = dimse.decode_command(memoryview(b"xx" + data)[2:])
    assert (cmd.command_field, cmd.message_id, cmd.data_set_present) == (dimse.C_STORE_RQ, 5, True)
    assert cmd.status is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x00\x04\x00",  # header cut short
        b"\x00\x00\x00\x09\x04\x00\x00\x00\x01\x00",  # (0000,0900) whose value runs past the end
        b"\x08\x00\x16\x00\x02\x00\x00\x001\x00",  # not group 0000
    ],
)
def test_decode_rejects_malformed_command_sets(data: bytes) -> None:
    with pytest.raises(ValueError):
        dimse.decode_command(data)


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0xC123])
@pytest.mark.parametrize("uid", ["1.2.3", "1.2.34"])
def test_store_rsp_cached_parts_match_the_general_encoder(status: int, uid: str) -> None:
    fast = dimse.c_store_rsp(0x1234F, CT, uid, status)
    general = dimse.encode_command(
        [
            (dimse.AFFECTED_SOP_CLASS_UID, dimse._ui(CT)),
            (dimse.COMMAND_FIELD, dimse.C_STORE_RSP.to_bytes(2, "little")),
            (dimse.MESSAGE_ID_BEING_RESPONDED_TO, (0x234F).to_bytes(2, "little")),
            (dimse.COMMAND_DATA_SET_TYPE, dimse.NO_DATA_SET.to_bytes(2, "little")),
            (dimse.STATUS, status.to_bytes(2, "little")),
            (dimse.AFFECTED_SOP_INSTANCE_UID, dimse._ui(uid)),
        ]
    )
    assert fast == general
    ds = _read(fast)
    assert (ds.MessageIDBeingRespondedTo, ds.Status, ds.AffectedSOPInstanceUID) == (0x234F, status, uid)
