"""``batchstore receive``: storescp's command line (every option of its man page) over `server.serve`.

Mutually exclusive DCMTK options (``+xe``/``+xb``, ``+F``/``-F``, ``-ss``/``-su``/``-sp`` …) follow DCMTK's
rule: the rightmost one given wins. Combinations storescp refuses are usage errors (exit code 2), as is a
TLS setting that cannot be used (an unreadable key, a wrong password...).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from .. import __version__
from ..receiver.events import EventOptions
from ..receiver.options import (
    DEFAULT_MAX_ASSOCIATIONS,
    CommitmentOptions,
    ReceiveOptions,
    StorageOptions,
    validate,
)
from ..receiver.server import serve
from .common import logging_options, require_verbose_for_pc, setup_logging, tls_options, tls_settings
from .dcmtk import DcmtkCommand

log = logging.getLogger("batchstore")

_META = "batchstore.receive"


def _choices(ctx: click.Context) -> dict[str, Any]:
    return ctx.meta.setdefault(_META, {})


def _switch(group: str, value: Any, *decls: str, help: str) -> Callable[[Callable], Callable]:
    """A flag that sets `group` to `value`; of several flags of one group the rightmost given wins."""

    def callback(ctx: click.Context, param: click.Parameter, given: bool) -> bool:
        if given:
            _choices(ctx)[group] = value
        return given

    return click.option(*decls, is_flag=True, expose_value=False, callback=callback, help=help)


def _valued(group: str, kind: str, *decls: str, help: str, **kw: Any) -> Callable[[Callable], Callable]:
    """An option with a value that also takes part in a switch group (``+p f i`` vs ``-p``; ``-ss p``…)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            _choices(ctx)[group] = (kind, value)
        return value

    return click.option(*decls, expose_value=False, callback=callback, help=help, **kw)


#: storescp's ``+x…`` options: (short, long, preference in `receiver.negotiation.PREFERRED_TRANSFER_SYNTAXES`, help).
PREFERENCE_OPTIONS = [
    ("+x=", "--prefer-uncompr", "uncompr", "prefer explicit VR local byte order (default)"),
    ("+xe", "--prefer-little", "little", "prefer explicit VR little endian TS"),
    ("+xb", "--prefer-big", "big", "prefer explicit VR big endian TS"),
    ("+xs", "--prefer-lossless", "lossless", "prefer default JPEG lossless TS"),
    ("+xy", "--prefer-jpeg8", "jpeg8", "prefer default JPEG lossy TS for 8 bit data"),
    ("+xx", "--prefer-jpeg12", "jpeg12", "prefer default JPEG lossy TS for 12 bit data"),
    ("+xv", "--prefer-j2k-lossless", "j2k-lossless", "prefer JPEG 2000 lossless TS"),
    ("+xw", "--prefer-j2k-lossy", "j2k-lossy", "prefer JPEG 2000 lossy TS"),
    ("+xt", "--prefer-jls-lossless", "jls-lossless", "prefer JPEG-LS lossless TS"),
    ("+xu", "--prefer-jls-lossy", "jls-lossy", "prefer JPEG-LS lossy TS"),
    ("+xm", "--prefer-mpeg2", "mpeg2", "prefer MPEG2 Main Profile @ Main Level TS"),
    ("+xh", "--prefer-mpeg2-high", "mpeg2-high", "prefer MPEG2 Main Profile @ High Level TS"),
    ("+xn", "--prefer-mpeg4", "mpeg4", "prefer MPEG4 AVC/H.264 High Profile / Level 4.1 TS"),
    ("+xl", "--prefer-mpeg4-bd", "mpeg4-bd", "prefer MPEG4 AVC/H.264 BD-compatible HP / Level 4.1 TS"),
    ("+x2", "--prefer-mpeg4-2-2d", "mpeg4-2-2d", "prefer MPEG4 AVC/H.264 HP / Level 4.2 TS for 2D Videos"),
    ("+x3", "--prefer-mpeg4-2-3d", "mpeg4-2-3d", "prefer MPEG4 AVC/H.264 HP / Level 4.2 TS for 3D Videos"),
    ("+xo", "--prefer-mpeg4-2-st", "mpeg4-2-st", "prefer MPEG4 AVC/H.264 Stereo HP / Level 4.2 TS"),
    ("+x4", "--prefer-hevc", "hevc", "prefer HEVC/H.265 Main Profile / Level 5.1 TS"),
    ("+x5", "--prefer-hevc10", "hevc10", "prefer HEVC/H.265 Main 10 Profile / Level 5.1 TS"),
    ("+xr", "--prefer-rle", "rle", "prefer RLE lossless TS"),
    ("+xd", "--prefer-deflated", "deflated", "prefer deflated explicit VR little endian TS"),
    ("+xi", "--implicit", "implicit", "accept implicit VR little endian TS only"),
    ("+xa", "--accept-all", "accept-all", "accept all supported transfer syntaxes"),
]


def _preference_options(fn: Callable) -> Callable:
    for short, long, value, help_text in reversed(PREFERENCE_OPTIONS):
        decls = (long,) if short == "+x=" else (short, long)  # "+x=" is rewritten to its long name
        fn = _switch("preferred", value, *decls, help=("[+x=] " if short == "+x=" else "") + help_text)(fn)
    return fn


_SECONDS = click.FloatRange(min=0)


def _pdu_or_unlimited(ctx: click.Context, param: click.Parameter, value: int) -> int:
    """storescp's range 4096..131072, plus 0 for "unlimited" (PDUs up to net.MAX_RECEIVE_PDU are read)."""
    if value != 0 and not 4096 <= value <= 131072:
        raise click.BadParameter(f"{value} is not 0 (unlimited) or in the range 4096..131072", ctx, param)
    return value


@click.command("receive", cls=DcmtkCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("port", type=click.IntRange(0, 65535), required=False)
@click.version_option(__version__, "--version", prog_name="batchstore receive")
@logging_options
@click.option("+v", "--verbose-pc", is_flag=True, help="Show presentation contexts in verbose mode.")
# multi-process options
@_switch("mode", "single", "--single-process", help="Single process mode (default).")
@_switch("mode", "fork", "--fork", help="Fork a child process for each association.")
@click.option(
    "--max-associations",
    type=click.IntRange(min=0),
    default=None,
    help=(
        f"With --fork: at most N associations at a time; further ones wait for a free slot "
        f"(default {DEFAULT_MAX_ASSOCIATIONS}; 0: no limit)."
    ),
)
# network options
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option(
    "--port-file", type=click.Path(dir_okay=False), help="Write the bound port to FILE (use with PORT 0)."
)
@click.option(
    "-xf",
    "--config-file",
    nargs=2,
    type=(click.Path(exists=True, dir_okay=False), str),
    default=None,
    help="Use profile P from association negotiation config file F.",
)
@_preference_options
@_switch("access", False, "-ac", "--access-full", help="Accept connections from any host (default).")
@_switch("access", True, "+ac", "--access-control", help="Enforce host access control rules.")
@click.option(
    "--hosts-allow", default="/etc/hosts.allow", show_default=True, help="Host access allow table (+ac)."
)
@click.option(
    "--hosts-deny", default="/etc/hosts.deny", show_default=True, help="Host access deny table (+ac)."
)
@click.option("-id", "--inetd", is_flag=True, help="Run from inetd super server (not with --fork).")
@click.option(
    "-ts",
    "--socket-timeout",
    type=_SECONDS,
    default=60,
    show_default=True,
    help="Timeout for network socket (s; 0: none).",
)
@click.option(
    "-ta",
    "--acse-timeout",
    type=_SECONDS,
    default=30,
    show_default=True,
    help="Timeout for ACSE messages (s).",
)
@click.option(
    "-td",
    "--dimse-timeout",
    type=_SECONDS,
    default=None,
    help="Timeout for DIMSE messages (s; default: unlimited).",
)
@click.option("-aet", "--aetitle", default="STORESCP", show_default=True, help="Set my AE title.")
@click.option(
    "-pdu",
    "--max-pdu",
    type=int,
    default=16384,
    show_default=True,
    callback=lambda ctx, param, value: _pdu_or_unlimited(ctx, param, value),
    help="Set max receive PDU to N bytes (4096..131072; batchstore also takes 0: unlimited).",
)
@click.option("-dhl", "--disable-host-lookup", is_flag=True, help="Disable hostname lookup.")
@click.option("--refuse", is_flag=True, help="Refuse association.")
@click.option("--reject", is_flag=True, help="Reject association if no implementation class UID.")
@click.option(
    "--accept-aet", multiple=True, metavar="AET", help="Accept only this calling AE title (repeatable)."
)
@click.option("--ignore", is_flag=True, help="Ignore store data, receive but do not store.")
@click.option("--sleep-after", type=_SECONDS, default=0, help="Sleep S seconds after store.")
@click.option("--sleep-during", type=_SECONDS, default=0, help="Sleep S seconds during store.")
@click.option(
    "--abort-after", is_flag=True, help="Abort association after receipt of C-STORE-RQ (before the response)."
)
@click.option("--abort-during", is_flag=True, help="Abort association during receipt of C-STORE-RQ.")
@click.option(
    "-pm",
    "--promiscuous",
    is_flag=True,
    help="Promiscuous mode: accept unknown SOP classes (not with --config-file).",
)
@click.option("-up", "--uid-padding", is_flag=True, help="Silently correct space-padded UIDs.")
@tls_options()
# output options
@click.option(
    "-od",
    "--output-directory",
    type=click.Path(exists=True, file_okay=False),
    default=".",
    help="Write received objects to existing directory D.",
)
@click.option(
    "--fsync",
    is_flag=True,
    help="Sync each received file and its directory to disk before acknowledging it (durable, slower).",
)
@_switch("bit", False, "-B", "--normal", help="Allow implicit format conversions (default).")
@_switch("bit", True, "+B", "--bit-preserving", help="Write data exactly as read.")
@_switch("format", True, "+F", "--write-file", help="Write file format (default).")
@_switch("format", False, "-F", "--write-dataset", help="Write data set without file meta information.")
@_switch("xfer", "same", "--write-xfer-same", help="[+t=] Write with same TS as input (default).")
@_switch("xfer", "little", "+te", "--write-xfer-little", help="Write with explicit VR little endian TS.")
@_switch("xfer", "big", "+tb", "--write-xfer-big", help="Write with explicit VR big endian TS.")
@_switch("xfer", "implicit", "+ti", "--write-xfer-implicit", help="Write with implicit VR little endian TS.")
@_switch(
    "xfer",
    "deflated",
    "+td",
    "--write-xfer-deflated",
    help="Write with deflated explicit VR little endian TS.",
)
@_switch("new_vr", True, "+u", "--enable-new-vr", help="Enable support for new VRs (UN/UT) (default).")
@_switch("new_vr", False, "-u", "--disable-new-vr", help="Disable support for new VRs, convert to OB.")
@_switch(
    "group_length",
    "recalc",
    "--group-length-recalc",
    help="[+g=] Recalculate group lengths if present (default).",
)
@_switch(
    "group_length", "create", "+g", "--group-length-create", help="Always write with group length elements."
)
@_switch(
    "group_length",
    "remove",
    "-g",
    "--group-length-remove",
    help="Always write without group length elements.",
)
@_switch("length", True, "+e", "--length-explicit", help="Write with explicit lengths (default).")
@_switch("length", False, "-e", "--length-undefined", help="Write with undefined lengths.")
@_switch("padding", None, "-p", "--padding-off", help="No padding (default).")
@_valued(
    "padding",
    "create",
    "+p",
    "--padding-create",
    nargs=2,
    type=click.IntRange(min=0),
    default=None,
    metavar="F I",
    help="Align file on multiple of F bytes and items on multiple of I bytes.",
)
@_switch("convert_un", False, "-uc", "--retain-un", help="Retain elements as UN (default).")
@_switch("convert_un", True, "+uc", "--convert-un", help="Convert to real VR if known.")
@click.option(
    "+cl",
    "--compression-level",
    type=click.IntRange(0, 9),
    default=None,
    help="Deflate compression level (0-9, default 6).",
)
@_valued(
    "sort",
    "conc",
    "-ss",
    "--sort-conc-studies",
    metavar="PREFIX",
    help="Sort studies using prefix P and a timestamp.",
)
@_valued(
    "sort",
    "study-uid",
    "-su",
    "--sort-on-study-uid",
    metavar="PREFIX",
    help="Sort studies using prefix P and the Study Instance UID.",
)
@_switch(
    "sort",
    ("patient-name", ""),
    "-sp",
    "--sort-on-patientname",
    help="Sort studies using the Patient's Name and a timestamp.",
)
@_switch(
    "filenames",
    "default",
    "-uf",
    "--default-filenames",
    help="Generate filename from instance UID (default).",
)
@_switch("filenames", "unique", "+uf", "--unique-filenames", help="Generate unique filenames.")
@_switch("filenames", "time", "-tn", "--timenames", help="Generate filename from creation time.")
@click.option("-fe", "--filename-extension", default="", help="Append E to all filenames.")
# event options
@click.option(
    "-xcr",
    "--exec-on-reception",
    metavar="COMMAND",
    help="Execute command C after having received and processed one C-STORE-RQ.",
)
@click.option(
    "-xcs",
    "--exec-on-eostudy",
    metavar="COMMAND",
    help="Execute command C after having received all C-STORE-RQ of one study.",
)
@click.option(
    "-rns",
    "--rename-on-eostudy",
    is_flag=True,
    help="Rename the output files of a study when it is complete.",
)
@click.option(
    "-tos",
    "--eostudy-timeout",
    type=_SECONDS,
    default=None,
    help="Timeout of T seconds for end-of-study determination.",
)
@click.option("-xs", "--exec-sync", is_flag=True, help="Execute command synchronously in foreground.")
# storage commitment (batchstore's own)
@click.option(
    "--commitment",
    is_flag=True,
    help="Be a Storage Commitment SCP too: commit the requested instances found on disk under -od "
    "(synced first with --fsync); report on the same association unless --commit-reply-to.",
)
@click.option(
    "--commit-reply-to",
    metavar="HOST:PORT",
    help="Send commitment reports on a new association to HOST:PORT (implies --commitment).",
)
@click.option(
    "--commit-reply-aet",
    metavar="AET",
    help="Called AE title of that association (default: the AE title that asked for commitment).",
)
@click.pass_context
def command(ctx: click.Context, port: int | None, **kw: Any) -> None:
    """Storage SCP (C-STORE, and C-ECHO): receive DICOM objects on PORT, like storescp.

    Each option has its storescp spelling; ``--fork`` runs every association in a process of its own.
    """
    level = setup_logging(kw["quiet"], kw["verbose"], kw["debug"], kw["log_level"], kw["log_config"], kw["arguments"])
    require_verbose_for_pc(kw["verbose_pc"], level, kw["log_config"])
    try:
        options = build_options(ctx, port, kw)
        validate(options)
    except ValueError as exc:
        raise click.UsageError(str(exc), ctx) from None
    try:
        code = serve(options)
    except ValueError as exc:  # e.g. an unusable -xf profile
        raise click.UsageError(str(exc), ctx) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}"
        ) from None
    sys.exit(code)


def build_options(ctx: click.Context, port: int | None, kw: dict[str, Any]) -> ReceiveOptions:
    """Turn the parsed command line into `ReceiveOptions`; raise ValueError for what storescp refuses."""
    choices = _choices(ctx)
    mode = choices.get("mode", "single")
    if kw["inetd"]:
        if mode == "fork":
            raise ValueError("--fork cannot be used with --inetd")
        if port is not None:
            raise ValueError("PORT must not be given with --inetd (the socket is standard input)")
        mode = "inetd"
    elif port is None:
        raise ValueError("missing parameter PORT (required unless --inetd is given)")
    if kw["config_file"] and "preferred" in choices:
        raise ValueError(
            "the preferred network transfer syntax options (+x...) cannot be used with --config-file"
        )
    if kw["max_associations"] is not None and mode != "fork":
        raise ValueError("--max-associations only with --fork")
    sort, sort_prefix = choices.get("sort", (None, ""))
    padding_choice = choices.get("padding")
    padding = tuple(padding_choice[1]) if padding_choice else None
    storage = StorageOptions(
        output_dir=kw["output_directory"],
        bit_preserving=choices.get("bit", False),
        write_meta=choices.get("format", True),
        write_xfer=choices.get("xfer", "same"),
        new_vr=choices.get("new_vr", True),
        group_length=choices.get("group_length", "recalc"),
        explicit_length=choices.get("length", True),
        padding=padding,  # type: ignore[arg-type]
        convert_un=choices.get("convert_un", False),
        compression_level=kw["compression_level"],
        sort=sort,
        sort_prefix=sort_prefix or "",
        filenames=choices.get("filenames", "default"),
        extension=kw["filename_extension"],
        ignore=kw["ignore"],
        uid_padding=kw["uid_padding"],
        fsync=kw["fsync"],
    )
    events = EventOptions(
        exec_on_reception=kw["exec_on_reception"],
        exec_on_eostudy=kw["exec_on_eostudy"],
        rename_on_eostudy=kw["rename_on_eostudy"],
        eostudy_timeout=kw["eostudy_timeout"],
        exec_sync=kw["exec_sync"],
    )
    return ReceiveOptions(
        tls=tls_settings(kw, server=True),
        port=port or 0,
        host=kw["host"],
        port_file=kw["port_file"],
        mode=mode,
        max_associations=kw["max_associations"],
        ae_title=kw["aetitle"],
        max_pdu=kw["max_pdu"],
        preferred=choices.get("preferred", "uncompr"),
        config_file=tuple(kw["config_file"]) if kw["config_file"] else None,  # type: ignore[arg-type]
        promiscuous=kw["promiscuous"],
        refuse=kw["refuse"],
        reject_without_implementation_uid=kw["reject"],
        accept_aets=tuple(kw["accept_aet"]),
        access_control=choices.get("access", False),
        hosts_allow=kw["hosts_allow"],
        hosts_deny=kw["hosts_deny"],
        host_lookup=not kw["disable_host_lookup"],
        socket_timeout=kw["socket_timeout"] or None,
        acse_timeout=kw["acse_timeout"] or None,
        dimse_timeout=kw["dimse_timeout"] or None,
        sleep_after=kw["sleep_after"],
        sleep_during=kw["sleep_during"],
        abort_after=kw["abort_after"],
        abort_during=kw["abort_during"],
        verbose_pc=kw["verbose_pc"],
        storage=storage,
        events=events,
        commitment=_commitment(kw),
    )


def _commitment(kw: dict[str, Any]) -> CommitmentOptions | None:
    reply = kw["commit_reply_to"]
    if not (kw["commitment"] or reply):
        if kw["commit_reply_aet"]:
            raise ValueError("--commit-reply-aet needs --commit-reply-to")
        return None
    if reply is None:
        return CommitmentOptions(reply_aet=kw["commit_reply_aet"])
    host, colon, port = str(reply).rpartition(":")
    if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"--commit-reply-to {reply}: expected HOST:PORT")
    aet = kw["commit_reply_aet"]
    if aet is not None and not 1 <= len(aet) <= 16:
        raise ValueError("--commit-reply-aet must be 1 to 16 characters")
    return CommitmentOptions((host.strip("[]"), int(port)), aet)
