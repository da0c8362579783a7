"""``qemu-img convert``: copy one or more images (concatenated) into a new or
existing target, keeping it sparse, optionally compressed or on a backing file.

The copy follows QEMU's two passes: first classify the source into runs of
data, zeros and "leave to the target's backing file" (that also sizes the
progress bar), then copy the data runs in chunks of at most 2 MiB, skipping
zero sectors inside them when they span at least ``-S`` bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from blockd.drivers.base import BlockDriver, driver_class
from blockd.qmp.errors import GenericError
from blockd.tools.img_cmds.common import Console, ImgExit, OptionError, parse_cache
from blockd.tools.img_cmds.create import CreateError, create_qcow2_image, create_raw_image, cvtnum
from blockd.tools.img_cmds.getopt import LongOpt, getopt
from blockd.tools.img_cmds.image import (
    BDRV_DATA,
    BDRV_ZERO,
    close_quietly,
    image_length,
    layer_status,
    open_for_tool,
    read_padded,
    status_above,
)
from blockd.tools.img_cmds.opts import (
    CREATE_OPTS,
    QemuOpts,
    accumulate,
    format_help,
    has_help_option,
    is_valid_option_list,
)
from blockd.tools.img_cmds.progress import Progress
from blockd.tools.img_cmds.usage import show_help

SECTOR = 512
BDRV_REQUEST_MAX_SECTORS = (1 << 31) // SECTOR - 8  # INT_MAX bytes, sector aligned
MAX_BUF_SECTORS = 32768
MAX_COROUTINES = 16

BLK_ZERO, BLK_DATA, BLK_BACKING_FILE = "zero", "data", "backing"

LONGOPTS = [
    LongOpt("help", False, "h"),
    LongOpt("image-opts", False, "image-opts"),
    LongOpt("target-is-zero", False, "target-is-zero"),
    LongOpt("force-share", False, "U"),
]


@dataclass
class ConvertState:
    """ImgConvertState: sources, target and the run currently being classified."""

    sources: list[BlockDriver]
    src_names: list[str]
    src_sectors: list[int]
    src_alignment: list[int]
    target: BlockDriver | None = None
    total_sectors: int = 0
    min_sparse: int = 8
    alignment: int = 1
    buf_sectors: int = 4096
    cluster_sectors: int = 0
    compressed: bool = False
    target_has_backing: bool = False
    target_backing_sectors: int = -1
    has_zero_init: bool = False
    allocated_sectors: int = 0
    sector_next_status: int = 0
    status: str = BLK_DATA
    src_offsets: list[int] = field(default_factory=list)

    def select_part(self, sector: int) -> tuple[int, int]:
        """(source index, first sector of that source) holding ``sector``."""
        start = 0
        for i, n in enumerate(self.src_sectors):
            if sector < start + n:
                return i, start
            start += n
        return len(self.src_sectors) - 1, start - self.src_sectors[-1]


async def iteration_sectors(s: ConvertState, sector: int) -> int:
    """convert_iteration_sectors(): length and kind of the run starting at ``sector``."""
    src, src_start = s.select_part(sector)
    n = min(s.total_sectors - sector, BDRV_REQUEST_MAX_SECTORS)
    post_backing_zero = False
    if s.target_backing_sectors >= 0:
        if sector >= s.target_backing_sectors:
            post_backing_zero = True
        elif sector + n > s.target_backing_sectors:
            n = s.target_backing_sectors - sector
    if s.sector_next_status <= sector:
        node = s.sources[src]
        offset = (sector - src_start) * SECTOR
        count = min(n, s.src_sectors[src] - (sector - src_start)) * SECTOR
        if s.target_has_backing:
            st = await layer_status(node, offset, count)
        else:
            st = await status_above(node, offset, count)
        m = -(-st.pnum // SECTOR)
        tail = (sector - src_start + m) % s.src_alignment[src]
        if m > tail:
            m -= tail
        if st.flags & BDRV_ZERO:
            s.status = BLK_BACKING_FILE if post_backing_zero else BLK_ZERO
        elif st.flags & BDRV_DATA:
            s.status = BLK_DATA
        else:
            s.status = BLK_BACKING_FILE if s.target_has_backing else BLK_DATA
        s.sector_next_status = sector + m
    n = min(n, s.sector_next_status - sector)
    if s.status == BLK_DATA:
        n = min(n, s.buf_sectors)
    if s.compressed:
        if n < s.cluster_sectors:
            n = min(s.cluster_sectors, s.total_sectors - sector)
            s.status = BLK_DATA
        else:
            n -= n % s.cluster_sectors
    return n


_ZERO_SECTOR = bytes(SECTOR)


def zero_map(buf: bytes | memoryview, n: int) -> list[bool]:
    """Per sector: does it hold only zeros?  (One pass; no copies of ``buf``.)"""
    mv = memoryview(buf)
    out = []
    for i in range(n):
        chunk = mv[i * SECTOR : (i + 1) * SECTOR]
        out.append(chunk == _ZERO_SECTOR[: len(chunk)])
    return out


def _allocated_run(
    zeros: list[bool], start: int, n: int, sector: int, alignment: int
) -> tuple[bool, int]:
    if n <= 0:
        return False, 0
    is_zero = zeros[start]
    i = 1
    while i < n and zeros[start + i] == is_zero:
        i += 1
    if i == n:
        return not is_zero, i
    tail = (sector + i) & (alignment - 1)
    if tail:
        if is_zero and i <= tail:
            # The next sector is data and rewrites this tail anyway (RMW).
            is_zero = False
        if not is_zero:
            i = min(i + alignment - tail, n)
        else:
            i -= tail
    return not is_zero, i


def is_allocated_sectors(buf: bytes, n: int, sector: int, alignment: int) -> tuple[bool, int]:
    """(first sector has data, run length), ends aligned to ``alignment`` sectors."""
    return _allocated_run(zero_map(buf, n), 0, n, sector, alignment)


def _allocated_min(
    zeros: list[bool], start: int, n: int, minimum: int, sector: int, alignment: int
) -> tuple[bool, int]:
    minimum = min(minimum, n)
    data, pnum = _allocated_run(zeros, start, n, sector, alignment)
    if not data:
        return False, pnum
    used = checked = pnum
    pos = pnum
    while pos < n:
        data, pnum = _allocated_run(zeros, start + pos, n - pos, sector + pos, alignment)
        pos += pnum
        checked += pnum
        if data:
            used = checked
        elif pnum >= minimum:
            break
    return True, used


def is_allocated_sectors_min(
    buf: bytes, n: int, minimum: int, sector: int, alignment: int
) -> tuple[bool, int]:
    """Like is_allocated_sectors, but zero runs shorter than ``minimum`` after data
    count as data, so small holes do not split writes."""
    return _allocated_min(zero_map(buf, n), 0, n, minimum, sector, alignment)


async def _read(s: ConvertState, sector: int, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        src, start = s.select_part(sector)
        take = min(n, s.src_sectors[src] - (sector - start))
        node = s.sources[src]
        offset = (sector - start) * SECTOR
        parts.append(await read_padded(node, offset, take * SECTOR))
        sector += take
        n -= take
    return b"".join(parts)


async def _write(s: ConvertState, sector: int, n: int, buf: bytes, status: str) -> None:
    """convert_co_write().  With ``-S 0`` the target is opened without discard, so
    zero writes must not deallocate (may_unmap follows min_sparse)."""
    target = s.target
    assert target is not None
    zeros = zero_map(buf, n) if status == BLK_DATA and s.min_sparse else []
    pos = 0
    while n > 0:
        m = n
        if status == BLK_DATA:
            if not s.min_sparse:
                write = True  # -S 0: everything is written
            elif s.compressed:
                # Compressed clusters are written whole, or skipped when all zero.
                write = not all(zeros[pos : pos + m])
            else:
                write, m = _allocated_min(zeros, pos, m, s.min_sparse, sector, s.alignment)
            if write:
                await target.write(
                    sector * SECTOR,
                    buf[pos * SECTOR : (pos + m) * SECTOR],
                    compressed=s.compressed,
                )
            elif not s.has_zero_init:
                await target.write_zeroes(sector * SECTOR, m * SECTOR, may_unmap=s.min_sparse > 0)
        elif status == BLK_ZERO and not s.has_zero_init:
            await target.write_zeroes(sector * SECTOR, m * SECTOR, may_unmap=s.min_sparse > 0)
        sector += m
        n -= m
        pos += m


async def do_copy(con: Console, s: ConvertState, prog: Progress) -> None:
    sector = 0
    while sector < s.total_sectors:
        n = await iteration_sectors(s, sector)
        if s.status == BLK_DATA or (not s.min_sparse and s.status == BLK_ZERO):
            s.allocated_sectors += n
        sector += n
    s.sector_next_status = 0
    done = 0
    sector = 0
    while sector < s.total_sectors:
        n = await iteration_sectors(s, sector)
        status = s.status
        if status == BLK_ZERO and not s.min_sparse:
            # -S 0: zeros are copied as data so the target is fully allocated.
            status = BLK_DATA
            n = min(n, s.buf_sectors)
        buf = b""
        if status == BLK_DATA:
            try:
                buf = await _read(s, sector, n)
            except (GenericError, OSError) as e:
                raise con.fail(
                    f"error while reading at byte {sector * SECTOR}: {_text(e)}"
                ) from None
        try:
            await _write(s, sector, n, buf, status)
        except (GenericError, OSError) as e:
            raise con.fail(f"error while writing at byte {sector * SECTOR}: {_text(e)}") from None
        if status == BLK_DATA:
            done += n
            prog.print(100.0 * done / s.allocated_sectors, 0)
        sector += n
    assert s.target is not None
    await s.target.flush()


def _text(e: BaseException) -> str:
    if isinstance(e, GenericError):
        return e.desc
    if isinstance(e, OSError):
        return os.strerror(e.errno or 5)
    return str(e)


@dataclass
class _Args:
    fmt: str | None = None
    out_fmt: str = "raw"
    out_baseimg: str | None = None
    backing_fmt: str | None = None
    options: str | None = None
    compressed: bool = False
    progress: bool = False
    quiet: bool = False
    skip_create: bool = False
    force_share: bool = False
    target_is_zero: bool = False
    min_sparse: int = 8
    cache: str = "unsafe"
    src_cache: str = "writeback"
    files: list[str] = field(default_factory=list)


def _parse(con: Console, argv: list[str]) -> _Args:
    a = _Args()
    opts, a.files = getopt(con, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:", LONGOPTS)
    for key, val in opts:
        if key == "h":
            raise show_help(con)
        if key == "f":
            a.fmt = val
        elif key == "O":
            assert val is not None
            a.out_fmt = val
        elif key == "B":
            a.out_baseimg = val
        elif key == "F":
            a.backing_fmt = val
        elif key == "c":
            a.compressed = True
        elif key == "o":
            assert val is not None
            if not is_valid_option_list(val):
                raise con.fail(f"Invalid option list: {val}")
            a.options = accumulate(a.options, val)
        elif key == "S":
            assert val is not None
            sval = cvtnum(con, "buffer size for sparse output", val)
            if sval % SECTOR or sval // SECTOR > MAX_BUF_SECTORS:
                raise con.fail(
                    "Invalid buffer size for sparse output specified. Valid sizes are "
                    f"multiples of {SECTOR} up to {MAX_BUF_SECTORS * SECTOR}. Select 0 to "
                    "disable sparse detection (fully allocates output)."
                )
            a.min_sparse = sval // SECTOR
        elif key == "p":
            a.progress = True
        elif key == "t":
            assert val is not None
            a.cache = val
        elif key == "T":
            assert val is not None
            a.src_cache = val
        elif key == "q":
            a.quiet = True
        elif key == "n":
            a.skip_create = True
        elif key == "m":
            assert val is not None
            try:
                m = int(val, 0)
            except ValueError:
                m = 0
            if not 1 <= m <= MAX_COROUTINES:
                raise con.fail(
                    "Invalid number of coroutines. Allowed number of coroutines is between "
                    f"1 and {MAX_COROUTINES}"
                )
        elif key == "U":
            a.force_share = True
        elif key == "image-opts":
            con.image_opts = True
        elif key == "target-is-zero":
            a.target_is_zero = True
        # -C (copy offloading), -W (out-of-order writes), -l and -r (snapshots, rate
        # limit) change nothing observable here and are accepted.
    if a.quiet:
        a.progress = False
    return a


async def run(con: Console, argv: list[str]) -> int:
    a = _parse(con, argv)
    if a.skip_create and a.options:
        raise con.fail("-o has no effect when skipping image creation")
    if a.target_is_zero and not a.skip_create:
        raise con.fail("--target-is-zero requires use of -n flag")
    out_filename = a.files[-1] if a.files else None
    if a.options is not None and has_help_option(a.options):
        if a.out_fmt not in CREATE_OPTS:
            raise con.fail(f"Unknown file format '{a.out_fmt}'")
        con.print(format_help(a.out_fmt, out_filename is not None))
        return 0
    if len(a.files) < 2:
        raise con.fail("Must specify image file name")
    src_direct = parse_cache(con, a.src_cache, "source cache")
    prog = Progress(con, a.progress, 1.0)
    prog.print(0, 100)
    sources: list[BlockDriver] = []
    target: BlockDriver | None = None
    try:
        for name in a.files[:-1]:
            sources.append(
                await open_for_tool(
                    con, name, a.fmt, force_share=a.force_share, cache_direct=src_direct
                )
            )
        assert out_filename is not None
        target = await _prepare_target(con, a, sources, out_filename)
        s = await _state(con, a, sources, target)
        await do_copy(con, s, prog)
        prog.print(100, 0)
        return 0
    except ImgExit as e:
        return e.code
    finally:
        prog.end()
        await close_quietly(target)
        for node in sources:
            await close_quietly(node)


async def _prepare_target(
    con: Console, a: _Args, sources: list[BlockDriver], out_filename: str
) -> BlockDriver:
    total = sum(-(-image_length(n) // SECTOR) for n in sources)
    if a.out_fmt not in CREATE_OPTS:
        try:
            driver_class(a.out_fmt)
        except GenericError:
            raise con.fail(f"Unknown file format '{a.out_fmt}'") from None
        if not a.skip_create:
            raise con.fail(f"Format driver '{a.out_fmt}' does not support image creation")
    opts = QemuOpts(list(CREATE_OPTS.get(a.out_fmt, [])))
    out_baseimg = a.out_baseimg
    if not a.skip_create:
        try:
            if a.options:
                opts.parse(a.options)
        except OptionError as e:
            con.error_report(e.msg)
            con.error_print(e.hint)
            raise ImgExit(1) from None
        opts.set_number("size", total * SECTOR)
        if out_baseimg is not None and not opts.set("backing_file", out_baseimg):
            raise con.fail(f"Backing file not supported for file format '{a.out_fmt}'")
        if a.backing_fmt is not None and not opts.set("backing_fmt", a.backing_fmt):
            raise con.fail(f"Backing file format not supported for file format '{a.out_fmt}'")
    param = opts.get_str("backing_file")
    if param is not None:
        out_baseimg = param
    if a.compressed:
        if a.out_fmt != "qcow2":
            raise con.fail("Compression not supported for this file format")
        if (opts.get_str("preallocation") or "off") != "off":
            raise con.fail("Compression and preallocation not supported at the same time")
    if param is not None and opts.get_str("backing_fmt") is None:
        raise con.fail("Use of backing file requires explicit backing format")
    if len(sources) > 1 and out_baseimg:
        raise con.fail(
            "Having a backing file for the target makes no sense when concatenating "
            "multiple input images"
        )
    a.out_baseimg = out_baseimg
    if not a.skip_create:
        try:
            if a.out_fmt == "qcow2":
                await create_qcow2_image(out_filename, total * SECTOR, opts)
            else:
                await create_raw_image(out_filename, total * SECTOR, opts)
        except CreateError as e:
            con.error_report(f"{out_filename}: error while converting {a.out_fmt}: {e.msg}")
            con.error_print(e.hint)
            raise ImgExit(1) from None
    direct = parse_cache(con, a.cache, "cache")
    target = await open_for_tool(
        con, out_filename, a.out_fmt, read_only=False, image_opts=False, cache_direct=direct
    )
    if a.skip_create and -(-image_length(target) // SECTOR) < total:
        await close_quietly(target)
        raise con.fail("output file is smaller than input file")
    return target


async def _state(
    con: Console, a: _Args, sources: list[BlockDriver], target: BlockDriver
) -> ConvertState:
    src_alignment = []
    for node in sources:
        align = -(-node.refresh_limits().request_alignment // SECTOR)
        cs = int(getattr(node, "cluster_size", 0) or 0)
        src_alignment.append(max(align, cs // SECTOR, 1))
    s = ConvertState(
        sources=sources,
        src_names=a.files[:-1],
        src_sectors=[-(-image_length(n) // SECTOR) for n in sources],
        src_alignment=src_alignment,
        target=target,
        min_sparse=a.min_sparse,
        compressed=a.compressed,
    )
    s.total_sectors = sum(s.src_sectors)
    limits = target.refresh_limits()
    s.buf_sectors = min(
        MAX_BUF_SECTORS,
        max(4096, limits.opt_transfer // SECTOR, limits.pdiscard_alignment // SECTOR),
    )
    pow2 = 1 << (s.min_sparse.bit_length() - 1) if s.min_sparse else 0
    s.alignment = max(pow2, -(-limits.request_alignment // SECTOR), 1)
    s.target_has_backing = bool(a.out_baseimg)
    if s.target_has_backing and not a.skip_create and target.backing is not None:
        s.target_backing_sectors = -(-image_length(target.backing) // SECTOR)
    s.cluster_sectors = int(getattr(target, "cluster_size", 0) or 0) // SECTOR
    if s.compressed:
        if s.cluster_sectors <= 0 or s.cluster_sectors > s.buf_sectors:
            raise con.fail("invalid cluster size")
        s.buf_sectors = s.cluster_sectors
    if a.target_is_zero:
        s.has_zero_init = True
    elif not a.skip_create and s.min_sparse and not s.target_has_backing:
        s.has_zero_init = True
    return s
