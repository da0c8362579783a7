"""Helpers for the job/stream tests: image chains made by real qemu-img/qemu-io,
and one script runner that drives blockd and qemu-storage-daemon identically.

A script is a list of steps:

* ``("cmd", name, args)``: send, collect every line up to and including the reply;
* ``("until", event, status)``: collect lines until that event arrives
  (``status`` narrows JOB_STATUS_CHANGE);
* ``("until_total", event, status, n)``: until n such events in the transcript;
* ``("sleep", seconds)``.

``$D`` in arguments is replaced by the image directory.  The transcript has
timestamps masked and the directory replaced by ``$D``, so the two daemons'
transcripts can be compared line by line.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.procs import DaemonProcess, RawClient, start_blockd, start_qsd

Step = tuple[Any, ...]
MiB = 1024 * 1024


def run_tool(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def make_chain(d: Path, size: str = "4M", *, names: tuple[str, ...] = ("base", "mid", "top"),
               writes: dict[str, list[str]] | None = None) -> None:
    """base <- mid <- top qcow2 chain with relative backing names and a few
    patterned writes (the default pattern: base 0-1M:1 2-3M:2, mid 512k-1.5M:3)."""
    d.mkdir(parents=True, exist_ok=True)
    writes = writes if writes is not None else {
        names[0]: ["write -P 1 0 1M", "write -P 2 2M 1M"],
        names[1]: ["write -P 3 512k 1M"],
    }
    prev: str | None = None
    for name in names:
        path = d / f"{name}.qcow2"
        args = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if prev is not None:
            args += ["-b", f"{prev}.qcow2", "-F", "qcow2"]
        run_tool(*args, str(path), size)
        cmds: list[str] = []
        for w in writes.get(name, []):
            cmds += ["-c", w]
        if cmds:
            run_tool("qemu-io", *cmds, str(path))
        prev = name


def snapshot_raw(d: Path, top: str, out: Path) -> None:
    """The guest-visible content of ``top`` as a raw file (the expected data)."""
    run_tool("qemu-img", "convert", "-O", "raw", str(d / top), str(out))


def check_clean(path: Path, leaks_ok: bool = False) -> None:
    """qemu-img check passes; after a crash (``leaks_ok``) leaked clusters are
    allowed (exit 3: wasted space, no harm to data), corruption never."""
    r = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
    ok = (0, 3) if leaks_ok else (0,)
    assert r.returncode in ok, f"qemu-img check {path}: {r.stdout}{r.stderr}"


def compare(path: Path, raw: Path) -> None:
    r = subprocess.run(["qemu-img", "compare", "-F", "raw", str(path), str(raw)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"qemu-img compare {path}: {r.stdout}{r.stderr}"


def backing_of(path: Path) -> tuple[str | None, str | None]:
    info = json.loads(run_tool("qemu-img", "info", "-U", "--output=json", str(path)))
    return info.get("backing-filename"), info.get("backing-filename-format")


def map_of(path: Path) -> list[tuple[int, int, int, bool, bool]]:
    """qemu-img map of an image chain without host offsets: which layer holds
    what, as data or zeros (QEMU's COR writes all-zero runs as zero clusters)."""
    out = json.loads(run_tool("qemu-img", "map", "-U", "--output=json", str(path)))
    merged: list[tuple[int, int, int, bool, bool]] = []
    for e in out:
        key = (e["depth"], e["zero"], e["data"])
        if merged and merged[-1][2:] == key:
            # qemu-img splits where host offsets jump; the host layout differs
            # with the order the copies landed in, the guest view does not.
            last = merged.pop()
            merged.append((last[0], last[1] + e["length"], *key))
        else:
            merged.append((e["start"], e["length"], *key))
    return merged


_TS = re.compile(r'"seconds": \d+, "microseconds": \d+')
_AUTONAME = re.compile(r"#block\d+")


class Session:
    """One daemon and a negotiated raw QMP connection, recording a transcript."""

    def __init__(self, proc: DaemonProcess, d: Path, timeout: float = 20) -> None:
        self.proc = proc
        self.d = d
        self.timeout = timeout
        # The socket file exists from bind(); connect until listen() happened.
        for _ in range(100):
            try:
                self.client = RawClient(proc.socket, negotiate=True, timeout=timeout)
                break
            except ConnectionRefusedError:
                time.sleep(0.02)
        else:
            self.client = RawClient(proc.socket, negotiate=True, timeout=timeout)
        self.lines: list[str] = []

    def _norm(self, raw: bytes) -> str:
        s = raw.decode().rstrip("\r\n")
        s = _TS.sub("TS", s).replace(str(self.d), "$D")
        return _AUTONAME.sub("#blockN", s)

    def _next(self) -> dict[str, Any]:
        raw = self.client.line(timeout=self.timeout)
        self.lines.append(self._norm(raw))
        msg: dict[str, Any] = json.loads(raw)
        return msg

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        req: dict[str, Any] = {"execute": name}
        if args is not None:
            req["arguments"] = json.loads(json.dumps(args).replace("$D", str(self.d)))
        self.client.send(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._next()
            if "return" in msg or "error" in msg:
                return msg

    def until(self, event: str, status: str | None = None) -> dict[str, Any]:
        while True:
            msg = self._next()
            if msg.get("event") == event and (
                status is None or msg.get("data", {}).get("status") == status
            ):
                return msg

    def until_total(self, event: str, status: str, count: int) -> None:
        """Until the transcript holds ``count`` such events in all (some may
        have arrived while waiting for replies)."""
        needle = f'"event": "{event}", "data": {{"status": "{status}"'
        while sum(needle in line for line in self.lines) < count:
            self._next()

    def run(self, script: list[Step]) -> list[str]:
        for step in script:
            if step[0] == "cmd":
                self.cmd(step[1], step[2] if len(step) > 2 else None)
            elif step[0] == "until":
                self.until(step[1], step[2] if len(step) > 2 else None)
            elif step[0] == "until_total":
                self.until_total(step[1], step[2], step[3])
            elif step[0] == "sleep":
                time.sleep(step[1])
            else:
                raise ValueError(step)
        return self.lines

    def close(self) -> None:
        self.client.close()
        self.proc.stop()


def run_both(tmp: Path, script: list[Step], setup: Any,
             timeout: float = 20) -> dict[str, tuple[list[str], Path]]:
    """Run ``script`` on QSD and on blockd over identical fresh images
    (``setup(dir)`` makes them).  Returns transcript and image dir per daemon."""
    out: dict[str, tuple[list[str], Path]] = {}
    # Directory names of equal length: json: backing names embed the paths and
    # QEMU's 1023-byte header limit must hit both runs alike.
    for which, start in (("qsd", start_qsd), ("blockd", start_blockd)):
        d = tmp / ("qsd" if which == "qsd" else "bkd")
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
        setup(d)
        s = Session(start(d), d, timeout)
        try:
            lines = s.run(script)
        finally:
            s.close()
        out[which] = (lines, d)
    return out


def add_chain_steps(names: tuple[str, ...] = ("base", "mid", "top"),
                    base_file: dict[str, Any] | None = None) -> list[Step]:
    """blockdev-add of each image with named nodes, each referencing the one below."""
    steps: list[Step] = []
    prev: str | None = None
    for i, name in enumerate(names):
        f: dict[str, Any] = {"driver": "file", "node-name": f"{name}-file",
                             "filename": f"$D/{name}.qcow2"}
        if i == 0 and base_file is not None:
            f = base_file
        opts: dict[str, Any] = {"driver": "qcow2", "node-name": name, "file": f}
        if prev is not None:
            opts["backing"] = prev
        steps.append(("cmd", "blockdev-add", opts))
        prev = name
    return steps
