"""``batchstore load`` against real peers on loopback: its figures agree with what the peer stored.

Each level is short (about a second): these tests check that the figures are consistent and honest, not
the peers' speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from peers import (
    BatchstoreReceiver,
    DcmtkStorescp,
    Orthanc,
    batchstore_env,
    count_files,
    make_corpus,
    received_index,
    wait_count,
)
from scripted_scp import ScriptedSCP

import batchstore
from batchstore.loadgen.figures import LoadReport


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("load_corpus")
    corpus = make_corpus(root, 3, seed=3, profile="uniform", size=2048)
    return [str(p) for p in corpus.paths()]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchstore", "load", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=batchstore_env(),
        stdin=subprocess.DEVNULL,
    )


def sent(report: dict | LoadReport) -> int:
    """Every C-STORE answered, warm-up included: what the peer must have stored."""
    levels = report["levels"] if isinstance(report, dict) else [lv.__dict__ for lv in report.levels]
    return sum(lv["completed"] + lv["warmup"] for lv in levels)


def check_level_consistent(level: dict, duration: float) -> None:
    assert level["failed"] == 0 and level["statuses"] == {"0x0000": level["completed"]}, level
    assert level["completed"] > 0
    # throughput x duration = count: the window is the duration, plus at most the last response
    assert abs(level["stores_per_s"] * level["elapsed_s"] - level["completed"]) <= 1
    assert duration <= level["elapsed_s"] < duration + 0.5, level["elapsed_s"]
    assert abs(level["stores_per_s"] * duration - level["completed"]) <= 0.35 * level["completed"] + 2
    lat = level["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert level["setups"] >= 1 and level["setup_ms"]["max"] > 0
    assert level["histogram"] and level["series"]
    assert level["generator"]["cpu_percent"] > 0 and level["generator"]["rss_bytes"] > 0


@pytest.mark.needs_dcmtk
def test_load_sweep_against_storescp_fork_counts_what_storescp_stored(files, tmp_path) -> None:
    report_path = tmp_path / "load.json"
    with DcmtkStorescp(["--fork"], verbose=False) as scp:
        proc = run_cli("--concurrency", "1,2", "--duration", "1s", "--warmup", "0.2s", "--json", str(report_path),
                       "--no-progress", "127.0.0.1", str(scp.port), *files)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(report_path.read_text())
        stored = wait_count(scp.out_dir, sent(report), timeout=15)
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 2]
    for level in report["levels"]:
        check_level_consistent(level, 1.0)
    assert stored == sent(report)  # fresh UIDs: every C-STORE is a file of its own
    assert "C-STORE/s" in proc.stdout and "p99.9" in proc.stdout


def test_load_against_batchstore_receiver_fresh_uids_api(files, tmp_path) -> None:
    out = tmp_path / "out"
    with BatchstoreReceiver(out, fork=True) as receiver:
        report = batchstore.load(files, "127.0.0.1", receiver.port, concurrency=(2,), duration=1.0, warmup=0.2,
                                 series_after=10, study_after=2, patient_after=2, called_ae="LOADTEST",
                                 calling_ae="MODALITY")  # fmt: skip
        wait_count(out, sent(report), timeout=15)
    assert report.settings["called_ae"] == "LOADTEST" and report.settings["calling_ae"] == "MODALITY"
    check_level_consistent(report.as_dict()["levels"][0], 1.0)
    index = received_index(out)
    assert len(index) == count_files(out) == sent(report)  # no two C-STOREs carried the same UID
    import pydicom

    sample = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(index.values())[:60]]
    series = {ds.SeriesInstanceUID for ds in sample}
    assert all(len(ds.SOPInstanceUID) == 64 for ds in sample)
    assert len(series) > 1 and all(not uid.startswith(("1.2.826.0.1.3680043", "1.3.6")) for uid in series)
    assert all(str(ds.PatientName).startswith("BATCHSTORE^LOAD") for ds in sample)


@pytest.mark.needs_orthanc
def test_load_against_orthanc_counts_what_orthanc_stored(files, tmp_path) -> None:
    report_path = tmp_path / "load.json"
    with Orthanc() as orthanc:
        before = orthanc.count_instances()
        proc = run_cli("--concurrency", "2", "--duration", "1s", "--json", str(report_path), "--no-progress",
                       "-aec", "ORTHANC", "127.0.0.1", str(orthanc.dicom_port), *files)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(report_path.read_text())
        deadline = time.monotonic() + 15
        while orthanc.count_instances() - before < sent(report) and time.monotonic() < deadline:
            time.sleep(0.2)
        stored = orthanc.count_instances() - before
    check_level_consistent(report["levels"][0], 1.0)
    assert stored == sent(report)


def test_open_loop_stall_shows_in_the_percentiles() -> None:
    """One 0.8 s stall at 100 requests/s: the requests due during it are late, and the figures say so."""

    def policy(n: int, uid: str) -> int:
        if n == 100:
            time.sleep(0.8)
        return 0

    corpus = make_corpus(Path(_tmp()) / "c", 1, seed=5, profile="uniform", size=1024)
    with ScriptedSCP(policy) as scp:
        report = batchstore.load([str(p) for p in corpus.paths()], "127.0.0.1", scp.port, rate=100.0,
                                 duration=2.5, warmup=0.2)  # fmt: skip
    level = report.levels[0]
    assert level.mode == "open" and level.failed == 0
    assert level.latency_ms["max"] >= 780, level.latency_ms
    # ~80 requests were due during the stall, ~1/3 of the window: far more than 1 % are late
    assert level.latency_ms["p99"] >= 500, level.latency_ms
    assert level.latency_ms["p50"] < 100, level.latency_ms


def test_open_loop_reaches_the_requested_rate(files, tmp_path) -> None:
    with BatchstoreReceiver(tmp_path / "out", fork=True) as receiver:
        report = batchstore.load(files, "127.0.0.1", receiver.port, rate=150.0, concurrency=(2,), duration=2.0,
                                 warmup=0.3)  # fmt: skip
    level = report.levels[0]
    assert level.failed == 0
    assert abs(level.stores_per_s - 150.0) <= 0.05 * 150.0, level.stores_per_s
    assert level.latency_ms["p50"] < 50


def test_a_remote_peer_is_refused_without_the_flag(files) -> None:
    proc = run_cli("--duration", "1s", "192.0.2.1", "104", *files, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "not a loopback address" in proc.stderr and "--i-know-this-is-a-load-test" in proc.stderr


def test_a_peer_that_is_down_is_one_line_and_exit_9(files) -> None:
    from peers import free_port

    proc = run_cli("--duration", "1s", "127.0.0.1", str(free_port()), *files, timeout=30)
    assert proc.returncode == 9, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("batchstore: cannot associate with 127.0.0.1:")
    assert "connection refused" in proc.stderr


def test_bad_durations_and_levels_are_usage_errors(files) -> None:
    for args in (["--duration", "ten"], ["--concurrency", "0,2"], ["--rate", "-3/s"]):
        proc = run_cli(*args, "127.0.0.1", "104", *files, timeout=30)
        assert proc.returncode == 2 and "Invalid value" in proc.stderr, (args, proc.stderr)


def _tmp() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="bs-load-")


def test_load_over_tls_against_batchstore_receiver(files, tmp_path) -> None:
    """send's TLS options work in load too: each association process does its own handshake."""
    from tls_certs import make_pki

    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    pki = make_pki(pki_dir)
    out = tmp_path / "out"
    server = ["+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca)]
    with BatchstoreReceiver(out, server, fork=True) as receiver:
        report_path = tmp_path / "load.json"
        proc = run_cli("+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca), "--concurrency", "2",
                       "--duration", "1s", "--json", str(report_path), "--no-progress", "127.0.0.1",
                       str(receiver.port), *files)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(report_path.read_text())
        stored = wait_count(out, sent(report), timeout=15)
    assert report["settings"]["tls"] and stored == sent(report) > 0
    check_level_consistent(report["levels"][0], 1.0)
