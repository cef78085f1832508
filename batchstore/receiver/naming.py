"""File and directory names the receiver derives from what a peer sent: sanitised so that nothing a peer
sends can leave ``-od`` or reach a shell unescaped (docs/design.md, "Atomic files").
"""

from __future__ import annotations

import datetime
import hashlib
import re
import unicodedata

_UNUSUAL_IN_NAME = re.compile(r"[^A-Za-z0-9._\-]")
_UID_CHARACTERS = "0123456789."

#: The longest name derived from what a peer sent (file systems allow 255 bytes per component; the
#: rest is left for ``-fe`` extensions and ``-tn``/``-rns`` suffixes).
MAX_NAME = 160


def shorten(value: str, limit: int = MAX_NAME) -> str:
    """`value` if it has at most `limit` characters; else its first characters and ``_`` and 16 hex
    digits of the SHA-256 of the whole `value`: deterministic, and distinct values stay distinct."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{value[: max(0, limit - 17)]}_{digest}"


def sanitize_name(value: str, limit: int = MAX_NAME) -> str:
    """Make `value` safe as one path component: characters other than letters, digits, ``.``, ``_`` and
    ``-`` become ``_``, a name made only of dots (``.``, ``..``) or an empty one becomes underscores,
    and a name longer than `limit` is shortened (`shorten`, the hash taken of `value` as given)."""
    clean = _UNUSUAL_IN_NAME.sub("_", value)
    if not clean.strip("."):
        clean = "_" * max(1, len(clean))
    if len(clean) > limit:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        clean = f"{clean[: limit - 17]}_{digest}"
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

