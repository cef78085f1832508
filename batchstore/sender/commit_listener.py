"""The sender's listener for storage commitment reports that come on an association the peer opens
(``--commit-port``): the peer, SCP of Storage Commitment, is the association requestor and takes the SCP
role (SCP/SCU Role Selection); batchstore accepts it, answers each N-EVENT-REPORT-RQ with an
N-EVENT-REPORT-RSP and hands the report to the thread that journals it (`ReportListener.reports`).

One thread accepts; each association runs in a thread of its own, bounded as the receiver bounds its
peers: an A-ASSOCIATE-RQ of at most 128 KiB within the ACSE timeout, PDUs up to what this side advertised,
messages up to `net.commitment.MAX_DATA_SET`.

With TLS (the send's ``+tls``) the listener is a TLS server with the sender's key and certificate, its
trusted certificates and its verification mode: a report reaches the journal only over the same
protection as the files and the request. The handshake runs in the association's thread, within the
ACSE timeout, before any PDU is read.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from ..dicom.uids import VERIFICATION_SOP_CLASS
from ..net import acse, dimse
from ..net import commitment as sc
from ..net.errors import NetError, PeerAborted, ProtocolError
from ..net.pdu import (
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
    PDUStream,
)

if TYPE_CHECKING:
    from ..net.tls import TLSOptions

log = logging.getLogger("batchstore.commit")

#: The longest A-ASSOCIATE-RQ read from a peer, and the PDU size this side advertises and accepts.
MAX_ASSOCIATE_RQ = 128 * 1024
MAX_PDU = 65536
#: Report associations served at once; a connection beyond them is closed at once.
MAX_ASSOCIATIONS = 8
#: N-EVENT-REPORT-RSP status for a report this side cannot read (PS3.7: processing failure).
PROCESSING_FAILURE = 0x0110


class ReportListener:
    """Listens on (`host`, `port`) for the associations that carry commitment reports.

    Attributes
    ----------
    reports : queue.Queue
        (`net.commitment.EventReport`, calling AE title) for each report received and answered.
    port : int
        The bound port (useful with port 0).

    Raises
    ------
    TLSSetupError
        With `tls` that has no key and certificate (``+tla``): a TLS server needs them.
    """

    def __init__(
        self, host: str, port: int, ae_title: str, timeout: float = 30.0, tls: TLSOptions | None = None
    ) -> None:
        self.ae_title = ae_title
        self.timeout = timeout
        self._tls_context: Any = None
        if tls is not None:
            from ..net.tls import server_context  # ssl only with TLS

            self._tls_context = server_context(tls)
        self.reports: queue.Queue[tuple[sc.EventReport, str]] = queue.Queue()
        self._sock = socket.create_server((host, port), reuse_port=False)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_ASSOCIATIONS)
        self._thread = threading.Thread(target=self._accept_loop, name="commit-listener", daemon=True)

    def start(self) -> ReportListener:
        self._thread.start()
        log.info("listening for storage commitment reports on port %d as %s", self.port, self.ae_title)
        return self

    def close(self) -> None:
        self._stop.set()
        try:
            self._sock.close()
        except OSError:
            pass
        self._thread.join(2)

    def __enter__(self) -> ReportListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, address = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                log.warning("commitment report connection from %s closed: %d associations already", address[0],
                            MAX_ASSOCIATIONS)  # fmt: skip
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn, address), daemon=True).start()

    def _serve(self, conn: socket.socket, address: tuple) -> None:
        stream: PDUStream | None = None
        try:
            stream = self._stream(conn, address)
            if stream is not None:
                self._association(stream, address)
        except PeerAborted:
            log.warning("commitment report association from %s aborted by the peer", address[0])
        except ProtocolError as exc:
            log.error("commitment report association from %s: %s: aborting", address[0], exc)
            if stream is not None:
                stream.abort(2, getattr(exc, "abort_reason", 0))
        except (OSError, NetError) as exc:
            log.error("commitment report association from %s: %s", address[0], exc)
        finally:
            if stream is not None:
                stream.close()
            else:
                conn.close()
            self._slots.release()

    def _stream(self, conn: socket.socket, address: tuple) -> PDUStream | None:
        """The stream over `conn`: plain, or after the TLS handshake (None when the handshake fails: the
        peer never reaches the DICOM layer)."""
        if self._tls_context is None:
            return PDUStream(conn)
        import ssl

        from ..net.tls import TLSPDUStream, describe_handshake_error, wrap_server

        conn.settimeout(self.timeout)
        try:
            tls_conn = wrap_server(conn, self._tls_context)
        except ssl.SSLError as exc:
            log.error("commitment report connection from %s: %s", address[0], describe_handshake_error(exc))
            return None
        return TLSPDUStream(tls_conn)  # type: ignore[arg-type]

    def _association(self, stream: PDUStream, address: tuple) -> None:
        stream.settimeout(self.timeout)
        stream.max_pdu = MAX_ASSOCIATE_RQ
        stream.deadline = time.monotonic() + self.timeout
        pdu_type, body = stream.read_pdu()
        if pdu_type != A_ASSOCIATE_RQ:
            raise ProtocolError(f"expected A-ASSOCIATE-RQ, received PDU type 0x{pdu_type:02X}")
        request, violation = acse.decode_request(body)
        if violation is not None:
            log.error("commitment report association from %s rejected: %s", address[0], violation.text)
            stream.pdu(
                A_ASSOCIATE_RJ, acse.encode_reject(violation.result, violation.source, violation.reason)
            )
            return
        results, roles = negotiate(request)
        stream.pdu(
            A_ASSOCIATE_AC, acse.encode_accept(request, results, MAX_PDU, ae_title=self.ae_title, roles=roles)
        )
        accepted = {cid: ts for cid, (result, ts) in results.items() if result == acse.PC_ACCEPTANCE}
        log.info("commitment report association from %s (%s) accepted", request.calling_ae, address[0])
        stream.max_pdu = MAX_PDU
        stream.deadline = 0.0
        stream.pdu_timeout = self.timeout
        assembler = sc.MessageAssembler()
        peer_pdu = request.max_pdu
        while True:
            pdu_type, body = stream.read_pdu()
            if pdu_type == A_RELEASE_RQ:
                stream.pdu(A_RELEASE_RP, bytes(4))
                return
            if pdu_type != P_DATA_TF:
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} during the association")
            for message in assembler.feed(body):
                ts = accepted.get(message.context_id)
                if ts is None:
                    raise ProtocolError(f"message on presentation context {message.context_id}, not accepted")
                answer = self._message(message, ts, request.calling_ae)
                stream.send_parts(sc.message_parts(message.context_id, answer, None, peer_pdu))

    def _message(self, message: sc.Message, ts: str, calling_ae: str) -> bytes:
        cmd = message.command
        if cmd.command_field == dimse.C_ECHO_RQ:
            return dimse.c_echo_rsp(cmd.message_id)
        if cmd.command_field != dimse.N_EVENT_REPORT_RQ:
            raise ProtocolError(f"cannot handle command 0x{cmd.command_field:04X} on a report association")
        event_type = dimse.us_element(cmd, dimse.EVENT_TYPE_ID) or 0
        status = 0
        try:
            if message.data_set is None:
                raise ProtocolError("N-EVENT-REPORT-RQ without its Event Information")
            report = sc.decode_event(message.data_set, ts, event_type)
        except ProtocolError as exc:
            log.error("storage commitment report from %s not understood: %s", calling_ae, exc)
            status = PROCESSING_FAILURE
        else:
            self.reports.put((report, calling_ae))
        return dimse.n_event_report_rsp(
            cmd.message_id, sc.STORAGE_COMMITMENT, sc.STORAGE_COMMITMENT_INSTANCE, event_type, status
        )


def negotiate(
    request: acse.AssociationRequest,
) -> tuple[dict[int, tuple[int, str]], dict[str, tuple[bool, bool]]]:
    """Accept Storage Commitment (and Verification) in an explicit or implicit little endian syntax, and
    the SCP role the requestor asks for Storage Commitment."""
    results: dict[int, tuple[int, str]] = {}
    for cid, abstract, syntaxes in request.contexts:
        if abstract not in (sc.STORAGE_COMMITMENT, VERIFICATION_SOP_CLASS):
            results[cid] = (acse.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, "")
            continue
        ts = next((t for t in sc.TRANSFER_SYNTAXES if t in syntaxes), "")
        results[cid] = (acse.PC_ACCEPTANCE, ts) if ts else (acse.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, "")
    roles = {
        abstract: (scu, scp) for abstract, scu, scp in request.roles if abstract == sc.STORAGE_COMMITMENT
    }
    return results, roles
