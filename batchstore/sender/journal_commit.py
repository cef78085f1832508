"""Storage commitment in the journal: each file's commitment state and the transactions that asked for it
(docs/design.md, "Storage commitment").

A done (stored) file's ``commit_state`` is ``''`` (not requested yet), ``requested`` (in the transaction
``commit_tx``, since ``commit_requested``), ``committed`` or ``failed`` (``commit_reason``: the Failure
Reason the peer gave). A file sent again (changed, or to a new destination) starts over at ``''``.

These functions take the journal's SQLite connection (`Journal.db`); `sender.journal` creates the columns
and the table when it opens a journal.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..net.commitment import EventReport, failure_text

NOT_REQUESTED = ""
REQUESTED = "requested"
COMMITTED = "committed"
FAILED = "failed"

#: Commitment columns of the ``files`` table, added to journals written before them: (table, column, type).
COMMIT_COLUMNS = (
    ("files", "commit_state", "TEXT NOT NULL DEFAULT ''"),
    ("files", "commit_tx", "TEXT NOT NULL DEFAULT ''"),
    ("files", "commit_requested", "REAL"),
    ("files", "commit_reason", "INTEGER"),
    ("files", "commit_updated", "REAL"),
)

COMMIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS commit_transactions (
    uid TEXT PRIMARY KEY,
    destination INTEGER,
    requested REAL NOT NULL,
    files INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    action_status INTEGER,
    answered REAL,
    event_type INTEGER,
    via TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS commit_attempts (
    started REAL NOT NULL,
    files INTEGER NOT NULL
);
"""

_DONE = "category IN ('success', 'warning')"


def uncommitted(db: Any) -> list[tuple[str, str, str]]:
    """(path, SOP class, SOP instance) of every stored file not committed yet and not reported failed."""
    return [
        (row[0], row[1], row[2])
        for row in db.execute(
            f"SELECT path, sop_class_uid, sop_instance_uid FROM files WHERE {_DONE} "
            "AND commit_state IN ('', 'requested') AND sop_instance_uid != '' ORDER BY path"
        )
    ]


def record_attempt(db: Any, files: int) -> None:
    """Journal that commitment was asked for `files` files, before any association: a peer that refuses
    the association leaves no transaction, and the journal must still say the files are not committed."""
    with db:
        db.execute("INSERT INTO commit_attempts (started, files) VALUES (?, ?)", (time.time(), files))


def record_request(
    db: Any, transaction: str, paths: Iterable[str], destination: int | None, attempt: int
) -> None:
    """Journal a commitment request: its transaction, and each file as requested in it."""
    now = time.time()
    paths = list(paths)
    with db:
        db.execute("BEGIN")
        db.execute(
            "INSERT OR REPLACE INTO commit_transactions (uid, destination, requested, files, attempt) "
            "VALUES (?, ?, ?, ?, ?)",
            (transaction, destination, now, len(paths), attempt),
        )
        db.executemany(
            "UPDATE files SET commit_state = 'requested', commit_tx = ?, commit_requested = ?, "
            "commit_reason = NULL, commit_updated = ? WHERE path = ? AND commit_state != 'committed'",
            [(transaction, now, now, path) for path in paths],
        )


def record_refusal(db: Any, transaction: str, status: int) -> None:
    """The peer answered the N-ACTION with a failure status: its files are not requested after all."""
    with db:
        db.execute("BEGIN")
        db.execute("UPDATE commit_transactions SET action_status = ? WHERE uid = ?", (status, transaction))
        db.execute(
            "UPDATE files SET commit_state = '', commit_updated = ? WHERE commit_tx = ? AND commit_state = "
            "'requested'",
            (time.time(), transaction),
        )


def known_transaction(db: Any, transaction: str) -> bool:
    return (
        db.execute("SELECT 1 FROM commit_transactions WHERE uid = ?", (transaction,)).fetchone() is not None
    )


def record_report(db: Any, report: EventReport, via: str) -> tuple[int, int]:
    """Journal what an N-EVENT-REPORT says; return (files committed, files failed) it changed.

    A committed instance is committed in every file of the journal that was requested with that SOP
    Instance UID (a late report of an earlier transaction still counts); a failure changes only the
    files of its own transaction, and never a file already committed.
    """
    now = time.time()
    tx = report.transaction_uid
    committed = failed = 0
    with db:
        db.execute("BEGIN")
        db.execute(
            "UPDATE commit_transactions SET answered = ?, event_type = ?, via = ? WHERE uid = ?",
            (now, report.event_type, via, tx),
        )
        for ref in report.committed:
            cur = db.execute(
                "UPDATE files SET commit_state = 'committed', commit_reason = NULL, commit_updated = ? "
                "WHERE sop_instance_uid = ? AND (commit_tx = ? OR commit_state = 'requested')",
                (now, ref.sop_instance_uid, tx),
            )
            committed += cur.rowcount
        for ref in report.failed:
            cur = db.execute(
                "UPDATE files SET commit_state = 'failed', commit_reason = ?, commit_updated = ? "
                "WHERE sop_instance_uid = ? AND commit_tx = ? AND commit_state != 'committed'",
                (ref.failure_reason, now, ref.sop_instance_uid, tx),
            )
            failed += cur.rowcount
    return committed, failed


def answered(db: Any, transaction: str) -> bool:
    row = db.execute("SELECT answered FROM commit_transactions WHERE uid = ?", (transaction,)).fetchone()
    return row is not None and row[0] is not None


def still_requested(db: Any, transaction: str) -> list[tuple[str, str, str]]:
    """The files of `transaction` no report has answered yet (for a retry)."""
    return [
        (row[0], row[1], row[2])
        for row in db.execute(
            "SELECT path, sop_class_uid, sop_instance_uid FROM files WHERE commit_tx = ? AND "
            "commit_state = 'requested' ORDER BY path",
            (transaction,),
        )
    ]


def commit_counts(db: Any) -> Counter:
    """Stored files by commitment state (``''``: not requested), ``transactions`` and ``attempts`` (runs
    of ``send --commit`` or ``batchstore commit`` that had files to ask for)."""
    counts: Counter = Counter(
        dict(db.execute(f"SELECT commit_state, COUNT(*) FROM files WHERE {_DONE} GROUP BY commit_state"))
    )
    counts["transactions"] = db.execute("SELECT COUNT(*) FROM commit_transactions").fetchone()[0]
    counts["attempts"] = db.execute("SELECT COUNT(*) FROM commit_attempts").fetchone()[0]
    return counts


def commit_records(db: Any) -> dict[str, dict[str, Any]]:
    """Path -> the commitment fields of its report record (every journaled file)."""
    out = {}
    for path, category, state, tx, requested, reason, updated in db.execute(
        "SELECT path, category, commit_state, commit_tx, commit_requested, commit_reason, commit_updated "
        "FROM files"
    ):
        stored = category in ("success", "warning")
        out[path] = {
            "commitment": (state or "not requested") if stored else "",
            "commit_transaction_uid": tx if stored else "",
            "commit_requested_at": _iso(requested) if stored and state else "",
            "commit_failure": failure_text(reason) if state == FAILED else "",
            "commit_updated_at": _iso(updated) if stored and state else "",
        }
    return out


COMMIT_FIELDS = [
    "commitment",
    "commit_transaction_uid",
    "commit_requested_at",
    "commit_failure",
    "commit_updated_at",
]


def _iso(value: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(value)) if value else ""


def reset_sql() -> str:
    """The assignments that put a file's commitment back to "not requested" (it is sent again)."""
    return (
        "commit_state = '', commit_tx = '', commit_requested = NULL, commit_reason = NULL, "
        "commit_updated = NULL"
    )
