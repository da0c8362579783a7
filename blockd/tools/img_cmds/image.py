"""Opening images for a subcommand, and QEMU's generic block-status walk.

Drivers answer ``block_status`` for their own layer only (with the contract's
DATA/ZERO/ALLOCATED bits); what qemu-img prints (map, compare -s) is defined by
the generic layer above them (block/io.c): which bits QEMU adds, where a
backing chain is consulted, and the exact flag word.  That logic lives here.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

from blockd.drivers.base import BlockDriver, BlockStatusFlag
from blockd.qmp.errors import GenericError
from blockd.tools.img_cmds.common import Console, ImgExit

# QEMU's BDRV_BLOCK_* bits, as compared by ``compare -s``.
BDRV_DATA = 0x01
BDRV_ZERO = 0x02
BDRV_OFFSET_VALID = 0x04
BDRV_ALLOCATED = 0x10
BDRV_EOF = 0x20


def report_open_error(con: Console, filename: str, err: GenericError) -> None:
    """``Could not open '<name>': <driver text>`` plus the error's hint, if any."""
    con.error_report(f"Could not open '{filename}': {err.desc}")
    hint = getattr(err, "hint", None)
    if hint:
        con.error_print(hint if hint.endswith("\n") else hint + "\n")


async def open_for_tool(
    con: Console,
    filename: str,
    fmt: str | None,
    *,
    read_only: bool = True,
    backing: bool = True,
    force_share: bool = False,
    code: int = 1,
    check_mode: bool = False,
    image_opts: bool | None = None,
    cache_direct: bool = False,
) -> BlockDriver:
    """img_open(): open or report and exit with ``code``.

    ``check_mode`` is QEMU's BDRV_O_CHECK (qemu-img check): a dirty qcow2 image is
    then not repaired implicitly on a read-write open, so the check sees it as is.
    With ``image_opts`` (--image-opts) ``filename`` is an option string such as
    ``driver=qcow2,file.filename=x.qcow2`` (a bare first item is ``file``).
    """
    from blockd.drivers.base import OpenFlags
    from blockd.drivers.open import open_image, open_node

    if image_opts is None:
        image_opts = con.image_opts
    if image_opts:
        if fmt is not None:
            raise con.fail("--image-opts and --format are mutually exclusive", code)
        try:
            options = parse_image_opts(filename)
            ref = options.get("file")
            if ref is not None:
                # A string child is a reference to an existing node; qemu-img has none.
                raise GenericError(f"Cannot find device='{ref}' nor node-name='{ref}'")
            return await open_image(
                "",
                None,
                read_only=read_only,
                backing=backing,
                force_share=force_share,
                options=options,
                cache_direct=cache_direct,
            )
        except GenericError as e:
            report_open_error(con, filename, e)
            raise ImgExit(code) from None
    try:
        if check_mode:
            flags = OpenFlags(
                read_only=read_only,
                force_share=force_share,
                cache_direct=cache_direct,
                extra={"check": True},
            )
            return await open_node({}, flags, filename=filename, fmt=fmt, backing=backing)
        return await open_image(
            filename,
            fmt,
            read_only=read_only,
            backing=backing,
            force_share=force_share,
            cache_direct=cache_direct,
        )
    except GenericError as e:
        report_open_error(con, filename, e)
        raise ImgExit(code) from None


def parse_image_opts(optstr: str) -> dict[str, str]:
    """qemu_opts_parse(source opts, optstr, implied "file"): dotted key -> value."""
    from blockd.tools.img_cmds.opts import opt_value, split_option_list

    first = optstr.split(",", 1)[0]
    if "=" not in first:
        value, end = opt_value(optstr, 0)
        rest = optstr[end + 1 :] if end < len(optstr) else ""
        return {"file": value, **dict(split_option_list(rest))}
    return dict(split_option_list(optstr))


async def close_quietly(node: BlockDriver | None) -> None:
    if node is not None:
        from blockd.drivers.open import close_image

        await close_image(node)


def image_length(node: BlockDriver) -> int:
    """bdrv_getlength(): QEMU counts whole 512-byte sectors, so a 5-byte raw file
    is a 512-byte image."""
    return (node.get_length() + 511) & ~511


async def read_padded(node: BlockDriver, offset: int, n: int) -> bytes:
    """Guest data of [offset, offset+n); zeros past the host end of a raw file
    whose size is not a multiple of 512 (QEMU reads such tails as zeros)."""
    real = max(0, min(n, node.get_length() - offset))
    data = await node.read(offset, real) if real else b""
    return data + bytes(n - len(data))


def file_node(node: BlockDriver) -> BlockDriver:
    """The protocol node holding a layer's data (the layer itself for protocols),
    below filters such as blkdebug (what block-status names as ``file``)."""
    while node.file is not None and not node.is_protocol:
        node = node.file
    return node


def named_node(node: BlockDriver) -> BlockDriver:
    """The node whose file name a layer shows (bdrv_refresh_filename): the
    first one below it that opens a file name itself, a protocol or a driver
    with a file-name prefix (``blkdebug:<config>:<image>``)."""
    from blockd.drivers.open import opens_files

    while node.file is not None and not opens_files(type(node)):
        node = node.file
    return node


def node_filename(node: BlockDriver) -> str:
    fname: str = getattr(named_node(node), "filename", "") or ""
    return fname


def allocated_file_size(node: BlockDriver) -> int | None:
    """``actual-size``: bytes the host file occupies (st_blocks * 512); unknown
    below a driver like blkdebug that is not a plain protocol (ENOTSUP)."""
    bottom = named_node(node)
    own = getattr(bottom, "allocated_file_size", None)
    if own is not None:
        # Drivers that know their size themselves (null-co: 0).
        size: int = own()
        return size
    if not bottom.is_protocol:
        return None
    name = node_filename(node)
    try:
        return os.stat(name).st_blocks * 512
    except OSError:
        return None


@dataclass(frozen=True)
class LayerStatus:
    """One layer's answer in QEMU's terms (bdrv_co_block_status)."""

    flags: int
    pnum: int
    offset: int | None
    file: BlockDriver | None


# Per open node; weak so that a closed node's answer cannot outlive it.
_PREALLOC_CACHE: weakref.WeakKeyDictionary[BlockDriver, bool] = weakref.WeakKeyDictionary()


async def metadata_preallocated(node: BlockDriver) -> bool:
    """qcow2_detect_metadata_preallocation(): far more clusters are referenced than
    the host file really occupies, so data clusters may be holes on the host.

    QEMU then asks the file about each data cluster (BDRV_BLOCK_RECURSE) and
    reports holes as zeros.  Uses the driver's own answer when it has one, else its
    refcounts (``rc.get(cluster)``); formats without refcounts never qualify.
    """
    cached = _PREALLOC_CACHE.get(node)
    if cached is not None:
        return cached
    result = False
    own = getattr(node, "metadata_preallocation", None)
    rc = getattr(node, "rc", None)
    cs = int(getattr(node, "cluster_size", 0) or 0)
    if isinstance(own, bool):
        result = own
    elif rc is not None and cs and node.file is not None:
        real = allocated_file_size(node)
        if real is not None:
            real_clusters = real // cs
            threshold = max(real_clusters * 10 // 9, real_clusters + 2)
            end = -(-node.file.get_length() // cs)
            count = 0
            for i in range(end):
                if count >= threshold:
                    break
                count += 1 if await rc.get(i) else 0
            result = count >= threshold
    _PREALLOC_CACHE[node] = result
    return result


async def layer_status(node: BlockDriver, offset: int, length: int) -> LayerStatus:
    """Status of ``node`` alone at ``offset``, with the bits QEMU's generic code adds."""
    size = image_length(node)
    if offset >= size:
        return LayerStatus(BDRV_EOF, 0, None, None)
    length = min(length, size - offset)
    st = await node.block_status(offset, length)
    pnum = max(1, min(st.length, length))
    flags = 0
    if st.flags & BlockStatusFlag.DATA:
        flags |= BDRV_DATA
    if st.flags & BlockStatusFlag.ZERO:
        flags |= BDRV_ZERO
    if not node.supports_backing and not flags:
        flags |= BDRV_DATA  # a driver without backing always decides: data by default
    allocated = bool(st.flags & BlockStatusFlag.ALLOCATED) or (
        not node.supports_backing and bool(flags)
    )
    if allocated:
        flags |= BDRV_ALLOCATED
    else:
        # Unallocated here: zeros when nothing below can provide data.
        flags &= ~(BDRV_DATA | BDRV_ZERO)
        if node.backing is None or offset >= image_length(node.backing):
            flags |= BDRV_ZERO
    fnode: BlockDriver | None = None
    host: int | None = None
    if st.offset is not None and allocated:
        flags |= BDRV_OFFSET_VALID
        host = st.offset
        fnode = file_node(node)
    if (
        flags & BDRV_DATA
        and not flags & BDRV_ZERO
        and host is not None
        and fnode is not None
        and fnode is not node
        and await metadata_preallocated(node)
    ):
        # BDRV_BLOCK_RECURSE: what the host file says about the data cluster.
        fst = await layer_status(fnode, host, pnum)
        if fst.flags & BDRV_EOF and (fst.pnum == 0 or fst.flags & BDRV_ZERO):
            flags |= BDRV_ZERO  # beyond the end of the file reads as zeros
        else:
            pnum = fst.pnum
            flags |= fst.flags & BDRV_ZERO
    if offset + pnum >= size:
        flags |= BDRV_EOF
    return LayerStatus(flags, pnum, host, fnode)


async def status_above(top: BlockDriver, offset: int, length: int) -> LayerStatus:
    """bdrv_block_status_above(top, NULL): the first layer of the chain that decides."""
    first = await layer_status(top, offset, length)
    if first.pnum == 0 or first.flags & BDRV_ALLOCATED:
        return first
    eof = offset + first.pnum if first.flags & BDRV_EOF else None
    length = min(length, first.pnum)
    result = first
    layer = top.backing
    while layer is not None:
        st = await layer_status(layer, offset, length)
        if st.pnum == 0:
            # Past the end of a shorter backing file: zeros, decided there.
            result = LayerStatus(BDRV_ZERO | BDRV_ALLOCATED, length, None, None)
            break
        if st.flags & BDRV_ALLOCATED:
            result = LayerStatus(st.flags & ~BDRV_EOF, st.pnum, st.offset, st.file)
            break
        length = min(length, st.pnum)
        result = LayerStatus(st.flags & ~BDRV_EOF, st.pnum, st.offset, st.file)
        layer = layer.backing
    flags = result.flags & ~BDRV_EOF
    if eof is not None and offset + result.pnum == eof:
        flags |= BDRV_EOF
    return LayerStatus(flags, result.pnum, result.offset, result.file)
