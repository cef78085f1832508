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

# (declarations, nargs) of the DCMTK TLS options; `tls_settings` turns what was given into `TLSOptions`.
_TLS_OPTIONS: list[tuple[tuple[str, ...], int]] = [
    (("+tls", "--enable-tls"), 2),
    (("+tla", "--anonymous-tls"), 0),
    (("+ps", "--std-passwd"), 0),
    (("+pw", "--use-passwd"), 1),
    (("-pw", "--null-passwd"), 0),
    (("-pem", "--pem-keys"), 0),
    (("-der", "--der-keys"), 0),
    (("+cf", "--add-cert-file"), -1),
    (("+cd", "--add-cert-dir"), -1),
    (("+crl", "--add-crl-file"), -1),
    (("+crv", "--enable-crl-vfy"), 0),
    (("+cra", "--enable-crl-all"), 0),
    (("+pg", "--profile-8996"), 0),
    (("+pm", "--profile-8996-mod"), 0),
    (("+py", "--profile-bcp195-nd"), 0),
    (("+px", "--profile-bcp195"), 0),
    (("+pz", "--profile-bcp195-ex"), 0),
    (("+pb", "--profile-basic"), 0),
    (("+pa", "--profile-aes"), 0),
    (("+pn", "--profile-null"), 0),
    (("+cs", "--cipher"), -1),
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

#: profile option -> `batchstore.net.tls.PROFILES` key
_TLS_PROFILES = {
    "profile_8996": "8996",
    "profile_8996_mod": "8996-mod",
    "profile_bcp195_nd": "bcp195-nd",
    "profile_bcp195": "bcp195",
    "profile_bcp195_ex": "bcp195-ex",
    "profile_basic": "basic",
    "profile_aes": "aes",
    "profile_null": "null",
}


def _tls_name(decls: tuple[str, ...]) -> str:
    return "tls_" + decls[-1].lstrip("-+").replace("-", "_")


def _list_profiles(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if not value or ctx.resilient_parsing:
        return
    from ..net.tls import PROFILES

    for key, profile in PROFILES.items():
        default = " (default)" if key == "8996" else ""
        click.echo(f"  {profile.option}  {profile.title}{default}")
    ctx.exit(0)


def _list_ciphers(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if not value or ctx.resilient_parsing:
        return
    from ..net.tls import supported_ciphersuites

    click.echo("Supported TLS ciphersuites are:")
    for name in supported_ciphersuites():
        click.echo(f"  {name}")
    ctx.exit(0)


def tls_options(skip: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Add DCMTK's TLS options to a command (``-tls``, the default, is plain TCP); `tls_settings` reads
    them. ``+ph`` and ``+cc`` list the profiles and ciphersuites and exit."""

    def decorate(fn: Callable) -> Callable:
        fn = click.option("-tls", "--disable-tls", is_flag=True, hidden=True, expose_value=False)(fn)
        fn = click.option(
            "+ph", "--list-profiles", is_flag=True, hidden=True, expose_value=False, is_eager=True, callback=_list_profiles
        )(fn)
        fn = click.option(
            "+cc", "--list-ciphers", is_flag=True, hidden=True, expose_value=False, is_eager=True, callback=_list_ciphers
        )(fn)
        for decls, nargs in _TLS_OPTIONS:
            if decls[0] in skip:
                continue
            extra: dict[str, Any]
            if nargs == 0:
                extra = {"is_flag": True}
            elif nargs < 0:
                extra = {"multiple": True}
            else:
                extra = {"nargs": nargs}
            fn = click.option(*decls, _tls_name(decls), hidden=True, **extra)(fn)
        return fn

    return decorate


def tls_settings(kw: dict[str, Any], server: bool) -> Any:
    """The `batchstore.net.tls.TLSOptions` of a command line, or None for plain TCP.

    ``+ps`` (the default) asks for the password of an encrypted key on the terminal, as DCMTK does; without
    a terminal the key needs ``+pw`` or ``-pw``. Options that need ``+tls`` without it are usage errors.

    Raises
    ------
    click.UsageError
        For an option combination DCMTK refuses, or a TLS setting that cannot be used (an unreadable key,
        a wrong password, a certificate that does not match its key...).
    """
    enable = kw.get("tls_enable_tls")
    anonymous = bool(kw.get("tls_anonymous_tls"))
    given = [
        decls[0]
        for decls, _n in _TLS_OPTIONS
        if decls[0] not in ("+tls", "+tla") and kw.get(_tls_name(decls)) not in (None, False, ())
    ]
    if not enable and not anonymous:
        if given:
            raise click.UsageError(f"{given[0]} only with +tls/--enable-tls" + ("" if server else " or +tla"))
        return None
    if enable and anonymous:
        raise click.UsageError("+tls and +tla cannot be combined")
    if server and anonymous:
        raise click.UsageError("+tla: a receiver needs a certificate (+tls KEY CERT)")
    side_only = "--request-sni" if server else "--expect-sni"
    if side_only in given:
        raise click.UsageError(f"{side_only} is an option of the {'sending' if server else 'receiving'} side")
    profiles = [key for key in _TLS_PROFILES if kw.get("tls_" + key)]
    if len(profiles) > 1:
        raise click.UsageError("choose one TLS security profile (+pg, +pm, +py, +px, +pz, +pb, +pa, +pn)")
    modes = [m for m in ("require_peer_cert", "verify_peer_cert", "ignore_peer_cert") if kw.get("tls_" + m)]
    if len(modes) > 1:
        raise click.UsageError("choose one of -rc, -vc, -ic")
    if (kw.get("tls_write_seed") or kw.get("tls_write_seed_file")) and not kw.get("tls_seed"):
        raise click.UsageError("+ws/+wf only with +rs/--seed")
    from ..net.tls import TLSOptions, TLSSetupError, client_context, key_is_encrypted, server_context

    key, cert = (enable or (None, None))
    password: str | None = kw.get("tls_use_passwd")
    if kw.get("tls_null_passwd"):
        password = ""
    if key and password is None and not kw.get("tls_der_keys") and key_is_encrypted(key):
        if not sys.stdin.isatty():
            raise click.UsageError(f"private key {key} is encrypted: give its password with +pw (or -pw)")
        password = click.prompt(f"Password for {key}", hide_input=True, err=True)
    crl_check = "chain" if kw.get("tls_enable_crl_all") else "leaf" if kw.get("tls_enable_crl_vfy") else "none"
    verify = {"verify_peer_cert": "verify", "ignore_peer_cert": "ignore"}.get(modes[0], "require") if modes else "require"
    seed = kw.get("tls_seed")
    write_seed = kw.get("tls_write_seed_file") or (seed if kw.get("tls_write_seed") else None)
    options = TLSOptions(
        key_file=key,
        cert_file=cert,
        password=password,
        der=bool(kw.get("tls_der_keys")),
        ca_files=tuple(kw.get("tls_add_cert_file") or ()),
        ca_dirs=tuple(kw.get("tls_add_cert_dir") or ()),
        crl_files=tuple(kw.get("tls_add_crl_file") or ()),
        crl_check=crl_check,
        profile=_TLS_PROFILES[profiles[0]] if profiles else "8996",
        ciphers=tuple(kw.get("tls_cipher") or ()),
        dhparam=kw.get("tls_dhparam"),
        verify=verify,
        request_sni=None if server else kw.get("tls_request_sni"),
        expect_sni=kw.get("tls_expect_sni") if server else None,
        seed_file=seed,
        write_seed_file=write_seed,
    )
    try:  # every file and password is checked now, once, not in each worker or child
        (server_context if server else client_context)(options)
    except TLSSetupError as exc:
        raise click.UsageError(f"TLS: {exc}") from None
    return options


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


def require_verbose_for_pc(verbose_pc: bool, level: int, log_config: str | None) -> None:
    """``+v`` shows presentation contexts in verbose mode: without it, a usage error, as in DCMTK."""
    if verbose_pc and not log_config and level > logging.INFO:
        raise click.UsageError("+v/--verbose-pc only allowed with verbose mode (-v, -d or -ll info/debug/trace)")


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
