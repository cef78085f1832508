"""The storage commitment options and steps that ``batchstore commit`` and ``batchstore send --commit``
share: `commit_options`, `settings`, `run_commit`.

A module of their own so that ``send`` does not build the ``commit`` command, with its TLS options, at
every start (about 1 ms; docs/design.md, "Small runs").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..sender.report import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NOT_COMMITTED, EXIT_OK

if TYPE_CHECKING:
    from ..net.tls import TLSOptions
    from ..sender.commitment import CommitOptions, CommitResult


def commit_options(fn: Callable) -> Callable:
    """The ``--commit-*`` options (of ``commit`` and ``send``)."""
    for decorator in reversed(
        [
            click.option(
                "--commit-batch",
                type=click.IntRange(1, 100000),
                default=500,
                show_default=True,
                help="SOP instances per storage commitment request (one transaction each).",
            ),
            click.option(
                "--commit-timeout",
                type=click.FloatRange(min=0.1),
                default=60.0,
                show_default=True,
                help="Seconds to wait for the commitment reports after the last request.",
            ),
            click.option(
                "--commit-retries",
                type=click.IntRange(min=0),
                default=1,
                show_default=True,
                help="Requests again (new transaction) for a report that does not come in time.",
            ),
            click.option(
                "--commit-port",
                type=click.IntRange(0, 65535),
                help="Listen on this port for reports the peer sends on an association it opens (the peer "
                "must know this host, port and AE title); without it, reports come on the same association.",
            ),
            click.option(
                "--commit-host",
                default="0.0.0.0",
                show_default=True,
                help="Address the --commit-port listener binds.",
            ),
            click.option(
                "--commit-aet",
                metavar="AET",
                help="AE title of the --commit-port listener (default: the calling AE title, -aet).",
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


def settings(kw: dict[str, Any], tls: TLSOptions | None = None) -> CommitOptions:
    """The commitment options of `kw`; `tls`: the run's TLS settings, which the report listener uses too."""
    aet = kw["commit_aet"]
    if aet is not None and not 1 <= len(aet) <= 16:
        raise click.BadParameter("must be 1 to 16 characters", param_hint="--commit-aet")
    if kw["commit_port"] is not None and tls is not None and not (tls.key_file and tls.cert_file):
        raise click.BadParameter(
            "with TLS the report listener is a TLS server: it needs +tls with a private key and certificate "
            "(+tla has none)",
            param_hint="--commit-port",
        )
    from ..sender.commitment import CommitOptions  # only with --commit or batchstore commit

    return CommitOptions(
        batch_size=int(kw["commit_batch"]),
        timeout=float(kw["commit_timeout"]),
        retries=int(kw["commit_retries"]),
        port=kw["commit_port"],
        host=str(kw["commit_host"]),
        ae_title=aet,
    )


def run_commit(journal_path: str, ask: Callable[[], CommitResult], quiet: bool) -> int:
    """Run `ask` (a commitment run on the journal); print its result; return the exit code the journal's
    states mean (0: everything stored and committed, 7: stored, not all committed...)."""
    from ..sender.journal import Journal, JournalError  # sqlite3 and the journal only when committing

    try:
        result = ask()
        with Journal(journal_path, create=False) as journal:
            summary = journal.summary()
    except JournalError as exc:
        click.echo(f"batchstore: {exc}", err=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # what was answered is journaled; a rerun asks for the rest
    if not quiet:
        click.echo("\n".join(result.lines()), err=True)
    code = summary.exit_code()
    if code == EXIT_OK and not result.complete:
        return EXIT_NOT_COMMITTED  # e.g. a peer that does not do storage commitment: nothing was asked
    return code
