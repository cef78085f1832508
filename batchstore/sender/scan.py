"""Scanning the inputs: every path `inputs.iter_paths` finds, read with `read_instance`, in input order.

Owns `scan` and its parallel read: above `PARALLEL_SCAN_MIN` files, shares of the file list are read by
forked processes that send their results back through a pipe.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable
from typing import Final

from ..dicom.part10 import COMPILED_SCAN, Instance, ReadMode, ScanFailure, read_instance
from .inputs import DIRECTORY_NOT_SCANNED, iter_paths

__all__ = ["MAX_SCAN_JOBS", "PARALLEL_SCAN_MIN", "scan", "scan_jobs"]

log = logging.getLogger("batchstore")


#: Below this many files the scan reads headers in one process: a fork and the pickled results cost
#: more than they save (~3 ms fixed, ~3.5 us per file pickled and unpickled, against ~10 us per file
#: read with the compiled header parse, ~20 us with the Python one). docs/design.md, "Scan reads headers
#: only".
PARALLEL_SCAN_MIN: Final = 10_000 if COMPILED_SCAN else 1000
#: At most this many processes read headers (the coordinator and its forks).
MAX_SCAN_JOBS: Final = 4


def scan_jobs() -> int:
    """How many processes `scan` reads headers with by default: the usable CPUs, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_SCAN_JOBS, cpus))


def scan(
    inputs: Iterable[str],
    scan_directories: bool = False,
    recurse: bool = False,
    pattern: str | None = None,
    read_mode: ReadMode | str = "auto",
    jobs: int | None = None,
) -> tuple[list[Instance], list[ScanFailure]]:
    """Find and read all inputs.

    Parameters
    ----------
    inputs : iterable of str
        Files and directories as given on the command line.
    scan_directories, recurse, pattern
        As for `iter_paths`.
    read_mode : {"auto", "file-only", "dataset"}
        As for `read_instance`.
    jobs : int, optional
        Processes that read file headers (default `scan_jobs`). With more than one and at least
        `PARALLEL_SCAN_MIN` files, the file list is split into contiguous shares and all but the first
        are read by forked processes; results are the same, in the same order.

    Returns
    -------
    (list of Instance, list of ScanFailure)
        Readable files in input order, and everything that cannot be sent. A directory named without
        `scan_directories` is neither: it is logged as a warning and left out, as storescu does.
    """
    if read_mode not in ("auto", "file-only", "dataset"):
        raise ValueError(f"unknown read mode {read_mode!r}")
    items: list[str | ScanFailure] = []
    for item in iter_paths(inputs, scan_directories, recurse, pattern):
        if isinstance(item, ScanFailure) and item.reason == DIRECTORY_NOT_SCANNED:
            # storescu's warning, and no failure: the directory was never an input file (issue 18)
            log.warning("ignoring directory because option --scan-directories is not set: %s", item.path)
            continue
        items.append(item)
    paths = [item for item in items if not isinstance(item, ScanFailure)]
    jobs = scan_jobs() if jobs is None else jobs
    if jobs > 1 and len(paths) >= PARALLEL_SCAN_MIN and hasattr(os, "fork"):
        read = iter(_read_parallel(paths, read_mode, jobs))
    else:
        read = (read_instance(path, read_mode, True) for path in paths)
    instances: list[Instance] = []
    failures: list[ScanFailure] = []
    for item in items:
        result = item if isinstance(item, ScanFailure) else next(read)
        if isinstance(result, Instance):
            instances.append(result)
        else:
            failures.append(result)
    return instances, failures


def _collect(child: tuple[int, int], expected: int) -> list[Instance | ScanFailure] | None:
    """The results a scan fork sends through its pipe; None if it failed in any way."""
    import pickle

    pid, r = child
    chunks = []
    try:
        while True:
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return None
    try:
        part = pickle.loads(b"".join(chunks))
    except Exception:  # noqa: BLE001 - a broken share is read again by the caller
        return None
    return part if isinstance(part, list) and len(part) == expected else None


def _read_parallel(paths: list[str], read_mode: str, jobs: int) -> list[Instance | ScanFailure]:
    """`read_instance` of every path, the shares after the first read by forked processes.

    A share whose process fails for any reason is read here instead, so the result never depends on
    the forks working.
    """
    import pickle

    size = -(-len(paths) // jobs)
    shares = [paths[i : i + size] for i in range(0, len(paths), size)]
    children: list[tuple[int, int] | None] = []
    for share in shares[1:]:
        try:
            r, w = os.pipe()
        except OSError:
            children.append(None)
            continue
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            children.append(None)
            continue
        if pid == 0:  # the child: read its share, send the results, never return
            code = 1
            try:
                os.close(r)
                data = pickle.dumps(
                    [read_instance(path, read_mode, True) for path in share], pickle.HIGHEST_PROTOCOL
                )
                view = memoryview(data)
                while view:
                    view = view[os.write(w, view) :]
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        children.append((pid, r))
    try:
        results = [read_instance(path, read_mode, True) for path in shares[0]]
        for k, share in enumerate(shares[1:]):
            child, children[k] = children[k], None  # _collect closes and reaps it, whatever happens
            part = _collect(child, len(share)) if child is not None else None
            if part is None:
                part = [read_instance(path, read_mode, True) for path in share]
            results.extend(part)
    finally:  # interrupted (Ctrl-C): no fork is left running or unreaped
        for child in children:
            if child is not None:
                pid, r = child
                os.close(r)
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except OSError:
                    pass
    return results
