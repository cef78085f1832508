"""The TLS send path for files (`TLSPDUStream.send_file_pdata`): a data set read from its file straight into
place between the P-DATA-TF headers and written at once.

Against DCMTK's storescp over TLS with a small maximum PDU, files of several PDUs and one larger than
`scu.STREAM_CHUNK` (the streamed path) must arrive byte for byte; on a loopback TCP connection read back PDU
by PDU, the layout must be what a receiver expects: fragments no longer than the PDU allows, only the last
one flagged last, the file's bytes unchanged; a file that ends early is an error naming it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from peers import Corpus, dataset_bytes, make_corpus, received_index
from tls_certs import PKI, make_pki

from batchstore.net.pdu import P_DATA_TF, PDUReader, iter_pdvs, pdata_parts
from batchstore.net.tls import TLSPDUStream
from batchstore.sender.scu import STREAM_CHUNK

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.needs_dcmtk
def test_multi_pdu_and_streamed_files_arrive_byte_for_byte_over_tls(storescp, pki: PKI, tmp_path: Path) -> None:
    small = make_corpus(tmp_path / "small", 3, seed=11, profile="uniform", size=40_000)  # ten 4 KB PDUs
    large = make_corpus(tmp_path / "large", 1, seed=12, profile="uniform", size=STREAM_CHUNK + 300_000)
    scp = storescp(["--fork", "-pdu", "4096", "+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca)])
    cmd = [sys.executable, "-m", "batchstore", "send", "-nh", "-j", "2", "+tls", str(pki.client_key),
           str(pki.client_cert), "+cf", str(pki.ca), "+sd", "+r", "127.0.0.1", str(scp.port),
           str(small.root), str(large.root)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    index = received_index(scp.out_dir)
    corpus: Corpus
    for corpus in (small, large):
        for rec in corpus.files:
            sent = dataset_bytes(corpus.path(rec))
            assert dataset_bytes(index[rec["sop_instance_uid"]]) == sent
    assert len(index) == 4


def _connected_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


@pytest.mark.parametrize(
    ("size", "max_pdu"),
    [(0, 4096), (1, 4096), (4090, 4096), (3 * 4090, 4096), (3 * 4090 + 1, 4096), (10_000, 4096), (1030 * 10, 16)],
)  # the last: more fragments than one readv takes (1024)
def test_send_file_pdata_lays_out_pdus_as_a_receiver_expects(tmp_path: Path, size: int, max_pdu: int) -> None:
    path = tmp_path / "data"
    prefix = b"P" * 17  # the data set starts after the file's own header
    data = bytes((i * 7 + 3) % 251 for i in range(size))
    path.write_bytes(prefix + data)
    command = b"C" * 90
    client, server = _connected_pair()
    stream = TLSPDUStream(client)  # the layout does not depend on TLS: a plain socket carries it here
    reader = PDUReader(server)
    try:
        with open(path, "rb", buffering=0) as fh:
            fh.seek(len(prefix))
            head = b"".join(pdata_parts(5, command, True, 4096))
            stream.send_file_pdata(head, fh, size, 5, max_pdu)
        assert stream.bytes_sent == len(head) + size + 12 * max(1, -(-size // (max_pdu - 6)))
        pdu_type, body = reader.read_pdu()
        assert pdu_type == P_DATA_TF
        assert [(c, f, bytes(v)) for c, f, v in iter_pdvs(body)] == [(5, 3, command)]
        received = b""
        while True:
            pdu_type, body = reader.read_pdu()
            assert pdu_type == P_DATA_TF and len(body) <= max_pdu
            ((context, control, fragment),) = iter_pdvs(body)
            assert context == 5 and control & 1 == 0
            received += bytes(fragment)
            if control & 2:
                break
            assert len(fragment) == max_pdu - 6  # every fragment but the last fills its PDU
        assert received == data
        assert not reader.pending()
    finally:
        client.close()
        server.close()


def test_a_file_that_ends_early_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "short.dcm"
    path.write_bytes(b"x" * 5000)
    client, server = _connected_pair()
    try:
        with open(path, "rb", buffering=0) as fh, pytest.raises(OSError, match="short.dcm: file shrank"):
            TLSPDUStream(client).send_file_pdata(b"", fh, 9000, 1, 4096)
    finally:
        client.close()
        server.close()


def test_a_client_context_is_built_once_per_process_and_options(pki: PKI) -> None:
    """The command builds the context to check the settings; the workers it forks use that one."""
    from batchstore.net import tls

    options = tls.TLSOptions(key_file=str(pki.client_key), cert_file=str(pki.client_cert), ca_files=(str(pki.ca),))
    first = tls.client_context(options)
    assert tls.client_context(tls.TLSOptions(**vars(options))) is first
    other = tls.client_context(tls.TLSOptions(**{**vars(options), "profile": "bcp195-nd"}))
    assert other is not first
    assert {c["name"] for c in other.get_ciphers()} != {c["name"] for c in first.get_ciphers()}
