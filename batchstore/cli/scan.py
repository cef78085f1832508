"""``batchstore scan``: the plan as a dry run, in the words ``send`` would use; no network."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

import click

from ..api import SendOptions, plan_run
from ..dicom.uids import STORAGE_SOP_CLASSES, ts_name
from ..sender.plan import PlanOptions
from ..sender.report import EXIT_NO_INPUT, EXIT_OK
from .common import input_options, logging_options, setup_logging
from .send import PROPOSAL_OPTIONS


@click.command("scan", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True)
@logging_options
@input_options
@click.option(
    "--propose-uncompr", "proposal", flag_value="uncompr", default=True, help="-x=: default proposal."
)
@click.option("+C", "--combine", is_flag=True, help="Combine proposed transfer syntaxes.")
@click.option(
    "-j", "--workers", type=click.IntRange(min=1), default=1, help="Workers the batches are cut for."
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Files per batch (default: automatic).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def command(paths: tuple[str, ...], **kw: Any) -> None:
    """Print what `send` would do with PATHS: groups, batches, presentation contexts, unreadable files."""
    setup_logging(kw["quiet"], kw["verbose"], kw["debug"], kw["log_level"], kw["log_config"], kw["arguments"])
    options = SendOptions(
        workers=int(kw["workers"]),
        scan_directories=bool(kw["scan_directories"]),
        recurse=bool(kw["recurse"]),
        pattern=kw["scan_pattern"],
        read_mode=str(kw["read_mode"]),
        plan=PlanOptions(proposal=str(kw["proposal"]), combine=bool(kw["combine"])),
        batch_size=kw["batch_size"],
    )
    plan, instances, failures = plan_run(list(paths), options)
    groups: Counter = Counter()
    sizes: Counter = Counter()
    for inst in instances:
        groups[(inst.sop_class_uid, inst.transfer_syntax)] += 1
        sizes[(inst.sop_class_uid, inst.transfer_syntax)] += inst.size
    if kw["as_json"]:
        click.echo(
            json.dumps(
                {
                    "files": len(instances),
                    "bytes": plan.total_bytes,
                    "groups": [
                        {"sop_class_uid": s, "transfer_syntax": t, "files": n, "bytes": sizes[(s, t)]}
                        for (s, t), n in sorted(groups.items())
                    ],
                    "batches": len(plan.batches),
                    "context_groups": [
                        [
                            {
                                "context_id": pc.context_id,
                                "abstract_syntax": pc.abstract_syntax,
                                "transfer_syntaxes": list(pc.transfer_syntaxes),
                            }
                            for pc in g.contexts
                        ]
                        for g in plan.context_groups
                    ],
                    "unreadable": [{"path": f.path, "reason": f.reason} for f in failures],
                    "unplannable": [{"path": i.path, "reason": r} for i, r in plan.unplannable],
                },
                indent=1,
            )
        )
    else:
        click.echo(f"{len(instances)} file(s), {plan.total_bytes / 1e6:.1f} MB, in {len(groups)} group(s):")
        for (sop, ts), n in sorted(groups.items(), key=lambda kv: -kv[1]):
            name = STORAGE_SOP_CLASSES.get(sop, sop)
            click.echo(f"  {n:8d}  {sizes[(sop, ts)] / 1e6:10.1f} MB  {name} / {ts_name(ts)}")
        contexts = sum(len(g.contexts) for g in plan.context_groups)
        click.echo(
            f"{len(plan.batches)} batch(es); {contexts} presentation context(s) in "
            f"{len(plan.context_groups)} context group(s) of at most 128"
        )
        for inst, reason in plan.unplannable:
            click.echo(f"would not send {inst.path}: {reason}")
        if failures:
            click.echo(f"{len(failures)} unreadable file(s):")
            for f in failures:
                click.echo(f"  {f.path}: {f.reason}")
    sys.exit(EXIT_OK if instances else EXIT_NO_INPUT)


for _short, _long, _mode in reversed(PROPOSAL_OPTIONS):
    command.params.insert(
        len(command.params) - 1, click.Option([_short, _long, "proposal"], flag_value=_mode, hidden=True)
    )
