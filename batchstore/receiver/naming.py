"""File and directory names the receiver derives from what a peer sent: sanitised so that nothing a peer
sends can leave ``-od`` or reach a shell unescaped (docs/design.md, "Atomic files").
"""

from __future__ import annotations

import datetime
import re
import unicodedata

_UNUSUAL_IN_NAME = re.compile(r"[^A-Za-z0-9._\-]")
_UID_CHARACTERS = "0123456789."


def sanitize_name(value: str) -> str:
    """Make `value` safe as one path component: characters other than letters, digits, ``.``, ``_`` and
    ``-`` become ``_``, and a name made only of dots (``.``, ``..``) or an empty one becomes underscores."""
    clean = _UNUSUAL_IN_NAME.sub("_", value)
    if not clean.strip("."):
        clean = "_" * max(1, len(clean))
    return clean


def ascii_name(value: str) -> str:
    """storescp ``-sp``: a patient name as ASCII letters and digits, anything else as ``_``."""
    decomposed = unicodedata.normalize("NFKD", value)
    out = []
    for ch in decomposed:
        if unicodedata.combining(ch):
            continue
        if ch.isascii() and ch.isalnum():
            out.append(ch)
        elif ch in "ßæÆøØ":
            out.append({"ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O"}[ch])
        else:
            out.append("_")
    return "".join(out)


def _timestamp(now: float) -> tuple[str, str]:
    moment = datetime.datetime.fromtimestamp(now)
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S") + f"{moment.microsecond // 1000:03d}"

