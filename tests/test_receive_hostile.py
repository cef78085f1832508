"""``batchstore receive`` against hostile peers (docs/design.md, "Hostile peers"), on loopback, with and
without ``--fork``: every length a peer sends is checked before it is trusted, every phase has a deadline,
idle connections hold no association slot, what no response can carry gets a failure status of its own,
nothing answered with a failure is left under a final name, ``+ac`` fails closed, ``--fsync`` syncs before
it acknowledges, and requests that break PS3.8 get the A-ASSOCIATE-RJ the standard names.

The attacks are the ones measured in issue 10; each test asserts the server's (and its children's) memory
with psutil, and where it matters that a normal DCMTK storescu is served while the attack runs.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from peers import dcmtk_send
from test_receive_helpers import (
    CT,
    EXPLICIT_LE,
    IMPLICIT,
    VERIFICATION,
    RawSCU,
    Receiver,
    ct_dataset,
    encode,
    temp_files,
    wait_for,
    write_part10,
)

from batchstore.net import acse, dimse, errors
from batchstore.net import pdu as net
from batchstore.receiver import files as receiver_files
from batchstore.receiver import store as receiver_store
from batchstore.receiver.events import Peer
from batchstore.receiver.gate import MAX_ASSOCIATE_RQ
from batchstore.receiver.hosts import HostAccess
from batchstore.receiver.options import (
    DEFAULT_MAX_ASSOCIATIONS,
    ReceiveOptions,
    StorageOptions,
    association_limit,
)
from batchstore.receiver.store import Store

UID_ROOT = "1.2.826.0.1.3680043.9.7781.10"
MODES = [pytest.param([], id="single"), pytest.param(["--fork"], id="fork")]
HEADER = struct.Struct(">BxL")
MiB = 2**20


# --------------------------------------------------------------------------------------------------------
# helpers


def tree_rss(pid: int) -> int:
    """Resident memory of process `pid` and all its children, in bytes."""
    total = 0
    try:
        parent = psutil.Process(pid)
        for proc in [parent, *parent.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


@contextmanager
def rss_peaks(rx: Receiver) -> Iterator[dict[str, int]]:
    """The receiver's peak memory over the ``with`` block, as the kernel counted it (no sampling):
    ``server`` (its own VmHWM, read when the block ends) and ``largest`` (the larger of that and the peak
    RSS of every association child, which the server logs with ``-d`` when it reaps one)."""
    assert rx.proc is not None
    server = psutil.Process(rx.proc.pid)
    peaks = {"server_before": server.memory_info().rss}
    yield peaks
    # every association child is reaped (and its peak logged) before the figures are read; with --fork an
    # idle pre-forked child (one that served no association) stays
    def serving() -> list[psutil.Process]:
        served = set(rx.child_pids())
        return [child for child in server.children(recursive=True) if child.pid in served]

    assert wait_for(lambda: not serving(), timeout=15), "association children still running"
    with open(f"/proc/{server.pid}/status") as fh:
        hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) * 1024
    children = [int(kib) * 1024 for kib in re.findall(r"finished \(peak RSS (\d+) KiB\)", rx.log())]
    peaks["server"] = hwm
    peaks["largest"] = max([hwm, *children])
    peaks["children"] = len(children)


def raw_connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, bytes] | None:
    """The first PDU the receiver answers with (type, body), or None if it just closed."""
    data = b""
    try:
        while len(data) < 6 or len(data) < 6 + HEADER.unpack_from(data)[1]:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    except ConnectionResetError:
        return None
    pdu_type, length = HEADER.unpack_from(data)
    return pdu_type, data[6 : 6 + length]


def request_pdu(body: bytes) -> bytes:
    return HEADER.pack(net.A_ASSOCIATE_RQ, len(body)) + body


def good_request(**kw) -> bytes:  # type: ignore[no-untyped-def]
    contexts = kw.pop("contexts", ((1, CT, (EXPLICIT_LE,)), (3, VERIFICATION, (IMPLICIT,))))
    return acse.encode_request(acse.AssociationRequest(kw.pop("calling", "RAWSCU"), kw.pop("called", "STORESCP"), contexts, 16384))


def pdv(context: int, control: int, payload: bytes) -> bytes:
    return net.PDV_HEADER.pack(net.P_DATA_TF, len(payload) + 6, len(payload) + 2, context, control) + payload


def only_outputs(tmp_path: Path, out: Path) -> list[Path]:
    """Every file below `tmp_path` that is not the receiver's log or port file; asserts they are in `out`."""
    found = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and not p.name.endswith(".log") and not p.name.startswith("port-") and "src" not in p.parts
    ]
    assert all(out in p.parents for p in found), found
    return found


def small_file(tmp_path: Path, n: int) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    uid = f"{UID_ROOT}.{n}"
    return write_part10(src / f"f{n}.dcm", ct_dataset(uid))


def served_quickly(port: int, path: Path, limit: float = 5.0) -> float:
    """Send `path` with DCMTK storescu; assert it succeeds within `limit` seconds; return the time taken."""
    t0 = time.monotonic()
    sent = dcmtk_send([path], port, ["-to", "10", "-ta", "10"], timeout=30)
    took = time.monotonic() - t0
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert took < limit, took
    return took


# --------------------------------------------------------------------------------------------------------
# bounded memory


@pytest.mark.parametrize("mode", MODES)
def test_endless_command_set_is_aborted_at_the_cap(tmp_path: Path, mode: list[str]) -> None:
    """Command fragments never marked "last": A-ABORT (invalid parameter) past 16 KiB, memory flat."""
    with Receiver(tmp_path, ["-d", *mode]) as rx, rss_peaks(rx) as peaks:
        scu = RawSCU(rx.port)
        fragment = pdv(1, 0x01, b"\0" * 4000)  # a command fragment, not the last
        with pytest.raises((errors.PeerAborted, ConnectionError)) as caught:
            for _ in range(16 * 1024):  # 64 MiB if nothing stopped it
                scu.stream.send(fragment)
            scu.stream.read_pdu()
        if isinstance(caught.value, errors.PeerAborted):
            assert (caught.value.source, caught.value.reason) == (2, 6)
        scu.close()
        assert wait_for(lambda: "command set longer than 16384 bytes" in rx.log()), rx.log()[-2000:]
        scu = RawSCU(rx.port)  # still serving
        assert scu.echo() == 0
        scu.release()
    assert peaks["largest"] - peaks["server_before"] < 30 * MiB, peaks
    assert only_outputs(tmp_path, rx.out) == []


@pytest.mark.parametrize("mode", MODES)
def test_pdu_header_claiming_64_mib_allocates_nothing(tmp_path: Path, mode: list[str]) -> None:
    """Before association: 10 A-ASSOCIATE-RQ headers claiming 64 MiB; after: a P-DATA-TF claiming more
    than the 16 KB advertised. Each gets A-ABORT (source 2, reason 6) at once; no memory is taken."""
    with Receiver(tmp_path, ["-d", *mode]) as rx, rss_peaks(rx) as peaks:
        socks = [raw_connect(rx.port) for _ in range(10)]
        for sock in socks:
            sock.sendall(HEADER.pack(net.A_ASSOCIATE_RQ, 64 * MiB) + bytes(1000))
        for sock in socks:
            assert read_answer(sock) == (net.A_ABORT, bytes((0, 0, 2, 6)))
            sock.close()
        scu = RawSCU(rx.port)
        assert scu.max_send == 16384
        scu.stream.send(HEADER.pack(net.P_DATA_TF, 16385) + bytes(16385))
        with pytest.raises(errors.PeerAborted) as caught:
            scu.stream.read_pdu()
        assert (caught.value.source, caught.value.reason) == (2, 6)
        scu.close()
        scu = RawSCU(rx.port)
        scu.stream.send(HEADER.pack(net.P_DATA_TF, 64 * MiB) + bytes(64 * 1024))
        with pytest.raises(errors.PeerAborted):
            scu.stream.read_pdu()
        scu.close()
        assert wait_for(lambda: rx.log().count("exceeds the maximum") >= 12), rx.log()[-3000:]
    assert peaks["largest"] - peaks["server_before"] < 30 * MiB, peaks
    assert only_outputs(tmp_path, rx.out) == []


def test_a_request_up_to_the_cap_is_read(tmp_path: Path) -> None:
    """The pre-association cap is far above a real request: 128 contexts with 10 transfer syntaxes each."""
    syntaxes = tuple(f"1.2.840.10008.1.2.4.{n}" for n in range(50, 59)) + (EXPLICIT_LE,)
    contexts = tuple((2 * i + 1, CT, syntaxes) for i in range(128))
    body = good_request(contexts=contexts)
    assert len(body) < MAX_ASSOCIATE_RQ
    with Receiver(tmp_path, ["--fork"]) as rx:
        sock = raw_connect(rx.port)
        sock.sendall(request_pdu(body))
        answer = read_answer(sock)
        assert answer is not None and answer[0] == net.A_ASSOCIATE_AC
        sock.close()


# --------------------------------------------------------------------------------------------------------
# deadlines per phase; idle connections hold no slot


def _trickle(sock: socket.socket, data: bytes, interval: float, stop: threading.Event) -> None:
    for byte in data:
        if stop.is_set():
            return
        try:
            sock.send(bytes((byte,)))
        except OSError:
            return
        stop.wait(interval)


@pytest.mark.needs_dcmtk
@pytest.mark.parametrize("mode", [pytest.param([], id="single"), pytest.param(["--fork", "--max-associations", "2"], id="fork-max-2")])
def test_slow_and_idle_connections_do_not_lock_out_a_sender(tmp_path: Path, mode: list[str]) -> None:
    """200 bare connects and 4 clients trickling their A-ASSOCIATE-RQ one byte every 0.3 s: a normal
    storescu is served within seconds, and the trickling clients are cut off at -ta, not kept for minutes."""
    path = small_file(tmp_path, 1)
    stop = threading.Event()
    with Receiver(tmp_path, ["-d", "-ta", "2", "-td", "2", *mode]) as rx, rss_peaks(rx) as peaks:
        bare = [raw_connect(rx.port) for _ in range(200)]
        slow = [raw_connect(rx.port) for _ in range(4)]
        started = time.monotonic()
        threads = [
            threading.Thread(target=_trickle, args=(s, request_pdu(good_request()), 0.3, stop), daemon=True)
            for s in slow
        ]
        for thread in threads:
            thread.start()
        try:
            served_quickly(rx.port, path)
            for sock in slow:  # cut off at about -ta after they connected
                sock.settimeout(10)
                assert read_answer(sock) in (None, (net.A_ABORT, bytes((0, 0, 2, 0))))
                assert time.monotonic() - started < 6
            served_quickly(rx.port, small_file(tmp_path, 2))
        finally:
            stop.set()
            for sock in bare + slow:
                sock.close()
        assert wait_for(lambda: "no complete A-ASSOCIATE-RQ" in rx.log())
    assert peaks["largest"] - peaks["server_before"] < 30 * MiB, peaks
    assert sorted(p.name for p in only_outputs(tmp_path, rx.out)) == [f"CT.{UID_ROOT}.1", f"CT.{UID_ROOT}.2"]


@pytest.mark.parametrize("mode", MODES)
def test_trickled_message_is_cut_at_the_dimse_deadline(tmp_path: Path, mode: list[str]) -> None:
    """A C-STORE whose data set comes one byte every 0.2 s (each byte a whole PDU, then bytes of one PDU):
    aborted about -td after it started, not after -td per byte; nothing is stored."""
    uid = f"{UID_ROOT}.3"
    data = encode(ct_dataset(uid))
    with Receiver(tmp_path, ["-td", "1", *mode]) as rx:
        for whole_pdus in (True, False):
            scu = RawSCU(rx.port)
            scu.send_command(1, dimse.c_store_rq(1, CT, uid))
            stop = threading.Event()
            if whole_pdus:
                stream = b"".join(pdv(1, 0, data[i : i + 1]) for i in range(len(data)))
                chunks = [stream[i : i + 7] for i in range(0, len(stream), 7)]
            else:
                stream = pdv(1, 2, data)
                chunks = [stream[i : i + 1] for i in range(len(stream))]
            t0 = time.monotonic()

            def send(chunks: list[bytes] = chunks, stop: threading.Event = stop, scu: RawSCU = scu) -> None:
                for chunk in chunks:
                    if stop.wait(0.2):
                        return
                    try:
                        scu.sock.send(chunk)
                    except OSError:
                        return

            thread = threading.Thread(target=send, daemon=True)
            thread.start()
            with pytest.raises((errors.PeerAborted, ConnectionError)):
                scu.stream.read_pdu()
            took = time.monotonic() - t0
            stop.set()
            thread.join(5)
            scu.close()
            assert took < 3.5, took
        scu = RawSCU(rx.port)
        assert scu.store(data, uid).status == 0  # an honest sender is still served
        scu.release()
    assert [p.name for p in only_outputs(tmp_path, rx.out)] == [f"CT.{uid}"]


def test_default_max_associations_with_fork() -> None:
    assert DEFAULT_MAX_ASSOCIATIONS == 32
    assert association_limit(ReceiveOptions(mode="fork")) == 32
    assert association_limit(ReceiveOptions(mode="fork", max_associations=0)) == 0  # explicit: no limit
    assert association_limit(ReceiveOptions(mode="fork", max_associations=4)) == 4


# --------------------------------------------------------------------------------------------------------
# what no response can carry; names too long; failures leave no file


def _store_raw(scu: RawSCU, sop_instance_raw: bytes, data: bytes) -> dimse.Command:
    scu.message_id += 1
    raw = sop_instance_raw + b"\0" if len(sop_instance_raw) % 2 else sop_instance_raw
    command = dimse.encode_command(
        [
            (dimse.AFFECTED_SOP_CLASS_UID, CT.encode() + b"\0"),
            (dimse.COMMAND_FIELD, struct.pack("<H", dimse.C_STORE_RQ)),
            (dimse.MESSAGE_ID, struct.pack("<H", scu.message_id)),
            (dimse.PRIORITY, b"\0\0"),
            (dimse.COMMAND_DATA_SET_TYPE, b"\0\0"),
            (dimse.AFFECTED_SOP_INSTANCE_UID, raw),
        ]
    )
    scu.send_command(1, command)
    scu.send_data(1, data)
    return scu.read_response()


@pytest.mark.parametrize("mode", MODES)
def test_unencodable_uids_get_a_failure_status_and_the_association_goes_on(tmp_path: Path, mode: list[str]) -> None:
    good = f"{UID_ROOT}.4"
    with Receiver(tmp_path, mode) as rx:
        scu = RawSCU(rx.port)
        for bad in ("1.2.3.\u00e9".encode("latin-1"), "1.2.Ж".encode(), b"1." * 500, b"9" * 10000):
            response = _store_raw(scu, bad, encode(ct_dataset(good)))
            assert response.status == 0xC000, response
            assert response.sop_instance_uid == ""  # left out: no response can carry it
            assert response.message_id_responded == scu.message_id
            assert "invalid C-STORE-RQ" in response.error_comment
        # a large data set behind a bad UID is received and dropped too
        big = encode(ct_dataset(good, rows=512))
        assert _store_raw(scu, b"\xff" * 10, big).status == 0xC000
        assert scu.store(encode(ct_dataset(good)), good).status == 0  # same association
        scu.release()
        assert wait_for(lambda: "Association Release" in rx.log())
    assert [p.name for p in only_outputs(tmp_path, rx.out)] == [f"CT.{good}"]
    assert temp_files(rx.out) == []


def _whole_message(scu: RawSCU, command: bytes, data: bytes, data_context: int = 1, pdu: int = 0) -> None:
    """A command and its data set in one ``sendmsg``: they arrive in one receive, the one-message path."""
    scu.stream.send_parts(
        net.pdata_parts(1, command, True, scu.max_send) + net.pdata_parts(data_context, data, False, pdu)
    )


@pytest.mark.parametrize("mode", MODES)
def test_one_message_path_checks_what_it_reads(tmp_path: Path, mode: list[str]) -> None:
    """A C-STORE-RQ and its data set received together are stored where they lie in the receive buffer;
    whatever that path does not take (another layout, a UID no response can carry, a data set on another
    context, a PDU longer than advertised) is judged by the general path as before."""
    uids = [f"{UID_ROOT}.7{i}" for i in range(4)]
    with Receiver(tmp_path, mode) as rx:
        scu = RawSCU(rx.port)
        _whole_message(scu, dimse.c_store_rq(1, CT, uids[0]), encode(ct_dataset(uids[0])))
        assert scu.read_response().status == 0
        _whole_message(scu, dimse.c_store_rq(2, CT, uids[1]), encode(ct_dataset(uids[1] + ".9")))
        response = scu.read_response()
        assert (response.status, response.message_id_responded) == (0xA900, 2)
        moved = dimse.c_store_rq(3, CT, uids[2], move_originator_aet="MOVER", move_originator_id=7)
        _whole_message(scu, moved, encode(ct_dataset(uids[2])))  # another layout: element by element
        assert scu.read_response().status == 0
        bad = dimse.c_store_rq(4, CT, "1.2." + "3" * 70)
        _whole_message(scu, bad, encode(ct_dataset(uids[3])))
        assert scu.read_response().status == 0xC000
        scu.release()
        # a data set on another (accepted) context than its command: aborted, nothing kept
        scu = RawSCU(rx.port)
        _whole_message(scu, dimse.c_store_rq(1, CT, uids[3]), encode(ct_dataset(uids[3])), data_context=3)
        with pytest.raises((errors.PeerAborted, ConnectionError)):
            scu.read_response()
        scu.close()
        # a data set PDU longer than the 16 KiB advertised: aborted, nothing kept
        scu = RawSCU(rx.port)
        big = encode(ct_dataset(uids[3], rows=128))
        assert len(big) > 16384
        _whole_message(scu, dimse.c_store_rq(1, CT, uids[3]), big, pdu=len(big) + 6)
        with pytest.raises((errors.PeerAborted, ConnectionError)):
            scu.read_response()
        scu.close()
        assert wait_for(lambda: rx.log().count("aborting association") >= 2)
    stored = sorted(p.name for p in only_outputs(tmp_path, rx.out))
    assert stored == sorted(f"CT.{uid}" for uid in uids[:3:2])
    assert temp_files(rx.out) == []


@pytest.mark.parametrize("option", [["-sp"], ["-su", "ST"]], ids=["sp", "su"])
def test_overlong_derived_names_are_shortened_deterministically(tmp_path: Path, option: list[str]) -> None:
    """A 10,000-character patient name (-sp) or Study Instance UID (-su) names a directory: it is cut to
    160 characters with a hash of the whole value, so the store succeeds (it used to be 0xA700 forever)."""
    long_value = "X" * 10000
    uids = [f"{UID_ROOT}.5{i}" for i in range(2)]
    if option == ["-sp"]:
        datasets = [ct_dataset(u, patient=long_value) for u in uids]
    else:
        datasets = [ct_dataset(u, study="1." + "2" * 10000) for u in uids]
    with Receiver(tmp_path, option) as rx:
        scu = RawSCU(rx.port)
        assert [scu.store(encode(ds), u).status for ds, u in zip(datasets, uids, strict=True)] == [0, 0]
        scu.release()
    stored = only_outputs(tmp_path, rx.out)
    assert len(stored) == 2
    directories = {p.parent for p in stored}
    assert len(directories) == 1  # one study: the same (deterministic) directory
    (directory,) = directories
    assert directory.parent == rx.out and len(directory.name) <= 160
    if option != ["-sp"]:
        import hashlib

        digest = hashlib.sha256(("ST_1." + "2" * 10000).encode()).hexdigest()[:16]
        assert directory.name.endswith("_" + digest)


@pytest.mark.parametrize("mode", MODES)
def test_data_sets_answered_with_a_failure_are_not_kept(tmp_path: Path, mode: list[str]) -> None:
    """0xC000 (no SOP UIDs: a truncated data set) and 0xA900 (another instance than requested), small and
    streamed: no file under a final name, no temporary file."""
    uid = f"{UID_ROOT}.6"
    truncated = encode(ct_dataset(uid))[:20]  # Specific Character Set and part of Image Type
    other = encode(ct_dataset(uid + ".9"))
    big_other = encode(ct_dataset(uid + ".9", rows=1024))  # 2 MiB: streamed through a temporary file
    with Receiver(tmp_path, mode) as rx:
        scu = RawSCU(rx.port)
        assert scu.store(truncated, uid).status == 0xC000
        assert scu.store(other, uid).status == 0xA900
        assert scu.store(big_other, uid).status == 0xA900
        scu.release()
    assert only_outputs(tmp_path, rx.out) == []


# --------------------------------------------------------------------------------------------------------
# +ac fails closed


def test_host_access_fails_closed(tmp_path: Path) -> None:
    from test_receive_helpers import run_receive

    unreadable = tmp_path / "deny-is-a-directory"
    unreadable.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    result = run_receive(tmp_path, ["+ac", "--hosts-deny", str(unreadable), "-od", str(out), "0"])
    assert result.returncode == 2
    assert "cannot read" in result.stderr and str(unreadable) in result.stderr
    # a rules file that does not exist means "no rules"
    args = ["+ac", "--hosts-allow", str(tmp_path / "none.allow"), "--hosts-deny", str(tmp_path / "none.deny")]
    with Receiver(tmp_path, args) as rx:
        scu = RawSCU(rx.port)
        assert scu.echo() == 0
        scu.release()


def test_host_names_must_be_forward_confirmed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchstore.receiver import hosts

    allow = tmp_path / "allow"
    deny = tmp_path / "deny"
    allow.write_text("storescp: trusted.example\n")
    deny.write_text("ALL: ALL\n")
    names = {"10.0.0.5": "trusted.example", "10.0.0.6": "trusted.example"}
    forward = {"trusted.example": ["10.0.0.5"]}
    monkeypatch.setattr(hosts.socket, "gethostbyaddr", lambda ip: (names[ip], [], [ip]))
    monkeypatch.setattr(
        hosts.socket,
        "getaddrinfo",
        lambda name, port, proto=0: [(2, 1, 6, "", (a, 0)) for a in forward[name]],
    )
    access = HostAccess(str(allow), str(deny))
    assert access.allowed("10.0.0.5")  # the name resolves back to the address
    assert not access.allowed("10.0.0.6")  # a reverse name the forward lookup does not confirm
    allow.write_text("storescp: ALL EXCEPT PARANOID\n")
    access = HostAccess(str(allow), str(deny))
    assert access.allowed("10.0.0.5") and not access.allowed("10.0.0.6")

    def broken(ip: str) -> tuple[str, list[str], list[str]]:
        raise RuntimeError("resolver exploded")

    monkeypatch.setattr(hosts.socket, "gethostbyaddr", broken)
    allow.write_text("storescp: trusted.example\n")
    deny.write_text("")
    assert not HostAccess(str(allow), str(deny)).allowed("10.0.0.5")  # an error denies


# --------------------------------------------------------------------------------------------------------
# --fsync


@pytest.mark.parametrize("path", ["unnamed-file", "named-file", "streamed"])
def test_fsync_syncs_the_file_and_its_directory_before_the_store_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(receiver_store.os, "fsync", fsync)
    monkeypatch.setattr(receiver_files.os, "fsync", fsync)
    uid = f"{UID_ROOT}.7"
    data = encode(ct_dataset(uid))
    store = Store(StorageOptions(output_dir=str(tmp_path), fsync=True))
    if path == "named-file":
        store._tmpfile = False
    if path == "streamed":
        incoming = store.begin(CT, uid, EXPLICIT_LE, "SENDER")
        incoming.write(data)
        incoming.flush()
        result = store.complete(incoming, Peer())
    else:
        result = store.store(CT, uid, EXPLICIT_LE, "SENDER", data, Peer())
    assert result.status == 0 and result.path == str(tmp_path / f"CT.{uid}")
    assert len(synced) == 2, synced
    assert synced[0].startswith(str(tmp_path))  # the data file (temporary or unnamed) ...
    assert synced[1] == str(tmp_path)  # ... then its directory, once linked or renamed
    # without --fsync: nothing is synced
    synced.clear()
    Store(StorageOptions(output_dir=str(tmp_path))).store(CT, uid, EXPLICIT_LE, "SENDER", data, Peer())
    assert synced == []


@pytest.mark.needs_dcmtk
@pytest.mark.parametrize("mode", MODES)
def test_fsync_receives_from_storescu(tmp_path: Path, mode: list[str]) -> None:
    paths = [small_file(tmp_path, 10 + i) for i in range(5)]
    with Receiver(tmp_path, ["--fsync", *mode]) as rx:
        sent = dcmtk_send(paths, rx.port)
        assert sent.returncode == 0, sent.stderr
    assert len(only_outputs(tmp_path, rx.out)) == 5


# --------------------------------------------------------------------------------------------------------
# requests that break PS3.8 get A-ASSOCIATE-RJ with the standard's reason


def _with_context_ids(ids: tuple[int, ...]) -> bytes:
    return good_request(contexts=tuple((cid, CT, (EXPLICIT_LE,)) for cid in ids))


def _version(body: bytes, version: int) -> bytes:
    return struct.pack(">H", version) + body[2:]


def _without_user_information(body: bytes) -> bytes:
    at = body.rindex(b"\x50\x00")  # the user information item comes last
    return body[:at]


BREAKING: list[tuple[str, Callable[[], bytes], tuple[int, int, int]]] = [
    ("even-context-id", lambda: _with_context_ids((1, 2)), (1, 1, 1)),
    ("zero-context-id", lambda: _with_context_ids((0,)), (1, 1, 1)),
    ("repeated-context-id", lambda: _with_context_ids((1, 3, 1)), (1, 1, 1)),
    ("no-context", lambda: _with_context_ids(()), (1, 1, 1)),
    ("blank-calling-ae", lambda: good_request(calling="   "), (1, 1, 3)),
    ("blank-called-ae", lambda: good_request(called=""), (1, 1, 7)),
    ("control-character-ae", lambda: good_request(calling="A\x01B"), (1, 1, 3)),
    ("protocol-version-0", lambda: _version(good_request(), 0), (1, 2, 2)),
    ("no-user-information", lambda: _without_user_information(good_request()), (1, 1, 1)),
]


@pytest.mark.parametrize("mode", MODES)
def test_requests_breaking_the_standard_get_a_reasoned_rejection(tmp_path: Path, mode: list[str]) -> None:
    with Receiver(tmp_path, mode) as rx:
        for name, body, expected in BREAKING:
            sock = raw_connect(rx.port)
            sock.sendall(request_pdu(body()))
            answer = read_answer(sock)
            sock.close()
            assert answer is not None and answer[0] == net.A_ASSOCIATE_RJ, (name, answer)
            assert tuple(answer[1][1:4]) == expected, name
        scu = RawSCU(rx.port)  # a proper request is still accepted
        assert scu.echo() == 0
        scu.release()
    assert only_outputs(tmp_path, rx.out) == []
