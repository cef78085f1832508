"""The peer markers: a test marked ``needs_dcmtk``/``needs_orthanc`` skips when its peer is missing, and fails
instead with ``BATCHSTORE_REQUIRE_PEERS=1``. Checked by running pytest on a generated test file, with the
peers "moved" to an empty directory (``BATCHSTORE_DCMTK_BIN_DIR``, ``BATCHSTORE_ORTHANC_BIN``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

PROBE = """
import pytest


@pytest.mark.needs_dcmtk
def test_needs_dcmtk():
    pass


@pytest.mark.needs_orthanc
def test_needs_orthanc():
    pass


@pytest.mark.needs_dask
def test_needs_dask():
    pass


def test_needs_nothing():
    pass
"""

UNMARKED_FIXTURE = """
def test_storescp_without_marker(storescp):
    pass
"""


def run_probe(tmp_path: Path, source: str, *, require: bool) -> tuple[dict[str, int], str]:
    """Run pytest (with the project's conftest and settings) on `source`; the summary counts and output."""
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    shutil.copy(TESTS / "conftest.py", probe / "conftest.py")
    (probe / "test_probe.py").write_text(source)
    empty = tmp_path / "no-peers"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSTORE_")}
    env.update(
        BATCHSTORE_DCMTK_BIN_DIR=str(empty),
        BATCHSTORE_DCMTK_CONFIG_DIR=str(empty),
        BATCHSTORE_ORTHANC_BIN=str(empty / "Orthanc"),
        BATCHSTORE_DASK_MODULE="batchstore_no_such_module",
        PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]),
    )
    if require:
        env["BATCHSTORE_REQUIRE_PEERS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(REPO / "pyproject.toml"),
         "--rootdir", str(probe), "--confcutdir", str(probe), str(probe)],
        capture_output=True, text=True, env=env, cwd=probe, timeout=120,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    summary = output.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|skipped|failed|errors?)\b", summary)}
    return counts, output


def test_missing_peer_skips_without_require_peers(tmp_path: Path) -> None:
    counts, output = run_probe(tmp_path, PROBE, require=False)
    assert counts == {"passed": 1, "skipped": 3}, output
    assert f"needs DCMTK: {tmp_path / 'no-peers' / 'storescp'} not installed" in output, output
    assert f"needs Orthanc: {tmp_path / 'no-peers' / 'Orthanc'} not installed" in output, output


def test_missing_peer_fails_with_require_peers(tmp_path: Path) -> None:
    counts, output = run_probe(tmp_path, PROBE, require=True)
    assert counts == {"passed": 1, "failed": 3}, output
    assert "needs Dask distributed: module batchstore_no_such_module not installed" in output, output
    assert f"needs DCMTK: {tmp_path / 'no-peers' / 'storescp'} not installed" in output, output
    assert "FAILED" in output and "test_needs_dcmtk" in output, output


@pytest.mark.parametrize("require", [False, True], ids=["default", "require-peers"])
def test_peer_fixture_without_its_marker_fails(tmp_path: Path, require: bool) -> None:
    """A test that starts a peer through a fixture but does not carry the marker is a marking mistake."""
    counts, output = run_probe(tmp_path, UNMARKED_FIXTURE, require=require)
    assert counts == {"failed": 1}, output
    assert "uses the storescp fixture but is not marked needs_dcmtk" in output, output
