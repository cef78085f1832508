"""``batchstore commit JOURNAL``: ask the destination of a send journal to commit the files stored there
(Storage Commitment Push Model), and journal its answer; its options and steps, which ``batchstore send
--commit`` shares, are in `commit_options`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from ..api import commit
from ..sender.report import EXIT_USAGE
from .commit_options import commit_options, run_commit, settings
from .common import logging_options, setup_logging, tls_options, tls_settings

if TYPE_CHECKING:
    from ..sender.commitment import CommitResult


@click.command("commit", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("journal_path", metavar="JOURNAL", type=click.Path(dir_okay=False))
@logging_options
@click.option("-aet", "--aetitle", default="STORESCU", show_default=True, help="My calling AE title.")
@click.option("-aec", "--call", help="Called AE title of the peer (default: the journal's destination).")
@click.option("-to", "--timeout", type=click.IntRange(min=1), help="Timeout for connection requests (s).")
@click.option(
    "-ta", "--acse-timeout", type=click.IntRange(min=1), default=30, help="Timeout for ACSE messages (s)."
)
@click.option(
    "-ts", "--socket-timeout", type=click.IntRange(min=0), default=60, help="Socket timeout (s, 0: none)."
)
@commit_options
@tls_options()
def command(journal_path: str, **kw: Any) -> None:
    """Ask the destination of the send journal JOURNAL (its host, port and called AE title) to commit every
    stored file not committed yet, and journal the answers.

    Exit status: 0 when every file is stored and committed, 7 when some stored files are not committed
    (failed, or no report), 5/6 when files are not stored yet, 1 when JOURNAL is not a journal.
    """
    setup_logging(kw["quiet"], kw["verbose"], kw["debug"], kw["log_level"], kw["log_config"], kw["arguments"])
    try:
        tls = tls_settings(kw, server=False)
        options = settings(kw, tls)
    except (ValueError, click.BadParameter) as exc:
        click.echo(f"batchstore: {exc}", err=True)
        sys.exit(EXIT_USAGE)

    def ask() -> CommitResult:
        return commit(
            journal_path,
            str(kw["aetitle"]),
            kw["call"],
            options,
            acse_timeout=float(kw["acse_timeout"]),
            socket_timeout=float(kw["socket_timeout"]) or None,
            connect_timeout=kw["timeout"],
            tls=tls,
        )

    sys.exit(run_commit(journal_path, ask, bool(kw["quiet"])))
