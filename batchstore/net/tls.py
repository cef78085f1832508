"""TLS for the upper layer (PS3.15 Annex B): DCMTK's TLS options as `TLSOptions`, turned into an
`ssl.SSLContext` for either side, and the PDU stream of a TLS connection.

Everything comes from Python's `ssl` module (OpenSSL). The security profiles follow DCMTK's definitions
(its ``tlsciphr`` ciphersuite handler): the same TLS 1.2 ciphersuites, TLS 1.3 where DCMTK enables it, and
the same rule that ``+cs`` may not add to the extended profiles. Where the installed OpenSSL cannot do what
a profile asks (3DES for ``+pb``, TLS 1.0/1.1 fallback for ``+px``), `TLSSetupError` or the documentation
says so (docs/design.md, "TLS").

`ssl` is imported by this module only; the plain TCP path never loads it.
"""

from __future__ import annotations

import io
import os
import socket
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import NetError
from .pdu import P_DATA_TF, PDV_HEADER, PDUStream
from .tlsconn import TLSConnection


class TLSSetupError(ValueError):
    """The TLS options cannot be used as given: an unreadable key or certificate, a wrong password, a
    certificate that does not match its key, an unknown ciphersuite. A usage problem (exit 2), found before
    any connection is made."""


class TLSHandshakeError(NetError):
    """The TLS handshake with the peer failed (its certificate was not trusted, no common ciphersuite...).

    Permanent: the same peer with the same settings fails the same way.
    """

    transient = False


#: DCMTK's ciphersuite names (the IANA names) -> OpenSSL's, for the TLS 1.2 suites OpenSSL 3 offers.
CIPHERSUITES: dict[str, str] = {
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384": "DHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "DHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8": "ECDHE-ECDSA-AES256-CCM8",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CCM": "ECDHE-ECDSA-AES256-CCM",
    "TLS_DHE_RSA_WITH_AES_256_CCM_8": "DHE-RSA-AES256-CCM8",
    "TLS_DHE_RSA_WITH_AES_256_CCM": "DHE-RSA-AES256-CCM",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256": "DHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8": "ECDHE-ECDSA-AES128-CCM8",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CCM": "ECDHE-ECDSA-AES128-CCM",
    "TLS_DHE_RSA_WITH_AES_128_CCM_8": "DHE-RSA-AES128-CCM8",
    "TLS_DHE_RSA_WITH_AES_128_CCM": "DHE-RSA-AES128-CCM",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384": "ECDHE-ECDSA-AES256-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384": "ECDHE-RSA-AES256-SHA384",
    "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256": "DHE-RSA-AES256-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256": "DHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_DHE_RSA_WITH_AES_256_CBC_SHA": "DHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_DHE_RSA_WITH_AES_128_CBC_SHA": "DHE-RSA-AES128-SHA",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_CBC_SHA256": "AES256-SHA256",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_NULL_SHA256": "NULL-SHA256",
    "TLS_RSA_WITH_NULL_SHA": "NULL-SHA",
}

_GCM_RSA = (
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
)


@dataclass(frozen=True)
class Profile:
    """A DICOM TLS security profile as DCMTK implements it."""

    option: str  # the DCMTK option that selects it
    title: str
    suites: tuple[str, ...]  # TLS 1.2 ciphersuites (IANA names)
    tls13: bool  # TLS 1.3 allowed
    extra_suites: bool = True  # +cs may add ciphersuites
    seclevel0: bool = False  # needs OpenSSL security level 0 (no encryption)


PROFILES: dict[str, Profile] = {
    "8996": Profile(
        "+pg",
        "BCP 195 RFC 8996 TLS Profile",
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        ),
        True,
    ),
    "8996-mod": Profile(
        "+pm",
        "Modified BCP 195 RFC 8996 TLS Profile",
        (
            "TLS_ECDHE_ECDSA_WITH_AES_128_CCM",
            "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_256_CCM",
            "TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        ),
        True,
        extra_suites=False,
    ),
    "bcp195-nd": Profile("+py", "Non-downgrading BCP 195 TLS Profile", _GCM_RSA, True),
    "bcp195": Profile(
        "+px", "BCP 195 TLS Profile", (*_GCM_RSA, "TLS_RSA_WITH_AES_128_CBC_SHA"), True
    ),
    "bcp195-ex": Profile(
        "+pz",
        "Extended BCP 195 TLS Profile",
        (*_GCM_RSA, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
        False,
        extra_suites=False,
    ),
    "basic": Profile("+pb", "Basic TLS Secure Transport Connection Profile", ("TLS_RSA_WITH_3DES_EDE_CBC_SHA",), False),
    "aes": Profile("+pa", "AES TLS Secure Transport Connection Profile", ("TLS_RSA_WITH_AES_128_CBC_SHA",), False),
    "null": Profile(
        "+pn", "Authenticated unencrypted communication", ("TLS_RSA_WITH_NULL_SHA",), False, seclevel0=True
    ),
}


@dataclass(frozen=True)
class TLSOptions:
    """DCMTK's TLS options, for either side.

    Attributes
    ----------
    key_file, cert_file : str or None
        ``+tls KEY CERT``: this side's private key and certificate (a receiver needs them; a sender
        without them is ``+tla``).
    password : str or None
        The private key's password (``+pw``; ``-pw`` is the empty string; ``+ps`` asks on the terminal
        before this object is built). None: the key is not encrypted.
    der : bool
        ``-der``: key and certificates are DER files (``-pem``, the default: PEM).
    ca_files, ca_dirs : tuple of str
        ``+cf``, ``+cd``: trusted certificates.
    crl_files : tuple of str
        ``+crl``: certificate revocation lists (they imply leaf checking).
    crl_check : str
        ``none``, ``leaf`` (``+crv``) or ``chain`` (``+cra``).
    profile : str
        A key of `PROFILES` (``+pg`` ... ``+pn``); the default is DCMTK's, BCP 195 RFC 8996.
    ciphers : tuple of str
        ``+cs``: ciphersuites (DCMTK's names) added to the profile's.
    dhparam : str or None
        ``+dp``: Diffie-Hellman parameters for the DHE ciphersuites.
    verify : str
        ``require`` (``-rc``, the default), ``verify`` (``-vc``: check a certificate the peer presents)
        or ``ignore`` (``-ic``).
    request_sni, expect_sni : str or None
        ``--request-sni`` (sender), ``--expect-sni`` (receiver).
    seed_file, write_seed_file : str or None
        ``+rs`` and ``+ws``/``+wf``: random seed files, as DCMTK reads and writes them.
    """

    key_file: str | None = None
    cert_file: str | None = None
    password: str | None = None
    der: bool = False
    ca_files: tuple[str, ...] = ()
    ca_dirs: tuple[str, ...] = ()
    crl_files: tuple[str, ...] = ()
    crl_check: str = "none"
    profile: str = "8996"
    ciphers: tuple[str, ...] = ()
    dhparam: str | None = None
    verify: str = "require"
    request_sni: str | None = None
    expect_sni: str | None = None
    seed_file: str | None = None
    write_seed_file: str | None = None


def key_is_encrypted(path: str) -> bool:
    """True for a PEM private key protected by a password (so ``+ps`` has to ask for one)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b"ENCRYPTED" in head


def cipher_string(options: TLSOptions) -> str:
    """The OpenSSL cipher list of `options`' profile and ``+cs`` ciphersuites.

    Raises
    ------
    TLSSetupError
        For an unknown ciphersuite, or ``+cs`` with a profile that allows no additions.
    """
    profile = PROFILES[options.profile]
    if options.ciphers and not profile.extra_suites:
        raise TLSSetupError(f"+cs: additional ciphersuites are not permitted with the {profile.title}")
    names = []
    for suite in (*profile.suites, *options.ciphers):
        openssl = CIPHERSUITES.get(suite)
        if openssl is None:
            raise TLSSetupError(f"unknown ciphersuite {suite!r} (+cc lists the supported ones)")
        if openssl not in names:
            names.append(openssl)
    text = ":".join(names)
    if profile.seclevel0 or any(CIPHERSUITES[s].startswith("NULL") for s in options.ciphers):
        text += ":@SECLEVEL=0"
    return text


def supported_ciphersuites() -> list[str]:
    """The DCMTK ciphersuite names the installed OpenSSL can negotiate (``+cc``)."""
    supported = []
    for name, openssl in CIPHERSUITES.items():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.set_ciphers(openssl + ":@SECLEVEL=0")
        except ssl.SSLError:
            continue
        supported.append(name)
    return supported


def _context(options: TLSOptions, server: bool) -> ssl.SSLContext:
    profile = PROFILES.get(options.profile)
    if profile is None:
        raise TLSSetupError(f"unknown TLS profile {options.profile!r}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # DICOM identifies peers by certificate, not by host name (as DCMTK)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not profile.tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.set_ciphers(cipher_string(options))
    except ssl.SSLError:
        raise TLSSetupError(
            f"the {profile.title} ({profile.option}) needs ciphersuites the installed OpenSSL "
            f"({ssl.OPENSSL_VERSION}) does not offer: {', '.join(profile.suites)}"
        ) from None
    if server:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE  # the strongest suite the client offers (BCP 195)
    _seed(options)
    _load_identity(ctx, options)
    for path in options.ca_files:
        _load_trust(ctx, path, "+cf")
    for directory in options.ca_dirs:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise TLSSetupError(f"+cd {directory}: {exc.strerror or exc}") from None
        for entry in entries:
            if entry.is_file():
                _load_trust(ctx, entry.path, "+cd", quiet=True)
    for path in options.crl_files:
        _load_trust(ctx, path, "+crl")
    crl_check = options.crl_check
    if options.crl_files and crl_check == "none":
        crl_check = "leaf"
    if crl_check == "leaf":
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    elif crl_check == "chain":
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    if options.dhparam:
        try:
            ctx.load_dh_params(options.dhparam)
        except (OSError, ssl.SSLError) as exc:
            raise TLSSetupError(f"+dp {options.dhparam}: cannot read DH parameters ({_reason(exc)})") from None
    if options.verify == "ignore":
        ctx.verify_mode = ssl.CERT_NONE
    elif server:
        ctx.verify_mode = ssl.CERT_REQUIRED if options.verify == "require" else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED  # a server always presents its certificate
    if server and options.expect_sni:
        expected = options.expect_sni

        def check_sni(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
            if name != expected:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            return None

        ctx.sni_callback = check_sni  # type: ignore[assignment]
    return ctx


#: Client contexts of this process by their options. The command builds one to check the settings before
#: any worker exists; the workers it forks inherit it instead of reading keys and certificates again, and a
#: worker uses it for all its associations.
_CLIENT_CONTEXTS: dict[TLSOptions, ssl.SSLContext] = {}


def client_context(options: TLSOptions) -> ssl.SSLContext:
    """The context of a sender (TLS client) with `options`, built on first use in this process.

    Raises
    ------
    TLSSetupError
        If a file cannot be used; the message names the file and the reason.
    """
    ctx = _CLIENT_CONTEXTS.get(options)
    if ctx is None:
        ctx = _CLIENT_CONTEXTS[options] = _context(options, server=False)
    return ctx


def server_context(options: TLSOptions) -> ssl.SSLContext:
    """The context of a receiver (TLS server) with `options`; it needs a key and a certificate.

    Raises
    ------
    TLSSetupError
        If a file cannot be used; the message names the file and the reason.
    """
    if not (options.key_file and options.cert_file):
        raise TLSSetupError("a TLS receiver needs +tls with its private key and certificate")
    return _context(options, server=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or str(exc)).replace("_", " ").lower()
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _pem(path: str, what: str, der: bool) -> bytes:
    """The PEM text of a certificate or key file (converted from DER with ``-der``)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise TLSSetupError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not der:
        return data
    if what == "certificate":
        return ssl.DER_cert_to_PEM_cert(data).encode("ascii")
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # pragma: no cover - cryptography comes with the test extra and most systems
        raise TLSSetupError("-der private keys need the 'cryptography' package") from None
    try:
        key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TLSSetupError(f"cannot read private key {path} as DER: {exc}") from None
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_identity(ctx: ssl.SSLContext, options: TLSOptions) -> None:
    if not (options.key_file and options.cert_file):
        return
    key, cert = options.key_file, options.cert_file
    with tempfile.TemporaryDirectory(prefix="batchstore-tls-") as private:
        if options.der:
            cert_path, key_path = os.path.join(private, "cert.pem"), os.path.join(private, "key.pem")
            for path, data in ((cert_path, _pem(cert, "certificate", True)), (key_path, _pem(key, "key", True))):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
        else:
            _pem(cert, "certificate", False)
            _pem(key, "private key", False)
            cert_path, key_path = cert, key
        try:
            ctx.load_cert_chain(cert_path, key_path, password=options.password or "")
        except ssl.SSLError as exc:
            reason = (exc.reason or "").upper()
            if "MISMATCH" in reason:
                raise TLSSetupError(f"certificate {cert} does not match private key {key}") from None
            text = (reason or str(exc)).upper()
            if "DECRYPT" in text or ("PEM" in text and not options.der and key_is_encrypted(key)):
                raise TLSSetupError(f"wrong password for private key {key}") from None
            raise TLSSetupError(f"cannot use private key {key} with certificate {cert}: {_reason(exc)}") from None


def _load_trust(ctx: ssl.SSLContext, path: str, option: str, quiet: bool = False) -> None:
    try:
        if option != "+crl" and not path.endswith((".pem", ".crt", ".cer")) and _looks_der(path):
            with open(path, "rb") as fh:
                ctx.load_verify_locations(cadata=fh.read())
        else:
            ctx.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        if quiet:
            return  # +cd: a file that is not a certificate is skipped, as DCMTK does
        raise TLSSetupError(f"{option} {path}: {_reason(exc)}") from None


def _looks_der(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(1) == b"\x30"
    except OSError:
        return False


def _seed(options: TLSOptions) -> None:
    """``+rs``/``+ws``/``+wf``: OpenSSL seeds itself from the system; a seed file adds to it, as DCMTK's
    does, and the written-back seed is fresh random bytes of the same size."""
    if not options.seed_file:
        return
    try:
        with open(options.seed_file, "rb") as fh:
            data = fh.read(1 << 16)
    except OSError as exc:
        raise TLSSetupError(f"+rs {options.seed_file}: {exc.strerror or exc}") from None
    if data:
        ssl.RAND_add(data, len(data) / 2)
    if options.write_seed_file:
        try:
            with open(options.write_seed_file, "wb") as fh:
                fh.write(ssl.RAND_bytes(max(1024, len(data))))
        except OSError as exc:
            raise TLSSetupError(f"cannot write seed file {options.write_seed_file}: {exc.strerror or exc}") from None


def describe_handshake_error(exc: BaseException) -> str:
    """One line for a failed handshake: what was wrong and, for a certificate, why it was refused."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: peer certificate not accepted: {exc.verify_message or _reason(exc)}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {_reason(exc)}"
    return f"TLS handshake failed: {exc}"


def wrap_client(sock: socket.socket, ctx: ssl.SSLContext, options: TLSOptions) -> TLSConnection:
    """Run the client handshake on a connected socket (within the socket's timeout).

    Raises
    ------
    TLSHandshakeError
        If the handshake fails for a reason of TLS (certificate, ciphersuites, protocol version).
    OSError
        If the connection fails meanwhile (reset, timeout): transient, as for plain TCP.
    """
    conn = TLSConnection(sock, ctx, server_side=False, server_hostname=options.request_sni)
    try:
        conn.do_handshake()
    except ssl.SSLError as exc:
        sock.close()
        raise TLSHandshakeError(describe_handshake_error(exc)) from None
    except BaseException:
        sock.close()
        raise
    return conn


def wrap_server(sock: socket.socket, ctx: ssl.SSLContext) -> TLSConnection:
    """Run the server handshake on an accepted, blocking socket (within the socket's timeout): the
    receiver's ``--inetd`` connection and the commitment report listener's (the receiver's gate steps a
    non-blocking one itself).

    Raises
    ------
    ssl.SSLError
        If the handshake fails (`describe_handshake_error` says why); the socket is closed.
    OSError
        If the connection fails or times out meanwhile; the socket is closed.
    """
    conn = TLSConnection(sock, ctx, server_side=True)
    try:
        conn.do_handshake()
    except BaseException:
        sock.close()
        raise
    return conn


def client_stream(sock: socket.socket, options: TLSOptions, timeout: float | None) -> TLSPDUStream:
    """The client handshake on a connected socket within `timeout` seconds, with this process's context
    for `options` (`client_context`), and the PDU stream over the TLS connection.

    Raises
    ------
    TLSHandshakeError, OSError
        As `wrap_client`.
    """
    sock.settimeout(timeout)
    return TLSPDUStream(wrap_client(sock, client_context(options), options))  # type: ignore[arg-type]


class TLSPDUStream(PDUStream):
    """`PDUStream` over a `TLSConnection`: it has no ``sendmsg`` and decrypts into its own buffer, so
    writes are joined and "input pending" asks the connection first. Timeouts are the kernel's, as over
    TCP.

    A C-STORE read from a file goes out through `send_file_pdata`: the file is read straight into place
    between the P-DATA-TF headers of one reused buffer, so the data set is copied once (from the page cache)
    before OpenSSL encrypts it, where gathering the parts would copy it twice (docs/design.md, "TLS")."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._out = bytearray()

    def input_pending(self) -> bool:
        if self.sock.pending():  # type: ignore[attr-defined]
            return True
        return super().input_pending()

    def send_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.sock.sendall(data)
        self.bytes_sent += len(data)

    def send_file_pdata(self, head: bytes, fh: io.FileIO, size: int, context_id: int, max_pdu: int) -> None:
        """Send `head` (whole PDUs: the command) and then `size` bytes read from the file `fh` at its
        current offset as P-DATA-TF PDUs of at most `max_pdu` bytes, the last fragment flagged last: one
        write.

        Raises
        ------
        OSError
            If the file cannot be read or ends early ("shrank"), or the connection fails.
        """
        chunk = max(max_pdu - 6, 1)
        count = max(1, -(-size // chunk))
        total = len(head) + size + 12 * count
        if len(self._out) < total:
            self._out = bytearray(total)
        out = self._out
        view = memoryview(out)
        try:
            out[: len(head)] = head
            pos = len(head)
            slots: list[memoryview] = []
            remaining = size
            while True:
                n = min(chunk, remaining)
                remaining -= n
                PDV_HEADER.pack_into(out, pos, P_DATA_TF, n + 6, n + 2, context_id, 0 if remaining else 2)
                pos += 12
                if n:
                    slots.append(view[pos : pos + n])
                pos += n
                if not remaining:
                    break
            _read_into(fh, slots)
            self.sock.sendall(view[:pos])
            self.bytes_sent += pos
        finally:
            view.release()


def _read_into(fh: io.FileIO, slots: list[memoryview]) -> None:
    """Fill `slots` from `fh`: one scatter read (``readv``) per 1024 of them, and slot by slot after a
    short one (a signal, or the end of the file: an error naming it)."""
    fd = fh.fileno()
    for first in range(0, len(slots), 1024):
        batch = slots[first : first + 1024]
        got = os.readv(fd, batch)
        for slot in batch:
            if got >= len(slot):
                got -= len(slot)
                continue
            rest, got = slot[got:], 0
            while rest:
                n = fh.readinto(rest)
                if not n:
                    raise OSError(f"{fh.name}: file shrank while being sent")
                rest = rest[n:]
