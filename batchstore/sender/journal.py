"""The resumable journal: an SQLite file recording every input file and its latest outcome
(docs/design.md, "Acknowledge, then journal").

A file is *done* only after a C-STORE-RSP with a success or warning status was journaled for it. A run
with ``--journal FILE`` registers its inputs, skips those that are done and unchanged (same size and
mtime), and journals outcomes in one transaction per chunk the coordinator receives. A done file the peer
reported it could not commit (storage commitment, `journal_commit`) is sent again. The database runs
in WAL mode with ``synchronous=NORMAL``: a commit survives the death of the process (SIGKILL), not
necessarily a power cut, and costs no fsync on the hot path.

A journal is bound to one destination (called AE title, host, port: `Journal.bind_destination`). A run
against another destination is refused (`DestinationMismatch`) unless the user asks for a fresh
destination record: the old destination's outcomes are kept in ``retired_files`` and every file is
pending again. Journals written before destinations existed are migrated when opened: they take the
destination of their last run.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain

from ..dicom.part10 import Instance, ScanFailure
from . import journal_commit as jc
from . import outcomes as st
from .journal_summary import JournalSummary
from .report import EXIT_OK, Outcome, Report

__all__ = ["Destination", "DestinationMismatch", "Journal", "JournalError", "JournalReport", "JournalSummary"]

#: Category of a registered file that no run has tried yet.
PENDING = "pending"
DONE = (st.SUCCESS, st.WARNING)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    sop_class_uid TEXT NOT NULL DEFAULT '',
    sop_instance_uid TEXT NOT NULL DEFAULT '',
    transfer_syntax TEXT NOT NULL DEFAULT '',
    category TEXT NOT NULL DEFAULT 'pending',
    status INTEGER,
    error TEXT NOT NULL DEFAULT '',
    sent_ts TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    run INTEGER,
    updated REAL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    finished REAL,
    peer TEXT NOT NULL DEFAULT '',
    files INTEGER NOT NULL DEFAULT 0,
    already_done INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER,
    failed INTEGER,
    not_sent INTEGER,
    interrupted INTEGER,
    exit_code INTEGER
);
CREATE TABLE IF NOT EXISTS destinations (
    id INTEGER PRIMARY KEY,
    called_ae TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    created REAL NOT NULL,
    retired REAL
);
CREATE TABLE IF NOT EXISTS retired_files (
    destination INTEGER NOT NULL,
    path TEXT NOT NULL,
    category TEXT NOT NULL,
    status INTEGER,
    error TEXT NOT NULL DEFAULT '',
    run INTEGER,
    updated REAL
);
"""

#: Columns added to existing tables since the first journal format: (table, column, declaration).
_MIGRATIONS = (("runs", "destination", "INTEGER"), *jc.COMMIT_COLUMNS)


_INSERT_FILES = (
    "INSERT OR REPLACE INTO files (path, size, mtime_ns, sop_class_uid, sop_instance_uid, transfer_syntax, "
    "category, status, error, sent_ts, attempts, tries, run, updated) VALUES "
)
_FILE_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: rows per multi-row INSERT: within the 999 parameters an SQLite before 3.32 allows a statement
_ROWS_PER_INSERT = 999 // 14

#: `Journal.record` commits when this many rows wait, or this long after the last commit.
COMMIT_ROWS = 2000
COMMIT_SECONDS = 0.25


class JournalError(Exception):
    """The journal file cannot be opened or is not a batchstore journal."""


class DestinationMismatch(JournalError):
    """The journal records another destination than this run's (a usage error: exit 2)."""


@dataclass(frozen=True)
class Destination:
    """Where a journal's files go: the called AE title, host and port."""

    called_ae: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.called_ae}@{self.host}:{self.port}"

    def same(self, other: Destination) -> bool:
        return (self.called_ae.strip(), self.host.lower(), self.port) == (
            other.called_ae.strip(),
            other.host.lower(),
            other.port,
        )

    @classmethod
    def parse(cls, peer: str) -> Destination | None:
        """``AE@host:port`` (a run's ``peer`` column) as a destination; None if it is not one."""
        ae, at, rest = peer.partition("@")
        host, colon, port = rest.rpartition(":")
        if not (at and colon and host and port.isdigit()):
            return None
        return cls(ae, host, int(port))


def journal_key(path: str) -> str:
    """The journal's key for an input path: absolute, so a resume from another directory matches.

    An absolute path without ``.``/``..`` components, doubled or trailing slashes is its own key (what
    `os.path.abspath` would return, without its cost: the scan gives every file's path this way when the
    inputs are absolute)."""
    if path[:1] == "/" and "/." not in path and "//" not in path and path[-1:] != "/":
        return path
    return os.path.abspath(path)


class Journal:
    """One journal file; use as a context manager or call `close`.

    Parameters
    ----------
    path : str
        The SQLite file; created if missing.
    create : bool
        False to refuse a missing file (``batchstore journal`` reads only).
    """

    def __init__(self, path: str, create: bool = True) -> None:
        if not create and not os.path.isfile(path):
            raise JournalError(f"no such journal: {path}")
        self.path = path
        import sqlite3  # here, not at the top: `batchstore send` without --journal never needs it

        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=10000")
            self.db.executescript(_SCHEMA + jc.COMMIT_SCHEMA)
            for table, column, declaration in _MIGRATIONS:
                names = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
                if column not in names:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path}: not a batchstore journal ({exc})") from exc
        self.destination_id: int | None = None
        self.run_id: int | None = None
        #: input path -> journal key, filled by `register` so `record` does not normalise every path again
        self._keys: dict[str, str] = {}
        #: outcome rows not committed yet (see `record`): a waiting file's whole row, and updates of rows
        #: written before
        self._fresh: list[tuple] = []
        self._updates: list[tuple] = []
        #: new and changed inputs of this run, until `_waiting` takes them over at the first outcome
        self._unregistered: list[Instance] = []
        #: key -> input whose row is not written yet: written with its first outcome, or as pending at
        #: the end of the run (see `register`)
        self._waiting: dict[str, Instance] = {}
        self._failure_rows: list[tuple] = []  # unreadable inputs, not written yet
        self._insert_sql: dict[int, str] = {}  # rows -> the multi-row INSERT of that many
        self._last_commit = time.monotonic()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.db.close()

    # -- the destination --------------------------------------------------------------------------
    def destination(self) -> tuple[int, Destination, float] | None:
        """The journal's current destination: (id, destination, since when), or None if it has none."""
        row = self.db.execute(
            "SELECT id, called_ae, host, port, created FROM destinations WHERE retired IS NULL "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return int(row[0]), Destination(row[1], row[2], int(row[3])), float(row[4])

    def bind_destination(self, destination: Destination, new: bool = False) -> int:
        """Check that this run sends where the journal's files went; record the destination if it has none.

        A journal without a destination (new, or written before destinations were recorded) takes the
        destination of its last run, else this one. Against another destination the run is refused
        (`DestinationMismatch`) unless `new`: then the old destination is retired (its outcomes are kept
        in ``retired_files``), every file is pending again, and `destination` is recorded.

        Returns the destination's id.
        """
        current = self.destination()
        if current is None:
            last = self.db.execute(
                "SELECT peer, started FROM runs WHERE peer != '' ORDER BY id DESC LIMIT 1"
            ).fetchone()
            previous = Destination.parse(last[0]) if last else None
            with self.db:
                if previous is not None and not previous.same(destination):
                    self._add_destination(previous, last[1])  # migrated: the destination it was used with
                else:
                    return self._add_destination(destination, time.time())
            current = self.destination()
            assert current is not None
        ident, recorded, since = current
        if recorded.same(destination):
            self.destination_id = ident
            return ident
        if not new:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
            raise DestinationMismatch(
                f"journal {self.path} records the files sent to {recorded} (since {when}); this run sends to "
                f"{destination}. Nothing was sent: a file done there is not done here. Use another journal, "
                "or --journal-new-destination to start a fresh destination record in this one (every file "
                "is then sent again; the old record is kept)."
            )
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("UPDATE destinations SET retired = ? WHERE id = ?", (now, ident))
            self.db.execute(
                "INSERT INTO retired_files (destination, path, category, status, error, run, updated) "
                "SELECT ?, path, category, status, error, run, updated FROM files",
                (ident,),
            )
            self.db.execute(
                "UPDATE files SET category = 'pending', status = NULL, error = '', sent_ts = '', "
                f"attempts = 0, tries = 0, {jc.reset_sql()}"
            )
            return self._add_destination(destination, now)

    def _add_destination(self, destination: Destination, since: float) -> int:
        cur = self.db.execute(
            "INSERT INTO destinations (called_ae, host, port, created) VALUES (?, ?, ?, ?)",
            (destination.called_ae, destination.host, destination.port, since),
        )
        self.destination_id = int(cur.lastrowid or 0)
        return self.destination_id

    # -- a run -----------------------------------------------------------------------------------
    def begin_run(self, peer: str) -> int:
        """Record the start of a run; outcomes recorded from now on name it."""
        cur = self.db.execute(
            "INSERT INTO runs (started, peer, destination) VALUES (?, ?, ?)",
            (time.time(), peer, self.destination_id),
        )
        self.run_id = int(cur.lastrowid or 0)
        return self.run_id

    def _key(self, path: str) -> str:
        """`journal_key` of `path`, normalised once per path and run."""
        key = self._keys.get(path)
        if key is None:
            key = self._keys[path] = journal_key(path)
        return key

    def register(self, instances: list[Instance], failures: Iterable[ScanFailure] = ()) -> list[Instance]:
        """Record every input; return those still to send (not done, or changed since they were done).

        A file whose size or mtime differs from the journaled one is reset to pending: it is sent again.
        """
        todo: list[Instance] = []
        if self.db.execute("SELECT 1 FROM files LIMIT 1").fetchone() is None:
            todo = list(instances)  # a new journal: everything is to send, nothing to compare
            self._unregistered.extend(todo)
        else:
            known = {
                row[0]: (row[1], row[2], row[3], row[4])
                for row in self.db.execute("SELECT path, size, mtime_ns, category, commit_state FROM files")
            }
            uncommitted = []  # done, but the peer reported it could not commit them: sent again
            for inst in instances:
                key = self._key(inst.path)
                previous = known.get(key)
                if previous is None or previous[0] != inst.size or previous[1] != inst.mtime_ns:
                    self._unregistered.append(inst)  # new, or changed since: (re)set to pending
                    todo.append(inst)
                elif previous[2] not in DONE:
                    todo.append(inst)
                elif previous[3] == jc.FAILED:
                    todo.append(inst)
                    uncommitted.append((key,))
            if uncommitted:
                with self.db:
                    self.db.executemany(f"UPDATE files SET {jc.reset_sql()} WHERE path = ?", uncommitted)
        now = time.time()
        for failure in failures:
            try:
                info = os.stat(failure.path)
                size, mtime = info.st_size, info.st_mtime_ns
            except OSError:
                size, mtime = 0, 0
            self._failure_rows.append(
                (journal_key(failure.path), size, mtime, failure.reason, self.run_id, now)
            )
        # A new or changed file's row is written once: with its first outcome, or as pending when the run
        # ends or is interrupted (`flush`). Writing every row when registering and again with its outcome
        # cost ~7 % of a 1 KB run, half of it before the first C-STORE. After a crash (SIGKILL, power
        # loss) the journal holds the files the run tried; the resume registers and sends the rest.
        if self.run_id is not None:
            with self.db:
                self.db.execute(
                    "UPDATE runs SET files = ?, already_done = ? WHERE id = ?",
                    (len(todo), len(instances) - len(todo), self.run_id),
                )
        return todo

    def record(self, outcomes: list[Outcome]) -> None:
        """Journal outcomes; committed in one transaction every `COMMIT_ROWS` rows or `COMMIT_SECONDS`.

        A done file is never downgraded. Rows wait in memory until the next commit: a crash resends at
        most the files acknowledged in the last `COMMIT_SECONDS` (C-STORE is idempotent; none is lost).
        Committing every worker chunk (64 outcomes) instead cost ~4 % of a 1 KB run (perf/bench_journal.py).
        A file registered in this run and not written yet gets its whole row with its first outcome; a
        file written before, an update.
        """
        if not outcomes:
            return
        if self._unregistered:
            self._take_unregistered()
        now = time.time()
        run = self.run_id
        waiting = self._waiting
        keys = self._keys
        fresh = self._fresh
        updates = self._updates
        for o in outcomes:
            path = o.path
            key = keys.get(path) or self._key(path)
            category = o.category
            inst = waiting.pop(key, None)
            if inst is None:
                updates.append(
                    (category, o.status, o.error, o.sent_ts, o.attempts, 0 if category == st.NOT_SENT else 1,
                     run, now, key, category in DONE)
                )  # fmt: skip
            else:
                fresh.append(
                    (key, inst.size, inst.mtime_ns, inst.sop_class_uid, inst.sop_instance_uid,
                     inst.transfer_syntax, category, o.status, o.error, o.sent_ts, o.attempts,
                     0 if category == st.NOT_SENT else 1, run, now)
                )  # fmt: skip
        if len(fresh) + len(updates) >= COMMIT_ROWS or time.monotonic() - self._last_commit >= COMMIT_SECONDS:
            self._commit()

    def _take_unregistered(self) -> None:
        """The inputs `register` set aside, keyed now (after the first outcome, not before the first
        C-STORE)."""
        waiting = self._waiting
        for new in self._unregistered:
            waiting[self._key(new.path)] = new
        self._unregistered = []

    def flush(self) -> None:
        """Commit the outcomes `record` holds, and every registered file not written yet (as pending)."""
        self._commit(final=True)

    def _commit(self, final: bool = False) -> None:
        self._last_commit = time.monotonic()
        fresh, self._fresh = self._fresh, []
        updates, self._updates = self._updates, []
        failures, self._failure_rows = self._failure_rows, []
        if final:
            if self._unregistered:
                self._take_unregistered()
            waiting = self._waiting
            if waiting:
                run, now = self.run_id, time.time()
                fresh.extend(
                    (key, inst.size, inst.mtime_ns, inst.sop_class_uid, inst.sop_instance_uid,
                     inst.transfer_syntax, PENDING, None, "", "", 0, 0, run, now)
                    for key, inst in waiting.items()
                )  # fmt: skip
                waiting.clear()
        if not (fresh or updates or failures):
            return
        with self.db:
            self.db.execute("BEGIN")
            if fresh:  # first: a later outcome of the same file is among the UPDATEs
                self._insert_files(fresh)
            if failures:
                self.db.executemany(
                    "INSERT OR REPLACE INTO files (path, size, mtime_ns, category, error, tries, run, updated) "
                    "VALUES (?, ?, ?, 'permanent', ?, 1, ?, ?)",
                    failures,
                )
            if updates:
                self.db.executemany(
                    "UPDATE files SET category = ?, status = ?, error = ?, sent_ts = ?, attempts = ?, "
                    "tries = tries + ?, run = ?, updated = ? "
                    "WHERE path = ? AND (? OR category NOT IN ('success', 'warning'))",
                    updates,
                )

    def _insert_files(self, rows: list[tuple]) -> None:
        """Whole `files` rows, `_ROWS_PER_INSERT` to a statement: one multi-row INSERT costs ~0.6 us per
        row less than `executemany` of a one-row one (~2.2 against ~2.8 us; perf/bench_journal.py). Each
        key appears once in `rows` (a file's first outcome, or pending)."""
        statements = self._insert_sql
        db = self.db
        for i in range(0, len(rows), _ROWS_PER_INSERT):
            part = rows[i : i + _ROWS_PER_INSERT]
            sql = statements.get(len(part))
            if sql is None:
                sql = statements[len(part)] = _INSERT_FILES + ", ".join([_FILE_VALUES] * len(part))
            db.execute(sql, list(chain.from_iterable(part)))

    def finish_run(self, report: Report) -> None:
        """Commit every outcome, then close the run's record with its counts and exit code."""
        self.flush()
        if self.run_id is None:
            return
        c = report.counts()
        with self.db:
            self.db.execute(
                "UPDATE runs SET finished = ?, delivered = ?, failed = ?, not_sent = ?, interrupted = ?, "
                "exit_code = ? WHERE id = ?",
                (
                    time.time(),
                    c[st.SUCCESS] + c[st.WARNING],
                    c[st.TRANSIENT] + c[st.PERMANENT],
                    c[st.NOT_SENT],
                    int(report.interrupted),
                    report.exit_code(),
                    self.run_id,
                ),
            )

    # -- reading ---------------------------------------------------------------------------------
    def summary(self) -> JournalSummary:
        """Counts by state and the last run's record."""
        self.flush()
        counts: Counter = Counter(
            dict(self.db.execute("SELECT category, COUNT(*) FROM files GROUP BY category").fetchall())
        )
        runs = self.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        cur = self.db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1")
        row = cur.fetchone()
        last = dict(zip([d[0] for d in cur.description], row, strict=True)) if row else None
        return JournalSummary(
            files=sum(counts.values()),
            done=counts[st.SUCCESS] + counts[st.WARNING],
            failed_transient=counts[st.TRANSIENT],
            failed_permanent=counts[st.PERMANENT],
            pending=counts[PENDING] + counts[st.NOT_SENT],
            runs=runs,
            last_run=last,
            destination=str(current[1]) if (current := self.destination()) else "",
            commitment=jc.commit_counts(self.db),
        )

    def outcomes(self) -> list[Outcome]:
        """One `Outcome` per journaled file (its latest), for ``--report``; never-tried files are not-sent."""
        return [outcome for outcome, _run, _updated in self._rows()]

    def records(self, this_run: list[Outcome] | None = None) -> list[dict]:
        """One report record per journaled file (every input of every run): its latest outcome, the run
        that recorded it (``run``) and when (``recorded_at``, local ISO time). Outcomes of `this_run` give
        their fuller records (association, context, duration) to the files they name."""
        from .report import outcome_record

        fuller = {journal_key(o.path): o for o in this_run or ()}
        commitment = jc.commit_records(self.db)
        records = []
        for outcome, run, updated in self._rows():
            mine = fuller.get(outcome.path)
            record = outcome_record(
                mine if mine is not None and mine.category == outcome.category else outcome
            )
            record["path"] = outcome.path
            record["run"] = run if run is not None else ""
            record["recorded_at"] = (
                time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(updated)) if updated else ""
            )
            record.update(commitment.get(outcome.path, {}))
            records.append(record)
        return records

    def _rows(self) -> list[tuple[Outcome, int | None, float | None]]:
        self.flush()
        result = []
        for row in self.db.execute(
            "SELECT path, sop_class_uid, sop_instance_uid, transfer_syntax, sent_ts, category, status, error, "
            "attempts, size, run, updated FROM files ORDER BY path"
        ):
            category = st.NOT_SENT if row[5] == PENDING else row[5]
            outcome = Outcome(
                path=row[0],
                sop_class_uid=row[1],
                sop_instance_uid=row[2],
                original_ts=row[3],
                sent_ts=row[4],
                category=category,
                status=row[6],
                error=row[7] or ("not sent yet" if row[5] == PENDING else ""),
                attempts=row[8],
                size=row[9],
            )
            result.append((outcome, row[10], row[11]))
        return result

    def categories(self) -> dict[str, str]:
        """Path -> category of every journaled file (tests and tools)."""
        self.flush()
        return dict(self.db.execute("SELECT path, category FROM files").fetchall())


@dataclass
class JournalReport(Report):
    """A `Report` of a run with a journal: files already done before the run are counted, not resent."""

    journal_path: str = ""
    already_done: int = 0
    run_id: int = 0

    def records(self) -> list[dict]:
        """Every input file of the journal (done in this run or before), with the run and time of its
        latest outcome; read from the journal when the report is written."""
        if not self.journal_path or not os.path.isfile(self.journal_path):
            return super().records()
        with Journal(self.journal_path, create=False) as journal:
            return journal.records(self.outcomes)

    def record_fields(self) -> list[str]:
        return [*super().record_fields(), "run", "recorded_at", *jc.COMMIT_FIELDS]

    def exit_code(self) -> int:
        if not self.interrupted and not self.outcomes and self.already_done:
            return EXIT_OK  # nothing left to do is success
        return super().exit_code()

    def summary_lines(self) -> list[str]:
        lines = super().summary_lines()
        if self.already_done:
            lines.insert(2, f"{'Already done:':<23}{self.already_done} (journal {self.journal_path})")
        if not self.outcomes and self.already_done and not self.interrupted:
            lines.append(
                f"Nothing to send: all {self.already_done} file(s) are already done in journal "
                f"{self.journal_path}."
            )
        elif self.interrupted and self.journal_path:
            lines.append(f"Resume with the same command: the journal {self.journal_path} is up to date.")
        return lines

    def to_dict(self, records: list[dict] | None = None) -> dict:
        data = super().to_dict(records)
        data["summary"]["already_done"] = self.already_done
        data["summary"]["journal"] = self.journal_path
        data["summary"]["journal_run"] = self.run_id
        data["summary"]["journal_files"] = len(data["files"])
        data["summary"]["exit_code"] = self.exit_code()
        return data
