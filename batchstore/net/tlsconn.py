"""A TLS connection driven through memory BIOs (`ssl.SSLObject`): one receive system call per burst of
records where `ssl.SSLSocket` makes two per record, one send per four records where it makes one per
record (docs/design.md, "TLS records and system calls").

Used through `net.tls` (`wrap_client`, the receiver's stage); `ssl` is imported only when TLS is used.
"""

from __future__ import annotations

import socket
import ssl
from typing import Protocol, cast

#: Bytes one receive system call of a `TLSConnection` may take from the socket: many small records, or a
#: large data set's records, decrypted from memory afterwards without further system calls.
RAW_RECEIVE = 1 << 18
#: A message is encrypted and sent in pieces of this many bytes (four full records): one ``sendall`` per
#: piece instead of one ``write`` per record, and the outgoing BIO never holds a whole multi-megabyte data
#: set (sending it whole measured no cheaper, docs/design.md "TLS").
SEND_PIECE = 1 << 16


class _Engine(Protocol):
    """What `TLSConnection` calls on every record: `ssl.SSLObject`'s methods, or (without the Python
    wrapper around each call) those of the ``_ssl`` object inside it."""

    def read(self, len: int, buffer: memoryview) -> int: ...
    def write(self, data: bytes | bytearray | memoryview) -> int: ...
    def pending(self) -> int: ...


class TLSConnection:
    """A TLS connection driven through memory BIOs (`ssl.SSLObject`), usable where the upper layer uses a
    socket (`PDUReader`, `PDUStream`, the receiver's association and pre-association stage).

    `ssl.SSLSocket` leaves the socket to OpenSSL, which reads record by record (two ``read`` calls per
    record: its header, then its body) and writes each record with its own ``write``. Here one
    ``recv_into`` takes whatever has arrived (up to `RAW_RECEIVE` bytes) into the incoming BIO and every
    complete record is decrypted from memory; a message is encrypted into the outgoing BIO and leaves with
    one ``sendall`` per `SEND_PIECE` (docs/design.md, "TLS").

    Timeouts are the socket's, as for plain TCP (`sockets.set_socket_timeout`: kernel timeouts, an expired
    one is `BlockingIOError` from a receive and `TimeoutError` from a send). A non-blocking socket (the
    receiver's pre-association stage) raises `ssl.SSLWantReadError` from `do_handshake` and
    `BlockingIOError` from a receive until the peer's bytes arrive, as a non-blocking `ssl.SSLSocket` does.
    Closing sends no close_notify, as `ssl.SSLSocket.close` does not; a close_notify or the end of the
    connection from the peer reads as the end of the stream (0 bytes).

    Parameters
    ----------
    sock : socket.socket
        A connected TCP socket; owned (closed) by the connection from now on.
    ctx : ssl.SSLContext
    server_side : bool
    server_hostname : str, optional
        The name sent as SNI (``--request-sni``), client side only.
    """

    __slots__ = ("_sock", "_in", "_out", "_ssl", "_engine", "_raw", "_unsent", "_ended")

    def __init__(
        self, sock: socket.socket, ctx: ssl.SSLContext, server_side: bool, server_hostname: str | None = None
    ) -> None:
        self._sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        # `ssl.SSLObject` wraps each call in a Python method; its ``_sslobj`` is the C object it calls
        self._engine = cast(_Engine, getattr(self._ssl, "_sslobj", self._ssl))
        self._raw: memoryview | None = None  # the receive buffer, allocated at the first receive
        self._unsent: memoryview | None = None  # handshake bytes a non-blocking socket did not take yet
        self._ended = False  # the peer's close_notify, or the end of the connection, was read

    # ---- the handshake

    def do_handshake(self) -> None:
        """Run the handshake to its end (blocking socket, within its timeout), or as far as the bytes that
        have arrived allow (non-blocking socket: `ssl.SSLWantReadError` until it is complete).

        Raises
        ------
        ssl.SSLError
            The handshake failed; the alert OpenSSL wrote for the peer has been sent (if the peer still
            reads).
        TimeoutError, OSError
            The socket's timeout expired, or the connection failed.
        """
        while True:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                self._flush_handshake()
                try:
                    self._fill()
                except BlockingIOError:
                    raise ssl.SSLWantReadError("the peer's next handshake message has not arrived") from None
                continue
            except ssl.SSLError:
                try:
                    self._flush_handshake()  # the alert that tells the peer why
                except OSError:
                    pass
                raise
            self._flush_handshake()  # the last flight (TLS 1.3: the server's session tickets)
            return

    @property
    def wants_write(self) -> bool:
        """True while handshake bytes wait for a non-blocking socket to take them."""
        return self._unsent is not None

    def _flush_handshake(self) -> None:
        """Send what OpenSSL wrote, without blocking a non-blocking socket: what it does not take waits in
        `_unsent` for the next call."""
        if self._out.pending:
            data = memoryview(self._out.read())
            self._unsent = data if self._unsent is None else memoryview(bytes(self._unsent) + data)
        while self._unsent is not None:
            try:
                n = self._sock.send(self._unsent)
            except BlockingIOError:
                return
            self._unsent = self._unsent[n:] if n < len(self._unsent) else None

    def _fill(self) -> int:
        """One receive from the socket into the incoming BIO; 0 at the end of the connection."""
        raw = self._raw
        if raw is None:
            raw = self._raw = memoryview(bytearray(RAW_RECEIVE))
        n = self._sock.recv_into(raw)
        if n:
            self._in.write(raw[:n])
        else:
            self._in.write_eof()
        return n

    # ---- application data

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0) -> int:
        """Decrypted bytes into `buffer` (at most `nbytes`, if given): every complete record that has
        arrived, receiving once from the socket first when none has; 0 at the end of the stream."""
        view = memoryview(buffer)
        total = nbytes or len(view)
        engine = self._engine
        ssl_in = self._in
        got = 0
        if not ssl_in.pending and not engine.pending():
            if self._ended or not self._fill():
                self._ended = True
                return 0
        while got < total:
            try:
                n = engine.read(total - got, view[got:] if got else view)
            except ssl.SSLWantReadError:
                if got:
                    break
                if self._out.pending:  # OpenSSL answered something (a key update): send it first
                    self._send_out()
                if not self._fill():
                    self._ended = True
                    return 0
                continue
            except ssl.SSLEOFError:  # the connection ended without close_notify: the end, as SSLSocket reads it
                self._ended = True
                break
            if not n:  # close_notify
                self._ended = True
                break
            got += n
            if not ssl_in.pending and not engine.pending():
                break
        if self._out.pending:
            self._send_out()
        return got

    def recv(self, bufsize: int) -> bytes:
        buffer = bytearray(bufsize)
        return bytes(buffer[: self.recv_into(buffer)])

    def pending(self) -> int:
        """Bytes received and not yet returned: decrypted, or still encrypted in the incoming BIO."""
        return self._engine.pending() + self._in.pending

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt `data` and send it, one ``sendall`` per `SEND_PIECE` bytes.

        Raises
        ------
        TimeoutError
            If the peer does not take the bytes before the socket's timeout expires.
        """
        write = self._engine.write
        if len(data) <= SEND_PIECE:
            write(data)
            self._send_out()
            return
        view = memoryview(data)
        for start in range(0, len(view), SEND_PIECE):
            write(view[start : start + SEND_PIECE])
            self._send_out()

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self.sendall(data)
        return len(data)

    def _send_out(self) -> None:
        data = self._out.read()
        if self._unsent is not None:  # the end of the handshake first (TLS 1.3: the server's tickets)
            data, self._unsent = bytes(self._unsent) + data, None
        try:
            self._sock.sendall(data)
        except BlockingIOError:  # SO_SNDTIMEO expired
            raise TimeoutError("timeout while sending to the peer") from None

    # ---- the socket underneath

    def fileno(self) -> int:
        return self._sock.fileno()

    def settimeout(self, seconds: float | None) -> None:
        self._sock.settimeout(seconds)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self._sock.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int) -> int:
        return self._sock.getsockopt(level, option)

    def getpeername(self) -> object:
        return self._sock.getpeername()

    def getsockname(self) -> object:
        return self._sock.getsockname()

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()

    def version(self) -> str | None:
        return self._ssl.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._ssl.cipher()
