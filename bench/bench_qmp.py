#!/usr/bin/env python3
"""QMP server costs of blockd next to real qemu-storage-daemon 7.2, in one run.

Both daemons are started with the same QSD command line (one socket monitor) and
driven by the same plain raw-socket client, alternately, so that noise on the
shared machine hits both alike.  Measured for each:

* round-trip latency of ``{"execute":"query-version","id":N}`` (p50, p99) over
  ``--requests`` sequential requests after ``--warmup`` untimed ones;
* commands/s, sequential (the same run) and pipelined (``--batch`` requests per
  write, all replies read before the next write);
* idle RSS (``VmRSS`` of /proc/PID/status; for blockd the Python process) after
  start-up and negotiation, and again after the load (informational);
* start to greeting: spawn, connect as soon as the socket exists, time until the
  greeting line has arrived (median of ``--starts`` runs, after one untimed start).

blockd runs with its bytecode cached (``PYTHONPYCACHEPREFIX`` in the bench's
temporary directory, ``PYTHONDONTWRITEBYTECODE`` cleared), as an installed package
would; ``--no-bytecode-cache`` keeps the caller's environment instead (with
``PYTHONDONTWRITEBYTECODE=1`` every start recompiles blockd's modules).

Goals (PASS/FAIL): blockd p50 and p99 <= 0.7x QSD's, idle RSS <= 40 MiB, start
to greeting <= 300 ms.  Not part of the test suite; exits 1 when a goal fails.

    python bench/bench_qmp.py [--requests 20000] [--warmup 2000] [--batch 100]
                              [--starts 10] [--blockd-arg ARG ...] [--no-bytecode-cache]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BLOCKD = [sys.executable, "-m", "blockd"]
QSD = ["qemu-storage-daemon"]

MIB = 1 << 20
LATENCY_GOAL = 0.7  # blockd p50/p99 at most this fraction of QSD's
RSS_GOAL = 40 * MIB
START_GOAL = 0.300  # seconds


def monitor_args(sock: str) -> list[str]:
    return ["--chardev", f"socket,path={sock},server=on,wait=off,id=m0",
            "--monitor", "chardev=m0"]


class Peer:
    """A lean raw-socket QMP client: one send, read up to the next CRLF.

    Deliberately minimal (no JSON decoding on the hot path) so the client adds
    as little as possible to the measured round trip.
    """

    def __init__(self, path: str, timeout: float = 10) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = self.buf[: end + 2]
                self.buf = self.buf[end + 2:]
                return line
            data = self.sock.recv(262144)
            if not data:
                raise EOFError(self.buf)
            self.buf += data

    def lines(self, count: int) -> int:
        """Consume ``count`` lines; returns the number of error replies among them."""
        errors = 0
        while count:
            end = self.buf.find(b"\r\n")
            if end < 0:
                data = self.sock.recv(262144)
                if not data:
                    raise EOFError(self.buf)
                self.buf += data
                continue
            if self.buf.startswith(b'{"error"'):
                errors += 1
            self.buf = self.buf[end + 2:]
            count -= 1
        return errors

    def negotiate(self) -> bytes:
        greeting = self.line()
        self.sock.sendall(b'{"execute":"qmp_capabilities"}\n')
        reply = self.line()
        if reply != b'{"return": {}}\r\n':
            raise RuntimeError(f"negotiation failed: {reply!r}")
        return greeting

    def close(self) -> None:
        self.sock.close()


@dataclass
class Daemon:
    """One running daemon under test."""

    name: str
    argv: list[str]
    workdir: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    sock: str = ""

    def start(self) -> tuple[float, float]:
        """Spawn; (seconds from spawn to the greeting line, daemon CPU seconds by then)."""
        self.sock = str(self.workdir / "m0.sock")
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [*self.argv, *monitor_args(self.sock)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.workdir, env=self.env,
        )
        deadline = t0 + 30
        while True:
            # connect() rather than os.path.exists(): the file appears at bind(),
            # before listen(), and a connect in between is refused.
            try:
                peer = Peer(self.sock)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(
                        f"{self.name} exited {self.proc.returncode}: {err}"
                    ) from None
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{self.name} did not listen on {self.sock}") from None
                time.sleep(0.0005)
        try:
            greeting = peer.line()
            elapsed = time.perf_counter() - t0
            cpu = self.cpu_ns() / 1e9
        finally:
            peer.close()
        if not greeting.startswith(b'{"QMP": '):
            raise RuntimeError(f"{self.name}: bad greeting {greeting!r}")
        return elapsed, cpu

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def cpu_ns(self) -> int:
        """CPU time the daemon has used so far, all live threads (schedstat, ns)."""
        assert self.proc is not None
        total = 0
        task_dir = f"/proc/{self.proc.pid}/task"
        for tid in os.listdir(task_dir):
            try:
                with open(f"{task_dir}/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:  # thread ended meanwhile
                pass
        return total

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


@dataclass
class Figures:
    samples_ns: list[int] = field(default_factory=list)
    seq_per_s: float = 0.0
    pipe_per_s: float = 0.0
    idle_rss: int = 0
    loaded_rss: int = 0
    starts: list[float] = field(default_factory=list)
    start_cpu: list[float] = field(default_factory=list)
    seq_cpu_us: float = 0.0  # daemon CPU per request, sequential
    pipe_cpu_us: float = 0.0  # daemon CPU per request, pipelined

    def pct(self, q: float) -> float:
        """Percentile ``q`` (0..100) of the round trips, in microseconds."""
        s = sorted(self.samples_ns)
        k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
        return s[k] / 1000


# A goal judges (blockd, qsd) figures: True/False, or None for "no goal".
Goal = Callable[[float, float], bool | None]


def request(n: int) -> bytes:
    return b'{"execute":"query-version","id":%d}\n' % n


def latency(peer: Peer, count: int, first_id: int) -> tuple[list[int], float]:
    """Sequential round trips: per-request times (ns) and total seconds."""
    samples = [0] * count
    send = peer.sock.sendall
    line = peer.line
    clock = time.perf_counter_ns
    t_start = clock()
    for i in range(count):
        t0 = clock()
        send(request(first_id + i))
        reply = line()
        samples[i] = clock() - t0
        if reply[1:7] != b'"retur':
            raise RuntimeError(f"unexpected reply {reply!r}")
    return samples, (clock() - t_start) / 1e9


def pipelined(peer: Peer, count: int, batch: int) -> float:
    """Commands/s with ``batch`` requests per write."""
    payloads = [b"".join(request(b * batch + i) for i in range(batch))
                for b in range(max(1, count // batch))]
    t0 = time.perf_counter()
    errors = 0
    for payload in payloads:
        peer.sock.sendall(payload)
        errors += peer.lines(batch)
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{errors} error replies in the pipelined run")
    return len(payloads) * batch / elapsed


def measure_load(d: Daemon, fig: Figures, args: argparse.Namespace) -> None:
    """Idle RSS, then latency and throughput on one negotiated connection."""
    peer = Peer(d.sock)
    try:
        peer.negotiate()
        time.sleep(0.2)  # let start-up garbage settle before reading RSS
        fig.idle_rss = d.rss()
        latency(peer, args.warmup, 1_000_000)
        cpu0 = d.cpu_ns()
        fig.samples_ns, total = latency(peer, args.requests, 0)
        cpu1 = d.cpu_ns()
        fig.seq_per_s = args.requests / total
        fig.pipe_per_s = pipelined(peer, args.requests, args.batch)
        cpu2 = d.cpu_ns()
        fig.seq_cpu_us = (cpu1 - cpu0) / args.requests / 1000
        fig.pipe_cpu_us = (cpu2 - cpu1) / (args.requests // args.batch * args.batch) / 1000
        fig.loaded_rss = d.rss()
    finally:
        peer.close()


def fmt_row(label: str, b: float, q: float, unit: str, verdict: str) -> str:
    ratio = b / q if q else float("inf")
    return f"{label:<30} {b:>12.1f} {q:>12.1f} {ratio:>8.2f}  {unit:<6} {verdict}"


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "FAIL")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--blockd-arg", action="append", default=[],
                    help="extra argument for blockd's command line (repeatable)")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="run blockd with the caller's environment (no private .pyc cache)")
    args = ap.parse_args()
    if shutil.which(QSD[0]) is None:
        sys.exit("qemu-storage-daemon is not installed")

    root = Path(tempfile.mkdtemp(prefix="bench_qmp."))
    env: dict[str, str] | None = None
    if not args.no_bytecode_cache:
        env = dict(os.environ, PYTHONPYCACHEPREFIX=str(root / "pycache"))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    daemons = {
        "blockd": Daemon("blockd", [*BLOCKD, *args.blockd_arg], root / "blockd", env),
        "qsd": Daemon("qsd", QSD, root / "qsd"),
    }
    figs = {name: Figures() for name in daemons}
    try:
        for d in daemons.values():
            d.workdir.mkdir()
        # Start-up: one untimed start each (bytecode, page cache), then alternate
        # the two so both see the same machine load.
        for d in daemons.values():
            d.start()
            d.stop()
        for _ in range(args.starts):
            for name, d in daemons.items():
                elapsed, cpu = d.start()
                figs[name].starts.append(elapsed)
                figs[name].start_cpu.append(cpu)
                d.stop()
        # Load: both daemons up side by side, measured one after the other.
        for d in daemons.values():
            d.start()
        for name, d in daemons.items():
            measure_load(d, figs[name], args)
    finally:
        for d in daemons.values():
            d.stop()
        shutil.rmtree(root, ignore_errors=True)

    b, q = figs["blockd"], figs["qsd"]
    rows: list[tuple[str, Callable[[Figures], float], str, Goal]] = [
        ("query-version p50", lambda f: f.pct(50), "us", lambda x, y: x <= LATENCY_GOAL * y),
        ("query-version p99", lambda f: f.pct(99), "us", lambda x, y: x <= LATENCY_GOAL * y),
        ("query-version mean", lambda f: statistics.fmean(f.samples_ns) / 1000, "us",
         lambda x, y: None),
        ("sequential commands/s", lambda f: f.seq_per_s, "1/s", lambda x, y: None),
        ("daemon CPU/request, seq.", lambda f: f.seq_cpu_us, "us", lambda x, y: None),
        (f"pipelined x{args.batch} commands/s", lambda f: f.pipe_per_s, "1/s",
         lambda x, y: None),
        ("daemon CPU/request, pipel.", lambda f: f.pipe_cpu_us, "us", lambda x, y: None),
        ("idle RSS", lambda f: f.idle_rss / MIB, "MiB", lambda x, y: x * MIB <= RSS_GOAL),
        ("RSS after load", lambda f: f.loaded_rss / MIB, "MiB", lambda x, y: None),
        ("start to greeting (median)", lambda f: statistics.median(f.starts) * 1000, "ms",
         lambda x, y: x <= START_GOAL * 1000),
        ("daemon CPU to greeting (med.)", lambda f: statistics.median(f.start_cpu) * 1000, "ms",
         lambda x, y: None),
    ]
    print(f"{args.requests} sequential requests after {args.warmup} warm-up, "
          f"{args.batch}/write pipelined, {args.starts} starts, blockd bytecode "
          f"{'as the environment has it' if args.no_bytecode_cache else 'cached'}")
    print(f"{'':<30} {'blockd':>12} {'qsd':>12} {'ratio':>8}  {'unit':<6} goal")
    failed = False
    for label, get, unit, goal in rows:
        bv, qv = get(b), get(q)
        ok = goal(bv, qv)
        failed |= ok is False
        print(fmt_row(label, bv, qv, unit, verdict(ok)))
    print("goals: p50/p99 <= 0.7x QSD, idle RSS <= 40 MiB, start to greeting <= 300 ms")
    print(f"machine load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          "(wall-clock figures are only comparable on a quiet machine; CPU figures less affected)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
