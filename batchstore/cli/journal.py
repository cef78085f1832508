"""``batchstore journal FILE``: what a send journal says (done, failed, pending, last run), and its report."""

from __future__ import annotations

import sys

import click

from ..sender.journal import Journal, JournalError, JournalReport
from ..sender.report import EXIT_ERROR


@click.command("journal", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("journal_path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="Export the per-file report (latest outcome of every input file, with the run and time that "
    "recorded it) as .json or .csv.",
)
def command(journal_path: str, report_path: str | None) -> None:
    """Summarise the send journal FILE: done/failed/pending counts, storage commitment, and the last run.

    Exit status: 0 when every file is done (and committed, once commitment was requested), 5 when some are
    pending or failed transiently (resume may help), 6 when permanent failures remain, 7 when every file is
    stored but the peer has not committed them all, 1 when FILE is not a journal.
    """
    try:
        with Journal(journal_path, create=False) as journal:
            summary = journal.summary()
            records = journal.records() if report_path else []
    except JournalError as exc:
        click.echo(f"batchstore: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    click.echo("\n".join(summary.lines()))
    if report_path:
        report = JournalReport(journal_path=journal_path)
        report.input_count = len(records)
        try:
            report.write(report_path, records)
        except OSError as exc:
            click.echo(f"batchstore: cannot write report {report_path}: {exc.strerror}", err=True)
            sys.exit(EXIT_ERROR)
    sys.exit(summary.exit_code())
