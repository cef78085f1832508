"""DCMTK command-line conventions: ``@file`` command files and the option spellings click cannot parse.

DCMTK options such as ``-x=``, ``+t=`` and ``+g=`` end in ``=``, which click would read as "option with an
empty value"; they are rewritten to their long names before parsing. ``@name`` arguments are replaced by
the contents of the file, as storescu/storescp do (`cmdfile.expand_command_files`).
"""

from __future__ import annotations

from .cmdfile import expand_command_files

#: Spellings rewritten before click sees them.
ALIASES = {
    "-x=": "--propose-uncompr",
    "+x=": "--prefer-uncompr",
    "+t=": "--write-xfer-same",
    "+g=": "--group-length-recalc",
}


def normalize_argv(argv: list[str]) -> list[str]:
    """Expand command files and rewrite DCMTK spellings (see `ALIASES`)."""
    return [ALIASES.get(arg, arg) for arg in expand_command_files(argv)]


__all__ = ["ALIASES", "expand_command_files", "normalize_argv"]
