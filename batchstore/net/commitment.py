"""Storage Commitment Push Model (PS3.4 Annex J) on the wire, for both sides: the N-ACTION-RQ's Action
Information and the N-EVENT-REPORT-RQ's Event Information (encoded and decoded with pydicom, every value
checked before it is trusted), and `MessageAssembler`, which puts a DIMSE message (command set and data
set) back together from P-DATA-TF PDUs within bounds.

The command sets themselves are in `net.dimse`. Who asks and who answers is in `sender.commitment` and
`receiver.commitment` (docs/design.md, "Storage commitment").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..dicom.uids import EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE
from ..dicom.walk import UNDEFINED, Source, WalkError, fmt_tag, read_header, walk_dataset, walk_items
from . import dimse
from .errors import ProtocolError
from .pdu import iter_pdvs, pdata_parts

#: The Storage Commitment Push Model SOP Class and its well-known SOP Instance.
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: N-ACTION Action Type ID "Request Storage Commitment"; N-EVENT-REPORT Event Type IDs.
ACTION_REQUEST = 1
EVENT_ALL_COMMITTED = 1
EVENT_SOME_FAILED = 2

#: The transfer syntaxes the commitment messages are exchanged in (proposed and accepted, preferred first).
TRANSFER_SYNTAXES = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
_DECODABLE = {IMPLICIT_VR_LE: (True, True), EXPLICIT_VR_LE: (False, True), EXPLICIT_VR_BE: (False, False)}

#: Failure Reasons (PS3.3 C.14.1.1) a commitment SCP gives, with what they mean.
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0119: "class / instance conflict",
    0x0122: "referenced SOP class not supported",
    0x0124: "refused: not authorized",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
}
NO_SUCH_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110

#: The longest command set and data set of a commitment message accepted from a peer. A reference is
#: about 130 bytes: 16 MiB holds over 100,000 of them, far more than one request batchstore sends.
MAX_COMMAND = 16 * 1024
MAX_DATA_SET = 16 * 2**20


def failure_text(reason: int | None) -> str:
    """A Failure Reason as a person reads it: ``0x0112 no such object instance``."""
    if reason is None:
        return "failed (no reason given)"
    return f"0x{reason:04X} {FAILURE_REASONS.get(reason, 'failure')}"


@dataclass(frozen=True)
class Reference:
    """One SOP instance in a commitment request or report."""

    sop_class_uid: str
    sop_instance_uid: str
    failure_reason: int | None = None


@dataclass
class EventReport:
    """What an N-EVENT-REPORT-RQ says about one transaction."""

    transaction_uid: str
    event_type: int
    committed: list[Reference] = field(default_factory=list)
    failed: list[Reference] = field(default_factory=list)


def encode_action(transaction_uid: str, references: Sequence[Reference], transfer_syntax: str) -> bytes:
    """The N-ACTION-RQ's Action Information: Transaction UID and Referenced SOP Sequence."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = DicomSequence([_item(ref) for ref in references])
    return _encode(ds, transfer_syntax)


def encode_event(report: EventReport, transfer_syntax: str) -> bytes:
    """The N-EVENT-REPORT-RQ's Event Information: Transaction UID, the committed instances (Referenced
    SOP Sequence, when there are any) and the failed ones (Failed SOP Sequence, with Failure Reason)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    if report.committed:
        ds.ReferencedSOPSequence = DicomSequence([_item(ref) for ref in report.committed])
    if report.failed:
        ds.FailedSOPSequence = DicomSequence([_item(ref) for ref in report.failed])
    return _encode(ds, transfer_syntax)


def _item(ref: Reference) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    if ref.failure_reason is not None:
        item.FailureReason = ref.failure_reason
    return item


def _encode(ds: Any, transfer_syntax: str) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    implicit, little = _DECODABLE[transfer_syntax]
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def decode_action(data: bytes, transfer_syntax: str) -> tuple[str, list[Reference]]:
    """The Transaction UID and the references of an N-ACTION-RQ's data set.

    Raises
    ------
    ProtocolError
        If the data set cannot be decoded, or a UID is missing or not a UID.
    """
    ds = _decode(data, transfer_syntax)
    transaction = _uid(ds, "TransactionUID", "Transaction UID")
    refs = _references(ds, "ReferencedSOPSequence", with_reason=False)
    return transaction, refs


def decode_event(data: bytes, transfer_syntax: str, event_type: int) -> EventReport:
    """What an N-EVENT-REPORT-RQ's data set says (`event_type` from its command set).

    Raises
    ------
    ProtocolError
        If the data set cannot be decoded, a UID is missing or invalid, a failed instance has no
        Failure Reason, or the event type and the sequences disagree (type 1 with failures).
    """
    if event_type not in (EVENT_ALL_COMMITTED, EVENT_SOME_FAILED):
        raise ProtocolError(f"N-EVENT-REPORT event type {event_type} is not a storage commitment result")
    ds = _decode(data, transfer_syntax)
    report = EventReport(
        transaction_uid=_uid(ds, "TransactionUID", "Transaction UID"),
        event_type=event_type,
        committed=_references(ds, "ReferencedSOPSequence", with_reason=False),
        failed=_references(ds, "FailedSOPSequence", with_reason=True),
    )
    if event_type == EVENT_ALL_COMMITTED and report.failed:
        raise ProtocolError("N-EVENT-REPORT type 1 (all committed) lists failed instances")
    return report


_SEQUENCES = (0x00081199, 0x00081198)  # Referenced SOP Sequence, Failed SOP Sequence
_ITEM = 0xFFFEE000


def check_lengths(data: bytes | memoryview, explicit: bool, little: bool, depth: int = 0) -> None:
    """Check that every element, item and nested element of `data` fits in its container (pydicom
    would read a value cut short as a shorter value: a truncated UID is another UID).

    Raises
    ------
    WalkError
        Naming the element that does not fit.
    """
    if depth > 4:
        raise WalkError("commitment data set nested too deeply")
    src = Source(-1, len(data), data)
    pos = 0
    while pos < len(data):
        tag, vr, length, vpos = read_header(src, pos, explicit, little)
        if length == UNDEFINED:
            pos = walk_items(src, vpos, explicit, little, tag, depth + 1)
            continue
        if length > len(data) - vpos:
            raise WalkError(f"element {fmt_tag(tag)} needs {length} bytes, {len(data) - vpos} remain")
        if vr == b"SQ" or (vr is None and tag in _SEQUENCES):
            item = vpos
            while item < vpos + length:
                item_tag, _vr, item_length, start = read_header(
                    Source(-1, vpos + length, data), item, False, little
                )
                if item_tag != _ITEM:
                    raise WalkError(f"{fmt_tag(item_tag)} in {fmt_tag(tag)} is not an item")
                if item_length == UNDEFINED:
                    item = walk_dataset(
                        Source(-1, vpos + length, data), start, explicit, little, True, depth + 1
                    )
                    continue
                if item_length > vpos + length - start:
                    raise WalkError(f"an item of {fmt_tag(tag)} runs past the end of the sequence")
                check_lengths(memoryview(data)[start : start + item_length], explicit, little, depth + 1)
                item = start + item_length
        pos = vpos + length


def _decode(data: bytes, transfer_syntax: str) -> Any:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    if transfer_syntax not in _DECODABLE:
        raise ProtocolError(f"commitment data set in transfer syntax {transfer_syntax}")
    if len(data) > MAX_DATA_SET:
        raise ProtocolError(f"commitment data set of {len(data)} bytes (at most {MAX_DATA_SET})")
    implicit, little = _DECODABLE[transfer_syntax]
    try:
        check_lengths(data, not implicit, little)
    except WalkError as exc:
        raise ProtocolError(f"cannot decode the commitment data set: {exc}") from None
    try:
        ds = read_dataset(DicomBytesIO(bytes(data)), implicit, little)  # type: ignore[arg-type]
        ds.get("TransactionUID")  # parse now, so that a malformed element fails here
        for name in ("ReferencedSOPSequence", "FailedSOPSequence"):
            for item in ds.get(name) or ():
                (
                    item.get("ReferencedSOPClassUID"),
                    item.get("ReferencedSOPInstanceUID"),
                    item.get("FailureReason"),
                )
    except Exception as exc:  # pydicom raises many kinds for malformed input: all mean "cannot decode"
        raise ProtocolError(f"cannot decode the commitment data set: {exc}") from None
    return ds


def _uid(ds: Any, keyword: str, name: str) -> str:
    value = ds.get(keyword)
    text = str(value or "").strip("\0 ")
    if not dimse.encodable_uid(text) or not all(c in "0123456789." for c in text):
        raise ProtocolError(f"commitment data set: {name} {text!r} is missing or not a UID")
    return text


def _references(ds: Any, keyword: str, with_reason: bool) -> list[Reference]:
    out = []
    for item in ds.get(keyword) or ():
        reason = None
        if with_reason:
            value = item.get("FailureReason")
            if value is None or isinstance(value, (list, tuple)) or not 0 <= int(value) <= 0xFFFF:
                raise ProtocolError(f"commitment data set: a {keyword} item without one Failure Reason")
            reason = int(value)
        out.append(
            Reference(
                _uid(item, "ReferencedSOPClassUID", "Referenced SOP Class UID"),
                _uid(item, "ReferencedSOPInstanceUID", "Referenced SOP Instance UID"),
                reason,
            )
        )
    return out


@dataclass
class Message:
    """One whole DIMSE message: its presentation context, command set and data set (None without)."""

    context_id: int
    command: dimse.Command
    data_set: bytes | None = None


class MessageAssembler:
    """Puts DIMSE messages back together from P-DATA-TF bodies, bounded by `MAX_COMMAND` and `max_data`.

    Raises `ProtocolError` for a malformed PDV, a fragment on another context than its message's, a data
    set fragment without a command that announced one, or a message longer than the bounds.
    """

    def __init__(self, max_data: int = MAX_DATA_SET) -> None:
        self.max_data = max_data
        self._command = bytearray()
        self._data = bytearray()
        self._pending: Message | None = None  # a command whose data set is still arriving

    @property
    def busy(self) -> bool:
        """True while a message is partly received."""
        return bool(self._command) or self._pending is not None

    def feed(self, body: bytes | bytearray) -> list[Message]:
        """Return the messages `body` completes (usually none or one)."""
        done: list[Message] = []
        for context, control, fragment in iter_pdvs(body):
            message = self._fragment(context, control, fragment)
            if message is not None:
                done.append(message)
        return done

    def _fragment(self, context: int, control: int, fragment: memoryview) -> Message | None:
        pending = self._pending
        if control & 1:
            if pending is not None:
                raise ProtocolError("command fragment while a data set was expected")
            self._command += fragment
            if len(self._command) > MAX_COMMAND:
                raise ProtocolError(f"command set longer than {MAX_COMMAND} bytes")
            if not control & 2:
                return None
            try:
                command = dimse.decode_command(bytes(self._command))
            except ValueError as exc:
                raise ProtocolError(f"cannot decode DIMSE command: {exc}") from None
            self._command.clear()
            message = Message(context, command)
            if not command.data_set_present:
                return message
            self._pending = message
            return None
        if pending is None:
            raise ProtocolError("data set fragment without a command")
        if context != pending.context_id:
            raise ProtocolError("data set fragment on another presentation context than its command")
        self._data += fragment
        if len(self._data) > self.max_data:
            raise ProtocolError(f"data set longer than {self.max_data} bytes")
        if not control & 2:
            return None
        pending.data_set = bytes(self._data)
        self._data.clear()
        self._pending = None
        return pending


def message_parts(context_id: int, command: bytes, data_set: bytes | None, max_pdu: int) -> list[Any]:
    """The P-DATA-TF PDUs of a whole message (command, then its data set), for one gather write."""
    parts: list[Any] = pdata_parts(context_id, command, True, max_pdu)
    if data_set is not None:
        parts += pdata_parts(context_id, data_set, False, max_pdu)
    return parts
