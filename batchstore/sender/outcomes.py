"""Outcome classification: what a DIMSE status or a network error means for a file
(docs/design.md, "Failures are classified").

Every per-file result is one of `SUCCESS`, `WARNING`, `TRANSIENT` (retrying may help) or `PERMANENT`
(retrying will not help), plus `NOT_SENT` for files a halted run never tried.

A transient-looking failure is not always the peer's: `Attribution` holds what a worker knows about one
file's first failure, and `repeats_for_file` decides whether its retry, failing the same way while the
peer accepted other files, makes it the file's problem (permanent) rather than the peer's.
"""

from __future__ import annotations

import socket
from typing import NamedTuple

from ..net.errors import NetError

SUCCESS = "success"
WARNING = "warning"
TRANSIENT = "transient"
PERMANENT = "permanent"
NOT_SENT = "not-sent"

#: C-STORE warning statuses (PS3.4 Annex B.2.3 and PS3.7 C.4).
WARNING_STATUSES = frozenset({0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007})

_STATUS_TEXT = {
    0x0000: "Success",
    0x0001: "Warning: requested optional attributes are not supported",
    0x0107: "Warning: attribute list error",
    0x0116: "Warning: attribute value out of range",
    0xB000: "Warning: coercion of data elements",
    0xB006: "Warning: elements discarded",
    0xB007: "Warning: data set does not match SOP class",
    0x0117: "Failure: invalid object instance",
    0x0122: "Failure: SOP class not supported",
    0x0124: "Failure: not authorized",
    0x0210: "Failure: duplicate invocation",
    0x0211: "Failure: unrecognized operation",
    0x0212: "Failure: mistyped argument",
    0x0213: "Failure: resource limitation",
    0xA700: "Failure: out of resources",
    0xA900: "Failure: data set does not match SOP class",
    0xC000: "Failure: cannot understand",
}


def classify_status(status: int) -> str:
    """Classify a C-STORE-RSP status.

    Returns
    -------
    str
        `SUCCESS` for 0x0000; `WARNING` for 0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007 and other
        0xBxxx; `TRANSIENT` for 0xA7xx (out of resources) and 0x0213 (resource limitation);
        `PERMANENT` for everything else (0xA9xx, 0xCxxx, 0x01xx/0x02xx failures).
    """
    if status == 0x0000:
        return SUCCESS
    if status in WARNING_STATUSES or (status & 0xF000) == 0xB000:
        return WARNING
    if (status & 0xFF00) == 0xA700 or status == 0x0213:
        return TRANSIENT
    return PERMANENT


def status_text(status: int) -> str:
    """A human description of a C-STORE status, e.g. ``0xA700 Failure: out of resources``."""
    text = _STATUS_TEXT.get(status)
    if text is None:
        family = {
            0xA7: "out of resources",
            0xA9: "data set does not match SOP class",
            0xC0: "cannot understand",
        }
        text = (
            "Failure: " + family.get(status >> 8, "unknown status")
            if classify_status(status)
            in (
                TRANSIENT,
                PERMANENT,
            )
            else "Warning"
        )
    return f"0x{status:04X} {text}"


def classify_error(exc: BaseException) -> str:
    """Classify an exception raised while associating or sending.

    Association rejected-transient, A-ABORT, timeouts, refused or reset connections are `TRANSIENT`;
    rejected-permanent, protocol errors from the peer and anything else are `PERMANENT`.
    """
    if isinstance(exc, NetError):  # what the peer did: AssociationRejected, PeerAborted, ProtocolError
        return TRANSIENT if exc.transient else PERMANENT
    if isinstance(exc, (TimeoutError, socket.timeout, ConnectionError)):
        return TRANSIENT
    if isinstance(exc, OSError) and exc.errno is not None:
        import errno

        if exc.errno in (
            errno.ECONNREFUSED,
            errno.ECONNRESET,
            errno.ETIMEDOUT,
            errno.EHOSTUNREACH,
            errno.ENETUNREACH,
            errno.EPIPE,
        ):
            return TRANSIENT
    return PERMANENT


def describe_error(exc: BaseException) -> str:
    """One line for the report: the error's class and message."""
    if isinstance(exc, socket.timeout) or isinstance(exc, TimeoutError):
        return "timeout waiting for the peer"
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text


# --- learning from the peer: is a repeated failure the file's or the peer's? ------------------------------

#: Appended to the error of a file whose failure repeated while the peer accepted other files.
FILE_PROBLEM = "; again on retry while the peer accepted other files: this data set's problem, not the peer's"


def failure_kind(status: int | None, exc: BaseException | None = None) -> str:
    """What a transient failure looked like, to tell whether a retry failed "the same way".

    ``"0xA700"`` (the status) for a transient DIMSE status; ``"dropped"`` when the association ended while
    the file was being sent or waited for (A-ABORT, reset, EOF, timeout: the peer dropped it after this
    data set); ``"error"`` otherwise.
    """
    if status is not None:
        return f"0x{status:04X}"
    if exc is not None and classify_error(exc) == TRANSIENT:
        return "dropped"
    return "error"


class Attribution(NamedTuple):
    """A file's first transient failure, put aside to be retried once after other files.

    `emitted` and `failures` are the worker's counters when it failed: the files it had reported, and how
    many of those had failed. Their differences at the retry give how many files the peer accepted in
    between, without any bookkeeping for files that succeed. `previous_ok`: the file sent just before this
    one was accepted. A named tuple, not a frozen dataclass: start-up (docs/design.md, "Small runs").
    """

    kind: str
    error: str
    emitted: int
    failures: int
    previous_ok: bool
    spent: float  # seconds this file has cost so far (its first attempt)
    local: int = 0  # of `emitted`, how many never reached the peer (unreadable, failed the check, not sent)
    attempts: int = 1
    last_chance: bool = False  # sent back to the end of the queue (messages.Later): judged now


def repeats_for_file(first: Attribution, kind: str, sent_since: int, accepted_since: int) -> bool:
    """True when a retry failing with `kind` makes the failure the file's own (permanent).

    The failure must repeat the same way (the same status, or the association dropped again after this
    data set), and the peer must have accepted other files: some of the `sent_since` files reported
    since the first failure (`accepted_since`), or, when nothing was sent in between (the file was the
    last of its batch), the file just before it. A peer in trouble (every file gets 0xA7xx, resets
    across files) accepts nothing in between: such files keep their transient retries with backoff.
    """
    if kind != first.kind or kind == "error":
        return False
    if sent_since:
        return accepted_since > 0
    return first.previous_ok
