#!/usr/bin/env python3
"""Block jobs, blockd vs qemu-storage-daemon side by side: throughput, QMP latency
during the job, peak RSS.  Not part of the test suite.

The chain (made once with real qemu-img/qemu-io, copied fresh for every run):
base fully written, mid with 25% rewritten, top empty, all qcow2.  Each case
starts a daemon with two monitors, adds the chain by node name, starts the job
on monitor 0 and, until it completes, sends ``query-jobs`` back to back on
monitor 1 (each latency recorded).  Reported per daemon: job wall time (command
sent -> completion event; READY for the active commit), MiB/s of the chain's
virtual size, p50/p99/max ``query-jobs`` latency, answers during the job, peak
RSS (VmHWM); then the blockd/QSD throughput ratio of the best and of the median
runs.  Goals (issue 5): ratio >= 1.5 (stream), >= 1.0 (commit, active-commit),
p99 < 20 ms and RSS < 100 MiB in every blockd run; the script exits 1 if one
is missed.

To keep the comparison fair: blockd runs with cached bytecode (a private
PYTHONPYCACHEPREFIX, compiled up front, as an installed package has); every run
gets a fresh copy of the chain that is synced to disk first (no daemon pays for
the copy's dirty pages); the two daemons alternate who goes first.

Cases live in ``CASES`` (name -> function starting the job and returning the
event that ends it); more job types add an entry there.

    python bench/bench_jobs.py [--size 1G] [--repeat 3] [--cases stream,commit]
                               [--dir /dev/shm/x]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.procs import DaemonProcess, RawClient, start_blockd, start_qsd

CHAIN = ("base", "mid", "top")


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower()
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def make_chain(d: Path, size: int) -> None:
    """base fully written (pattern 1), mid 25% rewritten (pattern 2), top empty."""
    def sh(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    sh("qemu-img", "create", "-q", "-f", "qcow2", str(d / "base.qcow2"), str(size))
    sh("qemu-io", "-t", "writeback", "-c", f"write -q -P 1 0 {size}", str(d / "base.qcow2"))
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
       str(d / "mid.qcow2"))
    quarter = size // 4
    sh("qemu-io", "-t", "writeback", "-c", f"write -q -P 2 {size // 2} {quarter}",
       str(d / "mid.qcow2"))
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2",
       str(d / "top.qcow2"))


class Client:
    """A negotiated raw QMP connection with a line-level request helper."""

    def __init__(self, path: str) -> None:
        self.raw = RawClient(path, negotiate=True, timeout=600)

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        req: dict[str, Any] = {"execute": name}
        if args is not None:
            req["arguments"] = args
        self.raw.send(json.dumps(req).encode() + b"\n")
        while True:
            msg: dict[str, Any] = json.loads(self.raw.line())
            if "return" in msg or "error" in msg:
                if "error" in msg:
                    raise RuntimeError(f"{name}: {msg['error']}")
                return msg

    def until(self, event: str) -> dict[str, Any]:
        while True:
            msg: dict[str, Any] = json.loads(self.raw.line())
            if msg.get("event") == event:
                return msg


def add_chain(c: Client, d: Path) -> None:
    prev: str | None = None
    for name in CHAIN:
        opts: dict[str, Any] = {"driver": "qcow2", "node-name": name,
                                "file": {"driver": "file", "node-name": f"{name}-file",
                                         "filename": str(d / f"{name}.qcow2")}}
        if prev is not None:
            opts["backing"] = prev
        c.cmd("blockdev-add", opts)
        prev = name


def case_stream(c: Client) -> str:
    c.cmd("block-stream", {"device": "top", "job-id": "job0"})
    return "BLOCK_JOB_COMPLETED"


def case_commit(c: Client) -> str:
    """Intermediate commit of mid (25% allocated) into base."""
    c.cmd("block-commit", {"device": "top", "job-id": "job0", "top-node": "mid",
                           "base-node": "base"})
    return "BLOCK_JOB_COMPLETED"


def case_active_commit(c: Client) -> str:
    """Active commit of top (and mid) into base, timed to READY."""
    c.cmd("block-commit", {"device": "top", "job-id": "job0", "base-node": "base"})
    return "BLOCK_JOB_READY"


CASES: dict[str, Callable[[Client], str]] = {
    "stream": case_stream, "commit": case_commit, "active-commit": case_active_commit,
}


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_one(start: Callable[..., DaemonProcess], d: Path, case: str) -> dict[str, float]:
    proc = start(d, monitors=2)
    try:
        main = Client(proc.sockets[0])
        poll = Client(proc.sockets[1])
        add_chain(main, d)
        latencies: list[float] = []
        stop = threading.Event()

        def poller() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                poll.cmd("query-jobs")
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        end_event = CASES[case](main)
        th = threading.Thread(target=poller)
        th.start()
        msg = main.until(end_event)
        elapsed = time.perf_counter() - t0
        stop.set()
        th.join()
        if "error" in msg.get("data", {}):
            raise RuntimeError(f"job failed: {msg['data']}")
        rss = peak_rss_kib(proc.proc.pid)
    finally:
        proc.stop()
    lat = sorted(latencies) or [0.0]
    return {
        "seconds": elapsed,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "max_ms": 1000 * lat[-1],
        "answers": float(len(latencies)),
        "rss_mib": rss / 1024,
    }


# Goals (issue 5): blockd/QSD throughput ratio per case; for every case p99
# query-jobs latency and peak RSS.
RATIO_GOALS = {"stream": 1.5, "commit": 1.0, "active-commit": 1.0}
P99_GOAL_MS = 20.0
RSS_GOAL_MIB = 100.0


def bytecode_cache(root: Path) -> None:
    """Give blockd cached bytecode, as an installed package has: this
    environment sets PYTHONDONTWRITEBYTECODE, and without a cache every start
    (and every module a job command imports lazily, inside the timed window)
    is compiled again."""
    os.environ["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    src = Path(__file__).resolve().parent.parent / "blockd"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True,
                   stdout=subprocess.DEVNULL)


def fresh_copy(pristine: Path, d: Path) -> None:
    """A fresh copy of the chain, written back before the timed run so that
    neither daemon pays for the other's (or the copy's) dirty pages."""
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(pristine, d)
    os.sync()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-jobs-"))
    pristine = work / "pristine"
    pristine.mkdir(parents=True, exist_ok=True)
    if not (pristine / "top.qcow2").exists():
        print(f"making a {size >> 20} MiB chain in {pristine} ...", flush=True)
        make_chain(pristine, size)
    bytecode_cache(work)
    starters = {"qsd": start_qsd, "blockd": start_blockd}
    failed: list[str] = []
    try:
        for case in args.cases.split(","):
            results: dict[str, list[dict[str, float]]] = {"qsd": [], "blockd": []}
            for i in range(args.repeat):
                # Alternate who goes first: both see the same drift in load.
                order = ["qsd", "blockd"] if i % 2 == 0 else ["blockd", "qsd"]
                for name in order:
                    d = work / name
                    fresh_copy(pristine, d)
                    results[name].append(run_one(starters[name], d, case))
            print(f"\n== {case}: {size >> 20} MiB chain in {work}, best of {args.repeat} "
                  f"(load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}) ==")
            best: dict[str, dict[str, float]] = {}
            med: dict[str, float] = {}
            for name, runs in results.items():
                b = min(runs, key=lambda r: r["seconds"])
                best[name] = b
                med[name] = statistics.median(r["seconds"] for r in runs)
                p99 = max(r["p99_ms"] for r in runs)
                rss = max(r["rss_mib"] for r in runs)
                print(f"{name:7s} {b['seconds']:7.3f} s (median {med[name]:.3f})  "
                      f"{(size >> 20) / b['seconds']:8.1f} MiB/s  "
                      f"query-jobs p50 {b['p50_ms']:.2f} ms p99 {b['p99_ms']:.2f} ms "
                      f"(worst run {p99:.2f}) max {b['max_ms']:.2f} ms "
                      f"({int(b['answers'])} answers)  peak RSS {rss:.1f} MiB")
            ratio = best["qsd"]["seconds"] / best["blockd"]["seconds"]
            mratio = med["qsd"] / med["blockd"]
            goal = RATIO_GOALS.get(case)
            worst_p99 = max(r["p99_ms"] for r in results["blockd"])
            worst_rss = max(r["rss_mib"] for r in results["blockd"])
            ok = (goal is None or ratio >= goal) and worst_p99 < P99_GOAL_MS \
                and worst_rss < RSS_GOAL_MIB
            if not ok:
                failed.append(case)
            print(f"throughput ratio blockd/qsd: best {ratio:.2f}x, median {mratio:.2f}x "
                  f"(goal >= {goal}x, p99 < {P99_GOAL_MS:.0f} ms, RSS < {RSS_GOAL_MIB:.0f} MiB)"
                  f" {'PASS' if ok else 'FAIL'}")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    if failed:
        sys.exit(f"goals missed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
