"""Property tests (hypothesis): what a peer sends cannot make the parsers of the receive path raise
anything but their own errors, hang, or allocate by a length they were told.

- net/pdu.py's `PDUReader`: `ProtocolError` (unknown type, too long), `PeerAborted`, or the end of the
  connection; never more memory than the bytes that arrived.
- net/acse.py's `decode_request`: a request and maybe the `Violation` to reject it with, or
  `ProtocolError`.
- net/dimse.py's `decode_command`: a `Command` (whose C-STORE-RSP can always be encoded) or `ValueError`.
- receiver/check.py's `read_elements`: a dict, whatever the bytes (nesting, lengths, truncation).

Random and mutated input, a bounded number of examples each: the whole file runs in well under 20 s.
"""

from __future__ import annotations

import socket
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_receive_helpers import CT, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT, ct_dataset, encode

from batchstore.net import acse, dimse
from batchstore.net import pdu as net
from batchstore.net.errors import NetError, ProtocolError
from batchstore.receiver.check import (
    TAG_PATIENT_NAME,
    TAG_SOP_CLASS_UID,
    TAG_SOP_INSTANCE_UID,
    TAG_STUDY_INSTANCE_UID,
    read_elements,
)

FAST = settings(
    max_examples=150,
    deadline=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
    database=None,
)


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """`data` with bytes replaced at (position, value) and optionally truncated at `cut`."""
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    if cut is not None and out:
        del out[cut % len(out) :]
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6)
CUTS = st.none() | st.integers(0, 1 << 20)

# --------------------------------------------------------------------------------------------------------
# the PDU reader


def read_all(data: bytes, max_pdu: int) -> list[tuple[int, int]]:
    """Feed `data` through a socket pair into a `PDUReader`; the PDUs read until it stops."""
    left, right = socket.socketpair()
    try:
        left.sendall(data)
        left.shutdown(socket.SHUT_WR)
        right.settimeout(5)
        reader = net.PDUReader(right, quickack_on_receive=False, max_pdu=max_pdu)
        got = []
        while True:
            try:
                pdu_type, body = reader.read_pdu()
            except (ProtocolError, NetError, ConnectionResetError):
                return got
            assert len(body) <= max_pdu
            got.append((pdu_type, len(body)))
    finally:
        left.close()
        right.close()


def _valid_stream() -> bytes:
    command = dimse.c_store_rq(7, CT, "1.2.3.4")
    parts = net.pdata_parts(1, command, True, 16384) + net.pdata_parts(1, bytes(3000), False, 1024)
    request = acse.encode_request(acse.AssociationRequest("A", "B", ((1, CT, (EXPLICIT_LE,)),)))
    pdus = [struct.pack(">BxL", net.A_ASSOCIATE_RQ, len(request)) + request]
    pdus += [bytes(p) for p in parts]
    pdus.append(struct.pack(">BxL", net.A_RELEASE_RQ, 4) + bytes(4))
    return b"".join(pdus)


VALID_STREAM = _valid_stream()


@FAST
@given(st.binary(max_size=4096), st.sampled_from([16, 4096, net.MAX_RECEIVE_PDU]))
def test_pdu_reader_random_bytes(data: bytes, max_pdu: int) -> None:
    read_all(data, max_pdu)


@FAST
@given(EDITS, CUTS, st.sampled_from([1024, 16384]))
def test_pdu_reader_mutated_stream(edits: list[tuple[int, int]], cut: int | None, max_pdu: int) -> None:
    read_all(mutate(VALID_STREAM, edits, cut), max_pdu)


def test_pdu_reader_valid_stream_and_limit() -> None:
    assert [t for t, _ in read_all(VALID_STREAM, 16384)] == [1] + [4] * 4 + [5]
    # the A-ASSOCIATE-RQ is longer than 16 bytes: the reader stops at once
    assert read_all(VALID_STREAM, 16) == []


def test_pdu_reader_does_not_allocate_what_the_header_claims() -> None:
    """A header claiming 64 MiB followed by 10 bytes: the reader holds ~1 MiB at most, not 64."""
    left, right = socket.socketpair()
    try:
        left.sendall(struct.pack(">BxL", net.P_DATA_TF, 64 * 2**20 - 1) + bytes(10))
        left.shutdown(socket.SHUT_WR)
        reader = net.PDUReader(right, quickack_on_receive=False)
        reader._view[:] = b"\1" * len(reader._view)  # the receive buffer itself is allocated already
        tracemalloc.start()
        try:
            with pytest.raises(ConnectionResetError):
                reader.read_pdu()
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        left.close()
        right.close()
    assert peak < 2 * 2**20, peak


# --------------------------------------------------------------------------------------------------------
# A-ASSOCIATE-RQ


UID = st.text(alphabet="0123456789.", min_size=1, max_size=64)
CONTEXTS = st.lists(
    st.tuples(UID, st.lists(UID, min_size=1, max_size=4).map(tuple)), min_size=1, max_size=20
)
AE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"), min_size=1, max_size=16)


def _request(contexts: list[tuple[str, tuple[str, ...]]], calling: str = "SCU", called: str = "SCP") -> bytes:
    numbered = tuple((2 * i + 1, abstract, syntaxes) for i, (abstract, syntaxes) in enumerate(contexts))
    return acse.encode_request(acse.AssociationRequest(calling, called, numbered, 16384))


BASE_REQUEST = _request([(CT, (EXPLICIT_LE, IMPLICIT)), ("1.2.840.10008.1.1", (IMPLICIT,))])


@FAST
@given(CONTEXTS, AE, AE)
def test_valid_requests_round_trip(contexts, calling: str, called: str) -> None:  # type: ignore[no-untyped-def]
    request, violation = acse.decode_request(_request(contexts, calling, called))
    assert violation is None
    assert request.calling_ae == calling and request.called_ae == called
    assert [(a, s) for _cid, a, s in request.contexts] == contexts


@FAST
@given(st.binary(max_size=2048))
def test_request_decoder_random_bytes(data: bytes) -> None:
    try:
        acse.decode_request(data)
    except ProtocolError:
        pass


@FAST
@given(EDITS, CUTS)
def test_request_decoder_mutated(edits: list[tuple[int, int]], cut: int | None) -> None:
    try:
        request, violation = acse.decode_request(mutate(BASE_REQUEST, edits, cut))
    except ProtocolError:
        return
    if violation is not None:
        assert violation.result == acse.RESULT_REJECTED_PERMANENT and violation.source in (1, 2)
        return
    # what the acceptor then does with a request it does not reject must not raise either
    acse.encode_accept(request, {cid: (acse.PC_ACCEPTANCE, EXPLICIT_LE) for cid, _a, _s in request.contexts}, 16384)


# --------------------------------------------------------------------------------------------------------
# DIMSE commands


BASE_COMMAND = dimse.c_store_rq(5, CT, "1.2.826.0.1.3680043.9.7781.1", move_originator_aet="MOVER", move_originator_id=3)


def _answer(command: dimse.Command) -> bytes:
    """The C-STORE-RSP the receiver builds for a decoded request (receiver/association.py)."""
    if command.problem:
        return dimse.c_store_rsp(command.message_id, command.sop_class_uid, command.sop_instance_uid, 0xC000, command.problem)
    return dimse.c_store_rsp(command.message_id, command.sop_class_uid, command.sop_instance_uid, 0)


@FAST
@given(st.binary(max_size=1024))
def test_command_decoder_random_bytes(data: bytes) -> None:
    try:
        command = dimse.decode_command(data)
    except ValueError:
        return
    dimse.decode_command(_answer(command))


@FAST
@given(EDITS, CUTS)
def test_command_decoder_mutated(edits: list[tuple[int, int]], cut: int | None) -> None:
    try:
        command = dimse.decode_command(mutate(BASE_COMMAND, edits, cut))
    except ValueError:
        return
    answer = dimse.decode_command(_answer(command))
    assert answer.message_id_responded == command.message_id


def _agrees_with_decode_command(data: bytes) -> None:
    """`dimse.store_request` (the receiver's one-message path) says what `decode_command` says of a plain
    C-STORE-RQ, or None; it never takes what the general decoder refuses or flags."""
    padded = b"\xff" * 5 + data + b"\xfe" * 3  # read in place, inside a larger buffer
    found = dimse.store_request(memoryview(padded), 5, 5 + len(data))
    try:
        command = dimse.decode_command(data)
    except ValueError:
        assert found is None
        return
    if found is not None:
        assert command.command_field == dimse.C_STORE_RQ and command.data_set_present and not command.problem
        assert found == (command.message_id, command.sop_class_uid, command.sop_instance_uid)


@FAST
@given(EDITS, CUTS, st.sampled_from([None, "MOVER"]))
def test_store_request_agrees_with_decode_command(
    edits: list[tuple[int, int]], cut: int | None, mover: str | None
) -> None:
    data = dimse.c_store_rq(9, CT, "1.2.840.99.7", move_originator_aet=mover)
    _agrees_with_decode_command(data)
    _agrees_with_decode_command(mutate(data, edits, cut))
    _agrees_with_decode_command(mutate(BASE_COMMAND, edits, cut))


def test_store_request_reads_plain_requests() -> None:
    plain = dimse.c_store_rq(65535, CT, "1.2.3")  # the layout matched at once
    moved = dimse.c_store_rq(1, CT, "1.2.3.4", move_originator_id=5)  # read element by element
    echo = dimse.c_echo_rq(3)
    assert dimse.store_request(plain, 0, len(plain)) == (65535, CT, "1.2.3")
    assert dimse.store_request(moved, 0, len(moved)) == (1, CT, "1.2.3.4")
    assert dimse.store_request(echo, 0, len(echo)) is None


@FAST
@given(st.binary(min_size=1, max_size=300))
def test_any_uid_bytes_get_an_encodable_answer(uid: bytes) -> None:
    """Non-ASCII or overlong UIDs: the request names the problem, the answer leaves the UID out."""
    raw = uid + b"\0" if len(uid) % 2 else uid
    data = dimse.encode_command([(dimse.AFFECTED_SOP_CLASS_UID, b"1.2\0"), (dimse.COMMAND_FIELD, b"\1\0"),
                                 (dimse.MESSAGE_ID, b"\7\0"), (dimse.AFFECTED_SOP_INSTANCE_UID, raw)])
    command = dimse.decode_command(data)
    stripped = uid.rstrip(b"\0 ")
    bad = not stripped.isascii() or len(stripped) > 64
    assert bool(command.problem) == bad
    answer = dimse.decode_command(_answer(command))
    assert answer.status == (0xC000 if bad else 0)


# --------------------------------------------------------------------------------------------------------
# the raw element reader of the C-STORE check


WANTED = frozenset((TAG_SOP_CLASS_UID, TAG_SOP_INSTANCE_UID, TAG_STUDY_INSTANCE_UID, TAG_PATIENT_NAME))
SYNTAXES = [(EXPLICIT_LE, True, True), (IMPLICIT, False, True), (EXPLICIT_BE, True, False)]
ENCODED = {ts: encode(ct_dataset("1.2.826.0.1.3680043.9.7781.77"), ts) for ts, _e, _l in SYNTAXES}


@FAST
@given(st.binary(max_size=2048), st.sampled_from(SYNTAXES))
def test_element_reader_random_bytes(data: bytes, syntax: tuple[str, bool, bool]) -> None:
    _ts, explicit, little = syntax
    assert isinstance(read_elements(data, explicit, little, WANTED), dict)


@FAST
@given(EDITS, CUTS, st.sampled_from(SYNTAXES))
def test_element_reader_mutated(edits: list[tuple[int, int]], cut: int | None, syntax: tuple[str, bool, bool]) -> None:
    ts, explicit, little = syntax
    found = read_elements(mutate(ENCODED[ts], edits, cut), explicit, little, WANTED)
    assert all(isinstance(v, bytes) for v in found.values())


def test_element_reader_deep_nesting_ends() -> None:
    """Thousands of nested undefined-length sequences: read as truncated, without recursion errors."""
    level = struct.pack("<HH2sHL", 0x0008, 0x1115, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    data = level * 5000
    assert read_elements(data, True, True, WANTED) == {}
