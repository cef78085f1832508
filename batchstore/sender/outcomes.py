"""Outcome classification: what a DIMSE status or a network error means for a file
(docs/design.md, "Failures are classified").

Every per-file result is one of `SUCCESS`, `WARNING`, `TRANSIENT` (retrying may help) or `PERMANENT`
(retrying will not help), plus `NOT_SENT` for files a halted run never tried.
"""

from __future__ import annotations

import socket

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
