"""``qemu-img compare``: guest-visible equality, optionally strict about allocation.

Exit codes: 0 identical, 1 different, 2 an image could not be opened, 3 block
status failed, 4 read error.  Content differences are reported at 512-byte
sector granularity, as QEMU does.
"""

from __future__ import annotations

from blockd.drivers.base import BlockDriver
from blockd.qmp.errors import GenericError
from blockd.tools.img_cmds.common import Console, ImgExit, parse_cache
from blockd.tools.img_cmds.getopt import LongOpt, getopt
from blockd.tools.img_cmds.image import (
    BDRV_ALLOCATED,
    BDRV_ZERO,
    close_quietly,
    image_length,
    open_for_tool,
    read_padded,
    status_above,
)
from blockd.tools.img_cmds.progress import Progress, f32
from blockd.tools.img_cmds.usage import show_help

IO_BUF_SIZE = 2 << 20
SECTOR = 512

LONGOPTS = [
    LongOpt("help", False, "h"),
    LongOpt("image-opts", False, "image-opts"),
    LongOpt("force-share", False, "U"),
]


def progress_delta(chunk: int, base: int) -> float:
    """``((float) chunk / base) * 100`` in single precision."""
    return f32(f32(f32(chunk) / f32(base)) * 100)


def find_nonzero(buf: bytes) -> int:
    """Start of the first sector holding a non-zero byte, or -1."""
    if buf.count(0) == len(buf):
        return -1
    for i in range(0, len(buf), SECTOR):
        if buf[i : i + SECTOR].count(0) != len(buf[i : i + SECTOR]):
            return i
    return -1


def compare_buffers(a: bytes, b: bytes) -> tuple[bool, int]:
    """(first sector differs, length of the run of sectors sharing that answer)."""
    n = len(a)
    if a == b:
        return False, n
    first = min(n, SECTOR)
    res = a[:first] != b[:first]
    i = first
    while i < n:
        ln = min(n - i, SECTOR)
        if (a[i : i + ln] != b[i : i + ln]) != res:
            break
        i += ln
    return res, i


class _Compare:
    def __init__(self, con: Console, quiet: bool) -> None:
        self.con = con
        self.quiet = quiet

    async def read(self, node: BlockDriver, name: str, offset: int, n: int) -> bytes:
        try:
            return await read_padded(node, offset, n)
        except (GenericError, OSError) as e:
            text = e.desc if isinstance(e, GenericError) else (e.strerror or str(e))
            raise self.con.fail(
                f"Error while reading offset {offset} of {name}: {text}", 4
            ) from None

    async def check_empty(self, node: BlockDriver, name: str, offset: int, n: int) -> None:
        idx = find_nonzero(await self.read(node, name, offset, n))
        if idx >= 0:
            self.con.qprint(self.quiet, f"Content mismatch at offset {offset + idx}!\n")
            raise ImgExit(1)

    async def status(self, node: BlockDriver, name: str, offset: int, n: int) -> tuple[int, int]:
        try:
            st = await status_above(node, offset, n)
        except (GenericError, OSError):
            raise self.con.fail(f"Sector allocation test failed for {name}", 3) from None
        return st.flags, st.pnum


async def run(con: Console, argv: list[str]) -> int:
    fmt1: str | None = None
    fmt2: str | None = None
    progress = quiet = strict = force_share = False
    src_cache = "writeback"
    opts, args = getopt(con, argv, ":hf:F:T:pqsU", LONGOPTS)
    for key, val in opts:
        if key == "h":
            raise show_help(con)
        if key == "f":
            fmt1 = val
        elif key == "F":
            fmt2 = val
        elif key == "T":
            assert val is not None
            src_cache = val
        elif key == "p":
            progress = True
        elif key == "q":
            quiet = True
        elif key == "s":
            strict = True
        elif key == "image-opts":
            con.image_opts = True
        elif key == "U":
            force_share = True
    if quiet:
        progress = False
    if len(args) != 2:
        raise con.error_exit("Expecting two image file names")
    prog = Progress(con, progress, 2.0)
    try:
        direct = parse_cache(con, src_cache, "source cache", 2)
        return await _compare(
            con, args[0], args[1], fmt1, fmt2, quiet, strict, force_share, direct, prog
        )
    except ImgExit as e:
        return e.code
    finally:
        prog.end()


async def _compare(
    con: Console,
    name1: str,
    name2: str,
    fmt1: str | None,
    fmt2: str | None,
    quiet: bool,
    strict: bool,
    force_share: bool,
    direct: bool,
    prog: Progress,
) -> int:
    bs1 = await open_for_tool(
        con, name1, fmt1, force_share=force_share, code=2, cache_direct=direct
    )
    bs2: BlockDriver | None = None
    try:
        bs2 = await open_for_tool(
            con, name2, fmt2, force_share=force_share, code=2, cache_direct=direct
        )
        return await _walk(_Compare(con, quiet), bs1, bs2, name1, name2, strict, prog)
    finally:
        await close_quietly(bs2)
        await close_quietly(bs1)


async def _walk(
    c: _Compare,
    bs1: BlockDriver,
    bs2: BlockDriver,
    name1: str,
    name2: str,
    strict: bool,
    prog: Progress,
) -> int:
    size1, size2 = image_length(bs1), image_length(bs2)
    total = min(size1, size2)
    base = max(size1, size2)
    prog.print(0, 100)
    if strict and size1 != size2:
        c.con.qprint(c.quiet, "Strict mode: Image size mismatch!\n")
        return 1
    offset = 0
    while offset < total:
        st1, pnum1 = await c.status(bs1, name1, offset, size1 - offset)
        st2, pnum2 = await c.status(bs2, name2, offset, size2 - offset)
        alloc1, alloc2 = bool(st1 & BDRV_ALLOCATED), bool(st2 & BDRV_ALLOCATED)
        chunk = min(pnum1, pnum2)
        if strict and st1 != st2:
            c.con.qprint(c.quiet, f"Strict mode: Offset {offset} block status mismatch!\n")
            return 1
        if st1 & BDRV_ZERO and st2 & BDRV_ZERO:
            pass
        elif alloc1 == alloc2:
            if alloc1:
                chunk = min(chunk, IO_BUF_SIZE)
                buf1 = await c.read(bs1, name1, offset, chunk)
                buf2 = await c.read(bs2, name2, offset, chunk)
                differs, pnum = compare_buffers(buf1, buf2)
                if differs or pnum != chunk:
                    where = offset + (0 if differs else pnum)
                    c.con.qprint(c.quiet, f"Content mismatch at offset {where}!\n")
                    return 1
        else:
            chunk = min(chunk, IO_BUF_SIZE)
            if alloc1:
                await c.check_empty(bs1, name1, offset, chunk)
            else:
                await c.check_empty(bs2, name2, offset, chunk)
        offset += chunk
        prog.print(progress_delta(chunk, base), 100)

    if size1 != size2:
        c.con.qprint(c.quiet, "Warning: Image size mismatch!\n")
        over, over_name = (bs1, name1) if size1 > size2 else (bs2, name2)
        while offset < base:
            st, chunk = await c.status(over, over_name, offset, base - offset)
            if st & BDRV_ALLOCATED and not st & BDRV_ZERO:
                chunk = min(chunk, IO_BUF_SIZE)
                await c.check_empty(over, over_name, offset, chunk)
            offset += chunk
            prog.print(progress_delta(chunk, base), 100)
    c.con.qprint(c.quiet, "Images are identical.\n")
    return 0
