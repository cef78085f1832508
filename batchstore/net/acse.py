"""Association control (PS3.8): A-ASSOCIATE, A-RELEASE and A-ABORT PDUs for both requestor and acceptor.

The requestor's side (A-ASSOCIATE-RQ out, A-ASSOCIATE-AC/RJ in) is encoded here with ``struct``: the
send path then never imports pynetdicom, whose import (with pydicom's) cost 0.35 s of every
``batchstore send`` run on the 2-core reference machine, 40 % of a 200-file run (perf/bench_send.py,
"nagle" scenario). The acceptor decodes a request with ``struct`` too (`decode_request`: it reads
what any peer sends, so it checks every length against its container and reports how a request breaks
the standard) and encodes its answer the same way (`encode_accept`): a receiver parent that never
imports pynetdicom stays at a quarter of the memory and forks each association child four times faster
(docs/design.md, "Small runs"). Tests check every encoder byte for byte against pynetdicom's, that both
sides agree (tests/test_acse.py), and that no input makes the decoder raise anything but
`ProtocolError` (tests/test_properties.py).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ..dicom.meta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from .errors import NetError, ProtocolError
from .pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_RELEASE_RP, A_RELEASE_RQ, PDUStream

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# A-ASSOCIATE-RJ result / source / reason values (PS3.8 Table 9-21)
RESULT_REJECTED_PERMANENT = 1
RESULT_REJECTED_TRANSIENT = 2
SOURCE_SERVICE_USER = 1
SOURCE_ACSE_PROVIDER = 2
SOURCE_PRESENTATION_PROVIDER = 3
REASON_NO_REASON = 1
REASON_APP_CONTEXT_NOT_SUPPORTED = 2
REASON_CALLING_AE_NOT_RECOGNIZED = 3
REASON_CALLED_AE_NOT_RECOGNIZED = 7
REASON_TEMPORARY_CONGESTION = 1  # with SOURCE_PRESENTATION_PROVIDER
REASON_LOCAL_LIMIT_EXCEEDED = 2  # with SOURCE_PRESENTATION_PROVIDER

# Presentation context results (PS3.8 Table 9-18)
PC_ACCEPTANCE = 0
PC_USER_REJECTION = 1
PC_NO_REASON = 2
PC_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
PC_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


# Named tuples, and a plain class for the mutable `AssociationAccept`, not dataclasses: each dataclass
# created at import cost a send ~0.6 ms of start-up (docs/design.md, "Small runs").
class PresentationContextProposal(NamedTuple):
    """One proposed presentation context: an abstract syntax and its transfer syntaxes, preferred first."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


class UserIdentity(NamedTuple):
    """User Identity Negotiation (PS3.7 D.3.3.7) as requested by ``-usr -pwd -kt --saml --jwt -rsp``."""

    kind: int  # 1 username, 2 username+password, 3 Kerberos, 4 SAML, 5 JWT
    primary: bytes
    secondary: bytes = b""
    positive_response: bool = False


class AssociationRequest(NamedTuple):
    """What a requestor proposes (or what an acceptor received)."""

    calling_ae: str
    called_ae: str
    contexts: tuple[tuple[int, str, tuple[str, ...]], ...]  # (context id, abstract syntax, transfer syntaxes)
    max_pdu: int = 16384  # our maximum receive PDU length (0 = unlimited)
    user_identity: UserIdentity | None = None
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME
    application_context: str = APPLICATION_CONTEXT
    #: SCP/SCU Role Selection (PS3.7 D.3.3.4): (abstract syntax, SCU role, SCP role) of the requestor
    roles: tuple[tuple[str, bool, bool], ...] = ()


class AssociationAccept:
    """The acceptor's answer: per context result and transfer syntax, and its limits.

    Filled in place as the A-ASSOCIATE-AC is decoded. Nothing compares or prints one, so it has no
    ``__eq__`` or ``__repr__`` of its own.
    """

    __slots__ = (
        "max_pdu", "results", "implementation_class_uid", "implementation_version_name",
        "user_identity_response", "roles",
    )  # fmt: skip

    def __init__(
        self,
        max_pdu: int,  # the peer's maximum receive PDU length (0 = unlimited)
        results: dict[int, tuple[int, str]] | None = None,  # context id -> (result, ts)
        implementation_class_uid: str = "",
        implementation_version_name: str = "",
        user_identity_response: bytes | None = None,
        roles: dict[str, tuple[bool, bool]] | None = None,  # abstract syntax -> (SCU, SCP)
    ) -> None:
        self.max_pdu = max_pdu
        self.results = {} if results is None else results
        self.implementation_class_uid = implementation_class_uid
        self.implementation_version_name = implementation_version_name
        self.user_identity_response = user_identity_response
        self.roles = {} if roles is None else roles

    def accepted(self) -> dict[int, str]:
        """Context ID -> accepted transfer syntax, for accepted contexts only."""
        return {cid: ts for cid, (result, ts) in self.results.items() if result == PC_ACCEPTANCE}


class AssociationRejected(NetError):
    """The peer answered A-ASSOCIATE-RJ."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result = result
        self.source = source
        self.reason = reason
        self.transient = result == RESULT_REJECTED_TRANSIENT
        kind = "transient" if self.transient else "permanent"
        super().__init__(
            f"association rejected ({kind}): {rejection_reason_text(source, reason)} "
            f"[result {result}, source {source}, reason {reason}]"
        )


def rejection_reason_text(source: int, reason: int) -> str:
    """A human description of an A-ASSOCIATE-RJ source/reason pair."""
    if source == SOURCE_SERVICE_USER:
        return {
            1: "no reason given",
            2: "application context name not supported",
            3: "calling AE title not recognized",
            7: "called AE title not recognized",
        }.get(reason, f"service user reason {reason}")
    if source == SOURCE_ACSE_PROVIDER:
        return {1: "no reason given", 2: "protocol version not supported"}.get(
            reason, f"ACSE reason {reason}"
        )
    if source == SOURCE_PRESENTATION_PROVIDER:
        return {1: "temporary congestion", 2: "local limit exceeded"}.get(
            reason, f"presentation reason {reason}"
        )
    return f"source {source} reason {reason}"


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(payload)) + payload


def _ae(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16)


def encode_request(request: AssociationRequest) -> bytes:
    """Return the body of an A-ASSOCIATE-RQ PDU (without the 6-byte PDU header), PS3.8 9.3.2."""
    items = [_item(0x10, request.application_context.encode("ascii"))]
    for context_id, abstract, syntaxes in request.contexts:
        sub = _item(0x30, abstract.encode("ascii")) + b"".join(
            _item(0x40, ts.encode("ascii")) for ts in syntaxes
        )
        items.append(_item(0x20, struct.pack(">Bxxx", context_id) + sub))
    user = [
        _item(0x51, struct.pack(">L", request.max_pdu)),
        _item(0x52, request.implementation_class_uid.encode()),
    ]
    if request.implementation_version_name:
        user.append(_item(0x55, request.implementation_version_name.encode("ascii")))
    user += [role_item(abstract, scu, scp) for abstract, scu, scp in request.roles]
    identity = request.user_identity
    if identity is not None:
        secondary = identity.secondary if identity.kind == 2 else b""
        user.append(
            _item(
                0x58,
                struct.pack(">BBH", identity.kind, int(identity.positive_response), len(identity.primary))
                + identity.primary
                + struct.pack(">H", len(secondary))
                + secondary,
            )
        )
    items.append(_item(0x50, b"".join(user)))
    header = struct.pack(">HH", 1, 0) + _ae(request.called_ae) + _ae(request.calling_ae) + bytes(32)
    return header + b"".join(items)


def _iter_items(data: bytes | bytearray, offset: int, end: int) -> list[tuple[int, bytes]]:
    out = []
    while offset + 4 <= end:
        item_type, length = struct.unpack_from(">BxH", data, offset)
        if offset + 4 + length > end:
            raise ProtocolError(f"item 0x{item_type:02X} runs past the end of the PDU")
        out.append((item_type, bytes(data[offset + 4 : offset + 4 + length])))
        offset += 4 + length
    return out


def decode_accept(body: bytes | bytearray) -> AssociationAccept:
    """Decode the body of an A-ASSOCIATE-AC PDU (PS3.8 9.3.3).

    Raises
    ------
    ProtocolError
        If an item's length runs past the end of the PDU.
    """
    if len(body) < 68:
        raise ProtocolError("short A-ASSOCIATE-AC")
    accept = AssociationAccept(max_pdu=0)
    for item_type, payload in _iter_items(body, 68, len(body)):
        if item_type == 0x21 and len(payload) >= 4:
            context_id, result = payload[0], payload[2]
            ts = ""
            for sub_type, sub in _iter_items(payload, 4, len(payload)):
                if sub_type == 0x40:
                    ts = sub.decode("ascii", "replace").rstrip("\0 ")
            accept.results[context_id] = (result, ts)
        elif item_type == 0x50:
            for sub_type, sub in _iter_items(payload, 0, len(payload)):
                if sub_type == 0x51 and len(sub) >= 4:
                    accept.max_pdu = struct.unpack(">L", sub[:4])[0]
                elif sub_type == 0x52:
                    accept.implementation_class_uid = sub.decode("ascii", "replace").rstrip("\0 ")
                elif sub_type == 0x55:
                    accept.implementation_version_name = sub.decode("ascii", "replace").strip()
                elif sub_type == 0x59 and len(sub) >= 2:
                    (n,) = struct.unpack(">H", sub[:2])
                    accept.user_identity_response = bytes(sub[2 : 2 + n])
                elif sub_type == 0x54:
                    try:
                        role = _role(sub)
                    except ProtocolError:  # not trusted, and no reason to fail a C-STORE association for it
                        continue
                    accept.roles[role[0]] = role[1:]
    return accept


def role_item(abstract: str, scu: bool, scp: bool) -> bytes:
    """An SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4) for a request or an accept."""
    uid = abstract.encode("ascii")
    return _item(0x54, struct.pack(">H", len(uid)) + uid + bytes((int(scu), int(scp))))


def _role(sub: bytes) -> tuple[str, bool, bool]:
    """An SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4): abstract syntax, SCU role, SCP role."""
    if len(sub) < 2:
        raise ProtocolError("short SCP/SCU role selection sub-item")
    (n,) = struct.unpack_from(">H", sub, 0)
    if 2 + n + 2 != len(sub):
        raise ProtocolError("SCP/SCU role selection sub-item of the wrong length")
    return _uid_text(sub[2 : 2 + n]), bool(sub[2 + n]), bool(sub[3 + n])


def decode_reject(body: bytes | bytearray) -> AssociationRejected:
    """Decode the body of an A-ASSOCIATE-RJ PDU into the exception that describes it."""
    if len(body) < 4:
        raise ProtocolError("short A-ASSOCIATE-RJ")
    return AssociationRejected(body[1], body[2], body[3])


class Violation(NamedTuple):
    """How an A-ASSOCIATE-RQ breaks the standard, as the A-ASSOCIATE-RJ that answers it (PS3.8 9.3.4)."""

    result: int
    source: int
    reason: int
    text: str


#: The longest UID the standard allows (PS3.5 9.1); AE titles are at most 16 characters.
MAX_UID_LENGTH = 64


def valid_text(value: str, limit: int) -> bool:
    """True for a UID or AE title a response can carry: 1..`limit` printable ASCII characters."""
    return 0 < len(value) <= limit and value.isascii() and value.isprintable()


def _ae_title(raw: bytes) -> tuple[str, bool]:
    """An AE title field as text, and whether it is acceptable (printable ASCII, not blank)."""
    text = raw.decode("ascii", "replace").strip(" \0")
    return text, valid_text(text, 16) and "\\" not in text


def decode_request(body: bytes | bytearray) -> tuple[AssociationRequest, Violation | None]:
    """Decode an A-ASSOCIATE-RQ body (acceptor side) with ``struct``, checking it against PS3.8 9.3.2.

    Returns
    -------
    request : AssociationRequest
    violation : Violation or None
        The first rule the request breaks (protocol version, blank or unprintable AE titles, no
        presentation context, even, zero or repeated context IDs, a context without abstract or transfer
        syntax, no user information): what the A-ASSOCIATE-RJ answering it says.

    Raises
    ------
    ProtocolError
        If the PDU is too short or an item runs past the end of its container: answered with A-ABORT.
    """
    if len(body) < 68:
        raise ProtocolError(f"short A-ASSOCIATE-RQ ({len(body)} bytes)")
    (version,) = struct.unpack_from(">H", body, 0)
    called_ae, called_ok = _ae_title(bytes(body[4:20]))
    calling_ae, calling_ok = _ae_title(bytes(body[20:36]))
    violation: Violation | None = None

    def violated(result: int, source: int, reason: int, text: str) -> None:
        nonlocal violation
        if violation is None:
            violation = Violation(result, source, reason, text)

    if not version & 1:
        violated(RESULT_REJECTED_PERMANENT, SOURCE_ACSE_PROVIDER, 2, f"protocol version 0x{version:04X}")
    if not calling_ok:
        violated(RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED,
                 f"calling AE title {calling_ae!r} is blank or not printable ASCII")
    if not called_ok:
        violated(RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLED_AE_NOT_RECOGNIZED,
                 f"called AE title {called_ae!r} is blank or not printable ASCII")
    application_context = ""
    contexts: list[tuple[int, str, tuple[str, ...]]] = []
    seen: set[int] = set()
    max_pdu = 0
    impl_uid = impl_version = ""
    identity = None
    roles: list[tuple[str, bool, bool]] = []
    user_information = False
    for item_type, payload in _iter_items(body, 68, len(body)):
        if item_type == 0x10:
            application_context = _uid_text(payload)
        elif item_type == 0x20:
            if len(payload) < 4:
                raise ProtocolError("short presentation context item")
            context_id = payload[0]
            abstract = ""
            syntaxes: list[str] = []
            abstract_items = 0
            for sub_type, sub in _iter_items(payload, 4, len(payload)):
                if sub_type == 0x30:
                    abstract = _uid_text(sub)
                    abstract_items += 1
                elif sub_type == 0x40:
                    syntaxes.append(_uid_text(sub))
            if context_id == 0 or not context_id & 1 or context_id in seen:
                violated(RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON,
                         f"presentation context ID {context_id} is not a new odd number from 1 to 255")
            elif abstract_items != 1 or not abstract or not syntaxes:
                violated(RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON,
                         f"presentation context {context_id} needs one abstract syntax and a transfer syntax")
            seen.add(context_id)
            contexts.append((context_id, abstract, tuple(syntaxes)))
        elif item_type == 0x50:
            user_information = True
            for sub_type, sub in _iter_items(payload, 0, len(payload)):
                if sub_type == 0x51 and len(sub) >= 4:
                    (max_pdu,) = struct.unpack_from(">L", sub, 0)
                elif sub_type == 0x52:
                    impl_uid = _uid_text(sub)
                elif sub_type == 0x55:
                    impl_version = sub.decode("ascii", "replace").strip(" \0")
                elif sub_type == 0x58:
                    identity = _user_identity(sub)
                elif sub_type == 0x54:
                    roles.append(_role(sub))
    if not contexts:
        violated(RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON,
                 "no presentation context proposed")
    if not user_information:
        violated(RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON,
                 "no user information item")
    request = AssociationRequest(
        calling_ae=calling_ae,
        called_ae=called_ae,
        contexts=tuple(contexts),
        max_pdu=max_pdu,
        user_identity=identity,
        implementation_class_uid=impl_uid,
        implementation_version_name=impl_version,
        application_context=application_context,
        roles=tuple(roles),
    )
    return request, violation


def _uid_text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\0 ")


def _user_identity(sub: bytes) -> UserIdentity:
    """A User Identity sub-item (PS3.7 D.3.3.7.1)."""
    if len(sub) < 4:
        raise ProtocolError("short user identity sub-item")
    kind, positive, primary_length = struct.unpack_from(">BBH", sub, 0)
    end = 4 + primary_length
    if end + 2 > len(sub):
        raise ProtocolError("user identity sub-item runs past its end")
    (secondary_length,) = struct.unpack_from(">H", sub, end)
    if end + 2 + secondary_length > len(sub):
        raise ProtocolError("user identity sub-item runs past its end")
    return UserIdentity(kind, bytes(sub[4:end]), bytes(sub[end + 2 : end + 2 + secondary_length]), bool(positive))


def encode_accept(
    request: AssociationRequest,
    results: dict[int, tuple[int, str]],
    max_pdu: int,
    user_identity_response: bytes | None = None,
    ae_title: str | None = None,
    roles: dict[str, tuple[bool, bool]] | None = None,
) -> bytes:
    """Return the body of an A-ASSOCIATE-AC answering `request`.

    Parameters
    ----------
    results : dict
        Context ID -> (result, transfer syntax); a rejected context's syntax is ignored.
    max_pdu : int
        Our maximum receive PDU length (0 = unlimited).
    roles : dict, optional
        Abstract syntax -> (SCU role, SCP role) of the requestor that this side accepts: answered with an
        SCP/SCU Role Selection sub-item each.
    """
    items = [_item(0x10, APPLICATION_CONTEXT.encode("ascii"))]
    for context_id, (result, ts) in sorted(results.items()):
        syntax = _item(0x40, (ts or "1.2.840.10008.1.2").encode("ascii"))
        items.append(_item(0x21, struct.pack(">BxBx", context_id, result) + syntax))
    user = [
        _item(0x51, struct.pack(">L", max_pdu)),
        _item(0x52, IMPLEMENTATION_CLASS_UID.encode("ascii")),
        _item(0x55, IMPLEMENTATION_VERSION_NAME.encode("ascii")),
    ]
    if user_identity_response is not None:
        user.append(_item(0x59, struct.pack(">H", len(user_identity_response)) + user_identity_response))
    user += [role_item(abstract, scu, scp) for abstract, (scu, scp) in (roles or {}).items()]
    items.append(_item(0x50, b"".join(user)))
    called = ae_title or request.called_ae or "ANY"
    calling = request.calling_ae or "ANY"
    header = struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + bytes(32)
    return header + b"".join(items)


def encode_reject(result: int, source: int, reason: int) -> bytes:
    """Return the body of an A-ASSOCIATE-RJ PDU."""
    return bytes((0, result, source, reason))


def _wrap(pdu_type: int, body: bytes) -> bytes:
    return bytes((pdu_type, 0)) + len(body).to_bytes(4, "big") + body


def request_association(stream: PDUStream, request: AssociationRequest) -> AssociationAccept:
    """Send an A-ASSOCIATE-RQ on `stream` and wait for the answer.

    Raises
    ------
    AssociationRejected
        On A-ASSOCIATE-RJ.
    PeerAborted, ConnectionError, TimeoutError
        When the peer aborts, closes or does not answer in time.
    """
    stream.pdu(0x01, encode_request(request))
    pdu_type, body = stream.read_pdu()
    if pdu_type == A_ASSOCIATE_AC:
        return decode_accept(body)
    if pdu_type == A_ASSOCIATE_RJ:
        raise decode_reject(body)
    raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} in answer to A-ASSOCIATE-RQ")


def release(stream: PDUStream) -> None:
    """Send A-RELEASE-RQ and wait for A-RELEASE-RP (PDUs arriving in between are dropped), then close."""
    try:
        stream.pdu(A_RELEASE_RQ, bytes(4))
        while True:
            pdu_type, _body = stream.read_pdu()
            if pdu_type == A_RELEASE_RP:
                break
            if pdu_type == A_RELEASE_RQ:  # release collision: answer it
                stream.pdu(A_RELEASE_RP, bytes(4))
    finally:
        stream.close()
