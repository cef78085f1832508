"""Options shared by batchstore's commands: DCMTK's general options, logging, and the TLS options that are
recognised but refused until TLS is implemented.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

LOG_LEVELS = {
    "fatal": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}

# (declarations, nargs) of the DCMTK TLS options; any of them given is a usage error for now.
_TLS_OPTIONS: list[tuple[tuple[str, ...], int]] = [
    (("+tls", "--enable-tls"), 2),
    (("+tla", "--anonymous-tls"), 0),
    (("+ps", "--std-passwd"), 0),
    (("+pw", "--use-passwd"), 1),
    (("-pw", "--null-passwd"), 0),
    (("-pem", "--pem-keys"), 0),
    (("-der", "--der-keys"), 0),
    (("+cf", "--add-cert-file"), 1),
    (("+cd", "--add-cert-dir"), 1),
    (("+crl", "--add-crl-file"), 1),
    (("+crv", "--enable-crl-vfy"), 0),
    (("+cra", "--enable-crl-all"), 0),
    (("+ph", "--list-profiles"), 0),
    (("+pg", "--profile-8996"), 0),
    (("+pm", "--profile-8996-mod"), 0),
    (("+py", "--profile-bcp195-nd"), 0),
    (("+px", "--profile-bcp195"), 0),
    (("+pz", "--profile-bcp195-ex"), 0),
    (("+pb", "--profile-basic"), 0),
    (("+pa", "--profile-aes"), 0),
    (("+pn", "--profile-null"), 0),
    (("+cc", "--list-ciphers"), 0),
    (("+cs", "--cipher"), 1),
    (("+dp", "--dhparam"), 1),
    (("--no-sni",), 0),
    (("--request-sni",), 1),
    (("--expect-sni",), 1),
    (("+rs", "--seed"), 1),
    (("+ws", "--write-seed"), 0),
    (("+wf", "--write-seed-file"), 1),
    (("-rc", "--require-peer-cert"), 0),
    (("-vc", "--verify-peer-cert"), 0),
    (("-ic", "--ignore-peer-cert"), 0),
]


def _reject_tls(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value not in (None, False, ()) and not ctx.resilient_parsing:
        raise click.UsageError(
            f"TLS is not supported yet (option {param.opts[0]}); "
            "use a TLS tunnel (e.g. stunnel) in front of batchstore for now"
        )
    return value


def tls_options(skip: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Add the DCMTK TLS options to a command: each one, if given, fails with a clear message.

    ``-tls/--disable-tls`` (the default, plain TCP) is accepted.
    """

    def decorate(fn: Callable) -> Callable:
        fn = click.option("-tls", "--disable-tls", is_flag=True, hidden=True, expose_value=False)(fn)
        for decls, nargs in _TLS_OPTIONS:
            if decls[0] in skip:
                continue
            name = "tls_" + decls[-1].lstrip("-+").replace("-", "_")
            extra: dict[str, Any] = {"is_flag": True} if nargs == 0 else {"nargs": nargs}
            fn = click.option(*decls, name, hidden=True, expose_value=False, callback=_reject_tls, **extra)(
                fn
            )
        return fn

    return decorate


def logging_options(fn: Callable) -> Callable:
    """DCMTK's ``-q -v -d -ll -lc`` options (and ``--arguments``)."""
    for decorator in reversed(
        [
            click.option("-q", "--quiet", is_flag=True, help="Quiet mode: print no warnings and errors."),
            click.option("-v", "--verbose", is_flag=True, help="Verbose mode: print processing details."),
            click.option("-d", "--debug", is_flag=True, help="Debug mode: print debug information."),
            click.option(
                "-ll",
                "--log-level",
                type=click.Choice(list(LOG_LEVELS), case_sensitive=False),
                help="Use this level for the logger.",
            ),
            click.option(
                "-lc",
                "--log-config",
                type=click.Path(exists=True, dir_okay=False),
                help="Logging configuration file (Python logging.config file format).",
            ),
            click.option("--arguments", is_flag=True, help="Print the expanded command line arguments."),
        ]
    ):
        fn = decorator(fn)
    return fn


def input_options(fn: Callable) -> Callable:
    """storescu's input options: read mode ``+f +fo -f`` and directory scanning ``+sd +sp +r -r``."""
    for decorator in reversed(
        [
            click.option(
                "+f",
                "--read-file",
                "read_mode",
                flag_value="auto",
                default=True,
                help="Read file format or data set (default).",
            ),
            click.option(
                "+fo", "--read-file-only", "read_mode", flag_value="file-only", help="Read file format only."
            ),
            click.option(
                "-f",
                "--read-dataset",
                "read_mode",
                flag_value="dataset",
                help="Read data set without file meta information.",
            ),
            click.option("+sd", "--scan-directories", is_flag=True, help="Scan directories for input files."),
            click.option(
                "+sp", "--scan-pattern", metavar="PATTERN", help="Pattern for file name matching (with +sd)."
            ),
            click.option(
                "+r/-r", "--recurse/--no-recurse", default=False, help="Recurse within specified directories."
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


def setup_logging(
    quiet: bool,
    verbose: bool,
    debug: bool,
    log_level: str | None,
    log_config: str | None,
    arguments: bool = False,
) -> int:
    """Configure the ``batchstore`` logger from the general options; return the level in force."""
    if arguments:
        expanded = click.get_current_context().find_root().obj or sys.argv[1:]
        click.echo("expanded command line arguments:\n" + "\n".join(expanded), err=True)
    level = logging.WARNING
    if quiet:
        level = logging.CRITICAL
    if verbose:
        level = logging.INFO
    if debug:
        level = logging.DEBUG
    if log_level:
        level = LOG_LEVELS[log_level.lower()]
    if log_config:
        _configure_from_file(log_config)
    else:
        logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("batchstore").setLevel(level)
    return level


def _configure_from_file(path: str) -> None:
    """``-lc FILE``: a Python `logging.config` file; anything else ends the run with one line, exit 2.

    DCMTK's own ``logger.cfg`` files are log4cplus properties (``log4cplus.rootLogger = ...``), which
    `logging.config` cannot read: they are recognised and named as such.
    """
    import configparser
    from logging import config as logging_config  # only with -lc

    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        _usage_exit(f"-lc/--log-config: cannot read {path}: {exc.strerror or exc}")
    if any(line.strip().startswith("log4cplus.") for line in text.splitlines()):
        _usage_exit(
            f"-lc/--log-config: {path} is a DCMTK (log4cplus) logger configuration; batchstore reads "
            "Python logging.config files ([loggers], [handlers], [formatters] sections)"
        )
    try:
        logging_config.fileConfig(path, disable_existing_loggers=False)
    except (configparser.Error, KeyError, ValueError, TypeError, AttributeError, ImportError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _usage_exit(f"-lc/--log-config: {path} is not a usable Python logging configuration: {reason}")


def _usage_exit(message: str) -> NoReturn:
    click.echo(f"batchstore: {message}", err=True)
    sys.exit(2)
