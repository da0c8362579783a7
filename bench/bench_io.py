#!/usr/bin/env python3
"""Throughput of blockd-io vs qemu-io: sequential and random 64 KiB I/O on a qcow2.

Each phase runs as one tool process given its commands with ``-c`` (``-q`` commands,
``-t writeback`` so the host cache, not fdatasync, is measured — as with qemu-io's
own throughput runs); the process start-up time, measured with an empty script, is
subtracted.  The tools alternate phase by phase so drifting host load hits both
alike.  Prints MiB/s per tool (best and median of the rounds), the blockd/qemu
ratios (goal: >= 0.8 on the sequential phases) and the load average around the
run.  Not part of the test suite.

    python bench/bench_io.py [--size 1G] [--seq-bytes 1G] [--random-ops 8192] [--fmt qcow2]
                             [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 64 << 10


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower()
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def run_script(tool: str, fmt: str, img: str, script: str) -> float:
    """Wall time of one tool process running script; fails loudly on errors."""
    args = [tool, "-f", fmt, "-t", "writeback"]
    for line in script.splitlines():
        args += ["-c", line]
    if not script:
        args += ["-c", "flush"]
    t0 = time.perf_counter()
    r = subprocess.run([*args, img], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    bad = r.stdout.splitlines()
    if r.returncode != 0 or bad or r.stderr:
        sys.exit(f"{tool} failed (rc={r.returncode}): {r.stderr[:500]} {bad[:3]}")
    return elapsed


def phases(size: int, seq_bytes: int, random_ops: int, seed: int) -> list[tuple[str, str, int]]:
    rng = random.Random(seed)
    nchunks = size // CHUNK
    seq = [i * CHUNK for i in range(min(seq_bytes, size) // CHUNK)]
    rnd = [rng.randrange(nchunks) * CHUNK for _ in range(random_ops)]
    return [
        ("seq write", "".join(f"write -q -P 0x5a {o} 64k\n" for o in seq), len(seq) * CHUNK),
        ("seq read", "".join(f"read -q {o} 64k\n" for o in seq), len(seq) * CHUNK),
        ("rand write", "".join(f"write -q -P 0x3c {o} 64k\n" for o in rnd), len(rnd) * CHUNK),
        ("rand read", "".join(f"read -q {o} 64k\n" for o in rnd), len(rnd) * CHUNK),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="virtual image size")
    ap.add_argument("--seq-bytes", default="1G", help="bytes per sequential phase")
    ap.add_argument("--random-ops", type=int, default=8192)
    ap.add_argument("--fmt", default="qcow2", choices=["qcow2", "raw"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds; the best and the median are reported")
    ap.add_argument("--dir", default=None, help="directory for the images")
    args = ap.parse_args()

    qemu_io = shutil.which("qemu-io")
    blockd_io = shutil.which("blockd-io") or str(Path(sys.executable).with_name("blockd-io"))
    qemu_img = shutil.which("qemu-img")
    if not qemu_io or not qemu_img or not os.path.exists(blockd_io):
        sys.exit("needs qemu-io, qemu-img and blockd-io")
    size = parse_size(args.size)
    plan = phases(size, parse_size(args.seq_bytes), args.random_ops, args.seed)

    # Best of --repeat rounds, each round on fresh images.  The tools alternate
    # phase by phase (each on its own image, so both see the same image states):
    # on a shared host load drifts, and interleaving exposes both tools to it alike;
    # the best run is the one least disturbed by other load.
    tools = (("qemu-io", qemu_io), ("blockd-io", blockd_io))
    results: dict[str, dict[str, list[float]]] = {name: {} for name, _ in tools}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-io-", dir=args.dir) as d:
        for _ in range(args.repeat):
            imgs = {name: str(Path(d) / f"{name}.{args.fmt}") for name, _ in tools}
            startup: dict[str, float] = {}
            for name, tool in tools:
                subprocess.run([qemu_img, "create", "-f", args.fmt, imgs[name], str(size)],
                               check=True, capture_output=True)
                # The fastest start: a noisy median can exceed a short phase.
                startup[name] = min(
                    run_script(tool, args.fmt, imgs[name], "") for _ in range(5)
                )
            for phase, script, nbytes in plan:
                for name, tool in tools:
                    total = run_script(tool, args.fmt, imgs[name], script)
                    elapsed = total - startup[name]
                    if elapsed < 0.05 * total:
                        # Start-up noise swamped the phase: no usable sample.
                        continue
                    rate = nbytes / elapsed / (1 << 20)
                    results[name].setdefault(phase, []).append(rate)
            for img in imgs.values():
                os.unlink(img)
    load_after = os.getloadavg()[0]

    print(f"{args.fmt}, {args.size} image, 64 KiB requests, cache=writeback, "
          f"{args.repeat} rounds; load average {load_before:.2f} -> {load_after:.2f} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'':<12} {' best ':-^38}   {' median ':-^38}")
    print(f"{'phase':<12} {'qemu-io MiB/s':>14} {'blockd-io MiB/s':>16} {'ratio':>6}   "
          f"{'qemu-io MiB/s':>14} {'blockd-io MiB/s':>16} {'ratio':>6}")
    for phase, _, _ in plan:
        q = results["qemu-io"].get(phase)
        b = results["blockd-io"].get(phase)
        if not q or not b:
            print(f"{phase:<12} {'n/a (phase too short for the start-up noise)':>39}")
            continue
        qb, bb = max(q), max(b)
        qm, bm = statistics.median(q), statistics.median(b)
        print(f"{phase:<12} {qb:>14.1f} {bb:>16.1f} {bb / qb:>6.2f}   "
              f"{qm:>14.1f} {bm:>16.1f} {bm / qm:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
