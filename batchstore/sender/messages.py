"""The messages between the coordinator and its worker processes, one `NamedTuple` per kind.

They travel pickled over a `multiprocessing` pipe and are told apart with ``isinstance``. Outcomes travel
in chunks (`Results`, up to `worker.FLUSH_COUNT` at a time), so one message object per chunk, not per file,
and each outcome as a plain tuple (`Results.__reduce__`).
Named tuples rather than frozen dataclasses: creating twelve of those cost 8 ms of every run's start-up.
"""

from __future__ import annotations

from typing import NamedTuple

from .outcomes import Attribution
from .plan import Batch
from .report import AssociationRecord, Outcome, outcome_rows, outcomes_from_rows

__all__ = [
    "AssociationOpened",
    "Busy",
    "Bye",
    "Connect",
    "ConnectFailed",
    "GiveBack",
    "Halt",
    "Later",
    "Ready",
    "Results",
    "RunBatch",
    "Stop",
    "ToCoordinator",
    "ToWorker",
]

# --- worker -> coordinator ------------------------------------------------------------------------------


class Ready(NamedTuple):
    """The worker wants work; `group` is the context group its association holds (-1: none)."""

    worker: int
    group: int


class Results(NamedTuple):
    """A chunk of outcomes of batch `batch_index`, in the order the files were sent; `failures` of them
    were not delivered (the coordinator learns what the peer accepts without looking at every outcome)."""

    worker: int
    batch_index: int
    outcomes: list[Outcome]
    failures: int = 0

    def __reduce__(self) -> tuple:
        # Pickled with its outcomes as plain tuples: per file about 5,000 instructions less for the worker
        # and 13,000 less for the coordinator than `Outcome` objects (docs/design.md, "The send side, issue 17").
        return _results, (self.worker, self.batch_index, outcome_rows(self.outcomes), self.failures)


def _results(worker: int, batch_index: int, rows: list[tuple], failures: int) -> Results:
    """`Results` from its pickled form (`Results.__reduce__`)."""
    return Results(worker, batch_index, outcomes_from_rows(rows), failures)


class AssociationOpened(NamedTuple):
    """The worker opened its `local_number`-th association; the coordinator numbers it for the report."""

    worker: int
    local_number: int
    record: AssociationRecord


class GiveBack(NamedTuple):
    """No association for a transient reason: the files of batch `batch_index` from `offset` on go back,
    and those at the offsets in `deferred` (put aside after a transient failure, not retried yet)."""

    worker: int
    batch_index: int
    offset: int
    error: str
    deferred: tuple[int, ...] = ()


class Later(NamedTuple):
    """Files of batch `batch_index` (at `offsets`) failed the same transient way twice with no other file
    sent around them: they go to the end of the queue with their failures (`first`), for a last retry
    after other files, where the peer's record decides whose problem they are."""

    worker: int
    batch_index: int
    offsets: tuple[int, ...]
    first: tuple[Attribution, ...]


class ConnectFailed(NamedTuple):
    """The worker, told to associate (`Connect`), could not."""

    worker: int
    error: str
    transient: bool


class Busy(NamedTuple):
    """The peer answered a C-STORE with a transient status (0xA7xx, out of resources)."""

    worker: int
    status: int


class Bye(NamedTuple):
    """The worker is exiting."""

    worker: int


# --- coordinator -> worker ------------------------------------------------------------------------------


class RunBatch(NamedTuple):
    """Send `batch`; its first file is file number `start_index` of the run (for ``+II`` numbering).

    `retry_of`: the files' earlier failures, for a batch of files sent back with `Later` (else empty)."""

    batch: Batch
    start_index: int
    retry_of: tuple[Attribution, ...] = ()


class Connect(NamedTuple):
    """Open an association for context group `group` before taking a batch."""

    group: int


class Halt(NamedTuple):
    """Report the rest of the batch as not sent (``--halt`` on a failure, or Ctrl-C)."""


class Stop(NamedTuple):
    """Nothing more to do: release the association and exit."""


ToCoordinator = Ready | Results | AssociationOpened | GiveBack | Later | ConnectFailed | Busy | Bye
ToWorker = RunBatch | Connect | Halt | Stop
