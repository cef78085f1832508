"""Sockets for the upper layer: TCP tuning (``TCP_NODELAY``, ``TCP_QUICKACK``), connecting, and timeouts.

Why both options on every socket: docs/design.md, "Nagle and delayed ACKs".
"""

from __future__ import annotations

import socket
import struct
import sys

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12 if sys.platform.startswith("linux") else None)


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
    # An ASCII name goes to getaddrinfo as bytes: a str is IDNA-encoded first, and importing that codec
    # costs every worker process ~7 ms.
    name: str | bytes = host.encode("ascii") if host.isascii() else host
    for af, kind, proto, _name, address in socket.getaddrinfo(name, port, family, socket.SOCK_STREAM):
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


def phase_timeout(*values: float | None) -> float | None:
    """The shortest of the timeouts that are set (None or 0: not set); None if none is.

    A phase (association negotiation, DIMSE) ends at whichever bound comes first: its own timeout
    (``-ta``, ``-td``) or the socket's (``-ts``).
    """
    chosen = [v for v in values if v]
    return min(chosen) if chosen else None


def set_socket_timeout(sock: socket.socket, seconds: float | None) -> None:
    """Bound every blocking receive and send on `sock` (``SO_RCVTIMEO``/``SO_SNDTIMEO``, as DCMTK's -ts).

    Kernel-side timeouts keep one system call per receive and per send, where Python's
    `socket.settimeout` adds a ``poll`` before each of them: two of the ~8 system calls of a 1 KB
    C-STORE. An expired timeout surfaces as `TimeoutError` from `PDUReader` and `PDUStream`.
    Where the platform refuses the options, Python's own timeout is used instead, and so it is on a TLS
    socket, where OpenSSL would report an expired kernel timeout as a want-read error.
    """
    ssl = sys.modules.get("ssl")  # loaded only when TLS is used
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        sock.settimeout(seconds if seconds else None)
        return
    sock.settimeout(None)
    whole = int(seconds or 0)
    value = struct.pack("ll", whole, int(((seconds or 0) - whole) * 1e6))
    try:
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            sock.setsockopt(socket.SOL_SOCKET, option, value)
    except (OSError, AttributeError):
        sock.settimeout(seconds if seconds else None)
