"""``blockd-io``: a drop-in for ``qemu-io`` 7.2 over blockd's drivers.

Same options, same command language, same output and exit status (1 when the
image cannot be opened or any command failed).
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import Coroutine
from typing import Any

from blockd.io.executor import set_inline_io
from blockd.tools.qemuio.commands import (
    OpenParams,
    QemuIo,
    parse_cache_mode,
    parse_discard_mode,
    parse_keyval,
)
from blockd.tools.qemuio.getopt import Opt, OptError, getopt

_USAGE = """Usage: {prog} [OPTIONS]... [-c STRING]... [file]
QEMU Disk exerciser

  --object OBJECTDEF   define an object such as 'secret' for
                       passwords and/or encryption keys
  --image-opts         treat file as option string
  -c, --cmd STRING     execute command with its arguments
                       from the given string
  -f, --format FMT     specifies the block driver to use
  -r, --read-only      export read-only
  -s, --snapshot       use snapshot file
  -n, --nocache        disable host cache, short for -t none
  -C, --copy-on-read   enable copy-on-read
  -m, --misalign       misalign allocations for O_DIRECT
  -k, --native-aio     use kernel AIO implementation
                       (Linux only, prefer use of -i)
  -i, --aio=MODE       use AIO mode (threads, native or io_uring)
  -t, --cache=MODE     use the given cache mode for the image
  -d, --discard=MODE   use the given discard mode for the image
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                       specify tracing options
                       see qemu-img(1) man page for full description
  -U, --force-share    force shared permissions
  -h, --help           display this help and exit
  -V, --version        output version information and exit

See '{prog} -c help' for information on available commands.

See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
More information on the QEMU project at <https://qemu.org>.
"""

# Long options -> short letter (None: long-only) and whether they take an argument.
_LONG: dict[str, tuple[str, bool]] = {
    "help": ("h", False),
    "version": ("V", False),
    "cmd": ("c", True),
    "format": ("f", True),
    "read-only": ("r", False),
    "snapshot": ("s", False),
    "nocache": ("n", False),
    "copy-on-read": ("C", False),
    "misalign": ("m", False),
    "native-aio": ("k", False),
    "discard": ("d", True),
    "cache": ("t", True),
    "trace": ("T", True),
    "object": ("\x01", True),
    "image-opts": ("\x02", False),
    "force-share": ("U", False),
    "aio": ("i", True),
}
_SHORTS = "hVc:d:f:rsnCmki:t:T:U\x01:\x02"


def _expand_long(argv: list[str], prog: str) -> list[str] | str:
    """Rewrite --long[=value] options into short ones; an error text on failure."""
    out = [argv[0]]
    i = 1
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            out.extend(argv[i - 1 :])
            break
        if not a.startswith("--"):
            out.append(a)
            continue
        name, eq, value = a[2:].partition("=")
        matches = [k for k in _LONG if k.startswith(name)]
        if name in _LONG:
            matches = [name]
        if len(matches) != 1:
            return f"{prog}: unrecognized option '{a}'\n"
        short, has_arg = _LONG[matches[0]]
        if has_arg:
            if not eq:
                if i >= len(argv):
                    return f"{prog}: option '--{matches[0]}' requires an argument\n"
                value = argv[i]
                i += 1
            out.extend([f"-{short}", value])
        else:
            if eq:
                return f"{prog}: option '--{matches[0]}' doesn't allow an argument\n"
            out.append(f"-{short}")
    return out


def _version(prog: str) -> str:
    from blockd.version import PACKAGE, QEMU_MAJOR, QEMU_MICRO, QEMU_MINOR

    return (
        f"{prog} version {QEMU_MAJOR}.{QEMU_MINOR}.{QEMU_MICRO} ({PACKAGE})\n"
        "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n"
    )


async def amain(argv: list[str]) -> int:
    prog = os.path.basename(argv[0]) if argv else "blockd-io"
    out, err = sys.stdout, sys.stderr
    expanded = _expand_long(argv, argv[0] if argv else prog)
    if isinstance(expanded, str):
        err.write(expanded)
        out.write(_USAGE.format(prog=prog))
        return 1
    items, operands = getopt(expanded, _SHORTS)
    cmds: list[str] = []
    fmt: str | None = None
    read_only = False
    direct = no_flush = False
    writethrough = True
    discard_unmap = True
    force_share = False
    image_opts = False
    snapshot = False
    copy_on_read = False
    aio: str | None = None
    session = QemuIo(out, err, prog=prog)
    for it in items:
        if isinstance(it, OptError):
            # glibc's getopt names the program by argv[0] exactly as invoked.
            err.write(it.message)
            out.write(_USAGE.format(prog=prog))
            return 1
        assert isinstance(it, Opt)
        c, arg = it.char, it.arg or ""
        if c == "h":
            out.write(_USAGE.format(prog=prog))
            return 0
        if c == "V":
            out.write(_version(prog))
            return 0
        if c == "c":
            cmds.append(arg)
        elif c == "f":
            fmt = arg
        elif c == "r":
            read_only = True
        elif c == "n":
            direct, no_flush, writethrough = True, False, False
        elif c == "d":
            d = parse_discard_mode(arg)
            if d is None:
                session.error_report(f"Invalid discard option: {arg}")
                return 1
            discard_unmap = d
        elif c == "t":
            mode = parse_cache_mode(arg)
            if mode is None:
                session.error_report(f"Invalid cache option: {arg}")
                return 1
            direct, no_flush, writethrough = mode
        elif c == "k":
            aio = "native"
        elif c == "i":
            if arg not in ("threads", "native", "io_uring"):
                session.error_report(f"Invalid aio option: {arg}")
                return 1
            aio = arg
        elif c == "U":
            force_share = True
        elif c == "\x02":
            image_opts = True
        elif c == "s":
            snapshot = True
        elif c == "C":
            copy_on_read = True
        elif c == "\x01":
            # --object: secrets only matter to encrypted images, which blockd does not
            # open; accept them so command lines written for qemu-io keep working.
            qom_type = arg.split(",", 1)[0]
            if qom_type.startswith("qom-type="):
                qom_type = qom_type[len("qom-type="):]
            if qom_type != "secret":
                session.error_report(f"--object {qom_type} is not supported by {prog}")
                return 1
        elif c == "T":
            session.error_report(f"option -T is not supported by {prog}")
            return 1
        # -m (misalign) only matters for O_DIRECT buffer addresses: nothing to do.
    if len(operands) > 1:
        out.write(_USAGE.format(prog=prog))
        return 1
    if fmt is not None and image_opts:
        session.error_report("--image-opts and -f are mutually exclusive")
        return 1

    last_error = 0
    try:
        if operands:
            filename = operands[0]
            options: dict[str, Any] = {}
            if image_opts:
                options = dict(parse_keyval(filename))
                fmt = options.pop("driver", None)
                filename = options.pop("filename", "") if "filename" in options else ""
                if fmt is None and not filename and "file" not in options and not any(
                    k.startswith("file.") for k in options
                ):
                    session.error_report("can't open: Must specify either driver or file")
                    return 1
            params = OpenParams(filename, fmt, read_only, direct, no_flush, writethrough,
                                discard_unmap, force_share, aio, options, snapshot,
                                copy_on_read)
            if await session.open(params, image_opts=image_opts):
                return 1
        session.writethrough = writethrough
        if cmds:
            for line in cmds:
                if session.quit:
                    break
                ret = await session.command(line)
                if ret < 0:
                    last_error = ret
        else:
            last_error = await _interactive(session, prog)
    finally:
        out.flush()
        await session.close()
    return 1 if last_error < 0 else 0


class _StdinLines:
    """Line reader for stdin that never blocks the event loop.

    Pipes and terminals are watched by the loop (cheap); a regular file cannot be
    polled but never blocks either, so it is read directly.
    """

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.direct = False

    async def setup(self) -> None:
        try:
            mode = os.fstat(sys.stdin.fileno()).st_mode
        except (OSError, ValueError):
            mode = 0
        if stat.S_ISREG(mode):
            self.direct = True
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        try:
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
            )
            self.reader = reader
        except (OSError, ValueError):
            self.direct = False

    def would_block(self) -> bool:
        """True unless a whole line is already buffered (or stdin is a file)."""
        if self.direct:
            return False
        if self.reader is not None:
            # StreamReader has no public "buffered data" query; peek at its buffer.
            buffered: bytes = getattr(self.reader, "_buffer", b"")
            return b"\n" not in buffered
        return True

    async def readline(self) -> str:
        if self.reader is not None:
            return (await self.reader.readline()).decode("utf-8", "surrogateescape")
        if self.direct:
            return sys.stdin.readline()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, sys.stdin.readline)


async def _interactive(session: QemuIo, prog: str) -> int:
    """Read commands from stdin with the "PROG> " prompt until EOF or quit."""
    lines = _StdinLines()
    await lines.setup()
    last_error = 0
    while not session.quit:
        session.out.write(f"{prog}> ")
        if lines.would_block():
            # Only a reader that may wait needs to see the prompt now.
            session.out.flush()
        line = await lines.readline()
        if not line:
            break
        ret = await session.command(line.rstrip("\n"))
        if ret < 0:
            last_error = ret
    return last_error


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when available: cheaper wake-ups from the I/O threads."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``blockd-io``)."""
    args = list(sys.argv if argv is None else argv)
    # One command at a time and nothing else to serve: data I/O on the loop
    # thread saves the pool hand-off that otherwise dominates a small request.
    set_inline_io(True)
    try:
        rc = _run(amain(args))
    except KeyboardInterrupt:
        rc = 130
    sys.stdout.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())
