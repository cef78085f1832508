"""Storage commitment, the sender's side (``send --commit``, ``batchstore commit``): ask the peer to commit
the stored files of a journal, and journal what it answers (docs/design.md, "Storage commitment").

`commit_journal` takes every stored file of the journal that is not committed yet (nor reported failed),
asks for them in batches (one N-ACTION-RQ, one Transaction UID each, journaled before it is sent), and
waits for the N-EVENT-REPORTs: on the same association, or on one the peer opens to the `ReportListener`
(``--commit-port``). A transaction without a report within the timeout is asked again (a new Transaction
UID) up to `CommitOptions.retries` times; what is still unanswered stays *requested* in the journal, and a
later run asks for it again.
"""

from __future__ import annotations

import logging
import queue
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..net import commitment as sc
from ..net import dimse
from ..net.errors import NetError, ProtocolError
from ..net.pdu import A_RELEASE_RP, A_RELEASE_RQ, P_DATA_TF
from . import journal_commit as jc
from .commit_listener import ReportListener
from .journal import Journal, JournalError
from .scu import AssociationOptions, StoreSCU

log = logging.getLogger("batchstore.commit")


@dataclass(frozen=True)
class CommitOptions:
    """``--commit-*``: how commitment is asked for and waited on.

    Attributes
    ----------
    batch_size : int
        SOP instances per N-ACTION-RQ (one transaction each).
    timeout : float
        Seconds to wait for the reports of the requests sent, counted from the last request.
    retries : int
        How often a transaction without a report is asked for again.
    port : int or None
        Listen on this port for reports on an association the peer opens (None: same association only).
    host : str
        Address the listener binds.
    ae_title : str or None
        The listener's AE title (default: the calling AE title, the one the peer knows).
    """

    batch_size: int = 500
    timeout: float = 60.0
    retries: int = 1
    port: int | None = None
    host: str = "0.0.0.0"
    ae_title: str | None = None


@dataclass
class CommitResult:
    """What a commitment run did; the journal holds the per-file states."""

    requested: int = 0  # files asked for (each once, retries not counted)
    transactions: int = 0
    committed: int = 0
    failed: int = 0
    unanswered: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.failed or self.unanswered or self.errors)

    def lines(self) -> list[str]:
        out = [
            f"Commitment requested:  {self.requested} file(s) in {self.transactions} transaction(s)",
            f"Committed:             {self.committed}",
            f"Commitment failed:     {self.failed}",
            f"Not committed yet:     {self.unanswered}",
        ]
        out += [f"Commitment error:      {e}" for e in self.errors]
        return out


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


class _Session:
    """One commitment run: the association (opened when needed), the listener, the journal."""

    def __init__(self, journal: Journal, assoc: AssociationOptions, options: CommitOptions) -> None:
        self.journal = journal
        self.db = journal.db
        self.assoc = assoc
        self.options = options
        self.scu: StoreSCU | None = None
        self.assembler = sc.MessageAssembler()
        self.ts = sc.TRANSFER_SYNTAXES[0]
        self.listener: ReportListener | None = None
        self.outstanding: dict[str, int] = {}  # transaction UID -> attempt
        self.result = CommitResult()

    # -- the association --------------------------------------------------------------------------
    def _open(self) -> StoreSCU:
        if self.scu is not None and self.scu.stream is not None:
            return self.scu
        scu = StoreSCU(self.assoc, ((1, sc.STORAGE_COMMITMENT, sc.TRANSFER_SYNTAXES),))
        scu.open()
        ts = scu.accepted().get(1)
        if ts is None:
            scu.abort()
            raise NetError("the peer does not accept the Storage Commitment Push Model SOP class")
        self.ts = ts
        self.scu = scu
        self.assembler = sc.MessageAssembler()
        return scu

    def close(self) -> None:
        if self.scu is not None:
            self.scu.release()
            self.scu = None

    # -- requests ---------------------------------------------------------------------------------
    def request(self, files: Sequence[tuple[str, str, str]], attempt: int) -> None:
        """One N-ACTION-RQ for `files`, journaled first; its N-ACTION-RSP is awaited here."""
        scu = self._open()
        assert scu.stream is not None
        tx = _new_uid()
        refs = [sc.Reference(cls, inst) for _path, cls, inst in files]
        jc.record_request(self.db, tx, [path for path, _c, _i in files], self.journal.destination_id, attempt)
        message_id = scu._next_message_id()
        command = dimse.n_action_rq(
            message_id, sc.STORAGE_COMMITMENT, sc.STORAGE_COMMITMENT_INSTANCE, sc.ACTION_REQUEST
        )
        data = sc.encode_action(tx, refs, self.ts)
        scu.stream.send_parts(sc.message_parts(1, command, data, scu.send_pdu))
        log.info("storage commitment requested: %d instance(s), transaction %s", len(refs), tx)
        self.result.transactions += 1
        message = self._read_same(block=True)  # the N-ACTION-RSP (reports that come first are handled)
        if message is None:
            raise ProtocolError(
                "the peer ended the association before answering the N-ACTION-RQ (does it know the "
                "calling AE title, -aet? Orthanc: DicomModalities)"
            )
        cmd = message.command
        if cmd.command_field != dimse.N_ACTION_RSP:
            raise ProtocolError(f"unexpected command 0x{cmd.command_field:04X} instead of N-ACTION-RSP")
        if cmd.message_id_responded != message_id:
            raise ProtocolError(f"N-ACTION-RSP to message {cmd.message_id_responded}, expected {message_id}")
        status = cmd.status if cmd.status is not None else 0xFFFF
        if status != 0 and status & 0xF000 != 0xB000:
            jc.record_refusal(self.db, tx, status)
            self.result.errors.append(f"N-ACTION-RSP status 0x{status:04X} for transaction {tx}")
            log.error("storage commitment request refused: status 0x%04X (transaction %s)", status, tx)
            return
        if not jc.answered(self.db, tx):  # (a report may have come before the N-ACTION-RSP)
            self.outstanding[tx] = attempt

    def _read_same(self, block: bool) -> sc.Message | None:
        """The next message on the association (N-EVENT-REPORT-RQs are answered and journaled on the way,
        and never returned); None when there is none now (`block` false) or the association ended."""
        scu = self.scu
        while scu is not None and scu.stream is not None:
            stream = scu.stream
            if not (block or self.assembler.busy) and not stream.input_pending():
                return None  # (a message partly received is always read to its end)
            try:
                pdu_type, body = stream.read_pdu()
            except (OSError, NetError) as exc:
                log.info("storage commitment association ended: %s", exc)
                scu.close()
                return None
            if pdu_type == A_RELEASE_RQ:  # the peer is done with it: reports now come on a new association
                stream.pdu(A_RELEASE_RP, bytes(4))
                scu.close()
                return None
            if pdu_type != P_DATA_TF:
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} on the commitment association")
            for message in self.assembler.feed(body):
                if message.command.command_field == dimse.N_EVENT_REPORT_RQ:
                    self._report_on_association(message)
                else:
                    return message
        return None

    def _report_on_association(self, message: sc.Message) -> None:
        scu = self.scu
        assert scu is not None and scu.stream is not None
        cmd = message.command
        event_type = dimse.us_element(cmd, dimse.EVENT_TYPE_ID) or 0
        status = 0
        try:
            if message.data_set is None:
                raise ProtocolError("N-EVENT-REPORT-RQ without its Event Information")
            report = sc.decode_event(message.data_set, self.ts, event_type)
        except ProtocolError as exc:
            log.error("storage commitment report not understood: %s", exc)
            status = 0x0110
            report = None
        rsp = dimse.n_event_report_rsp(
            cmd.message_id, sc.STORAGE_COMMITMENT, sc.STORAGE_COMMITMENT_INSTANCE, event_type, status
        )
        scu.stream.send_parts(sc.message_parts(message.context_id, rsp, None, scu.send_pdu))
        if report is not None:
            self.record(report, "same association")

    def record(self, report: sc.EventReport, via: str) -> None:
        tx = report.transaction_uid
        if not jc.known_transaction(self.db, tx):
            log.warning("storage commitment report for unknown transaction %s ignored", tx)
            return
        committed, failed = jc.record_report(self.db, report, via)
        self.outstanding.pop(tx, None)
        self.result.committed += committed
        self.result.failed += failed
        log.info(
            "storage commitment report (%s), transaction %s: %d committed, %d failed",
            via,
            tx,
            len(report.committed),
            len(report.failed),
        )
        for ref in report.failed:
            log.warning("not committed: %s: %s", ref.sop_instance_uid, sc.failure_text(ref.failure_reason))

    # -- waiting ----------------------------------------------------------------------------------
    def wait(self) -> None:
        """Wait for the outstanding transactions' reports; ask again for those that do not come."""
        deadline = time.monotonic() + self.options.timeout
        while self.outstanding:
            self._read_same(block=False)
            if self.listener is not None:
                try:
                    report, calling_ae = self.listener.reports.get(timeout=0.05)
                except queue.Empty:
                    pass
                else:
                    self.record(report, f"new association from {calling_ae}")
                    continue
            if not self.outstanding:
                break
            if time.monotonic() >= deadline:
                if not self._retry():
                    break
                deadline = time.monotonic() + self.options.timeout
                continue
            stream = self.scu.stream if self.scu is not None else None
            if stream is not None:
                select.select([stream.sock], [], [], 0.05)
            elif self.listener is None:
                time.sleep(0.05)

    def _retry(self) -> bool:
        """Ask again (new transactions) for the files of transactions without a report; False when no
        retry is left."""
        late, self.outstanding = self.outstanding, {}
        for tx, attempt in late.items():
            if attempt > self.options.retries:
                continue
            files = jc.still_requested(self.db, tx)
            if files:
                log.warning("no storage commitment report for transaction %s: asking again", tx)
                self.request(files, attempt + 1)
        return bool(self.outstanding)


def commit_journal(journal_path: str, assoc: AssociationOptions, options: CommitOptions) -> CommitResult:
    """Ask the peer of `assoc` to commit the journal's stored, uncommitted files; journal its answers.

    Network failures are reported in `CommitResult.errors` (what was answered before is journaled);
    a journal that cannot be opened raises `JournalError`.
    """
    with Journal(journal_path, create=False) as journal:
        current = journal.destination()
        if current is not None:
            journal.destination_id = current[0]
        session = _Session(journal, assoc, options)
        files = jc.uncommitted(journal.db)
        result = session.result
        if not files:
            log.info("storage commitment: nothing to ask for (every stored file is committed or failed)")
            return result
        jc.record_attempt(journal.db, len(files))
        listener = None
        try:
            if options.port is not None:
                listener = session.listener = ReportListener(
                    options.host,
                    options.port,
                    options.ae_title or assoc.calling_ae,
                    assoc.acse_timeout or 30.0,
                    tls=assoc.tls,
                ).start()
            for start in range(0, len(files), options.batch_size):
                batch = files[start : start + options.batch_size]
                result.requested += len(batch)
                session.request(batch, 1)
            session.wait()
        except (OSError, NetError, ProtocolError) as exc:
            from .outcomes import describe_error

            result.errors.append(describe_error(exc))
            log.error("storage commitment: %s", describe_error(exc))
            if session.scu is not None:
                session.scu.abort()
                session.scu = None
            if session.outstanding:
                session.wait()  # reports on the listener may still come
        except BaseException:  # interrupted: no release handshake to wait for
            if session.scu is not None:
                session.scu.abort()
                session.scu = None
            raise
        finally:
            session.close()
            if listener is not None:
                listener.close()
        result.unanswered = len(jc.uncommitted(journal.db))
        return result


__all__ = ["CommitOptions", "CommitResult", "JournalError", "commit_journal"]
