"""Data sets prepared before the clock starts, with fresh UIDs patched in place per C-STORE.

Each input file is encoded once in the transfer syntax the peer accepted for it (its own bytes when it
can go out as they are, else `dicom.transcode`'s re-encoding). With fresh UIDs (the default), its
top-level SOP Instance, Series Instance and Study Instance UIDs, Patient ID and Patient's Name are then
rewritten to fixed-length values, so the data set's layout never changes again: per C-STORE only those
bytes are overwritten, in the one buffer that is sent (a few microseconds, no copy, no pydicom).

The UIDs follow storescu's ``+II +IR +IS +IP``: a new SOP Instance UID per image, a new series after
`series_after` images (default 100), a new study after `study_after` series (50), a new patient (ID and
name) after `patient_after` studies (25), counted per association. Every UID is 64 characters under a
``2.25.<UUID>`` root made fresh for each concurrency level and association, so no two C-STOREs of any
run carry the same SOP Instance UID and a peer that deduplicates still has to store every one.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..dicom.part10 import Instance
from ..dicom.uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE, ts_name
from ..dicom.walk import UNDEFINED, Source, WalkError, read_header, walk_items
from ..sender.plan import ContextGroup, context_choices, no_context_reason

__all__ = ["FreshUids", "PrepareError", "Template", "prepare"]

SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010

UID_LENGTH = 64
PATIENT_ID_LENGTH = 22
PATIENT_NAME_LENGTH = 34
_SLOTS = (
    (PATIENT_NAME, b"PN", PATIENT_NAME_LENGTH),
    (PATIENT_ID, b"LO", PATIENT_ID_LENGTH),
    (SOP_INSTANCE_UID, b"UI", UID_LENGTH),
    (STUDY_INSTANCE_UID, b"UI", UID_LENGTH),
    (SERIES_INSTANCE_UID, b"UI", UID_LENGTH),
)


class PrepareError(Exception):
    """An input data set cannot be prepared for the load test; the message says why."""


@dataclass
class Template:
    """One prepared data set: its bytes, where it goes, and where the changing values sit in it."""

    instance: Instance  # the input file
    context_id: int
    sop_class_uid: str
    sop_instance_uid: str  # the file's own (sent as is without fresh UIDs)
    transfer_syntax: str  # the syntax of `payload`
    payload: bytearray
    #: tag -> offset of the value in `payload` (empty without fresh UIDs)
    slots: dict[int, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.payload)


class FreshUids:
    """The UIDs and patient of the `n`-th C-STORE of one association (storescu's ``+II +IR +IS +IP``).

    Values are cached per series, study and patient, so a C-STORE costs one string format and five
    slice assignments.
    """

    def __init__(self, series_after: int = 100, study_after: int = 50, patient_after: int = 25) -> None:
        if min(series_after, study_after, patient_after) < 1:
            raise ValueError("+IR, +IS and +IP take a number of at least 1")
        self.series_after = series_after
        self.study_after = study_after
        self.patient_after = patient_after
        root = f"2.25.{uuid.uuid4().int}"
        self._prefix = {kind: f"{root}.{kind}." for kind in (1, 2, 3)}
        # every UID is exactly UID_LENGTH characters: the counter fills what the root leaves
        self._width = UID_LENGTH - len(self._prefix[1])
        if self._width < 12:
            raise ValueError("UID root too long")  # cannot happen: "2.25." + 39 digits + ".1." is 47
        self._base = 10 ** (self._width - 1)
        self._tag = uuid.uuid4().hex[:8].upper()
        self._cache: dict[tuple[int, int], bytes] = {}

    def uid(self, kind: int, number: int) -> str:
        """A 64-character UID: `kind` 1 instance, 2 series, 3 study."""
        return f"{self._prefix[kind]}{self._base + number}"

    def _cached(self, kind: int, number: int) -> bytes:
        key = (kind, number)
        value = self._cache.get(key)
        if value is None:
            if len(self._cache) > 64:
                self._cache.clear()
            if kind == 4:
                value = f"BS{self._tag}{number:012d}".encode().ljust(PATIENT_ID_LENGTH)
            elif kind == 5:
                value = f"BATCHSTORE^LOAD{self._tag}{number:011d}".encode().ljust(PATIENT_NAME_LENGTH)
            else:
                value = self.uid(kind, number).encode()
            self._cache[key] = value
        return value

    def apply(self, template: Template, n: int) -> str:
        """Write the `n`-th C-STORE's values into `template`'s payload; return its SOP Instance UID."""
        uid = self.uid(1, n)
        slots = template.slots
        if not slots:
            return template.sop_instance_uid
        payload = template.payload
        at = slots[SOP_INSTANCE_UID]
        payload[at : at + UID_LENGTH] = uid.encode()
        series = n // self.series_after
        study = series // self.study_after
        patient = study // self.patient_after
        at = slots[SERIES_INSTANCE_UID]
        payload[at : at + UID_LENGTH] = self._cached(2, series)
        at = slots[STUDY_INSTANCE_UID]
        payload[at : at + UID_LENGTH] = self._cached(3, study)
        at = slots[PATIENT_ID]
        payload[at : at + PATIENT_ID_LENGTH] = self._cached(4, patient)
        at = slots[PATIENT_NAME]
        payload[at : at + PATIENT_NAME_LENGTH] = self._cached(5, patient)
        return uid


def _encoding(ts: str) -> tuple[bool, bool]:
    """(explicit VR, little endian) of an uncompressed or encapsulated syntax."""
    return ts != IMPLICIT_VR_LE, ts != EXPLICIT_VR_BE


def top_level(data: bytes | bytearray, ts: str) -> list[tuple[int, int, int]]:
    """(tag, start, end) of every top-level element of an encoded data set (sequences skipped whole)."""
    explicit, little = _encoding(ts)
    src = Source(-1, len(data), bytes(data))
    found: list[tuple[int, int, int]] = []
    pos = 0
    while pos < len(data):
        tag, vr, length, vpos = read_header(src, pos, explicit, little)
        if length == UNDEFINED:
            if vr == b"UN":
                end = walk_items(src, vpos, False, True, tag)
            else:
                end = walk_items(src, vpos, explicit, little, tag)
        else:
            end = vpos + length
            if end > len(data):
                raise WalkError(f"truncated data set at offset {pos}")
        found.append((tag, pos, end))
        pos = end
    return found


def with_slots(data: bytes | bytearray, ts: str) -> tuple[bytearray, dict[int, int]]:
    """`data` with the five changing elements replaced by fixed-length placeholders; their value offsets.

    Elements the data set lacks are added; the others keep their bytes and their order.
    """
    explicit, little = _encoding(ts)
    order = "<" if little else ">"
    pieces: list[tuple[int, bytes, int]] = []  # (tag, header + value, length of the header or -1)
    slot_tags = {tag for tag, _vr, _n in _SLOTS}
    for tag, start, end in top_level(data, ts):
        if tag not in slot_tags:
            pieces.append((tag, bytes(data[start:end]), -1))
    for tag, vr, n in _SLOTS:
        if explicit:
            header = struct.pack(order + "HH2sH", tag >> 16, tag & 0xFFFF, vr, n)
        else:
            header = struct.pack(order + "HHI", tag >> 16, tag & 0xFFFF, n)
        pad = b"\0" if vr == b"UI" else b" "
        pieces.append((tag, header + pad * n, len(header)))
    pieces.sort(key=lambda p: p[0])  # stable: the data set's own order is kept among equal tags
    out = bytearray()
    slots: dict[int, int] = {}
    for tag, raw, header_length in pieces:
        if header_length >= 0:
            slots[tag] = len(out) + header_length
        out += raw
    return out, slots


def _encoded(instance: Instance, ts: str, mode: str, read_dataset_only: bool) -> bytes:
    if mode == "as-is" and ts != DEFLATED_EXPLICIT_VR_LE:
        with open(instance.path, "rb") as fh:
            fh.seek(instance.data_offset)
            return fh.read()
    from ..dicom.transcode import encode_dataset

    return bytes(
        encode_dataset(instance.path, instance.transfer_syntax, ts, None, 0, read_dataset_only).payload
    )


def prepare(
    instances: Sequence[Instance],
    group: ContextGroup,
    accepted: Mapping[int, str],
    fresh: bool = True,
    read_dataset_only: bool = False,
) -> list[Template]:
    """Encode every instance for the accepted contexts; with `fresh`, give each the UID slots.

    Raises
    ------
    PrepareError
        A file has no accepted context, cannot be encoded, or (with `fresh`) can only go out deflated:
        a deflated data set would have to be compressed again for every C-STORE.
    """
    templates: list[Template] = []
    for inst in instances:
        choices = context_choices(group, inst.sop_class_uid, inst.transfer_syntax, accepted)
        if fresh:
            choices = tuple(c for c in choices if c[1] != DEFLATED_EXPLICIT_VR_LE)
        if not choices:
            reason = no_context_reason(group, inst.transfer_syntax)
            if fresh and any(ts == DEFLATED_EXPLICIT_VR_LE for ts in accepted.values()):
                reason += " (a deflated syntax cannot carry fresh UIDs cheaply: use --keep-uids)"
            raise PrepareError(f"{inst.path}: {reason}")
        last_error = ""
        for cid, ts, mode in choices:
            try:
                data = _encoded(inst, ts, mode, read_dataset_only)
                slots: dict[int, int] = {}
                payload = bytearray(data)
                if fresh:
                    payload, slots = with_slots(data, ts)
            except (OSError, ValueError, WalkError) as exc:
                last_error = f"{ts_name(ts)}: {exc}"
                continue
            templates.append(
                Template(inst, cid, inst.sop_class_uid, inst.sop_instance_uid, ts, payload, slots)
            )
            break
        else:
            raise PrepareError(f"{inst.path}: cannot be prepared ({last_error})")
    return templates
