"""The pre-association stage: connections the server accepted whose A-ASSOCIATE-RQ has not arrived whole.

A connection holds nothing but a slot here until its request is complete (docs/design.md, "Hostile
peers"): the server reads the request itself, without blocking, with a small cap on its length
(`MAX_ASSOCIATE_RQ`), a buffer that grows only as bytes arrive, and a deadline (``-ta``) from the moment
it was accepted. Only a connection whose request is complete becomes an association (a ``--fork``
child, or the single process's turn), so idle or slow connects never take one of the
``--max-associations`` slots. The stage itself is bounded: beyond `MAX_INCOMPLETE` connections the
oldest incomplete one is dropped, and while `MAX_WAITING` complete requests wait for a free slot the
server accepts nothing more (further connections wait in the kernel's listen backlog).

With ``+tls`` the TLS handshake happens here too, without blocking and within the same deadline: a
client that connects and never speaks TLS holds no slot, and a failed handshake is logged and closed
without ever reaching the DICOM layer.
"""

from __future__ import annotations

import logging
import selectors
import socket
import struct
import time
from collections import deque
from typing import Any

from ..net.pdu import A_ABORT, A_ASSOCIATE_RQ, ABORT_INVALID_PARAMETER, ABORT_UNEXPECTED_PDU, PDU_NAMES

log = logging.getLogger("batchstore.server")

#: The longest A-ASSOCIATE-RQ accepted (its PDU length): 128 presentation contexts of a SOP class and
#: ten transfer syntaxes each take about 40 KiB. Longer is answered with A-ABORT.
MAX_ASSOCIATE_RQ = 128 * 1024
#: Connections that have not sent a whole A-ASSOCIATE-RQ yet; beyond, the oldest of them is dropped.
MAX_INCOMPLETE = 64
#: Complete requests waiting for an association slot; while this many wait, nothing more is accepted.
MAX_WAITING = 64

_HEADER = struct.Struct(">BxL")


class Pending:
    """One accepted connection in the pre-association stage."""

    __slots__ = ("sock", "address", "accepted", "deadline", "data", "need", "handshaking")

    def __init__(self, sock: socket.socket, address: tuple[str, int], accepted: float, timeout: float) -> None:
        self.sock = sock
        self.address = address
        self.accepted = accepted  # time.monotonic()
        self.deadline = accepted + timeout if timeout else 0.0
        self.data = bytearray()  # the PDU header, then the body as it arrives
        self.need = 6
        self.handshaking = False  # +tls: the TLS handshake is not complete yet

    @property
    def request(self) -> bytes:
        """The A-ASSOCIATE-RQ body, once complete."""
        return bytes(self.data[6:])


class Gate:
    """Connections waiting for their A-ASSOCIATE-RQ (`incomplete`) or for a slot (`waiting`).

    Parameters
    ----------
    selector : selectors.BaseSelector
        The server's selector: incomplete connections are registered with themselves as data.
    timeout : float or None
        Seconds from accept to a complete A-ASSOCIATE-RQ (``-ta``); None or 0: no bound but eviction.
    tls_context : ssl.SSLContext, optional
        ``+tls``: every connection is wrapped and its handshake done here first.
    """

    def __init__(self, selector: selectors.BaseSelector, timeout: float | None, tls_context: Any = None) -> None:
        self.selector = selector
        self.tls_context = tls_context
        self.timeout = timeout or 0.0
        self.incomplete: dict[int, Pending] = {}  # by file descriptor, oldest first
        self.waiting: deque[Pending] = deque()

    def full(self) -> bool:
        """True while no further connection should be accepted."""
        return len(self.waiting) >= MAX_WAITING

    def admit(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Take an accepted connection into the stage (dropping the oldest incomplete one if full)."""
        if len(self.incomplete) >= MAX_INCOMPLETE:
            oldest = next(iter(self.incomplete.values()))
            log.warning(
                "%d connections without a complete A-ASSOCIATE-RQ: dropping the oldest, from %s",
                len(self.incomplete),
                oldest.address[0],
            )
            self._drop(oldest, abort=False)
        sock.setblocking(False)
        handshaking = False
        if self.tls_context is not None:
            from ..net.tls import TLSConnection  # ssl only with TLS

            sock = TLSConnection(sock, self.tls_context, server_side=True)  # type: ignore[assignment]
            handshaking = True
        pending = Pending(sock, address, time.monotonic(), self.timeout)
        pending.handshaking = handshaking
        self.incomplete[sock.fileno()] = pending
        self.selector.register(sock, selectors.EVENT_READ, pending)

    def read(self, pending: Pending) -> bool:
        """Read what `pending` sent; True once its A-ASSOCIATE-RQ is complete (it is then in `waiting`)."""
        data = pending.data
        if pending.handshaking and not self._handshake(pending):
            return False
        try:
            while len(data) < pending.need:
                chunk = pending.sock.recv(min(pending.need - len(data), 65536))
                if not chunk:
                    log.info("connection from %s closed before an A-ASSOCIATE-RQ", pending.address[0])
                    self._drop(pending, abort=False)
                    return False
                data += chunk
                if len(data) == 6:
                    pdu_type, length = _HEADER.unpack_from(data)
                    if pdu_type != A_ASSOCIATE_RQ:
                        log.error(
                            "expected A-ASSOCIATE-RQ from %s, received %s: aborting",
                            pending.address[0],
                            PDU_NAMES.get(pdu_type, f"PDU type 0x{pdu_type:02X}"),
                        )
                        self._drop(pending, abort=True, reason=ABORT_UNEXPECTED_PDU)
                        return False
                    if length > MAX_ASSOCIATE_RQ:
                        log.error(
                            "A-ASSOCIATE-RQ of %d bytes from %s exceeds the maximum of %d: aborting",
                            length,
                            pending.address[0],
                            MAX_ASSOCIATE_RQ,
                        )
                        self._drop(pending, abort=True, reason=ABORT_INVALID_PARAMETER)
                        return False
                    pending.need = 6 + length
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if _want_io(exc):  # TLS: no whole record yet
                return False
            log.info("connection from %s lost before an A-ASSOCIATE-RQ: %s", pending.address[0], exc)
            self._drop(pending, abort=False)
            return False
        self._leave(pending)
        self.waiting.append(pending)
        return True

    def _handshake(self, pending: Pending) -> bool:
        """Advance the TLS handshake; True once it is complete. A failure is logged and the connection
        closed: nothing of it reaches the DICOM layer."""
        sock = pending.sock
        try:
            sock.do_handshake()  # type: ignore[attr-defined]
        except OSError as exc:
            if _want_io(exc):
                # handshake bytes the socket did not take yet: come back when it can take them
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if sock.wants_write else 0)  # type: ignore[attr-defined]
                if self.selector.get_key(sock).events != events:
                    self.selector.modify(sock, events, pending)
                return False
            from ..net.tls import describe_handshake_error

            log.error("connection from %s: %s", pending.address[0], describe_handshake_error(exc))
            self._drop(pending, abort=False)
            return False
        pending.handshaking = False
        if self.selector.get_key(sock).events != selectors.EVENT_READ:
            self.selector.modify(sock, selectors.EVENT_READ, pending)
        return True

    def expire(self, now: float) -> None:
        """Close the incomplete connections whose deadline passed, without an A-ABORT, as storescp does."""
        for pending in [p for p in self.incomplete.values() if p.deadline and p.deadline <= now]:
            # what arrived meanwhile first (the server may have been busy with an association)
            if self.read(pending):
                continue
            if pending.sock.fileno() in self.incomplete and pending.handshaking:
                log.error("no TLS handshake from %s within %g s: closing", pending.address[0], self.timeout)
                self._drop(pending, abort=False)
            elif pending.sock.fileno() in self.incomplete:
                # storescp closes the connection without an A-ABORT here (no association exists yet)
                log.error(
                    "no complete A-ASSOCIATE-RQ from %s within %g s: closing",
                    pending.address[0],
                    self.timeout,
                )
                self._drop(pending, abort=False)

    def next_timeout(self, now: float) -> float | None:
        """Seconds until the earliest deadline (None: none)."""
        deadlines = [p.deadline for p in self.incomplete.values() if p.deadline]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def close(self) -> None:
        """Close every connection still in the stage."""
        for pending in list(self.incomplete.values()):
            self._drop(pending, abort=False)
        while self.waiting:
            _close(self.waiting.popleft().sock)

    def _leave(self, pending: Pending) -> None:
        self.incomplete.pop(pending.sock.fileno(), None)
        try:
            self.selector.unregister(pending.sock)
        except (KeyError, ValueError):
            pass

    def _drop(self, pending: Pending, abort: bool, reason: int = 0) -> None:
        self._leave(pending)
        if abort:
            try:
                pending.sock.send(_HEADER.pack(A_ABORT, 4) + bytes((0, 0, 2, reason)))
            except OSError:
                pass
        _close(pending.sock)


def _want_io(exc: OSError) -> bool:
    """True for OpenSSL's "call again when the socket is ready" (a non-blocking TLS socket)."""
    return type(exc).__name__ in ("SSLWantReadError", "SSLWantWriteError")


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
