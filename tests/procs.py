"""Real daemon processes for tests: blockd and, as the oracle, qemu-storage-daemon.

Both are started with the same QSD-style command line and talked to over real
Unix sockets; nothing here mocks the daemon.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BLOCKD = [sys.executable, "-m", "blockd"]


class DaemonProcess:
    """A daemon with N listening monitors ``m0..mN-1`` at ``<dir>/mK.sock``."""

    def __init__(
        self, argv0: list[str], workdir: Path, *extra: str, monitors: int = 1,
        stdout: Any = subprocess.DEVNULL,
    ) -> None:
        self.workdir = workdir
        self.sockets = [str(workdir / f"m{i}.sock") for i in range(monitors)]
        args: list[str] = []
        for i, path in enumerate(self.sockets):
            args += ["--chardev", f"socket,path={path},server=on,wait=off,id=m{i}",
                     "--monitor", f"chardev=m{i}"]
        self.argv = [*argv0, *args, *extra]
        for path in self.sockets:
            if os.path.exists(path):
                os.unlink(path)
        # stderr goes to a file: an unread pipe would block a chatty daemon.
        self.stderr_path = workdir / f"stderr-{time.monotonic_ns()}.log"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            self.argv, stdout=stdout, stderr=self._stderr, cwd=workdir
        )
        deadline = time.monotonic() + 20
        while not all(os.path.exists(p) for p in self.sockets):
            if self.proc.poll() is not None:
                err = self.stderr()
                raise RuntimeError(f"{self.argv} exited {self.proc.returncode}: {err}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.argv} did not create its sockets")
            time.sleep(0.01)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def socket(self) -> str:
        return self.sockets[0]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_blockd(workdir: Path, *extra: str, monitors: int = 1, **kw: Any) -> DaemonProcess:
    return DaemonProcess(BLOCKD, workdir, *extra, monitors=monitors, **kw)


def start_qsd(workdir: Path, *extra: str, monitors: int = 1, **kw: Any) -> DaemonProcess:
    return DaemonProcess(["qemu-storage-daemon"], workdir, *extra, monitors=monitors, **kw)


class RawClient:
    """A raw-socket QMP peer: exact bytes in, exact lines out."""

    def __init__(self, path: str, *, negotiate: bool = False, timeout: float = 10) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.greeting = self.line()
        if negotiate:
            self.send(b'{"execute":"qmp_capabilities"}\n')
            assert self.line() == b'{"return": {}}\r\n'

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self, timeout: float | None = None) -> bytes:
        """The next CRLF-terminated line (raises on timeout or EOF)."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def lines_for(self, seconds: float) -> list[bytes]:
        """Every line that arrives within ``seconds`` (for inputs with 0..n replies)."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            data = self.sock.recv(65536)
            if not data:
                break
            self.buf += data
        out = []
        while b"\r\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\r\n")
            out.append(line + b"\r\n")
        return out

    def exchange(self, data: bytes, replies: int = 1) -> list[bytes]:
        self.send(data)
        return [self.line() for _ in range(replies)]

    def close(self) -> None:
        self.sock.close()


_VERSION_RE = re.compile(
    rb'\{"qemu": \{"micro": \d+, "minor": \d+, "major": \d+\}, "package": "[^"]*"\}'
)


def neutral(line: bytes) -> bytes:
    """A reply with the version object and timestamps masked, for differential tests."""
    line = _VERSION_RE.sub(b"VERSION", line)
    return re.sub(rb'"seconds": \d+, "microseconds": \d+', b"TIMESTAMP", line)
