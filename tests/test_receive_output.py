"""``batchstore receive`` output options, file names, sorting and event options, checked on the files.

Each option is given on the real command line of a receiver subprocess; a scripted SCU or DCMTK's storescu
sends; the written files are read back with pydicom (or walked byte by byte where the encoding itself is
what the option changes).
"""

from __future__ import annotations

import re
import struct
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
from peers import dataset_bytes, dcmtk_send
from pydicom import config
from test_receive_helpers import (
    CT,
    DEFLATED,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT,
    RawSCU,
    Receiver,
    ct_dataset,
    encode,
    stored_files,
    wait_for,
    write_part10,
)

UID_ROOT = "1.2.826.0.1.3680043.9.7781.2"
STUDY_A = "1.2.826.0.1.3680043.9.7781.3.1"
STUDY_B = "1.2.826.0.1.3680043.9.7781.3.2"
_LONG = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@contextmanager
def raw_vrs():
    """Read files with the VRs they were written with (pydicom otherwise replaces UN)."""
    saved = config.replace_un_with_known_vr
    config.replace_un_with_known_vr = False
    try:
        yield
    finally:
        config.replace_un_with_known_vr = saved


def top_level(data: bytes) -> list[tuple[int, bytes, int, int]]:
    """(tag, VR, value offset, value length) of the top-level elements of an Explicit VR LE data set with
    defined lengths."""
    out = []
    pos = 0
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG:
            (length,) = struct.unpack_from("<L", data, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8
        assert length != 0xFFFFFFFF, "undefined length at top level"
        out.append((group << 16 | element, vr, pos, length))
        pos += length
    return out


def store(port: int, datasets, ts: str = EXPLICIT_LE, **kw) -> list[int]:  # type: ignore[no-untyped-def]
    scu = RawSCU(port, ((1, CT, (ts,)),), **kw)
    statuses = []
    for ds in datasets:
        statuses.append(scu.store(encode(ds, ts), ds.SOPInstanceUID).status)
    scu.release()
    return statuses


# --------------------------------------------------------------------------------------------------------
# file format and transfer syntax


def test_write_dataset_only_keeps_bytes(tmp_path: Path) -> None:
    ds = ct_dataset(f"{UID_ROOT}.1")
    # every default spelled out (rightmost wins where options exclude each other), then -F
    defaults = ["-B", "+te", "+t=", "+u", "+g=", "+e", "+p", "4", "4", "-p", "-uc", "-uf", "+F", "-F"]
    with Receiver(tmp_path, defaults) as rx:
        assert store(rx.port, [ds]) == [0]
    raw = (rx.out / f"CT.{UID_ROOT}.1").read_bytes()
    assert raw == encode(ds)  # no preamble, no meta: the data set as sent


@pytest.mark.needs_dcmtk
def test_bit_preserving_keeps_bytes(tmp_path: Path) -> None:
    src = write_part10(tmp_path / "src.dcm", ct_dataset(f"{UID_ROOT}.2"), EXPLICIT_BE)
    with Receiver(tmp_path, ["+B", "+xb"]) as rx:
        sent = dcmtk_send([src], rx.port, ["-xb"])
        assert sent.returncode == 0, sent.stderr
    stored = rx.out / f"CT.{UID_ROOT}.2"
    assert dataset_bytes(stored) == dataset_bytes(src)
    assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == EXPLICIT_BE


@pytest.mark.parametrize(
    ("option", "sent_ts", "written_ts"),
    [
        ("+te", IMPLICIT, EXPLICIT_LE),
        ("+tb", IMPLICIT, EXPLICIT_BE),
        ("+ti", EXPLICIT_BE, IMPLICIT),
        ("+te", EXPLICIT_BE, EXPLICIT_LE),
        ("+td", IMPLICIT, DEFLATED),
    ],
)
def test_write_transfer_syntax(tmp_path: Path, option: str, sent_ts: str, written_ts: str) -> None:
    ds = ct_dataset(f"{UID_ROOT}.3")
    with Receiver(tmp_path, [option]) as rx:
        assert store(rx.port, [ds], sent_ts) == [0]
    out = pydicom.dcmread(rx.out / f"CT.{UID_ROOT}.3")
    assert out.file_meta.TransferSyntaxUID == written_ts
    assert out.PatientName == "Doe^John" and out.TextValue == "some unlimited text"
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == f"{UID_ROOT}.3.9"
    original = ds.copy()
    original.file_meta = pydicom.dataset.FileMetaDataset()
    original.file_meta.TransferSyntaxUID = EXPLICIT_LE
    assert np.array_equal(out.pixel_array, original.pixel_array)  # words swapped where the byte order changed


@pytest.mark.needs_dcmtk
def test_deflated_compression_level_and_deflated_reception(tmp_path: Path) -> None:
    ds = ct_dataset(f"{UID_ROOT}.4", rows=64)
    ds.PixelData = bytes(64 * 64 * 2)  # compressible
    sizes = {}
    for level in ("0", "9"):
        with Receiver(tmp_path, ["+td", "+cl", level], out=tmp_path / f"cl{level}") as rx:
            assert store(rx.port, [ds]) == [0]
        path = rx.out / f"CT.{UID_ROOT}.4"
        sizes[level] = path.stat().st_size
        assert pydicom.dcmread(path).pixel_array.sum() == 0
    assert sizes["9"] < sizes["0"] / 4
    # a data set received deflated (+xd) is stored as received
    src = write_part10(tmp_path / "src.dcm", ct_dataset(f"{UID_ROOT}.5"))
    with Receiver(tmp_path, ["+xd"], out=tmp_path / "deflated") as rx:
        sent = dcmtk_send([src], rx.port, ["-xd"])
        assert sent.returncode == 0, sent.stderr
    stored = pydicom.dcmread(rx.out / f"CT.{UID_ROOT}.5")
    assert stored.file_meta.TransferSyntaxUID == DEFLATED
    assert stored.PatientName == "Doe^John"


# --------------------------------------------------------------------------------------------------------
# encoding options


def _with_group_length(data: bytes, group: int, value: int | None = None) -> bytes:
    """Insert (gggg,0000) before the first element of `group` (Explicit VR LE)."""
    elements = top_level(data)
    first = next(i for i, e in enumerate(elements) if e[0] >> 16 == group)
    start = elements[first][2] - (12 if elements[first][1] in _LONG else 8)
    end_of_group = next(
        (e[2] - (12 if e[1] in _LONG else 8) for e in elements if e[0] >> 16 > group), len(data)
    )
    length = end_of_group - start if value is None else value
    return data[:start] + struct.pack("<HH2sHL", group, 0, b"UL", 4, length) + data[start:]


def _group_lengths(path: Path) -> dict[int, tuple[int, int]]:
    """group -> (stated group length, actual byte length of the group's other elements)."""
    elements = top_level(dataset_bytes(path))
    out = {}
    for i, (tag, _vr, offset, _length) in enumerate(elements):
        if tag & 0xFFFF == 0:
            group = tag >> 16
            start = offset + 4
            end = next(
                (e[2] - (12 if e[1] in _LONG else 8) for e in elements[i + 1 :] if e[0] >> 16 != group),
                len(dataset_bytes(path)),
            )
            stated = struct.unpack_from("<L", dataset_bytes(path), offset)[0]
            out[group] = (stated, end - start)
    return out


@pytest.mark.parametrize("option", ["+g", "-g", "--group-length-recalc"])
def test_group_length_options(tmp_path: Path, option: str) -> None:
    uid = f"{UID_ROOT}.6"
    wrong = _with_group_length(encode(ct_dataset(uid)), 0x0010, 1234)  # a stale group length
    args = ["+te", option] if option != "-g" else [option]
    with Receiver(tmp_path, args) as rx:
        scu = RawSCU(rx.port)
        assert scu.store(wrong, uid).status == 0
        scu.release()
    lengths = _group_lengths(rx.out / f"CT.{uid}")
    if option == "-g":
        assert lengths == {}
    elif option == "+g":
        assert {0x0008, 0x0010, 0x0020, 0x0028, 0x0040, 0x7FE0} <= set(lengths)
        assert all(stated == actual for stated, actual in lengths.values()), lengths
    else:  # recalculated where present (+g= is the default)
        assert set(lengths) == {0x0010}
        assert lengths[0x0010][0] == lengths[0x0010][1] != 1234


def test_undefined_lengths_and_padding(tmp_path: Path) -> None:
    uid = f"{UID_ROOT}.7"
    with Receiver(tmp_path, ["-e"], out=tmp_path / "e") as rx:
        assert store(rx.port, [ct_dataset(uid)]) == [0]
    out = pydicom.dcmread(rx.out / f"CT.{uid}")
    assert out["ReferencedImageSequence"].is_undefined_length
    assert out.ReferencedImageSequence[0].is_undefined_length_sequence_item
    with Receiver(tmp_path, ["+p", "256", "16"], out=tmp_path / "p") as rx:
        assert store(rx.port, [ct_dataset(uid)]) == [0]
    path = rx.out / f"CT.{uid}"
    assert path.stat().st_size % 256 == 0
    out = pydicom.dcmread(path)
    assert 0xFFFCFFFC in out
    item = out.ReferencedImageSequence[0]
    assert 0xFFFCFFFC in item  # padded item
    seq = [e for e in top_level(dataset_bytes(path)) if e[0] == 0x00081140][0]
    item_length = struct.unpack_from("<L", dataset_bytes(path), seq[2] + 4)[0]
    assert item_length % 16 == 0


def test_disable_new_vr_and_convert_un(tmp_path: Path) -> None:
    uid = f"{UID_ROOT}.8"
    ds = ct_dataset(uid)
    with Receiver(tmp_path, ["-u"], out=tmp_path / "u") as rx:
        assert store(rx.port, [ds]) == [0]
    with raw_vrs():
        out = pydicom.dcmread(rx.out / f"CT.{uid}")
        assert out[0x0040A160].VR == "OB"  # UT -> OB
        assert out[0x00100030].VR == "OB"  # UN -> OB
    with Receiver(tmp_path, ["+uc"], out=tmp_path / "uc") as rx:
        assert store(rx.port, [ds]) == [0]
    with Receiver(tmp_path, ["+te"], out=tmp_path / "retain") as rx2:
        assert store(rx2.port, [ds]) == [0]
    with raw_vrs():
        converted = pydicom.dcmread(rx.out / f"CT.{uid}")
        retained = pydicom.dcmread(rx2.out / f"CT.{uid}")
        assert converted[0x00100030].VR == "DA" and converted.PatientBirthDate == "19700101"
        assert retained[0x00100030].VR == "UN"
        assert retained[0x0040A160].VR == "UT"


def test_uid_padding_and_mismatch_status(tmp_path: Path) -> None:
    uid = f"{UID_ROOT}.19"  # odd length: pydicom pads with NUL; make it a space
    assert len(uid) % 2 == 1
    padded = encode(ct_dataset(uid)).replace(uid.encode() + b"\0", uid.encode() + b" ", 1)
    other = f"{UID_ROOT}.10"
    for args, expect in (([], 0xA900), (["-up"], 0x0000)):
        with Receiver(tmp_path, args, out=tmp_path / f"up{len(args)}") as rx:
            scu = RawSCU(rx.port)
            assert scu.store(padded, uid).status == expect
            assert scu.store(encode(ct_dataset(uid)), other).status == 0xA900  # data set vs request
            scu.release()


# --------------------------------------------------------------------------------------------------------
# file names


def test_file_name_options(tmp_path: Path) -> None:
    datasets = [ct_dataset(f"{UID_ROOT}.2{i}") for i in range(3)]
    with Receiver(tmp_path, ["+uf"], out=tmp_path / "unique") as rx:
        assert store(rx.port, datasets) == [0, 0, 0]
    names = [p.name for p in stored_files(rx.out)]
    assert len(names) == 3 and all(re.fullmatch(r"CT\.X\.2\.25\.\d+", n) for n in names), names
    with Receiver(tmp_path, ["-tn", "-fe", ".dcm"], out=tmp_path / "time") as rx:
        assert store(rx.port, datasets) == [0, 0, 0]
    names = [p.name for p in stored_files(rx.out)]
    assert len(names) == 3 and all(re.fullmatch(r"\d{17}(_\d{4})?\.CT\.dcm", n) for n in names), names
    with Receiver(tmp_path, ["+uf", "-uf", "-fe", ".dcm"], out=tmp_path / "default") as rx:
        assert store(rx.port, datasets[:1]) == [0]
    assert [p.name for p in stored_files(rx.out)] == [f"CT.{UID_ROOT}.20.dcm"]


# --------------------------------------------------------------------------------------------------------
# sorting


def test_sorting_options(tmp_path: Path) -> None:
    a1 = ct_dataset(f"{UID_ROOT}.31", study=STUDY_A, patient="Müller^Jürgen")
    a2 = ct_dataset(f"{UID_ROOT}.32", study=STUDY_A, patient="Müller^Jürgen")
    b1 = ct_dataset(f"{UID_ROOT}.33", study=STUDY_B, patient=None)
    stamp = r"\d{8}_\d{9}"
    expectations = {
        ("-ss", "PRE"): [rf"PRE_{stamp}", rf"PRE_{stamp}"],
        ("-ss", ""): [stamp, stamp],
        ("-su", "PRE"): [f"PRE_{STUDY_A}", f"PRE_{STUDY_B}"],
        ("-sp",): [rf"Muller_Jurgen_{stamp}", rf"ANONYMOUS_{stamp}"],
    }
    for args, patterns in expectations.items():
        out = tmp_path / ("sort" + "".join(args))
        with Receiver(tmp_path, list(args), out=out) as rx:
            assert store(rx.port, [a1, a2, b1]) == [0, 0, 0]
        dirs = sorted(p for p in out.iterdir() if p.is_dir())
        assert len(dirs) == 2, (args, dirs)
        by_files = {len(list(d.iterdir())): d.name for d in dirs}
        assert re.fullmatch(patterns[0], by_files[2]), (args, by_files)
        assert re.fullmatch(patterns[1], by_files[1]), (args, by_files)


# --------------------------------------------------------------------------------------------------------
# events


def test_rename_on_end_of_study_by_next_study_and_by_timeout(tmp_path: Path) -> None:
    a1 = ct_dataset(f"{UID_ROOT}.41", study=STUDY_A)
    a2 = ct_dataset(f"{UID_ROOT}.42", study=STUDY_A)
    b1 = ct_dataset(f"{UID_ROOT}.43", study=STUDY_B)
    with Receiver(tmp_path, ["-su", "", "-rns", "-tos", "1"]) as rx:
        assert store(rx.port, [a1, a2, b1]) == [0, 0, 0]
        study_a = rx.out / STUDY_A
        assert sorted(p.name for p in study_a.iterdir()) == ["CT000001", "CT000002"]  # ended by study B
        study_b = rx.out / STUDY_B
        assert wait_for(lambda: [p.name for p in study_b.iterdir()] == ["CT000001"], 10)  # ended by -tos
    ids = sorted(pydicom.dcmread(p).SOPInstanceUID for p in study_a.iterdir())
    assert ids == [f"{UID_ROOT}.41", f"{UID_ROOT}.42"]


def test_exec_on_reception_placeholders_are_sanitised(tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    command = f"echo #a'|'#c'|'#r'|'#p'|'#f >> {record}"
    uid = f"{UID_ROOT}.51"
    with Receiver(tmp_path, ["-xcr", command, "-xs", "-dhl"]) as rx:  # cwd: tmp_path
        assert store(rx.port, [ct_dataset(uid)], calling_ae="X;touch pwned", called_ae="MY$(id)") == [0]
    # the command got sanitised, shell-quoted values: nothing was injected
    assert not (tmp_path / "pwned").exists()
    line = record.read_text().strip()
    assert line == f"X_touch_pwned|MY__id_|127.0.0.1|{rx.out}|CT.{uid}", line


def test_exec_on_reception_runs_in_background_without_exec_sync(tmp_path: Path) -> None:
    record = tmp_path / "late.txt"
    with Receiver(tmp_path, ["-xcr", f"sleep 1.5; echo #f > {record}"]) as rx:
        t0 = time.monotonic()
        assert store(rx.port, [ct_dataset(f"{UID_ROOT}.52")]) == [0]
        assert time.monotonic() - t0 < 1.2  # not held back by the command
        assert not record.exists()
        assert wait_for(lambda: record.exists() and record.read_text().strip(), 10) == f"CT.{UID_ROOT}.52"


def test_exec_on_end_of_study_gets_study_directory(tmp_path: Path) -> None:
    record = tmp_path / "studies.txt"
    with Receiver(tmp_path, ["-ss", "S", "-xcs", f"echo #p #a >> {record}", "-xs", "-tos", "1"]) as rx:
        assert store(rx.port, [ct_dataset(f"{UID_ROOT}.61", study=STUDY_A)]) == [0]
        assert store(rx.port, [ct_dataset(f"{UID_ROOT}.62", study=STUDY_B)]) == [0]
        assert wait_for(lambda: record.exists() and len(record.read_text().splitlines()) == 2, 10)
    lines = record.read_text().splitlines()
    dirs = sorted(p for p in rx.out.iterdir() if p.is_dir())
    assert [line.split()[0] for line in lines] == [str(d) for d in dirs]  # A ended by B, B by -tos
    assert all(line.split()[1] == "RAWSCU" for line in lines)
