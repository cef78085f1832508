"""Send benchmark: batchstore send -j N against DCMTK storescu, same data, same receiver, one run.

Scenarios (receiver: DCMTK ``storescp --fork`` writing to a temporary directory):

- ``1k``:   5,000 x 1 KB files, fair comparison (``TCP_NODELAY=1`` on both DCMTK sides)
- ``512k``: 1,000 x 512 KB files, fair comparison
- ``nagle``: 200 x 1 KB files, as deployed (no ``TCP_NODELAY`` in DCMTK's environment, receiver included)

Prints one table (scenario, DCMTK s, batchstore s, ratio of files/s) and writes ``perf/results/send.json``.
Run: ``python perf/bench_send.py [--quick] [--workers 2] [--scenarios 1k,512k,nagle]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from gen_corpus import generate  # noqa: E402
from peers import DcmtkStorescp, dcmtk_env  # noqa: E402

SCENARIOS = {
    "1k": {"count": 5000, "size": 1024, "nodelay": True},
    "512k": {"count": 1000, "size": 512 * 1024, "nodelay": True},
    "nagle": {"count": 200, "size": 1024, "nodelay": False},
}


def _run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed


def _count_files(directory: str) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


def run_scenario(name: str, work: Path, workers: int, scale: float) -> dict:
    spec = SCENARIOS[name]
    count = max(10, int(spec["count"] * scale))
    corpus = work / f"corpus-{name}"
    if not corpus.exists():
        generate(str(corpus), count, seed=7, profile="uniform", size=spec["size"])
    results: dict = {"scenario": name, "files": count, "size": spec["size"], "nodelay_dcmtk": spec["nodelay"]}
    for sender in ("dcmtk", "batchstore"):
        out = work / f"out-{name}-{sender}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        with DcmtkStorescp(["--fork"], out_dir=out, nodelay=spec["nodelay"], verbose=False) as scp:
            if sender == "dcmtk":
                cmd = ["/usr/bin/storescu", "+sd", "+r", "127.0.0.1", str(scp.port), str(corpus)]
                env = dcmtk_env(nodelay=spec["nodelay"])
            else:
                cmd = [sys.executable, "-m", "batchstore", "send", "-q", "-j", str(workers), "+sd", "+r",
                       "127.0.0.1", str(scp.port), str(corpus)]
                env = dict(os.environ)
            seconds = _run(cmd, env)
            deadline = time.monotonic() + 30
            while _count_files(str(out)) < count and time.monotonic() < deadline:
                time.sleep(0.05)
            arrived = _count_files(str(out))
        if arrived != count:
            raise RuntimeError(f"{name}/{sender}: {arrived} of {count} files arrived")
        results[f"{sender}_s"] = round(seconds, 3)
        results[f"{sender}_files_per_s"] = round(count / seconds, 1)
    results["ratio"] = round(results["dcmtk_s"] / results["batchstore_s"], 2)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", "-j", type=int, default=2)
    parser.add_argument("--scenarios", default="1k,512k,nagle")
    parser.add_argument("--quick", action="store_true", help="a tenth of the files (smoke run)")
    parser.add_argument("--json", default=str(ROOT / "perf" / "results" / "send.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bs-perf-") as tmp:
        for name in args.scenarios.split(","):
            rows.append(run_scenario(name.strip(), Path(tmp), args.workers, 0.1 if args.quick else 1.0))
    print(f"{'scenario':<8} {'files':>6} {'DCMTK s':>9} {'batchstore s':>13} {'ratio':>6}  (batchstore -j {args.workers})")
    for r in rows:
        label = r["scenario"] + ("" if r["nodelay_dcmtk"] else " (as deployed)")
        print(f"{label:<8} {r['files']:>6} {r['dcmtk_s']:>9.2f} {r['batchstore_s']:>13.2f} {r['ratio']:>5.2f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"workers": args.workers, "time": time.time(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
