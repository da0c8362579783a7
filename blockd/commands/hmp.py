"""``human-monitor-command``: a small HMP with QEMU's argument rules.

HMP output is returned as the command's string result with every ``\\n``
turned into ``\\r\\n`` (QEMU's monitor does that).  ``qemu-io`` writes the
qemu-io output itself to the daemon's stdout, as QEMU does, and returns "".
"""

from __future__ import annotations

import io
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from blockd.qmp.dispatch import CommandContext, qmp_command
from blockd.qmp.errors import GenericError
from blockd.version import PACKAGE, QEMU_MAJOR, QEMU_MICRO, QEMU_MINOR


class HMPArgError(Exception):
    """A malformed argument: QEMU prints the message plus a 'Try help' hint."""


class Cursor:
    """The unparsed rest of an HMP command line."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def word(self) -> str:
        """A command name: everything up to the next space."""
        self.skip_spaces()
        start = self.pos
        while self.pos < len(self.text) and not self.text[self.pos].isspace():
            self.pos += 1
        return self.text[start:self.pos]

    def string(self, out: io.StringIO) -> str | None:
        """QEMU's get_str: a bare word or a double-quoted string with escapes."""
        self.skip_spaces()
        text = self.text
        if self.pos >= len(text):
            return None
        buf: list[str] = []
        if text[self.pos] == '"':
            self.pos += 1
            while self.pos < len(text) and text[self.pos] != '"':
                c = text[self.pos]
                if c == "\\":
                    esc = text[self.pos + 1 : self.pos + 2]
                    self.pos += 2
                    if esc == "n":
                        buf.append("\n")
                    elif esc == "r":
                        buf.append("\r")
                    elif esc in ("\\", "'", '"'):
                        buf.append(esc)
                    else:
                        print(f"unsupported escape code: '\\{esc}'", flush=True)
                        return None
                else:
                    buf.append(c)
                    self.pos += 1
            if self.pos >= len(text):
                print("unterminated string", flush=True)
                return None
            self.pos += 1
        else:
            while self.pos < len(text) and not text[self.pos].isspace():
                buf.append(text[self.pos])
                self.pos += 1
        return "".join(buf)

    def flag(self, allowed: str) -> str | None:
        """An optional ``-X`` flag; QEMU rejects unknown ones."""
        self.skip_spaces()
        if self.text[self.pos : self.pos + 1] != "-":
            return None
        c = self.text[self.pos + 1 : self.pos + 2]
        if c not in allowed or not c:
            raise HMPArgError(f"unsupported option -{c}")
        self.pos += 2
        return c


HMPHandler = Callable[[CommandContext, Cursor, io.StringIO], Awaitable[None]]


@dataclass
class HMPCommand:
    name: str
    params: str
    help: str
    handler: HMPHandler | None = None
    sub: dict[str, HMPCommand] | None = None


HMP_COMMANDS: dict[str, HMPCommand] = {}
INFO_COMMANDS: dict[str, HMPCommand] = {}


def hmp_command(
    name: str, params: str, help_text: str, *, info: bool = False
) -> Callable[[HMPHandler], HMPHandler]:
    """Register an HMP command (``info=True``: an ``info`` subcommand)."""

    def deco(fn: HMPHandler) -> HMPHandler:
        table = INFO_COMMANDS if info else HMP_COMMANDS
        table[name] = HMPCommand(name, params, help_text, fn)
        return fn

    return deco


def _help(out: io.StringIO, prefix: str, table: dict[str, HMPCommand]) -> None:
    for cmd in sorted(table.values(), key=lambda c: c.name):
        out.write(f"{prefix}{cmd.name} {cmd.params} -- {cmd.help}\n")


async def run_hmp(ctx: CommandContext, command_line: str) -> str:
    out = io.StringIO()
    cur = Cursor(command_line)
    cur.skip_spaces()
    start = cur.pos
    name = cur.word()
    if not name:
        return ""
    table = HMP_COMMANDS
    prefix = ""
    if name == "info":
        sub = cur.word()
        if not sub:
            _help(out, "info ", INFO_COMMANDS)
            return out.getvalue().replace("\n", "\r\n")
        table, name, prefix = INFO_COMMANDS, sub, "info "
    cmd = next((c for n, c in table.items() if name in n.split("|")), None)
    if cmd is None or cmd.handler is None:
        out.write(f"unknown command: '{command_line[start:cur.pos]}'\n")
        return out.getvalue().replace("\n", "\r\n")
    try:
        await cmd.handler(ctx, cur, out)
    except HMPArgError as exc:
        out.write(f"{prefix}{name}: {exc}\n")
        out.write(f'Try "help {prefix}{name}" for more information\n')
    except GenericError as exc:
        out.write(f"Error: {exc.desc}\n")
    return out.getvalue().replace("\n", "\r\n")


@qmp_command("human-monitor-command")
async def human_monitor_command(ctx: CommandContext, args: dict[str, Any]) -> str:
    if args.get("cpu-index", 0) != 0:
        # blockd behaves like a machine with one CPU, index 0 (qmp-shell -H
        # always sends cpu-index 0); any other index does not exist.
        raise GenericError("Parameter 'cpu-index' expects a CPU number")
    return await run_hmp(ctx, args["command-line"])


@hmp_command("help|?", "[cmd]", "show the help")
async def hmp_help(ctx: CommandContext, cur: Cursor, out: io.StringIO) -> None:
    topic = cur.word()
    if topic == "info":
        _help(out, "info ", INFO_COMMANDS)
        return
    table = {n: c for n, c in HMP_COMMANDS.items() if not topic or topic in n.split("|")}
    _help(out, "", table)


# ``info`` dispatches to INFO_COMMANDS in run_hmp; this entry is for ``help``.
HMP_COMMANDS["info"] = HMPCommand(
    "info", "[subcommand]", "show various information about the system state", sub=INFO_COMMANDS
)


@hmp_command("version", "", "show the version of QEMU", info=True)
async def info_version(ctx: CommandContext, cur: Cursor, out: io.StringIO) -> None:
    out.write(f"{QEMU_MAJOR}.{QEMU_MINOR}.{QEMU_MICRO}{PACKAGE}\n")


@hmp_command("qemu-io", "[-d] [device] \"[command]\"",
             "run a qemu-io command on a block device\n\t\t\t-d: [device] is a device ID "
             "rather than a drive ID or node name")
async def hmp_qemu_io(ctx: CommandContext, cur: Cursor, out: io.StringIO) -> None:
    qdev = cur.flag("d") == "d"
    device = cur.string(out)
    if device is None:
        raise HMPArgError("block device name expected")
    command = cur.string(out)
    if command is None:
        raise HMPArgError("string expected")
    cur.skip_spaces()
    if not cur.at_end():
        raise HMPArgError("extraneous characters at the end of line")
    # Imported here: the qemu-io interpreter pulls in the drivers, which a
    # daemon that never runs HMP qemu-io need not load at start-up.
    from blockd.tools.qemuio import run_qemu_io_command

    if qdev:
        # The device's own BlockBackend, with the permissions it already holds.
        drv = ctx.daemon.lookup_device(device)
        # aio_* requests are accounted in the device's BlockBackend stats.
        backend = ctx.daemon.devices.lookup_backend(device)
        await run_qemu_io_command(drv, command, sys.stdout, monitor=out,
                                  acct=getattr(backend, "stats", None))
        return
    from blockd.graph.users import AnonymousBackend

    # hmp_qemu_io: a new unnamed BlockBackend on the node, no permissions and
    # everything shared, growing them as a command needs (QEMU's texts on conflict).
    node = ctx.daemon.graph.find(None, device)
    backend = AnonymousBackend(node)
    try:
        # qemu-io output goes to the daemon's stdout; error_report() text
        # becomes the monitor reply, as in QEMU.
        await run_qemu_io_command(node.driver, command, sys.stdout, monitor=out,
                                  perm_hook=backend.request)
    finally:
        backend.close()
