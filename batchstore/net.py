"""TCP transport for the DICOM upper layer: socket options, PDU framing and exact reads.

Every socket batchstore owns goes through here, so that ``TCP_NODELAY`` is always set and, on Linux,
``TCP_QUICKACK`` is re-armed after every receive (DESIGN.md, decision 3: a peer that keeps Nagle's
algorithm on otherwise costs ~40 ms per C-STORE through delayed ACKs).
"""

from __future__ import annotations

import select
import socket
import struct
import sys

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
_PDV_HEADER = struct.Struct(">BxLLBB")  # PDU type, PDU length, PDV item length, context ID, control
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12 if sys.platform.startswith("linux") else None)

#: A sanity bound on a single received PDU: larger is treated as a protocol error, not allocated.
MAX_RECEIVE_PDU = 64 * 2**20


class PeerAborted(ConnectionError):
    """The peer sent an A-ABORT (or A-P-ABORT) PDU."""

    def __init__(self, source: int = 0, reason: int = 0) -> None:
        super().__init__(f"association aborted by peer (source {source}, reason {reason})")
        self.source = source
        self.reason = reason


class ProtocolError(ConnectionError):
    """The peer sent something the upper layer protocol does not allow at this point."""


def tune_socket(sock: socket.socket) -> None:
    """Set ``TCP_NODELAY`` (and ``TCP_QUICKACK`` where the platform has it) on `sock`."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    quickack(sock)


def quickack(sock: socket.socket) -> None:
    """Re-arm ``TCP_QUICKACK`` on Linux; the kernel clears it after each delayed ACK decision."""
    if _TCP_QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:
            pass


def connect(host: str, port: int, timeout: float | None, family: int = socket.AF_UNSPEC) -> socket.socket:
    """Open a tuned TCP connection to `host`:`port`.

    Parameters
    ----------
    host, port : str, int
        The peer's address.
    timeout : float or None
        Connection timeout in seconds (storescu ``-to``); None waits as long as the OS does.
    family : int
        ``AF_INET`` (``-i4``), ``AF_INET6`` (``-i6``) or ``AF_UNSPEC`` (``-i0``).
    """
    last_error: OSError | None = None
    for af, kind, proto, _name, address in socket.getaddrinfo(host, port, family, socket.SOCK_STREAM):
        sock = socket.socket(af, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        tune_socket(sock)
        return sock
    raise last_error or OSError(f"cannot resolve {host}")


class PDUStream:
    """Reads and writes whole PDUs on a connected socket.

    Parameters
    ----------
    sock : socket.socket
        A connected socket; `tune_socket` is applied to it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        tune_socket(sock)
        self._buf = bytearray()
        self._recv_into = sock.recv_into
        self.bytes_received = 0
        self.bytes_sent = 0
        self._poll = select.poll() if hasattr(select, "poll") else None
        if self._poll is not None:
            self._poll.register(sock, select.POLLIN)

    def input_pending(self) -> bool:
        """True when something (bytes, or the end of the connection) can be read without waiting."""
        if self._buf:
            return True
        if self._poll is None:
            return bool(select.select([self.sock], [], [], 0)[0])
        return bool(self._poll.poll(0))

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds if seconds else None)

    def _fill(self, need: int) -> None:
        buf = self._buf
        while len(buf) < need:
            chunk = bytearray(max(65536, need - len(buf)))
            n = self._recv_into(chunk)
            if n == 0:
                raise ConnectionResetError("connection closed by peer")
            quickack(self.sock)
            buf += memoryview(chunk)[:n]
            self.bytes_received += n

    def read_pdu(self) -> tuple[int, bytes]:
        """Return the next PDU as (type, body), body without the 6-byte header.

        Raises
        ------
        PeerAborted
            If the PDU is an A-ABORT.
        ConnectionResetError
            If the peer closes the connection.
        ProtocolError
            For an unknown PDU type or an implausible length.
        """
        self._fill(6)
        pdu_type, length = _HEADER.unpack_from(self._buf, 0)
        if pdu_type not in PDU_NAMES:
            raise ProtocolError(f"unknown PDU type 0x{pdu_type:02X}")
        if length > MAX_RECEIVE_PDU:
            raise ProtocolError(f"PDU length {length} exceeds {MAX_RECEIVE_PDU}")
        self._fill(6 + length)
        body = bytes(self._buf[6 : 6 + length])
        del self._buf[: 6 + length]
        if pdu_type == A_ABORT:
            source, reason = (body[2], body[3]) if len(body) >= 4 else (0, 0)
            raise PeerAborted(source, reason)
        return pdu_type, body

    def send(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)
        self.bytes_sent += len(data)

    def send_parts(self, parts: list[bytes | memoryview]) -> None:
        """Send several buffers with as few system calls as possible (``sendmsg`` gather write)."""
        sock = self.sock
        total = sum(len(p) for p in parts)
        self.bytes_sent += total
        if not hasattr(sock, "sendmsg"):
            sock.sendall(b"".join(parts))
            return
        views = [memoryview(p) for p in parts]
        while views:
            sent = sock.sendmsg(views[:512])
            while sent and views:
                head = views[0]
                if sent >= len(head):
                    sent -= len(head)
                    views.pop(0)
                else:
                    views[0] = head[sent:]
                    sent = 0

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
        parts.append(_PDV_HEADER.pack(P_DATA_TF, n + 6, n + 2, context_id, control))
        if n:
            parts.append(piece)
        if is_last:
            return parts


def iter_pdvs(body: bytes) -> list[tuple[int, int, memoryview]]:
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
