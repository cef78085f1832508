"""batchstore send against real peers on loopback: DCMTK storescp --fork and Orthanc.

Every test checks what arrived at the peer (SOP Instance UIDs, data set bytes), what the report says and the
exit code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from gen_corpus import generate
from peers import DCMTK_STORESCU_CFG, DcmtkStorescp, Orthanc, dataset_bytes

import batchstore
from batchstore.dicom.uids import IMPLICIT_VR_LE, RLE_LOSSLESS
from batchstore.sender.report import (
    EXIT_NO_INPUT,
    EXIT_NOTHING_SENT,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
)

RLE = RLE_LOSSLESS


def run_send(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchstore", "send", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("big")
    manifest = generate(str(root / "corpus"), 2000, seed=3, profile="mixed", junk=6)
    return root / "corpus", manifest


def _valid(manifest: dict) -> list[dict]:
    return manifest["files"]


@pytest.mark.needs_dcmtk
def test_big_mixed_corpus_to_storescp_fork(big_corpus: tuple[Path, dict], tmp_path: Path) -> None:
    corpus, manifest = big_corpus
    files = _valid(manifest)
    assert len(files) >= 2000
    assert len({f["sop_class_uid"] for f in files}) >= 5
    assert len({f["transfer_syntax"] for f in files}) >= 3
    report_path = tmp_path / "report.json"
    with DcmtkStorescp(["--fork", "+xa", "+B"], verbose=True) as scp:
        # no -xs: since issue 12 it compresses uncompressed input (as storescu does); here every file
        # must arrive as its own bytes (each file syntax gets a context of its own anyway)
        proc = run_send("-j", "4", "-nh", "+sd", "+r", "--report", str(report_path),
                        "127.0.0.1", str(scp.port), str(corpus))
        received = scp.wait_files(len(files), timeout=60)
        log = scp.log()
        peak = scp.peak_associations()  # from storescp's own log of associations received and released
        # every valid file arrived, data set byte for byte
        assert set(received) == {f["sop_instance_uid"] for f in files}
        for f in files:
            assert dataset_bytes(received[f["sop_instance_uid"]]) == dataset_bytes(corpus / f["path"]), f["path"]
    assert proc.returncode == EXIT_SOME_FAILED, proc.stderr[-3000:]
    # every junk file is in the report with its reason
    report = json.loads(report_path.read_text())
    by_path = {Path(r["path"]).resolve(): r for r in report["files"]}
    for junk in manifest["junk"]:
        record = by_path[(corpus / junk["path"]).resolve()]
        assert record["category"] == "permanent", record
        assert record["error"], record
    assert report["summary"]["success"] == len(files)
    assert report["summary"]["associations"] == 4
    assert log.count("Association Received") == 4
    assert peak == 4, f"storescp saw at most {peak} concurrent associations"


@pytest.mark.needs_orthanc
def test_big_mixed_corpus_to_orthanc(big_corpus: tuple[Path, dict], tmp_path: Path) -> None:
    corpus, manifest = big_corpus
    files = _valid(manifest)
    with Orthanc() as orthanc:
        proc = run_send("-j", "4", "-nh", "+sd", "+r", "-xs", "-aec", "ORTHANC",
                        "127.0.0.1", str(orthanc.dicom_port), str(corpus))
        assert proc.returncode == EXIT_SOME_FAILED, proc.stderr[-3000:]
        stats = orthanc.statistics()
        assert stats["CountInstances"] == len(files)
        assert orthanc.instance_uids() == {f["sop_instance_uid"] for f in files}


@pytest.mark.needs_dcmtk
def test_more_than_128_presentation_contexts(tmp_path: Path) -> None:
    manifest = generate(str(tmp_path / "many"), 150, seed=5, profile="many-classes", sop_classes=150)
    files = _valid(manifest)
    assert len({f["sop_class_uid"] for f in files}) == 150
    report_path = tmp_path / "r.json"
    with DcmtkStorescp(["--fork", "-pm", "+xa", "+B"]) as scp:
        proc = run_send("-j", "2", "+sd", "+r", "--report", str(report_path),
                        "127.0.0.1", str(scp.port), str(tmp_path / "many"))
        received = scp.wait_files(len(files), timeout=60)
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    assert set(received) == {f["sop_instance_uid"] for f in files}
    summary = json.loads(report_path.read_text())["summary"]
    assert summary["context_groups"] >= 3  # 150 classes x 2 contexts > 2 x 128
    assert summary["success"] == len(files)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("small")
    manifest = generate(str(root / "c"), 60, seed=9, profile="mixed", junk=0)
    return root / "c", manifest


@pytest.mark.parametrize(
    "options",
    [
        # spellings straight from the storescu man page
        ["-aet", "MYSCU", "-aec", "ANY-SCP", "+sd", "+r", "-xs", "-nh"],
        ["--aetitle", "MYSCU", "--call", "STORESCP", "--scan-directories", "--recurse", "--propose-lossless",
         "--no-halt", "--max-pdu", "32768", "--max-send-pdu", "4096", "--timeout", "10", "--socket-timeout", "20",
         "--acse-timeout", "20", "--dimse-timeout", "20", "--repeat", "1", "-v", "+v"],
        ["-x=", "+sd", "+r", "-xr", "-R", "+C", "-pdu", "16384", "-to", "5", "-ts", "10", "-ta", "10", "-td", "10",
         "-i4", "+f", "-rn", "-up", "+u", "-usr", "alice", "-pwd", "secret", "--abort", "-q"],
        ["+sd", "+r", "+sp", "*", "-xr", "+cl", "6", "-ll", "info", "-tls"],
    ],
    ids=["short", "long", "misc", "pattern"],
)
@pytest.mark.needs_dcmtk
def test_storescu_command_lines_run_unchanged(small_corpus: tuple[Path, dict], options: list[str]) -> None:
    corpus, manifest = small_corpus
    files = _valid(manifest)
    with DcmtkStorescp(["--fork", "+xa", "+B"]) as scp:
        proc = run_send(*options, "127.0.0.1", str(scp.port), str(corpus))
        received = scp.wait_files(len(files), timeout=30)
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    assert set(received) == {f["sop_instance_uid"] for f in files}


@pytest.mark.needs_dcmtk
def test_command_file_expansion(small_corpus: tuple[Path, dict], tmp_path: Path) -> None:
    corpus, manifest = small_corpus
    cmdfile = tmp_path / "opts.txt"
    cmdfile.write_text('-aet "MY SCU" +sd\n+r -xs\n')
    with DcmtkStorescp(["+xa"]) as scp:
        proc = run_send(f"@{cmdfile}", "127.0.0.1", str(scp.port), str(corpus))
        received = scp.wait_files(len(manifest["files"]), timeout=30)
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    assert len(received) == len(manifest["files"])


@pytest.mark.needs_dcmtk
def test_halts_on_first_failure_by_default(small_corpus: tuple[Path, dict], tmp_path: Path) -> None:
    """Without +xa storescp rejects RLE; with --decompress-never (issue 12: RLE is decompressed by default)
    the first RLE file fails and the run halts, as storescu's does."""
    corpus, manifest = small_corpus
    rle = [f for f in manifest["files"] if f["transfer_syntax"] == RLE]
    assert rle, "the corpus needs RLE files"
    report_path = tmp_path / "halt.json"
    with DcmtkStorescp(["--fork", "+B"]) as scp:
        proc = run_send("--decompress-never", "-j", "1", "--batch-size", "5", "+sd", "+r", "--report", str(report_path),
                        "127.0.0.1", str(scp.port), str(corpus))
    report = json.loads(report_path.read_text())
    cats = [r["category"] for r in report["files"]]
    assert proc.returncode == EXIT_SOME_FAILED, proc.stderr[-3000:]
    assert report["summary"]["halted"] is True
    assert cats.count("permanent") == 1
    assert cats.count("not-sent") >= 1
    failed = next(r for r in report["files"] if r["category"] == "permanent")
    assert failed["error"].startswith("no accepted presentation context for RLE Lossless")
    assert "halted" in proc.stderr.lower()


@pytest.mark.needs_dcmtk
def test_no_halt_reports_every_rle_file(small_corpus: tuple[Path, dict], tmp_path: Path) -> None:
    corpus, manifest = small_corpus
    rle = {f["sop_instance_uid"] for f in manifest["files"] if f["transfer_syntax"] == RLE}
    report_path = tmp_path / "nohalt.csv"
    with DcmtkStorescp(["--fork", "+B"]) as scp:
        proc = run_send("--decompress-never", "-j", "2", "-nh", "+sd", "+r", "--report", str(report_path),
                        "127.0.0.1", str(scp.port), str(corpus))
        received = scp.wait_files(len(manifest["files"]) - len(rle), timeout=30)
    assert proc.returncode == EXIT_SOME_FAILED
    assert set(received) == {f["sop_instance_uid"] for f in manifest["files"]} - rle
    import csv

    rows = list(csv.DictReader(report_path.open()))
    assert {r["sop_instance_uid"] for r in rows if r["category"] == "permanent"} == rle
    ok = [r for r in rows if r["category"] == "success"]
    assert all(r["status"] == "0x0000" and r["association"] != "0" and r["context_id"] != "0" for r in ok)


@pytest.mark.needs_dcmtk
def test_implicit_only_converts_uncompressed_files(small_corpus: tuple[Path, dict], tmp_path: Path) -> None:
    corpus, manifest = small_corpus
    plain = [f for f in manifest["files"] if f["transfer_syntax"] != RLE]
    with DcmtkStorescp(["+B"]) as scp:
        proc = run_send("--decompress-never", "-xi", "-nh", "-j", "2", "+sd", "+r", "127.0.0.1", str(scp.port), str(corpus))
        received = scp.wait_files(len(plain), timeout=30)
        for f in plain:
            got = pydicom.dcmread(received[f["sop_instance_uid"]])
            assert got.file_meta.TransferSyntaxUID == IMPLICIT_VR_LE
            want = pydicom.dcmread(corpus / f["path"])
            assert got.SOPInstanceUID == want.SOPInstanceUID
            if "PixelData" in want:
                assert (got.pixel_array == want.pixel_array).all(), f["path"]
    assert proc.returncode == EXIT_SOME_FAILED  # the RLE files cannot be sent implicit VR


@pytest.mark.needs_dcmtk
def test_python_api_and_exit_codes(small_corpus: tuple[Path, dict], tmp_path: Path) -> None:
    corpus, manifest = small_corpus
    with DcmtkStorescp(["--fork", "+xa"]) as scp:
        report = batchstore.send([str(corpus)], "127.0.0.1", scp.port, scan_directories=True, recurse=True,
                                 workers=2, halt_on_failure=False)
        scp.wait_files(len(manifest["files"]), timeout=30)
    assert report.exit_code() == EXIT_OK
    assert report.delivered == len(manifest["files"])
    assert {o.sop_instance_uid for o in report.outcomes} == {f["sop_instance_uid"] for f in manifest["files"]}


def test_peer_down_is_nothing_sent_and_retryable(small_corpus: tuple[Path, dict]) -> None:
    from peers import free_port

    corpus, _ = small_corpus
    proc = run_send("-nh", "--retries", "1", "--retry-wait", "0.05", "-j", "1", "+sd", "+r",
                    "127.0.0.1", str(free_port()), str(corpus))
    assert proc.returncode == EXIT_NOTHING_SENT, proc.stderr[-2000:]
    assert "retrying may help" in proc.stderr


def test_usage_errors(tmp_path: Path) -> None:
    assert run_send("127.0.0.1", "104").returncode == EXIT_USAGE
    tls = run_send("+tls", "key.pem", "cert.pem", "127.0.0.1", "104", str(tmp_path))
    assert tls.returncode == EXIT_USAGE and "cannot read certificate cert.pem" in tls.stderr
    assert run_send("-pdu", "100", "127.0.0.1", "104", str(tmp_path)).returncode == EXIT_USAGE
    empty = run_send("+sd", "127.0.0.1", "104", str(tmp_path))
    assert empty.returncode == EXIT_NO_INPUT


@pytest.mark.needs_dcmtk
def test_invent_uids(small_corpus: tuple[Path, dict]) -> None:
    corpus, manifest = small_corpus
    plain = [f for f in manifest["files"] if f["transfer_syntax"] != RLE]
    with DcmtkStorescp(["+xa"]) as scp:
        proc = run_send("+II", "+IR", "5", "-nh", "-j", "2", "127.0.0.1", str(scp.port),
                        *[str(corpus / f["path"]) for f in plain])
        received = scp.wait_files(len(plain), timeout=30)
        series = {pydicom.dcmread(p).SeriesInstanceUID for p in received.values()}
    assert proc.returncode == EXIT_OK, proc.stderr[-2000:]
    assert not set(received) & {f["sop_instance_uid"] for f in plain}  # all new instance UIDs
    assert len(series) == -(-len(plain) // 5)  # a new series every 5 images


@pytest.mark.needs_dcmtk
def test_rename_done_and_bad(tmp_path: Path) -> None:
    manifest = generate(str(tmp_path / "c"), 8, seed=11, profile="uniform", size=1024, junk=1)
    with DcmtkStorescp(["+xa"]) as scp:
        proc = run_send("+rn", "-nh", "+sd", "+r", "-j", "1", "127.0.0.1", str(scp.port), str(tmp_path / "c"))
    assert proc.returncode == EXIT_SOME_FAILED
    names = [p.name for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert sum(n.endswith(".done") for n in names) == len(manifest["files"])
    assert sum(n.endswith(".bad") for n in names) == 1


@pytest.mark.needs_dcmtk
def test_echo(tmp_path: Path) -> None:
    with DcmtkStorescp([]) as scp:
        ok = subprocess.run([sys.executable, "-m", "batchstore", "echo", "127.0.0.1", str(scp.port)],
                            capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "C-ECHO" in ok.stdout


def test_scan_dry_run(small_corpus: tuple[Path, dict]) -> None:
    corpus, manifest = small_corpus
    proc = subprocess.run([sys.executable, "-m", "batchstore", "scan", "+sd", "+r", "--json", str(corpus)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["files"] == len(manifest["files"])
    assert sum(g["files"] for g in plan["groups"]) == len(manifest["files"])



@pytest.mark.needs_dcmtk
def test_read_modes_bare_data_sets(tmp_path: Path) -> None:
    """-f sends data sets without file meta information; +fo refuses them; +f (default) takes both."""
    from pydicom.dataset import Dataset

    bare = tmp_path / "bare"
    bare.mkdir()
    uids = []
    for n in range(3):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.99.{n + 1}"
        ds.PatientName = "BARE^DATASET"
        ds.Modality = "OT"
        ds.save_as(bare / f"ds{n}", implicit_vr=True, little_endian=True, enforce_file_format=False)
        uids.append(ds.SOPInstanceUID)
    with DcmtkStorescp(["+xa"]) as scp:
        only_file = run_send("+fo", "-nh", "+sd", "127.0.0.1", str(scp.port), str(bare))
        assert only_file.returncode == EXIT_NOTHING_SENT  # three files, none of them Part 10
        assert only_file.stderr.count("+fo/--read-file-only given") == 3 and scp.received() == {}
        for mode in ("-f", "+f"):
            proc = run_send(mode, "+sd", "127.0.0.1", str(scp.port), str(bare))
            assert proc.returncode == EXIT_OK, (mode, proc.stderr[-2000:])
        received = scp.wait_files(3, timeout=30)
        assert set(received) == set(uids)
        assert pydicom.dcmread(received[uids[0]]).PatientName == "BARE^DATASET"


@pytest.mark.needs_dcmtk
def test_config_file_profile_and_repeat(tmp_path: Path) -> None:
    """-xf with DCMTK's own storescu.cfg profile decides the contexts; --repeat 2 sends every file twice."""
    from scripted_scp import ScriptedSCP

    manifest = generate(str(tmp_path / "c"), 10, seed=41, profile="uniform", size=2048)
    cfg = Path(DCMTK_STORESCU_CFG)
    with ScriptedSCP(lambda n, uid: 0) as scp:
        proc = run_send("-xf", str(cfg), "Default", "--repeat", "2", "-j", "1", "+sd", "+r",
                        "127.0.0.1", str(scp.port), str(tmp_path / "c"))
    assert proc.returncode == EXIT_OK, proc.stderr[-2000:]
    uids = sorted(f["sop_instance_uid"] for f in manifest["files"])
    assert sorted(scp.stored) == sorted(uids * 2)
    with DcmtkStorescp(["+xa"]) as dcm:
        bad = run_send("-xf", str(cfg), "NoSuchProfile", "127.0.0.1", str(dcm.port), str(tmp_path / "c"))
        mixed = run_send("-xf", str(cfg), "Default", "-xs", "127.0.0.1", str(dcm.port), str(tmp_path / "c"))
    assert bad.returncode == EXIT_USAGE and "NoSuchProfile" in bad.stderr
    assert mixed.returncode == EXIT_USAGE and "config-file" in mixed.stderr
