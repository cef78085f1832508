"""TLS benchmark: ``batchstore send +tls -j 2`` against DCMTK ``storescu +tls``, both into ``storescp --fork +tls``
(``TCP_NODELAY=1``), in one run on the same files, and receiving: two ``storescu +tls`` into
``batchstore receive --fork +tls`` against the same into ``storescp --fork +tls`` (wall time and the
receiver's CPU per file).

Certificates are made for the run with the ``openssl`` command (tests/tls_certs.py). The default profile of
each side is used (batchstore: BCP 195 RFC 8996; DCMTK 3.6.7: non-downgrading BCP 195): they share
TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 and TLS 1.3.

Targets (issue 13): sending 5,000 x 1 KB and 1,000 x 513 KB, at least 1.5x storescu's files/s; receiving,
CPU per file no more than storescp's. Run alone: ``python perf/bench_tls.py [--quick] [--repeat N]``;
writes ``perf/results/tls.json``.
"""

from __future__ import annotations

import argparse
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


def send_once(sender: str, pki: PKI, corpus: Path, count: int, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    with DcmtkStorescp(["--fork", *_server(pki)], out_dir=out, nodelay=True, verbose=False) as scp:
        if sender == "storescu":
            cmd = [DCMTK_STORESCU, *_client(pki), "+sd", "+r", "127.0.0.1", str(scp.port), str(corpus)]
            seconds = run_timed(cmd, dcmtk_env(True))
        else:
            cmd = batchstore_cmd("send", "-q", "-j", "2", *_client(pki), "+sd", "+r", "127.0.0.1", str(scp.port), str(corpus))
            seconds = run_timed(cmd, batchstore_env())
        arrived = wait_count(out, count)
    if arrived != count:
        raise RuntimeError(f"{sender}: {arrived} of {count} files arrived")
    return seconds


def receive_once(receiver: str, pki: PKI, corpus: Path, count: int, out: Path) -> tuple[float, float]:
    """Two storescu +tls send `corpus` at once; (wall seconds, receiver CPU seconds)."""
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
        cmd = [DCMTK_STORESCU, *_client(pki), "+sd", "+r", "127.0.0.1", str(peer.port), str(corpus)]
        t0 = time.perf_counter()
        senders = [subprocess.Popen(cmd, env=dcmtk_env(True), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        for s in senders:
            s.wait(600)
        arrived = wait_count(out, count)
        seconds = time.perf_counter() - t0
        cpu = _tree_cpu(proc) - before
    if arrived != count:
        raise RuntimeError(f"{receiver}: {arrived} of {count} files arrived")
    return seconds, cpu


def _tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds of `proc`, its running children and the children it has reaped."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + (t.children_user + t.children_system if p is proc else 0.0)
        except psutil.Error:
            pass
    return total


def run(work: Path, quick: bool = False, repeat: int = 3) -> dict[str, Any]:
    pki = make_pki(work / "pki")
    repeat = 1 if quick else repeat
    rows: list[list[str]] = []
    summary: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    for name, (count, size) in SIZES.items():
        count = count // 10 if quick else count
        corpus = make_corpus(work, f"tls-{name}", count, size)
        times: dict[str, list[float]] = {"storescu": [], "batchstore": []}
        for _ in range(repeat):
            for sender in times:
                times[sender].append(send_once(sender, pki, corpus, count, work / "out-tls"))
        dcmtk, ours = statistics.median(times["storescu"]), statistics.median(times["batchstore"])
        ratio = dcmtk / ours
        details[f"send-{name}"] = times
        rows.append([f"send {count} x {name} +tls, -j 2", f"{dcmtk:.2f}", f"{ours:.2f}", f"{ratio:.2f}x"])
        summary.append(summary_row(f"TLS send {count} x {name}, -j 2", target=">= 1.5x", met=ratio >= 1.5,
                                   dcmtk_s=dcmtk, batchstore_s=ours, ratio=ratio, files=count))  # fmt: skip
    count = 1000 if quick else 5000
    corpus = make_corpus(work, "tls-recv", count, 1024)
    got: dict[str, list[tuple[float, float]]] = {"storescp": [], "batchstore": []}
    for _ in range(repeat):
        for receiver in got:
            got[receiver].append(receive_once(receiver, pki, corpus, count, work / "out-tls-recv"))
    wall = {r: statistics.median(x[0] for x in v) for r, v in got.items()}
    cpu_us = {r: statistics.median(x[1] for x in v) / (2 * count) * 1e6 for r, v in got.items()}
    details["receive"] = got
    rows.append([f"receive 2 x {count} x 1 KB +tls", f"{wall['storescp']:.2f}", f"{wall['batchstore']:.2f}",
                 f"CPU/file {cpu_us['batchstore']:.0f} vs {cpu_us['storescp']:.0f} us"])  # fmt: skip
    summary.append(summary_row("TLS receive 2 x 1 KB, CPU per file", target="<= storescp",
                               met=cpu_us["batchstore"] <= cpu_us["storescp"], dcmtk_s=wall["storescp"],
                               batchstore_s=wall["batchstore"], ratio=cpu_us["storescp"] / cpu_us["batchstore"],
                               files=2 * count, result=f"{cpu_us['batchstore']:.0f} vs {cpu_us['storescp']:.0f} us/file"))  # fmt: skip
    text = "tls (TCP_NODELAY=1 on DCMTK)\n" + format_table(["scenario", "DCMTK s", "batchstore s", "ratio"], rows)
    print(text, flush=True)
    return {"summary": summary, "details": details, "table": text}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the files, one round")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--work", help="work directory (kept; default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS / "tls.json"))
    args = parser.parse_args()
    with work_dir(args.work) as work:
        result = run(work, args.quick, args.repeat)
    write_json(Path(args.json), {"benchmark": "tls", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
