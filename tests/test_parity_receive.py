"""DCMTK parity of the receiving side (issue 18): storescp and ``batchstore receive`` run with the same command
line and the same input, and what a user sees is compared: the ``-xcr``/``-xcs`` commands run and their order,
the files ``+p`` writes, what an idle client receives; and on the sending side when storescu and
``batchstore send`` give up waiting for an association reply.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from peers import DCMTK_BIN_DIR, DcmtkStorescp, batchstore_env, dcmtk_send
from test_receive_helpers import Receiver, ct_dataset, wait_for, write_part10

pytestmark = pytest.mark.needs_dcmtk

STUDY_A = "1.2.826.0.1.3680043.9.7781.18.1"
STUDY_B = "1.2.826.0.1.3680043.9.7781.18.2"
UID = "1.2.826.0.1.3680043.9.7781.18.9"
DCMTK_DUMP = str(DCMTK_BIN_DIR / "dcmdump")


def two_studies(directory: Path) -> list[Path]:
    """Four files: two of study A, then two of study B."""
    studies = (STUDY_A, STUDY_A, STUDY_B, STUDY_B)
    return [write_part10(directory / f"f{i}.dcm", ct_dataset(f"{UID}.{i}", study=s)) for i, s in enumerate(studies)]


# --------------------------------------------------------------------------------------------------------
# -xcr / -xcs: what runs, with which values, in which order


def _normalised(log: Path, out: Path) -> list[str]:
    """The command log with the study directories (timestamps) numbered in order of appearance."""
    names: dict[str, str] = {}

    def number(match: re.Match[str]) -> str:
        return names.setdefault(match.group(0), f"OUT/STUDY{len(names) + 1}")

    pattern = re.compile(re.escape(str(out)) + r"/S_\d{8}_\d{9}")
    return [pattern.sub(number, line) for line in log.read_text().splitlines()]


def _lines(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_exec_on_reception_and_end_of_study_match_storescp(tmp_path: Path) -> None:
    """Same send into storescp and batchstore receive: the same command lines, in the same order. ``#f`` of
    ``-xcs`` stays ``#f`` (here quoted, so the shell prints it), and the end of study A runs after the
    ``-xcr`` command of study B's first file; study B ends by ``-tos``."""
    files = two_studies(tmp_path)
    logs = {}
    for name in ("dcmtk", "batchstore"):
        log = tmp_path / f"{name}.log"
        out = tmp_path / f"out-{name}"
        out.mkdir()
        args = [
            "-ss", "S", "-xs", "-tos", "1",
            "-xcr", f"echo R #p #f #a #c #r >> {log}",
            "-xcs", f"echo S #p '#f' #a #c #r >> {log}",
        ]  # fmt: skip
        if name == "dcmtk":
            with DcmtkStorescp(args, out_dir=out) as scp:
                assert dcmtk_send(files, scp.port).returncode == 0
                assert wait_for(lambda log=log: _lines(log) >= 6, 15)
        else:
            with Receiver(tmp_path, args, out=out) as rx:
                assert dcmtk_send(files, rx.port).returncode == 0
                assert wait_for(lambda log=log: _lines(log) >= 6, 15)
        time.sleep(0.3)  # nothing more comes
        logs[name] = _normalised(log, out)
    expected = [
        f"R OUT/STUDY1 CT.{UID}.0 STORESCU ANY-SCP localhost",
        f"R OUT/STUDY1 CT.{UID}.1 STORESCU ANY-SCP localhost",
        f"R OUT/STUDY2 CT.{UID}.2 STORESCU ANY-SCP localhost",
        "S OUT/STUDY1 #f STORESCU ANY-SCP localhost",
        f"R OUT/STUDY2 CT.{UID}.3 STORESCU ANY-SCP localhost",
        "S OUT/STUDY2 #f STORESCU ANY-SCP localhost",
    ]
    assert logs["dcmtk"] == expected, logs["dcmtk"]
    assert logs["batchstore"] == logs["dcmtk"]


# --------------------------------------------------------------------------------------------------------
# +p: file and item padding


def _dump(path: Path) -> tuple[int, list[str]]:
    """(size of the top-level padding element, the data set as dcmdump prints it without that element)."""
    text = subprocess.run(
        [DCMTK_DUMP, "+L", "-M", "-dc", str(path)], capture_output=True, text=True, check=True
    ).stdout
    lines = [line for line in text.splitlines() if line.startswith(("(", " "))]
    dataset = [line for line in lines if not line.startswith(("(0002,", "(fffc,fffc)"))]
    pad = [line for line in lines if line.startswith("(fffc,fffc)")]
    value = int(re.search(r"#\s*(\d+),", pad[0]).group(1)) + 12 if pad else 0  # type: ignore[union-attr]
    return value, dataset


def _meta_end(path: Path) -> int:
    data = path.read_bytes()
    return 132 + 12 + int.from_bytes(data[140:144], "little")


def _dcmtk_padded(length: int, multiple: int) -> int:
    """DCMTK's rule (DcmItem::computeGroupLengthAndPadding): the smallest padding element, header included,
    that makes the length a multiple; none if it already is one."""
    if length % multiple == 0:
        return length
    padding = multiple - length % multiple
    while padding < 12:
        padding += multiple
    return length + padding


@pytest.mark.parametrize("file_pad,item_pad", [("256", "16"), ("64", "0"), ("100", "10"), ("512", "8")])
def test_padding_matches_storescp(tmp_path: Path, file_pad: str, item_pad: str) -> None:
    """``+p f i``: the data sets are equal, item padding included; the file is padded by storescp's rule, so
    the sizes are equal except where batchstore's longer file meta (its Implementation Class UID) alone
    crosses a multiple of f."""
    files = [
        write_part10(tmp_path / f"f{rows}.dcm", ct_dataset(f"{UID}.{rows}", rows=rows)) for rows in (4, 7, 16, 33)
    ]
    args = ["+p", file_pad, item_pad]
    dcmtk_out, bs_out = tmp_path / "out-dcmtk", tmp_path / "out-batchstore"
    with DcmtkStorescp(args, out_dir=dcmtk_out) as scp:
        assert dcmtk_send(files, scp.port).returncode == 0
        scp.wait_files(len(files))
    with Receiver(tmp_path, args, out=bs_out) as rx:
        assert dcmtk_send(files, rx.port).returncode == 0
        assert wait_for(lambda: len(list(bs_out.iterdir())) == len(files), 15)
    multiple = int(file_pad)
    for theirs in sorted(dcmtk_out.iterdir()):
        ours = bs_out / theirs.name
        their_pad, their_dataset = _dump(theirs)
        our_pad, our_dataset = _dump(ours)
        assert our_dataset == their_dataset, theirs.name
        assert theirs.stat().st_size % multiple == 0 and ours.stat().st_size % multiple == 0
        unpadded = theirs.stat().st_size - their_pad + _meta_end(ours) - _meta_end(theirs)
        assert ours.stat().st_size == _dcmtk_padded(unpadded, multiple), theirs.name
        if _dcmtk_padded(unpadded, multiple) == _dcmtk_padded(theirs.stat().st_size - their_pad, multiple):
            assert ours.stat().st_size == theirs.stat().st_size, theirs.name


# --------------------------------------------------------------------------------------------------------
# -ta / -ts: an idle client, an SCP that never answers


def _silent_client(port: int) -> tuple[float, bytes]:
    """Connect, send nothing: (seconds until the SCP closed, what it sent before closing)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(40)
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(100):
            data += chunk
        return time.monotonic() - started, data


@pytest.mark.parametrize("args,ta", [(["-ta", "2"], 2.0), (["-ta", "2", "-ts", "4"], 2.0)])
def test_idle_client_is_closed_without_abort_as_storescp_does(
    tmp_path: Path, args: list[str], ta: float
) -> None:
    """A client that connects and says nothing: storescp and batchstore both close after -ta, no A-ABORT."""
    with DcmtkStorescp(args, out_dir=tmp_path / "out-dcmtk") as scp:
        their_time, theirs = _silent_client(scp.port)
    with Receiver(tmp_path, args, out=tmp_path / "out-batchstore") as rx:
        our_time, ours = _silent_client(rx.port)
        assert wait_for(lambda: "no complete A-ASSOCIATE-RQ" in rx.log(), 5)
    assert theirs == ours == b""
    assert ta - 0.3 < their_time < ta + 1.5
    assert ta - 0.3 < our_time < ta + 1.5


def test_idle_client_deadline_is_the_shorter_of_ta_and_ts(tmp_path: Path) -> None:
    """Deliberate difference: storescp waits -ta for the A-ASSOCIATE-RQ whatever -ts says; batchstore stops at
    the shorter of -ta and -ts (a peer must not hold a slot longer than the socket timeout). Both close
    without A-ABORT."""
    args = ["-ta", "3", "-ts", "1"]
    with DcmtkStorescp(args, out_dir=tmp_path / "out-dcmtk") as scp:
        their_time, theirs = _silent_client(scp.port)
    with Receiver(tmp_path, args, out=tmp_path / "out-batchstore") as rx:
        our_time, ours = _silent_client(rx.port)
    assert theirs == ours == b""
    assert 2.7 < their_time < 4.5
    assert 0.7 < our_time < 2.5


def test_association_reply_wait_is_ta_as_storescu(tmp_path: Path) -> None:
    """An SCP that accepts the connection and never answers the A-ASSOCIATE-RQ: with ``-ts 1 -ta 3`` storescu
    and batchstore send both give up after -ta (3 s), not -ts."""
    path = write_part10(tmp_path / "f.dcm", ct_dataset(f"{UID}.1"))
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    args = ["-ts", "1", "-ta", "3"]
    try:
        started = time.monotonic()
        theirs = dcmtk_send([path], port, args, timeout=60)
        their_time = time.monotonic() - started
        started = time.monotonic()
        ours = subprocess.run(
            [sys.executable, "-m", "batchstore", "send", "-j", "1", "--retries", "0", "--no-progress",
             *args, "127.0.0.1", str(port), str(path)],
            capture_output=True, text=True, env=batchstore_env(), timeout=60,
        )  # fmt: skip
        our_time = time.monotonic() - started
    finally:
        server.close()
        for conn in held:
            conn.close()
    assert theirs.returncode != 0 and "timeout" in theirs.stderr.lower(), theirs.stderr
    assert ours.returncode != 0, ours.stderr
    assert 2.7 < their_time < 5
    assert 2.7 < our_time < 6


def test_verbose_pc_needs_verbose_mode_as_in_storescp(tmp_path: Path) -> None:
    """``+v`` alone: storescp refuses it before listening; so does batchstore receive (usage error)."""
    from peers import free_port

    port = str(free_port())
    dcmtk = subprocess.run([str(DCMTK_BIN_DIR / "storescp"), "+v", port], capture_output=True, text=True, timeout=30)
    ours = subprocess.run([sys.executable, "-m", "batchstore", "receive", "+v", "-od", str(tmp_path), port],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert dcmtk.returncode != 0 and "verbose-pc only allowed with verbose mode" in dcmtk.stderr + dcmtk.stdout
    assert ours.returncode == 2 and "verbose-pc only allowed with verbose mode" in ours.stderr
