"""What ``batchstore journal FILE`` prints: counts per state, storage commitment included, and the last run;
and the exit code those counts mean."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from .journal_commit import COMMITTED, FAILED, NOT_REQUESTED, REQUESTED
from .report import EXIT_NOT_COMMITTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_SOME_FAILED_RETRYABLE


@dataclass(frozen=True)
class JournalSummary:
    """What `batchstore journal FILE` prints: counts per state and the last run."""

    files: int
    done: int
    failed_transient: int
    failed_permanent: int
    pending: int
    runs: int
    last_run: dict | None
    destination: str = ""
    #: stored files by commitment state (`journal_commit`), and ``transactions``
    commitment: Counter = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return self.failed_transient + self.failed_permanent

    def lines(self) -> list[str]:
        lines = [
            f"Files:                 {self.files}",
            f"Done:                  {self.done}",
            f"Failed, transient:     {self.failed_transient}",
            f"Failed, permanent:     {self.failed_permanent}",
            f"Pending:               {self.pending}",
            f"Runs:                  {self.runs}",
        ]
        run = self.last_run
        if run:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["started"]))
            if run["finished"] is None:
                state = "did not finish (killed?)"
            elif run["interrupted"]:
                state = f"interrupted, exit code {run['exit_code']}"
            else:
                state = f"exit code {run['exit_code']}"
            lines.append(
                f"Last run:              #{run['id']} to {run['peer']} at {started}: {run['files']} to send, "
                f"{run['already_done']} already done; {state}"
            )
        if self.destination:
            lines.insert(0, f"Destination:           {self.destination}")
        c = self.commitment
        if self.commitment_asked:
            lines += [
                f"Committed:             {c[COMMITTED]}",
                f"Commitment failed:     {c[FAILED]}",
                f"Commitment unanswered: {c[REQUESTED]}",
                f"Stored, not requested: {c[NOT_REQUESTED]}",
                f"Commit transactions:   {c['transactions']}",
            ]
        if self.pending or self.failed_transient:
            lines.append("Not complete: run the same send command with this journal to resume.")
        elif self.failed_permanent:
            lines.append(f"{self.failed_permanent} permanent failure(s): retrying will not help them.")
        elif self.uncommitted:
            lines.append(
                f"{self.uncommitted} stored file(s) not committed by the peer: rerun the send command with "
                "--commit and this journal (files it reported failed are sent again), or batchstore commit "
                "to ask again."
            )
        elif self.files:
            lines.append("Complete: every file is done" + (" and committed." if c["transactions"] else "."))
        return lines

    @property
    def commitment_asked(self) -> bool:
        """Storage commitment was asked for: a transaction, or a run the peer refused before any."""
        return bool(self.commitment["transactions"] or self.commitment["attempts"])

    @property
    def uncommitted(self) -> int:
        """Stored files the peer has not committed, once commitment was asked for (0 before), even when
        the peer refused the association that would have asked."""
        c = self.commitment
        return c[FAILED] + c[REQUESTED] + c[NOT_REQUESTED] if self.commitment_asked else 0

    def exit_code(self) -> int:
        """0 all done (and committed, once asked), 5 pending or transient failures, 6 permanent ones,
        7 stored but not all committed."""
        if self.failed_permanent:
            return EXIT_SOME_FAILED
        if self.pending or self.failed_transient:
            return EXIT_SOME_FAILED_RETRYABLE
        if self.uncommitted:
            return EXIT_NOT_COMMITTED
        return EXIT_OK
