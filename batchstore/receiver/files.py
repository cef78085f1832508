"""Temporary files and the data set being received: named ``.batchstore-<pid>-<n>.part`` files, unnamed
(``O_TMPFILE``) ones, and removing what a dead process left behind (docs/design.md, "Atomic files").

A partially received data set never appears under a final name: `Incoming` streams into a temporary file
that `receiver.store.Store` renames or links into place once it is complete.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

log = logging.getLogger("batchstore.storage")

TEMP_PREFIX = ".batchstore-"
TEMP_SUFFIX = ".part"
#: Data set bytes kept in memory before they are written to the temporary file.
FLUSH_BYTES = 1 << 20

# Incoming.fd when it is not an open descriptor
_NOT_CREATED = -1  # nothing written yet
_GONE = -2  # moved to its final name, or deleted
_CLOSED = -3  # closed, the temporary file still exists

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
# An unnamed file in a directory (Linux): it gets its name by a link once complete, and vanishes if the
# process dies before.
_TMPFILE_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
# errno values meaning "unnamed files cannot be used here": from open(O_TMPFILE) (file system or kernel
# without them), and from linking one by its /proc/self/fd entry. Named temporary files are used instead,
# from then on.
_NO_TMPFILE = frozenset((errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL))
_CANNOT_LINK = frozenset((errno.ENOENT, errno.EPERM, errno.EACCES, errno.EXDEV, errno.EINVAL))


def temp_name(pid: int, n: int) -> str:
    """The name of the `n`-th temporary file of process `pid`."""
    return f"{TEMP_PREFIX}{pid}-{n}{TEMP_SUFFIX}"


def remove_temp_files(directory: str, pid: int | None = None) -> list[str]:
    """Delete the temporary files of process `pid` in `directory` (of every process that is no longer
    running when `pid` is None); return the names removed."""
    removed: list[str] = []
    alive: dict[int, bool] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
            continue
        try:
            owner = int(name[len(TEMP_PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        if pid is not None:
            if owner != pid:
                continue
        else:
            if owner not in alive:
                alive[owner] = _running(owner)
            if alive[owner]:
                continue
        try:
            os.unlink(entry.path)
            removed.append(name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot remove temporary file %s: %s", entry.path, exc)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_all(fd: int, parts: list) -> None:
    if not parts:
        return
    total = sum(map(len, parts))
    written = os.writev(fd, parts) if len(parts) > 1 else os.write(fd, parts[0])
    if written == total:
        return
    rest = b"".join(bytes(p) for p in parts)[written:]
    view = memoryview(rest)
    while view:
        view = view[os.write(fd, view) :]


# --------------------------------------------------------------------------------------------------------
# receiving


class Incoming:
    """A data set being received.

    Fragments are kept in memory up to `FLUSH_BYTES`; a data set that arrives whole stays there and is
    written by `Store.complete` in one go. A larger one (or with `eager`, every fragment at once) is
    written to a temporary file named by `namer`, created on the first flush.
    """

    __slots__ = (
        "tmp",
        "namer",
        "parts",
        "pending",
        "size",
        "fd",
        "header_len",
        "header_parts",
        "sop_class",
        "sop_instance",
        "transfer_syntax",
        "eager",
    )

    def __init__(
        self,
        namer: Callable[[], str],
        header: tuple[bytes, ...],
        sop_class: str,
        sop_instance: str,
        transfer_syntax: str,
        eager: bool,
    ) -> None:
        self.tmp = ""
        self.namer = namer
        self.parts: list = list(header)
        self.header_parts = len(header)
        self.header_len = self.pending = sum(map(len, header))
        self.size = 0
        self.fd = _NOT_CREATED
        self.sop_class = sop_class
        self.sop_instance = sop_instance
        self.transfer_syntax = transfer_syntax
        self.eager = eager
        if eager:
            self.flush()

    def write(self, fragment: bytes | memoryview) -> None:
        """Append a data set fragment (the caller must not reuse the buffer behind `fragment`)."""
        self.parts.append(fragment)
        n = len(fragment)
        self.size += n
        self.pending += n
        if self.pending >= FLUSH_BYTES or self.eager:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered to the temporary file (creating it on first use)."""
        if self.fd == _NOT_CREATED:
            self.tmp = self.namer()
            self.fd = os.open(self.tmp, _OPEN_FLAGS, 0o666)
        if self.parts:
            _write_all(self.fd, self.parts)
        self.parts = []
        self.pending = 0

    def discard(self) -> None:
        """Drop the data set: close and delete the temporary file."""
        self.parts = []
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
        if self.fd != _NOT_CREATED and self.fd != _GONE:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
        self.fd = _GONE


class Refused:
    """The sink of a C-STORE refused before its data set arrived (a request whose UIDs no response can
    carry): the data set is read and dropped, and `status` answers it."""

    __slots__ = ("size", "status", "comment")

    def __init__(self, status: int, comment: str) -> None:
        self.size = 0
        self.status = status
        self.comment = comment

    def write(self, fragment: bytes | memoryview) -> None:
        self.size += len(fragment)

    def flush(self) -> None:
        pass

    def discard(self) -> None:
        pass


def fsync_directory(directory: str) -> None:
    """Sync `directory` itself: the names linked or renamed into it survive a power cut (``--fsync``)."""
    fsync_path(directory, getattr(os, "O_DIRECTORY", 0))


def fsync_path(path: str, flags: int = 0) -> None:
    """Sync the file (or, with ``O_DIRECTORY`` in `flags`, the directory) at `path` to stable storage."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Discard:
    """The sink used with ``--ignore``: counts the bytes and keeps nothing."""

    __slots__ = ("size", "sop_class", "sop_instance", "transfer_syntax")

    def __init__(self, sop_class: str, sop_instance: str, transfer_syntax: str) -> None:
        self.size = 0
        self.sop_class = sop_class
        self.sop_instance = sop_instance
        self.transfer_syntax = transfer_syntax

    def write(self, fragment: bytes | memoryview) -> None:
        self.size += len(fragment)

    def flush(self) -> None:
        pass

    def discard(self) -> None:
        pass
