"""The Storage SCP's association: one synchronous loop, in whatever process runs it.

It reads the A-ASSOCIATE-RQ, answers it (`Negotiator` decides each presentation context), then for each
C-STORE-RQ hands the data set to `receiver.store.Store` (a data set that comes in one P-DATA fragment, as every
small one does, in one call; a larger one fragment by fragment, streamed into a temporary file) and answers
C-STORE-RSP once the file is in place; C-ECHO-RQ is answered at once. No pynetdicom `Association`, no
threads: one ``recv_into`` per burst of PDUs, one ``sendall`` per response. A C-STORE whose command and
whole data set arrived together (every small one from a usual sender) is served where it lies in the
receive buffer (`Association._one_message`), with the same checks.

A-ABORT from the peer, a lost connection, a timeout, a protocol error or a P-DATA on a context that was
not accepted all end the association without leaving a partial file (the last case with an A-ABORT).

What a peer sends is bounded before it is trusted (docs/design.md, "Hostile peers"): a PDU longer than
the maximum we advertised, or a command set longer than `MAX_COMMAND_SET`, is a protocol error answered
with A-ABORT; a request that breaks PS3.8 gets the A-ASSOCIATE-RJ with the standard's reason;
negotiation must end within ``-ta`` of the connection, and a DIMSE message, once it started, within
``-td`` (or ``-ts``) plus the time its data set takes at `MIN_DATA_RATE`. A C-STORE-RQ whose UIDs no
response can carry gets a failure status of its own, and the association goes on.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..net import acse, dimse
from ..net.errors import PeerAborted, ProtocolError
from ..net.pdu import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    ABORT_INVALID_PARAMETER,
    ABORT_UNEXPECTED_PARAMETER,
    ABORT_UNEXPECTED_PDU,
    MAX_RECEIVE_PDU,
    P_DATA_TF,
    PDU_NAMES,
    PDUReader,
    pdata_parts,
)
from ..net.sockets import phase_timeout, quickack, set_socket_timeout, tune_socket
from ..net.status import CANNOT_UNDERSTAND
from . import acceptance
from .commitment import COMMANDS as COMMITMENT_COMMANDS
from .commitment import CommitmentSCP
from .events import EventRunner, Peer
from .files import Discard, Incoming, Refused
from .gate import MAX_ASSOCIATE_RQ
from .negotiation import Negotiator, commitment_results
from .onemessage import MAX_COMMAND_ITEM as _MAX_COMMAND_ITEM
from .onemessage import MAX_COMMAND_SET, Compiled, compiled, locate
from .store import Store, StoredFile

if TYPE_CHECKING:
    from .options import ReceiveOptions

log = logging.getLogger("batchstore.scp")

#: A DIMSE message must arrive within ``-td`` (or ``-ts``) of its start, plus one second per this many
#: data set bytes: a large data set from a slow but honest sender is not cut off, a trickle is.
MIN_DATA_RATE = 128 * 1024

@dataclass(frozen=True)
class AssociationResult:
    """How an association ended and what it carried.

    Attributes
    ----------
    outcome : str
        ``released``, ``aborted-by-peer``, ``aborted`` (by us: protocol error, timeout, fault injection),
        ``rejected``, ``refused-access``, ``closed`` (connection lost), ``error``.
    instances : int
        Data sets stored (or received, with ``--ignore``) and answered with success or a warning.
    bytes_received : int
        Data set bytes received.
    """

    outcome: str
    calling_ae: str = ""
    instances: int = 0
    failures: int = 0
    bytes_received: int = 0
    seconds: float = 0.0


class _Abort(Exception):
    """End the association with an A-ABORT (source service-provider unless `by_user`)."""

    def __init__(self, message: str, by_user: bool = False, reason: int = 0) -> None:
        super().__init__(message)
        self.by_user = by_user
        self.reason = reason


_HEADER = struct.Struct(">BxL")
_UL = struct.Struct(">L")
_PDV = struct.Struct(">BxLLBB")  # P-DATA-TF header + one PDV header


class Association:
    """Serves one association on a connected socket, start to end, in the calling process.

    Parameters
    ----------
    sock : socket.socket
        The accepted connection; closed by `run`.
    address : (str, int)
        The peer's IP address and port.
    options : ReceiveOptions
    negotiator : Negotiator
    store : receiver.store.Store
    events : events.EventRunner
    request_pdu : bytes, optional
        The A-ASSOCIATE-RQ body, when the server's pre-association stage (`receiver.gate`) already read it.
    accepted : float, optional
        When the connection was accepted (`time.monotonic`): ``-ta`` counts from there.
    """

    def __init__(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        options: ReceiveOptions,
        negotiator: Negotiator,
        store: Store,
        events: EventRunner,
        request_pdu: bytes | None = None,
        accepted: float = 0.0,
    ) -> None:
        self.sock = sock
        self.request_pdu = request_pdu
        self.accepted_at = accepted or time.monotonic()
        self.address = address
        self.options = options
        self.negotiator = negotiator
        self.store = store
        self.events = events
        self.reader = PDUReader(sock, quickack_on_receive=False)  # see _send
        self.peer = Peer(address=address[0])
        self.request: acse.AssociationRequest | None = None
        self.accepted: dict[int, str] = {}
        self.abstract: dict[int, str] = {}
        self.peer_max_pdu = 0
        self.instances = 0
        self.failures = 0
        self.data_bytes = 0
        self._command = bytearray()
        self._incoming: Incoming | Discard | Refused | None = None
        self._store_rq: dimse.Command | None = None  # the C-STORE-RQ whose data set is expected
        self._store_context = 0
        self._store_class = ""
        self._exec_on_reception = bool(events.options.exec_on_reception)
        self._verbose = log.isEnabledFor(logging.INFO)
        self._pid = os.getpid()
        self._message_limit = phase_timeout(options.dimse_timeout, options.socket_timeout) or 0.0
        self._seconds_per_byte = 1.0 / MIN_DATA_RATE
        # the fault-injection options act between a C-STORE's fragments: they take the general path
        self._one_message_path = not (options.sleep_during or options.abort_during or options.abort_after)
        self.commitment = CommitmentSCP(options, self._send_message) if options.commitment else None
        self._compiled: Compiled | None = None  # the compiled one-message path, once contexts are accepted

    # ---- entry point

    def run(self) -> AssociationResult:
        """Serve the association; never raises for anything the peer does."""
        started = time.monotonic()
        outcome = "error"
        try:
            tune_socket(self.sock)
            outcome = self._run()
        except PeerAborted:
            log.info("Association Aborted by peer (pid %d)", self._pid)
            outcome = "aborted-by-peer"
        except _Abort as exc:
            log.log(logging.INFO if exc.by_user else logging.ERROR, "%s: aborting association", exc)
            self._send_abort(0 if exc.by_user else 2, exc.reason)
            outcome = "aborted"
        except TimeoutError as exc:
            if self.request is None:  # no association yet: storescp closes without an A-ABORT
                log.error("no complete A-ASSOCIATE-RQ from %s in time: closing", self.address[0])
                outcome = "closed"
            else:
                log.error("%s: aborting association", exc or "timeout")
                self._send_abort(2, 0)
                outcome = "aborted"
        except ProtocolError as exc:
            log.error("protocol error: %s: aborting association", exc)
            self._send_abort(2, getattr(exc, "abort_reason", 0))
            outcome = "aborted"
        except OSError as exc:
            if self.request is None:
                log.info("connection from %s closed before an A-ASSOCIATE-RQ: %s", self.address[0], exc)
            else:
                log.error("network error: %s", exc)
            outcome = "closed"
        except Exception:
            log.exception("unexpected error: aborting association")
            self._send_abort(2, 0)
        finally:
            if self._incoming is not None:
                self._incoming.discard()
                self._incoming = None
            if self._compiled is not None:
                self._compiled.close()
            try:
                self.sock.close()
            except OSError:
                pass
        seconds = time.monotonic() - started
        if outcome != "rejected" and self.request is not None:
            log.info(
                "Association ended (%s, pid %d): %d instances stored, %d failed, %d bytes received in %.2f s",
                outcome,
                self._pid,
                self.instances,
                self.failures,
                self.data_bytes,
                seconds,
            )
            if self._compiled is not None and self._compiled.instances:
                log.info("%d of them stored by the compiled path", self._compiled.instances)
        return AssociationResult(
            outcome,
            self.peer.calling_ae,
            self.instances,
            self.failures,
            self.data_bytes,
            seconds,
        )

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)
        # Sending puts the socket back in delayed-ACK ("ping-pong") mode, and only a send does: leave it
        # at once, so that what the peer sends next is ACKed as soon as we read it and a peer with Nagle's
        # algorithm on (DCMTK as deployed) does not hold its next segment for a 40 ms delayed ACK. Once per
        # answer instead of after every receive: 1 setsockopt per 1 KB file instead of 1.9.
        quickack(self.sock)

    def _send_abort(self, source: int, reason: int) -> None:
        try:
            self.sock.sendall(_HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason)))
        except OSError:
            pass

    # ---- association establishment

    def _run(self) -> str:
        options = self.options
        reader = self.reader
        set_socket_timeout(self.sock, phase_timeout(options.acse_timeout, options.socket_timeout))
        body: bytes | bytearray
        if self.request_pdu is None:  # --inetd, or an embedding caller: read the request here
            reader.max_pdu = MAX_ASSOCIATE_RQ
            if options.acse_timeout:
                reader.deadline = self.accepted_at + options.acse_timeout
            pdu_type, body = reader.read_pdu()
            if pdu_type != A_ASSOCIATE_RQ:
                raise _Abort(
                    f"expected A-ASSOCIATE-RQ, received {PDU_NAMES[pdu_type]}", reason=ABORT_UNEXPECTED_PDU
                )
        else:
            body = self.request_pdu
        try:
            request, violation = acse.decode_request(body)
        except Exception as exc:  # ProtocolError; anything else would be a decoder bug, equally fatal
            raise _Abort(f"cannot decode A-ASSOCIATE-RQ: {exc}", reason=ABORT_INVALID_PARAMETER) from None
        self.request = request
        self.peer = Peer(request.calling_ae, request.called_ae, self._peer_address())
        log.info(
            "Association Received %s:%d: %s -> %s (pid %d)",
            self.address[0],
            self.address[1],
            request.calling_ae,
            request.called_ae,
            self._pid,
        )
        rejection = (
            (violation.result, violation.source, violation.reason, violation.text)
            if violation is not None
            else acceptance.rejection(self.options, request)
        )
        if rejection is not None:
            result, source, reason, why = rejection
            log.info("Association Rejected (%s): %s", why, acse.rejection_reason_text(source, reason))
            self._send(_HEADER.pack(A_ASSOCIATE_RJ, 4) + acse.encode_reject(result, source, reason))
            self._linger()
            return "rejected"
        results = self.negotiator.results(request)
        roles = commitment_results(request, results) if self.commitment is not None else None
        for cid, abstract, _syntaxes in request.contexts:
            result, ts = results[cid]
            if result == acse.PC_ACCEPTANCE:
                self.accepted[cid] = ts
                self.abstract[cid] = abstract
        self.peer_max_pdu = request.max_pdu
        accept = acse.encode_accept(request, results, options.max_pdu, ae_title=options.ae_title, roles=roles)
        self._send(_HEADER.pack(A_ASSOCIATE_AC, len(accept)) + accept)
        acceptance.log_contexts(self.options, request, results)
        log.info("Association Acknowledged (max send PDV: %d)", self.peer_max_pdu)
        set_socket_timeout(self.sock, phase_timeout(options.dimse_timeout, options.socket_timeout))
        # from now on: PDUs up to what we advertised; a PDU or message that trickles ends at its deadline
        reader.max_pdu = options.max_pdu or MAX_RECEIVE_PDU
        reader.deadline = 0.0
        reader.pdu_timeout = self._message_limit
        if self._one_message_path and compiled is not None:
            self._compiled = Compiled(self.store, self.peer.calling_ae)
        return self._dimse_loop()

    def _peer_address(self) -> str:
        ip = self.address[0]
        if self.options.host_lookup and (
            self.events.options.exec_on_reception or self.events.options.exec_on_eostudy
        ):
            try:
                return socket.gethostbyaddr(ip)[0]
            except OSError:
                return ip
        return ip

    def _linger(self) -> None:
        """After A-ASSOCIATE-RJ: let the peer close first (up to a second), as the upper layer expects."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            ready, _, _ = select.select([self.sock], [], [], 1.0)
            if ready:
                self.sock.recv(64)
        except OSError:
            pass

    # ---- DIMSE

    def _dimse_loop(self) -> str:
        read = self.reader.read_pdu
        tos = self.events.options.eostudy_timeout
        one_message = self._one_message if self._one_message_path else None
        while True:
            if tos and self.store.study is not None and self._idle() and not self.reader.pending():
                ready, _, _ = select.select([self.sock], [], [], tos)
                if not ready:
                    self.store.end_study()
            if one_message is not None and self._store_rq is None and not self._command and one_message():
                continue
            pdu_type, body = read()
            if pdu_type == P_DATA_TF:
                self._p_data(body)
            elif pdu_type == A_RELEASE_RQ:
                if self._store_rq is not None:
                    log.error("A-RELEASE-RQ in the middle of a data set: incomplete data set dropped")
                    self._store_rq = None
                    if self._incoming is not None:
                        self._incoming.discard()
                        self._incoming = None
                self._send(_HEADER.pack(A_RELEASE_RP, 4) + bytes(4))
                log.info("Association Release (pid %d)", self._pid)
                return "released"
            else:
                raise _Abort(f"unexpected {PDU_NAMES[pdu_type]} during the association", reason=2)

    def _idle(self) -> bool:
        return self._store_rq is None and not self._command

    def _one_message(self) -> bool:
        """Serve a whole C-STORE where it lies in the receive buffer (a C-STORE-RQ in one P-DATA-TF of one
        PDV, its data set in the next: what a small data set takes), receiving the rest of it first when
        only its start is here (`onemessage.locate`). The compiled `serve` stores and answers the common
        case itself, this code what it declines. False, having consumed nothing, for anything else: the
        general path (`_p_data`) then reads the same bytes PDU by PDU and judges them as always
        (docs/design.md, "Receiving one small file")."""
        reader = self.reader
        try:
            buf, start, end = reader.receive_some()
            fast = self._compiled
            if fast is not None:
                plans, directory, proc = fast.plans, fast.directory, fast.proc
                done = fast.serve(buf, start, end, reader.max_pdu, plans, directory, proc, self.peer_max_pdu)
                while type(done) is int:
                    buf, start, end = self._receive_at_least(done)
                    done = fast.serve(buf, start, end, reader.max_pdu, plans, directory, proc, self.peer_max_pdu)
                if done is not None:
                    stop, size, response, name, message_id, sop_instance = done
                    reader.skip(stop)
                    self.data_bytes += size
                    self.instances += 1
                    fast.instances += 1
                    if self._verbose:
                        log.info("Received Store Request (MsgID %d, %s)", message_id, sop_instance)
                        log.info("Stored DICOM file: %s/%s", self.store.root, name)
                    self._send(response)
                    if self._exec_on_reception:
                        self.events.on_reception(self.store.root, name, self.peer)
                    if self.options.sleep_after:
                        time.sleep(self.options.sleep_after)
                    return True
            found = locate(buf, start, end, reader.max_pdu, self.accepted)
            while type(found) is int:
                buf, start, end = self._receive_at_least(found)
                found = locate(buf, start, end, reader.max_pdu, self.accepted)
        finally:
            reader.deadline = 0.0
        if found is None:
            return False
        context, message_id, sop_class, sop_instance, data_start, stop = found  # type: ignore[misc]
        if self._verbose:
            log.info("Received Store Request (MsgID %d, %s)", message_id, sop_instance)
        self.data_bytes += stop - data_start
        result = self.store.store(
            sop_class,
            sop_instance,
            self.accepted[context],
            self.peer.calling_ae,
            buf[data_start:stop],
            self.peer,
        )
        reader.skip(stop)
        if fast is not None and result.status == 0 and not fast.learn(context, sop_class, self.accepted[context]):
            self._compiled = None  # never in this association (options, file system): close() at the end
            fast.close()
        self._answer_store(context, message_id, sop_class, sop_instance, result)
        return True

    def _receive_at_least(self, need: int) -> tuple[memoryview, int, int]:
        """Receive until `need` bytes of a message are buffered, within the deadline a DIMSE message has
        once it started (extended by the time `need` bytes take at `MIN_DATA_RATE`)."""
        reader = self.reader
        if self._message_limit:
            reader.deadline = (reader.deadline or time.monotonic() + self._message_limit) + need * self._seconds_per_byte
        return reader.receive_at_least(need)

    def _p_data(self, body: bytes | bytearray) -> None:
        end = len(body)
        pos = 0
        view = memoryview(body)
        accepted = self.accepted
        while pos < end:
            if pos + 6 > end:
                raise ProtocolError("truncated PDV item in P-DATA-TF")
            (item_length,) = _UL.unpack_from(body, pos)
            stop = pos + 4 + item_length
            if item_length < 2 or stop > end:
                raise ProtocolError("malformed PDV item in P-DATA-TF")
            context = body[pos + 4]
            control = body[pos + 5]
            fragment = view[pos + 6 : stop]
            pos = stop
            if context not in accepted:
                raise _Abort(f"P-DATA-TF on presentation context {context}, which was not accepted", reason=6)
            if control & 1:
                if item_length > _MAX_COMMAND_ITEM:
                    raise _Abort(
                        f"command fragment longer than {MAX_COMMAND_SET} bytes", reason=ABORT_INVALID_PARAMETER
                    )
                self._command_fragment(context, control, fragment)
            else:
                self._data_fragment(context, control, fragment)

    def _command_fragment(self, context: int, control: int, fragment: memoryview) -> None:
        if self._store_rq is not None:
            raise _Abort("command fragment received while a data set was expected", reason=5)
        # (a single fragment's length was checked against MAX_COMMAND_SET in _p_data)
        if not control & 2:
            if not self._command and not self.reader.deadline and self._message_limit:
                self.reader.deadline = time.monotonic() + self._message_limit  # the message started
            self._command += fragment
            if len(self._command) > MAX_COMMAND_SET:
                raise _Abort(f"command set longer than {MAX_COMMAND_SET} bytes", reason=ABORT_INVALID_PARAMETER)
            return
        if self._command:
            self._command += fragment
            if len(self._command) > MAX_COMMAND_SET:
                raise _Abort(f"command set longer than {MAX_COMMAND_SET} bytes", reason=ABORT_INVALID_PARAMETER)
            raw: bytes | memoryview = bytes(self._command)
            self._command.clear()
        else:
            raw = fragment
        try:
            command = dimse.decode_command(raw)
        except ValueError as exc:
            raise _Abort(f"cannot decode DIMSE command: {exc}", reason=6) from None
        field = command.command_field
        if field == dimse.C_STORE_RQ:
            self._begin_store(context, command)
        elif field == dimse.C_ECHO_RQ:
            if self._verbose:
                log.info("Received Echo Request (MsgID %d)", command.message_id)
            self.reader.deadline = 0.0
            self._send_command(context, dimse.c_echo_rsp(command.message_id, 0))
        elif field in COMMITMENT_COMMANDS and self.commitment is not None:
            self.reader.deadline = 0.0
            self.commitment.command(context, command, self.accepted[context], self.peer.calling_ae)
        else:
            raise _Abort(f"cannot handle command 0x{field:04X}", reason=ABORT_UNEXPECTED_PARAMETER)

    def _begin_store(self, context: int, command: dimse.Command) -> None:
        if not command.data_set_present:
            raise _Abort("C-STORE-RQ without a data set", reason=6)
        options = self.options
        if self._verbose:
            log.info("Received Store Request (MsgID %d, %s)", command.message_id, command.sop_instance_uid)
        self._store_rq = command
        self._store_context = context
        self._store_class = command.sop_class_uid or self.abstract[context]
        if command.problem:  # nothing a response could name: receive the data set, store nothing
            log.error(
                "C-STORE-RQ (MsgID %d): %s: the data set is received and dropped",
                command.message_id,
                command.problem,
            )
            self._incoming = Refused(CANNOT_UNDERSTAND, f"invalid C-STORE-RQ: {command.problem}")
            return
        if options.sleep_during:  # the temporary file is there (and written to) while we sleep
            self._incoming = self.store.begin(
                self._store_class,
                command.sop_instance_uid,
                self.accepted[context],
                self.peer.calling_ae,
                eager=True,
            )
            time.sleep(options.sleep_during)
        # Otherwise nothing is set up yet: a data set that comes in one fragment (every small one) goes
        # to `Store.store` in one call, without an `Incoming`.

    def _data_fragment(self, context: int, control: int, fragment: memoryview) -> None:
        command = self._store_rq
        if command is None and self.commitment is not None and self.commitment.expecting:
            self.commitment.data(context, control, fragment)  # an N-ACTION-RQ's Action Information
            return
        if command is None:
            raise _Abort("data set fragment without a C-STORE-RQ", reason=5)
        if context != self._store_context:
            raise _Abort("data set fragment on another presentation context than its command", reason=6)
        options = self.options
        if options.abort_during:
            raise _Abort("ABORT initiated during C-STORE (--abort-during)", by_user=True)
        self.data_bytes += len(fragment)
        incoming = self._incoming
        if incoming is None:
            if control & 2:  # the whole data set in one fragment
                self._end_store(fragment)
                return
            incoming = self._incoming = self.store.begin(
                self._store_class, command.sop_instance_uid, self.accepted[context], self.peer.calling_ae
            )
        # a data set in several fragments: its message has a deadline, which each fragment extends
        reader = self.reader
        if reader.deadline:
            reader.deadline += len(fragment) * self._seconds_per_byte
        elif self._message_limit:
            reader.deadline = time.monotonic() + self._message_limit
        incoming.write(fragment)
        if options.sleep_during:
            time.sleep(options.sleep_during)
        if control & 2:
            self._end_store(None)

    def _end_store(self, whole: memoryview | None) -> None:
        """The last fragment arrived (`whole`: the data set, when it came in one fragment): store, answer."""
        command = self._store_rq
        assert command is not None
        options = self.options
        if options.sleep_during:
            time.sleep(options.sleep_during)
        if options.abort_after:
            raise _Abort("ABORT initiated after C-STORE-RQ (--abort-after)", by_user=True)
        if whole is not None:
            result = self.store.store(
                self._store_class,
                command.sop_instance_uid,
                self.accepted[self._store_context],
                self.peer.calling_ae,
                whole,
                self.peer,
            )
        else:
            assert self._incoming is not None
            result = self.store.complete(self._incoming, self.peer)
            self._incoming = None
        self._store_rq = None
        self.reader.deadline = 0.0
        self._answer_store(
            self._store_context, command.message_id, command.sop_class_uid, command.sop_instance_uid, result
        )

    def _answer_store(
        self, context: int, message_id: int, sop_class: str, sop_instance: str, result: StoredFile
    ) -> None:
        """Count a C-STORE's outcome, send its C-STORE-RSP, then run what follows a stored file."""
        status = result.status
        if status == 0 or status & 0xF000 == 0xB000:
            self.instances += 1
            if self._verbose and result.path:
                log.info("Stored DICOM file: %s", result.path)
        else:
            self.failures += 1
        self._send_command(
            context, dimse.c_store_rsp(message_id, sop_class, sop_instance, status, result.comment or None)
        )
        if status == 0 or status & 0xF000 == 0xB000:
            if self._exec_on_reception:
                directory, name = os.path.split(result.path) if result.path else ("", "")
                self.events.on_reception(directory, name, self.peer)
            if self.store.ended is not None:  # storescp: end of the previous study after -xcr
                self.store.fire_ended()
        if self.options.sleep_after:
            time.sleep(self.options.sleep_after)

    def _send_command(self, context: int, payload: bytes) -> None:
        n = len(payload)
        if not self.peer_max_pdu or n + 6 <= self.peer_max_pdu:
            self._send(_PDV.pack(P_DATA_TF, n + 6, n + 2, context, 3) + payload)
        else:
            self._send(b"".join(bytes(p) for p in pdata_parts(context, payload, True, self.peer_max_pdu)))

    def _send_message(self, context: int, command: bytes, data_set: bytes | None) -> None:
        """A command and its data set (storage commitment's messages)."""
        self._send_command(context, command)
        if data_set is not None:
            self._send(b"".join(bytes(p) for p in pdata_parts(context, data_set, False, self.peer_max_pdu)))
