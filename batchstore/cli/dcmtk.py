"""DCMTK command-line conventions: ``@file`` command files and the option spellings click cannot parse.

DCMTK options such as ``-x=``, ``+t=`` and ``+g=`` end in ``=``, which click would read as "option with an
empty value"; they are rewritten to their long names before parsing. ``@name`` arguments are replaced by
the contents of the file, as storescu/storescp do.
"""

from __future__ import annotations

import shlex

#: Spellings rewritten before click sees them.
ALIASES = {
    "-x=": "--propose-uncompr",
    "+x=": "--prefer-uncompr",
    "+t=": "--write-xfer-same",
    "+g=": "--group-length-recalc",
}


def expand_command_files(argv: list[str]) -> list[str]:
    """Replace every ``@file`` argument by the whitespace-separated words of that file.

    Double-quoted strings stay one word. A command file cannot name another command file.

    Raises
    ------
    ValueError
        If a command file cannot be read or contains another ``@file``.
    """
    out: list[str] = []
    for arg in argv:
        if arg.startswith("@") and len(arg) > 1:
            try:
                with open(arg[1:], encoding="utf-8") as fh:
                    words = shlex.split(fh.read(), comments=False, posix=True)
            except OSError as exc:
                raise ValueError(f"cannot read command file {arg[1:]}: {exc.strerror}") from exc
            nested = [w for w in words if w.startswith("@") and len(w) > 1]
            if nested:
                raise ValueError(f"command file {arg[1:]} names another command file ({nested[0]})")
            out.extend(words)
        else:
            out.append(arg)
    return out


def normalize_argv(argv: list[str]) -> list[str]:
    """Expand command files and rewrite DCMTK spellings (see `ALIASES`)."""
    return [ALIASES.get(arg, arg) for arg in expand_command_files(argv)]
