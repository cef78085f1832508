"""batchstore send into batchstore receive: the two halves together, checked from the output directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from gen_corpus import generate
from peers import dataset_bytes, received_index
from test_receive_helpers import Receiver, temp_files, wait_for

from batchstore.sender.report import EXIT_OK, EXIT_SOME_FAILED


def test_send_j4_into_receive_fork_900_files(tmp_path: Path) -> None:
    manifest = generate(str(tmp_path / "corpus"), 900, seed=31, profile="mixed", junk=3)
    files = manifest["files"]
    report_path = tmp_path / "r.json"
    with Receiver(tmp_path, ["--fork", "+xa"]) as rx:
        proc = subprocess.run(
            [sys.executable, "-m", "batchstore", "send", "-j", "4", "-nh", "+sd", "+r",
             "--report", str(report_path), "127.0.0.1", str(rx.port), str(tmp_path / "corpus")],
            capture_output=True, text=True, timeout=300,
        )
        wait_for(lambda: rx.log().count("Association ended") >= 4, timeout=30)
        log = rx.log()
        assert rx.stop() == 0
    assert proc.returncode == EXIT_SOME_FAILED, proc.stderr[-3000:]  # the 3 junk files
    got = received_index(rx.out)
    assert set(got) == {f["sop_instance_uid"] for f in files}
    corpus = tmp_path / "corpus"
    mismatched = [f["path"] for f in files if dataset_bytes(got[f["sop_instance_uid"]]) != dataset_bytes(corpus / f["path"])]
    assert mismatched == []
    pids = rx.child_pids()
    assert len(pids) == 4 and len(set(pids)) == 4, log  # one child per worker's association
    assert temp_files(rx.out) == []
    summary = json.loads(report_path.read_text())["summary"]
    assert summary["success"] == len(files) and summary["failed_permanent"] == 3


@pytest.mark.parametrize("pdu", ["4096", "0"], ids=["smallest", "unlimited"])
def test_send_to_receive_at_extreme_peer_pdu(tmp_path: Path, pdu: str) -> None:
    """The smallest maximum PDU makes large data sets span hundreds of P-DATA-TF PDUs; 0 means unlimited.

    (No -xs: it now compresses uncompressed files, as storescu does, and these tests compare bytes.)"""
    manifest = generate(str(tmp_path / "c"), 60, seed=32, profile="mixed")
    with Receiver(tmp_path, ["+xa", "-pdu", pdu]) as rx:
        proc = subprocess.run(
            [sys.executable, "-m", "batchstore", "send", "-j", "1", "+sd", "+r",
             "127.0.0.1", str(rx.port), str(tmp_path / "c")],
            capture_output=True, text=True, timeout=120,
        )
        assert rx.stop() == 0
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    got = received_index(rx.out)
    for f in manifest["files"]:
        assert dataset_bytes(got[f["sop_instance_uid"]]) == dataset_bytes(tmp_path / "c" / f["path"])


@pytest.mark.needs_dcmtk
def test_dcmsend_into_receive(tmp_path: Path) -> None:
    """DCMTK's dcmsend (a different sender from storescu: it decompresses and proposes per file) into receive."""
    from peers import DCMTK_DCMSEND, dcmtk_env

    manifest = generate(str(tmp_path / "c"), 40, seed=33, profile="uniform", size=4096)
    with Receiver(tmp_path, ["+xa"]) as rx:
        proc = subprocess.run(
            [DCMTK_DCMSEND, "+sd", "+r", "127.0.0.1", str(rx.port), str(tmp_path / "c")],
            capture_output=True, text=True, timeout=120, env=dcmtk_env(),
        )
        assert rx.stop() == 0
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = received_index(rx.out)
    assert set(got) == {f["sop_instance_uid"] for f in manifest["files"]}
    for f in manifest["files"]:
        assert dataset_bytes(got[f["sop_instance_uid"]]) == dataset_bytes(tmp_path / "c" / f["path"])
