"""``@file`` command files: arguments read from a file, split and quoted as DCMTK's OFCommandLine does."""

from __future__ import annotations

__all__ = ["CommandFileError", "expand_command_files"]


class CommandFileError(ValueError):
    """An ``@file`` command file argument cannot be expanded."""


def _split_command_file(text: str) -> list[tuple[str, bool]]:
    """Split command file text like DCMTK's OFCommandLine: (token, was quoted)."""
    tokens: list[tuple[str, bool]] = []
    value: list[str] = []
    block = ""
    quoted = False
    for c in text:
        if c in "\"'":
            if block == c:  # closing quote: also yields an empty value
                tokens.append(("".join(value), True))
                value, block, quoted = [], "", False
            elif not block:
                block, quoted = c, True
            else:
                value.append(c)
        elif c in " \t\n\r" and not block:
            if value:
                tokens.append(("".join(value), quoted))
                value, quoted = [], False
        else:
            value.append(c)
    if value:
        tokens.append(("".join(value), quoted))
    return tokens


def expand_command_files(argv: list[str]) -> list[str]:
    """Replace every ``@name`` argument by the arguments in command file ``name`` (DCMTK semantics).

    Parameters
    ----------
    argv : list of str
        Command-line arguments without the program name.

    Returns
    -------
    list of str
        The expanded arguments. Whitespace separates arguments unless inside single or double
        quotes; a lone ``@`` is kept as it is.

    Raises
    ------
    CommandFileError
        If a command file cannot be read, or names another command file (an unquoted ``@name``
        inside a command file: they do not nest).
    """
    out: list[str] = []
    for arg in argv:
        if len(arg) < 2 or not arg.startswith("@"):
            out.append(arg)
            continue
        name = arg[1:]
        try:
            with open(name, "rb") as fh:
                text = fh.read().decode("utf-8", "surrogateescape")
        except OSError as exc:
            raise CommandFileError(f"cannot open command file {name}: {exc.strerror or exc}") from exc
        for token, quoted in _split_command_file(text):
            if not quoted and len(token) > 1 and token.startswith("@"):
                raise CommandFileError(
                    f"command file {name} refers to command file {token[1:]}: command files cannot be nested"
                )
            out.append(token)
    return out
