"""TLS benchmark: ``batchstore send +tls -j 2`` against DCMTK ``storescu +tls``, both into ``storescp --fork +tls``
(``TCP_NODELAY=1``), in one run on the same files, and receiving: two ``storescu +tls`` into
``batchstore receive --fork +tls`` against the same into ``storescp --fork +tls`` (wall time and the
receiver's CPU per file).

Certificates are made for the run with the ``openssl`` command (tests/tls_certs.py). The default profile of
each side is used (batchstore: BCP 195 RFC 8996; DCMTK 3.6.7: non-downgrading BCP 195); both pairs, batchstore
-> storescp and storescu -> storescp, negotiate TLS 1.3 with TLS_AES_256_GCM_SHA384 (OpenSSL's TLS 1.3
default, which neither side changes).

Targets (issue 13): sending 5,000 x 1 KB and 1,000 x 513 KB, at least 1.5x storescu's files/s; receiving,
CPU per file no more than storescp's. Run alone: ``python perf/bench_tls.py [--quick] [--repeat N]``;
writes ``perf/results/tls.json``; ``--only 513k`` runs one scenario. Next to wall time, CPU per file of each
side: the sender (its process and the workers it waited for) and storescp (the parent, its association
children, reaped or not), which other load on the machine disturbs far less than wall time. ``--syscalls``
adds the TLS receiver's system calls per file (``strace -f -c``), a count no other load moves
(docs/design.md, "TLS records and system calls").
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from common import (
    DCMTK_STORESCU,
    RESULTS,
    BatchstoreReceiver,
    DcmtkStorescp,
    batchstore_cmd,
    batchstore_env,
    dcmtk_env,
    format_table,
    make_corpus,
    run_timed,
    summary_row,
    wait_count,
    work_dir,
    write_json,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tls_certs import PKI, make_pki  # noqa: E402

CT_513K = 525312
SIZES = {"1k": (5000, 1024), "513k": (1000, CT_513K)}


def _server(pki: PKI) -> list[str]:
    return ["+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca)]


def _client(pki: PKI) -> list[str]:
    return ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]


def send_once(sender: str, pki: PKI, corpus: Path, count: int, out: Path) -> tuple[float, float, float]:
    """One run of `sender` into ``storescp --fork +tls``: (wall seconds, sender CPU seconds, storescp CPU
    seconds: the parent and its association children)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    cpu: list[float] = []
    with DcmtkStorescp(["--fork", *_server(pki)], out_dir=out, nodelay=True, verbose=False) as scp:
        assert scp.proc is not None
        proc = psutil.Process(scp.proc.pid)
        if sender == "storescu":
            cmd = [DCMTK_STORESCU, *_client(pki), "+sd", "+r", "127.0.0.1", str(scp.port), str(corpus)]
            seconds = run_timed(cmd, dcmtk_env(True), cpu=cpu)
        else:
            cmd = batchstore_cmd("send", "-q", "-j", "2", *_client(pki), "+sd", "+r", "127.0.0.1", str(scp.port), str(corpus))
            seconds = run_timed(cmd, batchstore_env(), cpu=cpu)
        arrived = wait_count(out, count)
        peer_cpu = _tree_cpu(proc, settle=True)
    if arrived != count:
        raise RuntimeError(f"{sender}: {arrived} of {count} files arrived")
    return seconds, cpu[0], peer_cpu


def receive_once(receiver: str, pki: PKI, corpora: list[Path], count: int, out: Path) -> tuple[float, float]:
    """Two storescu +tls at once, each sending its own corpus of `count` files (different instances, as
    in perf/bench_receive.py: the same instances twice would make every second one a name collision);
    (wall seconds, receiver CPU seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    if receiver == "storescp":
        peer: Any = DcmtkStorescp(["--fork", *_server(pki)], out_dir=out, nodelay=True, verbose=False)
    else:
        peer = BatchstoreReceiver(out, _server(pki), fork=True)
    with peer:
        proc = psutil.Process(peer.proc.pid)
        before = _tree_cpu(proc)
        cmds = [[DCMTK_STORESCU, *_client(pki), "+sd", "+r", "127.0.0.1", str(peer.port), str(c)] for c in corpora]
        t0 = time.perf_counter()
        senders = [subprocess.Popen(cmd, env=dcmtk_env(True), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for cmd in cmds]
        for s in senders:
            s.wait(600)
        arrived = wait_count(out, count * len(corpora))
        seconds = time.perf_counter() - t0
        cpu = _tree_cpu(proc) - before
    if arrived != count * len(corpora):
        raise RuntimeError(f"{receiver}: {arrived} of {count * len(corpora)} files arrived")
    return seconds, cpu


def receive_syscalls(pki: PKI, corpus: Path, count: int, out: Path) -> dict[str, float]:
    """One ``storescu +tls`` into ``batchstore receive --fork +tls`` under ``strace -f -c``: the receiver's
    system calls per file, by name (those made at least once per ten files). A count, not a time: other
    load on the machine does not move it."""
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    summary = out.parent / "strace-receive.txt"
    with BatchstoreReceiver(out, _server(pki), fork=True) as peer:
        tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(summary), "-p", str(peer.proc.pid)],
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(1.0)  # attached
        cmd = [DCMTK_STORESCU, *_client(pki), "+sd", "+r", "127.0.0.1", str(peer.port), str(corpus)]
        subprocess.run(cmd, env=dcmtk_env(True), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        arrived = wait_count(out, count)
        time.sleep(0.5)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    if arrived != count:
        raise RuntimeError(f"{arrived} of {count} files arrived")
    calls: dict[str, float] = {}
    for line in summary.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            n = int(fields[3]) / count
            if n >= 0.1:
                calls[fields[-1]] = round(n, 2)
    return dict(sorted(calls.items(), key=lambda kv: -kv[1]))


def _tree_cpu(proc: psutil.Process, settle: bool = False) -> float:
    """CPU seconds of `proc`, its children (running or exited and not yet reaped: /proc still has their
    times) and the children it has reaped (cutime + cstime). `settle`: first wait (up to 10 s) until no
    child is still running, so a child finishing its last file is counted whole."""
    deadline = time.monotonic() + 10.0
    while settle and time.monotonic() < deadline:
        try:
            if all(c.status() == psutil.STATUS_ZOMBIE for c in proc.children(recursive=True)):
                break
        except psutil.Error:
            pass
        time.sleep(0.02)
    total = 0.0
    for p in [*proc.children(recursive=True), proc]:  # children first: one reaped meanwhile moves to cutime
        try:
            t = p.cpu_times()
            total += t.user + t.system + (t.children_user + t.children_system if p is proc else 0.0)
        except psutil.Error:
            pass
    return total


def run(
    work: Path, quick: bool = False, repeat: int = 3, only: tuple[str, ...] = (), syscalls: bool = False
) -> dict[str, Any]:
    pki = make_pki(work / "pki")
    repeat = 1 if quick else repeat
    rows: list[list[str]] = []
    summary: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    for name, (count, size) in SIZES.items():
        if only and name not in only:
            continue
        count = count // 10 if quick else count
        corpus = make_corpus(work, f"tls-{name}", count, size)
        runs: dict[str, list[tuple[float, float, float]]] = {"storescu": [], "batchstore": []}
        for _ in range(repeat):
            for sender in runs:  # alternating: a disturbance by other load hits both senders alike
                runs[sender].append(send_once(sender, pki, corpus, count, work / "out-tls"))
        wall = {s: statistics.median(r[0] for r in v) for s, v in runs.items()}
        # CPU per file of each side (us): the sender, and storescp with its association children
        us = {s: (statistics.median(r[1] for r in v) / count * 1e6, statistics.median(r[2] for r in v) / count * 1e6)
              for s, v in runs.items()}  # fmt: skip
        dcmtk, ours = wall["storescu"], wall["batchstore"]
        ratio = dcmtk / ours
        details[f"send-{name}"] = {**runs, "cpu_us_per_file": us}
        rows.append([f"send {count} x {name} +tls, -j 2", f"{dcmtk:.2f}", f"{ours:.2f}", f"{ratio:.2f}x",
                     "CPU us/file sender+storescp: storescu {:.0f}+{:.0f}, batchstore {:.0f}+{:.0f}".format(
                         *us["storescu"], *us["batchstore"])])  # fmt: skip
        summary.append(summary_row(f"TLS send {count} x {name}, -j 2", target=">= 1.5x", met=ratio >= 1.5,
                                   dcmtk_s=dcmtk, batchstore_s=ours, ratio=ratio, files=count))  # fmt: skip
    if syscalls:
        count = 200 if quick else 2000
        corpus = make_corpus(work, "tls-recv-syscalls", count, 1024)
        calls = receive_syscalls(pki, corpus, count, work / "out-tls-syscalls")
        details["receive_syscalls_per_file"] = calls
        rows.append([f"receive {count} x 1 KB +tls, strace", "", "", "",
                     "receiver calls/file: " + ", ".join(f"{k} {v:g}" for k, v in calls.items())])  # fmt: skip
    if only and "receive" not in only:
        return _result(rows, summary, details)
    count = 1000 if quick else 5000
    corpora = [make_corpus(work, "tls-recv", count, 1024, seed=100 + i) for i in range(2)]
    got: dict[str, list[tuple[float, float]]] = {"storescp": [], "batchstore": []}
    for _ in range(repeat):
        for receiver in got:
            got[receiver].append(receive_once(receiver, pki, corpora, count, work / "out-tls-recv"))
    wall = {r: statistics.median(x[0] for x in v) for r, v in got.items()}
    cpu_us = {r: statistics.median(x[1] for x in v) / (2 * count) * 1e6 for r, v in got.items()}
    details["receive"] = got
    rows.append([f"receive 2 x {count} x 1 KB +tls", f"{wall['storescp']:.2f}", f"{wall['batchstore']:.2f}",
                 f"{wall['storescp'] / wall['batchstore']:.2f}x",
                 f"receiver CPU us/file: batchstore {cpu_us['batchstore']:.0f}, storescp {cpu_us['storescp']:.0f}"])  # fmt: skip
    summary.append(summary_row("TLS receive 2 x 1 KB, CPU per file", target="<= storescp",
                               met=cpu_us["batchstore"] <= cpu_us["storescp"], dcmtk_s=wall["storescp"],
                               batchstore_s=wall["batchstore"], ratio=cpu_us["storescp"] / cpu_us["batchstore"],
                               files=2 * count, result=f"{cpu_us['batchstore']:.0f} vs {cpu_us['storescp']:.0f} us/file"))  # fmt: skip
    return _result(rows, summary, details)


def _result(rows: list[list[str]], summary: list[dict[str, Any]], details: dict[str, Any]) -> dict[str, Any]:
    headers = ["scenario", "DCMTK s", "batchstore s", "ratio", "CPU"]
    text = "tls (TCP_NODELAY=1 on DCMTK)\n" + format_table(headers, rows)
    print(text, flush=True)
    return {"summary": summary, "details": details, "table": text}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the files, one round")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--only", action="append", choices=[*SIZES, "receive"], default=[],
                        help="run only this scenario (repeatable)")  # fmt: skip
    parser.add_argument("--syscalls", action="store_true",
                        help="also count the TLS receiver's system calls per file (strace -f -c; one storescu)")  # fmt: skip
    parser.add_argument("--work", help="work directory (kept; default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS / "tls.json"))
    args = parser.parse_args()
    with work_dir(args.work) as work:
        result = run(work, args.quick, args.repeat, tuple(args.only), args.syscalls)
    write_json(Path(args.json), {"benchmark": "tls", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
