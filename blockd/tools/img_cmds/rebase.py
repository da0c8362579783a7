"""``qemu-img rebase``: change the backing file, safely (copying the clusters
whose content would change) or with ``-u`` by rewriting the header only."""

from __future__ import annotations

import os

from blockd.drivers.base import BlockDriver, driver_class
from blockd.qmp.errors import GenericError
from blockd.tools.img_cmds.common import Console, ImgExit, parse_cache
from blockd.tools.img_cmds.compare import compare_buffers
from blockd.tools.img_cmds.getopt import LongOpt, getopt
from blockd.tools.img_cmds.image import (
    BDRV_ALLOCATED,
    close_quietly,
    image_length,
    layer_status,
    node_filename,
    open_for_tool,
    read_padded,
)
from blockd.tools.img_cmds.progress import Progress, f32
from blockd.tools.img_cmds.usage import show_help

IO_BUF_SIZE = 2 << 20
LONGOPTS = [
    LongOpt("help", False, "h"),
    LongOpt("image-opts", False, "image-opts"),
    LongOpt("force-share", False, "U"),
]


async def run(con: Console, argv: list[str]) -> int:
    fmt: str | None = None
    out_fmt: str | None = None
    out_img: str | None = None
    unsafe = progress = quiet = force_share = False
    cache = src_cache = "writeback"
    opts, args = getopt(con, argv, ":hf:F:b:upt:T:qU", LONGOPTS)
    for key, val in opts:
        if key == "h":
            raise show_help(con)
        if key == "f":
            fmt = val
        elif key == "F":
            out_fmt = val
        elif key == "b":
            out_img = val
        elif key == "u":
            unsafe = True
        elif key == "p":
            progress = True
        elif key == "t":
            assert val is not None
            cache = val
        elif key == "T":
            assert val is not None
            src_cache = val
        elif key == "q":
            quiet = True
        elif key == "image-opts":
            con.image_opts = True
        elif key == "U":
            force_share = True
    if quiet:
        progress = False
    if len(args) != 1:
        raise con.error_exit("Expecting one image file name")
    if not unsafe and out_img is None:
        raise con.error_exit("Must specify backing file (-b) or use unsafe mode (-u)")
    prog = Progress(con, progress, 2.0)
    prog.print(0, 100)
    try:
        direct = parse_cache(con, cache, "cache")
        src_direct = parse_cache(con, src_cache, "source cache")
        return await _rebase(
            con, args[0], fmt, out_img, out_fmt, unsafe, force_share, prog, direct, src_direct
        )
    except ImgExit as e:
        return e.code
    finally:
        prog.end()


def _find_in_chain(top: BlockDriver, path: str) -> BlockDriver | None:
    """bdrv_find_backing_image(): a node of top's backing chain stored at ``path``."""
    want = os.path.realpath(path)
    node = top.backing
    while node is not None:
        if os.path.realpath(node_filename(node)) == want:
            return node
        node = node.backing
    return None


async def _rebase(
    con: Console,
    filename: str,
    fmt: str | None,
    out_img: str | None,
    out_fmt: str | None,
    unsafe: bool,
    force_share: bool,
    prog: Progress,
    direct: bool = False,
    src_direct: bool = False,
) -> int:
    from blockd.drivers.open import close_image, open_image, resolve_backing_path

    bs = await open_for_tool(
        con, filename, fmt, read_only=False, backing=not unsafe, cache_direct=direct
    )
    new_backing: BlockDriver | None = None
    opened_new = False
    try:
        if out_fmt is not None:
            try:
                driver_class(out_fmt)
            except GenericError:
                raise con.fail(f"Invalid format name: '{out_fmt}'") from None
        prefix: BlockDriver | None = None
        if not unsafe and out_img:
            real = resolve_backing_path(node_filename(bs), out_img)
            prefix = _find_in_chain(bs, real)
            if prefix is not None:
                new_backing = prefix
            else:
                try:
                    new_backing = await open_image(
                        real,
                        out_fmt,
                        read_only=True,
                        force_share=force_share,
                        cache_direct=src_direct,
                    )
                    opened_new = True
                except GenericError as e:
                    msg = f"Could not open new backing file '{out_img}': {e.desc}"
                    raise con.fail(msg) from None
        if not unsafe:
            await _copy_differences(con, bs, new_backing, prefix, prog)
        return await _change_backing(con, bs, out_img, out_fmt, prog)
    finally:
        if opened_new and new_backing is not None:
            await close_image(new_backing)
        await close_quietly(bs)


async def _copy_differences(
    con: Console,
    bs: BlockDriver,
    new_backing: BlockDriver | None,
    prefix: BlockDriver | None,
    prog: Progress,
) -> None:
    """Write into the overlay every unallocated range whose old and new backing
    content differ, so the guest-visible content does not change."""
    from blockd.drivers.base import is_allocated_above

    old_backing = bs.backing
    size = image_length(bs)
    old_size = image_length(old_backing) if old_backing is not None else 0
    new_size = image_length(new_backing) if new_backing is not None else 0
    local_progress = f32(100.0 / (size // min(size, IO_BUF_SIZE))) if size else 0.0
    offset = 0
    while offset < size:
        n = min(IO_BUF_SIZE, size - offset)
        try:
            st = await layer_status(bs, offset, n)
            n = st.pnum
            if st.flags & BDRV_ALLOCATED:
                offset += n
                continue
            if prefix is not None:
                assert bs.backing is not None
                allocated, n = await is_allocated_above(bs.backing, prefix, offset, n)
                if not allocated:
                    offset += n
                    continue
        except GenericError as e:
            raise con.fail(f"error while reading image metadata: {e.desc}") from None
        old_is_zero = offset >= old_size
        if old_is_zero:
            buf_old = bytes(n)
        else:
            n = min(n, old_size - offset)
            assert old_backing is not None
            try:
                buf_old = await read_padded(old_backing, offset, n)
            except (GenericError, OSError):
                raise con.fail("error while reading from old backing file") from None
        if new_backing is None or offset >= new_size:
            buf_new = bytes(n)
        else:
            n = min(n, new_size - offset)
            try:
                buf_new = await read_padded(new_backing, offset, n)
            except (GenericError, OSError):
                raise con.fail("error while reading from new backing file") from None
            buf_old = buf_old[:n]
        written = 0
        while written < n:
            differs, pnum = compare_buffers(buf_old[written:n], buf_new[written:n])
            if differs:
                try:
                    if old_is_zero:
                        await bs.write_zeroes(offset + written, pnum)
                    else:
                        await bs.write(offset + written, buf_old[written : written + pnum])
                except (GenericError, OSError) as e:
                    text = e.desc if isinstance(e, GenericError) else os.strerror(e.errno or 5)
                    raise con.fail(f"Error while writing to COW image: {text}") from None
            written += pnum
        prog.print(local_progress, 100)
        offset += n


async def _change_backing(
    con: Console, bs: BlockDriver, out_img: str | None, out_fmt: str | None, prog: Progress
) -> int:
    backing_file = out_img if out_img else None
    backing_fmt = out_fmt if out_img else None
    change = getattr(bs, "change_backing_file", None)
    ret = 0
    if backing_file is not None and backing_fmt is None:
        con.error_report(
            f"Could not change the backing file to '{out_img}': backing format must be specified"
        )
        ret = 1
    elif change is None:
        con.error_report(
            f"Could not change the backing file to '{out_img}': Operation not supported"
        )
        ret = 1
    else:
        try:
            await change(backing_file, backing_fmt)
            await bs.flush()
        except GenericError as e:
            con.error_report(f"Could not change the backing file to '{out_img}': {e.desc}")
            ret = 1
    prog.print(100, 0)
    return ret
