"""The one harness of tests and benchmarks: real DICOM peers, batchstore's receiver, corpora.

Peers: DCMTK storescp/storescu/echoscu/dcmsend, Orthanc, and ``batchstore receive`` as a subprocess
(`BatchstoreReceiver`). Importable from pytest (``from peers import ...`` inside ``tests/``) and from the
perf scripts (``sys.path.insert(0, "<repo>/tests")``, see ``perf/common.py``); no pytest import here.

Where the peers live comes from the environment, so a run can hide them (point a variable at an empty
directory) and check that every test needing one is marked:

- ``BATCHSTORE_DCMTK_BIN_DIR``: DCMTK's tools (default ``/usr/bin``);
- ``BATCHSTORE_DCMTK_CONFIG_DIR``: DCMTK's ``storescu.cfg``/``storescp.cfg`` (default ``/etc/dcmtk``);
- ``BATCHSTORE_ORTHANC_BIN``: the Orthanc server (default ``/usr/sbin/Orthanc``);
- ``BATCHSTORE_REQUIRE_PEERS=1``: a missing peer fails the tests marked ``needs_dcmtk``/``needs_orthanc``
  instead of skipping them (``tests/conftest.py``; ``.ci/run`` sets it).

DCMTK binaries are always called by absolute path because pynetdicom's own
``storescu``/``storescp`` apps shadow them in PATH (pyenv shims).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchstore.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_LOSSLESS_SV1,
    RLE_LOSSLESS,
)

__all__ = [
    "BatchstoreReceiver",
    "Corpus",
    "DaskCluster",
    "DCMTK_BIN_DIR",
    "DCMTK_CONFIG_DIR",
    "DCMTK_DCMSEND",
    "DCMTK_ECHOSCU",
    "DCMTK_STORESCP",
    "DCMTK_STORESCP_CFG",
    "DCMTK_STORESCU",
    "DCMTK_STORESCU_CFG",
    "DcmtkStorescp",
    "ORTHANC_BIN",
    "Orthanc",
    "REQUIRE_PEERS_ENV",
    "STORESCU_TS_OPTION",
    "batchstore_env",
    "cached_corpus",
    "count_files",
    "dataset_bytes",
    "dcmtk_env",
    "dcmtk_send",
    "free_port",
    "gen_corpus_module",
    "make_corpus",
    "missing_peer",
    "peak_concurrency",
    "peers_required",
    "received_index",
    "sop_instance_uid_of",
    "wait_count",
    "wait_listening",
]

DCMTK_BIN_DIR = Path(os.environ.get("BATCHSTORE_DCMTK_BIN_DIR") or "/usr/bin")
DCMTK_CONFIG_DIR = Path(os.environ.get("BATCHSTORE_DCMTK_CONFIG_DIR") or "/etc/dcmtk")
DCMTK_STORESCP = str(DCMTK_BIN_DIR / "storescp")
DCMTK_STORESCU = str(DCMTK_BIN_DIR / "storescu")
DCMTK_ECHOSCU = str(DCMTK_BIN_DIR / "echoscu")
DCMTK_DCMSEND = str(DCMTK_BIN_DIR / "dcmsend")
DCMTK_STORESCU_CFG = str(DCMTK_CONFIG_DIR / "storescu.cfg")
DCMTK_STORESCP_CFG = str(DCMTK_CONFIG_DIR / "storescp.cfg")
ORTHANC_BIN = os.environ.get("BATCHSTORE_ORTHANC_BIN") or "/usr/sbin/Orthanc"
CHROMIUM_BIN = "/usr/bin/chromium"  # the HTML report of `batchstore load`, rendered headless
CHROMEDRIVER_BIN = "/usr/bin/chromedriver"

#: With this set to 1 a test whose peer is missing fails instead of skipping (see `missing_peer`).
REQUIRE_PEERS_ENV = "BATCHSTORE_REQUIRE_PEERS"

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent

#: What each peer marker needs: (path, is a program). The tests' markers are ``needs_<peer>``.
PEER_FILES: dict[str, tuple[tuple[str, bool], ...]] = {
    "dcmtk": (
        (DCMTK_STORESCP, True),
        (DCMTK_STORESCU, True),
        (DCMTK_ECHOSCU, True),
        (DCMTK_DCMSEND, True),
        (DCMTK_STORESCU_CFG, False),
        (DCMTK_STORESCP_CFG, False),
    ),
    "orthanc": ((ORTHANC_BIN, True),),
    "chromium": ((CHROMIUM_BIN, True), (CHROMEDRIVER_BIN, True)),
}
PEER_NAMES = {"dcmtk": "DCMTK", "orthanc": "Orthanc", "dask": "Dask distributed", "chromium": "Chromium (chromium, chromium-driver)"}
#: Peers that are Python modules (``send --cluster``'s engine): peer -> the module it needs.
PEER_MODULES: dict[str, str] = {"dask": os.environ.get("BATCHSTORE_DASK_MODULE") or "distributed"}


def missing_peer(peer: str) -> str | None:
    """Why `peer` ("dcmtk" or "orthanc") cannot be used here ("needs DCMTK: /usr/bin/storescp not
    installed"), or None when everything it needs is in place."""
    if peer in PEER_MODULES:
        module = PEER_MODULES[peer]
        if importlib.util.find_spec(module) is None:
            return f"needs {PEER_NAMES[peer]}: module {module} not installed (pip install 'batchstore[cluster]')"
        return None
    for path, program in PEER_FILES[peer]:
        if not (os.access(path, os.X_OK) and os.path.isfile(path) if program else os.path.isfile(path)):
            return f"needs {PEER_NAMES[peer]}: {path} not installed"
    return None


def peers_required() -> bool:
    """True when ``BATCHSTORE_REQUIRE_PEERS=1``: a missing peer is a failure, not a skip."""
    return os.environ.get(REQUIRE_PEERS_ENV, "").strip() == "1"


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that is currently free on 127.0.0.1 (racy by nature, but fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def dcmtk_env(nodelay: bool = True, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a DCMTK tool; Debian's DCMTK only disables Nagle when TCP_NODELAY=1."""
    env = dict(os.environ if base is None else base)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    else:
        env.pop("TCP_NODELAY", None)
    return env


def _port_listening(port: int, pid: int | None = None) -> bool:
    """True when something LISTENs on ``port`` (checked without connecting, so no log noise)."""
    try:
        import psutil

        if pid is not None:
            proc = psutil.Process(pid)
            conns = (
                proc.net_connections("tcp") if hasattr(proc, "net_connections") else proc.connections("tcp")
            )
        else:
            conns = psutil.net_connections("tcp")
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)
    except Exception:  # psutil missing or access denied: fall back to a connect probe
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return True
        except OSError:
            return False


def wait_listening(
    port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None, what: str = "server"
) -> None:
    """Poll until ``port`` is listening; raise if ``proc`` dies or the timeout expires."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {port}")
        if _port_listening(port, proc.pid if proc is not None else None):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not listening on port {port} after {timeout}s")


def _stop_group(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM the process group led by ``proc`` (incl. forked children), SIGKILL if needed."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # whatever is left in the group (e.g. storescp --fork children)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def peak_concurrency(log: str, start: str, ends: Sequence[str]) -> int:
    """The most intervals open at once in `log`: each `start` opens one, each of `ends` closes one,
    counted in the order the lines appear (a peer's own log of its associations)."""
    pattern = re.compile("|".join(re.escape(m) for m in (start, *ends)))
    open_now = peak = 0
    for match in pattern.finditer(log):
        open_now += 1 if match.group() == start else -1
        peak = max(peak, open_now)
    return peak


def count_files(directory: str | os.PathLike[str]) -> int:
    """Files below ``directory`` under a final name (hidden temporary names are not counted)."""
    total = 0
    for _root, _dirs, names in os.walk(directory):
        total += sum(1 for name in names if not name.startswith("."))
    return total


def wait_count(directory: str | os.PathLike[str], expected: int, timeout: float = 30.0) -> int:
    """Wait until ``expected`` files are in ``directory`` (or the timeout); the final count."""
    return _wait_value(lambda: count_files(directory), expected, timeout, 0.05)


def _wait_value(current: Callable[[], int], expected: int, timeout: float, interval: float) -> int:
    """Poll ``current()`` until it reaches ``expected`` or the timeout expires; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = current()
        if value >= expected or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --------------------------------------------------------------------------
# Part 10 file helpers
# --------------------------------------------------------------------------


def _meta_end(path: str | os.PathLike[str]) -> int:
    """Offset of the first byte after the file meta group of a Part 10 file, as pydicom reads the group.

    Raises ValueError for a file without the DICM marker and for a file meta group pydicom reads only
    leniently: no valid Transfer Syntax UID, or a group length (0002,0000) that disagrees with the group.
    """
    import warnings

    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import UID

    with open(path, "rb") as fp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about invalid values; judged below
        try:
            read_preamble(fp, False)
        except InvalidDicomError as exc:
            raise ValueError(f"not a DICOM Part 10 file: {exc}") from None
        # what pydicom.filereader.read_file_meta_info does, keeping the file position it ends at
        meta = _read_file_meta_info(fp)
        end = fp.tell()
        syntax = meta.get("TransferSyntaxUID")
        if not syntax or not UID(str(syntax)).is_valid:
            raise ValueError(f"file meta group is truncated or damaged (Transfer Syntax UID {syntax!r})")
        group_length = meta.get("FileMetaInformationGroupLength")
        if group_length is not None and 132 + 12 + int(group_length) != end:
            raise ValueError(f"file meta group length {group_length} disagrees with the group")
    return end


def dataset_bytes(path: str | os.PathLike[str]) -> bytes:
    """The encoded data set of a Part 10 file: everything after its (0002,xxxx) file meta group."""
    end = _meta_end(path)
    with open(path, "rb") as fp:
        fp.seek(end)
        return fp.read()


def _read_meta(path: str | os.PathLike[str]):
    from pydicom.filereader import read_file_meta_info

    return read_file_meta_info(path)


def sop_instance_uid_of(path: str | os.PathLike[str]) -> str:
    """SOP Instance UID of a file (file meta MediaStorageSOPInstanceUID, else the data set)."""
    try:
        uid = _read_meta(path).get("MediaStorageSOPInstanceUID")
        if uid:
            return str(uid)
    except Exception:
        pass
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"], force=True)
    return str(ds.SOPInstanceUID)


def received_index(out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """SOP Instance UID -> path of every Part 10 file below ``out_dir`` (reads the file meta only)."""
    index: dict[str, str] = {}
    for root, _dirs, names in os.walk(out_dir):
        for name in sorted(names):
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as fh:
                    head = fh.read(132)
                if len(head) < 132 or head[128:] != b"DICM":
                    continue
                uid = _read_meta(path).get("MediaStorageSOPInstanceUID")
            except Exception:
                continue
            if uid:
                index[str(uid)] = path
    return index


# --------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------


def gen_corpus_module():
    """``scripts/gen_corpus.py`` imported by path (``scripts`` is not a package)."""
    import importlib.util
    import sys

    mod = sys.modules.get("gen_corpus")
    if mod is None:
        spec = importlib.util.spec_from_file_location("gen_corpus", REPO_ROOT / "scripts" / "gen_corpus.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["gen_corpus"] = mod
        spec.loader.exec_module(mod)
    return mod


@dataclass
class Corpus:
    """A generated corpus: its root directory and the generator's manifest."""

    root: Path
    manifest: dict[str, Any]

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.manifest["files"]

    @property
    def junk(self) -> list[dict[str, Any]]:
        return self.manifest["junk"]

    def path(self, rec: dict[str, Any] | str) -> Path:
        """Absolute path of a manifest record (or of a relative path)."""
        return self.root / (rec if isinstance(rec, str) else rec["path"])

    def paths(self, records: Iterable[dict[str, Any]] | None = None) -> list[Path]:
        return [self.path(r) for r in (self.files if records is None else records)]

    def uids(self, records: Iterable[dict[str, Any]] | None = None) -> set[str]:
        return {r["sop_instance_uid"] for r in (self.files if records is None else records)}

    def by_uid(self) -> dict[str, dict[str, Any]]:
        return {r["sop_instance_uid"]: r for r in self.files}


def make_corpus(out_dir: str | os.PathLike[str], count: int, **kwargs: Any) -> Corpus:
    """Run ``gen_corpus.generate(out_dir, count, **kwargs)`` and wrap the result."""
    manifest = gen_corpus_module().generate(out_dir, count, **kwargs)
    return Corpus(Path(out_dir), manifest)


def cached_corpus(work: str | os.PathLike[str], name: str, count: int, size: int, seed: int = 7) -> Path:
    """A uniform CT corpus of ``count`` files of ~``size`` bytes under ``work``, generated once per directory."""
    corpus = Path(work) / f"corpus-{name}-{count}x{size}-s{seed}"
    done = Path(work) / f".{corpus.name}.complete"  # outside: storescu +sd would try to send it
    if not done.exists():
        make_corpus(corpus, count, seed=seed, profile="uniform", size=size)
        done.write_text("ok\n")
    return corpus


# --------------------------------------------------------------------------
# batchstore receive
# --------------------------------------------------------------------------


def batchstore_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a batchstore subprocess: this checkout first on the import path."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("BATCHSTORE_WORKERS", None)
    return env


_CHILD_PID = re.compile(r"Association Received \S+: \S+ -> \S+ \(pid (\d+)\)")


class BatchstoreReceiver:
    """``python -m batchstore receive [-v] [--fork] --host 127.0.0.1 --port-file F -od OUT [extra] 0``.

    A context manager; ``port`` is the port the receiver chose (``--port-file``). ``fork`` adds
    ``--fork``, ``verbose`` adds ``-v`` (one "Association Received ... (pid N)" line per association),
    ``port_arg=False`` leaves out the port. The log (stdout and stderr) and the port file go to
    ``work_dir``, kept afterwards, or by default to a private temporary directory (``_tmp``) removed on
    leaving the ``with`` block. Leaving the block stops the receiver with SIGTERM (``graceful``) or at once
    with SIGKILL; the whole process group goes, association children included.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
        *,
        fork: bool = True,
        verbose: bool = False,
        port_arg: bool = True,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        graceful: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.fork = fork
        self.verbose = verbose
        self.port_arg = port_arg
        self.env = env
        self.cwd = cwd
        self.graceful = graceful
        self._tmp = tempfile.mkdtemp(prefix="bs-recv-") if work_dir is None else None
        base = Path(work_dir if work_dir is not None else self._tmp)  # type: ignore[arg-type]
        stamp = time.monotonic_ns()
        self.port_file = base / f"port-{stamp}"
        self.log_path = base / f"receive-{stamp}.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "batchstore", "receive"]
        if self.verbose:
            cmd.append("-v")
        if self.fork:
            cmd.append("--fork")
        cmd += ["--host", LOOPBACK, "--port-file", str(self.port_file), "-od", str(self.out_dir)]
        return cmd + self.extra_args + (["0"] if self.port_arg else [])

    def start(self) -> BatchstoreReceiver:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=batchstore_env(self.env),
                start_new_session=True,  # own process group: killpg reaches the association children
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                text = self.port_file.read_text()
            except FileNotFoundError:
                text = ""
            if text.endswith("\n"):
                self.port = int(text)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"batchstore receive exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"batchstore receive did not start in {self.start_timeout}s:\n{self.log()[-3000:]}"
                )
            time.sleep(0.02)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def child_pids(self) -> list[int]:
        """The pids logged on "Association Received" lines (``verbose``), in order."""
        return [int(pid) for pid in _CHILD_PID.findall(self.log())]

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` to the server and wait for it; return its exit code. Whatever is left is killed."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the receiver's process group (children included) and reap the receiver."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> BatchstoreReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            if self.graceful and self.proc is not None:
                self.stop()
            else:
                self.kill()
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# Dask distributed (send --cluster)
# --------------------------------------------------------------------------


class DaskCluster:
    """A ``dask scheduler`` and `workers` ``dask worker`` processes (one thread each, with their nanny, as
    ``dask worker`` runs by default) on loopback, as a context manager; this checkout is on the workers'
    import path. ``address`` is the scheduler's; `worker_pids` the Dask worker processes (the nannies'
    children), which a test may kill: the nanny starts another."""

    def __init__(self, workers: int = 2, start_timeout: float = 60.0) -> None:
        self.port = free_port()
        self.address = f"tcp://{LOOPBACK}:{self.port}"
        self.workers = workers
        self.start_timeout = start_timeout
        self._tmp = tempfile.mkdtemp(prefix="dask-")
        self.procs: list[subprocess.Popen] = []

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(Path(self._tmp) / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        proc = subprocess.Popen(
            [sys.executable, "-m", "dask", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=batchstore_env(),
            cwd=self._tmp,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def start(self) -> DaskCluster:
        try:
            scheduler = self._start(
                "scheduler", ["scheduler", "--host", LOOPBACK, "--port", str(self.port), "--no-dashboard"]
            )
            wait_listening(self.port, self.start_timeout, scheduler, "dask scheduler")
            for n in range(self.workers):
                self._start(
                    f"worker{n}",
                    ["worker", self.address, "--host", LOOPBACK, "--nthreads", "1", "--nworkers", "1",
                     "--no-dashboard", "--name", f"w{n}"],
                )  # fmt: skip
            _wait_value(lambda: len(self.worker_pids()), self.workers, self.start_timeout, 0.1)
            _wait_value(self._registered, self.workers, self.start_timeout, 0.2)
        except Exception:
            raise RuntimeError(f"dask cluster failed to start: {self.log()}") from None
        return self

    def _registered(self) -> int:
        return self.log().count("Register worker addr")

    def worker_pids(self) -> list[int]:
        """The Dask worker processes (children of the ``dask worker`` nannies), alive now."""
        import psutil

        pids: list[int] = []
        for proc in self.procs[1:]:
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    if "resource_tracker" not in " ".join(child.cmdline()):  # multiprocessing's helper
                        pids.append(child.pid)
            except psutil.NoSuchProcess:
                pass
        return pids

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(Path(self._tmp).glob("*.log")))

    def close(self) -> None:
        for proc in reversed(self.procs):
            _stop_group(proc)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> DaskCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# DCMTK
# --------------------------------------------------------------------------


class DcmtkStorescp:
    """``/usr/bin/storescp`` on a free port, as a context manager.

    storescp (DCMTK 3.6.7) has no bind-address option and listens on all
    interfaces; there is no way around that short of a network namespace.

    ``extra_args`` go before the port, e.g. ``["--fork", "+xa", "+B"]``.
    ``-od`` defaults to a fresh temporary directory unless given in
    ``extra_args`` or as ``out_dir``. ``verbose`` adds ``-v`` so the log has
    one "Association Received" line per association (``-d`` for debug).

    Leaving the ``with`` block (or ``close()``) stops storescp and deletes its
    private temporary directory: the log and, if no ``out_dir``/``-od`` was
    given, the received files. ``stop()`` alone keeps them.
    """

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        out_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        nodelay: bool = True,
        verbose: bool = True,
        debug: bool = False,
        aet: str | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.extra_args = list(extra_args)
        self.port = port or free_port()
        self.nodelay = nodelay
        self.verbose = verbose
        self.debug = debug
        self.aet = aet
        self.start_timeout = start_timeout
        self._tmp = tempfile.mkdtemp(prefix="storescp-")
        if "-od" in self.extra_args or "--output-directory" in self.extra_args:
            flag = "-od" if "-od" in self.extra_args else "--output-directory"
            self.out_dir = Path(self.extra_args[self.extra_args.index(flag) + 1])
        else:
            self.out_dir = Path(out_dir) if out_dir is not None else Path(self._tmp) / "out"
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.extra_args += ["-od", str(self.out_dir)]
        self.log_path = Path(self._tmp) / "storescp.log"
        self.proc: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        cmd = [DCMTK_STORESCP]
        if self.debug:
            cmd.append("-d")
        elif self.verbose:
            cmd.append("-v")
        if self.aet:
            cmd += ["-aet", self.aet]
        return cmd + self.extra_args + [str(self.port)]

    def start(self) -> DcmtkStorescp:
        # append mode: with --fork every child writes to the same log
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dcmtk_env(self.nodelay),
                start_new_session=True,  # own process group: killpg reaches --fork children
            )
        try:
            wait_listening(self.port, self.start_timeout, self.proc, "storescp")
        except Exception:
            self.stop()
            raise RuntimeError(f"storescp failed to start: {self.log()}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)

    def close(self) -> None:
        """Stop and delete the temporary directory (log and default output directory)."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> DcmtkStorescp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def association_count(self) -> int:
        """Number of "Association Received" lines logged so far (needs verbose or debug)."""
        return self.log().count("Association Received")

    def peak_associations(self) -> int:
        """The most associations storescp had open at once, from its own log (needs verbose or debug).

        With ``--fork`` every child appends to the one log, so the order of its "Association Received"
        and "Association Release"/"Association Aborted" lines is the order of the events.
        """
        return peak_concurrency(
            self.log(), "Association Received", ("Association Release", "Association Aborted")
        )

    def received(self) -> dict[str, str]:
        """SOP Instance UID -> path for every file written to the output directory."""
        return received_index(self.out_dir)

    def wait_files(self, n: int, timeout: float = 30.0) -> dict[str, str]:
        """Wait until at least ``n`` DICOM files are in the output directory; return the index."""
        index: dict[str, str] = {}

        def count() -> int:
            index.clear()
            index.update(self.received())
            return len(index)

        _wait_value(count, n, timeout, 0.1)
        return index


#: storescu option that proposes a transfer syntax first/only, so a file goes out in its own encoding.
STORESCU_TS_OPTION = {
    IMPLICIT_VR_LE: "-xi",
    EXPLICIT_VR_LE: "-xe",
    EXPLICIT_VR_BE: "-xb",
    RLE_LOSSLESS: "-xr",
    DEFLATED_EXPLICIT_VR_LE: "-xd",
    JPEG_LOSSLESS_SV1: "-xs",
}


def dcmtk_send(
    paths: Iterable[str | os.PathLike[str]],
    port: int,
    extra_args: Sequence[str] = (),
    *,
    host: str = LOOPBACK,
    nodelay: bool = True,
    aet: str | None = None,
    called_aet: str | None = None,
    timeout: float = 300.0,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``/usr/bin/storescu [extra_args] host port paths...`` and return the CompletedProcess.

    For directories pass ``["+sd", "+r"]`` in ``extra_args``. Output is captured as text.
    """
    cmd = [DCMTK_STORESCU]
    if aet:
        cmd += ["-aet", aet]
    if called_aet:
        cmd += ["-aec", called_aet]
    cmd += list(extra_args) + [host, str(port)] + [str(p) for p in paths]
    return subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        env=dcmtk_env(nodelay),
        timeout=timeout,
        check=check,
    )


# --------------------------------------------------------------------------
# Orthanc
# --------------------------------------------------------------------------


class Orthanc:
    """``/usr/sbin/Orthanc`` with a throw-away config, storage and index, as a context manager.

    Accepts any storage SOP class (UnknownSopClassAccepted) and every transfer
    syntax Orthanc 1.10 knows, does not check the called AE title, allows
    C-STORE from any calling AE, and runs ``dicom_threads`` DICOM worker
    threads (default 4). HTTP answers on 127.0.0.1 only (RemoteAccessAllowed
    false; the socket itself, like the DICOM port, binds all interfaces).
    """

    def __init__(
        self,
        *,
        aet: str = "ORTHANC",
        dicom_port: int | None = None,
        http_port: int | None = None,
        dicom_threads: int = 4,
        extra_config: dict[str, Any] | None = None,
        start_timeout: float = 30.0,
        verbose: bool = False,
        nodelay: bool = True,
    ) -> None:
        self.aet = aet
        self.nodelay = nodelay
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        self.start_timeout = start_timeout
        self.verbose = verbose
        self.tmp = Path(tempfile.mkdtemp(prefix="orthanc-"))
        self.storage_dir = self.tmp / "storage"
        self.config_path = self.tmp / "orthanc.json"
        self.log_path = self.tmp / "orthanc.log"
        self.config: dict[str, Any] = {
            "Name": "batchstore-test",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "HttpThreadsCount": 8,
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "UnknownSopClassAccepted": True,
            "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
            "DeflatedTransferSyntaxAccepted": True,
            "JpegTransferSyntaxAccepted": True,
            "Jpeg2000TransferSyntaxAccepted": True,
            "JpegLosslessTransferSyntaxAccepted": True,
            "JpipTransferSyntaxAccepted": True,
            "Mpeg2TransferSyntaxAccepted": True,
            "RleTransferSyntaxAccepted": True,
            "Mpeg4TransferSyntaxAccepted": True,
            "H265TransferSyntaxAccepted": True,
            "DicomThreadsCount": dicom_threads,
            "DicomScpTimeout": 30,
            "MaximumPduLength": 131072,
            "OverwriteInstances": False,
            "SaveJobs": False,
            "MetricsEnabled": True,
            "StableAge": 3600,
            "DeidentifyLogs": False,
        }
        if extra_config:
            self.config.update(extra_config)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def start(self) -> Orthanc:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        cmd = [ORTHANC_BIN, str(self.config_path)]
        if self.verbose:
            cmd.insert(1, "--verbose")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                env=dcmtk_env(self.nodelay),  # Orthanc uses Debian's DCMTK: Nagle on without it
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                self.get("/system", timeout=1)
                break
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"Orthanc REST API not up after {self.start_timeout}s") from None
                time.sleep(0.1)
        wait_listening(self.dicom_port, self.start_timeout, self.proc, "Orthanc DICOM server")
        return self

    def stop(self, graceful: bool = True) -> None:
        """Stop Orthanc (a graceful shutdown takes ~3.5 s; ``graceful=False`` SIGKILLs at once)."""
        if self.proc is not None:
            if not graceful and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            _stop_group(self.proc, timeout=15)

    def close(self, graceful: bool = False) -> None:
        """Stop (by default without the slow graceful shutdown) and delete the temporary directory."""
        self.stop(graceful)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ---- REST -----------------------------------------------------------

    def get(self, path: str, timeout: float = 30.0, **params: Any) -> Any:
        import requests

        r = requests.get(self.url + path, params=params or None, timeout=timeout)
        r.raise_for_status()
        return r.json()

    def system(self) -> dict[str, Any]:
        return self.get("/system")

    def statistics(self) -> dict[str, Any]:
        """GET /statistics (CountPatients/Studies/Series/Instances, TotalDiskSize, ...)."""
        return self.get("/statistics")

    def count_instances(self) -> int:
        return int(self.statistics()["CountInstances"])

    def instance_uids(self, page: int = 1000) -> set[str]:
        """SOP Instance UIDs of every stored instance (paged /instances?expand)."""
        uids: set[str] = set()
        since = 0
        while True:
            batch = self.get("/instances", expand="", since=since, limit=page)
            for inst in batch:
                uids.add(inst["MainDicomTags"]["SOPInstanceUID"])
            if len(batch) < page:
                return uids
            since += page

    def wait_instances(self, n: int, timeout: float = 30.0) -> int:
        """Wait until at least ``n`` instances are stored (Orthanc's /statistics); the final count."""
        return _wait_value(self.count_instances, n, timeout, 0.1)
