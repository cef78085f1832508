"""A small send runs without worker processes (sender/inline.py): the same outcomes as with them.

Against real storescp: every file arrives byte for byte, a file the peer rejects fails and halts the run
(or not, with -nh), a peer that refuses associations gives the same report and exit code as the process
path; against the scripted SCP, a slow peer, Ctrl-C in the middle. And the imports the send path needs
before its first C-STORE.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from peers import DcmtkStorescp, batchstore_env, dataset_bytes, free_port, make_corpus
from scripted_scp import ScriptedSCP

from batchstore.sender.report import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED

INLINE = "sent from this process, over one association (no worker process)"
CT = "1.2.840.10008.5.1.4.1.1.2"
PRIVATE_CLASS = "1.2.840.10008.5.1.4.1.1.3.999"  # no storescp accepts it; planned after CT, before MR
MR = "1.2.840.10008.5.1.4.1.1.4"


def run_send(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchstore", "send", "-v", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=batchstore_env(),
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("small") / "corpus"
    return root, make_corpus(root, 24, seed=17, profile="uniform", size=1024).files


def _records(path: Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in json.loads(path.read_text())["files"]}


@pytest.mark.needs_dcmtk
def test_small_send_is_inline_and_complete(corpus: tuple[Path, list[dict]], tmp_path: Path) -> None:
    root, files = corpus
    report = tmp_path / "run.json"
    journal = tmp_path / "run.db"
    with DcmtkStorescp(["--fork"]) as scp:
        proc = run_send("+sd", "+r", "--report", str(report), "--journal", str(journal),
                        "127.0.0.1", str(scp.port), str(root))
        received = scp.wait_files(len(files), timeout=30)
        assert set(received) == {f["sop_instance_uid"] for f in files}
        for f in files:
            assert dataset_bytes(received[f["sop_instance_uid"]]) == dataset_bytes(root / f["path"])
        rerun = run_send("+sd", "+r", "--journal", str(journal), "127.0.0.1", str(scp.port), str(root))
        associations = scp.association_count()
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    assert INLINE in proc.stderr
    data = json.loads(report.read_text())
    assert data["summary"]["success"] == len(files)
    assert len(data["associations"]) == 1  # one association for the whole run
    assert {r["status"] for r in data["files"]} == {"0x0000"}
    # the journal has every file done: the rerun sends nothing and opens no association
    assert rerun.returncode == EXIT_OK, rerun.stderr[-3000:]
    assert associations == 1


def _with_private_file(root: Path, files: list[dict], tmp_path: Path) -> tuple[Path, str]:
    """A copy of the corpus (CT) where one file has a SOP class storescp does not accept and the files
    after it are MR: the plan sends the CT files, then that file, then the MR files."""
    copy = tmp_path / "corpus"
    names = sorted(f["path"] for f in files)
    for k, name in enumerate(names):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes((root / name).read_bytes())
        if k >= 12:
            ds = pydicom.dcmread(copy / name)
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = PRIVATE_CLASS if k == 12 else MR
            ds.save_as(copy / name, enforce_file_format=True)
    return copy, Path(names[12]).name


@pytest.mark.needs_dcmtk
def test_rejected_file_inline_halts_or_goes_on(corpus: tuple[Path, list[dict]], tmp_path: Path) -> None:
    root, files = corpus
    copy, bad = _with_private_file(root, files, tmp_path)
    for halt in (True, False):
        report = tmp_path / f"halt-{halt}.json"
        with DcmtkStorescp(["--fork"]) as scp:
            proc = run_send(*([] if halt else ["-nh"]), "-j", "1", "+sd", "+r", "--report", str(report),
                            "127.0.0.1", str(scp.port), str(copy))
            time.sleep(0.3)
            received = scp.received()
        assert proc.returncode == EXIT_SOME_FAILED, proc.stderr[-3000:]
        assert INLINE in proc.stderr
        records = _records(report)
        assert len(records) == len(files)
        assert records[bad]["category"] == "permanent"
        assert records[bad]["error"].startswith("no accepted presentation context"), records[bad]
        delivered = {r["sop_instance_uid"] for r in records.values() if r["category"] == "success"}
        assert delivered == set(received)  # what the report says arrived is what arrived
        classes = {r["sop_class_uid"] for r in records.values() if r["category"] == "success"}
        if halt:  # storescu's default: the files before the failure are sent, none after it
            assert json.loads(report.read_text())["summary"]["halted"] is True
            assert len(delivered) == 12 and classes == {CT}
            assert sum(r["category"] == "not-sent" for r in records.values()) == len(files) - 13
        else:
            assert len(delivered) == len(files) - 1 and classes == {CT, MR}


@pytest.mark.needs_dcmtk
def test_refusing_peer_inline_as_with_workers(corpus: tuple[Path, list[dict]], tmp_path: Path) -> None:
    """storescp --refuse (A-ASSOCIATE-RJ), and a port nobody listens on: the inline run's report and exit
    code are those of the run with worker processes."""
    root, files = corpus
    results = {}
    with DcmtkStorescp(["--refuse"]) as scp:
        for peer_port, peer in ((scp.port, "refuse"), (free_port(), "closed")):
            for jobs in ("auto", "2"):
                report = tmp_path / f"{peer}-{jobs}.json"
                args = [] if jobs == "auto" else ["-j", jobs]
                proc = run_send(*args, "--retries", "1", "--retry-wait", "0.05", "+sd", "+r",
                                "--report", str(report), "127.0.0.1", str(peer_port), str(root))
                assert (INLINE in proc.stderr) == (jobs == "auto"), proc.stderr[-3000:]
                records = _records(report)
                assert len(records) == len(files)
                results[peer, jobs] = (proc.returncode, sorted((n, r["category"]) for n, r in records.items()))
    for peer in ("refuse", "closed"):
        assert results[peer, "auto"] == results[peer, "2"], peer
        assert results[peer, "auto"][0] not in (EXIT_OK, EXIT_INTERRUPTED)
        assert not any(category == "success" for _name, category in results[peer, "auto"][1])


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_inline(corpus: tuple[Path, list[dict]], tmp_path: Path, signals: int) -> None:
    """SIGINT during an inline run: the C-STORE in flight is answered, the association released, every
    file is in the report (answered ones as success, the rest not sent), exit 130. A second SIGINT gives
    up the file in flight (not sent; the association is aborted): still every file in the report, and
    exactly the stored ones as success."""
    root, files = corpus

    holding = threading.Event()

    def slow(n: int, uid: str) -> int:  # the third file's answer is held 0.5 s: the signals come then
        if n == 3:
            holding.set()
            time.sleep(0.5)
        return 0

    report = tmp_path / "interrupted.json"
    with ScriptedSCP(slow) as scp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchstore", "send", "-v", "-nh", "+sd", "+r", "--report", str(report),
             "127.0.0.1", str(scp.port), str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=batchstore_env(),
        )  # fmt: skip
        assert holding.wait(30)
        proc.send_signal(signal.SIGINT)
        if signals == 2:
            time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        stored = set(scp.stored)
        associations = scp.associations
    assert proc.returncode == EXIT_INTERRUPTED, err[-3000:]
    assert INLINE in err
    records = _records(report)
    assert len(records) == len(files)
    delivered = {r["sop_instance_uid"] for r in records.values() if r["category"] == "success"}
    assert delivered == stored  # answered files are reported as such; none is lost
    if signals == 1:  # the file in flight (the third) was answered, then the run stopped
        assert len(delivered) == 3
        assert "interrupted: finishing the C-STOREs in flight" in err
    else:  # the file in flight was given up
        assert len(delivered) == 2
    assert {r["category"] for r in records.values()} == {"success", "not-sent"}
    assert associations == 1


def test_send_path_imports() -> None:
    """What `batchstore send` loads before its first C-STORE: not the modules of other commands and
    options (multiprocessing only when a run has worker processes; json and csv only with --report)."""
    code = (
        "import sys; from batchstore.cli import main; import batchstore.cli.send, batchstore.api; "
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                env=batchstore_env()).stdout.split())  # fmt: skip
    heavy = {"multiprocessing", "pickle", "json", "csv", "difflib", "sqlite3", "pydicom", "pynetdicom",
             "numpy", "psutil", "tqdm", "dask", "ssl"}  # fmt: skip
    assert heavy & loaded == set()
    assert {"batchstore.sender.inline", "batchstore.sender.coordinator", "click"} <= loaded


#: The dataclasses created while the send path is imported: `Report` only (a public class that
#: `JournalReport` extends as a dataclass). Each costs ~0.6 ms of every send's start-up; the others are
#: named tuples or `dicom.records` classes (docs/design.md, "Small runs").
SEND_PATH_DATACLASSES = ["batchstore.sender.report.Report"]


def test_send_path_creates_few_dataclasses() -> None:
    """Every dataclass created at import, batchstore's or a library's, counted as it is made."""
    code = (
        "import dataclasses; made = []; process = dataclasses._process_class\n"
        "def counted(cls, *args, **kwargs):\n"
        "    made.append(f'{cls.__module__}.{cls.__qualname__}'); return process(cls, *args, **kwargs)\n"
        "dataclasses._process_class = counted\n"
        "from batchstore.cli import main; import batchstore.cli.send, batchstore.api; print(' '.join(made))"
    )
    made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=batchstore_env()).stdout.split()  # fmt: skip
    assert sorted(made) == SEND_PATH_DATACLASSES
