#!/usr/bin/env python3
"""Graph operations on a deep backing chain: blockd vs qemu-storage-daemon.

libvirt builds a chain node by node: for each image a ``file`` node and a
``qcow2`` node whose ``backing`` is the previous qcow2 node.  This bench builds
a chain of DEPTH qcow2 images that way (2*DEPTH blockdev-adds), queries
``query-named-block-nodes`` flat and nested, and deletes the chain top-down
(2*DEPTH blockdev-dels), timing each phase on both daemons over identical
images.  It then repeats blockd's phases at half the depth to show how the cost
grows (linear: the ratio of the two depths' times stays near 2 for add/del and
flat query; the nested reply is O(depth^2) in size by its nature).

    python bench/bench_graph.py [--depth 200] [--repeat 3]

Goals (issue 4): each phase at most 0.5x QSD's time, and linear in depth.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BLOCKD = [sys.executable, "-m", "blockd"]
QSD = ["qemu-storage-daemon"]
GOAL = 0.5


class Client:
    """A minimal raw QMP client: one request at a time, events skipped."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.file = self.sock.makefile("rwb", buffering=0)
        self.reader = self.sock.makefile("rb")
        self.reader.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> bytes:
        msg: dict[str, Any] = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            line = self.reader.readline()
            if not line:
                raise EOFError(name)
            if line.startswith(b'{"return"') or line.startswith(b'{"error"'):
                if line.startswith(b'{"error"'):
                    raise RuntimeError(f"{name}: {line[:300]!r}")
                return line

    def close(self) -> None:
        self.sock.close()


def make_chain(d: Path, depth: int) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "img0.qcow2"), "64M"],
                   check=True)
    for i in range(1, depth):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", f"img{i - 1}.qcow2",
                        "-F", "qcow2", str(d / f"img{i}.qcow2")], check=True)


def run_phases(argv0: list[str], d: Path, depth: int) -> dict[str, float]:
    sock = str(d / "qmp.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    proc = subprocess.Popen(
        [*argv0, "--chardev", f"socket,path={sock},server=on,wait=off,id=m0",
         "--monitor", "chardev=m0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d,
    )
    try:
        c = Client(sock)
        out: dict[str, float] = {}
        t = time.perf_counter()
        for i in range(depth):
            c.cmd("blockdev-add", {"driver": "file", "node-name": f"f{i}",
                                   "filename": str(d / f"img{i}.qcow2")})
            args: dict[str, Any] = {"driver": "qcow2", "node-name": f"q{i}", "file": f"f{i}"}
            args["backing"] = f"q{i - 1}" if i else None
            c.cmd("blockdev-add", args)
        out["add"] = time.perf_counter() - t
        t = time.perf_counter()
        flat = c.cmd("query-named-block-nodes", {"flat": True})
        out["query flat"] = time.perf_counter() - t
        t = time.perf_counter()
        nested = c.cmd("query-named-block-nodes")
        out["query nested"] = time.perf_counter() - t
        out["flat MiB"] = len(flat) / 2**20
        out["nested MiB"] = len(nested) / 2**20
        t = time.perf_counter()
        for i in reversed(range(depth)):
            c.cmd("blockdev-del", {"node-name": f"q{i}"})
            c.cmd("blockdev-del", {"node-name": f"f{i}"})
        out["del"] = time.perf_counter() - t
        c.close()
        return out
    finally:
        proc.terminate()
        proc.wait()


def best(argv0: list[str], d: Path, depth: int, repeat: int) -> dict[str, float]:
    runs = [run_phases(argv0, d, depth) for _ in range(repeat)]
    return {k: min(r[k] for r in runs) for k in runs[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-graph-"))
    try:
        make_chain(tmp, args.depth)
        qsd = best(QSD, tmp, args.depth, args.repeat)
        ours = best(BLOCKD, tmp, args.depth, args.repeat)
        half = best(BLOCKD, tmp, args.depth // 2, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"chain of {args.depth} qcow2 images ({2 * args.depth} nodes), best of "
          f"{args.repeat}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'phase':<14}{'QSD s':>10}{'blockd s':>10}{'ratio':>8}  goal   "
          f"{'growth x2 depth':>16}")
    failed = False
    for phase in ("add", "query flat", "query nested", "del"):
        ratio = ours[phase] / qsd[phase]
        growth = ours[phase] / half[phase] if half[phase] else float("nan")
        ok = ratio <= GOAL
        failed |= not ok
        print(f"{phase:<14}{qsd[phase]:>10.3f}{ours[phase]:>10.3f}{ratio:>8.2f}  "
              f"{'PASS' if ok else 'FAIL'}   {growth:>14.2f}x")
    print(f"reply sizes: flat {ours['flat MiB']:.2f} MiB (QSD {qsd['flat MiB']:.2f}), "
          f"nested {ours['nested MiB']:.2f} MiB (QSD {qsd['nested MiB']:.2f})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
