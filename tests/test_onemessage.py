"""The receiver's one-message path: the compiled `serve`/`locate` (`batchstore.receiver._onemessage`) against
their pure-Python twins on hostile and hypothesis-made input, and both against real senders.

`make test` builds the extension; with ``BATCHSTORE_PURE_PYTHON=1`` batchstore runs without it, and the
tests that compare the two then skip (the Python path is what the rest of the suite runs); otherwise they
fail when the extension is not built."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from peers import batchstore_env, dcmtk_send, make_corpus
from test_receive_helpers import CT, EXPLICIT_LE, IMPLICIT, RawSCU, Receiver, ct_dataset, encode, temp_files

from batchstore.net import dimse, errors
from batchstore.receiver import onemessage
from batchstore.receiver.events import Peer
from batchstore.receiver.onemessage import locate
from batchstore.receiver.options import StorageOptions
from batchstore.receiver.store import Store

UID_ROOT = "1.2.826.0.1.3680043.9.7781.17"
PDV = struct.Struct(">BxLLBB")
MAX_PDU = 16384
PURE = os.environ.get("BATCHSTORE_PURE_PYTHON") == "1"
compiled_only = pytest.mark.skipif(PURE, reason="the pure-Python path was asked for")


def compiled():  # type: ignore[no-untyped-def]
    assert onemessage.compiled is not None, "batchstore/receiver/_onemessage.c is not built: run make setup"
    return onemessage.compiled


def message(  # type: ignore[no-untyped-def]
    message_id: int, sop_class: str, command_uid: str, data_uid: str, context: int = 1, ts: str = EXPLICIT_LE, **kw
) -> bytes:
    """A C-STORE-RQ and its data set, each in a P-DATA-TF of one PDV, as storescu sends them."""
    command = dimse.c_store_rq(message_id, sop_class, command_uid, **kw)
    data = encode(ct_dataset(data_uid), ts)
    return (
        PDV.pack(4, len(command) + 6, len(command) + 2, context, 3)
        + command
        + PDV.pack(4, len(data) + 6, len(data) + 2, context, 2)
        + data
    )


def python_serve(buf: bytes, start: int, end: int, out: Path, ts: str = EXPLICIT_LE) -> tuple | int | None:
    """What the Python path does with the same bytes: `locate`, `Store.store`, the response PDU."""
    found = locate(buf, start, end, MAX_PDU, {1: ts})
    if found is None or isinstance(found, int):
        return found
    context, message_id, sop_class, sop_instance, data_start, stop = found
    store = Store(StorageOptions(output_dir=str(out)))
    result = store.store(sop_class, sop_instance, ts, "SCU", memoryview(buf)[data_start:stop], Peer())
    response = dimse.c_store_rsp(message_id, sop_class, sop_instance, result.status, result.comment or None)
    pdu = PDV.pack(4, len(response) + 6, len(response) + 2, context, 3) + response
    return stop, stop - data_start, pdu, result.path and os.path.basename(result.path), message_id, sop_instance


def compiled_serve(buf: bytes, start: int, end: int, out: Path, ts: str = EXPLICIT_LE, **kw) -> tuple | int | None:  # type: ignore[no-untyped-def]
    """`serve` with the plan the association learns for context 1 and CT once the Python path stored one."""
    fast = onemessage.Compiled(Store(StorageOptions(output_dir=str(out), **kw)), "SCU")
    assert fast.learn(1, CT, ts)
    try:
        return fast.serve(buf, start, end, MAX_PDU, fast.plans, fast.directory, fast.proc, MAX_PDU)  # type: ignore[no-any-return]
    finally:
        fast.close()


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


_uid = hs.from_regex(r"1\.2\.(0|[1-9][0-9]{0,19})(\.(0|[1-9][0-9]{0,7})){0,4}", fullmatch=True)
_mutations = hs.lists(hs.tuples(hs.integers(0, 1200), hs.integers(0, 255)), max_size=4)


@compiled_only
def test_the_compiled_path_is_built_and_used() -> None:
    assert compiled() is not None
    code = "from batchstore.receiver import onemessage; print(onemessage.compiled is None)"
    env = {**batchstore_env(), "BATCHSTORE_PURE_PYTHON": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@compiled_only
@settings(max_examples=500, deadline=None)
@given(_uid, _uid, hs.integers(0, 0xFFFF), _mutations, hs.integers(0, 1400), hs.integers(0, 3), hs.booleans())
def test_locate_agrees_on_mutated_messages(  # type: ignore[no-untyped-def]
    command_uid, data_uid, message_id, mutations, cut, junk, moved
) -> None:
    """Byte flips anywhere (PDU and PDV lengths, flags, contexts, element tags and lengths, UIDs), every
    truncation, another command layout: the same answer, found / bytes needed / None."""
    kw = {"move_originator_aet": "MOVER", "move_originator_id": 7} if moved else {}
    raw = bytearray(bytes(junk) + message(message_id, CT, command_uid, data_uid, **kw))
    for position, value in mutations:
        if position < len(raw):
            raw[position] = value
    end = max(junk, len(raw) - cut)
    for buf in (bytes(raw), memoryview(raw)):
        expected = locate(buf, junk, end, MAX_PDU, {1, 3})
        assert compiled().locate(buf, junk, end, MAX_PDU, {1, 3}) == expected


@compiled_only
@settings(max_examples=400, deadline=None)
@given(hs.binary(max_size=300), hs.integers(0, 300), hs.integers(6, 70000))
def test_locate_agrees_on_any_bytes(data: bytes, start: int, max_pdu: int) -> None:
    start = min(start, len(data))
    expected = locate(data, start, len(data), max_pdu, {0, 1, 255})
    assert compiled().locate(data, start, len(data), max_pdu, {0, 1, 255}) == expected


@compiled_only
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    _uid, _uid, hs.integers(0, 0xFFFF), _mutations, hs.sampled_from([0, 0, 1, 30, 700]), hs.sampled_from([EXPLICIT_LE, IMPLICIT])
)
def test_serve_stores_what_the_python_path_stores(  # type: ignore[no-untyped-def]
    tmp_path_factory, command_uid, data_uid, message_id, mutations, cut, ts
) -> None:
    """Whatever `serve` stores (explicit or implicit VR little endian), the Python path stores the same:
    file name and bytes, response PDU; what it asks more bytes for, `locate` does too; what it declines
    leaves nothing behind."""
    raw = bytearray(message(message_id, CT, command_uid, data_uid if mutations else command_uid, ts=ts))
    for position, value in mutations:
        if position < len(raw):
            raw[position] = value
    buf, end = bytes(raw), max(0, len(raw) - cut)
    ours, theirs = tmp_path_factory.mktemp("c"), tmp_path_factory.mktemp("py")
    done = compiled_serve(buf, 0, end, ours, ts)
    expected = python_serve(buf, 0, end, theirs, ts)
    if done is None:
        assert files(ours) == {}
    elif isinstance(done, int):
        assert done == expected
    else:
        assert done == expected
        assert files(ours) == files(theirs) and len(files(ours)) == 1


@compiled_only
def test_serve_declines_what_it_does_not_do_itself(tmp_path: Path) -> None:
    """A mismatching data set, a UID that needs sanitising, a file that exists, -F, a context without a
    plan: None and nothing written (the Python path answers those); a plain one is stored."""
    uid, odd = f"{UID_ROOT}.1", f"{UID_ROOT}.1a"
    for declined in (message(1, CT, uid, uid + ".9"), message(1, CT, odd, odd), message(1, CT, uid, uid, context=3)):
        assert compiled_serve(declined, 0, len(declined), tmp_path) is None
    assert files(tmp_path) == {}
    whole = message(1, CT, uid, uid)
    done = compiled_serve(whole, 0, len(whole), tmp_path)
    assert done is not None and not isinstance(done, int) and done[3] == f"CT.{uid}"
    assert compiled_serve(whole, 0, len(whole), tmp_path) is None  # exists: the Python path warns, overwrites
    assert list(files(tmp_path)) == [f"CT.{uid}"]
    bare = tmp_path / "bare"
    bare.mkdir()
    done = compiled_serve(whole, 0, len(whole), bare, write_meta=False)
    assert done is not None and (bare / f"CT.{uid}").read_bytes() == encode(ct_dataset(uid))


@compiled_only
def test_serve_stores_implicit_vr_little_endian(tmp_path: Path) -> None:
    uid = f"{UID_ROOT}.3"
    whole = message(1, CT, uid, uid, ts=IMPLICIT)
    ours, theirs = tmp_path / "c", tmp_path / "py"
    ours.mkdir()
    theirs.mkdir()
    done = compiled_serve(whole, 0, len(whole), ours, IMPLICIT)
    assert done is not None and not isinstance(done, int) and done == python_serve(whole, 0, len(whole), theirs, IMPLICIT)
    assert files(ours) == files(theirs) != {}


def _stored_tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.needs_dcmtk
def test_storescu_into_both_paths_gives_the_same_files(tmp_path: Path) -> None:
    """storescu (command and data set in separate segments) into `receive --fork`, compiled and pure
    Python: the same files, byte for byte, and the compiled path stored all but the first (the Python path
    stores a context's first data set and so gives `serve` its plan)."""
    corpus = make_corpus(tmp_path / "corpus", 40, profile="uniform", size=1024)
    trees = {}
    for name, extra in (("compiled", {}), ("python", {"BATCHSTORE_PURE_PYTHON": "1"})):
        with Receiver(tmp_path / name, ["--fork"], env={**batchstore_env(), **extra}) as rx:
            sent = dcmtk_send([corpus.root], rx.port, ["+sd", "+r"])
            assert sent.returncode == 0, sent.stderr
            assert rx.stop() == 0
        trees[name] = _stored_tree(rx.out)
        by_compiled = "39 of them stored by the compiled path" in rx.log()  # the first one taught it
        assert by_compiled == (name == "compiled" and not PURE), rx.log()[-2000:]
    assert len(trees["compiled"]) == 40 and trees["compiled"] == trees["python"]


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "python"])
def test_a_message_in_pieces_is_waited_for_within_the_dimse_deadline(tmp_path: Path, pure: bool) -> None:
    """A C-STORE sent in pieces (PDU headers, command, data set apart, with pauses) is stored; one whose
    data set never comes is aborted about -td after it started, and nothing is kept."""
    env = {**batchstore_env(), **({"BATCHSTORE_PURE_PYTHON": "1"} if pure else {})}
    uids = [f"{UID_ROOT}.2{i}" for i in range(2)]
    with Receiver(tmp_path, ["-td", "1"], env=env) as rx:
        scu = RawSCU(rx.port)
        whole = message(1, CT, uids[0], uids[0])
        command_end = 6 + struct.unpack_from(">L", whole, 2)[0]
        for piece in (whole[:12], whole[12:command_end], whole[command_end : command_end + 8], whole[command_end + 8 :]):
            scu.sock.sendall(piece)
            time.sleep(0.1)
        assert scu.read_response().status == 0
        scu.sock.sendall(message(2, CT, uids[1], uids[1])[:command_end])  # the command only
        t0 = time.monotonic()
        with pytest.raises((errors.PeerAborted, ConnectionError, socket.timeout)):
            scu.read_response()
        assert time.monotonic() - t0 < 4
        scu.close()
    assert sorted(p.name for p in rx.out.iterdir()) == [f"CT.{uids[0]}"]
    assert temp_files(rx.out) == []
