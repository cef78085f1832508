"""Expanding the command line's inputs into file paths the way storescu does (``+sd``, ``+r``, ``+sp``)."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator

from ..dicom.part10 import ScanFailure, not_regular_kind

__all__ = ["DIRECTORY_NOT_SCANNED", "iter_paths"]

#: The reason `iter_paths` gives for a directory named without ``+sd``. storescu only warns about such a
#: directory ("ignoring directory because option --scan-directories is not set") and sends the other
#: files; `scan.scan` does the same with it.
DIRECTORY_NOT_SCANNED = "is a directory; use +sd/--scan-directories"


def iter_paths(
    inputs: Iterable[str],
    scan_directories: bool = False,
    recurse: bool = False,
    pattern: str | None = None,
) -> Iterator[str | ScanFailure]:
    """Expand command-line inputs into file paths the way storescu does, in a deterministic order.

    Parameters
    ----------
    inputs : iterable of str
        Files and directories as given.
    scan_directories : bool
        ``+sd``: look for files in directory arguments. Without it a directory argument yields a
        `ScanFailure` with reason `DIRECTORY_NOT_SCANNED` (`scan.scan` turns it into storescu's warning).
    recurse : bool
        ``+r``: also descend into subdirectories of scanned directories.
    pattern : str, optional
        ``+sp``: fnmatch wildcard on file names, applied only to files found in scanned directories,
        never to files named explicitly.

    Yields
    ------
    str or ScanFailure
        Paths (as given, or joined onto the directory as given), directory entries sorted by name. A
        path is yielded only when its stat or directory entry showed a regular file (so `scan.scan`
        reads it with ``read_instance(..., regular=True)``, without a second ``stat``).
    """
    for arg in inputs:
        try:
            st = os.stat(arg)
        except FileNotFoundError:
            yield ScanFailure(
                arg, "broken symbolic link" if os.path.islink(arg) else "no such file or directory"
            )
            continue
        except OSError as exc:
            yield ScanFailure(arg, f"cannot access: {exc.strerror or exc}")
            continue
        if stat.S_ISREG(st.st_mode):
            yield arg
        elif not stat.S_ISDIR(st.st_mode):  # a FIFO, socket or device named on the command line
            yield ScanFailure(arg, f"not a regular file: {not_regular_kind(st.st_mode)}")
        elif not scan_directories:
            yield ScanFailure(arg, DIRECTORY_NOT_SCANNED)
        else:
            yield from _scan_dir(arg, recurse, pattern, {(st.st_dev, st.st_ino)})


def _scan_dir(
    directory: str, recurse: bool, pattern: str | None, ancestors: set[tuple[int, int]]
) -> Iterator[str | ScanFailure]:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield ScanFailure(directory, f"cannot read directory: {exc.strerror or exc}")
        return
    for entry in entries:
        path = os.path.join(directory, entry.name)
        try:
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
        except OSError as exc:
            yield ScanFailure(path, f"cannot access: {exc.strerror or exc}")
            continue
        if is_dir:
            if not recurse:
                continue
            try:
                st = entry.stat()
            except OSError as exc:
                yield ScanFailure(path, f"cannot access: {exc.strerror or exc}")
                continue
            key = (st.st_dev, st.st_ino)
            if key in ancestors:  # a symbolic link back up the tree
                continue
            yield from _scan_dir(path, recurse, pattern, ancestors | {key})
        elif pattern is not None and not fnmatch.fnmatchcase(entry.name, pattern):
            continue
        elif is_file:
            yield path
        elif entry.is_symlink() and not os.path.exists(path):
            yield ScanFailure(path, "broken symbolic link")
        else:  # a FIFO, socket or device: reported, never opened (opening a FIFO blocks)
            yield ScanFailure(path, _not_regular(path))


def _not_regular(path: str) -> str:
    """Why `path`, which is neither a directory nor a regular file, cannot be sent ("not a regular file:
    FIFO"). Reads the inode with stat, never opens it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot access: {exc.strerror or exc}"
    return f"not a regular file: {not_regular_kind(mode)}"
