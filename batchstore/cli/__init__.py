"""The ``batchstore`` command line: a click group whose subcommands are thin skins over the Python API.

Subcommands live in their own modules (`send`, `receive`, `scan`, `echo`, `load`) and accept DCMTK's option
spellings (``-aet``, ``+sd``, ``-x=`` …) so that an existing storescu/storescp command line works unchanged;
`dcmtk.normalize_argv` rewrites the few spellings click cannot parse and expands ``@file`` arguments.
"""

from __future__ import annotations

import importlib
import os
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
    """Console entry point: normalise DCMTK spellings, then run the click group.

    As the process's entry point (`argv` None) it ends the process with `fast_exit` once the command is
    done, rather than tearing the interpreter down.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = normalize_argv(args)
    except ValueError as exc:
        click.echo(f"batchstore: {exc}", err=True)
        sys.exit(2)
    try:
        cli.main(args=args, prog_name="batchstore", obj=args)  # obj: the expanded arguments, for --arguments
    except SystemExit as exc:
        if argv is None:
            fast_exit(exc.code)
        raise


def fast_exit(code: object) -> None:
    """Exit with `code` at once (``os._exit``) when the command has nothing left running; else return.

    Tearing down an interpreter that has imported the send path costs 15-20 ms of CPU (module and object
    finalisation), a tenth of a 100-file send (docs/design.md, "Small runs"). Nothing is lost by skipping
    it: the commands close their files, journals and sockets before they return, and this flushes the
    standard streams and the log handlers first. It does not skip it while another thread or a
    multiprocessing child still runs (those are waited for by a normal exit), nor for an exit code that
    is not a number (`sys.exit("message")` prints the message).
    """
    if code is not None and not isinstance(code, int):
        return
    threading = sys.modules.get("threading")  # not imported: no thread was started
    if threading is not None and threading.active_count() > 1:
        return
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.active_children():
        return
    try:
        logging = sys.modules.get("logging")
        if logging is not None:
            logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # a closed or broken stream: let the normal exit report it
    os._exit(code or 0)
