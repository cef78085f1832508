"""``batchstore send``: storescu's command line plus ``-j/--workers``, ``--report`` and friends."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from typing import Any

import click

from .. import __version__
from ..api import SendOptions, send
from ..dicom.transcode import EditOptions
from ..dicom.uids import PROPOSAL_FLAGS
from ..net.acse import PresentationContextProposal, UserIdentity
from ..sender.plan import PlanOptions
from ..sender.report import DCMTK_EXIT_ERROR, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE
from ..sender.scu import AssociationOptions
from .commit_options import commit_options, run_commit
from .commit_options import settings as commit_settings
from .common import (
    input_options,
    logging_options,
    require_verbose_for_pc,
    setup_logging,
    tls_options,
    tls_settings,
)
from .dcmtk import DcmtkCommand
from .progress import Progress

log = logging.getLogger("batchstore")

#: storescu's ``-x…`` proposal options (``-x=`` is the default, declared below as --propose-uncompr).
PROPOSAL_OPTIONS = [flag for flag in PROPOSAL_FLAGS if flag[0] != "-x="]


def _pdu_range(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and not 4096 <= value <= 131072:
        raise click.BadParameter("must be between 4096 and 131072", ctx, param)
    return value


def _file_bytes(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {what} file {path}: {exc.strerror}") from exc


#: batchstore's own exit codes -> storescu 3.6.7's, for what fails before anything is sent
#: (``--dcmtk-exit-codes``): storescu exits 1 for every usage and setup error.
_DCMTK_EARLY_EXIT = {EXIT_USAGE: DCMTK_EXIT_ERROR, EXIT_ERROR: DCMTK_EXIT_ERROR}


class _SendCommand(DcmtkCommand):
    """``send`` with ``--dcmtk-exit-codes`` applied to usage errors as well: click exits 2 for those,
    storescu 1."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["dcmtk_exit_codes"] = "--dcmtk-exit-codes" in args
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if ctx.meta["dcmtk_exit_codes"]:
                exc.exit_code = DCMTK_EXIT_ERROR
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if ctx.meta.get("dcmtk_exit_codes"):
                exc.exit_code = DCMTK_EXIT_ERROR
            raise
        except SystemExit as exc:
            # before the run (a TLS setting, a journal bound elsewhere): batchstore's 1/2 -> storescu's 1
            early = not ctx.meta.get("send_done") and isinstance(exc.code, int)
            if early and ctx.meta.get("dcmtk_exit_codes") and exc.code in _DCMTK_EARLY_EXIT:
                raise SystemExit(_DCMTK_EARLY_EXIT[int(exc.code)]) from None  # type: ignore[arg-type]
            raise


@click.command(
    "send",
    cls=_SendCommand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.version_option(
    __version__, "--version", prog_name="batchstore", help="Print version information and exit."
)
@click.argument("peer")
@click.argument("port", type=click.IntRange(1, 65535))
@click.argument("dcmfile_in", nargs=-1, metavar="DCMFILE-IN...")
@logging_options
@click.option("+v", "--verbose-pc", is_flag=True, help="Show presentation contexts in verbose mode.")
# input options
@input_options
@click.option("+rn/-rn", "--rename/--no-rename", default=False, help="Append .done/.bad to processed files.")
# network options
@click.option("-i4", "--ipv4", "family", flag_value="4", default=True, help="Use IPv4 only (default).")
@click.option("-i6", "--ipv6", "family", flag_value="6", help="Use IPv6 only.")
@click.option("-i0", "--ip-auto", "family", flag_value="0", help="Use DNS lookup to determine IP protocol.")
@click.option("-aet", "--aetitle", default="STORESCU", show_default=True, help="My calling AE title.")
@click.option("-aec", "--call", default="ANY-SCP", show_default=True, help="Called AE title of peer.")
@click.option(
    "-xf", "--config-file", nargs=2, metavar="FILE PROFILE", help="Use profile PROFILE from config file FILE."
)
@click.option(
    "--propose-uncompr",
    "proposal",
    flag_value="uncompr",
    default=True,
    help="-x=: all uncompressed TS, explicit VR local byte order first (default).",
)
@click.option(
    "-R",
    "--required",
    is_flag=True,
    help="Propose only required presentation contexts (always so in batchstore).",
)
@click.option("+C", "--combine", is_flag=True, help="Combine proposed transfer syntaxes in one context.")
@click.option(
    "+u/-u",
    "--enable-new-vr/--disable-new-vr",
    default=True,
    help="Enable (default) or disable new VRs (UN/UT), converting to OB.",
)
@click.option(
    "+cl", "--compression-level", type=click.IntRange(0, 9), default=6, help="Deflate level (with -xd)."
)
@click.option(
    "--decompress-never",
    "decompress",
    flag_value="never",
    help="Never decompress: a compressed file whose syntax the peer rejects fails (dcmsend).",
)
@click.option(
    "--decompress-lossless",
    "decompress",
    flag_value="lossless",
    default=True,
    help="Decompress losslessly compressed files when the peer rejects their syntax (default, dcmsend).",
)
@click.option(
    "--decompress-lossy",
    "decompress",
    flag_value="lossy",
    help="Also decompress lossy compressed files (JPEG baseline ...); Lossy Image Compression is kept (dcmsend).",
)
@click.option(
    "+rd",
    "--read-dicomdir",
    is_flag=True,
    help="Send the files a DICOMDIR references (a DICOMDIR itself is always skipped; dcmsend).",
)
@click.option("-usr", "--user", help="Authenticate using this user name.")
@click.option("-pwd", "--password", help="Authenticate using this password (with --user).")
@click.option("-epw", "--empty-password", is_flag=True, help="Send empty password (with --user).")
@click.option("-kt", "--kerberos", type=click.Path(), help="Read Kerberos ticket from file.")
@click.option("--saml", type=click.Path(), help="Read SAML request from file.")
@click.option("--jwt", type=click.Path(), help="Read JWT data from file.")
@click.option("-rsp", "--pos-response", is_flag=True, help="Expect positive user identity response.")
@click.option("-to", "--timeout", type=click.IntRange(min=1), help="Timeout for connection requests (s).")
@click.option(
    "-ts",
    "--socket-timeout",
    type=click.IntRange(min=0),
    default=60,
    help="Timeout for network socket (s, 0 for none).",
)
@click.option(
    "-ta", "--acse-timeout", type=click.IntRange(min=1), default=30, help="Timeout for ACSE messages (s)."
)
@click.option("-td", "--dimse-timeout", type=click.IntRange(min=1), help="Timeout for DIMSE messages (s).")
@click.option(
    "-pdu", "--max-pdu", type=int, default=16384, callback=_pdu_range, help="Max receive PDU (4096..131072)."
)
@click.option("--max-send-pdu", type=int, callback=_pdu_range, help="Restrict max send PDU (4096..131072).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, help="Repeat n times.")
@click.option("--abort", is_flag=True, help="Abort association instead of releasing it.")
@click.option("-nh", "--no-halt", is_flag=True, help="Do not halt if unsuccessful store encountered.")
@click.option("-up", "--uid-padding", is_flag=True, help="Silently correct space-padded UIDs.")
@click.option(
    "+II", "--invent-instance", is_flag=True, help="Invent a new SOP instance UID for every image sent."
)
@click.option(
    "+IR",
    "--invent-series",
    type=click.IntRange(min=1),
    help="Invent a new series UID after n images (implies +II).",
)
@click.option(
    "+IS",
    "--invent-study",
    type=click.IntRange(min=1),
    help="Invent a new study UID after n series (implies +II).",
)
@click.option(
    "+IP",
    "--invent-patient",
    type=click.IntRange(min=1),
    help="Invent a new patient after n studies (implies +II).",
)
# batchstore's own options
@click.option(
    "-j",
    "--workers",
    type=click.IntRange(min=1),
    envvar="BATCHSTORE_WORKERS",
    help="Worker processes, each with its own association (default: CPU count).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Files per batch handed to a worker (default: automatic, at most 100).",
)
@click.option(
    "--batch-bytes", type=click.IntRange(min=1), default=64 * 2**20, help="Bytes per batch at most."
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="Write a per-file report (.json or .csv).",
)
@click.option(
    "--journal",
    "journal_path",
    type=click.Path(dir_okay=False),
    help="SQLite journal of every file's outcome; rerun with the same journal to send only what is not done.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Retries of transient failures per file.",
)
@click.option(
    "--retry-wait",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Base wait before a retry (s), exponential with jitter.",
)
@click.option(
    "--retry-budget",
    type=click.FloatRange(min=0),
    default=120.0,
    show_default=True,
    help="Seconds a file may cost before its retries stop: worst case per file is this plus one attempt "
    "(bounded by -ts/-td).",
)
@click.option(
    "--journal-new-destination",
    is_flag=True,
    help="When --journal records another destination (called AE, host, port), start a fresh destination "
    "record in it and send every file again (default: refuse, exit 2).",
)
@click.option(
    "--engine",
    type=click.Choice(["batchstore", "pynetdicom"]),
    default="batchstore",
    show_default=True,
    help="Send path: batchstore (lean synchronous loop, fast) or pynetdicom (its full AE/Association, "
    "the slower reference).",
)
@click.option(
    "--cluster",
    metavar="ADDRESS|local:N",
    default=None,
    help="Run the batches as tasks on a Dask cluster: a running scheduler's address (tcp://HOST:8786), or "
    "local:N for N Dask worker processes on this machine. Inputs must be on storage every worker sees at "
    "the same path; -j bounds the associations across the cluster. Needs batchstore[cluster].",
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: on when stderr is a terminal)."
)
@click.option(
    "--dcmtk-exit-codes",
    is_flag=True,
    help="Exit with the codes storescu 3.6.7 uses (1 for errors, a failure status' high byte, 10 for an "
    "aborted association; 0 with -nh) instead of batchstore's own.",
)
# storage commitment: after the files are stored, ask the peer to commit them (cli/commit_options.py)
@click.option(
    "--commit",
    is_flag=True,
    help="After sending, request storage commitment for the stored files (needs --journal); exit 7 when "
    "the peer does not commit them all.",
)
@commit_options
@tls_options()
@click.pass_context
def command(ctx: click.Context, **kw: Any) -> None:
    """Send DICOM files to a Storage SCP over parallel associations (storescu-compatible).

    PEER PORT DCMFILE-IN...: the peer's host name and port, and the files (or directories with +sd) to send.
    """
    profile = storescu_options(kw)
    files = list(kw["dcmfile_in"])
    tls = tls_settings(kw, server=False)
    commit = commit_settings(kw, tls) if kw["commit"] else None
    if commit is not None and not kw["journal_path"]:
        raise click.UsageError("--commit needs --journal: the journal keeps the commitment transactions")

    identity = _user_identity(kw)

    invent = bool(kw["invent_instance"] or kw["invent_series"] or kw["invent_study"] or kw["invent_patient"])
    edits = EditOptions(
        invent_instance=invent,
        invent_series_after=int(kw["invent_series"] or 100) if invent else 0,
        invent_study_after=int(kw["invent_study"] or 50) if invent else 0,
        invent_patient_after=int(kw["invent_patient"] or 25) if invent else 0,
        uid_padding=bool(kw["uid_padding"]),
        disable_new_vr=not kw["enable_new_vr"],
        compression_level=int(kw["compression_level"]),
    )
    family = FAMILIES[str(kw["family"])]
    # 0: automatic, one per CPU (a small run then needs no worker process: api.send); with --cluster, -j
    # bounds the associations across the cluster (default: one per Dask worker thread)
    workers = int(kw["workers"] or 0)
    options = SendOptions(
        calling_ae=str(kw["aetitle"]),
        called_ae=str(kw["call"]),
        workers=workers,
        family=family,
        scan_directories=bool(kw["scan_directories"]),
        recurse=bool(kw["recurse"]),
        pattern=kw["scan_pattern"],
        read_mode=str(kw["read_mode"]),
        plan=PlanOptions(
            proposal=str(kw["proposal"]),
            combine=bool(kw["combine"]),
            required=bool(kw["required"]),
            batch_bytes=int(kw["batch_bytes"]),
            profile_contexts=profile,
            decompress=str(kw["decompress"]),
        ),
        batch_size=kw["batch_size"],
        max_pdu=int(kw["max_pdu"]),
        max_send_pdu=int(kw["max_send_pdu"] or 0),
        connect_timeout=kw["timeout"],
        socket_timeout=float(kw["socket_timeout"]) or None,
        acse_timeout=float(kw["acse_timeout"]),
        dimse_timeout=kw["dimse_timeout"],
        user_identity=identity,
        tls=tls,
        edits=edits,
        halt_on_failure=not kw["no_halt"],
        abort_at_end=bool(kw["abort"]),
        repeat=int(kw["repeat"]),
        retries=int(kw["retries"]),
        retry_wait=float(kw["retry_wait"]),
        retry_budget=float(kw["retry_budget"]),
        journal_new_destination=bool(kw["journal_new_destination"]),
        rename=bool(kw["rename"]),
        journal=kw["journal_path"],
        engine=str(kw["engine"]),
        read_dicomdir=bool(kw["read_dicomdir"]),
        cluster=kw["cluster"],
    )
    show_progress = kw["progress"]
    if show_progress is None:
        show_progress = None if not kw["quiet"] else False
    progress = Progress(enabled=show_progress, verbose_pc=bool(kw["verbose_pc"]))
    # SIGTERM means what Ctrl-C means: during the dispatch the coordinator turns both into a graceful stop
    # (in-flight C-STOREs finish, associations are released, the journal is flushed, exit 130).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    # --cluster and --commit load their modules only when asked for (start-up of every other send)
    cluster_errors: tuple[type[Exception], ...] = ()
    if kw["cluster"]:
        from ..sender.cluster import ClusterUnavailable

        cluster_errors = (ClusterUnavailable,)
    usage_errors: tuple[type[Exception], ...] = ()  # the journal's, with --journal only
    journal_errors: tuple[type[Exception], ...] = ()
    if kw["journal_path"]:
        from ..sender.journal import DestinationMismatch, JournalError

        usage_errors, journal_errors = (DestinationMismatch,), (JournalError,)
    try:
        report = send(
            files,
            str(kw["peer"]),
            int(kw["port"]),
            options,
            on_outcomes=progress.update,
            on_plan=progress.start,
            on_wait=progress.waiting,
        )
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except cluster_errors + usage_errors as exc:
        click.echo(f"batchstore: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except journal_errors as exc:
        click.echo(f"batchstore: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    finally:
        progress.close()
    if kw["report_path"]:
        try:
            report.write(str(kw["report_path"]))
        except OSError as exc:
            click.echo(f"batchstore: cannot write report {kw['report_path']}: {exc.strerror}", err=True)
            sys.exit(EXIT_ERROR)
    if not kw["quiet"]:
        for outcome in report.outcomes:
            if outcome.category in ("transient", "permanent"):
                log.error("%s: %s", outcome.path, outcome.error)
        click.echo("\n".join(report.summary_lines()), err=True)
    ctx.meta["send_done"] = True
    if kw["dcmtk_exit_codes"]:
        code = report.dcmtk_exit_code(halt_on_failure=not kw["no_halt"])
    else:
        code = report.exit_code()
    if commit is not None and not report.interrupted:
        from ..sender.commitment import commit_journal

        assoc, journal = _commit_association(kw, options), str(kw["journal_path"])
        committed = run_commit(journal, lambda: commit_journal(journal, assoc, commit), bool(kw["quiet"]))
        if code == 0 and committed != 0:
            code = committed  # stored, but not all committed (7)
    sys.exit(code)


def _commit_association(kw: dict, options: SendOptions) -> AssociationOptions:
    """The association of ``--commit``: the send's peer, AE titles, timeouts and TLS."""
    return AssociationOptions(
        host=str(kw["peer"]),
        port=int(kw["port"]),
        calling_ae=options.calling_ae,
        called_ae=options.called_ae,
        family=options.family,
        connect_timeout=options.connect_timeout,
        acse_timeout=options.acse_timeout,
        socket_timeout=options.socket_timeout,
        dimse_timeout=options.dimse_timeout,
        user_identity=options.user_identity,
        tls=options.tls,
    )


#: -i4 / -i6 / -i0 -> the address family to connect with
FAMILIES = {"4": socket.AF_INET, "6": socket.AF_INET6, "0": socket.AF_UNSPEC}


def storescu_options(kw: dict[str, Any]) -> tuple[PresentationContextProposal, ...] | None:
    """What every command taking storescu's options (``send``, ``load``) does first: logging, the checks
    storescu makes of its options (usage errors), and the ``-xf`` profile's contexts (None without)."""
    level = setup_logging(kw["quiet"], kw["verbose"], kw["debug"], kw["log_level"], kw["log_config"], kw["arguments"])
    require_verbose_for_pc(kw["verbose_pc"], level, kw["log_config"])
    if kw["verbose_pc"] and not kw["quiet"]:
        logging.getLogger("batchstore.contexts").setLevel(logging.INFO)  # +v: the proposal's notes (+C)
    if not kw["dcmfile_in"]:
        raise click.UsageError("missing parameter DCMFILE-IN: no files or directories to send")
    if kw["scan_pattern"] and not kw["scan_directories"]:
        raise click.UsageError("+sp/--scan-pattern only works with +sd/--scan-directories")
    if kw["config_file"] and kw["proposal"] != "uncompr":
        raise click.UsageError("-xf/--config-file cannot be combined with a -x proposal option")
    if kw["password"] is not None and not kw["user"]:
        raise click.UsageError("-pwd/--password needs -usr/--user")
    if kw["empty_password"] and not kw["user"]:
        raise click.UsageError("-epw/--empty-password needs -usr/--user")
    if not kw["config_file"]:
        return None
    from ..net.asconfig import ConfigError, load_profile

    try:
        return load_profile(*kw["config_file"])
    except (ConfigError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="-xf/--config-file") from exc


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _user_identity(kw: dict) -> UserIdentity | None:
    positive = bool(kw["pos_response"])
    if kw["user"]:
        if kw["password"] is not None or kw["empty_password"]:
            password = b"" if kw["empty_password"] else str(kw["password"]).encode("utf-8")
            return UserIdentity(2, str(kw["user"]).encode("utf-8"), password, positive)
        return UserIdentity(1, str(kw["user"]).encode("utf-8"), b"", positive)
    for key, kind, what in (("kerberos", 3, "Kerberos ticket"), ("saml", 4, "SAML"), ("jwt", 5, "JWT")):
        data = _file_bytes(kw[key], what)
        if data is not None:
            return UserIdentity(kind, data, b"", positive)
    if positive:
        raise click.UsageError("-rsp/--pos-response needs a user identity (-usr, -kt, --saml or --jwt)")
    return None


for _short, _long, _mode in reversed(PROPOSAL_OPTIONS):
    command.params.insert(
        len(command.params) - 1,
        click.Option(
            [_short, _long, "proposal"],
            flag_value=_mode,
            help=f"Propose the {_mode} transfer syntaxes (storescu {_short}).",
        ),
    )
