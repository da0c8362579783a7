"""Helpers for the block-commit tests: real chains, a QMP session that keeps
events apart from replies, and scenario transcripts comparable between blockd
and qemu-storage-daemon."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.procs import DaemonProcess, RawClient

MiB = 1 << 20


def qemu_img_run(qemu_img: str, *args: str) -> str:
    return subprocess.run([qemu_img, *args], check=True, capture_output=True,
                          text=True).stdout


def qemu_io_run(qemu_io: str, *args: str) -> str:
    return subprocess.run([qemu_io, *args], check=True, capture_output=True,
                          text=True).stdout


def make_chain(d: Path, qemu_img: str, qemu_io: str, size: int = 4 * MiB) -> None:
    """base <- mid <- top with distinct patterns in each layer:

    base: 0xaa everywhere; mid: 0xbb at [1M, 2M); top: 0xcc at [1.5M, 2.5M) and
    zeroes at [3M, 3M+64K)."""
    qemu_img_run(qemu_img, "create", "-f", "qcow2", str(d / "base.qcow2"), str(size))
    qemu_io_run(qemu_io, "-f", "qcow2", "-c", f"write -P 0xaa 0 {size}", str(d / "base.qcow2"))
    qemu_img_run(qemu_img, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                 str(d / "mid.qcow2"))
    qemu_io_run(qemu_io, "-f", "qcow2", "-c", f"write -P 0xbb {MiB} {MiB}",
                str(d / "mid.qcow2"))
    qemu_img_run(qemu_img, "create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2",
                 str(d / "top.qcow2"))
    qemu_io_run(qemu_io, "-f", "qcow2", "-c", f"write -P 0xcc {MiB + MiB // 2} {MiB}",
                "-c", f"write -z {3 * MiB} 65536", str(d / "top.qcow2"))


def libvirt_chain_cmds(d: Path) -> list[tuple[str, dict[str, Any]]]:
    """blockdev-add commands in libvirt's style (bottom-up, storage + format)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for i, (name, backing) in enumerate([("base", None), ("mid", "n3-format"),
                                         ("top", "n2-format")]):
        n = 3 - i
        out.append(("blockdev-add", {"driver": "file", "filename": str(d / f"{name}.qcow2"),
                                     "node-name": f"n{n}-storage", "auto-read-only": True,
                                     "discard": "unmap"}))
        out.append(("blockdev-add", {"driver": "qcow2", "file": f"n{n}-storage",
                                     "backing": backing, "node-name": f"n{n}-format",
                                     "read-only": name != "top", "discard": "unmap"}))
    return out


_TS = re.compile(r'"timestamp": \{"seconds": \d+, "microseconds": \d+\}, ')
_VERSION = re.compile(r'"qemu": \{"micro": \d+, "minor": \d+, "major": \d+\}, "package": "[^"]*"')
_BLOCKNAME = re.compile(r"#block\d+")


class Session:
    """One QMP connection; replies are returned, events queue up in order."""

    def __init__(self, proc: DaemonProcess, workdir: Path) -> None:
        # The socket file exists a moment before the daemon listens on it.
        for attempt in range(100):
            try:
                self.client = RawClient(proc.socket, timeout=30)
                break
            except ConnectionRefusedError:
                if attempt == 99:
                    raise
                time.sleep(0.05)
        self.client.send(b'{"execute": "qmp_capabilities"}\n')
        reply = self.client.line()
        if reply == self.client.greeting:
            # Seen once from QSD 7.2 under heavy load: the greeting sent twice
            # on one connection (the oracle's quirk, not the code under test).
            reply = self.client.line()
        assert reply == b'{"return": {}}\r\n', (self.client.greeting, reply, proc.stderr())
        self.workdir = str(workdir)
        self.events: list[dict[str, Any]] = []

    def _read(self, timeout: float = 30) -> dict[str, Any]:
        line = self.client.line(timeout)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        req: dict[str, Any] = {"execute": name}
        if args is not None:
            req["arguments"] = args
        self.client.send(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def ok(self, name: str, args: dict[str, Any] | None = None) -> Any:
        r = self.cmd(name, args)
        assert "return" in r, (name, args, r)
        return r["return"]

    def wait_event(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60) -> None:
        """Read until an event matching ``pred`` has arrived (it stays queued)."""
        end = time.monotonic() + timeout
        for ev in self.events:
            if pred(ev):
                return
        while True:
            left = end - time.monotonic()
            assert left > 0, f"timed out; events so far {self.events}"
            msg = self._read(left)
            if "event" in msg:
                self.events.append(msg)
                if pred(msg):
                    return

    def wait_status(self, job: str, status: str, timeout: float = 60) -> None:
        self.wait_event(lambda e: e["event"] == "JOB_STATUS_CHANGE"
                        and e["data"] == {"status": status, "id": job}, timeout)

    def drain_events(self, seconds: float = 0.2) -> None:
        for line in self.client.lines_for(seconds):
            msg = json.loads(line)
            if "event" in msg:
                self.events.append(msg)

    def take_events(self) -> list[str]:
        """Queued events as comparable strings (timestamps dropped), then clear."""
        out = [self.norm(ev) for ev in self.events]
        self.events = []
        return out

    def norm(self, obj: Any) -> str:
        s = json.dumps(obj)
        s = _TS.sub("", s)
        s = _VERSION.sub("VERSION", s)
        s = _BLOCKNAME.sub("#blockN", s)
        return s.replace(self.workdir, "DIR")

    def nodes(self) -> list[tuple[str, bool, str, str]]:
        """(node-name, ro, drv, backing_file or "") of every named node, sorted."""
        ret = self.ok("query-named-block-nodes", {"flat": True})
        return sorted((_BLOCKNAME.sub("#blockN", n["node-name"]), n["ro"], n["drv"],
                       n.get("backing_file", "").replace(self.workdir, "DIR"))
                      for n in ret)

    def hmp(self, line: str) -> str:
        r: str = self.ok("human-monitor-command", {"command-line": line})
        return r

    def close(self) -> None:
        self.client.close()
