"""Tests for batchstore.dicom.walk, the one element walker: `read_elements` (the receiver's reading of a few
top-level values) against literal expectations and against the receiver's own former implementation where
it still exists, and the bound on nesting for every reader of the walker.
"""

from __future__ import annotations

import io
import mmap
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from batchstore.dicom.part10 import (
    Instance,
    data_set_offset,
    read_dataset_bytes,
    read_instance,
    verify_bytes,
    verify_dataset,
)
from batchstore.dicom.uids import EXPLICIT_VR_BE, IMPLICIT_VR_LE
from batchstore.dicom.walk import MAX_NESTING, Source, WalkError, read_elements, walk_dataset

CT = "1.2.840.10008.5.1.4.1.1.2"
CHARSET, SOP_CLASS, SOP_INSTANCE = 0x00080005, 0x00080016, 0x00080018
PATIENT_NAME, STUDY_UID = 0x00100010, 0x0020000D
#: The receiver's wanted sets: the UIDs it checks, and the sort keys of -ss/-su/-sp.
WANTED = [
    frozenset((SOP_CLASS, SOP_INSTANCE)),
    frozenset((CHARSET, SOP_CLASS, SOP_INSTANCE, PATIENT_NAME, STUDY_UID)),
    frozenset((PATIENT_NAME,)),
    frozenset((STUDY_UID, 0x7FE00010)),
]


# --- hand-built encodings ------------------------------------------------------------------------------

LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
UNDEF = 0xFFFFFFFF


def ex(tag: int, vr: str, value: bytes, little: bool = True, length: int | None = None) -> bytes:
    """One explicit VR element."""
    o = "<" if little else ">"
    n = len(value) if length is None else length
    head = struct.pack(o + "HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in LONG:
        return head + b"\0\0" + struct.pack(o + "I", n) + value
    return head + struct.pack(o + "H", n) + value


def im(tag: int, value: bytes, little: bool = True, length: int | None = None) -> bytes:
    """One implicit VR element (also items and delimiters: tag (FFFE,xxxx))."""
    o = "<" if little else ">"
    n = len(value) if length is None else length
    return struct.pack(o + "HHI", tag >> 16, tag & 0xFFFF, n) + value


def item(body: bytes, little: bool = True, undefined: bool = False) -> bytes:
    if undefined:
        return im(0xFFFEE000, body, little, UNDEF) + im(0xFFFEE00D, b"", little)
    return im(0xFFFEE000, body, little)


def seq_end(little: bool = True) -> bytes:
    return im(0xFFFEE0DD, b"", little)


def flat(little: bool = True, explicit: bool = True) -> tuple[bytes, dict[int, bytes], dict[int, int]]:
    """A flat data set; its values and where each value ends."""
    values = {
        CHARSET: b"ISO_IR 100",
        SOP_CLASS: CT.encode() + b"\0",
        SOP_INSTANCE: b"1.2.3.4.5.6",
        PATIENT_NAME: b"Doe^John",
        STUDY_UID: b"1.2.3.9\0",
    }
    vrs = {CHARSET: "CS", SOP_CLASS: "UI", SOP_INSTANCE: "UI", PATIENT_NAME: "PN", STUDY_UID: "UI"}
    out = b""
    ends = {}
    for tag, value in values.items():
        out += ex(tag, vrs[tag], value, little) if explicit else im(tag, value, little)
        ends[tag] = len(out)
    return out, values, ends


ALL_WANTED = frozenset((CHARSET, SOP_CLASS, SOP_INSTANCE, PATIENT_NAME, STUDY_UID))


@pytest.mark.parametrize("little,explicit", [(True, True), (True, False), (False, True)])
def test_flat_data_set_every_truncation(little: bool, explicit: bool) -> None:
    """A wanted value is found exactly when the data set holds all of it."""
    data, values, ends = flat(little, explicit)
    assert read_elements(data, explicit, little, ALL_WANTED) == values
    for cut in range(len(data) + 1):
        expected = {tag: value for tag, value in values.items() if ends[tag] <= cut}
        assert read_elements(data[:cut], explicit, little, ALL_WANTED) == expected, cut


def test_literal_values_and_stop_after_the_largest_wanted_tag() -> None:
    data, _, _ = flat()
    garbage = b"\xff" * 3 + b"not a data set"  # after (0020,000D): never read
    assert read_elements(data + garbage, True, True, [SOP_CLASS]) == {SOP_CLASS: CT.encode() + b"\0"}
    assert read_elements(data + garbage, True, True, {SOP_INSTANCE, PATIENT_NAME}) == {
        SOP_INSTANCE: b"1.2.3.4.5.6",
        PATIENT_NAME: b"Doe^John",
    }
    assert read_elements(data, True, True, [0x00090010]) == {}
    with pytest.raises(ValueError):
        read_elements(data, True, True, [])


@pytest.mark.parametrize("little", [True, False])
@pytest.mark.parametrize("undefined_seq", [True, False])
@pytest.mark.parametrize("undefined_item", [True, False])
def test_sequences_are_skipped_whatever_their_lengths(
    little: bool, undefined_seq: bool, undefined_item: bool
) -> None:
    """A wanted tag inside a sequence item is not a top-level value; nested sequences are skipped too."""
    inner_seq = ex(0x00081150, "UI", b"9.9.9.9\0", little)  # never reported
    inner_seq += ex(SOP_INSTANCE, "UI", b"NESTED", little)
    nested = ex(0x0040A730, "SQ", item(inner_seq, little, True) + seq_end(little), little, UNDEF)
    body = item(inner_seq + nested, little, undefined_item) + item(b"", little, undefined_item)
    if undefined_seq:
        sq = ex(0x00081140, "SQ", body + seq_end(little), little, UNDEF)
    else:
        sq = ex(0x00081140, "SQ", body, little)
    data = (
        ex(SOP_CLASS, "UI", b"1.2\0", little)
        + ex(0x00080030, "SQ", b"", little)  # empty defined-length sequence
        + sq
        + ex(STUDY_UID, "UI", b"1.2.3\0", little)
    )
    assert read_elements(data, True, little, [SOP_CLASS, STUDY_UID]) == {
        SOP_CLASS: b"1.2\0",
        STUDY_UID: b"1.2.3\0",
    }
    for cut in range(len(data)):
        assert read_elements(data[:cut], True, little, [SOP_CLASS, STUDY_UID]) == (
            {SOP_CLASS: b"1.2\0"} if cut >= 12 else {}
        ), cut


def test_implicit_sequences_and_undefined_length_un() -> None:
    """UN of undefined length holds implicit VR little endian, even in an explicit big endian data set."""
    inner = im(0x00081150, b"1.2\0") + im(0x00081155, b"3.4\0")
    un = ex(0x00091010, "UN", item(inner, True, True) + item(inner) + seq_end(True), False, UNDEF)
    data = ex(SOP_CLASS, "UI", b"1.2\0", False) + un + ex(STUDY_UID, "UI", b"5.6\0", False)
    assert read_elements(data, True, False, [STUDY_UID]) == {STUDY_UID: b"5.6\0"}
    implicit = (
        im(SOP_CLASS, b"1.2\0")
        + im(0x00081140, item(inner, True, True) + seq_end(), length=UNDEF)
        + im(STUDY_UID, b"5.6\0")
    )
    assert read_elements(implicit, False, True, [SOP_CLASS, STUDY_UID]) == {
        SOP_CLASS: b"1.2\0",
        STUDY_UID: b"5.6\0",
    }


def test_stray_item_tags_at_the_top_level_are_skipped() -> None:
    data = (
        ex(SOP_CLASS, "UI", b"1.2\0")
        + im(0xFFFEE00D, b"")
        + im(0xFFFEE000, b"", length=0x10)  # its length is ignored: 8 bytes are skipped
        + ex(SOP_INSTANCE, "UI", b"5.6\0")
    )
    assert read_elements(data, True, True, [SOP_CLASS, SOP_INSTANCE]) == {
        SOP_CLASS: b"1.2\0",
        SOP_INSTANCE: b"5.6\0",
    }


def test_tolerances_inside_items() -> None:
    """The receiver's policy: an element without a valid VR has a 2-byte length; zeros are elements."""
    odd = struct.pack("<HH", 0x0009, 0x0010) + b"\x01\x02" + struct.pack("<H", 2) + b"ab"
    zeros = bytes(8)
    sq = ex(0x00081140, "SQ", item(odd + zeros, True, True) + seq_end(), length=UNDEF)
    data = ex(SOP_CLASS, "UI", b"1.2\0") + sq + ex(STUDY_UID, "UI", b"5.6\0")
    assert read_elements(data, True, True, [STUDY_UID]) == {STUDY_UID: b"5.6\0"}
    # a sequence holding something else than items: give up with what was found before it
    broken = ex(0x00081140, "SQ", ex(0x00100010, "PN", b"AB") + seq_end(), length=UNDEF)
    data = ex(SOP_CLASS, "UI", b"1.2\0") + broken + ex(STUDY_UID, "UI", b"5.6\0")
    assert read_elements(data, True, True, [SOP_CLASS, STUDY_UID]) == {SOP_CLASS: b"1.2\0"}


def test_buffer_types() -> None:
    inner = im(0x00081150, b"1.2\0")
    sq = ex(0x00081140, "SQ", item(ex(0x00081150, "UI", b"1.2\0"), True, True) + seq_end(), length=UNDEF)
    un = ex(0x00091010, "UN", item(inner, True, True) + seq_end(), length=UNDEF)
    data = ex(SOP_CLASS, "UI", b"1.2\0") + sq + un + ex(STUDY_UID, "UI", b"5.6\0")
    expected = {SOP_CLASS: b"1.2\0", STUDY_UID: b"5.6\0"}
    with mmap.mmap(-1, len(data)) as mapped:
        mapped.write(data)
        for buf in (data, bytearray(data), memoryview(data), mapped):
            got = read_elements(buf, True, True, (SOP_CLASS, STUDY_UID))
            assert got == expected and all(type(v) is bytes for v in got.values()), type(buf)


def deep(levels: int, little: bool = True) -> bytes:
    """Sequences nested `levels` deep, of undefined length, with undefined-length items; the outermost is
    (0008,0017), between the SOP Class and SOP Instance UIDs, so that the scan walks it too.
    """
    body = ex(0x00100010, "PN", b"AB", little)
    for n in range(levels):
        tag = 0x00080017 if n == levels - 1 else 0x00081140
        body = ex(tag, "SQ", item(body, little, True) + seq_end(little), little, UNDEF)
    return body


def test_nesting_thousands_deep_gives_a_reason_not_a_recursion_error(tmp_path: Path) -> None:
    ok = ex(SOP_CLASS, "UI", b"1.2\0") + deep(MAX_NESTING - 1) + ex(SOP_INSTANCE, "UI", b"5.6\0")
    assert read_elements(ok, True, True, [SOP_CLASS, SOP_INSTANCE]) == {
        SOP_CLASS: b"1.2\0",
        SOP_INSTANCE: b"5.6\0",
    }
    assert verify_bytes(ok, "1.2.840.10008.1.2.1") is None
    data = ex(SOP_CLASS, "UI", b"1.2\0") + deep(5000) + ex(SOP_INSTANCE, "UI", b"5.6\0")
    assert read_elements(data, True, True, [SOP_CLASS, SOP_INSTANCE]) == {SOP_CLASS: b"1.2\0"}
    reason = "corrupt data set: sequences nested too deeply"
    assert verify_bytes(data, "1.2.840.10008.1.2.1") == reason
    with pytest.raises(WalkError, match="nested too deeply"):
        walk_dataset(Source(-1, len(data), data), 0, True, True)
    # the same as a file: the scan reads the UIDs from the meta information, the check gives the reason
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2"
    meta.MediaStorageSOPInstanceUID = "5.6"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(buf, meta, enforce_standard=True)
    path = tmp_path / "deep.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue() + data)
    inst = read_instance(str(path))
    assert isinstance(inst, Instance) and inst.sop_instance_uid == "5.6"
    assert verify_dataset(str(path), inst.data_offset, inst.transfer_syntax) == reason
    bare = tmp_path / "deep-bare.dcm"
    bare.write_bytes(data)
    assert not isinstance(read_instance(str(bare)), Instance)  # a reason, not an exception


# --- the receiver's own walker as the reference ---------------------------------------------------------


def _dataset(path: Path) -> tuple[bytes, bool, bool] | None:
    inst = read_instance(str(path))
    if not isinstance(inst, Instance) or inst.transfer_syntax == "1.2.840.10008.1.2.1.99":
        return None
    data = read_dataset_bytes(inst.path, inst.data_offset, inst.size - inst.data_offset)
    return data, inst.transfer_syntax != IMPLICIT_VR_LE, inst.transfer_syntax != EXPLICIT_VR_BE


def test_data_set_offset_agrees_with_the_scan(corpus_small) -> None:  # type: ignore[no-untyped-def]
    for path in corpus_small.paths():
        inst = read_instance(str(path))
        if isinstance(inst, Instance) and inst.data_offset:
            assert data_set_offset(path.read_bytes()) == inst.data_offset
    with pytest.raises(ValueError, match="no DICM"):
        data_set_offset(b"\0" * 200)


def _sequence_files(tmp_path: Path) -> list[Path]:
    """Files with defined and undefined-length sequences, nested, in the three native encodings."""
    paths = []
    for n, (ts, undefined) in enumerate(
        [
            (ExplicitVRLittleEndian, True),
            (ImplicitVRLittleEndian, True),
            (ExplicitVRBigEndian, False),
            (ExplicitVRLittleEndian, False),
            (ImplicitVRLittleEndian, False),
        ]
    ):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CT
        ds.SOPInstanceUID = f"1.2.3.{n}"
        inner = Dataset()
        inner.CodeValue = "113100"
        inner.CodingSchemeDesignator = "DCM"
        outer = Dataset()
        outer.ReferencedSOPClassUID = CT
        outer.ReferencedSOPInstanceUID = "1.2.3.99"
        outer.PurposeOfReferenceCodeSequence = Sequence([inner, inner])
        ds.ReferencedImageSequence = Sequence([outer])
        ds.ProcedureCodeSequence = Sequence([inner])
        if undefined:
            for elem in (ds["ReferencedImageSequence"], outer["PurposeOfReferenceCodeSequence"]):
                elem.is_undefined_length = True
            inner.is_undefined_length_sequence_item = True
            outer.is_undefined_length_sequence_item = True
        ds.PatientName = "Doe^Jane"
        ds.StudyInstanceUID = "1.2.3.1000"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ts
        path = tmp_path / f"seq{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_sequence_files_give_the_top_level_values(tmp_path: Path) -> None:
    for n, path in enumerate(_sequence_files(tmp_path)):
        read = _dataset(path)
        assert read is not None
        got = read_elements(*read, WANTED[1])
        assert got[SOP_INSTANCE].rstrip(b"\0") == f"1.2.3.{n}".encode()
        assert got[PATIENT_NAME] == b"Doe^Jane"
        assert got[STUDY_UID].rstrip(b"\0") == b"1.2.3.1000"
        assert got[SOP_CLASS].rstrip(b"\0") == CT.encode()
