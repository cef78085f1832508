"""Tests for scanning: header reading, data set verification, input expansion, @file (no network)."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from batchstore.cli.cmdfile import CommandFileError, expand_command_files
from batchstore.dicom.part10 import Instance, ScanFailure, read_instance, verify_dataset
from batchstore.sender.inputs import iter_paths
from batchstore.sender.scan import scan

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def make_ds(sop_class: str = CT, pixels: bool = True, undefined_sequence: bool = False) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Doe^John"
    ds.PatientID = "123"
    item = Dataset()
    item.CodeValue = "113100"
    item.CodingSchemeDesignator = "DCM"
    ds.ProcedureCodeSequence = Sequence([item])
    if undefined_sequence:
        ds["ProcedureCodeSequence"].is_undefined_length = True
        item.is_undefined_length_sequence_item = True
    if pixels:
        ds.Rows = ds.Columns = 16
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelRepresentation = 0
        ds.PixelData = np.arange(256, dtype=np.uint16).tobytes()
    return ds


def write_part10(path: Path, ds: Dataset, ts: str) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if ts == RLELossless:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(RLELossless, encoding_plugin="pydicom")
    else:
        ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.save_as(path, enforce_file_format=True)
    return path


def pydicom_offset(path: Path) -> int:
    """Where pydicom says the data set starts."""
    with open(path, "rb") as fh:
        pydicom.filereader.read_preamble(fh, False)
        pydicom.filereader._read_file_meta_info(fh)
        return fh.tell()


# --- read_instance ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ts",
    [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
    ],
)
def test_part10_files(tmp_path: Path, ts: str) -> None:
    ds = make_ds()
    path = write_part10(tmp_path / "f.dcm", ds, ts)
    inst = read_instance(str(path))
    assert isinstance(inst, Instance)
    assert inst.path == str(path)
    assert inst.sop_class_uid == CT
    assert inst.sop_instance_uid == ds.SOPInstanceUID
    assert inst.transfer_syntax == ts
    assert inst.data_offset == pydicom_offset(path)
    meta = pydicom.filereader.read_file_meta_info(path)
    assert inst.data_offset == 132 + 12 + meta.FileMetaInformationGroupLength
    st = os.stat(path)
    assert (inst.size, inst.mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert verify_dataset(inst.path, inst.data_offset, inst.transfer_syntax) is None


@pytest.mark.parametrize(
    ("implicit", "little", "ts"),
    [
        (True, True, ImplicitVRLittleEndian),
        (False, True, ExplicitVRLittleEndian),
        (False, False, ExplicitVRBigEndian),
    ],
)
@pytest.mark.parametrize("mode", ["auto", "dataset"])
def test_bare_data_set(tmp_path: Path, implicit: bool, little: bool, ts: str, mode: str) -> None:
    ds = make_ds(undefined_sequence=True)
    path = tmp_path / "bare"
    ds.save_as(path, implicit_vr=implicit, little_endian=little)
    assert open(path, "rb").read(4) != b"\0\0\0\0"  # no preamble
    inst = read_instance(str(path), mode)
    assert isinstance(inst, Instance)
    assert (inst.sop_class_uid, inst.sop_instance_uid) == (CT, ds.SOPInstanceUID)
    assert inst.transfer_syntax == ts
    assert inst.data_offset == 0
    assert verify_dataset(inst.path, 0, inst.transfer_syntax) is None
    # what pydicom makes of the same bytes
    again = pydicom.dcmread(path, force=True)
    assert again.SOPInstanceUID == ds.SOPInstanceUID


def test_read_file_only_rejects_bare_data_set(tmp_path: Path) -> None:
    path = tmp_path / "bare"
    make_ds().save_as(path, implicit_vr=True, little_endian=True)
    result = read_instance(str(path), "file-only")
    assert result == ScanFailure(
        str(path), "not a DICOM file format file (no DICM prefix; +fo/--read-file-only given)"
    )


def test_dataset_mode_still_skips_file_meta(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "f.dcm", make_ds(), ExplicitVRLittleEndian)
    inst = read_instance(str(path), "dataset")
    assert isinstance(inst, Instance)
    assert inst.data_offset == pydicom_offset(path)


def test_meta_without_preamble(tmp_path: Path) -> None:
    full = write_part10(tmp_path / "f.dcm", make_ds(), ExplicitVRLittleEndian)
    path = tmp_path / "nopreamble.dcm"
    path.write_bytes(full.read_bytes()[132:])
    inst = read_instance(str(path))
    assert isinstance(inst, Instance)
    assert inst.data_offset == pydicom_offset(full) - 132
    assert inst.transfer_syntax == ExplicitVRLittleEndian


def test_data_set_uids_win_over_meta(tmp_path: Path) -> None:
    ds = make_ds()
    path = write_part10(tmp_path / "f.dcm", ds, ExplicitVRLittleEndian)
    data = path.read_bytes()
    meta_uid = ds.SOPInstanceUID.encode()
    other = ("9" * len(ds.SOPInstanceUID)).encode()
    first = data.index(meta_uid)  # (0002,0003) comes first
    path.write_bytes(data[:first] + other + data[first + len(other) :])
    inst = read_instance(str(path))
    assert isinstance(inst, Instance)
    assert inst.sop_instance_uid == ds.SOPInstanceUID


def test_meta_claims_explicit_but_data_set_is_implicit(tmp_path: Path) -> None:
    ds = make_ds()
    good = write_part10(tmp_path / "good.dcm", ds, ExplicitVRLittleEndian)
    offset = pydicom_offset(good)
    implicit = tmp_path / "implicit"
    make_ds().save_as(implicit, implicit_vr=True, little_endian=True)
    path = tmp_path / "liar.dcm"
    path.write_bytes(good.read_bytes()[:offset] + implicit.read_bytes())
    inst = read_instance(str(path))
    assert isinstance(inst, Instance)
    assert inst.transfer_syntax == ImplicitVRLittleEndian
    assert verify_dataset(inst.path, inst.data_offset, inst.transfer_syntax) is None


def test_private_transfer_syntax(tmp_path: Path) -> None:
    ge_private = "1.2.840.113619.5.2"  # implicit VR little endian, big endian pixel data
    ds = make_ds()
    good = write_part10(tmp_path / "good.dcm", ds, ImplicitVRLittleEndian)
    data = good.read_bytes()
    path = tmp_path / "private.dcm"
    path.write_bytes(data.replace(b"1.2.840.10008.1.2\0", b"1.2.840.113619.5.2", 1))
    inst = read_instance(str(path))
    assert isinstance(inst, Instance)
    assert inst.transfer_syntax == ge_private
    assert inst.sop_instance_uid == ds.SOPInstanceUID
    assert inst.data_offset == pydicom_offset(path)
    assert verify_dataset(inst.path, inst.data_offset, inst.transfer_syntax) is None


def test_uids_from_meta_when_data_set_lacks_them(tmp_path: Path) -> None:
    ds = make_ds()
    path = write_part10(tmp_path / "f.dcm", ds, ExplicitVRLittleEndian)
    raw = pydicom.dcmread(path)
    del raw.SOPInstanceUID
    raw.save_as(path)
    inst = read_instance(str(path))
    assert isinstance(inst, Instance)
    assert inst.sop_instance_uid == ds.SOPInstanceUID  # from (0002,0003)


def test_missing_sop_instance_uid(tmp_path: Path) -> None:
    ds = make_ds()
    del ds.SOPInstanceUID
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(CT)
    ds.preamble = b"\0" * 128
    path = tmp_path / "f.dcm"
    ds.save_as(path)
    assert read_instance(str(path)) == ScanFailure(str(path), "missing SOP Instance UID")


def test_missing_sop_class_uid(tmp_path: Path) -> None:
    ds = make_ds()
    del ds.SOPClassUID
    path = tmp_path / "bare"
    ds.save_as(path, implicit_vr=False, little_endian=True)
    assert read_instance(str(path)) == ScanFailure(str(path), "missing SOP Class UID")


def test_junk(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("Patient notes\nnothing to see here\n" * 20)
    rng = random.Random(1234)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(rng.randrange(256) for _ in range(5000)))
    short = tmp_path / "short"
    short.write_bytes(b"DICM")
    not_dicom = "not a DICOM file (no DICM prefix, not a data set)"
    assert read_instance(str(empty)) == ScanFailure(str(empty), "empty file")
    assert read_instance(str(text)) == ScanFailure(str(text), not_dicom)
    assert read_instance(str(noise)) == ScanFailure(str(noise), not_dicom)
    assert read_instance(str(short)) == ScanFailure(str(short), not_dicom)
    assert read_instance(str(tmp_path / "absent")) == ScanFailure(
        str(tmp_path / "absent"), "no such file or directory"
    )
    assert read_instance(str(tmp_path)) == ScanFailure(
        str(tmp_path), "is a directory; use +sd/--scan-directories"
    )


@pytest.mark.parametrize("cut", [133, 150, 180])
def test_truncated_meta(tmp_path: Path, cut: int) -> None:
    full = write_part10(tmp_path / "f.dcm", make_ds(), ExplicitVRLittleEndian)
    path = tmp_path / "cut.dcm"
    path.write_bytes(full.read_bytes()[:cut])
    assert read_instance(str(path)) == ScanFailure(str(path), "truncated file meta information")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_permission_denied(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "f.dcm", make_ds(), ExplicitVRLittleEndian)
    path.chmod(0)
    assert read_instance(str(path)) == ScanFailure(str(path), "cannot read: Permission denied")


def test_records_pickle(tmp_path: Path) -> None:
    inst = read_instance(str(write_part10(tmp_path / "f.dcm", make_ds(), ExplicitVRLittleEndian)))
    failure = ScanFailure("x", "empty file")
    assert pickle.loads(pickle.dumps(inst)) == inst
    assert pickle.loads(pickle.dumps(failure)) == failure


def _mixed_tree(root: Path, count: int) -> None:
    """`count` files in two directories: DICOM files of two syntaxes with junk in between."""
    ds = make_ds(pixels=False)
    for i in range(count):
        sub = root / f"d{i % 2}"
        sub.mkdir(exist_ok=True)
        if i % 7 == 3:
            (sub / f"{i:04d}.txt").write_text("not DICOM")
        else:
            ds.SOPInstanceUID = f"1.2.3.{i}"
            write_part10(
                sub / f"{i:04d}.dcm", ds, ExplicitVRLittleEndian if i % 2 else ImplicitVRLittleEndian
            )


def test_parallel_scan_gives_the_serial_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shares read by forked processes come back complete and in input order, failures included."""
    import batchstore.sender.scan as scan_module

    _mixed_tree(tmp_path, 60)
    monkeypatch.setattr(scan_module, "PARALLEL_SCAN_MIN", 10)
    serial = scan([str(tmp_path)], scan_directories=True, recurse=True, jobs=1)
    forks: list[int] = []
    real_fork = os.fork

    def counting_fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counting_fork)
    parallel = scan([str(tmp_path)], scan_directories=True, recurse=True, jobs=3)
    assert len(forks) == 2
    assert parallel == serial
    assert len(serial[0]) == 51 and len(serial[1]) == 9


def test_parallel_scan_survives_failing_forks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import batchstore.sender.scan as scan_module

    _mixed_tree(tmp_path, 30)
    monkeypatch.setattr(scan_module, "PARALLEL_SCAN_MIN", 10)
    serial = scan([str(tmp_path)], scan_directories=True, recurse=True, jobs=1)

    def no_fork() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    assert scan([str(tmp_path)], scan_directories=True, recurse=True, jobs=4) == serial


# --- verify_dataset -----------------------------------------------------------------------------------


def cut_copy(src: Path, dst: Path, remove: int) -> Instance:
    dst.write_bytes(src.read_bytes()[:-remove])
    inst = read_instance(str(dst))
    assert isinstance(inst, Instance)
    return inst


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_verify_truncated_pixel_data(tmp_path: Path, ts: str) -> None:
    full = write_part10(tmp_path / "f.dcm", make_ds(), ts)
    inst = cut_copy(full, tmp_path / "cut.dcm", 100)
    reason = verify_dataset(inst.path, inst.data_offset, inst.transfer_syntax)
    assert reason == "truncated data set: element (7FE0,0010) needs 512 bytes, 412 remain"


def test_verify_truncated_fragment(tmp_path: Path) -> None:
    full = write_part10(tmp_path / "f.dcm", make_ds(), RLELossless)
    inst = cut_copy(full, tmp_path / "cut.dcm", 30)
    reason = verify_dataset(inst.path, inst.data_offset, inst.transfer_syntax)
    assert reason is not None
    assert reason.startswith("truncated data set: item in (7FE0,0010) needs ")


def test_verify_missing_sequence_delimiter(tmp_path: Path) -> None:
    ds = make_ds(pixels=False, undefined_sequence=True)
    del ds.PatientName, ds.PatientID  # make (0008,1032) the last element
    path = tmp_path / "bare"
    ds.save_as(path, implicit_vr=False, little_endian=True)
    data = path.read_bytes()
    assert data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")  # the sequence is the last element
    path.write_bytes(data[:-8])
    assert verify_dataset(str(path), 0, ExplicitVRLittleEndian) == (
        "truncated data set: (0008,1032) ends without a sequence delimitation item"
    )
    path.write_bytes(data[:-16])  # also without the item delimitation item
    assert verify_dataset(str(path), 0, ExplicitVRLittleEndian) == (
        "truncated data set: item ends without an item delimitation item"
    )


def test_verify_partial_header_and_zero_fill(tmp_path: Path) -> None:
    full = write_part10(tmp_path / "f.dcm", make_ds(pixels=False), ExplicitVRLittleEndian)
    data = full.read_bytes()
    path = tmp_path / "x.dcm"
    path.write_bytes(data + b"\x10\x00\x10")
    offset = pydicom_offset(full)
    assert verify_dataset(str(path), offset, ExplicitVRLittleEndian) == (
        f"truncated data set: 3 byte(s) at offset {len(data)} are not a complete element header"
    )
    path.write_bytes(data + bytes(4096))
    assert verify_dataset(str(path), offset, ExplicitVRLittleEndian) == (
        f"truncated data set: zero-filled from offset {len(data)}"
    )


def test_verify_truncated_deflate(tmp_path: Path) -> None:
    full = write_part10(tmp_path / "f.dcm", make_ds(), DeflatedExplicitVRLittleEndian)
    inst = cut_copy(full, tmp_path / "cut.dcm", 40)
    assert verify_dataset(inst.path, inst.data_offset, inst.transfer_syntax) == (
        "truncated data set: the deflate stream ends before its end marker"
    )


def test_verify_unreadable(tmp_path: Path) -> None:
    assert verify_dataset(str(tmp_path / "gone"), 0, ExplicitVRLittleEndian) == (
        "cannot read: No such file or directory"
    )


# --- iter_paths and scan ------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{b.dcm, a.dcm, notes.txt, sub/{c.dcm, sub2/d.dcm}}"""
    root = tmp_path / "root"
    (root / "sub" / "sub2").mkdir(parents=True)
    for rel in ("b.dcm", "a.dcm", "sub/c.dcm", "sub/sub2/d.dcm"):
        write_part10(root / rel, make_ds(), ExplicitVRLittleEndian)
    (root / "notes.txt").write_text("hello\n")
    return root


def test_directory_needs_scan_directories(tree: Path) -> None:
    assert list(iter_paths([str(tree)])) == [
        ScanFailure(str(tree), "is a directory; use +sd/--scan-directories")
    ]


def test_scan_directories_sorted_not_recursive(tree: Path) -> None:
    r = str(tree)
    assert list(iter_paths([r], scan_directories=True)) == [f"{r}/a.dcm", f"{r}/b.dcm", f"{r}/notes.txt"]


def test_scan_directories_recursive(tree: Path) -> None:
    r = str(tree)
    assert list(iter_paths([r], scan_directories=True, recurse=True)) == [
        f"{r}/a.dcm",
        f"{r}/b.dcm",
        f"{r}/notes.txt",
        f"{r}/sub/c.dcm",
        f"{r}/sub/sub2/d.dcm",
    ]


def test_scan_pattern_applies_to_scanned_directories_only(tree: Path) -> None:
    r = str(tree)
    got = list(iter_paths([f"{r}/notes.txt", r], scan_directories=True, recurse=True, pattern="*.dcm"))
    assert got == [f"{r}/notes.txt", f"{r}/a.dcm", f"{r}/b.dcm", f"{r}/sub/c.dcm", f"{r}/sub/sub2/d.dcm"]


def test_nonexistent_and_broken_link(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    assert list(iter_paths([str(tmp_path / "nope"), str(link)])) == [
        ScanFailure(str(tmp_path / "nope"), "no such file or directory"),
        ScanFailure(str(link), "broken symbolic link"),
    ]


def test_symlink_loop_is_not_followed_forever(tree: Path) -> None:
    (tree / "sub" / "loop").symlink_to(tree)
    got = list(iter_paths([str(tree)], scan_directories=True, recurse=True))
    assert len(got) == 5


def test_scan_mixed(tree: Path) -> None:
    r = str(tree)
    instances, failures = scan([r, f"{r}/missing.dcm"], scan_directories=True, recurse=True)
    assert [i.path for i in instances] == [
        f"{r}/a.dcm",
        f"{r}/b.dcm",
        f"{r}/sub/c.dcm",
        f"{r}/sub/sub2/d.dcm",
    ]
    assert failures == [
        ScanFailure(f"{r}/notes.txt", "not a DICOM file (no DICM prefix, not a data set)"),
        ScanFailure(f"{r}/missing.dcm", "no such file or directory"),
    ]


def test_scan_relative_paths_kept(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    instances, failures = scan(["a.dcm", "sub"], scan_directories=True)
    assert [i.path for i in instances] == ["a.dcm", "sub/c.dcm"]
    assert failures == []


# --- @file command files ------------------------------------------------------------------------------


def test_expand_command_files(tmp_path: Path) -> None:
    cmd = tmp_path / "cmd.txt"
    cmd.write_text('-v  +sd\n\t"/data/with space"  \'single q\' ""\n-aec PACS\n')
    assert expand_command_files(["-d", f"@{cmd}", "host", "104", "@"]) == [
        "-d",
        "-v",
        "+sd",
        "/data/with space",
        "single q",
        "",
        "-aec",
        "PACS",
        "host",
        "104",
        "@",
    ]


def test_command_files_do_not_nest(tmp_path: Path) -> None:
    inner = tmp_path / "inner.txt"
    inner.write_text("-v")
    outer = tmp_path / "outer.txt"
    outer.write_text(f"+sd @{inner}")
    with pytest.raises(CommandFileError, match="cannot be nested"):
        expand_command_files([f"@{outer}"])
    quoted = tmp_path / "quoted.txt"
    quoted.write_text('"@literal"')
    assert expand_command_files([f"@{quoted}"]) == ["@literal"]


def test_missing_command_file(tmp_path: Path) -> None:
    with pytest.raises(CommandFileError, match="cannot open command file"):
        expand_command_files([f"@{tmp_path / 'none.txt'}"])


def test_verify_bytes_agrees_with_verify_dataset(tmp_path: Path) -> None:
    """The sender checks small data sets in memory; it must reach the same verdicts as the file walker."""
    from gen_corpus import generate

    from batchstore.dicom.part10 import read_dataset_bytes, verify_bytes

    generate(str(tmp_path / "c"), 80, seed=4, profile="mixed", junk=6)
    checked = truncated = 0
    for path in sorted(p for p in (tmp_path / "c").rglob("*") if p.is_file()):
        inst = read_instance(str(path))
        if not isinstance(inst, Instance):
            continue
        data = read_dataset_bytes(inst.path, inst.data_offset)
        for cut in (len(data), len(data) * 2 // 3, len(data) - 1):
            cut_path = tmp_path / "cut.dcm"
            cut_path.write_bytes(path.read_bytes()[: inst.data_offset + cut])
            expected = verify_dataset(str(cut_path), inst.data_offset, inst.transfer_syntax)
            got = verify_bytes(data[:cut], inst.transfer_syntax)
            if inst.transfer_syntax != DeflatedExplicitVRLittleEndian:
                assert got == expected, (path.name, cut)
            checked += 1
            truncated += expected is not None
    assert checked >= 200 and truncated >= 100
