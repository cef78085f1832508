"""DCMTK parity of ``batchstore send`` command lines (issue 18, the sender half).

Every test runs DCMTK's storescu and ``batchstore send`` the same way (same files, same options, against a
DCMTK storescp of the same kind) and compares what a user sees: the files written at the peer, the
warning text and the exit codes (``--dcmtk-exit-codes`` for storescu's).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
import pytest
from peers import DcmtkStorescp, dcmtk_send, free_port, make_corpus
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

pytestmark = pytest.mark.needs_dcmtk

StartScp = Callable[..., DcmtkStorescp]

IGNORED_DIRECTORY = "ignoring directory because option --scan-directories is not set: "


def batchstore_send(args: Sequence[str], host_port: Sequence[str], paths: Sequence[object]) -> subprocess.CompletedProcess:
    """``batchstore send ARGS HOST PORT PATHS`` (one worker, no retries: storescu's one association)."""
    cmd = [sys.executable, "-m", "batchstore", "send", "-j", "1", "--retries", "0", *args, *host_port]
    return subprocess.run(
        cmd + [str(p) for p in paths], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def storescu(args: Sequence[str], port: int, paths: Sequence[object]) -> subprocess.CompletedProcess:
    return dcmtk_send([str(p) for p in paths], port, list(args), timeout=120)


def both(
    start: StartScp, args: Sequence[str], paths: Sequence[object], scp_args: Sequence[str] = ()
) -> tuple[subprocess.CompletedProcess, DcmtkStorescp, subprocess.CompletedProcess, DcmtkStorescp]:
    """storescu and ``batchstore send --dcmtk-exit-codes`` with `args`, each to a fresh storescp."""
    dcmtk_scp = start(list(scp_args))
    dcmtk = storescu(args, dcmtk_scp.port, paths)
    ours_scp = start(list(scp_args))
    ours = batchstore_send(["--dcmtk-exit-codes", *args], ["127.0.0.1", str(ours_scp.port)], paths)
    return dcmtk, dcmtk_scp, ours, ours_scp


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    corpus = make_corpus(tmp_path / "corpus", 3, seed=5)
    return corpus.paths()


def bare_data_set(path: Path, n: int) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.18.{n}"
    ds.PatientName = "PARITY^SEND"
    ds.Modality = "OT"
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return path


def part10(path: Path, n: int, ts: str) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.18.{n}"
    ds.PatientName = "PARITY^SEND"
    ds.Modality = "OT"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    return path


# --- item 1: a directory without +sd -------------------------------------------------------------------


def test_directory_without_scan_directories_is_a_warning(storescp: StartScp, files: list[Path], tmp_path: Path) -> None:
    directory = files[0].parent  # holds files that must not be sent
    others = [f for f in files if f.parent != directory]
    assert others
    inputs = [directory, *others]
    dcmtk, dcmtk_scp, ours, ours_scp = both(storescp, [], inputs)
    assert dcmtk.returncode == ours.returncode == 0, (dcmtk.stderr, ours.stderr)
    assert IGNORED_DIRECTORY + str(directory) in dcmtk.stderr
    assert IGNORED_DIRECTORY + str(directory) in ours.stderr
    expected = {str(pydicom.dcmread(f).SOPInstanceUID) for f in others}
    assert set(dcmtk_scp.wait_files(len(others))) == set(ours_scp.wait_files(len(others))) == expected

    # batchstore's own exit code is 0 as well, and the report has no record of the directory
    scp = storescp()
    report = tmp_path / "run.json"
    own = batchstore_send(["--report", str(report)], ["127.0.0.1", str(scp.port)], inputs)
    assert own.returncode == 0, own.stderr
    data = json.loads(report.read_text())
    assert [f["path"] for f in data["files"]] == [str(p) for p in others]
    assert data["summary"]["failed_permanent"] == 0

    # only a directory: storescu has no input file (exit 1); batchstore: no input (3)
    dcmtk, _, ours, _ = both(storescp, [], [directory])
    assert dcmtk.returncode == ours.returncode == 1
    assert "no input files to be sent" in dcmtk.stderr
    assert IGNORED_DIRECTORY + str(directory) in ours.stderr
    own = batchstore_send([], ["127.0.0.1", str(scp.port)], [directory])
    assert own.returncode == 3


# --- item 2: +fo and file meta information without a preamble -----------------------------------------


def test_read_file_only_takes_meta_without_preamble(storescp: StartScp, tmp_path: Path) -> None:
    full = part10(tmp_path / "full.dcm", 1, ExplicitVRLittleEndian)
    no_preamble = tmp_path / "nopreamble.dcm"
    no_preamble.write_bytes(full.read_bytes()[132:])
    full.unlink()
    bare = bare_data_set(tmp_path / "bare", 2)
    # +fo: the file without a preamble is file format and goes; the bare data set does not
    dcmtk, dcmtk_scp, ours, ours_scp = both(storescp, ["+fo", "-nh"], [no_preamble, bare])
    assert dcmtk.returncode == ours.returncode == 0, (dcmtk.stderr, ours.stderr)
    got_dcmtk, got_ours = dcmtk_scp.wait_files(1), ours_scp.wait_files(1)
    assert set(got_dcmtk) == set(got_ours) == {"1.2.826.0.1.3680043.8.498.18.1"}
    assert pydicom.dcmread(got_ours["1.2.826.0.1.3680043.8.498.18.1"]).PatientName == "PARITY^SEND"
    # halting at the bare data set: both exit 1 (storescu after sending the file before it; batchstore
    # checks every file first and sends nothing, a known and documented difference)
    dcmtk, _, ours, _ = both(storescp, ["+fo"], [no_preamble, bare])
    assert dcmtk.returncode == ours.returncode == 1, (dcmtk.stderr, ours.stderr)
    assert "+fo/--read-file-only given" in ours.stderr


# --- item 3: --dcmtk-exit-codes ---------------------------------------------------------------------------


def test_exit_codes_before_sending(storescp: StartScp, files: list[Path], tmp_path: Path) -> None:
    """Usage errors, a missing file, a closed port, a refused association: storescu exits 1."""
    scp = storescp()
    port = str(scp.port)
    closed = str(free_port())
    cases: list[tuple[list[str], list[str], list[object]]] = [
        (["--no-such-option"], ["127.0.0.1", port], files),
        ([], ["127.0.0.1"], []),  # no port, no file
        ([], ["127.0.0.1", port], [tmp_path / "absent.dcm", *files]),  # halts before connecting
        ([], ["127.0.0.1", closed], files),
        (["+v"], ["127.0.0.1", port], files),  # --verbose-pc without verbose mode
    ]
    for args, host_port, paths in cases:
        dcmtk = subprocess.run(
            ["/usr/bin/storescu", *args, *host_port, *map(str, paths)], capture_output=True, text=True, timeout=60
        )
        ours = batchstore_send(["--dcmtk-exit-codes", *args], host_port, paths)
        assert dcmtk.returncode == ours.returncode == 1, (args, host_port, dcmtk.stderr, ours.stderr)
    # a missing file with -nh: a warning, the rest sent, exit 0
    dcmtk, dcmtk_scp, ours, ours_scp = both(storescp, ["-nh"], [tmp_path / "absent.dcm", *files])
    assert dcmtk.returncode == ours.returncode == 0, (dcmtk.stderr, ours.stderr)
    assert len(dcmtk_scp.wait_files(len(files))) == len(ours_scp.wait_files(len(files))) == len(files)
    # storescp --refuse: A-ASSOCIATE-RJ
    dcmtk, _, ours, ours_scp = both(storescp, [], files, scp_args=["--refuse"])
    assert dcmtk.returncode == ours.returncode == 1, (dcmtk.stderr, ours.stderr)
    assert ours_scp.received() == {}


@pytest.mark.parametrize("no_halt", [False, True])
def test_exit_codes_peer_aborts(storescp: StartScp, files: list[Path], no_halt: bool) -> None:
    """storescp --abort-during: storescu exits 10 (halted by a network failure), 1 with -nh."""
    args = ["-nh"] if no_halt else []
    dcmtk, _, ours, _ = both(storescp, args, files, scp_args=["--abort-during"])
    assert dcmtk.returncode == ours.returncode == (1 if no_halt else 10), (dcmtk.stderr, ours.stderr)


@pytest.mark.parametrize("no_halt", [False, True])
def test_exit_codes_failure_status(storescp: StartScp, files: list[Path], tmp_path: Path, no_halt: bool) -> None:
    """storescp cannot write (its -od is gone): 0xA700 for every file; storescu exits 0xA7 (167), 0 with
    -nh; batchstore's own code is 9 (nothing delivered)."""
    args = ["-nh"] if no_halt else []
    scps = []
    results = []
    for runner in ("storescu", "batchstore"):
        out = tmp_path / f"gone-{runner}"
        out.mkdir()
        scp = storescp(out_dir=out)
        out.rmdir()
        scps.append(scp)
        if runner == "storescu":
            results.append(storescu(args, scp.port, files[:1]))
        else:
            results.append(
                batchstore_send(["--dcmtk-exit-codes", *args], ["127.0.0.1", str(scp.port)], files[:1])
            )
    dcmtk, ours = results
    assert dcmtk.returncode == ours.returncode == (0 if no_halt else 0xA7), (dcmtk.stderr, ours.stderr)
    out = tmp_path / "gone-own"
    out.mkdir()
    scp = storescp(out_dir=out)
    out.rmdir()
    own = batchstore_send(args, ["127.0.0.1", str(scp.port)], files[:1])
    assert own.returncode == 9, own.stderr


def test_exit_codes_bad_file(storescp: StartScp, files: list[Path], tmp_path: Path) -> None:
    """A file that is not DICOM: storescu halts with 1 after the files before it, or goes on (-nh, 0)."""
    junk = tmp_path / "junk.dcm"
    junk.write_text("hello\n")
    dcmtk, _, ours, _ = both(storescp, [], [*files, junk])
    assert dcmtk.returncode == ours.returncode == 1, (dcmtk.stderr, ours.stderr)
    dcmtk, dcmtk_scp, ours, ours_scp = both(storescp, ["-nh"], [junk, *files])
    assert dcmtk.returncode == ours.returncode == 0, (dcmtk.stderr, ours.stderr)
    assert set(dcmtk_scp.wait_files(len(files))) == set(ours_scp.wait_files(len(files)))
    assert len(ours_scp.received()) == len(files)


# --- item 4: +C proposes the file's own syntax as well, and +v says so ----------------------------------


def test_combine_extra_context_is_shown(storescp: StartScp, tmp_path: Path) -> None:
    implicit = part10(tmp_path / "implicit.dcm", 3, ImplicitVRLittleEndian)
    explicit = part10(tmp_path / "explicit.dcm", 4, ExplicitVRLittleEndian)
    dcmtk, dcmtk_scp, ours, ours_scp = both(storescp, ["-v", "+v", "+C", "-R"], [implicit, explicit])
    assert dcmtk.returncode == ours.returncode == 0, (dcmtk.stderr, ours.stderr)
    got_dcmtk, got_ours = dcmtk_scp.wait_files(2), ours_scp.wait_files(2)
    assert set(got_dcmtk) == set(got_ours)
    # batchstore: the implicit file went out unchanged, in the extra context +v announces
    assert "+C: " in ours.stderr and "also proposing Implicit VR Little Endian" in ours.stderr
    uid = "1.2.826.0.1.3680043.8.498.18.3"
    assert pydicom.dcmread(got_ours[uid]).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    # storescu's one combined context: the peer picked explicit VR, the implicit file was converted
    assert pydicom.dcmread(got_dcmtk[uid]).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    # no +v, no line; the proposal is the same
    scp = storescp()
    quiet = batchstore_send(["+C", "-R"], ["127.0.0.1", str(scp.port)], [implicit, explicit])
    assert quiet.returncode == 0 and "also proposing" not in quiet.stderr
