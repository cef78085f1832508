"""DCMTK command-line conventions: ``@file`` command files and the option spellings click cannot parse.

DCMTK options such as ``-x=``, ``+t=`` and ``+g=`` end in ``=``, which click would read as "option with an
empty value"; they are rewritten to their long names before parsing. ``@name`` arguments are replaced by
the contents of the file, as storescu/storescp do (`cmdfile.expand_command_files`).

`DcmtkCommand` parses DCMTK's short options (``-q``, ``+sd``, ``-nh``) without click's detour through its
long options (`short_options_first`).
"""

from __future__ import annotations

from typing import Any

import click

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


def short_options_first(parser: Any) -> Any:
    """Make click's option `parser` match an argument that is exactly a short option (``-q``, ``+r``)
    as one at once, with the same result.

    Because DCMTK's commands declare one-dash long options (``-aet``), click looks every dash argument
    up as a long option first; a short one fails that lookup, which imports `difflib` and computes
    "did you mean" suggestions before the short lookup succeeds: 2-3 ms of every ``batchstore send -q
    +sd +r ...`` (docs/design.md, "Small runs"). Arguments that are not exactly a short option (long
    options, ``-qv``, ``--x=y``, unknown options and their errors) go through click's own code. A click
    without these internals keeps its parser as it is.
    """
    try:
        general, match_short = parser._process_opts, parser._match_short_opt
        short, long = parser._short_opt, parser._long_opt
    except AttributeError:
        return parser

    def process_opts(arg: str, state: Any) -> None:
        if arg in short and arg not in long:
            match_short(arg, state)
        else:
            general(arg, state)

    parser._process_opts = process_opts
    return parser


class DcmtkCommand(click.Command):
    """A command with DCMTK's option spellings (see `short_options_first`)."""

    def make_parser(self, ctx: click.Context) -> Any:
        return short_options_first(super().make_parser(ctx))


__all__ = ["ALIASES", "DcmtkCommand", "expand_command_files", "normalize_argv", "short_options_first"]
