"""``batchstore receive --commitment``: the Storage Commitment SCP (Push Model, PS3.4 Annex J).

An N-ACTION-RQ lists SOP instances; the receiver commits those it has on disk under ``-od``: a complete
file under its final name whose header names the same SOP Instance UID and SOP Class UID (with
``--fsync``, synced to stable storage first). It answers the N-ACTION-RSP, then reports in an
N-EVENT-REPORT-RQ (event type 1 when every instance is committed, 2 with a Failed SOP Sequence
otherwise: 0x0112 no such object instance, 0x0119 class / instance conflict): on the same association, or,
with ``--commit-reply-to HOST:PORT``, on a new association it opens to that address as SCP of Storage
Commitment (SCP/SCU Role Selection), as a PACS does (docs/design.md, "Storage commitment").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..dicom.part10 import Instance, read_instance
from ..dicom.uids import modality_prefix
from ..net import acse, dimse
from ..net import commitment as sc
from ..net.errors import NetError, ProtocolError
from ..net.pdu import P_DATA_TF, PDUStream
from ..net.sockets import connect
from .files import TEMP_PREFIX, fsync_directory, fsync_path
from .naming import sanitize_name

if TYPE_CHECKING:
    from ..net.tls import TLSOptions
    from .options import ReceiveOptions

log = logging.getLogger("batchstore.scp")

#: The bound on any PDU the peer of a report association sends (we advertise 16384 bytes).
REPLY_MAX_PDU = 128 * 1024
#: Commands `CommitmentSCP.command` takes.
COMMANDS = frozenset((dimse.N_ACTION_RQ, dimse.N_EVENT_REPORT_RSP))


def _named(output_dir: str, references: list[sc.Reference], extension: str) -> dict[str, Instance]:
    """The instances found under the name the receiver gives them by default (``CT.<uid>``, directly under
    `output_dir`): one header read per reference instead of one per file on disk."""
    found: dict[str, Instance] = {}
    if not set(extension) <= _PLAIN:
        return found
    for ref in references:
        prefix = sanitize_name(modality_prefix(ref.sop_class_uid))
        header = read_instance(os.path.join(output_dir, f"{prefix}.{ref.sop_instance_uid}{extension}"))
        if isinstance(header, Instance) and header.sop_instance_uid == ref.sop_instance_uid:
            found[ref.sop_instance_uid] = header
    return found


_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def commit_on_disk(
    output_dir: str, references: list[sc.Reference], fsync: bool, extension: str = ""
) -> sc.EventReport:
    """The report for `references`: each one committed when a file under `output_dir` holds it (looked
    for under its default name first, then among every file under `output_dir`)."""
    found = _named(output_dir, references, extension)
    wanted = {ref.sop_instance_uid for ref in references} - set(found)
    for directory, dirs, names in os.walk(output_dir) if wanted else ():
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith(TEMP_PREFIX):
                continue
            header = read_instance(os.path.join(directory, name))
            if isinstance(header, Instance) and header.sop_instance_uid in wanted:
                found.setdefault(header.sop_instance_uid, header)
    report = sc.EventReport("", sc.EVENT_ALL_COMMITTED)
    synced: set[str] = set()
    for ref in references:
        inst = found.get(ref.sop_instance_uid)
        if inst is None:
            report.failed.append(sc.Reference(ref.sop_class_uid, ref.sop_instance_uid, sc.NO_SUCH_INSTANCE))
        elif inst.sop_class_uid != ref.sop_class_uid:
            report.failed.append(
                sc.Reference(ref.sop_class_uid, ref.sop_instance_uid, sc.CLASS_INSTANCE_CONFLICT)
            )
        else:
            if fsync:
                fsync_path(inst.path)
                synced.add(os.path.dirname(inst.path))
            report.committed.append(ref)
    for directory in synced:
        fsync_directory(directory)
    if report.failed:
        report.event_type = sc.EVENT_SOME_FAILED
    return report


class CommitmentSCP:
    """Storage commitment within one association.

    Parameters
    ----------
    options : ReceiveOptions
    send : callable
        ``send(context_id, command, data_set)``: sends a whole message on this association.
    """

    def __init__(self, options: ReceiveOptions, send: Callable[[int, bytes, bytes | None], None]) -> None:
        assert options.commitment is not None
        self.options = options
        self.settings = options.commitment
        self.send = send
        self._action: dimse.Command | None = None
        self._context = 0
        self._ts = ""
        self._calling_ae = ""
        self._data = bytearray()
        self._message_id = 0

    @property
    def expecting(self) -> bool:
        """True while an N-ACTION-RQ's data set is arriving."""
        return self._action is not None

    def command(self, context: int, command: dimse.Command, transfer_syntax: str, calling_ae: str) -> None:
        """An N-ACTION-RQ (its data set follows) or the N-EVENT-REPORT-RSP to a report sent here."""
        if command.command_field == dimse.N_EVENT_REPORT_RSP:
            status = command.status if command.status is not None else 0xFFFF
            log.log(
                logging.INFO if status == 0 else logging.WARNING,
                "N-EVENT-REPORT-RSP (MsgID %d): status 0x%04X",
                command.message_id_responded,
                status,
            )
            return
        if not command.data_set_present:
            raise ProtocolError("N-ACTION-RQ without its Action Information")
        self._action, self._context, self._ts, self._calling_ae = (
            command,
            context,
            transfer_syntax,
            calling_ae,
        )
        self._data.clear()

    def data(self, context: int, control: int, fragment: memoryview) -> None:
        """A fragment of the N-ACTION-RQ's data set; the last one gets the request answered."""
        if context != self._context:
            raise ProtocolError("data set fragment on another presentation context than its command")
        self._data += fragment
        if len(self._data) > sc.MAX_DATA_SET:
            raise ProtocolError(f"N-ACTION-RQ data set longer than {sc.MAX_DATA_SET} bytes")
        if control & 2:
            action, self._action = self._action, None
            assert action is not None
            self._answer(action, bytes(self._data))
            self._data.clear()

    def _answer(self, action: dimse.Command, data: bytes) -> None:
        requested_class = dimse.uid_element(action, dimse.REQUESTED_SOP_CLASS_UID)
        requested_instance = dimse.uid_element(action, dimse.REQUESTED_SOP_INSTANCE_UID)
        action_type = dimse.us_element(action, dimse.ACTION_TYPE_ID)
        status = 0
        refs: list[sc.Reference] = []
        transaction = ""
        if requested_class != sc.STORAGE_COMMITMENT or requested_instance != sc.STORAGE_COMMITMENT_INSTANCE:
            status = 0x0117  # invalid object instance
        elif action_type != sc.ACTION_REQUEST:
            status = 0x0123  # no such action
        else:
            try:
                transaction, refs = sc.decode_action(data, self._ts)
            except ProtocolError as exc:
                log.error("N-ACTION-RQ (MsgID %d): %s", action.message_id, exc)
                status = sc.PROCESSING_FAILURE
        self.send(
            self._context,
            dimse.n_action_rsp(
                action.message_id,
                sc.STORAGE_COMMITMENT,
                sc.STORAGE_COMMITMENT_INSTANCE,
                action_type or 0,
                status,
            ),
            None,
        )
        if status:
            return
        storage = self.options.storage
        report = commit_on_disk(storage.output_dir, refs, storage.fsync, storage.extension)
        report.transaction_uid = transaction
        log.info(
            "storage commitment, transaction %s: %d committed, %d failed",
            transaction,
            len(report.committed),
            len(report.failed),
        )
        if self.settings.reply_to is None:
            self._message_id = self._message_id % 0xFFFF + 1
            self.send(
                self._context, _event_command(self._message_id, report), sc.encode_event(report, self._ts)
            )
        else:
            self._report_on_new_association(report)

    def _report_on_new_association(self, report: sc.EventReport) -> None:
        host, port = self.settings.reply_to  # type: ignore[misc]
        called = self.settings.reply_aet or self._calling_ae
        try:
            report_on_new_association(
                host, port, self.options.ae_title, called, report, self.options.socket_timeout, self.options.tls
            )
        except (OSError, NetError) as exc:
            log.error("storage commitment report to %s at %s:%d not delivered: %s", called, host, port, exc)


def _event_command(message_id: int, report: sc.EventReport) -> bytes:
    return dimse.n_event_report_rq(
        message_id, sc.STORAGE_COMMITMENT, sc.STORAGE_COMMITMENT_INSTANCE, report.event_type
    )


def report_on_new_association(
    host: str,
    port: int,
    calling_ae: str,
    called_ae: str,
    report: sc.EventReport,
    timeout: float | None,
    tls: TLSOptions | None = None,
) -> None:
    """Open an association to `host`:`port` as SCP of Storage Commitment, send `report`, await its
    N-EVENT-REPORT-RSP and release.

    With `tls` (the receiver's ``+tls``) the association is a TLS client's: the receiver's certificate
    and key, its trusted certificates; the requestor's certificate is always verified, as a TLS client
    verifies every server.

    Raises
    ------
    OSError, NetError
        When the peer cannot be reached, rejects the association or the context, or does not answer
        (`net.tls.TLSHandshakeError` when the TLS handshake fails).
    """
    sock = connect(host, port, timeout or 30.0)
    if tls is None:
        stream = PDUStream(sock)
    else:
        from ..net.tls import client_stream  # ssl only with TLS

        stream = client_stream(sock, tls, timeout or 30.0)
    stream.settimeout(timeout or 30.0)
    stream.max_pdu = REPLY_MAX_PDU  # the A-ASSOCIATE-AC, then PDUs of at most what we advertised
    try:
        request = acse.AssociationRequest(
            calling_ae=calling_ae,
            called_ae=called_ae,
            contexts=((1, sc.STORAGE_COMMITMENT, sc.TRANSFER_SYNTAXES),),
            roles=((sc.STORAGE_COMMITMENT, False, True),),
        )
        accept = acse.request_association(stream, request)
        ts = accept.accepted().get(1)
        if ts is None:
            raise NetError(f"{called_ae} did not accept the Storage Commitment SOP class")
        role = accept.roles.get(sc.STORAGE_COMMITMENT)
        if role is not None and not role[1]:
            raise NetError(f"{called_ae} did not accept this side as SCP of Storage Commitment")
        command = _event_command(1, report)
        stream.send_parts(sc.message_parts(1, command, sc.encode_event(report, ts), accept.max_pdu or 0))
        assembler = sc.MessageAssembler(max_data=0)
        while True:
            pdu_type, body = stream.read_pdu()
            if pdu_type != P_DATA_TF:
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} instead of N-EVENT-REPORT-RSP")
            messages = assembler.feed(body)
            if messages:
                rsp = messages[0].command
                if rsp.command_field != dimse.N_EVENT_REPORT_RSP or rsp.message_id_responded != 1:
                    raise ProtocolError(f"unexpected answer 0x{rsp.command_field:04X} to N-EVENT-REPORT-RQ")
                log.info("N-EVENT-REPORT-RSP from %s: status 0x%04X", called_ae, rsp.status or 0)
                break
        acse.release(stream)
    except BaseException:
        stream.abort()
        raise
