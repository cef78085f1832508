"""Certificates for the TLS tests, made by the tests with the ``openssl`` command (never committed keys).

`make_pki(directory)` writes a CA, a second ("wrong") CA, server and client certificates signed by the
first, a revoked client certificate and the CA's CRL, an encrypted copy of the client key, and DER copies.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "s3cret"


@dataclass(frozen=True)
class PKI:
    dir: Path
    ca: Path
    wrong_ca: Path
    server_key: Path
    server_cert: Path
    client_key: Path
    client_cert: Path
    client_key_encrypted: Path
    revoked_key: Path
    revoked_cert: Path
    crl: Path
    client_key_der: Path
    client_cert_der: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN={name}", cwd=d)  # fmt: skip


def _leaf(d: Path, name: str, ca: str, serial: int) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-set_serial", str(serial), "-days", "2", "-out", f"{name}.pem", cwd=d)  # fmt: skip


def make_pki(d: Path) -> PKI:
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "ca")
    _ca(d, "wrongca")
    _leaf(d, "server", "ca", 1001)
    _leaf(d, "client", "ca", 1002)
    _leaf(d, "revoked", "ca", 1003)
    _openssl("pkey", "-in", "client.key", "-out", "client-enc.key", "-aes256", "-passout", f"pass:{PASSWORD}",
             cwd=d)  # fmt: skip
    _openssl("pkey", "-in", "client.key", "-outform", "DER", "-out", "client.key.der", cwd=d)
    _openssl("x509", "-in", "client.pem", "-outform", "DER", "-out", "client.pem.der", cwd=d)
    # a minimal CA database to revoke one certificate and issue the CRL
    (d / "index.txt").write_text("")
    (d / "crlnumber").write_text("01\n")
    (d / "ca.cnf").write_text(
        "[ca]\ndefault_ca = local\n[local]\ndatabase = index.txt\ncrlnumber = crlnumber\n"
        "default_md = sha256\ndefault_crl_days = 2\n"
    )
    _openssl("ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem", "-revoke", "revoked.pem", cwd=d)
    _openssl("ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem", "-gencrl", "-out", "ca.crl",
             cwd=d)  # fmt: skip
    return PKI(
        dir=d,
        ca=d / "ca.pem",
        wrong_ca=d / "wrongca.pem",
        server_key=d / "server.key",
        server_cert=d / "server.pem",
        client_key=d / "client.key",
        client_cert=d / "client.pem",
        client_key_encrypted=d / "client-enc.key",
        revoked_key=d / "revoked.key",
        revoked_cert=d / "revoked.pem",
        crl=d / "ca.crl",
        client_key_der=d / "client.key.der",
        client_cert_der=d / "client.pem.der",
    )
