"""Issue 11: the scan never dies on one file. The header parser (`read_instance`) and the verifier
(`verify_dataset`, `verify_bytes`) get random bytes and mutated valid files (bytes flipped, cut, inserted,
lengths set to huge values, nesting opened and never closed) and must return a result, never raise, in
bounded time. Settings keep the whole module under ~15 s on a shared 2-core machine.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from batchstore.dicom.part10 import Instance, ScanFailure, read_instance, verify_bytes, verify_dataset

SETTINGS = settings(
    max_examples=300,
    deadline=500,  # ms per example: a parser that loops or recurses without bound fails here
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same examples on every run: a failure is reproducible in CI
)


def _seed(syntax: str) -> bytes:
    """A small valid Part 10 file with a nested sequence and pixel data, in `syntax`."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5.6.7"
    ds.PatientName = "Prop^Test"
    inner = Dataset()
    inner.CodeValue = "X"
    inner.ConceptCodeSequence = Sequence([Dataset()])
    ds.ReferencedStudySequence = Sequence([inner, Dataset()])
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 4, 4, 8, 1
    ds.PixelData = bytes(range(16))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.dcm"
        ds.save_as(path, enforce_file_format=True, little_endian=syntax != ExplicitVRBigEndian,
                   implicit_vr=syntax == ImplicitVRLittleEndian)  # fmt: skip
        return path.read_bytes()


SEEDS = [_seed(ts) for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)]
UNDEFINED = struct.pack("<I", 0xFFFFFFFF)
ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
SEQ = struct.pack("<HH2s2xI", 0x0008, 0x1115, b"SQ", 0xFFFFFFFF)


@hs.composite
def mutated(draw: hs.DrawFn) -> bytes:
    data = bytearray(draw(hs.sampled_from(SEEDS)))
    for _ in range(draw(hs.integers(1, 4))):
        op = draw(hs.sampled_from(["flip", "cut", "insert", "length", "nest", "zero"]))
        pos = draw(hs.integers(0, max(0, len(data) - 1)))
        if op == "flip":
            data[pos] ^= draw(hs.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(hs.binary(min_size=1, max_size=64))
        elif op == "length":  # a huge or undefined length where a length may be
            data[pos : pos + 4] = draw(
                hs.sampled_from([UNDEFINED, struct.pack("<I", 0x7FFFFFF0), b"\xff\xff"])
            )
        elif op == "nest":  # sequences opened and never closed, up to far past the nesting cap
            data[pos:pos] = (SEQ + ITEM) * draw(hs.integers(1, 600))
        else:
            data[pos : pos + 64] = bytes(min(64, len(data) - pos))
        if not data:
            break
    return bytes(data)


def _check(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    result = read_instance(str(path))
    assert isinstance(result, (Instance, ScanFailure))
    if isinstance(result, ScanFailure):
        assert result.reason
        return
    reason = verify_dataset(str(path), result.data_offset, result.transfer_syntax)
    assert reason is None or isinstance(reason, str)
    checked = verify_bytes(data[result.data_offset :], result.transfer_syntax)
    assert checked is None or isinstance(checked, str)


@SETTINGS
@given(data=mutated())
def test_mutated_files_never_break_the_scan(tmp_path: Path, data: bytes) -> None:
    _check(tmp_path / "m.dcm", data)


@SETTINGS
@given(data=hs.binary(max_size=2048), part10=hs.booleans())
def test_random_bytes_never_break_the_scan(tmp_path: Path, data: bytes, part10: bool) -> None:
    _check(tmp_path / "r.dcm", (bytes(128) + b"DICM" if part10 else b"") + data)


@SETTINGS
@given(data=hs.binary(max_size=1024), syntax=hs.sampled_from(
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, "1.2.840.10008.1.2.4.50", "1.2.3.4"]))  # fmt: skip
def test_verifier_on_random_data_sets(data: bytes, syntax: str) -> None:
    reason = verify_bytes(data, syntax)
    assert reason is None or isinstance(reason, str)
