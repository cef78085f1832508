"""The Storage SCP's answer to an A-ASSOCIATE-RQ as a whole: whether to reject it (``--refuse``,
``--reject``, ``--accept-aet``, an unknown application context), and the log of what each proposed
presentation context got (`receiver.negotiation` decides those). Used by `receiver.association`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..net import acse

if TYPE_CHECKING:
    from .options import ReceiveOptions

log = logging.getLogger("batchstore.scp")


def rejection(options: ReceiveOptions, request: acse.AssociationRequest) -> tuple[int, int, int, str] | None:
    """Why `request` is rejected, as (result, source, reason, text for the log); None to accept it."""
    if options.refuse:
        return (
            acse.RESULT_REJECTED_PERMANENT,
            acse.SOURCE_SERVICE_USER,
            acse.REASON_NO_REASON,
            "--refuse",
        )
    if request.application_context != acse.APPLICATION_CONTEXT:
        return (
            acse.RESULT_REJECTED_PERMANENT,
            acse.SOURCE_SERVICE_USER,
            acse.REASON_APP_CONTEXT_NOT_SUPPORTED,
            f"application context {request.application_context}",
        )
    if options.reject_without_implementation_uid and not request.implementation_class_uid:
        return (
            acse.RESULT_REJECTED_PERMANENT,
            acse.SOURCE_SERVICE_USER,
            acse.REASON_NO_REASON,
            "no implementation class UID",
        )
    if options.accept_aets and request.calling_ae not in options.accept_aets:
        return (
            acse.RESULT_REJECTED_PERMANENT,
            acse.SOURCE_SERVICE_USER,
            acse.REASON_CALLING_AE_NOT_RECOGNIZED,
            f"calling AE title {request.calling_ae!r} not in --accept-aet",
        )
    return None


def log_contexts(
    options: ReceiveOptions, request: acse.AssociationRequest, results: dict[int, tuple[int, str]]
) -> None:
    """Log each proposed presentation context and its result (``+v``: at INFO, else at DEBUG)."""
    level = logging.INFO if options.verbose_pc else logging.DEBUG
    if not log.isEnabledFor(level):
        return
    names = {
        acse.PC_ACCEPTANCE: "Accepted",
        acse.PC_USER_REJECTION: "User Rejection",
        acse.PC_NO_REASON: "Rejected (no reason)",
        acse.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED: "Abstract Syntax Not Supported",
        acse.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED: "Transfer Syntaxes Not Supported",
    }
    lines = [f"Presentation Contexts ({len(request.contexts)}):"]
    for cid, abstract, syntaxes in request.contexts:
        result, ts = results[cid]
        lines.append(f"  Context ID: {cid} ({names.get(result, result)})")
        lines.append(f"    Abstract Syntax: {abstract}")
        lines.append(f"    Proposed Transfer Syntaxes: {', '.join(syntaxes)}")
        if result == acse.PC_ACCEPTANCE:
            lines.append(f"    Accepted Transfer Syntax: {ts}")
    log.log(level, "\n".join(lines))
