"""The upper layer's own errors: one base, `NetError`, whose `transient` says whether retrying may help.

They are not `OSError`s: an ``except OSError`` around network code catches what the operating system
reports (refused, reset, timed out) and nothing the peer said, so the two are classified apart instead of
by the order of ``except`` clauses. Socket errors stay `OSError` (`ConnectionResetError`, `TimeoutError`).
"""

from __future__ import annotations


class NetError(Exception):
    """Something the peer did, or did not do, in the DICOM upper layer protocol.

    Attributes
    ----------
    transient : bool
        True when the same request may succeed later (an A-ABORT, a rejection marked transient); False
        when it cannot (a protocol violation, a permanent rejection).
    """

    transient: bool = False


class PeerAborted(NetError):
    """The peer sent an A-ABORT (or A-P-ABORT) PDU."""

    transient = True

    def __init__(self, source: int = 0, reason: int = 0) -> None:
        super().__init__(f"association aborted by peer (source {source}, reason {reason})")
        self.source = source
        self.reason = reason


class ProtocolError(NetError):
    """The peer sent something the upper layer protocol does not allow at this point."""

    transient = False
