"""batchstore's own A-ASSOCIATE-RQ encoder and A-ASSOCIATE-AC decoder agree with pynetdicom's PDU classes."""

from __future__ import annotations

import pytest
from pynetdicom import pdu as pn_pdu
from pynetdicom import pdu_primitives as pn_prim
from pynetdicom.presentation import PresentationContext

from batchstore.dicom.uids import EXPLICIT_VR_BE as BEE
from batchstore.dicom.uids import EXPLICIT_VR_LE as LEE
from batchstore.dicom.uids import IMPLICIT_VR_LE as LEI
from batchstore.net import acse

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def test_request_decodes_with_pynetdicom_identically() -> None:
    request = acse.AssociationRequest(
        calling_ae="STORESCU",
        called_ae="ANY-SCP",
        contexts=((1, CT, (LEE, BEE, LEI)), (3, MR, (LEI,))),
        max_pdu=65536,
        user_identity=acse.UserIdentity(2, b"alice", b"secret", True),
    )
    body = acse.encode_request(request)
    pdu = pn_pdu.A_ASSOCIATE_RQ()
    pdu.decode(bytes((1, 0)) + len(body).to_bytes(4, "big") + body)
    prim = pdu.to_primitive()
    assert prim.calling_ae_title == "STORESCU" and prim.called_ae_title == "ANY-SCP"
    assert prim.application_context_name == acse.APPLICATION_CONTEXT
    got = [(pc.context_id, pc.abstract_syntax, tuple(pc.transfer_syntax))
           for pc in prim.presentation_context_definition_list]
    assert got == [(1, CT, (LEE, BEE, LEI)), (3, MR, (LEI,))]
    info = {type(item).__name__: item for item in prim.user_information}
    assert info["MaximumLengthNotification"].maximum_length_received == 65536
    assert info["ImplementationClassUIDNotification"].implementation_class_uid == acse.IMPLEMENTATION_CLASS_UID
    assert info["ImplementationVersionNameNotification"].implementation_version_name == acse.IMPLEMENTATION_VERSION_NAME
    identity = info["UserIdentityNegotiation"]
    assert (identity.user_identity_type, identity.primary_field, identity.secondary_field) == (2, b"alice", b"secret")
    assert identity.positive_response_requested is True
    # and our own acceptor-side decoder reads it back
    decoded, _ = acse.decode_request(body)
    assert decoded.contexts == request.contexts and decoded.user_identity == request.user_identity


def test_accept_encoded_by_pynetdicom_decodes_identically() -> None:
    prim = pn_prim.A_ASSOCIATE()
    prim.application_context_name = acse.APPLICATION_CONTEXT
    prim.calling_ae_title = "STORESCU"
    prim.called_ae_title = "ANY-SCP"
    for cid, result, ts in ((1, 0, LEE), (3, 4, LEI), (5, 3, LEI)):
        pc = PresentationContext()
        pc.context_id, pc.result, pc.transfer_syntax = cid, result, [ts]
        prim.presentation_context_definition_results_list.append(pc)
    max_len = pn_prim.MaximumLengthNotification()
    max_len.maximum_length_received = 0
    impl = pn_prim.ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.3.4"
    ident = pn_prim.UserIdentityNegotiation()
    ident.server_response = b"token"
    prim.user_information = [max_len, impl, ident]
    pdu = pn_pdu.A_ASSOCIATE_AC()
    pdu.from_primitive(prim)
    accept = acse.decode_accept(bytes(pdu.encode()[6:]))
    assert accept.max_pdu == 0
    assert accept.results == {1: (0, LEE), 3: (4, LEI), 5: (3, LEI)}
    assert accept.accepted() == {1: LEE}
    assert accept.implementation_class_uid == "1.2.3.4"
    assert accept.user_identity_response == b"token"


def test_our_accept_round_trips() -> None:
    request, _ = acse.decode_request(acse.encode_request(
        acse.AssociationRequest("A", "B", ((1, CT, (LEE,)),), max_pdu=16384)))
    body = acse.encode_accept(request, {1: (acse.PC_ACCEPTANCE, LEE)}, 32768)
    accept = acse.decode_accept(body)
    assert accept.results == {1: (0, LEE)} and accept.max_pdu == 32768
    assert accept.implementation_version_name == acse.IMPLEMENTATION_VERSION_NAME


def test_implementation_class_uid_is_the_documented_uuid() -> None:
    import uuid

    expected = "2.25." + str(uuid.UUID("6d1c6a51-36c4-4f6e-9a43-8c2b7f1d0b5e").int)
    assert acse.IMPLEMENTATION_CLASS_UID == expected
    assert len(expected) <= 64


def _pynetdicom_accept(
    request: acse.AssociationRequest,
    results: dict[int, tuple[int, str]],
    max_pdu: int,
    user_identity_response: bytes | None = None,
    ae_title: str | None = None,
) -> bytes:
    """The A-ASSOCIATE-AC body pynetdicom encodes for the same answer: the reference for `encode_accept`."""
    prim = pn_prim.A_ASSOCIATE()
    prim.application_context_name = acse.APPLICATION_CONTEXT
    prim.calling_ae_title = request.calling_ae or "ANY"
    prim.called_ae_title = ae_title or request.called_ae or "ANY"
    for context_id, (result, ts) in sorted(results.items()):
        pc = PresentationContext()
        pc.context_id = context_id
        pc.result = result
        pc.transfer_syntax = [ts or "1.2.840.10008.1.2"]
        prim.presentation_context_definition_results_list.append(pc)
    max_len = pn_prim.MaximumLengthNotification()
    max_len.maximum_length_received = max_pdu
    impl = pn_prim.ImplementationClassUIDNotification()
    impl.implementation_class_uid = acse.IMPLEMENTATION_CLASS_UID
    version = pn_prim.ImplementationVersionNameNotification()
    version.implementation_version_name = acse.IMPLEMENTATION_VERSION_NAME
    items: list[object] = [max_len, impl, version]
    if user_identity_response is not None:
        ident = pn_prim.UserIdentityNegotiation()
        ident.server_response = user_identity_response
        items.append(ident)
    prim.user_information = items
    pdu = pn_pdu.A_ASSOCIATE_AC()
    pdu.from_primitive(prim)
    return bytes(pdu.encode()[6:])


@pytest.mark.parametrize(
    ("results", "max_pdu", "identity", "ae_title"),
    [
        ({1: (acse.PC_ACCEPTANCE, LEE)}, 16384, None, None),
        ({1: (0, LEE), 3: (4, ""), 5: (3, LEI), 7: (0, "1.2.840.10008.1.2.4.50")}, 0, None, "STORESCP"),
        ({1: (0, LEI)}, 4294967295, b"", None),
        ({9: (0, LEE), 1: (1, LEI)}, 32768, b"server-token-of-some-length", "A"),
    ],
)
def test_accept_matches_pynetdicom_byte_for_byte(
    results: dict[int, tuple[int, str]], max_pdu: int, identity: bytes | None, ae_title: str | None
) -> None:
    request = acse.AssociationRequest("CALLING", "CALLED", ((1, CT, (LEE,)),), max_pdu=16384)
    ours = acse.encode_accept(request, results, max_pdu, user_identity_response=identity, ae_title=ae_title)
    assert ours == _pynetdicom_accept(request, results, max_pdu, identity, ae_title)
