"""The ``batchstore`` command line: a click group whose subcommands are thin skins over the Python API.

Subcommands live in their own modules (`send`, `receive`, `scan`, `echo`, `load`) and accept DCMTK's option
spellings (``-aet``, ``+sd``, ``-x=`` …) so that an existing storescu/storescp command line works unchanged;
`dcmtk.normalize_argv` rewrites the few spellings click cannot parse and expands ``@file`` arguments.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from .dcmtk import normalize_argv

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


#: Subcommand name -> module (imported only when that subcommand runs, so `send` workers stay lean).
COMMANDS = {
    "send": "batchstore.cli.send",
    "receive": "batchstore.cli.receive",
    "scan": "batchstore.cli.scan",
    "echo": "batchstore.cli.echo",
    "journal": "batchstore.cli.journal",
    "commit": "batchstore.cli.commit",
    "load": "batchstore.cli.load",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        return importlib.import_module(module).command  # type: ignore[no-any-return]


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="batchstore")
def cli() -> None:
    """Send and receive DICOM files over the network, in parallel, without losing any."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: normalise DCMTK spellings, then run the click group."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = normalize_argv(args)
    except ValueError as exc:
        click.echo(f"batchstore: {exc}", err=True)
        sys.exit(2)
    cli.main(args=args, prog_name="batchstore", obj=args)  # obj: the expanded arguments, for --arguments
