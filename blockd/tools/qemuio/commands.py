"""The qemu-io command language (qemu-io-cmds.c / qemu-io.c of QEMU 7.2).

:class:`QemuIo` interprets command lines against an open image and writes exactly
what qemu-io writes: results to ``out`` (stdout), diagnostics to ``err`` (stderr).
Every command returns 0 or a negative errno; the CLI exits with 1 when any failed.
The daemon's ``human-monitor-command qemu-io`` uses :func:`run_qemu_io_command`,
which, like QEMU's HMP, offers the commands of qemu-io-cmds.c but not
``open``/``close``/``quit`` (those live in qemu-io.c).
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from blockd.drivers.base import BlockDriver, BlockStatusFlag
from blockd.drivers.open import close_image, open_image, request_perms
from blockd.graph.accounting import AcctType
from blockd.qmp.errors import GenericError
from blockd.tools.qemuio.fmt import (
    BDRV_REQUEST_MAX_BYTES,
    CvtnumError,
    cvtnum,
    cvtnum_error,
    cvtstr,
    dump_buffer,
    report,
)
from blockd.tools.qemuio.getopt import Opt, OptError, getopt
from blockd.tools.qemuio.helptext import HELP

EINVAL = -errno.EINVAL
SECTOR = 512
NSIG = 65
PREALLOC_MODES = ("off", "metadata", "falloc", "full")

CmdFunc = Callable[["QemuIo", list[str]], Awaitable[int]]


@dataclass(frozen=True)
class Command:
    name: str
    func: CmdFunc
    altname: str | None = None
    argmin: int = 0
    argmax: int = 0
    write: bool = False
    resize: bool = False
    global_: bool = False  # CMD_FLAG_GLOBAL: runs with or without an image
    nofile_ok: bool = False


@dataclass
class OpenParams:
    """How the current image was opened (for ``reopen``)."""

    filename: str
    fmt: str | None
    read_only: bool
    cache_direct: bool
    cache_no_flush: bool
    writethrough: bool
    discard_unmap: bool
    force_share: bool
    aio: str | None
    options: dict[str, Any] = field(default_factory=dict)
    snapshot: bool = False
    copy_on_read: bool = False


def parse_cache_mode(mode: str) -> tuple[bool, bool, bool] | None:
    """bdrv_parse_cache_mode(): (direct, no_flush, writethrough) or None if invalid."""
    table = {
        "off": (True, False, False),
        "none": (True, False, False),
        "directsync": (True, False, True),
        "writeback": (False, False, False),
        "unsafe": (False, True, False),
        "writethrough": (False, False, True),
    }
    return table.get(mode)


def parse_discard_mode(mode: str) -> bool | None:
    if mode in ("off", "ignore"):
        return False
    if mode in ("on", "unmap"):
        return True
    return None


def parse_keyval(text: str) -> dict[str, str]:
    """QemuOpts "key=value,key2=value2" with ",," escaping a comma."""
    out: dict[str, str] = {}
    parts: list[str] = []
    cur = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if i + 1 < len(text) and text[i + 1] == ",":
                cur += ","
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(cur)
    for p in parts:
        if not p:
            continue
        k, sep, v = p.partition("=")
        out[k] = v if sep else "on"
    return out


def _errno_of(e: BaseException) -> int:
    if isinstance(e, OSError) and e.errno:
        return e.errno
    return errno.EIO


class QemuIo:
    """A qemu-io session: the current image plus the command table."""

    def __init__(
        self,
        out: TextIO,
        err: TextIO | None = None,
        *,
        prog: str = "qemu-io",
        blk: BlockDriver | None = None,
        standalone: bool = True,
    ) -> None:
        self.out = out
        self.err = err if err is not None else sys.stderr
        self.prog = prog
        self.blk = blk
        # Set by the daemon: request write/resize through its BlockBackend.
        self.perm_hook: Callable[[bool, bool], None] | None = None
        self.params: OpenParams | None = None
        # qemu-io runs with the write cache disabled unless -t says otherwise.
        self.writethrough = True
        self.copy_on_read = False
        self.quit = False
        self.standalone = standalone
        # Inside a monitor command QEMU's error_report() prints to the monitor
        # (the HMP reply), without the program name.
        self.monitor: TextIO | None = None
        # The BlockBackend's accounting (BlockAcctStats) when it has one:
        # aio_* commands count there, as QEMU's block_acct_* calls in qemu-io.
        self.acct: Any = None
        self.commands = {c.name: c for c in _COMMANDS if standalone or c.name not in _CLI_ONLY}
        # The node write permission was last granted on (see command()).
        self._granted: BlockDriver | None = None

    # --- plumbing -------------------------------------------------------------

    def p(self, text: str) -> None:
        self.out.write(text)

    def error_report(self, msg: str) -> None:
        if self.monitor is not None:
            self.monitor.write(f"{msg}\n")
            return
        self.out.flush()
        self.err.write(f"{self.prog}: {msg}\n")
        self.err.flush()

    def error_report_err(self, e: GenericError) -> None:
        self.error_report(e.desc)
        hint = getattr(e, "hint", None)
        if hint:
            (self.monitor or self.err).write(hint)

    def usage(self, name: str) -> int:
        args, oneline, _ = HELP[name]
        self.p(f"{name} {args} -- {oneline}\n")
        return EINVAL

    def find(self, name: str) -> Command | None:
        ct = self.commands.get(name)
        if ct is not None:
            return ct
        for c in self.commands.values():
            if c.altname == name:
                return c
        return None

    def opts(self, argv: list[str], optstring: str) -> tuple[list[Opt | OptError], list[str]]:
        return getopt(argv, optstring)

    def bad_opt(self, item: OptError, name: str) -> int:
        self.out.flush()
        self.err.write(item.message)
        self.err.flush()
        return self.usage(name)

    def num(self, arg: str) -> int | None:
        try:
            return cvtnum(arg)
        except CvtnumError as e:
            self.p(cvtnum_error(e.errno, arg))
            return None

    # --- BlockBackend-level I/O (bounds checks, write-through) ----------------

    def _check_request(self, offset: int, length: int) -> None:
        assert self.blk is not None
        size = self.blk.get_length()
        if offset < 0 or length < 0 or offset > size or size - offset < length:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    async def _pread(self, offset: int, length: int) -> bytes:
        assert self.blk is not None
        self._check_request(offset, length)
        if length == 0:
            return b""
        if self.copy_on_read:
            await self._copy_on_read(offset, length)
        data = await self.blk.read(offset, length)
        if self._reads_leave_buffer():
            # qemu-io fills its read buffer with 0xab; null-co leaves it as it is.
            return b"\xab" * length
        return data

    async def _copy_on_read(self, offset: int, length: int) -> None:
        """bdrv_co_do_copy_on_readv(): pull the clusters a read touches into the top
        layer wherever the top layer does not decide them yet (zeros as zero writes)."""
        assert self.blk is not None
        top = self.blk
        cluster = int(getattr(top, "cluster_size", 0) or 0)
        cluster = cluster or top.refresh_limits().request_alignment
        start = offset - offset % cluster
        end = min(-(-(offset + length) // cluster) * cluster, top.get_length())
        pos = start
        while pos < end:
            allocated, pnum = await _is_allocated(top, pos, end - pos)
            if pnum == 0:
                break
            if not allocated:
                data = await top.read(pos, pnum)
                if data.count(0) == len(data):
                    await top.write_zeroes(pos, pnum)
                else:
                    await top.write(pos, data)
            pos += pnum

    def _reads_leave_buffer(self) -> bool:
        node = self.blk
        while node is not None:
            if getattr(node, "leaves_read_buffer", False):
                return True
            if node.name != "raw":
                return False
            node = node.file
        return False

    async def _pwrite(self, offset: int, data: bytes, *, fua: bool = False,
                      compressed: bool = False) -> None:
        blk = self.blk
        assert blk is not None
        size = blk.get_length()
        if offset < 0 or offset > size or size - offset < len(data):
            raise OSError(errno.EIO, os.strerror(errno.EIO))  # as _check_request()
        if not data:
            return
        if self.writethrough and not fua and not compressed and self._fua_is_flush():
            # Write-through: QEMU sends FUA, emulated as write + flush of the node.
            await blk.write(offset, data, fua=True)
            return
        await blk.write(offset, data, compressed=compressed, fua=fua)
        if self.writethrough and not fua:
            await blk.flush()

    def _fua_is_flush(self) -> bool:
        """Whether a FUA write means exactly "write, then flush this node": true for
        raw over file (whose flush is the file's fdatasync), so the flush can ride
        along with the write; other formats get an explicit flush()."""
        node = self.blk
        while node is not None and node.name == "raw":
            node = node.file
        return node is not None and node.name == "file"

    async def _pwrite_zeroes(self, offset: int, length: int, *, may_unmap: bool,
                             fua: bool = False) -> None:
        assert self.blk is not None
        self._check_request(offset, length)
        if length == 0:
            return
        await self.blk.write_zeroes(offset, length, may_unmap=may_unmap)
        if fua or self.writethrough:
            await self.blk.flush()

    async def _load_vmstate(self, pos: int, length: int) -> bytes:
        """bdrv_load_vmstate(): only formats with a VM state area (driver hook)."""
        load = getattr(self.blk, "load_vmstate", None)
        if load is None:
            raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))
        data: bytes = await load(pos, length)
        return data

    async def _save_vmstate(self, pos: int, data: bytes) -> None:
        save = getattr(self.blk, "save_vmstate", None)
        if save is None:
            raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))
        await save(pos, data)

    async def _pdiscard(self, offset: int, length: int) -> None:
        assert self.blk is not None
        self._check_request(offset, length)
        if length == 0:
            return
        await self.blk.discard(offset, length)

    # --- dispatch ----------------------------------------------------------------

    async def command(self, line: str) -> int:
        """Run one command line; returns 0 or a negative errno."""
        argv = [w for w in line.split(" ") if w]
        if not argv:
            return 0
        ct = self.find(argv[0])
        if ct is None:
            self.out.flush()
            self.err.write(f'command "{argv[0]}" not found\n')
            return EINVAL
        if not ct.global_ and not ct.nofile_ok and self.blk is None:
            self.out.flush()
            self.err.write("no file open, try 'help open'\n")
            return EINVAL
        nargs = len(argv) - 1
        if nargs < ct.argmin or (ct.argmax != -1 and nargs > ct.argmax):
            self.out.flush()
            if ct.argmax == -1:
                self.err.write(
                    f"bad argument count {nargs} to {argv[0]}, "
                    f"expected at least {ct.argmin} arguments\n"
                )
            elif ct.argmin == ct.argmax:
                self.err.write(
                    f"bad argument count {nargs} to {argv[0]}, expected {ct.argmin} arguments\n"
                )
            else:
                self.err.write(
                    f"bad argument count {nargs} to {argv[0]}, expected between "
                    f"{ct.argmin} and {ct.argmax} arguments\n"
                )
            return EINVAL
        if (ct.write or ct.resize) and self.blk is not None and (
            self._granted is not self.blk or ct.resize
        ):
            try:
                if self.perm_hook is not None:
                    self.perm_hook(ct.write, ct.resize)
                else:
                    request_perms(self.blk, write=ct.write, resize=ct.resize)
            except GenericError as e:
                self.error_report_err(e)
                return -errno.EPERM
            if not ct.resize and self.perm_hook is None:
                # Write permission, once taken, stays for this node: later write
                # commands skip the request (reopen/open make a new node).
                self._granted = self.blk
        return await ct.func(self, argv)

    # --- image management (CLI) ----------------------------------------------

    async def open(self, params: OpenParams, *, image_opts: bool = False) -> int:
        """openfile() of qemu-io.c."""
        if self.blk is not None:
            self.error_report("file open already, try 'help close'")
            return 1
        if params.copy_on_read and params.read_only:
            where = f"device {params.filename}" if params.filename and not image_opts else ""
            text = "Can't use copy-on-read on read-only device"
            self.error_report(f"can't open {where}: {text}" if where else f"can't open: {text}")
            return 1
        try:
            self.blk = await open_image(
                params.filename,
                params.fmt,
                read_only=params.read_only,
                cache_direct=params.cache_direct,
                cache_no_flush=params.cache_no_flush,
                force_share=params.force_share,
                discard_unmap=params.discard_unmap,
                aio=params.aio,
                options=params.options,
                snapshot=params.snapshot,
            )
        except GenericError as e:
            where = f"device {params.filename}" if params.filename and not image_opts else ""
            msg = f"can't open {where}: {e.desc}" if where else f"can't open: {e.desc}"
            self.error_report(msg)
            hint = getattr(e, "hint", None)
            if hint:
                self.err.write(hint)
            return 1
        self.params = params
        self.writethrough = params.writethrough
        self.copy_on_read = params.copy_on_read
        return 0

    async def close(self) -> None:
        if self.blk is not None:
            blk, self.blk = self.blk, None
            try:
                await blk.flush()
            except (OSError, GenericError):
                pass
            await close_image(blk)


# --- the commands ---------------------------------------------------------------


def _offset_count(io: QemuIo, args: list[str]) -> tuple[int, int] | None:
    """OFFSET and COUNT of read/discard, with qemu-io's request limit; None
    once the error has been printed (the command then returns EINVAL)."""
    offset = io.num(args[0])
    if offset is None:
        return None
    count = io.num(args[1])
    if count is None:
        return None
    if count > BDRV_REQUEST_MAX_BYTES:
        io.p(f"length cannot exceed {BDRV_REQUEST_MAX_BYTES}, given {args[1]}\n")
        return None
    return offset, count


async def read_f(io: QemuIo, argv: list[str]) -> int:
    cflag = qflag = vflag = pflag = sflag = lflag = bflag = False
    pattern = 0
    pattern_offset = pattern_count = 0
    items, args = io.opts(argv, "bCl:pP:qs:v")
    for it in items:
        if isinstance(it, OptError):
            return io.bad_opt(it, "read")
        c, arg = it.char, it.arg or ""
        if c == "b":
            bflag = True
        elif c == "C":
            cflag = True
        elif c == "l":
            lflag = True
            n = io.num(arg)
            if n is None:
                return EINVAL
            pattern_count = n
        elif c == "P":
            pflag = True
            pat = _parse_pattern(io, arg)
            if pat < 0:
                return EINVAL
            pattern = pat
        elif c == "q":
            qflag = True
        elif c == "s":
            sflag = True
            n = io.num(arg)
            if n is None:
                return EINVAL
            pattern_offset = n
        elif c == "v":
            vflag = True
    if len(args) != 2:
        return io.usage("read")
    parsed = _offset_count(io, args)
    if parsed is None:
        return EINVAL
    offset, count = parsed
    if not pflag and (lflag or sflag):
        return io.usage("read")
    if not lflag:
        pattern_count = count - pattern_offset
    if pattern_count < 0 or pattern_count + pattern_offset > count:
        io.p("pattern verification range exceeds end of read data\n")
        return EINVAL
    if bflag and not _sector_aligned(io, offset, count):
        return EINVAL
    t1 = time.monotonic_ns()
    try:
        if bflag:
            buf = await io._load_vmstate(offset, count)
        else:
            buf = await io._pread(offset, count)
    except (OSError, GenericError) as e:
        io.p(f"read failed: {os.strerror(_errno_of(e))}\n")
        return -_errno_of(e)
    t2 = time.monotonic_ns()
    ret = 0
    if pflag:
        seg = buf[pattern_offset : pattern_offset + pattern_count]
        if seg != bytes([pattern]) * pattern_count:
            io.p(
                f"Pattern verification failed at offset {offset + pattern_offset}, "
                f"{pattern_count} bytes\n"
            )
            ret = EINVAL
    if qflag:
        return ret
    if vflag:
        io.p(dump_buffer(buf, offset))
    io.p(report("read", t2 - t1, offset, count, count, 1, cflag))
    return ret


# Valid pattern arguments already parsed ("0x5a" comes with every write of a
# script), bounded.
_PATTERNS: dict[str, int] = {}


def _parse_pattern(io: QemuIo, arg: str) -> int:
    """parse_pattern(): strtol base 0 into 0..255."""
    known = _PATTERNS.get(arg)
    if known is not None:
        return known
    try:
        v = _strtol0(arg)
    except ValueError:
        v = -1
    if v < 0 or v > 255:
        io.p(f"{arg} is not a valid pattern byte\n")
        return -1
    if len(_PATTERNS) < 1024:
        _PATTERNS[arg] = v
    return v


def _strtol0(s: str) -> int:
    t = s.strip()
    neg = t.startswith("-")
    if t[:1] in "+-" and t:
        t = t[1:]
    if t.lower().startswith("0x"):
        v = int(t[2:], 16)
    elif t.startswith("0") and len(t) > 1:
        v = int(t[1:], 8)
    else:
        v = int(t, 10) if t else 0
        if not t and s:
            raise ValueError(s)
    return -v if neg else v


def _sector_aligned(io: QemuIo, offset: int, count: int) -> bool:
    if offset % SECTOR:
        io.p(f"{offset} is not a sector-aligned value for 'offset'\n")
        return False
    if count % SECTOR:
        io.p(f"{count} is not a sector-aligned value for 'count'\n")
        return False
    return True


def _alloc_from_file(io: QemuIo, length: int, name: str) -> bytes | None:
    """qemu_io_alloc_from_file(): the file's bytes repeated to fill length."""
    try:
        with open(name, "rb") as f:
            pat = f.read(length)
    except OSError as e:
        io.out.flush()
        io.err.write(f"{name}: {os.strerror(e.errno or errno.EIO)}\n")
        return None
    if not pat:
        io.out.flush()
        io.err.write(f"{name}: file is empty\n")
        return None
    reps = -(-length // len(pat))
    return (pat * reps)[:length]


# The last pattern buffer written: scripts issue long runs of same-sized writes
# with one pattern, and bytes are immutable, so one buffer serves them all.
_last_pattern: tuple[int, int, bytes] = (-1, -1, b"")


def _pattern_buffer(pattern: int, count: int) -> bytes:
    global _last_pattern
    p, n, buf = _last_pattern
    if p != pattern or n != count:
        buf = bytes([pattern]) * count
        # Only worth keeping while it is small enough not to pin much memory.
        if count <= 1 << 20:
            _last_pattern = (pattern, count, buf)
    return buf


async def write_f(io: QemuIo, argv: list[str]) -> int:
    cflag_c = qflag = bflag = pflag = zflag = cflag = sflag = False
    fua = no_fallback = unmap = False
    pattern = 0xCD
    source = ""
    items, args = io.opts(argv, "bcCfnpP:qs:uz")
    for it in items:
        if isinstance(it, OptError):
            return io.bad_opt(it, "write")
        c, arg = it.char, it.arg or ""
        if c == "b":
            bflag = True
        elif c == "c":
            cflag = True
        elif c == "C":
            cflag_c = True
        elif c == "f":
            fua = True
        elif c == "n":
            no_fallback = True
        elif c == "P":
            pflag = True
            pat = _parse_pattern(io, arg)
            if pat < 0:
                return EINVAL
            pattern = pat
        elif c == "q":
            qflag = True
        elif c == "s":
            sflag = True
            source = arg
        elif c == "u":
            unmap = True
        elif c == "z":
            zflag = True
    if len(args) != 2:
        return io.usage("write")
    if bflag and zflag:
        io.p("-b and -z cannot be specified at the same time\n")
        return EINVAL
    if fua and (bflag or cflag):
        io.p("-f and -b or -c cannot be specified at the same time\n")
        return EINVAL
    if no_fallback and not zflag:
        io.p("-n requires -z to be specified\n")
        return EINVAL
    if unmap and not zflag:
        io.p("-u requires -z to be specified\n")
        return EINVAL
    if int(zflag) + int(pflag) + int(sflag) > 1:
        io.p("Only one of -z, -P, and -s can be specified at the same time\n")
        return EINVAL
    offset = io.num(args[0])
    if offset is None:
        return EINVAL
    count = io.num(args[1])
    if count is None:
        return EINVAL
    if count > BDRV_REQUEST_MAX_BYTES and not no_fallback:
        io.p(f"length cannot exceed {BDRV_REQUEST_MAX_BYTES} without -n, given {args[1]}\n")
        return EINVAL
    if (bflag or cflag) and not _sector_aligned(io, offset, count):
        return EINVAL
    buf = b""
    if not zflag:
        if sflag:
            got = _alloc_from_file(io, count, source)
            if got is None:
                return EINVAL
            buf = got
        else:
            buf = _pattern_buffer(pattern, count)
    t1 = time.monotonic_ns()
    try:
        if bflag:
            await io._save_vmstate(offset, buf)
        elif zflag:
            await io._pwrite_zeroes(offset, count, may_unmap=unmap, fua=fua)
        elif cflag:
            await io._pwrite(offset, buf, compressed=True)
        else:
            await io._pwrite(offset, buf, fua=fua)
    except (OSError, GenericError) as e:
        io.p(f"write failed: {os.strerror(_errno_of(e))}\n")
        return -_errno_of(e)
    t2 = time.monotonic_ns()
    if not qflag:
        io.p(report("wrote", t2 - t1, offset, count, count, 1, cflag_c))
    return 0


def _create_iovec(io: QemuIo, lens: list[str]) -> int | None:
    total = 0
    for arg in lens:
        n = io.num(arg)
        if n is None:
            return None
        if n > BDRV_REQUEST_MAX_BYTES:
            io.p(f"Argument '{arg}' exceeds maximum size {BDRV_REQUEST_MAX_BYTES}\n")
            return None
        if total > BDRV_REQUEST_MAX_BYTES - n:
            io.p(f"The total number of bytes exceed the maximum size {BDRV_REQUEST_MAX_BYTES}\n")
            return None
        total += n
    return total


async def _vector_io(io: QemuIo, argv: list[str], *, name: str, optstring: str,
                     is_write: bool, is_aio: bool) -> int:
    cflag = qflag = vflag = pflag = zflag = fua = unmap = False
    pattern = 0xCD if is_write else 0
    items, args = io.opts(argv, optstring)
    for it in items:
        if isinstance(it, OptError):
            return io.bad_opt(it, name)
        c, arg = it.char, it.arg or ""
        if c == "C":
            cflag = True
        elif c == "q":
            qflag = True
        elif c == "v":
            vflag = True
        elif c == "f":
            fua = True
        elif c == "u":
            unmap = True
        elif c == "z":
            zflag = True
        elif c == "P":
            pflag = True
            pat = _parse_pattern(io, arg)
            if pat < 0:
                return EINVAL
            pattern = pat
        elif c == "i":
            io.p(f"injecting invalid {'write' if is_write else 'read'} request\n")
            _acct_invalid(io, is_write)
            return 0
    if len(args) < 2:
        return io.usage(name)
    if is_aio and is_write:
        if zflag and len(args) != 2:
            io.p("-z supports only a single length parameter\n")
            return EINVAL
        if unmap and not zflag:
            io.p("-u requires -z to be specified\n")
            return EINVAL
        if zflag and pflag:
            io.p("-z and -P cannot be specified at the same time\n")
            return EINVAL
    offset = io.num(args[0])
    if offset is None:
        return EINVAL
    if zflag:
        size = io.num(args[1])
        if size is None:
            return EINVAL
    else:
        total = _create_iovec(io, args[1:])
        if total is None:
            if is_aio:
                _acct_invalid(io, is_write)
            return EINVAL
        size = total
    failed = f"{'aio_write' if is_aio else 'writev'} failed" if is_write else "readv failed"
    # QEMU accounts aio reads and writes, not zero writes (no block_acct_start).
    cookie = io.acct.start(size, AcctType.WRITE if is_write else AcctType.READ) \
        if is_aio and io.acct is not None and not zflag else None
    t1 = time.monotonic_ns()
    buf = b""
    try:
        if not is_write:
            buf = await io._pread(offset, size)
        elif zflag:
            await io._pwrite_zeroes(offset, size, may_unmap=unmap, fua=fua)
        else:
            await io._pwrite(offset, bytes([pattern]) * size, fua=fua)
        if cookie is not None:
            io.acct.done(cookie)
    except (OSError, GenericError) as e:
        if cookie is not None:
            io.acct.failed(cookie)
        io.p(f"{failed}: {os.strerror(_errno_of(e))}\n")
        # Asynchronous commands count as successful once submitted.
        return 0 if is_aio else -_errno_of(e)
    t2 = time.monotonic_ns()
    ret = 0
    if not is_write and pflag and buf != bytes([pattern]) * size:
        io.p(f"Pattern verification failed at offset {offset}, {size} bytes\n")
        ret = 0 if is_aio else EINVAL
    if qflag:
        return ret
    if vflag and not is_write:
        io.p(dump_buffer(buf, offset))
    io.p(report("wrote" if is_write else "read", t2 - t1, offset, size, size, 1, cflag))
    return ret


async def readv_f(io: QemuIo, argv: list[str]) -> int:
    return await _vector_io(io, argv, name="readv", optstring="CP:qv", is_write=False,
                            is_aio=False)


async def writev_f(io: QemuIo, argv: list[str]) -> int:
    return await _vector_io(io, argv, name="writev", optstring="CfqP:", is_write=True,
                            is_aio=False)


async def aio_read_f(io: QemuIo, argv: list[str]) -> int:
    return await _vector_io(io, argv, name="aio_read", optstring="CP:iqv", is_write=False,
                            is_aio=True)


async def aio_write_f(io: QemuIo, argv: list[str]) -> int:
    return await _vector_io(io, argv, name="aio_write", optstring="CfiqP:uz", is_write=True,
                            is_aio=True)


async def aio_flush_f(io: QemuIo, argv: list[str]) -> int:
    # Requests complete before their command returns: nothing is outstanding;
    # QEMU still accounts one flush around its drain.
    if io.acct is not None:
        io.acct.done(io.acct.start(0, AcctType.FLUSH))
    return 0


def _acct_invalid(io: QemuIo, is_write: bool) -> None:
    """block_acct_invalid() on the BlockBackend's stats, when it has any."""
    if io.acct is not None:
        io.acct.invalid(AcctType.WRITE if is_write else AcctType.READ)


async def flush_f(io: QemuIo, argv: list[str]) -> int:
    assert io.blk is not None
    try:
        await io.blk.flush()
    except OSError as e:
        return -_errno_of(e)
    return 0


async def truncate_f(io: QemuIo, argv: list[str]) -> int:
    assert io.blk is not None
    prealloc = "off"
    items, args = io.opts(argv, "m:")
    for it in items:
        if isinstance(it, OptError):
            return io.bad_opt(it, "truncate")
        if it.char == "m":
            if it.arg not in PREALLOC_MODES:
                io.error_report(f"Invalid preallocation mode '{it.arg}'")
                return EINVAL
            prealloc = it.arg
    if not args:
        return io.usage("truncate")
    # qemu-io takes the first operand and ignores any further ones.
    offset = io.num(args[0])
    if offset is None:
        return EINVAL
    try:
        await io.blk.truncate(offset, preallocation=prealloc, exact=False)
    except GenericError as e:
        io.error_report_err(e)
        return EINVAL
    except OSError as e:
        io.error_report(os.strerror(_errno_of(e)))
        return -_errno_of(e)
    return 0


async def length_f(io: QemuIo, argv: list[str]) -> int:
    assert io.blk is not None
    io.p(cvtstr(float(io.blk.get_length())) + "\n")
    return 0


async def info_f(io: QemuIo, argv: list[str]) -> int:
    assert io.blk is not None
    drv = io.blk
    # QEMU prints the format name, and a protocol driver's name a second time.
    io.p(f"format name: {drv.name}\n")
    if drv.is_protocol:
        io.p(f"format name: {drv.name}\n")
    cluster = int(getattr(drv, "cluster_size", 0) or 0)
    # bdrv_get_info(): file-posix and qcow2 answer, raw asks its file, null-co fails
    # (and then QEMU prints nothing more).
    node: BlockDriver | None = drv
    while node is not None and node.name == "raw":
        node = node.file
    if node is None or node.name not in ("file", "qcow2"):
        return 0
    io.p(f"cluster size: {cvtstr(float(cluster))}\n")
    vm_state = int(getattr(drv, "vm_state_offset", 0) or 0)
    l2_bits = getattr(drv, "l2_bits", None)
    if not vm_state and cluster and isinstance(l2_bits, int):
        # qcow2 keeps VM state right after the guest area the L1 table can map.
        shift = cluster.bit_length() - 1 + l2_bits
        vm_state = -(-drv.get_length() >> shift) << shift
    io.p(f"vm state offset: {cvtstr(float(vm_state))}\n")
    spec = drv.format_specific_info()
    if spec:
        io.p("Format specific information:\n")
        io.p(_dump_specific(spec, 4))
    return 0


def _qdict_hash(key: str) -> int:
    """tdb_hash() of QEMU's qobject/qdict.c, which decides QDict iteration order."""
    raw = key.encode()
    value = (0x238F13AF * len(raw)) & 0xFFFFFFFF
    for i, c in enumerate(raw):
        value = (value + (c << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def _qdict_order(obj: dict[str, Any]) -> list[str]:
    """Keys in QDict iteration order: by bucket (hash % 512); within a bucket the
    latest insertion comes first (QLIST_INSERT_HEAD)."""
    keys = list(obj)
    pos = {k: i for i, k in enumerate(keys)}
    return sorted(keys, key=lambda k: (_qdict_hash(k) % 512, -pos[k]))


def _dump_specific(obj: dict[str, Any], indent: int) -> str:
    """bdrv_image_info_specific_dump(): dump_qobject() of the visited QDict."""
    lines = []
    pad = " " * indent
    for key in _qdict_order(obj):
        value = obj[key]
        name = key.replace("-", " ")
        if isinstance(value, dict):
            lines.append(f"{pad}{name}:\n" + _dump_specific(value, indent + 4))
        elif isinstance(value, list):
            lines.append(f"{pad}{name}:\n" + _dump_list(value, indent + 4))
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}\n")
    return "".join(lines)


def _dump_list(items: list[Any], indent: int) -> str:
    lines = []
    pad = " " * indent
    for i, v in enumerate(items):
        if isinstance(v, dict):
            lines.append(f"{pad}[{i}]:\n" + _dump_specific(v, indent + 4))
        elif isinstance(v, list):
            lines.append(f"{pad}[{i}]:\n" + _dump_list(v, indent + 4))
        else:
            lines.append(f"{pad}[{i}]: {_scalar(v)}\n")
    return "".join(lines)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


async def discard_f(io: QemuIo, argv: list[str]) -> int:
    cflag = qflag = False
    items, args = io.opts(argv, "Cq")
    for it in items:
        if isinstance(it, OptError):
            return io.bad_opt(it, "discard")
        if it.char == "C":
            cflag = True
        elif it.char == "q":
            qflag = True
    if len(args) != 2:
        return io.usage("discard")
    parsed = _offset_count(io, args)
    if parsed is None:
        return EINVAL
    offset, count = parsed
    t1 = time.monotonic_ns()
    try:
        await io._pdiscard(offset, count)
    except (OSError, GenericError) as e:
        io.p(f"discard failed: {os.strerror(_errno_of(e))}\n")
        return -_errno_of(e)
    t2 = time.monotonic_ns()
    if not qflag:
        io.p(report("discard", t2 - t1, offset, count, count, 1, cflag))
    return 0


async def _is_allocated(drv: BlockDriver, offset: int, length: int) -> tuple[bool, int]:
    """bdrv_is_allocated(): this layer only; pnum 0 at/after the end."""
    size = drv.get_length()
    if offset >= size or length <= 0:
        return False, 0
    length = min(length, size - offset)
    st = await drv.block_status(offset, length)
    return bool(st.flags & BlockStatusFlag.ALLOCATED), max(1, min(st.length, length))


async def alloc_f(io: QemuIo, argv: list[str]) -> int:
    assert io.blk is not None
    parsed = io.num(argv[1])
    if parsed is None:
        return EINVAL
    start = offset = parsed
    if len(argv) == 3:
        count = io.num(argv[2])
        if count is None:
            return EINVAL
    else:
        count = SECTOR
    remaining = count
    sum_alloc = 0
    while remaining:
        try:
            allocated, num = await _is_allocated(io.blk, offset, remaining)
        except OSError as e:
            io.p(f"is_allocated failed: {os.strerror(_errno_of(e))}\n")
            return -_errno_of(e)
        offset += num
        remaining -= num
        if allocated:
            sum_alloc += num
        if num == 0:
            count -= remaining
            remaining = 0
    io.p(f"{sum_alloc}/{count} bytes allocated at offset {cvtstr(float(start))}\n")
    return 0


async def map_f(io: QemuIo, argv: list[str]) -> int:
    assert io.blk is not None
    offset = 0
    remaining = io.blk.get_length()
    while remaining:
        try:
            first, num = await _is_allocated(io.blk, offset, min(remaining,
                                                                 BDRV_REQUEST_MAX_BYTES))
            total = num
            while total < remaining:
                a, n = await _is_allocated(
                    io.blk, offset + total, min(remaining - total, BDRV_REQUEST_MAX_BYTES)
                )
                if a != first or n == 0:
                    break
                total += n
        except OSError as e:
            io.error_report(f"Failed to get allocation status: {os.strerror(_errno_of(e))}")
            return -_errno_of(e)
        if total == 0:
            io.error_report("Unexpected end of image")
            return -errno.EIO
        state = "    allocated" if first else "not allocated"
        io.p(
            f"{cvtstr(float(total))} (0x{total:x}) bytes {state} at offset "
            f"{cvtstr(float(offset))} (0x{offset:x})\n"
        )
        offset += total
        remaining -= total
    return 0


async def help_f(io: QemuIo, argv: list[str]) -> int:
    if len(argv) == 1:
        for name in sorted(io.commands):
            args, oneline, _ = HELP[name]
            io.p(f"{name} " + (f"{args} " if args is not None else "") + f"-- {oneline}\n")
        io.p("\nUse 'help commandname' for extended help.\n")
        return 0
    ct = io.find(argv[1])
    if ct is None:
        io.p(f"command {argv[1]} not found\n")
        return 0
    args, oneline, extended = HELP[ct.name]
    io.p(f"{argv[1]} " + (f"{args} " if args is not None else "") + f"-- {oneline}\n")
    io.p(extended)
    return 0


async def quit_f(io: QemuIo, argv: list[str]) -> int:
    io.quit = True
    return 0


async def close_f(io: QemuIo, argv: list[str]) -> int:
    await io.close()
    return 0


async def open_f(io: QemuIo, argv: list[str]) -> int:
    read_only = False
    force_share = False
    snapshot = False
    copy_on_read = False
    direct = no_flush = False
    writethrough = True
    discard_unmap = True
    aio: str | None = None
    options: dict[str, Any] = {}
    items, args = io.opts(argv, "snCro:ki:t:d:U")
    for it in items:
        if isinstance(it, OptError):
            return io.bad_opt(it, "open")
        c, arg = it.char, it.arg or ""
        if c == "r":
            read_only = True
        elif c == "n":
            direct, no_flush, writethrough = True, False, False
        elif c == "U":
            force_share = True
        elif c == "k":
            aio = "native"
        elif c == "i":
            if arg not in ("threads", "native", "io_uring"):
                io.error_report(f"Invalid aio option: {arg}")
                return EINVAL
            aio = arg
        elif c == "t":
            mode = parse_cache_mode(arg)
            if mode is None:
                io.error_report(f"Invalid cache option: {arg}")
                return EINVAL
            direct, no_flush, writethrough = mode
        elif c == "d":
            d = parse_discard_mode(arg)
            if d is None:
                io.error_report(f"Invalid discard option: {arg}")
                return EINVAL
            discard_unmap = d
        elif c == "o":
            options.update(parse_keyval(arg))
        elif c == "s":
            snapshot = True
        elif c == "C":
            copy_on_read = True
    if len(args) == 1:
        filename = args[0]
    elif len(args) == 0 and options:
        filename = options.pop("filename", "")
    else:
        return io.usage("open")
    fmt = options.pop("driver", None)
    params = OpenParams(filename, fmt, read_only, direct, no_flush, writethrough,
                        discard_unmap, force_share, aio, options, snapshot, copy_on_read)
    if io.blk is not None:
        io.error_report("file open already, try 'help close'")
        return -errno.EBUSY
    return -errno.EINVAL if await io.open(params) else 0


async def reopen_f(io: QemuIo, argv: list[str]) -> int:
    """Reopen with new -r/-w/-c/-o by closing and opening again."""
    assert io.blk is not None
    if io.params is None:
        io.error_report("Cannot reopen an image not opened by this session")
        return -errno.ENOTSUP
    params = OpenParams(**vars(io.params))
    params.options = dict(io.params.options)
    has_rw = False
    items, args = io.opts(argv, "c:o:rw")
    for it in items:
        if isinstance(it, OptError):
            return io.bad_opt(it, "reopen")
        c, arg = it.char, it.arg or ""
        if c == "c":
            mode = parse_cache_mode(arg)
            if mode is None:
                io.error_report(f"Invalid cache option: {arg}")
                return EINVAL
            params.cache_direct, params.cache_no_flush, params.writethrough = mode
        elif c == "o":
            params.options.update(parse_keyval(arg))
        elif c in ("r", "w"):
            if has_rw:
                io.error_report("Only one -r/-w option may be given")
                return EINVAL
            has_rw = True
            params.read_only = c == "r"
    if args:
        return io.usage("reopen")
    old = io.params
    await io.close()
    if await io.open(params):
        await io.open(old)
        return EINVAL
    return 0


async def break_f(io: QemuIo, argv: list[str]) -> int:
    # Breakpoints need a blkdebug node, which blockd-io never opens.
    io.p("Could not set breakpoint: Operation not supported\n")
    return -errno.ENOTSUP


async def remove_break_f(io: QemuIo, argv: list[str]) -> int:
    io.p(f"Could not remove breakpoint {argv[1]}: Operation not supported\n")
    return -errno.ENOTSUP


async def resume_f(io: QemuIo, argv: list[str]) -> int:
    io.p("Could not resume request: Operation not supported\n")
    return -errno.ENOTSUP


async def wait_break_f(io: QemuIo, argv: list[str]) -> int:
    # Without blkdebug no request can ever be suspended (QEMU would wait forever).
    return -errno.ENOTSUP


async def abort_f(io: QemuIo, argv: list[str]) -> int:
    io.out.flush()
    os.abort()


async def sigraise_f(io: QemuIo, argv: list[str]) -> int:
    sig = io.num(argv[1])
    if sig is None:
        return EINVAL
    if sig > NSIG:
        io.p(f"signal argument '{argv[1]}' is too large to be a valid signal\n")
        return EINVAL
    io.out.flush()
    io.err.flush()
    os.kill(os.getpid(), sig)
    return 0


async def sleep_f(io: QemuIo, argv: list[str]) -> int:
    try:
        ms = _strtol0(argv[1])
    except ValueError:
        ms = -1
    if ms < 0:
        io.p(f"{argv[1]} is not a valid number\n")
        return EINVAL
    await asyncio.sleep(ms / 1000)
    return 0


_CLI_ONLY = frozenset({"open", "close", "quit"})

_COMMANDS: tuple[Command, ...] = (
    Command("abort", abort_f, nofile_ok=True),
    Command("aio_flush", aio_flush_f),
    Command("aio_read", aio_read_f, argmin=2, argmax=-1),
    Command("aio_write", aio_write_f, argmin=2, argmax=-1, write=True),
    Command("alloc", alloc_f, altname="a", argmin=1, argmax=2),
    Command("break", break_f, argmin=2, argmax=2),
    Command("close", close_f, altname="c"),
    Command("discard", discard_f, altname="d", argmin=2, argmax=-1, write=True),
    Command("flush", flush_f, altname="f"),
    Command("help", help_f, altname="?", argmin=0, argmax=1, global_=True),
    Command("info", info_f, altname="i"),
    Command("length", length_f, altname="l"),
    Command("map", map_f),
    Command("open", open_f, altname="o", argmin=1, argmax=-1, global_=True),
    Command("quit", quit_f, altname="q", global_=True),
    Command("read", read_f, altname="r", argmin=2, argmax=-1),
    Command("readv", readv_f, argmin=2, argmax=-1),
    Command("remove_break", remove_break_f, argmin=1, argmax=1),
    Command("reopen", reopen_f, argmin=0, argmax=-1),
    Command("resume", resume_f, argmin=1, argmax=1),
    Command("sigraise", sigraise_f, argmin=1, argmax=1, nofile_ok=True),
    Command("sleep", sleep_f, argmin=1, argmax=1, nofile_ok=True),
    Command("truncate", truncate_f, altname="t", argmin=1, argmax=3, write=True, resize=True),
    Command("wait_break", wait_break_f, argmin=1, argmax=1),
    Command("write", write_f, altname="w", argmin=2, argmax=-1, write=True),
    Command("writev", writev_f, argmin=2, argmax=-1, write=True),
)


async def run_qemu_io_command(
    drv: BlockDriver, cmdline: str, out: TextIO, err: TextIO | None = None,
    *, prog: str = "qemu-storage-daemon", monitor: TextIO | None = None,
    writethrough: bool = False,
    perm_hook: Callable[[bool, bool], None] | None = None,
    acct: Any = None,
) -> None:
    """Run one qemu-io command on an open node (HMP ``qemu-io`` of QEMU).

    ``perm_hook(write, resize)``: how a command that writes or resizes gets its
    permissions (the daemon passes its BlockBackend's request), instead of
    upgrading the node's file locks directly as the standalone tool does.

    As in QEMU 7.2 (measured with qemu-system-x86_64): results (printf) go to
    ``out`` — the process's stdout; fprintf(stderr) diagnostics such as
    ``command "x" not found`` go to ``err`` (default sys.stderr); error_report()
    messages such as ``Block node is read-only`` go to ``monitor`` when given —
    that is the text of the human-monitor-command reply, where the monitor turns
    "\n" into "\r\n" — else to ``err`` prefixed with ``prog``.
    ``open``/``close``/``quit`` do not exist there, as in QEMU.
    ``writethrough``: the BlockBackend's write cache is off (FUA-like writes).
    """
    session = QemuIo(out, err, prog=prog, blk=drv, standalone=False)
    session.perm_hook = perm_hook
    session.monitor = monitor
    session.writethrough = writethrough
    session.acct = acct
    await session.command(cmdline)
    out.flush()
