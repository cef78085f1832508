"""``batchstore receive``: the Storage SCP against real peers on loopback.

DCMTK's storescu/echoscu (absolute paths, ``TCP_NODELAY=1``) and a scripted SCU (`RawSCU`) talk to the
receiver run as ``python -m batchstore receive``; every assertion is about what a peer or the file system
sees: files and their bytes, responses, aborts, rejections, exit codes, log lines.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from peers import DCMTK_ECHOSCU, dataset_bytes, dcmtk_env, dcmtk_send, received_index
from test_receive_helpers import (
    ALL_UNCOMPRESSED,
    CT,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT,
    JPEG_BASELINE,
    REPO,
    VERIFICATION,
    RawSCU,
    Receiver,
    ct_dataset,
    encode,
    run_receive,
    stored_files,
    temp_files,
    wait_for,
    write_part10,
)

from batchstore.net import acse, dimse, errors, sockets
from batchstore.net import pdu as net

UID_ROOT = "1.2.826.0.1.3680043.9.7781"


def echoscu(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DCMTK_ECHOSCU, *args, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def big_dataset(uid: str, megabytes: int = 2) -> bytes:
    ds = ct_dataset(uid, rows=512)
    ds.PixelData = os.urandom(megabytes * 2**20)
    ds.Rows = ds.Columns = 1024
    return encode(ds)


# --------------------------------------------------------------------------------------------------------
# --fork with concurrent DCMTK senders


@pytest.mark.needs_dcmtk
def test_fork_three_concurrent_dcmtk_senders_store_900_identical_files(tmp_path: Path) -> None:
    sources = []
    for seed in (11, 12, 13):
        src = tmp_path / f"src{seed}"
        subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "gen_corpus.py"),
                str(src),
                "--count",
                "300",
                "--profile",
                "uniform",
                "--size",
                "1024",
                "--seed",
                str(seed),
            ],
            check=True,
            capture_output=True,
        )
        sources.append(src)
    with Receiver(tmp_path, ["--fork"]) as rx:
        results: list[subprocess.CompletedProcess[str]] = []

        def send(src: Path) -> None:
            results.append(dcmtk_send([src], rx.port, ["+sd", "+r"]))

        threads = [threading.Thread(target=send, args=(src,)) for src in sources]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r.returncode for r in results] == [0, 0, 0], [r.stderr[-2000:] for r in results]
        wait_for(lambda: rx.log().count("Association ended") >= 3)
        log = rx.log()
        assert rx.stop() == 0
    sent: dict[str, str] = {}
    for src in sources:
        sent.update(received_index(src))
    got = received_index(rx.out)
    assert len(sent) == 900
    assert set(got) == set(sent)
    mismatched = [uid for uid in sent if dataset_bytes(sent[uid]) != dataset_bytes(got[uid])]
    assert mismatched == []
    assert all(Path(p).name.startswith("CT.") for p in got.values())
    pids = rx.child_pids()
    assert len(pids) == 3 and len(set(pids)) == 3, log
    assert rx.proc is not None and rx.proc.pid not in pids
    assert log.count("300 instances stored") == 3, log
    assert temp_files(rx.out) == []


def test_max_associations_waits_instead_of_refusing(tmp_path: Path) -> None:
    uid = f"{UID_ROOT}.20"
    data = encode(ct_dataset(uid))
    with Receiver(tmp_path, ["--fork", "--max-associations", "1", "--sleep-after", "1"]) as rx:
        first = RawSCU(rx.port)
        assert first.store(data, uid).status == 0  # the child now sleeps 1 s after the response
        started = time.monotonic()
        second: list[float] = []
        echo: list[int] = []
        failures: list[BaseException] = []
        connecting = threading.Event()

        def late() -> None:
            try:
                connecting.set()
                scu = RawSCU(rx.port)  # accepted only once the first association is over
                second.append(time.monotonic())
                echo.append(scu.echo())
                scu.release()
            except BaseException as exc:  # asserted in the test's thread below
                failures.append(exc)

        thread = threading.Thread(target=late)
        thread.start()
        assert connecting.wait(10)
        first.release()  # released while the child still sleeps: it ends after ~1 s
        thread.join(20)
        assert not thread.is_alive() and failures == []
        assert echo == [0]
        assert second and second[0] - started > 0.7
        assert rx.stop() == 0
    assert len(set(rx.child_pids())) == 2


# --------------------------------------------------------------------------------------------------------
# partial data sets never appear; the server keeps serving


def test_sender_aborting_mid_data_set_leaves_no_file(tmp_path: Path) -> None:
    uid = f"{UID_ROOT}.30"
    data = big_dataset(uid)
    with Receiver(tmp_path, ["--fork"]) as rx:
        scu = RawSCU(rx.port)
        scu.send_command(1, dimse.c_store_rq(1, CT, uid))
        scu.send_data(1, data[: len(data) // 2], last=False)
        assert wait_for(lambda: temp_files(rx.out))  # the half data set is on disk, under a temporary name
        scu.abort()
        assert wait_for(lambda: "aborted-by-peer" in rx.log())
        assert wait_for(lambda: not temp_files(rx.out))
        assert stored_files(rx.out) == []
        # still serving
        scu = RawSCU(rx.port)
        assert scu.echo() == 0
        small = f"{UID_ROOT}.31"
        assert scu.store(encode(ct_dataset(small)), small).status == 0
        scu.release()
        assert rx.stop() == 0
    assert [p.name for p in stored_files(rx.out)] == [f"CT.{small}"]


def test_memory_stays_flat_for_a_large_data_set(tmp_path: Path) -> None:
    uid = f"{UID_ROOT}.35"
    ds = ct_dataset(uid)
    ds.PixelData = b"\1" * (100 * 2**20)
    ds.Rows = ds.Columns = 7240
    data = encode(ds)
    with Receiver(tmp_path, []) as rx:  # single process: the association runs in the server itself
        assert rx.proc is not None
        status = Path(f"/proc/{rx.proc.pid}/status")
        # the kernel's own peak: reset the server's high-water mark to its RSS now (clear_refs 5), then
        # read VmHWM afterwards, instead of sampling the RSS and maybe missing the peak
        Path(f"/proc/{rx.proc.pid}/clear_refs").write_text("5")
        before = _status_kib(status, "VmHWM") * 1024
        scu = RawSCU(rx.port)
        assert scu.store(data, uid).status == 0
        scu.release()
        peak = _status_kib(status, "VmHWM") * 1024
    assert (rx.out / f"CT.{uid}").stat().st_size > 100 * 2**20
    assert dataset_bytes(rx.out / f"CT.{uid}") == data
    assert peak - before < 24 * 2**20, (before, peak)


def _status_kib(status: Path, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmHWM: the peak resident set size)."""
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in {status}")


def test_child_killed_mid_write_leaves_nothing_and_parent_survives(tmp_path: Path) -> None:
    uid = f"{UID_ROOT}.40"
    data = big_dataset(uid, 1)
    with Receiver(tmp_path, ["--fork", "--sleep-during", "2"]) as rx:
        scu = RawSCU(rx.port)
        scu.send_command(1, dimse.c_store_rq(1, CT, uid))
        sender = threading.Thread(target=lambda: _quietly(lambda: scu.send_data(1, data)))
        sender.start()
        assert wait_for(lambda: temp_files(rx.out))  # the child has begun writing (and sleeps per PDV)
        child = rx.child_pids()[-1]
        os.kill(child, signal.SIGKILL)
        assert wait_for(lambda: "was killed by signal 9" in rx.log()), rx.log()
        assert temp_files(rx.out) == []
        assert stored_files(rx.out) == []
        sender.join(10)
        scu.close()
        assert rx.proc is not None and rx.proc.poll() is None
        scu = RawSCU(rx.port)
        assert scu.echo() == 0
        scu.release()
        assert rx.stop() == 0


def _quietly(fn) -> None:  # type: ignore[no-untyped-def]
    try:
        fn()
    except OSError:
        pass


def test_unaccepted_context_in_p_data_is_aborted(tmp_path: Path) -> None:
    with Receiver(tmp_path) as rx:
        scu = RawSCU(rx.port)
        scu.send_command(99, dimse.c_echo_rq(1))
        with pytest.raises((errors.PeerAborted, ConnectionError)):
            scu.read_response()
        scu.close()
        assert wait_for(lambda: "not accepted" in rx.log())
        scu = RawSCU(rx.port)
        assert scu.echo() == 0
        scu.release()


# --------------------------------------------------------------------------------------------------------
# nothing a peer sends writes outside -od


def test_hostile_uid_and_patient_name_stay_inside_output_directory(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "out"
    evil_uid = "../../../escaped/../x"
    ds = ct_dataset(evil_uid, patient="../../../etc/evil/..", study="../../study")
    with Receiver(tmp_path, ["-sp"], out=out) as rx:
        scu = RawSCU(rx.port)
        assert scu.store(encode(ds), evil_uid).status == 0
        slash_uid = "/tmp/absolute"
        ds2 = ct_dataset(slash_uid, patient="/", study="../../study")
        assert scu.store(encode(ds2), slash_uid).status == 0
        scu.release()
        assert rx.stop() == 0
    everything = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".log")]
    everything = [p for p in everything if not p.name.startswith("port-")]
    assert len(everything) == 2
    for path in everything:
        assert out in path.parents
        assert path.parent.parent == out  # one level: the patient directory
        assert ".." not in path.relative_to(out).parts
    names = sorted(p.parent.name for p in everything)
    assert all(n.startswith("_") for n in names)  # "../../../etc/evil/.." -> "_________etc_evil___"
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/absolute").exists()


# --------------------------------------------------------------------------------------------------------
# defaults and negotiation


@pytest.mark.needs_dcmtk
def test_defaults_echo_and_store_with_storescp_names_and_exact_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = [write_part10(src / f"f{i}.dcm", ct_dataset(f"{UID_ROOT}.5{i}"), EXPLICIT_LE) for i in range(3)]
    with Receiver(tmp_path) as rx:
        echo = echoscu(rx.port, "-aec", "WHATEVER")
        assert echo.returncode == 0, echo.stderr
        sent = dcmtk_send(files, rx.port)
        assert sent.returncode == 0, sent.stderr
        assert rx.stop() == 0
    names = sorted(p.name for p in stored_files(rx.out))
    assert names == [f"CT.{UID_ROOT}.5{i}" for i in range(3)]
    for i, path in enumerate(files):
        stored = rx.out / f"CT.{UID_ROOT}.5{i}"
        assert dataset_bytes(stored) == dataset_bytes(path)
        meta = pydicom.dcmread(stored, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == EXPLICIT_LE
        assert meta.MediaStorageSOPClassUID == CT
        assert meta.MediaStorageSOPInstanceUID == f"{UID_ROOT}.5{i}"
        assert meta.SourceApplicationEntityTitle == "STORESCU"


def test_overwrite_warns_and_replaces(tmp_path: Path) -> None:
    uid = f"{UID_ROOT}.60"
    with Receiver(tmp_path) as rx:
        scu = RawSCU(rx.port)
        assert scu.store(encode(ct_dataset(uid, patient="First")), uid).status == 0
        assert scu.store(encode(ct_dataset(uid, patient="Second")), uid).status == 0
        scu.release()
        assert wait_for(lambda: "already exists, overwriting" in rx.log())
    assert pydicom.dcmread(rx.out / f"CT.{uid}").PatientName == "Second"


def _negotiate(port: int, contexts, **kw) -> acse.AssociationAccept:  # type: ignore[no-untyped-def]
    scu = RawSCU(port, contexts, **kw)
    scu.release()
    return scu.accept


def test_transfer_syntax_preferences_and_sop_class_policy(tmp_path: Path) -> None:
    unknown = "1.2.826.0.1.3680043.9.7781.777"
    contexts = (
        (1, CT, ALL_UNCOMPRESSED),
        (3, CT, (JPEG_BASELINE,)),
        (5, unknown, ALL_UNCOMPRESSED),
        (7, VERIFICATION, (IMPLICIT,)),
    )
    with Receiver(tmp_path, [], verbose=False) as rx:
        results = _negotiate(rx.port, contexts).results
        assert results[1] == (acse.PC_ACCEPTANCE, EXPLICIT_LE)  # +x= default: explicit local byte order
        assert results[3][0] == acse.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED
        assert results[5][0] == acse.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED
        assert results[7] == (acse.PC_ACCEPTANCE, IMPLICIT)
    for args, expect in (
        (["+xb"], {1: EXPLICIT_BE, 3: None, 5: None}),
        (["+xi"], {1: IMPLICIT, 3: None}),
        (["+xb", "+xe"], {1: EXPLICIT_LE}),  # rightmost wins
        (["+xa", "-pm", "-pdu", "32768"], {1: EXPLICIT_LE, 3: JPEG_BASELINE, 5: EXPLICIT_LE}),
        (["+xy"], {1: EXPLICIT_LE, 3: JPEG_BASELINE}),
    ):
        with Receiver(tmp_path, args, verbose=False) as rx:
            accept = _negotiate(rx.port, contexts)
        for cid, ts in expect.items():
            result, accepted = accept.results[cid]
            assert (accepted if result == acse.PC_ACCEPTANCE else None) == ts, (args, cid, accept.results)
        if "-pdu" in args:
            assert accept.max_pdu == 32768
        else:
            assert accept.max_pdu == 16384


def test_config_file_profile_decides_contexts(tmp_path: Path) -> None:
    cfg = tmp_path / "scp.cfg"
    cfg.write_text(
        "[[TransferSyntaxes]]\n[BigFirst]\nTransferSyntax1 = BigEndianExplicit\nTransferSyntax2 = 1.2.840.10008.1.2\n"
        "[[PresentationContexts]]\n[Contexts]\nPresentationContext1 = CTImageStorage\\BigFirst\n"
        "PresentationContext2 = VerificationSOPClass\\BigFirst\n"
        "[[Profiles]]\n[Receive]\nPresentationContexts = Contexts\n"
    )
    contexts = ((1, CT, ALL_UNCOMPRESSED), (3, "1.2.840.10008.5.1.4.1.1.4", ALL_UNCOMPRESSED))
    with Receiver(tmp_path, ["-xf", str(cfg), "Receive"], verbose=False) as rx:
        accept = _negotiate(rx.port, contexts)
    assert accept.results[1] == (acse.PC_ACCEPTANCE, EXPLICIT_BE)
    assert accept.results[3][0] == acse.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED
    bad = run_receive(tmp_path, ["-xf", str(cfg), "Nope", "0"])
    assert bad.returncode == 2 and "Nope" in bad.stderr
    mixed = run_receive(tmp_path, ["-xf", str(cfg), "Receive", "+xb", "0"])
    assert mixed.returncode == 2 and "--config-file" in mixed.stderr


@pytest.mark.needs_dcmtk
def test_refuse_reject_and_accept_aet(tmp_path: Path) -> None:
    with Receiver(tmp_path, ["--refuse"]) as rx:
        with pytest.raises(acse.AssociationRejected) as info:
            RawSCU(rx.port)
        assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 1)
        assert echoscu(rx.port).returncode != 0
    with Receiver(tmp_path, ["--reject"]) as rx:
        with pytest.raises(acse.AssociationRejected):
            RawSCU(rx.port, implementation_class_uid="")
        assert RawSCU(rx.port).echo() == 0
    with Receiver(tmp_path, ["--accept-aet", "GOOD", "--accept-aet", "ALSOGOOD"]) as rx:
        with pytest.raises(acse.AssociationRejected) as info:
            RawSCU(rx.port, calling_ae="BAD")
        assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 3)
        scu = RawSCU(rx.port, calling_ae="ALSOGOOD")
        assert scu.echo() == 0
        scu.release()
        assert "calling AE title not recognized" in rx.log()


def test_aetitle_is_returned_and_contexts_logged_with_plus_v(tmp_path: Path) -> None:
    with Receiver(tmp_path, ["-aet", "MYSCP", "+v"]) as rx:
        stream = net.PDUStream(sockets.connect("127.0.0.1", rx.port, 10))
        request = acse.AssociationRequest("RAWSCU", "ANY-SCP", ((1, VERIFICATION, (IMPLICIT,)),))
        stream.pdu(net.A_ASSOCIATE_RQ, acse.encode_request(request))
        pdu_type, body = stream.read_pdu()
        assert pdu_type == net.A_ASSOCIATE_AC
        assert body[4:20].rstrip() == b"MYSCP"  # the responding AE title (-aet)
        acse.release(stream)
        assert wait_for(lambda: "Accepted Transfer Syntax" in rx.log())
    assert "Abstract Syntax: 1.2.840.10008.1.1" in rx.log()


# --------------------------------------------------------------------------------------------------------
# fault injection


@pytest.mark.needs_dcmtk
def test_ignore_receives_but_stores_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = [write_part10(src / f"{i}.dcm", ct_dataset(f"{UID_ROOT}.7{i}")) for i in range(3)]
    with Receiver(tmp_path, ["--ignore"]) as rx:
        sent = dcmtk_send(files, rx.port)
        assert sent.returncode == 0, sent.stderr
        assert wait_for(lambda: "3 instances stored" in rx.log())
    assert list(rx.out.iterdir()) == []


def test_sleep_after_delays_the_next_message_not_the_response(tmp_path: Path) -> None:
    with Receiver(tmp_path, ["--sleep-after", "1"]) as rx:
        scu = RawSCU(rx.port)
        uid = f"{UID_ROOT}.80"
        t0 = time.monotonic()
        assert scu.store(encode(ct_dataset(uid)), uid).status == 0
        t1 = time.monotonic()
        assert scu.echo() == 0
        t2 = time.monotonic()
        scu.release()
    assert t1 - t0 < 0.8
    assert 0.9 <= t2 - t1 < 5


def test_sleep_during_delays_the_response(tmp_path: Path) -> None:
    with Receiver(tmp_path, ["--sleep-during", "0.4"]) as rx:
        scu = RawSCU(rx.port)
        uid = f"{UID_ROOT}.81"
        t0 = time.monotonic()
        assert scu.store(encode(ct_dataset(uid)), uid).status == 0  # begin + 1 PDV + end: 3 sleeps
        elapsed = time.monotonic() - t0
        scu.release()
    assert 1.1 <= elapsed < 6
    assert (rx.out / f"CT.{uid}").exists()


@pytest.mark.parametrize("option", ["--abort-after", "--abort-during"])
@pytest.mark.needs_dcmtk
def test_abort_options_abort_and_store_nothing(tmp_path: Path, option: str) -> None:
    uid = f"{UID_ROOT}.82"
    with Receiver(tmp_path, [option]) as rx:
        scu = RawSCU(rx.port)
        with pytest.raises((errors.PeerAborted, ConnectionError)):
            scu.store(big_dataset(uid, 1), uid)
        scu.close()
        assert wait_for(lambda: "ABORT initiated" in rx.log())
        assert wait_for(lambda: not temp_files(rx.out))
        # DCMTK's storescu sees the abort too
        src = tmp_path / "src"
        src.mkdir(exist_ok=True)
        sent = dcmtk_send([write_part10(src / "x.dcm", ct_dataset(uid))], rx.port)
        assert sent.returncode != 0
    assert stored_files(rx.out) == []


# --------------------------------------------------------------------------------------------------------
# timeouts


def test_acse_and_dimse_timeouts(tmp_path: Path) -> None:
    with Receiver(tmp_path, ["-ta", "1", "-td", "1"]) as rx:
        silent = socket.create_connection(("127.0.0.1", rx.port))
        silent.settimeout(10)
        t0 = time.monotonic()
        assert silent.recv(100) in (b"", bytes((net.A_ABORT, 0, 0, 0, 0, 4, 0, 0, 2, 0)))
        assert 0.8 <= time.monotonic() - t0 < 5
        silent.close()
        scu = RawSCU(rx.port)
        t0 = time.monotonic()
        with pytest.raises((errors.PeerAborted, ConnectionError)):
            scu.stream.read_pdu()  # idle: the DIMSE timeout aborts the association
        assert 0.8 <= time.monotonic() - t0 < 5
        scu.close()
    with Receiver(tmp_path, ["-ts", "1"]) as rx:  # the socket timeout bounds every receive
        scu = RawSCU(rx.port)
        t0 = time.monotonic()
        with pytest.raises((errors.PeerAborted, ConnectionError)):
            scu.stream.read_pdu()
        assert 0.8 <= time.monotonic() - t0 < 5
        scu.close()


# --------------------------------------------------------------------------------------------------------
# signals, inetd, access control


def test_sigterm_lets_running_association_finish(tmp_path: Path) -> None:
    uid = f"{UID_ROOT}.90"
    with Receiver(tmp_path, ["--fork", "--sleep-during", "0.5"]) as rx:
        scu = RawSCU(rx.port)
        outcome: list[int] = []
        thread = threading.Thread(
            target=lambda: outcome.append(scu.store(encode(ct_dataset(uid)), uid).status)
        )
        thread.start()
        assert wait_for(lambda: temp_files(rx.out))
        rx.send_signal(signal.SIGTERM)
        assert wait_for(lambda: _refused(rx.port), 5)  # no longer accepting
        thread.join(10)
        assert outcome == [0]
        scu.release()
        assert rx.proc is not None
        assert rx.proc.wait(10) == 0
    assert (rx.out / f"CT.{uid}").exists()


def test_sigint_stops_at_once_and_kills_children(tmp_path: Path) -> None:
    uid = f"{UID_ROOT}.91"
    with Receiver(tmp_path, ["--fork", "--sleep-during", "5"]) as rx:
        scu = RawSCU(rx.port)
        scu.send_command(1, dimse.c_store_rq(1, CT, uid))
        scu.send_data(1, encode(ct_dataset(uid)))
        assert wait_for(lambda: temp_files(rx.out))
        child = rx.child_pids()[-1]
        t0 = time.monotonic()
        assert rx.stop(signal.SIGINT) == 130
        assert time.monotonic() - t0 < 4
        assert wait_for(lambda: not _alive(child), 5)
        scu.close()
    assert temp_files(rx.out) == [] and stored_files(rx.out) == []


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/status").read_text().count("State:\tZ")


@pytest.mark.needs_dcmtk
def test_inetd_serves_one_association_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    uid = f"{UID_ROOT}.92"
    path = write_part10(src / "x.dcm", ct_dataset(uid))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sent: list[subprocess.CompletedProcess[str]] = []
    thread = threading.Thread(target=lambda: sent.append(dcmtk_send([path], port)))
    thread.start()
    conn, _ = listener.accept()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "batchstore", "receive", "--inetd", "-v", "-od", str(out)],
        stdin=conn,
        capture_output=True,
        env=env,
        timeout=30,
    )
    conn.close()
    listener.close()
    thread.join(30)
    assert proc.returncode == 0, proc.stderr
    assert sent[0].returncode == 0, sent[0].stderr
    assert dataset_bytes(out / f"CT.{uid}") == dataset_bytes(path)
    assert run_receive(tmp_path, ["--inetd", "--fork"]).returncode == 2


@pytest.mark.needs_dcmtk
def test_host_access_control(tmp_path: Path) -> None:
    allow = tmp_path / "hosts.allow"
    deny = tmp_path / "hosts.deny"
    allow.write_text("# comment\nsshd: ALL\n")
    deny.write_text("storescp: 127.\n")
    args = ["+ac", "--hosts-allow", str(allow), "--hosts-deny", str(deny)]
    with Receiver(tmp_path, args) as rx:
        assert echoscu(rx.port).returncode != 0
        assert wait_for(lambda: "access denied" in rx.log())
    allow.write_text("batchstore: 127.0.0.0/8 EXCEPT 127.0.0.2\n")
    with Receiver(tmp_path, args) as rx:
        assert echoscu(rx.port).returncode == 0
    with Receiver(tmp_path, ["-ac", *args, "-ac"]) as rx:  # -ac (default) wins when rightmost
        allow.write_text("")
        assert echoscu(rx.port).returncode == 0


# --------------------------------------------------------------------------------------------------------
# command line


@pytest.fixture
def cli_runner():  # type: ignore[no-untyped-def]
    """Invoke ``batchstore receive`` in-process; the logging state it changes is restored afterwards."""
    import logging

    from click.testing import CliRunner

    from batchstore.cli.receive import command

    logger = logging.getLogger("batchstore")
    level, root_handlers = logger.level, list(logging.getLogger().handlers)
    runner = CliRunner()
    yield lambda args: runner.invoke(command, args)
    logger.setLevel(level)
    logging.getLogger().handlers[:] = root_handlers


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fork", "-xcs", "true", "0"], "--exec-on-eostudy cannot be used with --fork"),
        (["--fork", "-ss", "P", "0"], "--sort-conc-studies cannot be used with --fork"),
        (["--fork", "-rns", "-su", "P", "0"], "--rename-on-eostudy cannot be used with --fork"),
        (["--inetd", "-ss", "P"], "--sort-conc-studies cannot be used with --inetd"),
        (["--inetd", "--fork"], "--fork cannot be used with --inetd"),
        (["--inetd", "104"], "PORT must not be given with --inetd"),
        (["-rns", "0"], "--rename-on-eostudy needs"),
        (["-tos", "5", "0"], "--eostudy-timeout needs"),
        (["+B", "+te", "0"], "cannot be used with --bit-preserving"),
        (["+B", "-sp", "0"], "--sort-xxx cannot be used with --bit-preserving"),
        (["-F", "+p", "8", "8", "0"], "--padding-create cannot be used with --write-dataset"),
        (["+te", "+cl", "5", "0"], "--compression-level only with"),
        (["-xf", __file__, "P", "-pm", "0"], "--promiscuous cannot be used with --config-file"),
        (["--max-associations", "2", "0"], "--max-associations only with --fork"),
        (["+tls", "key.pem", "cert.pem", "0"], "cannot read certificate cert.pem"),
        (["+cf", "ca.pem", "0"], "+cf only with +tls"),
        (["-pdu", "1000", "0"], "4096"),
        (["-aet", "A_VERY_LONG_AE_TITLE", "0"], "1 to 16 characters"),
        ([], "PORT"),
        (["-od", "/nonexistent/dir", "0"], "does not exist"),
    ],
)
def test_usage_errors_exit_2_with_clear_messages(cli_runner, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    result = cli_runner(args)
    assert result.exit_code == 2, (args, result.output)
    assert message in result.output, (args, result.output)


def test_real_command_line_usage_version_help_and_arguments(tmp_path: Path) -> None:
    result = run_receive(tmp_path, ["--arguments", "--fork", "-xcs", "true", "0"])
    assert result.returncode == 2
    assert "--exec-on-eostudy cannot be used with --fork" in result.stderr
    assert "expanded command line arguments" in result.stderr
    version = run_receive(tmp_path, ["--version"])
    assert version.returncode == 0 and "batchstore" in version.stdout
    helptext = run_receive(tmp_path, ["-h"])
    assert helptext.returncode == 0 and "--sort-on-patientname" in helptext.stdout


@pytest.mark.needs_dcmtk
def test_quiet_and_log_config(tmp_path: Path) -> None:
    logfile = tmp_path / "receive.log"
    cfg = tmp_path / "logging.cfg"
    cfg.write_text(
        "[loggers]\nkeys=root\n[handlers]\nkeys=file\n[formatters]\nkeys=plain\n"
        "[logger_root]\nlevel=INFO\nhandlers=file\n"
        f"[handler_file]\nclass=FileHandler\nformatter=plain\nargs=({str(logfile)!r},)\n"
        "[formatter_plain]\nformat=%(message)s\n"
    )
    with Receiver(tmp_path, ["-lc", str(cfg), "-ll", "info"], verbose=False) as rx:
        assert echoscu(rx.port).returncode == 0
        assert wait_for(lambda: logfile.exists() and "Association Received" in logfile.read_text())
    with Receiver(tmp_path, ["-q"], verbose=False) as rx:
        RawSCU(rx.port).abort()
        # single process: the next association is served only once the aborted one is handled
        scu = RawSCU(rx.port)
        assert scu.echo() == 0
        scu.release()
        assert rx.stop() == 0
        assert rx.log() == ""


def test_python_api_serves_in_a_thread(tmp_path: Path) -> None:
    from batchstore.receiver.options import ReceiveOptions, StorageOptions
    from batchstore.receiver.server import Server

    out = tmp_path / "out"
    out.mkdir()
    options = ReceiveOptions(port=0, host="127.0.0.1", storage=StorageOptions(output_dir=str(out)))
    server = Server(options)
    ports: list[int] = []
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(server.run(ports.append)))
    thread.start()
    assert wait_for(lambda: ports)
    uid = f"{UID_ROOT}.93"
    scu = RawSCU(ports[0])
    assert scu.store(encode(ct_dataset(uid)), uid).status == 0
    scu.release()
    server.stop()
    thread.join(10)
    assert codes == [0]
    assert (out / f"CT.{uid}").exists()


@pytest.mark.parametrize(("spares", "fork_server"), [("1", "1"), ("1", "0"), ("0", "1")])
def test_fork_hands_each_association_to_a_child_forked_ahead(tmp_path: Path, spares: str, fork_server: str) -> None:
    """With --fork a child waits before any peer connects and serves the next association (its pid is the
    one the association logs); another is forked for the one after. ``BATCHSTORE_SPARE_CHILDREN=0``: none
    waits, and each association still gets a child of its own. Where the fork server runs (built, and
    not ``BATCHSTORE_FORK_SERVER=0``), it forks the children, and they are the receiver's children all
    the same."""
    import psutil

    from batchstore.receiver import spawner

    env = {**os.environ, "BATCHSTORE_SPARE_CHILDREN": spares, "BATCHSTORE_FORK_SERVER": fork_server}
    forker = spares == "1" and fork_server == "1" and spawner.compiled is not None
    with Receiver(tmp_path, ["--fork", "-d"], env=env) as rx:
        assert rx.proc is not None
        server = psutil.Process(rx.proc.pid)
        ready: list[int] = []
        helpers: list[int] = []
        if forker:
            assert wait_for(lambda: "fork server" in rx.log())
            helpers = [int(re.search(r"fork server (\d+) forks", rx.log()).group(1))]  # type: ignore[union-attr]
        if spares == "1":
            assert wait_for(lambda: len(server.children()) == 1 + len(helpers))
            ready = [child.pid for child in server.children() if child.pid not in helpers]
        for _ in range(2):
            scu = RawSCU(rx.port)
            assert scu.echo() == 0
            scu.release()
        assert wait_for(lambda: len(rx.child_pids()) == 2)
        pids = rx.child_pids()
        assert len(set(pids)) == 2 and rx.proc.pid not in pids and not set(pids) & set(helpers)
        if spares == "1":
            assert pids[0] == ready[0]  # the first association went to the child that was waiting
            assert wait_for(lambda: [c.pid for c in server.children() if c.pid not in pids + helpers] != [])
            # the fork server is still there, and still forks no child of its own
            assert [c.pid for c in server.children() if c.pid in helpers] == helpers
            assert all(psutil.Process(pid).children() == [] for pid in helpers)
        else:
            assert wait_for(lambda: server.children() == [])
        assert ("fork server" in rx.log()) == forker
