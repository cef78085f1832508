"""PDU framing for the DICOM upper layer: reading whole PDUs with few system calls, writing them, and
the P-DATA-TF layouts of the send path.

Every socket a `PDUReader` or `PDUStream` owns is tuned by `sockets.tune_socket`, so ``TCP_NODELAY`` is
always set and, on Linux, ``TCP_QUICKACK`` is kept armed (docs/design.md, "Nagle and delayed ACKs": a
peer that keeps Nagle's algorithm on otherwise costs ~40 ms per C-STORE): the sender re-arms it after
every receive, the receiver after every send.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Sequence

from .errors import PeerAborted, ProtocolError
from .sockets import quickack, set_socket_timeout, tune_socket

# PDU types (PS3.8 section 9.3)
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

PDU_NAMES = {
    A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    A_RELEASE_RQ: "A-RELEASE-RQ",
    A_RELEASE_RP: "A-RELEASE-RP",
    A_ABORT: "A-ABORT",
}

_HEADER = struct.Struct(">BxL")
PDV_HEADER = struct.Struct(">BxLLBB")  # PDU type, PDU length, PDV item length, context ID, control

#: The default bound on a single received PDU (a `PDUReader`'s `max_pdu`): larger is a protocol error,
#: not allocated. The receiver reads with the maximum it advertised instead.
MAX_RECEIVE_PDU = 64 * 2**20

#: Received PDU bodies up to this size are allocated at once (bounded by `PDUReader.max_pdu`); a larger
#: one grows as its bytes arrive, never by what its header claims.
_GROW_FROM = 1 << 20

# A-ABORT reasons (PS3.8 Table 9-26) a protocol error maps to
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_UNRECOGNIZED_PDU = 1
ABORT_UNEXPECTED_PDU = 2
ABORT_UNRECOGNIZED_PARAMETER = 4
ABORT_UNEXPECTED_PARAMETER = 5
ABORT_INVALID_PARAMETER = 6


class UnknownPDU(ProtocolError):
    """A PDU type the upper layer does not define (A-ABORT reason 1, unrecognized-PDU)."""

    abort_reason = ABORT_UNRECOGNIZED_PDU


class PDUTooLong(ProtocolError):
    """A PDU longer than the reader accepts: what this side advertised, or the cap before association
    (A-ABORT reason 6, invalid-PDU-parameter value)."""

    abort_reason = ABORT_INVALID_PARAMETER


#: Receive buffer of a `PDUReader`: a C-STORE-RSP, a command set or a small data set's PDUs arrive in
#: one ``recv_into``; a larger PDU is received straight into a buffer of its own.
RECV_BUFFER = 1 << 18


class PDUReader:
    """Reads whole PDUs from a socket with as few system calls and copies as possible.

    Small PDUs are cut out of one receive buffer; a PDU larger than what is buffered is received straight
    into its own ``bytearray``. Bodies are never reused, so fragments may be kept by the caller.

    Attributes
    ----------
    max_pdu : int
        The longest PDU body accepted (`MAX_RECEIVE_PDU` unless set): a longer one raises `PDUTooLong`
        before anything is allocated for it.
    deadline : float
        A `time.monotonic` instant (0: none) after which a receive raises `TimeoutError`: the caller's
        bound on a whole phase (a DIMSE message). Checked after each receive system call.
    pdu_timeout : float
        Seconds (0: none) a PDU that does not arrive in one receive may take to complete, when no
        `deadline` is set: a peer trickling bytes cannot hold the reader longer.
    """

    def __init__(
        self, sock: socket.socket, quickack_on_receive: bool = True, max_pdu: int = MAX_RECEIVE_PDU
    ) -> None:
        self.sock = sock
        self.max_pdu = max_pdu
        self.deadline = 0.0
        self.pdu_timeout = 0.0
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self.bytes_received = 0
        # True: re-arm TCP_QUICKACK after every receive (the sender). The receiver re-arms it after each
        # of its sends instead, the only thing that puts the socket back into delayed-ACK mode: one
        # setsockopt per 1 KB file instead of 1.9.
        self._quickack = quickack_on_receive
        #: With `quickack_on_receive`: re-arm only before receiving the rest of an incomplete PDU. A peer
        #: that keeps Nagle's algorithm on holds the rest of a PDU it wrote in two parts until our ACK of
        #: the first; after a whole PDU, our next message carries the ACK. For a caller that answers every
        #: PDU it reads (the Storage SCU's C-STORE loop): one setsockopt per C-STORE-RSP less.
        self.quickack_when_incomplete = False

    def pending(self) -> bool:
        """True when bytes of a next PDU are already buffered."""
        return self._end > self._start

    def receive_some(self) -> tuple[memoryview, int, int]:
        """The receive buffer and the range of it not yet read, ``(buffer, start, end)``, receiving once
        first when that range is empty: for a caller that parses small PDUs where they lie (the Storage
        SCP's one-message path). Nothing is consumed; `skip` does that. The buffer is reused by the next
        receive, so nothing may be kept from it."""
        if self._end == self._start:
            self._start = 0
            self._end = self._recv(self._view)
        return self._view, self._start, self._end

    def receive_at_least(self, need: int) -> tuple[memoryview, int, int]:
        """`receive_some`, receiving until at least `need` (at most `RECV_BUFFER`) bytes are buffered: for
        the rest of a message whose first PDU is already here. The buffered bytes may move to the start of
        the buffer first; a receive is bounded as in `read_pdu`."""
        if self._end - self._start < need:
            self._fill(need)
        return self._view, self._start, self._end

    def skip(self, stop: int) -> None:
        """Mark the buffered bytes before offset `stop` (an ``end`` of `receive_some` or less) as read."""
        if stop >= self._end:
            self._start = self._end = 0
        else:
            self._start = stop

    def _recv(self, view: memoryview, arm: bool = True) -> int:
        """One receive into `view`, re-arming ``TCP_QUICKACK`` after it unless `arm` is False."""
        try:
            n = self.sock.recv_into(view)
        except BlockingIOError:  # SO_RCVTIMEO expired
            raise TimeoutError("timeout while waiting for data from the peer") from None
        if n == 0:
            raise ConnectionResetError("connection closed by peer")
        if arm and self._quickack:
            quickack(self.sock)
        self.bytes_received += n
        if self.deadline and time.monotonic() > self.deadline:
            raise TimeoutError("the peer did not complete its message in time")
        return n

    def _recv_more(self, view: memoryview) -> int:
        """A receive for the rest of a PDU. With `quickack_when_incomplete` the ACK goes first: the peer
        may be holding the rest until it has our ACK of what came (Nagle's algorithm)."""
        if self.quickack_when_incomplete and self._quickack:
            quickack(self.sock)
            return self._recv(view, arm=False)
        return self._recv(view)

    def _arm(self) -> bool:
        """A PDU takes more than one receive: bound it by `pdu_timeout` unless a deadline is set."""
        if self.deadline or not self.pdu_timeout:
            return False
        self.deadline = time.monotonic() + self.pdu_timeout
        return True

    def _fill(self, need: int) -> None:
        start, end = self._start, self._end
        if start:
            self._buf[: end - start] = self._view[start:end]
            self._start, self._end = 0, end - start
        armed = self._arm()
        try:
            while self._end - self._start < need:
                self._end += self._recv_more(self._view[self._end :])
        finally:
            if armed:
                self.deadline = 0.0

    def read_pdu(self) -> tuple[int, bytes | bytearray]:
        """Return the next PDU as (type, body), body without the 6-byte header.

        Raises
        ------
        PeerAborted
            If the PDU is an A-ABORT.
        ConnectionResetError
            If the peer closes the connection.
        TimeoutError
            If the socket's timeout expires first.
        ProtocolError
            For an unknown PDU type or an implausible length.
        """
        start = self._start
        if self._end - start < 6:
            if self._end == start:  # nothing buffered (the usual case): receive at the start of the buffer
                self._start = self._end = start = 0
                self._end = self._recv(self._view, arm=not self.quickack_when_incomplete)
            if self._end - start < 6:
                self._fill(6)
                start = self._start
        pdu_type, length = _HEADER.unpack_from(self._buf, start)
        if pdu_type not in PDU_NAMES:
            raise UnknownPDU(f"unknown PDU type 0x{pdu_type:02X}")
        if length > self.max_pdu:
            raise PDUTooLong(f"{PDU_NAMES[pdu_type]} of {length} bytes exceeds the maximum of {self.max_pdu}")
        stop = start + 6 + length
        body: bytes | bytearray
        if stop <= self._end:
            body = bytes(self._view[start + 6 : stop])
            if stop == self._end:
                self._start = self._end = 0
            else:
                self._start = stop
        else:
            body = self._read_rest(start, length)
        if pdu_type == A_ABORT:
            raise PeerAborted(body[2], body[3]) if len(body) >= 4 else PeerAborted()
        return pdu_type, body

    def _read_rest(self, start: int, length: int) -> bytearray:
        """The body of a PDU only partly buffered: received into a buffer of its own, allocated at once up
        to `_GROW_FROM` bytes and grown (doubling) as bytes arrive beyond that."""
        have = self._end - start - 6
        body = bytearray(length if length <= _GROW_FROM else max(have, _GROW_FROM))
        body[:have] = self._view[start + 6 : self._end]
        self._start = self._end = 0
        armed = self._arm()
        try:
            view = memoryview(body)
            while have < length:
                if have == len(body):
                    view.release()
                    body += bytes(min(len(body), length - have))
                    view = memoryview(body)
                have += self._recv_more(view[have:])
            view.release()
        finally:
            if armed:
                self.deadline = 0.0
        return body


class PDUStream(PDUReader):
    """Reads and writes whole PDUs on a connected socket (the requestor's side).

    Parameters
    ----------
    sock : socket.socket
        A connected socket; `tune_socket` is applied to it.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        tune_socket(sock)
        self.bytes_sent = 0
        self._poll = select.poll() if hasattr(select, "poll") else None
        if self._poll is not None:
            self._poll.register(sock, select.POLLIN)

    def input_pending(self) -> bool:
        """True when something (bytes, or the end of the connection) can be read without waiting."""
        if self._end > self._start:
            return True
        if self._poll is None:
            return bool(select.select([self.sock], [], [], 0)[0])
        return bool(self._poll.poll(0))

    def settimeout(self, seconds: float | None) -> None:
        set_socket_timeout(self.sock, seconds)

    def send(self, data: bytes | bytearray | memoryview) -> None:
        self.send_parts([data])

    def send_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send several buffers with as few system calls as possible (``sendmsg`` gather write).

        Raises
        ------
        TimeoutError
            If the peer does not take the bytes before the socket's timeout expires.
        """
        sock = self.sock
        try:
            # Nearly always one call sends everything (a small C-STORE is two buffers), so buffers are
            # wrapped in memoryviews only when a partial send has to be resumed.
            sent = sock.sendmsg(parts[:512])
            self.bytes_sent += sent
            views: list[memoryview] = []
            for p in parts:
                if sent >= len(p):
                    sent -= len(p)
                else:
                    views.append(memoryview(p)[sent:])
                    sent = 0
            while views:
                sent = sock.sendmsg(views[:512])
                self.bytes_sent += sent
                while sent and views:
                    head = views[0]
                    if sent >= len(head):
                        sent -= len(head)
                        views.pop(0)
                    else:
                        views[0] = head[sent:]
                        sent = 0
        except BlockingIOError:  # SO_SNDTIMEO expired
            raise TimeoutError("timeout while sending to the peer") from None

    def pdu(self, pdu_type: int, body: bytes) -> None:
        self.send(_HEADER.pack(pdu_type, len(body)) + body)

    def abort(self, source: int = 0, reason: int = 0) -> None:
        """Send an A-ABORT and close; errors while doing so are ignored."""
        try:
            self.pdu(A_ABORT, bytes((0, 0, source, reason)))
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def pdata_parts(
    context_id: int, payload: bytes | memoryview, is_command: bool, max_pdu: int
) -> list[bytes | memoryview]:
    """Fragment `payload` into P-DATA-TF PDUs of one PDV each, as buffers for `PDUStream.send_parts`.

    Parameters
    ----------
    context_id : int
        The presentation context ID.
    payload : bytes
        A whole command set, or a whole data set (or the final part of one: the last fragment is
        flagged as last).
    is_command : bool
        Command or data set fragments.
    max_pdu : int
        The peer's maximum PDU length (0 for unlimited).
    """
    return pdata_fragment_parts(context_id, payload, is_command, max_pdu, last=True)


def pdata_fragment_parts(
    context_id: int,
    payload: bytes | memoryview,
    is_command: bool,
    max_pdu: int,
    last: bool,
) -> list[bytes | memoryview]:
    """Like `pdata_parts`, but the final fragment is flagged "last" only when `last` is true."""
    view = memoryview(payload)
    total = len(view)
    # PDU body = PDV item length (4) + context (1) + control (1) + fragment
    chunk = max_pdu - 6 if max_pdu else (total or 1)
    if chunk <= 0:
        chunk = 4096
    parts: list[bytes | memoryview] = []
    offset = 0
    base = 1 if is_command else 0
    while True:
        piece = view[offset : offset + chunk]
        offset += len(piece)
        is_last = offset >= total
        control = base | (2 if (is_last and last) else 0)
        n = len(piece)
        parts.append(PDV_HEADER.pack(P_DATA_TF, n + 6, n + 2, context_id, control))
        if n:
            parts.append(piece)
        if is_last:
            return parts


def iter_pdvs(body: bytes | bytearray) -> list[tuple[int, int, memoryview]]:
    """Split a P-DATA-TF body into (context_id, control, fragment) triples."""
    out = []
    view = memoryview(body)
    offset = 0
    end = len(body)
    while offset + 6 <= end:
        (item_len,) = struct.unpack_from(">L", body, offset)
        if item_len < 2 or offset + 4 + item_len > end:
            raise ProtocolError("malformed PDV item in P-DATA-TF")
        ctx = body[offset + 4]
        control = body[offset + 5]
        out.append((ctx, control, view[offset + 6 : offset + 4 + item_len]))
        offset += 4 + item_len
    if offset != end:
        raise ProtocolError("trailing bytes in P-DATA-TF")
    return out
