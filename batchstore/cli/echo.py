"""``batchstore echo``: C-ECHO (Verification), like echoscu, to check that a peer is there."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ..dicom.uids import IMPLICIT_VR_LE, VERIFICATION_SOP_CLASS
from ..net.acse import AssociationRejected
from ..net.errors import NetError
from ..sender.outcomes import describe_error
from ..sender.scu import AssociationOptions, StoreSCU
from .common import logging_options, setup_logging


@click.command("echo", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("peer")
@click.argument("port", type=click.IntRange(1, 65535))
@logging_options
@click.option("-aet", "--aetitle", default="ECHOSCU", show_default=True, help="My calling AE title.")
@click.option("-aec", "--call", default="ANY-SCP", show_default=True, help="Called AE title of peer.")
@click.option("-to", "--timeout", type=click.IntRange(min=1), default=30, help="Connection timeout (s).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, help="Repeat n times.")
def command(peer: str, port: int, aetitle: str, call: str, timeout: int, repeat: int, **kw: Any) -> None:
    """Send C-ECHO-RQ to PEER PORT; exit 0 when every echo succeeded."""
    setup_logging(kw["quiet"], kw["verbose"], kw["debug"], kw["log_level"], kw["log_config"], kw["arguments"])
    options = AssociationOptions(peer, port, aetitle, call, connect_timeout=timeout)
    scu = StoreSCU(options, ((1, VERIFICATION_SOP_CLASS, (IMPLICIT_VR_LE,)),))
    try:
        start = time.perf_counter()
        scu.open()
        if 1 not in scu.accepted():
            click.echo("batchstore echo: peer did not accept the Verification SOP class", err=True)
            scu.abort()
            sys.exit(6)
        for _ in range(repeat):
            status = scu.echo(1)
            if status != 0:
                click.echo(f"batchstore echo: C-ECHO status 0x{status:04X}", err=True)
                scu.release()
                sys.exit(6)
        scu.release()
    except (OSError, NetError) as exc:
        click.echo(f"batchstore echo: {peer}:{port}: {describe_error(exc)}", err=True)
        sys.exit(5 if not isinstance(exc, AssociationRejected) or exc.transient else 6)
    if not kw["quiet"]:
        click.echo(f"C-ECHO {peer}:{port} ok ({repeat}x, {(time.perf_counter() - start) * 1000:.1f} ms)")
