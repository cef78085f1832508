"""TLS on both sides (issue 13): batchstore against DCMTK's storescp/storescu and Orthanc, and against itself.

Certificates are made by the tests (tests/tls_certs.py, with the ``openssl`` command); nothing private is
committed. What is asserted is what arrived (SOP Instance UIDs and bytes), what the report says, the exit
code, and that bad settings are one-line errors with exit 2.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from peers import (
    BatchstoreReceiver,
    Corpus,
    dataset_bytes,
    dcmtk_send,
    make_corpus,
    received_index,
)
from tls_certs import PASSWORD, PKI, make_pki

from batchstore.net import tls

pytestmark = pytest.mark.timeout(180)

LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return make_corpus(tmp_path_factory.mktemp("tls-corpus"), 12, seed=3, profile="uniform")


def send(args: list[str], port: int, paths: list[str], report: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "batchstore", "send", "-nh", "-j", "2", *args]
    if report is not None:
        cmd += ["--report", str(report)]
    return subprocess.run(
        [*cmd, LOOPBACK, str(port), *paths], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def client_tls(pki: PKI) -> list[str]:
    return ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]


def server_tls(pki: PKI) -> list[str]:
    return ["+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca)]


def assert_all_arrived(corpus: Corpus, out: Path) -> None:
    index = received_index(out)
    assert set(index) == corpus.uids()
    for rec in corpus.files:
        assert dataset_bytes(index[rec["sop_instance_uid"]]) == dataset_bytes(corpus.path(rec))


# --------------------------------------------------------------------------------------------------------
# batchstore send -> DCMTK storescp


@pytest.mark.needs_dcmtk
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [([], []), (["+py"], ["+py"]), (["+px"], ["+px"]), (["+pz"], ["+pz"]), (["+pn"], ["+pn"])],
    ids=["default", "bcp195-nd", "bcp195", "bcp195-ex", "null"],
)
def test_send_to_dcmtk_storescp_over_tls(storescp, pki: PKI, corpus: Corpus, ours: list[str], theirs: list[str]) -> None:
    scp = storescp(["--fork", *server_tls(pki), *theirs])
    result = send([*client_tls(pki), *ours, "+sd", "+r"], scp.port, [str(corpus.root)])
    assert result.returncode == 0, result.stderr
    assert_all_arrived(corpus, scp.out_dir)


@pytest.mark.needs_dcmtk
def test_send_with_the_wrong_ca_fails_clearly(storescp, pki: PKI, corpus: Corpus, tmp_path: Path) -> None:
    scp = storescp(["--fork", *server_tls(pki)])
    report = tmp_path / "report.json"
    args = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.wrong_ca), "+sd", "+r"]
    result = send(args, scp.port, [str(corpus.root)], report)
    assert result.returncode == 9, result.stderr  # nothing could be sent
    records = json.loads(report.read_text())["files"]
    assert records and all("peer certificate not accepted" in r["error"] for r in records), records[0]
    assert "Traceback" not in result.stderr
    assert received_index(scp.out_dir) == {}


@pytest.mark.needs_dcmtk
def test_storescp_requires_a_client_certificate(storescp, pki: PKI, corpus: Corpus) -> None:
    """+tla (no client certificate) against a storescp that requires one (-rc, its default) fails; against
    one that only verifies a certificate if presented (-vc) it works."""
    strict = storescp(["--fork", *server_tls(pki)])
    result = send(["+tla", "+cf", str(pki.ca), "+sd", "+r"], strict.port, [str(corpus.root)])
    assert result.returncode == 9
    lenient = storescp(["--fork", *server_tls(pki), "-vc"])
    result = send(["+tla", "+cf", str(pki.ca), "+sd", "+r"], lenient.port, [str(corpus.root)])
    assert result.returncode == 0, result.stderr
    assert_all_arrived(corpus, lenient.out_dir)


# --------------------------------------------------------------------------------------------------------
# DCMTK storescu -> batchstore receive


def receiver(tmp_path: Path, args: list[str], fork: bool = True) -> BatchstoreReceiver:
    return BatchstoreReceiver(tmp_path / "out", args, fork=fork, verbose=True, work_dir=tmp_path, graceful=False)


@pytest.mark.needs_dcmtk
@pytest.mark.parametrize("fork", [True, False], ids=["fork", "single"])
def test_storescu_to_batchstore_receive_over_tls(tmp_path: Path, pki: PKI, corpus: Corpus, fork: bool) -> None:
    with receiver(tmp_path, server_tls(pki), fork) as rx:
        result = dcmtk_send([corpus.root], rx.port, [*client_tls(pki), "+sd", "+r"])
        assert result.returncode == 0, result.stdout + result.stderr
        assert_all_arrived(corpus, rx.out_dir)


@pytest.mark.needs_dcmtk
def test_receive_requires_client_certificates_and_checks_crls(tmp_path: Path, pki: PKI, corpus: Corpus) -> None:
    one = [str(corpus.paths()[0])]
    with receiver(tmp_path, [*server_tls(pki), "+crl", str(pki.crl)]) as rx:
        no_cert = dcmtk_send(one, rx.port, ["+tla", "+cf", str(pki.ca)])
        assert no_cert.returncode != 0
        revoked = dcmtk_send(one, rx.port, ["+tls", str(pki.revoked_key), str(pki.revoked_cert), "+cf", str(pki.ca)])
        assert revoked.returncode != 0
        wrong_ca = dcmtk_send(one, rx.port, ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.wrong_ca)])
        assert wrong_ca.returncode != 0
        good = dcmtk_send(one, rx.port, client_tls(pki))
        assert good.returncode == 0, good.stdout + good.stderr
        log = rx.log()
        assert "peer did not return a certificate" in log
        assert "certificate revoked" in log
        assert "unknown ca" in log
        assert list(received_index(rx.out_dir)) == [corpus.files[0]["sop_instance_uid"]]


@pytest.mark.needs_dcmtk
def test_a_silent_tls_client_holds_no_slot(tmp_path: Path, pki: PKI, corpus: Corpus) -> None:
    """A client that connects and never speaks TLS is cut off at -ta and meanwhile takes no association
    slot: with --max-associations 1 a real sender is served at once."""
    with receiver(tmp_path, [*server_tls(pki), "--max-associations", "1", "-ta", "2"]) as rx:
        silent = socket.create_connection((LOOPBACK, rx.port))
        started = time.monotonic()
        result = dcmtk_send([corpus.paths()[0]], rx.port, client_tls(pki))
        assert result.returncode == 0, result.stdout + result.stderr
        assert time.monotonic() - started < 5
        silent.settimeout(10)
        assert silent.recv(100) == b""  # closed by the receiver after -ta
        assert time.monotonic() - started < 8
        silent.close()
        assert "no TLS handshake from 127.0.0.1 within 2 s" in rx.log()


# --------------------------------------------------------------------------------------------------------
# batchstore <-> batchstore, no DCMTK


def test_batchstore_to_itself_with_der_keys_encrypted_keys_and_sni(tmp_path: Path, pki: PKI, corpus: Corpus) -> None:
    args = [*server_tls(pki), "--expect-sni", "pacs.example"]
    with receiver(tmp_path, args) as rx:
        der = ["-der", "+tls", str(pki.client_key_der), str(pki.client_cert_der), "+cf", str(pki.ca)]
        result = send([*der, "--request-sni", "pacs.example", "+sd", "+r"], rx.port, [str(corpus.root)])
        assert result.returncode == 0, result.stderr
        assert_all_arrived(corpus, rx.out_dir)
        encrypted = ["+tls", str(pki.client_key_encrypted), str(pki.client_cert), "+pw", PASSWORD, "+cf", str(pki.ca)]
        result = send([*encrypted, "--request-sni", "pacs.example"], rx.port, [str(corpus.paths()[0])])
        assert result.returncode == 0, result.stderr
        wrong_name = send([*client_tls(pki), "--request-sni", "other.example"], rx.port, [str(corpus.paths()[0])])
        assert wrong_name.returncode == 9
        assert "unrecognized name" in wrong_name.stderr


def test_pynetdicom_engine_over_tls(tmp_path: Path, pki: PKI, corpus: Corpus) -> None:
    with receiver(tmp_path, server_tls(pki)) as rx:
        result = send([*client_tls(pki), "--engine", "pynetdicom", "+sd", "+r"], rx.port, [str(corpus.root)])
        assert result.returncode == 0, result.stderr
        assert_all_arrived(corpus, rx.out_dir)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda p: ["+tls", str(p.client_key_encrypted), str(p.client_cert), "+pw", "wrong"], "wrong password for private key"),
        (lambda p: ["+tls", str(p.client_key_encrypted), str(p.client_cert)], "is encrypted: give its password with +pw"),
        (lambda p: ["+tls", str(p.dir / "missing.key"), str(p.client_cert)], "cannot read private key"),
        (lambda p: ["+tls", str(p.client_key), str(p.server_cert)], "does not match private key"),
        (lambda p: ["+tls", str(p.client_key), str(p.client_cert), "+cf", str(p.dir / "nothing.pem")], "+cf"),
        (lambda p: ["+pz", "+tls", str(p.client_key), str(p.client_cert), "+cs", "TLS_RSA_WITH_AES_128_CBC_SHA"], "not permitted"),
        (lambda p: ["+tls", str(p.client_key), str(p.client_cert), "+cs", "TLS_NO_SUCH_SUITE"], "unknown ciphersuite"),
        (lambda p: ["+cf", str(p.ca)], "+cf only with +tls"),
        (lambda p: ["+tla", "--expect-sni", "x"], "--expect-sni is an option of the receiving side"),
    ],
    ids=["wrong-password", "no-password", "missing-key", "mismatch", "bad-ca", "extended-profile", "unknown-suite",
         "without-tls", "wrong-side"],
)  # fmt: skip
def test_bad_tls_settings_are_one_line_usage_errors(pki: PKI, corpus: Corpus, args, message: str) -> None:
    result = send(args(pki), 9, [str(corpus.paths()[0])])  # nothing listens on port 9: never reached
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_receive_refuses_to_start_with_bad_tls_settings(tmp_path: Path, pki: PKI) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for args, message in (
        (["+tls", str(pki.server_key), str(pki.client_cert)], "does not match private key"),
        (["+tla"], "a receiver needs a certificate"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "batchstore", "receive", *args, "-od", str(out), "0"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


def test_list_profiles_and_ciphersuites() -> None:
    for option, expected in (("+ph", "BCP 195 RFC 8996 TLS Profile (default)"), ("+cc", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")):
        result = subprocess.run(
            [sys.executable, "-m", "batchstore", "send", option], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and expected in result.stdout, result.stdout + result.stderr
    assert "TLS_RSA_WITH_3DES_EDE_CBC_SHA" not in tls.supported_ciphersuites()  # OpenSSL 3 has no 3DES


# --------------------------------------------------------------------------------------------------------
# Orthanc


@pytest.mark.needs_orthanc
def test_send_to_orthanc_over_tls(tmp_path: Path, pki: PKI, corpus: Corpus) -> None:
    from peers import Orthanc

    config = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki.server_cert),
        "DicomTlsPrivateKey": str(pki.server_key),
        "DicomTlsTrustedCertificates": str(pki.ca),
        "DicomTlsRemoteCertificateRequired": True,
    }
    with Orthanc(extra_config=config) as server:
        result = send([*client_tls(pki), "-aec", "ORTHANC", "+sd", "+r"], server.dicom_port, [str(corpus.root)])
        assert result.returncode == 0, result.stderr + server.log()[-2000:]
        stored = {server.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in server.get("/instances")}
        assert stored == corpus.uids()
