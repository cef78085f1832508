"""The demo behind `make demo`: generate a small corpus, start `batchstore receive --fork` on loopback,
send the corpus to it with `batchstore send -j 2`, and print the summary and what arrived.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gen_corpus import generate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default="demo-out", help="working directory (recreated)")
    parser.add_argument("--count", type=int, default=200, help="number of DICOM files to generate")
    args = parser.parse_args()
    work = Path(args.dir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    corpus, received = work / "corpus", work / "received"
    received.mkdir(parents=True)
    print(f"generating {args.count} files (+3 junk) in {corpus}")
    generate(str(corpus), args.count, seed=1, profile="mixed", junk=3)
    port_file = work / "port"
    receiver = subprocess.Popen(
        [sys.executable, "-m", "batchstore", "receive", "--fork", "--host", "127.0.0.1",
         "--port-file", str(port_file), "+xa", "-od", str(received), "0"],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            if receiver.poll() is not None or time.monotonic() > deadline:
                print("receiver did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        port = port_file.read_text().strip()
        cmd = [sys.executable, "-m", "batchstore", "send", "-j", "2", "-nh", "+sd", "+r", "-xs",
               "--report", str(work / "report.json"), "127.0.0.1", port, str(corpus)]
        print("$ batchstore " + " ".join(cmd[3:]))
        code = subprocess.call(cmd)
    finally:
        os.killpg(receiver.pid, signal.SIGTERM)
        receiver.wait(timeout=20)
    arrived = sum(1 for p in received.rglob("*") if p.is_file())
    print(f"\n{arrived} file(s) arrived in {received}; report: {work / 'report.json'}")
    print(f"batchstore send exited with {code} (6: some files failed permanently - the 3 junk files, by design)")
    return 0 if arrived == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
