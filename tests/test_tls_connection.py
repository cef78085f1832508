"""`TLSConnection` (net/tlsconn.py): TLS through memory BIOs, against Python's own `ssl.SSLSocket` on the other
end of a loopback TCP connection.

What makes it cheaper than `ssl.SSLSocket` is asserted directly: one receive returns every record that has
arrived. What must not change is asserted too: records cut anywhere by the network are reassembled, the end
of the stream (close_notify or a plain close) reads as 0 bytes, a silent peer is a timeout, and a failed
handshake tells the peer why (the alert reaches it) and is an `ssl.SSLError` here.
"""

from __future__ import annotations

import random
import selectors
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from peers import batchstore_env, dataset_bytes, dcmtk_send, make_corpus, received_index
from tls_certs import PKI, make_pki

from batchstore.dicom.uids import IMPLICIT_VR_LE, VERIFICATION_SOP_CLASS
from batchstore.net import acse, tls
from batchstore.net.pdu import P_DATA_TF, PDUReader, pdata_parts
from batchstore.net.sockets import set_socket_timeout
from batchstore.net.tlsconn import TLSConnection
from batchstore.receiver.gate import Gate

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_options(pki: PKI) -> tls.TLSOptions:
    return tls.TLSOptions(key_file=str(pki.server_key), cert_file=str(pki.server_cert), ca_files=(str(pki.ca),))


def client_options(pki: PKI) -> tls.TLSOptions:
    return tls.TLSOptions(key_file=str(pki.client_key), cert_file=str(pki.client_cert), ca_files=(str(pki.ca),))


@pytest.fixture()
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    yield client, server
    client.close()
    server.close()


def peer_thread(work: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def connect(pki: PKI, pair: tuple[socket.socket, socket.socket]) -> tuple[TLSConnection, ssl.SSLSocket]:
    """Our client `TLSConnection` and the peer's server `ssl.SSLSocket`, handshakes done."""
    client, server = pair
    peer: list[ssl.SSLSocket] = []
    thread, errors = peer_thread(
        lambda: peer.append(tls.server_context(server_options(pki)).wrap_socket(server, server_side=True))
    )
    conn = tls.wrap_client(client, tls.client_context(client_options(pki)), client_options(pki))
    thread.join(10)
    assert not errors, errors
    return conn, peer[0]


def test_one_receive_returns_every_record_that_arrived(pki: PKI, pair) -> None:
    conn, peer = connect(pki, pair)
    messages = [bytes([i]) * (100 + 37 * i) for i in range(6)]
    for message in messages:  # six records, each its own write
        peer.sendall(message)
    time.sleep(0.2)  # loopback: everything is in our receive queue
    buffer = bytearray(1 << 16)
    n = conn.recv_into(buffer)
    assert bytes(buffer[:n]) == b"".join(messages)
    assert conn.pending() == 0


def test_records_cut_anywhere_arrive_whole_as_pdus(pki: PKI, pair) -> None:
    """The peer's TLS bytes reach us in pieces of 1 to 300 bytes, pausing between some: every PDU is read
    whole and unchanged, and a PDU larger than the receive buffer too."""
    client, server = pair
    peer_ctx = tls.server_context(server_options(pki))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    peer = peer_ctx.wrap_bio(incoming, outgoing, server_side=True)
    payloads = [bytes(range(256)) * 4, b"x" * 3, bytes(300_000), b"last" * 1000]
    rng = random.Random(5)

    def serve() -> None:
        while True:  # the handshake, byte stream by hand
            try:
                peer.do_handshake()
                break
            except ssl.SSLWantReadError:
                server.sendall(outgoing.read())
                incoming.write(server.recv(65536))
        server.sendall(outgoing.read())
        for payload in payloads:
            for part in pdata_parts(3, payload, False, 0):
                peer.write(part)
        data = outgoing.read()
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 300)
            server.sendall(data[pos : pos + step])
            pos += step
            if rng.random() < 0.05:
                time.sleep(0.001)

    thread, errors = peer_thread(serve)
    conn = tls.wrap_client(client, tls.client_context(client_options(pki)), client_options(pki))
    set_socket_timeout(conn, 10)  # type: ignore[arg-type]
    reader = PDUReader(conn)  # type: ignore[arg-type]
    for payload in payloads:
        pdu_type, body = reader.read_pdu()
        assert pdu_type == P_DATA_TF
        assert bytes(body[6:]) == payload
    thread.join(10)
    assert not errors, errors


@pytest.mark.parametrize("how", ["close_notify", "close"])
def test_the_end_of_the_stream_reads_as_zero_bytes(pki: PKI, pair, how: str) -> None:
    conn, peer = connect(pki, pair)
    peer.sendall(b"bye")
    if how == "close_notify":
        thread, errors = peer_thread(lambda: peer.unwrap().close())
    else:
        peer.close()
        pair[1].close()
    buffer = bytearray(100)
    got = b""
    while True:
        n = conn.recv_into(buffer)
        if not n:
            break
        got += bytes(buffer[:n])
    assert got == b"bye"
    reader = PDUReader(conn)  # type: ignore[arg-type]
    with pytest.raises(ConnectionResetError):
        reader.read_pdu()
    conn.close()  # sends no close_notify back, as ssl.SSLSocket.close does not
    if how == "close_notify":
        thread.join(10)
        assert errors and isinstance(errors[0], OSError)  # the peer's unwrap saw the connection end


def test_a_silent_peer_is_a_timeout(pki: PKI, pair) -> None:
    conn, _peer = connect(pki, pair)
    stream = tls.TLSPDUStream(conn)  # type: ignore[arg-type]
    stream.settimeout(0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        stream.read_pdu()
    assert 0.25 < time.monotonic() - started < 5


def test_messages_sent_whole_arrive_at_an_sslsocket(pki: PKI, pair) -> None:
    conn, peer = connect(pki, pair)
    stream = tls.TLSPDUStream(conn)  # type: ignore[arg-type]
    big = bytes(range(256)) * 2000  # 512,000 bytes: 32 records
    stream.send_parts(pdata_parts(1, big, False, 0))
    stream.send_parts(pdata_parts(1, b"small", True, 0))
    reader = PDUReader(peer)  # type: ignore[arg-type]
    assert bytes(reader.read_pdu()[1][6:]) == big
    assert bytes(reader.read_pdu()[1][6:]) == b"small"
    assert stream.bytes_sent == len(big) + 12 + 5 + 12


def test_a_refused_client_certificate_reaches_the_client_as_an_alert(pki: PKI, pair) -> None:
    """Our server requires a client certificate (-rc); the peer presents none. Our side fails with an
    `ssl.SSLError`, and the peer learns why from the alert we send (not from a closed connection)."""
    client, server = pair
    options = tls.TLSOptions(ca_files=(str(pki.ca),))
    peer_error: list[BaseException] = []

    def peer() -> None:
        try:
            conn = tls.client_context(options).wrap_socket(client)
            conn.settimeout(10)
            conn.recv(10)  # TLS 1.3: the server judges the certificate after the client's handshake ends
        except ssl.SSLError as exc:
            peer_error.append(exc)

    thread, errors = peer_thread(peer)
    server.settimeout(10)
    ours = TLSConnection(server, tls.server_context(server_options(pki)), server_side=True)
    with pytest.raises(ssl.SSLError) as failure:
        ours.do_handshake()
    assert "peer did not return a certificate" in tls.describe_handshake_error(failure.value)
    thread.join(10)
    assert not errors, errors
    assert peer_error and "certificate required" in str(peer_error[0]).lower()


def test_the_handshake_steps_on_a_non_blocking_socket(pki: PKI, pair) -> None:
    """The receiver's pre-association stage: `do_handshake` raises SSLWantReadError until the client's
    messages are there, a receive raises BlockingIOError until data is, then the data is read."""
    client, server = pair
    server.setblocking(False)
    ours = TLSConnection(server, tls.server_context(server_options(pki)), server_side=True)
    with pytest.raises(ssl.SSLWantReadError):
        ours.do_handshake()
    peer: list[ssl.SSLSocket] = []
    thread, errors = peer_thread(lambda: peer.append(tls.client_context(client_options(pki)).wrap_socket(client)))
    deadline = time.monotonic() + 10
    while True:
        try:
            ours.do_handshake()
            break
        except ssl.SSLWantReadError:
            assert time.monotonic() < deadline
            time.sleep(0.005)
    thread.join(10)
    assert not errors, errors
    with pytest.raises(BlockingIOError):
        ours.recv(100)
    peer[0].sendall(b"A-ASSOCIATE-RQ")
    time.sleep(0.1)
    assert ours.recv(100) == b"A-ASSOCIATE-RQ"


@pytest.mark.needs_dcmtk
def test_inetd_over_tls_serves_storescu(pki: PKI, tmp_path) -> None:
    """``receive --inetd +tls``: the handshake on the socket inetd hands over (blocking, within -ta), then the
    association; what storescu sent arrives byte for byte."""
    corpus = make_corpus(tmp_path / "corpus", 3, seed=21, profile="uniform")
    out = tmp_path / "out"
    out.mkdir()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca), "+sd", "+r"]
    sent: list[subprocess.CompletedProcess[str]] = []
    thread = threading.Thread(target=lambda: sent.append(dcmtk_send([corpus.root], port, client)))
    thread.start()
    conn, _ = listener.accept()
    server = ["+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca)]
    proc = subprocess.run(
        [sys.executable, "-m", "batchstore", "receive", "--inetd", *server, "-ta", "10", "-od", str(out)],
        stdin=conn, capture_output=True, env=batchstore_env(), timeout=60,
    )  # fmt: skip
    conn.close()
    listener.close()
    thread.join(60)
    assert proc.returncode == 0, proc.stderr
    assert sent[0].returncode == 0, sent[0].stdout + sent[0].stderr
    index = received_index(out)
    assert set(index) == corpus.uids()
    for rec in corpus.files:
        assert dataset_bytes(index[rec["sop_instance_uid"]]) == dataset_bytes(corpus.path(rec))


def test_a_handshake_flight_larger_than_the_socket_takes_still_completes(pki: PKI, tmp_path) -> None:
    """The receiver's pre-association stage (`Gate`) with a certificate (~90 KB: 3,200 names; OpenSSL takes
    up to 100 KB) larger than its socket takes while the client does not read: the stage keeps the rest,
    watches the socket for writability, sends the rest as it drains, and the client's A-ASSOCIATE-RQ then
    arrives whole."""
    key, cert = tmp_path / "big.key", tmp_path / "big.pem"
    names = ",".join(f"DNS:host{i:05d}.receiver.example" for i in range(3200))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=big", "-addext",
         f"subjectAltName={names}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server_ctx = tls.server_context(tls.TLSOptions(key_file=str(key), cert_file=str(cert), ca_files=(str(pki.ca),)))
    selector = selectors.DefaultSelector()
    gate = Gate(selector, 10.0, server_ctx)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        client.connect(listener.getsockname())
        accepted, address = listener.accept()
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # and a small send buffer
    gate.admit(accepted, address)
    watched_write = []

    def stage() -> None:
        deadline = time.monotonic() + 20
        while not gate.waiting and time.monotonic() < deadline:
            for key_, _events in selector.select(0.05):
                watched_write.append(bool(key_.events & selectors.EVENT_WRITE))
                gate.read(key_.data)

    thread, errors = peer_thread(stage)
    client.settimeout(20)
    options = tls.TLSOptions(key_file=str(pki.client_key), cert_file=str(pki.client_cert), ca_files=(str(cert),))
    conn = TLSConnection(client, tls.client_context(options), server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        conn._ssl.do_handshake()  # the ClientHello, into the outgoing BIO
    client.sendall(conn._out.read())
    time.sleep(0.5)  # the stage writes its flight meanwhile and the socket stops taking it
    conn.do_handshake()
    request = acse.encode_request(
        acse.AssociationRequest("BIGCERT", "ANY-SCP", ((1, VERIFICATION_SOP_CLASS, (IMPLICIT_VR_LE,)),))
    )
    conn.sendall(struct.pack(">BxL", 1, len(request)) + request)
    thread.join(30)
    assert not errors, errors
    assert any(watched_write)  # the stage did wait for the socket to take the rest
    assert len(gate.waiting) == 1 and gate.waiting[0].request == request
    gate.close()
    conn.close()
