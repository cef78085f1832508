"""The fork server of ``receive --fork``: a process forked once from the receiver that forks the
association children for it, as the receiver's own children (docs/design.md, "Where an association's
time goes").

Every fork shares all of the forking process's pages with the child until one of them writes; the
receiver writes a few hundred of its pages per association (accepting, reading the request, handing it
over), and each write then copies a page. The fork server writes almost nothing between its forks, so
the receiver forks it once and asks it for each child: the receiver's pages stop being copied, and the
children start from the same memory as before. The fork server's loop is `_sibling.serve`, in C: each
child it forks is the receiver's (clone with ``CLONE_PARENT``), so the receiver reaps it, counts it against ``--max-associations`` and removes
what a crashed one left, as with its own forks.

Without the compiled `_sibling` (not built, not Linux, ``BATCHSTORE_PURE_PYTHON=1``), or with
``BATCHSTORE_FORK_SERVER=0``, `ForkServer.start` returns None and the receiver forks its children itself.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import NoReturn

from .onemessage import load_compiled

#: How long the receiver waits for the fork server to answer a request before it forks itself.
ANSWER_SECONDS = 5.0

_PID = struct.Struct("=q")

compiled = load_compiled("_sibling")


class ForkServer:
    """The receiver's handle on its fork server (`start`): `spawn` a child, `close` to end it."""

    def __init__(self, pid: int, channel: socket.socket) -> None:
        self.pid = pid
        self.channel = channel

    @classmethod
    def start(
        cls, prepare: Callable[[], None], child: Callable[[socket.socket], NoReturn]
    ) -> ForkServer | None:
        """Fork the fork server; None where it cannot be used (see the module), or if the fork fails.

        In the fork server `prepare` runs once (drop what is the receiver's: its listening socket,
        signal handlers...); each child it forks gets the channel end `spawn` was given and runs
        `child` with it, which must not return.
        """
        if compiled is None or os.environ.get("BATCHSTORE_FORK_SERVER", "1").strip() == "0":
            return None
        if threading.active_count() > 1:
            return None  # a receiver embedded in a threaded program keeps to os.fork, as it always did
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return None
        if pid == 0:
            ours.close()
            _serve(theirs, prepare, child)  # never returns
        theirs.close()
        ours.settimeout(ANSWER_SECONDS)
        return cls(pid, ours)

    def spawn(self, child_end: socket.socket) -> int | None:
        """Have a child forked with `child_end`; its pid (the receiver's child), or None if the fork
        server failed (the caller closes `child_end` either way, and forks itself)."""
        try:
            socket.send_fds(self.channel, [b"f"], [child_end.fileno()])
            answer = self.channel.recv(_PID.size)
        except OSError:
            return None
        if len(answer) != _PID.size:
            return None
        pid = int(_PID.unpack(answer)[0])
        return pid if pid > 0 else None

    def close(self) -> None:
        """End the fork server (it exits when its channel closes; the receiver reaps it)."""
        self.channel.close()


def _serve(channel: socket.socket, prepare: Callable[[], None], child: Callable[[socket.socket], NoReturn]) -> NoReturn:
    """The fork server's life: fork a child per request (in `_sibling.serve`), until the receiver closes
    the channel."""
    code = 0
    try:
        prepare()
        fd = compiled.serve(channel.fileno())
        if fd is not None:  # a new child, with the descriptor the receiver sent
            channel.close()
            child(socket.socket(fileno=fd))
    except BaseException:  # noqa: BLE001 - a forked process must end in os._exit whatever happens
        code = 1
    os._exit(code)
