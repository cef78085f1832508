"""The Storage SCU's association: negotiate once, then send C-STORE-RQs straight from files.

This is batchstore's hot path. pynetdicom's `Association` hands every message between its DUL thread and
the caller and polls with 1 ms sleeps (~2 ms and ~1.2 ms of CPU per C-STORE, measured in perf/); here a
single synchronous loop writes the command and the data set's bytes as P-DATA-TF PDUs with one gather
write and reads the C-STORE-RSP on the same thread. The A-ASSOCIATE exchange is encoded and decoded with
``struct`` in `net.acse`, so the send path never imports pynetdicom (docs/design.md, "A hand-written upper
layer").
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ..dicom.uids import sop_class_name, ts_name
from ..dicom.walk import COMPILED
from ..net import acse, dimse
from ..net.errors import NetError, ProtocolError
from ..net.pdu import P_DATA_TF, PDV_HEADER, PDUStream, iter_pdvs, pdata_fragment_parts, pdata_parts
from ..net.sockets import connect, phase_timeout, quickack
from .engine import StoreResponse

if TYPE_CHECKING:
    from ..net.tls import TLSOptions

_U32 = struct.Struct(">L")

log = logging.getLogger("batchstore.scu")

_PC_RESULTS = {
    acse.PC_ACCEPTANCE: "accepted",
    acse.PC_USER_REJECTION: "rejected by the user",
    acse.PC_NO_REASON: "rejected (no reason)",
    acse.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED: "rejected (abstract syntax not supported)",
    acse.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED: "rejected (transfer syntaxes not supported)",
}

#: Data sets up to this size are read whole and sent with one gather write; larger ones are streamed in
#: chunks of this size, so a worker's memory stays flat whatever the file size.
STREAM_CHUNK = 4 * 2**20
#: PDU size used when the peer announces an unlimited maximum (0).
UNLIMITED_PDU = 4 * 2**20


class AssociationOptions(NamedTuple):
    """Where to connect and how to negotiate; the storescu network options.

    A named tuple, not a frozen dataclass: creating the dataclass cost a send 1 ms of start-up
    (docs/design.md, "Small runs"). ``options._replace(port=104)`` gives a changed copy.
    """

    host: str
    port: int
    calling_ae: str = "STORESCU"
    called_ae: str = "ANY-SCP"
    family: int = socket.AF_INET  # -i4 (default), -i6 AF_INET6, -i0 AF_UNSPEC
    max_pdu: int = 16384  # -pdu: our maximum receive PDU
    max_send_pdu: int = 0  # --max-send-pdu: cap on what we send (0: the peer's limit only)
    connect_timeout: float | None = None  # -to
    socket_timeout: float | None = 60.0  # -ts (0/None: none)
    acse_timeout: float | None = 30.0  # -ta
    dimse_timeout: float | None = None  # -td
    user_identity: acse.UserIdentity | None = None
    tls: TLSOptions | None = None  # +tls / +tla: every association over TLS


class NoAcceptableContext(Exception):
    """The peer accepted none of the proposed presentation contexts for a file."""


class StoreSCU:
    """One association with a Storage SCP.

    Parameters
    ----------
    options : AssociationOptions
        Peer address, AE titles, timeouts, PDU sizes.
    contexts : sequence of (context_id, abstract_syntax, transfer_syntaxes)
        The presentation contexts to propose (at most 128).
    """

    def __init__(
        self, options: AssociationOptions, contexts: tuple[tuple[int, str, tuple[str, ...]], ...]
    ) -> None:
        if not 0 < len(contexts) <= 128:
            raise ValueError(f"an association carries 1 to 128 presentation contexts, not {len(contexts)}")
        self.options = options
        self.contexts = contexts
        self.stream: PDUStream | None = None
        self.accept: acse.AssociationAccept | None = None
        self.send_pdu = 0
        self._message_id = 0
        self.abstract_of = {cid: abstract for cid, abstract, _ in contexts}
        self._buffer: bytearray | None = None
        self._debug = False  # -d: log every message; decided once per association, in `open`

    # -- association life cycle ------------------------------------------------------------------

    def open(self) -> acse.AssociationAccept:
        """Connect and negotiate.

        Raises
        ------
        acse.AssociationRejected
            A-ASSOCIATE-RJ (``.transient`` tells whether retrying may help).
        OSError
            Connection refused, reset or timed out.
        PermissionError
            ``-rsp`` asked for a positive user identity response and the peer sent none.
        """
        opts = self.options
        self._debug = log.isEnabledFor(logging.DEBUG)
        if self._debug:
            self._log_request()
        sock = connect(opts.host, opts.port, opts.connect_timeout, opts.family)
        stream = PDUStream(sock) if opts.tls is None else _tls_stream(sock, opts)
        self.stream = stream
        try:
            # the association reply is awaited for -ta alone, as storescu does (-ts bounds DIMSE reads)
            stream.settimeout(opts.acse_timeout or opts.socket_timeout or None)
            request = acse.AssociationRequest(
                calling_ae=opts.calling_ae,
                called_ae=opts.called_ae,
                contexts=self.contexts,
                max_pdu=opts.max_pdu,
                user_identity=opts.user_identity,
            )
            accept = acse.request_association(stream, request)
        except BaseException:
            stream.close()
            self.stream = None
            raise
        if (
            opts.user_identity is not None
            and opts.user_identity.positive_response
            and accept.user_identity_response is None
        ):
            stream.abort()
            self.stream = None
            raise PermissionError("peer sent no positive user identity response (-rsp)")
        self.accept = accept
        peer_max = accept.max_pdu or UNLIMITED_PDU
        self.send_pdu = min(peer_max, opts.max_send_pdu) if opts.max_send_pdu else peer_max
        stream.settimeout(phase_timeout(opts.dimse_timeout, opts.socket_timeout))
        # From here on every PDU the peer sends is answered by our next message (its ACK with it), but
        # for a response in several PDUs (`_read_response` acknowledges each at once). Over TLS the
        # connection's own receives decide; it keeps re-arming after each one.
        stream.quickack_when_incomplete = opts.tls is None
        if self._debug:
            self._log_accept(accept)
        return accept

    def _log_request(self) -> None:
        opts = self.options
        log.debug(
            "A-ASSOCIATE-RQ: %s -> %s at %s:%d, max PDU %d, %d presentation context(s):",
            opts.calling_ae,
            opts.called_ae,
            opts.host,
            opts.port,
            opts.max_pdu,
            len(self.contexts),
        )
        for cid, abstract, syntaxes in self.contexts:
            names = ", ".join(ts_name(ts) for ts in syntaxes)
            log.debug("  context %d: %s [%s]", cid, sop_class_name(abstract), names)

    def _log_accept(self, accept: acse.AssociationAccept) -> None:
        log.debug(
            "A-ASSOCIATE-AC: peer max PDU %d (sending PDUs of up to %d bytes), implementation %s %s",
            accept.max_pdu,
            self.send_pdu,
            accept.implementation_class_uid,
            accept.implementation_version_name,
        )
        for cid, (result, ts) in sorted(accept.results.items()):
            what = _PC_RESULTS.get(result, f"result {result}")
            if result == acse.PC_ACCEPTANCE:
                what += f", {ts_name(ts)}"
            log.debug("  context %d (%s): %s", cid, sop_class_name(self.abstract_of.get(cid, "?")), what)

    @property
    def is_open(self) -> bool:
        """True while the association can carry the next message.

        Between messages a Storage SCP has nothing to send: input waiting here is an A-ABORT, an
        A-RELEASE-RQ or a closed connection (a peer's idle timeout), so the association is not reused
        and no file's attempt is spent finding that out.
        """
        return self.stream is not None and not self.stream.input_pending()

    def accepted(self) -> dict[int, str]:
        """Accepted context ID -> transfer syntax."""
        return self.accept.accepted() if self.accept else {}

    def release(self) -> None:
        """A-RELEASE the association (errors while releasing only close the socket)."""
        stream, self.stream = self.stream, None
        if stream is None:
            return
        try:
            stream.settimeout(phase_timeout(self.options.acse_timeout, self.options.socket_timeout))
            acse.release(stream)
        except (OSError, NetError):
            stream.close()

    def abort(self) -> None:
        """A-ABORT the association (``--abort``, or after an error that leaves it unusable)."""
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.abort()

    def close(self) -> None:
        """Drop the connection without a PDU (the peer is gone or the association is broken)."""
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close()

    # -- DIMSE ---------------------------------------------------------------------------------------

    def _next_message_id(self) -> int:
        self._message_id = (self._message_id % 0xFFFF) + 1
        return self._message_id

    def _read_response(
        self, message_id: int, first: tuple[int, bytes | bytearray] | None = None
    ) -> dimse.Command:
        """Await the response to `message_id` (its first PDU `first` when read already)."""
        assert self.stream is not None
        fragments: list[bytes | memoryview] = []
        while True:
            if fragments:  # a response in several PDUs: a peer with Nagle on may wait for our ACK
                quickack(self.stream.sock)
            pdu_type, body = first or self.stream.read_pdu()
            first = None
            if pdu_type != P_DATA_TF:
                raise ProtocolError(f"expected P-DATA-TF with a response, got PDU type 0x{pdu_type:02X}")
            if not fragments and _whole_command(body):
                # The usual response: one PDV holding the whole command set.
                cmd = dimse.decode_command(memoryview(body)[6:])
                _check_responded(cmd.message_id_responded, message_id)
                return cmd
            for _ctx, control, fragment in iter_pdvs(body):
                if not control & 1:
                    raise ProtocolError("unexpected data set fragment in a response")
                fragments.append(fragment)
                if control & 2:
                    cmd = dimse.decode_command(b"".join(fragments))
                    _check_responded(cmd.message_id_responded, message_id)
                    return cmd

    def echo(self, context_id: int) -> int:
        """Send C-ECHO-RQ on `context_id`; return the response status."""
        assert self.stream is not None
        message_id = self._next_message_id()
        self.stream.send_parts(pdata_parts(context_id, dimse.c_echo_rq(message_id), True, self.send_pdu))
        return self._read_response(message_id).status or 0

    def store_bytes(
        self, context_id: int, sop_class_uid: str, sop_instance_uid: str, dataset: bytes | memoryview
    ) -> StoreResponse:
        """Send one C-STORE-RQ whose data set is `dataset` (already encoded in the context's syntax)."""
        assert self.stream is not None
        size = len(dataset)
        message_id, command = self._store_rq(context_id, sop_class_uid, sop_instance_uid, size)
        if size + 6 <= self.send_pdu and len(command) + 6 <= self.send_pdu:
            # Command and data set fit one PDU each: both headers and the command in one buffer, the
            # data set as the second, so one sendmsg carries the whole C-STORE.
            head = (
                PDV_HEADER.pack(P_DATA_TF, len(command) + 6, len(command) + 2, context_id, 3)
                + command
                + PDV_HEADER.pack(P_DATA_TF, size + 6, size + 2, context_id, 2)
            )
            self.stream.send_parts([head, dataset] if size else [head])
        else:
            parts = pdata_parts(context_id, command, True, self.send_pdu)
            parts += pdata_parts(context_id, dataset, False, self.send_pdu)
            self.stream.send_parts(parts)
        return self._store_rsp(message_id)

    def _store_rq(self, context_id: int, sop_class_uid: str, sop_instance_uid: str, size: int) -> tuple[int, bytes]:
        """The next message ID and the C-STORE-RQ command set for it (logged with ``-d``)."""
        message_id = self._next_message_id()
        if self._debug:
            self._log_store_rq(message_id, context_id, sop_class_uid, sop_instance_uid, size)
        return message_id, dimse.c_store_rq(message_id, sop_class_uid, sop_instance_uid)

    def _store_rsp(self, message_id: int) -> StoreResponse:
        """Await the C-STORE-RSP to `message_id` (logged with ``-d``).

        The usual response, one PDV holding the whole command set, is read with `_store_response`: the
        per-file case needs three of its values, not a `dimse.Command` (~20 % of the Python time of a
        1 KB file went to decoding it; docs/design.md, "A compiled walker").
        """
        first = None
        if not self._debug:
            assert self.stream is not None
            first = self.stream.read_pdu()
            if first[0] == P_DATA_TF and _whole_command(first[1]):
                responded, status, comment = _store_response(first[1], 6)
                _check_responded(responded, message_id)
                return StoreResponse(0xC000 if status is None else status, comment)
        cmd = self._read_response(message_id, first)
        if self._debug:
            self._log_store_rsp(cmd)
        return StoreResponse(cmd.status if cmd.status is not None else 0xC000, cmd.error_comment)

    @staticmethod
    def _log_store_rq(message_id: int, context_id: int, sop_class_uid: str, uid: str, size: int) -> None:
        log.debug(
            "C-STORE-RQ: message ID %d, context %d, %s, instance %s, data set %d bytes",
            message_id,
            context_id,
            sop_class_name(sop_class_uid),
            uid,
            size,
        )

    @staticmethod
    def _log_store_rsp(cmd: dimse.Command) -> None:
        log.debug(
            "C-STORE-RSP: message ID %s, status 0x%04X%s",
            cmd.message_id_responded,
            cmd.status if cmd.status is not None else 0xC000,
            f", error comment {cmd.error_comment!r}" if cmd.error_comment else "",
        )

    def store_file(
        self,
        context_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        path: str,
        data_offset: int,
    ) -> StoreResponse:
        """Send one C-STORE-RQ whose data set is read from `path` starting at `data_offset`, unchanged.

        Files up to `STREAM_CHUNK` bytes go out in one gather write; larger ones are streamed, so memory
        stays flat whatever the file size.
        """
        assert self.stream is not None
        if self._buffer is None:
            # One buffer per association, reused for every file: a fresh 512 KB bytes object per file
            # costs an mmap/munmap pair and its page faults.
            self._buffer = bytearray(STREAM_CHUNK)
        view = memoryview(self._buffer)
        with open(path, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size - data_offset
            fh.seek(data_offset)
            send_file = None
            if size <= STREAM_CHUNK:
                # TLS, a data set of several PDUs: read into place between the PDU headers (one PDU's
                # worth is cheaper to join)
                send_file = getattr(self.stream, "send_file_pdata", None) if size + 6 > self.send_pdu else None
                if send_file is None:
                    got = 0
                    while got < size:
                        n = fh.readinto(view[got:size])
                        if not n:
                            raise OSError(f"{path}: file shrank while being sent")
                        got += n
                    return self.store_bytes(context_id, sop_class_uid, sop_instance_uid, view[:size])
            message_id, command = self._store_rq(context_id, sop_class_uid, sop_instance_uid, size)
            if send_file is not None:  # `TLSPDUStream.send_file_pdata`: the whole message in one write
                head = b"".join(pdata_parts(context_id, command, True, self.send_pdu))
                send_file(head, fh, size, context_id, self.send_pdu)
            else:
                self.stream.send_parts(pdata_parts(context_id, command, True, self.send_pdu))
                # Multiples of the fragment size keep every PDU but the last one full.
                fragment = max(self.send_pdu - 6, 1)
                chunk = max(fragment, (STREAM_CHUNK // fragment) * fragment)
                remaining = size
                while remaining > 0:
                    n = fh.readinto(view[:chunk])
                    if not n:
                        raise OSError(f"{path}: file shrank while being sent")
                    n = min(n, remaining)
                    remaining -= n
                    self.stream.send_parts(
                        pdata_fragment_parts(context_id, view[:n], False, self.send_pdu, last=remaining <= 0)
                    )
        return self._store_rsp(message_id)


def _whole_command(body: bytes | bytearray) -> bool:
    """True when the P-DATA-TF `body` is one PDV holding a whole command set (the usual response)."""
    return len(body) > 6 and body[5] == 3 and _U32.unpack_from(body)[0] == len(body) - 4


def _check_responded(responded: int | None, message_id: int) -> None:
    if responded != message_id:
        raise ProtocolError(f"response to message {responded}, expected {message_id}")


def _store_response_py(data: bytes | bytearray, start: int) -> tuple[int, int | None, str]:
    """(Message ID Being Responded To, Status or None, Error Comment) of the command set ``data[start:]``."""
    cmd = dimse.decode_command(memoryview(data)[start:])
    return cmd.message_id_responded, cmd.status, cmd.error_comment


def _compiled_store_response() -> Callable[[bytes | bytearray, int], tuple[int, int | None, str]] | None:
    if not COMPILED:  # not built, or BATCHSTORE_PURE_PYTHON=1
        return None
    from ..dicom import _walkfast  # type: ignore[attr-defined]

    read: Callable[[bytes | bytearray, int], tuple[int, int | None, str]] = _walkfast.store_response
    return read


#: `_store_response_py` in C (docs/design.md, "A compiled walker"): the same values and `ValueError`s as
#: `dimse.decode_command`, without building a `dimse.Command` (which took ~3.7 us per response).
_store_response = _compiled_store_response() or _store_response_py


def _tls_stream(sock: socket.socket, opts: AssociationOptions) -> PDUStream:
    """The TLS handshake on a connected socket (bounded by -ta and -ts), and the stream over it."""
    from ..net import tls  # ssl only when TLS is asked for

    assert opts.tls is not None
    return tls.client_stream(sock, opts.tls, phase_timeout(opts.acse_timeout, opts.socket_timeout))
