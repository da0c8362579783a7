"""Character devices for monitors: ``--chardev socket,...`` and ``--chardev stdio``.

``--chardev`` is parsed with QemuOpts rules (not keyval): comma-separated
``key=value`` pairs, ``,,`` for a literal comma, the backend name implied
first, and the deprecated short-form booleans (``server``, ``nowait``) accepted
with QEMU's warning.  Error texts are QEMU 7.2's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import stat
import sys
from dataclasses import dataclass, field
from typing import Any

from blockd.qmp.errors import GenericError

_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")

_BOOL_TRUE = ("on", "yes", "true", "y")
_BOOL_FALSE = ("off", "no", "false", "n")

_COMMON = {"id", "backend", "mux", "logfile", "logappend"}
_PARAMS: dict[str, dict[str, str]] = {
    # name -> type ('str', 'bool', 'number')
    "socket": {
        "path": "str", "host": "str", "port": "str", "to": "number",
        "ipv4": "bool", "ipv6": "bool", "nodelay": "bool", "server": "bool",
        "wait": "bool", "reconnect": "number", "abstract": "bool", "tight": "bool",
        "telnet": "bool", "tn3270": "bool", "websocket": "bool", "fd": "str",
        "tls-creds": "str", "tls-authz": "str",
    },
    "stdio": {"signal": "bool"},
}
# Accepted by QEMU's option list but not something blockd can honour.
_UNSUPPORTED = {"telnet", "tn3270", "websocket", "fd", "tls-creds", "tls-authz", "mux",
                "logfile", "logappend"}


@dataclass
class ChardevSpec:
    """A parsed ``--chardev``: backend and typed options."""

    id: str
    backend: str
    opts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    text: str = ""  # the argument as given, for QEMU-style error locations

    @property
    def is_server(self) -> bool:
        return bool(self.opts.get("server", False))

    @property
    def wait(self) -> bool:
        return bool(self.opts.get("wait", True))

    def describe(self) -> str:
        """The label QEMU prints while waiting for a connection."""
        if "path" in self.opts:
            addr = f"unix:{self.opts['path']}"
        else:
            addr = f"tcp:{self.opts.get('host', '')}:{self.opts.get('port', '')}"
        return f"disconnected:{addr}{',server=on' if self.is_server else ''}"


def prog_name() -> str:
    """Program name used as the prefix of messages, like QEMU's error_report."""
    name = os.path.basename(sys.argv[0])
    # ``python -m blockd`` runs __main__.py: still blockd.
    return "blockd" if not name or name.endswith(".py") else name


def split_qemu_opts(text: str) -> list[str]:
    """Split on single commas; ``,,`` is an escaped comma."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == ",":
            if text[i + 1 : i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _parse_bool(name: str, value: str) -> bool:
    if value in _BOOL_TRUE:
        return True
    if value in _BOOL_FALSE:
        return False
    raise GenericError(f"Parameter '{name}' expects 'on' or 'off'")


def parse_chardev(text: str) -> ChardevSpec:
    """Parse a ``--chardev`` argument the way QEMU's QemuOpts does."""
    raw: dict[str, str] = {}
    warnings: list[str] = []
    for i, part in enumerate(split_qemu_opts(text)):
        if part == "" and i > 0:
            continue
        if "=" in part:
            key, value = part.split("=", 1)
        elif i == 0:
            key, value = "backend", part
        else:
            # Deprecated short-form boolean: "server" -> on, "nowait" -> wait=off.
            if part.startswith("no") and part[2:] in _PARAMS["socket"]:
                key, value = part[2:], "off"
                warnings.append(
                    f"warning: short-form boolean option '{part}' deprecated\n"
                    f"Please use {key}=off instead"
                )
            else:
                key, value = part, "on"
                warnings.append(
                    f"warning: short-form boolean option '{part}' deprecated\n"
                    f"Please use {key}=on instead"
                )
        raw[key] = value
    chardev_id = raw.get("id")
    if chardev_id is None:
        raise GenericError("chardev: no id specified")
    if not _ID_RE.match(chardev_id):
        raise GenericError(
            "Parameter 'id' expects an identifier\n"
            "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."
        )
    backend = raw.get("backend")
    if backend is None:
        raise GenericError(f'chardev: "{chardev_id}" missing backend')
    if backend not in _PARAMS:
        raise GenericError(f"'{backend}' is not a valid char driver name")
    known = _PARAMS[backend]
    opts: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("id", "backend"):
            continue
        if key not in known and key not in _COMMON:
            raise GenericError(f"Invalid parameter '{key}'")
        kind = known.get(key, "str")
        if kind == "bool":
            opts[key] = _parse_bool(key, value)
        elif kind == "number":
            try:
                opts[key] = int(value, 0)
            except ValueError:
                raise GenericError(
                    f"Parameter '{key}' expects a number"
                ) from None
        else:
            opts[key] = value
    unsupported = sorted(k for k in opts if k in _UNSUPPORTED)
    if unsupported:
        raise GenericError(f"chardev option '{unsupported[0]}' is not supported by blockd")
    if backend == "socket" and "path" not in opts and "host" not in opts:
        # QEMU falls back to the fd= form and fails to parse the absent number.
        raise GenericError("Unable to parse FD number ")
    if backend == "socket" and "host" in opts and "port" not in opts:
        raise GenericError("chardev: socket: no port given")
    return ChardevSpec(chardev_id, backend, opts, warnings, text)


class Chardev:
    """A live character device: yields one (reader, writer) connection at a time."""

    def __init__(self, spec: ChardevSpec) -> None:
        self.spec = spec
        self.in_use = False
        self.connected = False  # a client is attached (QOM "connected")
        self._listener: socket.socket | None = None
        self._first: tuple[asyncio.StreamReader, Any] | None = None
        self._stdio_used = False

    async def open(self) -> None:
        """Create the listener (server) or connect out (client), as QEMU does at start-up."""
        spec = self.spec
        if spec.backend == "stdio":
            return
        if spec.is_server:
            self._listener = self._listen()
            if spec.wait:
                print(
                    f"{prog_name()}: --chardev {spec.text}: info: QEMU waiting for connection on: "
                    f"{spec.describe()}",
                    file=sys.stderr,
                    flush=True,
                )
                self._first = await self._accept()
        else:
            self._first = await self._connect()

    def _listen(self) -> socket.socket:
        spec = self.spec
        if "path" in spec.opts:
            path = spec.opts["path"]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                raise GenericError(
                    f"Failed to bind socket to {path}: {os.strerror(exc.errno or 0)}"
                ) from None
        else:
            host = spec.opts.get("host") or "0.0.0.0"
            port = int(spec.opts["port"])
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                raise GenericError(
                    f"Failed to bind socket: {os.strerror(exc.errno or 0)}"
                ) from None
        # One client at a time: later ones wait in the kernel's backlog, unanswered.
        sock.listen(8)
        sock.setblocking(False)
        return sock

    async def _accept(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self._listener)
        if conn.family != socket.AF_UNIX and self.spec.opts.get("nodelay"):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if conn.family == socket.AF_UNIX:
            return await asyncio.open_unix_connection(sock=conn, limit=2**20)
        return await asyncio.open_connection(sock=conn, limit=2**20)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        spec = self.spec
        try:
            if "path" in spec.opts:
                return await asyncio.open_unix_connection(spec.opts["path"], limit=2**20)
            return await asyncio.open_connection(
                spec.opts.get("host") or "localhost", int(spec.opts["port"]), limit=2**20
            )
        except OSError as exc:
            where = spec.opts.get("path") or f"{spec.opts.get('host')}:{spec.opts.get('port')}"
            raise GenericError(
                f"Failed to connect to '{where}': {os.strerror(exc.errno or 0)}"
            ) from None

    async def next_connection(self) -> tuple[asyncio.StreamReader, Any] | None:
        """The next client, or None when this chardev can serve no more."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self.spec.backend == "stdio":
            if self._stdio_used:
                return None
            self._stdio_used = True
            return await _stdio_streams()
        if self._listener is None:
            # A client-mode chardev without reconnect serves its one connection.
            return None
        return await self._accept()

    def close(self) -> None:
        """Stop listening and remove the socket file, as QEMU does on exit."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            path = self.spec.opts.get("path")
            if path and self.spec.is_server:
                with contextlib.suppress(OSError):
                    os.unlink(path)


class FileWriter:
    """A StreamWriter stand-in for a regular file on stdout.

    Pipe transports refuse regular files (uvloop even aborts), but QEMU's stdio
    chardev writes to whatever stdout is; file writes do not block for long,
    so they are done directly.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.transport = self
        self._closed = False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    async def drain(self) -> None:
        return None

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    async def wait_closed(self) -> None:
        return None


def _is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


async def _feed_from_file(fd: int, reader: asyncio.StreamReader) -> None:
    """Read a regular file on stdin into ``reader`` off the event loop."""
    loop = asyncio.get_running_loop()
    while True:
        data = await loop.run_in_executor(None, os.read, fd, 65536)
        if not data:
            reader.feed_eof()
            return
        reader.feed_data(data)


_background: set[asyncio.Task[None]] = set()


async def _stdio_streams() -> tuple[asyncio.StreamReader, Any]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    in_fd = sys.stdin.fileno()
    if _is_regular(in_fd):
        task = loop.create_task(_feed_from_file(in_fd, reader))
        _background.add(task)
        task.add_done_callback(_background.discard)
    else:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out_fd = os.dup(sys.stdout.fileno())
    if _is_regular(out_fd):
        return reader, FileWriter(out_fd)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(out_fd, "wb")
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer
