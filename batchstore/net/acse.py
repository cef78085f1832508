"""Association control (PS3.8): A-ASSOCIATE, A-RELEASE and A-ABORT PDUs for both requestor and acceptor.

The requestor's side (A-ASSOCIATE-RQ out, A-ASSOCIATE-AC/RJ in) is encoded here with ``struct``: the
send path then never imports pynetdicom, whose import (with pydicom's) cost 0.35 s of every
``batchstore send`` run on the 2-core reference machine, 40 % of a 200-file run (perf/bench_send.py,
"nagle" scenario). The acceptor's side (`decode_request`, `encode_accept`) runs in long-lived
receivers and uses pynetdicom's PDU classes, imported on first use; tests check that both encoders
agree (tests/test_acse.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class PresentationContextProposal:
    """One proposed presentation context: an abstract syntax and its transfer syntaxes, preferred first."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class UserIdentity:
    """User Identity Negotiation (PS3.7 D.3.3.7) as requested by ``-usr -pwd -kt --saml --jwt -rsp``."""

    kind: int  # 1 username, 2 username+password, 3 Kerberos, 4 SAML, 5 JWT
    primary: bytes
    secondary: bytes = b""
    positive_response: bool = False


@dataclass(frozen=True)
class AssociationRequest:
    """What a requestor proposes (or what an acceptor received)."""

    calling_ae: str
    called_ae: str
    contexts: tuple[tuple[int, str, tuple[str, ...]], ...]  # (context id, abstract syntax, transfer syntaxes)
    max_pdu: int = 16384  # our maximum receive PDU length (0 = unlimited)
    user_identity: UserIdentity | None = None
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME
    application_context: str = APPLICATION_CONTEXT


@dataclass
class AssociationAccept:
    """The acceptor's answer: per context result and transfer syntax, and its limits."""

    max_pdu: int  # the peer's maximum receive PDU length (0 = unlimited)
    results: dict[int, tuple[int, str]] = field(default_factory=dict)  # context id -> (result, ts)
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    user_identity_response: bytes | None = None

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
    return accept


def decode_reject(body: bytes | bytearray) -> AssociationRejected:
    """Decode the body of an A-ASSOCIATE-RJ PDU into the exception that describes it."""
    if len(body) < 4:
        raise ProtocolError("short A-ASSOCIATE-RJ")
    return AssociationRejected(body[1], body[2], body[3])


def decode_request(body: bytes) -> tuple[AssociationRequest, bytes | None]:
    """Decode an A-ASSOCIATE-RQ body (acceptor side).

    Returns
    -------
    request : AssociationRequest
    implementation_class_uid_present : bytes or None
        Unused placeholder for symmetry; the request's implementation UID is in the request ("" if absent).
    """
    from pynetdicom import pdu as _pdu
    from pynetdicom import pdu_primitives as _prim

    pdu = _pdu.A_ASSOCIATE_RQ()
    pdu.decode(_wrap(0x01, body))
    primitive = pdu.to_primitive()
    contexts = tuple(
        (
            int(pc.context_id or 0),
            str(pc.abstract_syntax or ""),
            tuple(str(ts) for ts in pc.transfer_syntax),
        )
        for pc in primitive.presentation_context_definition_list
    )
    max_pdu = 0
    impl_uid = ""
    impl_version = ""
    identity = None
    for item in primitive.user_information:
        if isinstance(item, _prim.MaximumLengthNotification):
            max_pdu = int(item.maximum_length_received or 0)
        elif isinstance(item, _prim.ImplementationClassUIDNotification):
            impl_uid = str(item.implementation_class_uid or "")
        elif isinstance(item, _prim.ImplementationVersionNameNotification):
            impl_version = str(item.implementation_version_name or "")
        elif isinstance(item, _prim.UserIdentityNegotiation):
            identity = UserIdentity(
                int(item.user_identity_type or 0),
                bytes(item.primary_field or b""),
                bytes(item.secondary_field or b""),
                bool(item.positive_response_requested),
            )
    request = AssociationRequest(
        calling_ae=str(primitive.calling_ae_title).strip(),
        called_ae=str(primitive.called_ae_title).strip(),
        contexts=contexts,
        max_pdu=max_pdu,
        user_identity=identity,
        implementation_class_uid=impl_uid,
        implementation_version_name=impl_version,
        application_context=str(primitive.application_context_name or ""),
    )
    return request, None


def encode_accept(
    request: AssociationRequest,
    results: dict[int, tuple[int, str]],
    max_pdu: int,
    user_identity_response: bytes | None = None,
    ae_title: str | None = None,
) -> bytes:
    """Return the body of an A-ASSOCIATE-AC answering `request`.

    Parameters
    ----------
    results : dict
        Context ID -> (result, transfer syntax); a rejected context's syntax is ignored.
    max_pdu : int
        Our maximum receive PDU length (0 = unlimited).
    """
    from pynetdicom import pdu as _pdu
    from pynetdicom import pdu_primitives as _prim
    from pynetdicom.presentation import PresentationContext

    primitive = _prim.A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = request.calling_ae or "ANY"
    primitive.called_ae_title = ae_title or request.called_ae or "ANY"
    for context_id, (result, ts) in sorted(results.items()):
        pc = PresentationContext()
        pc.context_id = context_id
        pc.result = result
        pc.transfer_syntax = [ts or "1.2.840.10008.1.2"]
        primitive.presentation_context_definition_results_list.append(pc)
    max_length = _prim.MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl_uid = _prim.ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = _prim.ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    items: list[Any] = [max_length, impl_uid, version]
    if user_identity_response is not None:
        ui = _prim.UserIdentityNegotiation()
        ui.server_response = user_identity_response
        items.append(ui)
    primitive.user_information = items
    pdu = _pdu.A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode()[6:])


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
