"""``batchstore load``: load-test a Storage SCP with storescu's association and input options.

The association, proposal, input, user identity and TLS options are ``send``'s own option objects (one
definition, the same spellings and checks); the options of the load test itself are defined here.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from typing import Any

import click

from .. import __version__
from ..loadgen.figures import EXIT_NO_INPUT, EXIT_NOTHING, Level
from ..loadgen.run import LoadError, LoadOptions, NoInput, PeerUnavailable, RemotePeerRefused
from ..sender.plan import PlanOptions
from ..sender.report import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE
from ..sender.scu import AssociationOptions
from . import send as send_cli
from .common import tls_settings
from .dcmtk import DcmtkCommand

#: ``send`` options that ``load`` shares (by parameter name); TLS options are shared too.
SHARED = {
    "quiet", "verbose", "debug", "log_level", "log_config", "arguments", "verbose_pc",
    "read_mode", "scan_directories", "scan_pattern", "recurse",
    "family", "aetitle", "call", "config_file", "proposal", "required", "combine", "decompress",
    "user", "password", "empty_password", "kerberos", "saml", "jwt", "pos_response",
    "timeout", "socket_timeout", "acse_timeout", "dimse_timeout", "max_pdu", "max_send_pdu",
    "invent_instance", "invent_series", "invent_study", "invent_patient",
}  # fmt: skip
_TLS_HIDDEN = {"disable_tls", "list_profiles", "list_ciphers"}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h)?\s*$")
_UNIT = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(
    ctx: click.Context | None, param: click.Parameter | None, value: str | None
) -> float | None:
    """``60``, ``60s``, ``1.5m``, ``500ms``, ``1h`` -> seconds."""
    if value is None:
        return None
    match = _DURATION.match(value)
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration (e.g. 60s, 2m, 500ms)", ctx, param)
    return float(match.group(1)) * _UNIT[match.group(2)]


def parse_rate(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> float | None:
    """``200``, ``200/s``, ``12000/m`` -> requests per second."""
    if value is None:
        return None
    match = re.match(r"^\s*(\d+(?:\.\d*)?)\s*(?:/\s*(s|m|min|h))?\s*$", value)
    if not match or float(match.group(1)) <= 0:
        raise click.BadParameter(f"{value!r} is not a rate above 0 (e.g. 200/s)", ctx, param)
    return float(match.group(1)) / _UNIT[match.group(2) or "s"]


def parse_levels(ctx: click.Context | None, param: click.Parameter | None, value: str) -> tuple[int, ...]:
    """``1,2,4,8`` -> (1, 2, 4, 8)."""
    try:
        levels = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        levels = ()
    if not levels or min(levels) < 1 or max(levels) > 999:
        raise click.BadParameter(
            f"{value!r}: give numbers of associations from 1 to 999, e.g. 1,2,4,8", ctx, param
        )
    return levels


class _Progress:
    """One tqdm line per level: elapsed seconds of the measured window (or C-STOREs with --count).

    While a level runs the line shows live counts (sampled four times a second, so approximate around the
    end of the warm-up); when it ends, the level's exact figures.
    """

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.by_count = False

    def start_level(self, concurrency: int, seconds: float | None, count: int | None) -> None:
        from tqdm import tqdm

        self.by_count = seconds is None
        total = count if self.by_count else seconds
        unit = "C-STORE" if self.by_count else "s"
        self.bar = tqdm(
            total=total,
            desc=f"{concurrency:>3} assoc",
            unit=unit,
            disable=None if self.enabled is None else not self.enabled,
            bar_format="{desc}: {percentage:3.0f}%|{bar:20}| "
            + ("{n:.0f}/{total:.0f}" if self.by_count else "{n:.1f}/{total:.1f}")
            + " {unit}{postfix}",
            leave=True,
        )

    def update(self, elapsed: float, completed: int, failed: int) -> None:
        if self.bar is None:
            return
        if elapsed < 0:
            self.bar.set_postfix_str(f"warm-up, {completed} C-STOREs, {failed} failed", refresh=True)
            return
        target = completed if self.by_count else min(elapsed, self.bar.total)
        self.bar.n = max(self.bar.n, target)
        rate = completed / elapsed if elapsed > 0 else 0.0
        self.bar.set_postfix_str(f"{completed} C-STOREs, {rate:.0f}/s, {failed} failed", refresh=True)

    def end_level(self, level: Level) -> None:
        if self.bar is None:
            return
        lat = level.latency_ms
        self.bar.set_postfix_str(
            f"{level.stores_per_s:.0f} C-STORE/s, {level.mb_per_s:.1f} MB/s, p50 {lat['p50']:.2f} ms, "
            f"p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms, {level.failed} failed",
            refresh=False,
        )
        self.bar.close()
        self.bar = None


@click.command("load", cls=DcmtkCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(
    __version__, "--version", prog_name="batchstore", help="Print version information and exit."
)
@click.argument("peer")
@click.argument("port", type=click.IntRange(1, 65535))
@click.argument("dcmfile_in", nargs=-1, metavar="DCMFILE-IN...")
@click.option(
    "--duration",
    callback=parse_duration,
    help="Measured time per level (60s, 2m; default 10s without --count).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    help="Measured C-STOREs per level (stops at --duration too, if given).",
)
@click.option(
    "--warmup",
    callback=parse_duration,
    default="0",
    help="Time per level before measuring (left out of the figures).",
)
@click.option(
    "--rate",
    callback=parse_rate,
    help="Open loop: requests per second over all associations (200/s); latency from each request's scheduled time.",
)
@click.option(
    "--concurrency",
    callback=parse_levels,
    default="1",
    show_default=True,
    help="Associations per level, one level each: 1,2,4,8,16.",
)
@click.option(
    "--keep-uids",
    is_flag=True,
    help="Send the files' own UIDs (default: fresh UIDs per C-STORE, storescu's +II).",
)
@click.option(
    "--stores-per-association",
    type=click.IntRange(min=0),
    default=0,
    help="Release and associate again after this many C-STOREs (0: one association per level).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    help="Write every figure and the raw histograms as JSON.",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False),
    help="Write a self-contained HTML report with charts.",
)
@click.option(
    "--i-know-this-is-a-load-test",
    "allow_remote",
    is_flag=True,
    help="Allow a peer that is not on this machine (loopback).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress line per level (default: on when stderr is a terminal).",
)
@click.pass_context
def command(ctx: click.Context, **kw: Any) -> None:
    """Load-test a Storage SCP: C-STOREs/s, MB/s and latency percentiles per number of associations.

    PEER PORT DCMFILE-IN...: the peer's host name and port, and the files (or directories with +sd) to send
    over and over again, each with fresh UIDs.
    """
    profile = send_cli.storescu_options(kw)
    if kw["keep_uids"] and (
        kw["invent_instance"] or kw["invent_series"] or kw["invent_study"] or kw["invent_patient"]
    ):
        raise click.UsageError("--keep-uids cannot be combined with +II/+IR/+IS/+IP")
    options = LoadOptions(
        association=AssociationOptions(
            host=str(kw["peer"]),
            port=int(kw["port"]),
            calling_ae=str(kw["aetitle"]),
            called_ae=str(kw["call"]),
            family=send_cli.FAMILIES[str(kw["family"])],
            max_pdu=int(kw["max_pdu"]),
            max_send_pdu=int(kw["max_send_pdu"] or 0),
            connect_timeout=kw["timeout"],
            socket_timeout=float(kw["socket_timeout"]) or None,
            acse_timeout=float(kw["acse_timeout"]),
            dimse_timeout=kw["dimse_timeout"],
            user_identity=send_cli._user_identity(kw),
            tls=tls_settings(kw, server=False),
        ),
        scan_directories=bool(kw["scan_directories"]),
        recurse=bool(kw["recurse"]),
        pattern=kw["scan_pattern"],
        read_mode=str(kw["read_mode"]),
        plan=PlanOptions(
            proposal=str(kw["proposal"]),
            combine=bool(kw["combine"]),
            required=bool(kw["required"]),
            profile_contexts=profile,
            decompress=str(kw["decompress"]),
        ),
        concurrency=kw["concurrency"],
        duration=kw["duration"],
        count=kw["count"],
        warmup=float(kw["warmup"] or 0.0),
        rate=kw["rate"],
        fresh_uids=not kw["keep_uids"],
        series_after=int(kw["invent_series"] or 100),
        study_after=int(kw["invent_study"] or 50),
        patient_after=int(kw["invent_patient"] or 25),
        stores_per_association=int(kw["stores_per_association"]),
        allow_remote=bool(kw["allow_remote"]),
    )
    from ..api import load

    show = kw["progress"]
    progress = _Progress(False if kw["quiet"] and show is None else show)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        report = load(kw["dcmfile_in"], str(kw["peer"]), int(kw["port"]), options, progress=progress)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except NoInput as exc:
        click.echo(f"batchstore: {exc}", err=True)
        sys.exit(EXIT_NO_INPUT)
    except PeerUnavailable as exc:
        click.echo(f"batchstore: {exc}", err=True)
        sys.exit(EXIT_NOTHING)
    except RemotePeerRefused as exc:
        click.echo(f"batchstore: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except LoadError as exc:
        click.echo(f"batchstore: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    for path, write in ((kw["json_path"], report.write_json), (kw["html_path"], _write_html(report))):
        if path:
            try:
                write(str(path))
            except OSError as exc:
                click.echo(f"batchstore: cannot write {path}: {exc.strerror}", err=True)
                sys.exit(EXIT_ERROR)
    if not kw["quiet"]:
        click.echo(report.table())
    sys.exit(EXIT_INTERRUPTED if report.interrupted else report.exit_code())


def _write_html(report: Any) -> Any:
    def write(path: str) -> None:
        from ..loadgen.html import write_html

        write_html(report, path)

    return write


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


for _param in send_cli.command.params:
    if _param.name in SHARED or _param.name in _TLS_HIDDEN or (_param.name or "").startswith("tls_"):
        command.params.append(_param)
