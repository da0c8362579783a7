"""Helpers for the graph tests: a small synchronous QMP peer over a real daemon."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.procs import DaemonProcess, RawClient, start_blockd, start_qsd


class VM:
    """A running daemon (blockd or QSD) with a negotiated QMP connection."""

    def __init__(self, workdir: Path, qsd: bool = False) -> None:
        self.log_path = workdir / f"{'qsd' if qsd else 'blockd'}-stdout.log"
        self._log = open(self.log_path, "wb")
        start = start_qsd if qsd else start_blockd
        self.proc: DaemonProcess = start(workdir, stdout=self._log)
        self.client = _connect(self.proc.socket)
        self.events: list[dict[str, Any]] = []

    def qmp(self, cmd: str, **args: Any) -> dict[str, Any]:
        req: dict[str, Any] = {"execute": cmd}
        if args:
            req["arguments"] = args
        self.client.send(json.dumps(req).encode() + b"\n")
        while True:
            reply: dict[str, Any] = json.loads(self.client.line())
            if "event" in reply:
                self.events.append(reply)
                continue
            return reply

    def hmp_qemu_io(self, node: str, cmd: str) -> dict[str, Any]:
        return self.qmp("human-monitor-command", **{"command-line": f'qemu-io {node} "{cmd}"'})

    def shutdown(self) -> None:
        self.client.close()
        self.proc.stop()
        self._log.close()

    def get_log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _connect(path: str) -> RawClient:
    # The socket file can appear a moment before the daemon listens on it.
    deadline = time.monotonic() + 10
    while True:
        try:
            return RawClient(path, negotiate=True)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def error_desc(reply: dict[str, Any]) -> str | None:
    err = reply.get("error")
    return None if err is None else str(err["desc"])
