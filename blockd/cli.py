"""qemu-storage-daemon's command line, so QSD scripts run blockd unchanged.

Options are processed like QSD 7.2: a first pass handles ``--help``,
``--version``, ``--daemonize`` and ``--pidfile``; a second pass applies
``--chardev``, ``--monitor``, ``--blockdev`` and ``--object`` in the order
given.  Errors print ``blockd: --opt ARG: message`` and exit with status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from blockd import __version__
from blockd.chardev import parse_chardev, prog_name
from blockd.qmp.errors import QMPError
from blockd.version import QEMU_MAJOR, QEMU_MICRO, QEMU_MINOR

log = logging.getLogger("blockd")

# name -> takes an argument.  Short options: -h, -V, -T ARG (getopt "-hT:V").
LONG_OPTIONS: dict[str, bool] = {
    "blockdev": True, "chardev": True, "daemonize": False, "export": True, "help": False,
    "monitor": True, "nbd-server": True, "object": True, "pidfile": True, "trace": True,
    "version": False, "log-level": True,
}
SHORT_OPTIONS: dict[str, bool] = {"h": False, "T": True, "V": False}
SHORT_TO_LONG = {"h": "help", "T": "trace", "V": "version"}

USAGE = f"""\
Usage: blockd [options]
blockd {__version__}: a QMP daemon emulating QEMU {QEMU_MAJOR}.{QEMU_MINOR}'s block layer \
(qemu-storage-daemon's command line)

  -h, --help             display this help and exit
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                         accepted for compatibility; blockd has no trace events
  -V, --version          output version information and exit

  --blockdev [driver=]<driver>[,node-name=<N>][,discard=ignore|unmap]
             [,cache.direct=on|off][,cache.no-flush=on|off]
             [,read-only=on|off][,auto-read-only=on|off]
             [,force-share=on|off][,detect-zeroes=on|off|unmap]
             [,driver specific parameters...]
                         configure a block backend

  --chardev socket,id=<id>,path=<path>[,server=on|off][,wait=on|off]
  --chardev socket,id=<id>,host=<host>,port=<port>[,server=on|off][,wait=on|off]
  --chardev stdio,id=<id>
                         configure a character device backend

  --daemonize            daemonize the process, and have the parent exit
                         once startup is complete

  --monitor [chardev=]name[,mode=control][,pretty[=on|off]]
                         configure a QMP monitor

  --object help          list object types that can be added
  --object <type>[,<property>=<value>...]
                         create a new object of type <type>, setting
                         properties in the order they are specified. Note
                         that the 'id' property must be set.

  --pidfile <path>       write process ID to a file after startup

  --log-level <level>    blockd's own diagnostics on stderr: debug, info,
                         warning (default) or error
"""


class UsageError(Exception):
    """A command-line error; printed as ``prog: message``."""


@dataclass
class Option:
    name: str  # long name
    arg: str | None
    text: str  # as QEMU names the location: "--blockdev ARG" or the bare argument


def getopt(argv: Sequence[str]) -> list[Option]:
    """glibc getopt_long with optstring "-hT:V": ordered, prefixes, --opt=value."""
    out: list[Option] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            out += [Option("", a, a) for a in argv[i:]]
            break
        if arg.startswith("--"):
            body = arg[2:]
            name, eq, value = body.partition("=")
            matches = [n for n in LONG_OPTIONS if n.startswith(name)]
            if name in LONG_OPTIONS:
                matches = [name]
            if not matches:
                raise UsageError(f"unrecognized option '{arg}'")
            if len(matches) > 1:
                poss = " ".join(f"'--{m}'" for m in matches)
                raise UsageError(f"option '{arg}' is ambiguous; possibilities: {poss}")
            name = matches[0]
            if LONG_OPTIONS[name]:
                if not eq:
                    if i >= len(argv):
                        raise UsageError(f"option '--{name}' requires an argument")
                    value = argv[i]
                    i += 1
                out.append(Option(name, value, f"--{name} {value}"))
            else:
                if eq:
                    raise UsageError(f"option '--{name}' doesn't allow an argument")
                out.append(Option(name, None, f"--{name}"))
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                c = arg[j]
                j += 1
                if c not in SHORT_OPTIONS:
                    raise UsageError(f"invalid option -- '{c}'")
                if SHORT_OPTIONS[c]:
                    value = arg[j:]
                    if not value:
                        if i >= len(argv):
                            raise UsageError(f"option requires an argument -- '{c}'")
                        value = argv[i]
                        i += 1
                    out.append(Option(SHORT_TO_LONG[c], value, f"-{c} {value}"))
                    break
                out.append(Option(SHORT_TO_LONG[c], None, f"-{c}"))
        else:
            out.append(Option("", arg, arg))
    return out


def fail(message: str) -> NoReturn:
    print(f"{prog_name()}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


# -- pid file ---------------------------------------------------------------------


class PidFile:
    """QEMU's qemu_write_pidfile: created 0600, locked, removed at exit."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.fd = -1

    def write(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(
                f"cannot create PID file: Could not create '{self.path}': "
                f"{os.strerror(exc.errno or 0)}"
            ) from None
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = -1
            raise UsageError(
                "cannot create PID file: Cannot lock pid file: Resource temporarily unavailable"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def remove(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self.fd)
            self.fd = -1


# -- daemonize --------------------------------------------------------------------


class Daemonizer:
    """Fork early; the parent exits once the child reports start-up done (or failed)."""

    def __init__(self) -> None:
        self.write_fd = -1

    def fork(self) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid > 0:
            os.close(write_fd)
            status = os.read(read_fd, 1)
            # QEMU's parent exits 0 only when the child said so.
            os._exit(0 if status == b"\0" else 1)
        os.close(read_fd)
        os.setsid()
        self.write_fd = write_fd

    def started(self) -> None:
        """Start-up succeeded: detach from the terminal like QEMU's os_setup_post."""
        if self.write_fd < 0:
            return
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        os.write(self.write_fd, b"\0")
        os.close(self.write_fd)
        self.write_fd = -1


# -- option handlers -------------------------------------------------------------------


def _parse_json_or_keyval(text: str, implied: str) -> tuple[Any, bool]:
    """(value, is_keyval): QSD treats an argument starting with '{' as JSON."""
    if text.startswith("{"):
        from blockd.qmp.json_parser import qobject_from_json

        return qobject_from_json(text), False
    from blockd.qapi import keyval_parse

    return keyval_parse(text, implied), True


class QMPErrorText(Exception):
    """A QEMU error message raised outside a QMP command."""


async def apply_option(daemon: Any, opt: Option) -> None:
    schema = daemon.schema
    if opt.name == "chardev":
        assert opt.arg is not None
        spec = parse_chardev(opt.arg)
        for warning in spec.warnings:
            print(f"{prog_name()}: --chardev {opt.arg}: {warning}", file=sys.stderr)
        await daemon.add_chardev(spec)
    elif opt.name == "monitor":
        from blockd.qapi import keyval_parse

        assert opt.arg is not None
        mon = schema.visit_keyval("MonitorOptions", keyval_parse(opt.arg, "chardev"))
        if mon.get("mode", "control") != "control":
            raise QMPErrorText("Only QMP is supported")
        daemon.add_monitor(mon["chardev"], bool(mon.get("pretty", False)))
    elif opt.name == "blockdev":
        assert opt.arg is not None
        value, is_keyval = _parse_json_or_keyval(opt.arg, "driver")
        args = (schema.visit_keyval("BlockdevOptions", value) if is_keyval
                else schema.visit("BlockdevOptions", value))
        await daemon.execute("blockdev-add", args)
    elif opt.name == "object":
        assert opt.arg is not None
        if opt.arg == "help":
            print("List of user creatable objects:")
            from blockd.qom import UserCreatable

            for name in sorted(UserCreatable.types):
                print(f"  {name}")
            raise SystemExit(0)
        value, is_keyval = _parse_json_or_keyval(opt.arg, "qom-type")
        args = (schema.visit_keyval("ObjectOptions", value) if is_keyval
                else schema.visit("ObjectOptions", value))
        await daemon.execute("object-add", args)
    elif opt.name in ("export", "nbd-server"):
        raise QMPErrorText(f"--{opt.name} is not supported by blockd")
    elif opt.name == "trace":
        pass  # blockd has no trace events; accepted so QSD command lines still work
    elif opt.name == "":
        raise QMPErrorText("Unexpected argument")


# -- main -----------------------------------------------------------------------------


def _event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency but optional at runtime
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _run(options: list[Option], pidfile: PidFile | None, daemonizer: Daemonizer) -> int:
    from blockd.daemon import Daemon

    daemon = Daemon()
    try:
        for opt in options:
            try:
                await apply_option(daemon, opt)
            except QMPError as exc:
                raise UsageError(f"{opt.text}: {exc.desc}") from None
            except QMPErrorText as exc:
                raise UsageError(f"{opt.text}: {exc}") from None
        if pidfile is not None:
            pidfile.write()
    except UsageError:
        await daemon.stop()
        raise
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, daemon.request_shutdown)
    daemonizer.started()
    log.info("blockd %s ready", __version__)
    try:
        await daemon.serve()
    finally:
        if pidfile is not None:
            pidfile.remove()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        options = getopt(args)
    except UsageError as exc:
        fail(str(exc))
    # First pass (QSD's pre-init pass): help, version, daemonize, pidfile, log level.
    daemonize = False
    pidfile: PidFile | None = None
    level = "warning"
    rest: list[Option] = []
    for opt in options:
        if opt.name == "help":
            sys.stdout.write(USAGE)
            return 0
        if opt.name == "version":
            print(f"blockd version {__version__} (emulating QEMU "
                  f"{QEMU_MAJOR}.{QEMU_MINOR}.{QEMU_MICRO})")
            print("Copyright (c) the blockd developers")
            return 0
        if opt.name == "daemonize":
            daemonize = True
        elif opt.name == "pidfile":
            assert opt.arg is not None
            pidfile = PidFile(opt.arg)
        elif opt.name == "log-level":
            level = opt.arg or ""
            if level not in ("debug", "info", "warning", "error"):
                fail(f"--log-level {level}: expected debug, info, warning or error")
        else:
            rest.append(opt)
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"{prog_name()}: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    daemonizer = Daemonizer()
    if daemonize:
        daemonizer.fork()
    _event_loop_policy()
    try:
        return asyncio.run(_run(rest, pidfile, daemonizer))
    except UsageError as exc:
        fail(str(exc))
