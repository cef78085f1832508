"""What the user sees while ``batchstore send`` runs: a tqdm bar (files, files/s, MB/s) and ``+v`` output.

The bar turns itself off when stderr is not a terminal (``tqdm(disable=None)``) or with ``-q``; log lines
are kept above it with ``logging_redirect_tqdm``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any

import click

from ..dicom.part10 import ScanFailure
from ..dicom.uids import ts_name
from ..sender.plan import Plan
from ..sender.report import Outcome

log = logging.getLogger("batchstore")


class Progress:
    """Progress bar fed by outcome chunks; `enabled` None means "only on a terminal"."""

    def __init__(self, enabled: bool | None, verbose_pc: bool = False) -> None:
        self.enabled = enabled
        self.verbose_pc = verbose_pc
        self.bar: Any = None  # a tqdm bar, once started
        self.bytes = 0
        self.started = time.perf_counter()
        self._redirect: contextlib.AbstractContextManager | None = None

    def start(self, plan: Plan, failures: list[ScanFailure]) -> None:
        if self.verbose_pc:
            for group in plan.context_groups:
                click.echo(f"Context group {group.index}:", err=True)
                for pc in group.contexts:
                    names = ", ".join(ts_name(ts) for ts in pc.transfer_syntaxes)
                    click.echo(f"  [{pc.context_id:3d}] {pc.abstract_syntax}: {names}", err=True)
        log.info(
            "%d file(s) to send in %d batch(es), %d unreadable",
            plan.instance_count,
            len(plan.batches),
            len(failures),
        )
        total = plan.instance_count + len(failures) + len(plan.unplannable)
        disable = None if self.enabled is None else not self.enabled
        if disable or (disable is None and not sys.stderr.isatty()):
            return  # no bar: do not pay tqdm's import (~55 ms with asyncio) in unattended runs
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.bar = tqdm(
            total=total,
            unit="file",
            disable=disable,
            dynamic_ncols=True,
            leave=False,
        )
        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()
        self.started = time.perf_counter()

    def update(self, outcomes: list[Outcome]) -> None:
        if self.bar is None:
            return
        self.bytes += sum(o.size for o in outcomes if o.delivered)
        elapsed = max(1e-6, time.perf_counter() - self.started)
        self.bar.set_postfix_str(f"{self.bytes / 1e6 / elapsed:.1f} MB/s", refresh=False)
        self.bar.update(len(outcomes))

    def waiting(self, seconds: float | None) -> None:
        """The run has waited `seconds` on a slow peer (None: it answers again): shown on the bar."""
        if self.bar is None:
            return
        if seconds is None:
            self.bar.set_postfix_str("", refresh=True)
        else:
            self.bar.set_postfix_str(f"waiting on a slow peer: no answer for {seconds:.0f} s", refresh=True)

    def close(self) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
