"""Per-file outcomes, run counters, the JSON/CSV report, the end summary and the exit code.

`Report.exit_code` is the only place that decides how ``batchstore send`` exits; the codes are documented
in the README and stable:

====  ===========================================================================
0     every file was sent (success or warning status)
1     internal error
2     usage error (bad option or argument)
3     no input: no file to send was found
5     some files failed and every remaining failure is transient (retrying may help)
6     some files failed and at least one failure is permanent (retrying will not help)
7     every file was stored, but the peer has not committed them all (storage commitment failed for some,
      or no report came): only with ``--commit`` and ``batchstore commit``
9     nothing could be sent: there were files, none was delivered
130   interrupted (Ctrl-C / SIGTERM) before the run completed
====  ===========================================================================

`Report.dcmtk_exit_code` (``--dcmtk-exit-codes``) gives instead the code storescu 3.6.7 exits with in the
same situation (found by running it): 0 when it ends normally, 1 for a usage error, no input file, an
association that cannot be established (refused, rejected, no accepted context) and a failure that is
not a DIMSE status; after a failure status the status' high byte (0xA700: 167, 0xA900: 169, 0xC000:
192); 10 when the peer aborted the association during a store. With ``-nh`` storescu ignores failed
files: 0, unless an association could not be established or was lost (1).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from ..dicom.records import Record
from .outcomes import NOT_SENT, PERMANENT, SUCCESS, TRANSIENT, WARNING

if TYPE_CHECKING:
    from ..dicom.part10 import Instance

#: A file deliberately not sent (a DICOMDIR: an index, not an object to store). Not a failure: it does
#: not change the exit code, unless nothing else was there to send (exit 3, no input).
SKIPPED = "skipped"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_INPUT = 3
EXIT_SOME_FAILED_RETRYABLE = 5
EXIT_SOME_FAILED = 6
EXIT_NOT_COMMITTED = 7
EXIT_NOTHING_SENT = 9
EXIT_INTERRUPTED = 130

#: storescu 3.6.7's exit codes (besides 0, 130 and a failure status' high byte): every fatal error.
DCMTK_EXIT_ERROR = 1
#: storescu 3.6.7: a store halted by a network failure (the peer aborted the association).
DCMTK_EXIT_NETWORK = 10


#: `Outcome`'s fields in order: an outcome crosses a process boundary as a plain tuple of these
#: (`outcome_rows`), which pickles in a fifth of the time an `Outcome` does and unpickles, rebuilt with
#: `outcomes_from_rows`, in a quarter (docs/design.md, "The send side, issue 17"). A test checks the
#: list against the constructor's parameters.
OUTCOME_FIELDS = (
    "path", "sop_class_uid", "sop_instance_uid", "original_ts", "sent_ts", "pixels_decoded", "category",
    "status", "error", "association", "context_id", "duration_ms", "attempts", "worker", "size",
)  # fmt: skip


class Outcome(Record):
    """What happened to one input file (one record of the report).

    Not frozen: a frozen dataclass costs 4x as much to create, and the coordinator numbers each
    outcome's association in place instead of copying it (perf/: ~5 us per 1 KB file). A `Record`, not a
    dataclass (start-up, docs/design.md "Small runs"): the same constructor, attributes, equality and
    ``repr``; ``outcome._replace(...)`` for a changed copy, `outcome_record` for its fields as a dictionary.

    Attributes
    ----------
    path, sop_class_uid, sop_instance_uid : str
    original_ts, sent_ts : str
        The file's transfer syntax, and the one it was sent in.
    pixels_decoded : bool
        Compressed pixel data were decoded to send the file (issue 12).
    category : str
        status.SUCCESS / WARNING / TRANSIENT / PERMANENT / NOT_SENT.
    status : int or None
        The DIMSE status of the C-STORE-RSP, when there was one.
    error : str
    association : int
        Run-wide association number (1-based; 0: none).
    context_id, duration_ms, attempts, worker, size
    """

    _fields = OUTCOME_FIELDS

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    original_ts: str
    sent_ts: str
    pixels_decoded: bool
    category: str
    status: int | None
    error: str
    association: int
    context_id: int
    duration_ms: float
    attempts: int
    worker: int
    size: int

    def __init__(
        self,
        path: str,
        sop_class_uid: str = "",
        sop_instance_uid: str = "",
        original_ts: str = "",
        sent_ts: str = "",
        pixels_decoded: bool = False,
        category: str = NOT_SENT,
        status: int | None = None,
        error: str = "",
        association: int = 0,
        context_id: int = 0,
        duration_ms: float = 0.0,
        attempts: int = 0,
        worker: int = 0,
        size: int = 0,
    ) -> None:
        # plain assignments, the code the dataclass generated: an outcome is made per file
        self.path = path
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.original_ts = original_ts
        self.sent_ts = sent_ts
        self.pixels_decoded = pixels_decoded
        self.category = category
        self.status = status
        self.error = error
        self.association = association
        self.context_id = context_id
        self.duration_ms = duration_ms
        self.attempts = attempts
        self.worker = worker
        self.size = size

    @property
    def delivered(self) -> bool:
        return self.category in (SUCCESS, WARNING)

    @classmethod
    def of(cls, inst: Instance, category: str, error: str = "", **fields: Any) -> Outcome:
        """The record of scanned file `inst` with `category`, `error` and any other `fields`."""
        fields.setdefault("sop_instance_uid", inst.sop_instance_uid)
        return cls(
            path=inst.path,
            sop_class_uid=inst.sop_class_uid,
            original_ts=inst.transfer_syntax,
            category=category,
            error=error,
            size=inst.size,
            **fields,
        )


_outcome_row = Outcome._getter


def outcome_rows(outcomes: list[Outcome]) -> list[tuple]:
    """`outcomes` as tuples of their `OUTCOME_FIELDS`, for a pipe (`outcomes_from_rows` undoes it)."""
    return [_outcome_row(o) for o in outcomes]


def outcomes_from_rows(rows: list[tuple]) -> list[Outcome]:
    """The `Outcome` objects of `outcome_rows`' tuples."""
    return [Outcome(*row) for row in rows]


class AssociationRecord(NamedTuple):
    """One association a worker opened: for the summary (and ``+v``).

    A named tuple, not a frozen dataclass: start-up (docs/design.md, "Small runs").
    """

    number: int
    worker: int
    context_group: int
    proposed: int
    accepted: int
    peer_max_pdu: int


@dataclass
class Report:
    """Everything a run produced; decides the exit code."""

    outcomes: list[Outcome] = field(default_factory=list)
    associations: list[AssociationRecord] = field(default_factory=list)
    context_groups: int = 0
    contexts_proposed: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    halted: bool = False
    retries: int = 0
    input_count: int = 0
    slow_waits: int = 0  # times the run waited SLOW_PEER_SECONDS or more with no file answered
    waited_s: float = 0.0  # seconds of those waits

    def counts(self) -> Counter:
        return Counter(o.category for o in self.outcomes)

    @property
    def delivered(self) -> int:
        c = self.counts()
        return c[SUCCESS] + c[WARNING]

    @property
    def bytes_sent(self) -> int:
        return sum(o.size for o in self.outcomes if o.delivered)

    def exit_code(self) -> int:
        """The documented exit code for this run (see the module docstring)."""
        c = self.counts()
        if self.interrupted:
            return EXIT_INTERRUPTED
        if not self.outcomes or c[SKIPPED] == len(self.outcomes):
            return EXIT_NO_INPUT
        failed = c[TRANSIENT] + c[PERMANENT] + c[NOT_SENT]
        if failed == 0:
            return EXIT_OK
        if self.delivered == 0:
            return EXIT_NOTHING_SENT
        if c[PERMANENT] == 0:
            return EXIT_SOME_FAILED_RETRYABLE
        return EXIT_SOME_FAILED

    def dcmtk_exit_code(self, halt_on_failure: bool = True) -> int:
        """The code storescu 3.6.7 exits with for this run (``--dcmtk-exit-codes``; module docstring).

        `halt_on_failure`: False with ``-nh``, where storescu exits 0 whatever the C-STORE statuses.
        """
        own = self.exit_code()
        if own in (EXIT_OK, EXIT_INTERRUPTED):
            return own
        if own == EXIT_NO_INPUT:
            return DCMTK_EXIT_ERROR  # "no input files to be sent"
        failures = [o for o in self.outcomes if o.category in (TRANSIENT, PERMANENT)]
        if self.associations and not any(a.accepted for a in self.associations):
            return DCMTK_EXIT_ERROR  # "No Acceptable Presentation Contexts", with or without -nh
        if not halt_on_failure:
            # storescu -nh goes on after a failed file and exits 0, unless its association failed
            return DCMTK_EXIT_ERROR if any(_association_lost(o) for o in failures) else EXIT_OK
        if not failures:
            return EXIT_OK
        first = failures[0]  # storescu stops at its first failure and exits with what it was
        if first.status is not None:
            return (first.status >> 8) & 0xFF or DCMTK_EXIT_ERROR
        if "aborted by peer" in first.error:
            return DCMTK_EXIT_NETWORK
        return DCMTK_EXIT_ERROR

    def summary_lines(self) -> list[str]:
        """The end summary: only the non-zero lines, rclone-style."""
        c = self.counts()
        rate = len(self.outcomes) / self.elapsed_s if self.elapsed_s > 0 else 0.0
        mb = self.bytes_sent / 1e6
        lines = [
            f"Associations:          {len(self.associations)}",
            f"Presentation contexts: {self.contexts_proposed} proposed in {self.context_groups} group(s)",
        ]
        rows = [
            ("Sent, success", c[SUCCESS]),
            ("Sent, warning", c[WARNING]),
            ("Failed, transient", c[TRANSIENT]),
            ("Failed, permanent", c[PERMANENT]),
            ("Not sent", c[NOT_SENT]),
            ("Skipped (DICOMDIR)", c[SKIPPED]),
            ("Retries", self.retries),
        ]
        lines += [f"{label + ':':<23}{value}" for label, value in rows if value]
        if self.slow_waits:
            lines.append(
                f"Waited on a slow peer: {self.waited_s:.1f} s in {self.slow_waits} stall(s) with files in "
                "flight and none answered"
            )
        lines.append(
            f"Elapsed:               {self.elapsed_s:.2f} s ({rate:.0f} files/s, "
            f"{mb / self.elapsed_s if self.elapsed_s > 0 else 0:.1f} MB/s)"
        )
        if self.halted:
            lines.append("Halted after the first unsuccessful store (use -nh/--no-halt to go on).")
        if self.interrupted:
            lines.append("Interrupted: the run did not complete.")
        if c[TRANSIENT] and not c[PERMANENT]:
            lines.append("Remaining failures are transient: retrying may help.")
        elif c[PERMANENT]:
            lines.append(f"{c[PERMANENT]} permanent failure(s): retrying will not help them.")
        return lines

    def write(self, path: str, records: list[dict] | None = None) -> None:
        """Write the per-file report as JSON (``.json``) or CSV (anything else), atomically.

        `records`: the per-file records to write (default `records()`)."""
        if records is None:
            records = self.records()
        directory = os.path.dirname(os.path.abspath(path))
        import csv  # only with --report: 1.4 ms of a small send's start-up otherwise
        import json
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix=".report-", dir=directory)
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
                if path.lower().endswith(".json"):
                    json.dump(self.to_dict(records), fh, indent=1)
                else:
                    writer = csv.DictWriter(fh, fieldnames=self.record_fields())
                    writer.writeheader()
                    writer.writerows(records)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def to_dict(self, records: list[dict] | None = None) -> dict:
        c = self.counts()
        return {
            "summary": {
                "files": len(self.outcomes),
                "success": c[SUCCESS],
                "warning": c[WARNING],
                "failed_transient": c[TRANSIENT],
                "failed_permanent": c[PERMANENT],
                "not_sent": c[NOT_SENT],
                "skipped": c[SKIPPED],
                "associations": len(self.associations),
                "context_groups": self.context_groups,
                "contexts_proposed": self.contexts_proposed,
                "elapsed_s": round(self.elapsed_s, 3),
                "bytes_sent": self.bytes_sent,
                "retries": self.retries,
                "slow_peer_waits": self.slow_waits,
                "slow_peer_waited_s": round(self.waited_s, 3),
                "halted": self.halted,
                "interrupted": self.interrupted,
                "exit_code": self.exit_code(),
            },
            "associations": [a._asdict() for a in self.associations],
            "files": self.records() if records is None else records,
        }

    def records(self) -> list[dict]:
        """The report's per-file records (`outcome_record` of each outcome)."""
        return [_record(o) for o in self.outcomes]

    def record_fields(self) -> list[str]:
        """The CSV columns of `records`."""
        return list(OUTCOME_FIELDS)


def _association_lost(o: Outcome) -> bool:
    """Whether failed outcome `o` is an association that could not be established or was lost (A-ABORT,
    reset, timeout), rather than this file's own failure (a status, an unreadable file, no context)."""
    if o.status is not None:
        return False
    if o.category == TRANSIENT:  # status-less transient failures are all network failures
        return True
    return (o.association == 0 and o.attempts > 0) or "again on retry" in o.error


def outcome_record(o: Outcome) -> dict:
    """One file's record in the JSON/CSV report."""
    return _record(o)


def _record(o: Outcome) -> dict:
    record = dict(zip(OUTCOME_FIELDS, _outcome_row(o), strict=True))
    record["status"] = f"0x{o.status:04X}" if o.status is not None else ""
    record["duration_ms"] = round(o.duration_ms, 3)
    return record
