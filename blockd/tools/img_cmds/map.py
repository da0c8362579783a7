"""``qemu-img map``: the allocation map of an image and its backing chain."""

from __future__ import annotations

from dataclasses import dataclass, replace

from blockd.drivers.base import BlockDriver
from blockd.qmp.errors import GenericError
from blockd.tools.img_cmds.common import Console, ImgExit, parse_output_format
from blockd.tools.img_cmds.create import cvtnum
from blockd.tools.img_cmds.getopt import LongOpt, getopt
from blockd.tools.img_cmds.image import (
    BDRV_ALLOCATED,
    BDRV_DATA,
    BDRV_OFFSET_VALID,
    BDRV_ZERO,
    close_quietly,
    image_length,
    layer_status,
    open_for_tool,
)
from blockd.tools.img_cmds.usage import show_help

GiB = 1 << 30
INT64_MAX = (1 << 63) - 1

LONGOPTS = [
    LongOpt("help", False, "h"),
    LongOpt("image-opts", False, "image-opts"),
    LongOpt("format", True, "f"),
    LongOpt("output", True, "output"),
    LongOpt("force-share", False, "U"),
    LongOpt("start-offset", True, "s"),
    LongOpt("max-length", True, "l"),
]


@dataclass
class MapEntry:
    start: int
    length: int
    data: bool
    zero: bool
    depth: int
    present: bool
    offset: int | None = None
    filename: str | None = None


async def get_block_status(top: BlockDriver, offset: int, length: int) -> MapEntry:
    """The first layer (from the top) whose answer is data or zero, and its depth."""
    depth = 0
    node: BlockDriver | None = top
    while True:
        assert node is not None
        st = await layer_status(node, offset, length)
        length = st.pnum
        if st.flags & (BDRV_ZERO | BDRV_DATA) or node.backing is None:
            break
        node = node.backing
        depth += 1
    has_offset = bool(st.flags & BDRV_OFFSET_VALID)
    filename = getattr(st.file, "filename", None) if st.file is not None and has_offset else None
    return MapEntry(
        start=offset,
        length=length,
        data=bool(st.flags & BDRV_DATA),
        zero=bool(st.flags & BDRV_ZERO),
        depth=depth,
        present=bool(st.flags & BDRV_ALLOCATED),
        offset=st.offset if has_offset else None,
        filename=filename,
    )


def mergeable(curr: MapEntry, nxt: MapEntry) -> bool:
    if curr.length == 0:
        return False
    if (curr.zero, curr.data, curr.depth, curr.present) != (
        nxt.zero,
        nxt.data,
        nxt.depth,
        nxt.present,
    ):
        return False
    if (curr.filename is None) != (nxt.filename is None) or curr.filename != nxt.filename:
        return False
    if (curr.offset is None) != (nxt.offset is None):
        return False
    return curr.offset is None or nxt.offset == curr.offset + curr.length


def _hex(v: int) -> str:
    # printf("%#-16" PRIx64): no 0x prefix for zero.
    return f"{v:<#16x}" if v else f"{'0':<16}"


def dump_entry(con: Console, ofmt: str, e: MapEntry, nxt: MapEntry | None) -> None:
    if ofmt == "human":
        if e.data and e.offset is None:
            raise con.fail("File contains external, encrypted or compressed clusters.")
        if e.data and not e.zero:
            con.print(f"{_hex(e.start)}{_hex(e.length)}{_hex(e.offset or 0)}{e.filename or ''}\n")
        # The human format does not tell 0, ZERO and ZERO|DATA apart: coalesce them.
        if nxt is not None and (not nxt.data or nxt.zero):
            nxt.data = False
            nxt.zero = True
        return
    text = (
        f'{{ "start": {e.start}, "length": {e.length}, "depth": {e.depth},'
        f' "present": {str(e.present).lower()}, "zero": {str(e.zero).lower()},'
        f' "data": {str(e.data).lower()}'
    )
    if e.offset is not None:
        text += f', "offset": {e.offset}'
    text += "}"
    if nxt is not None:
        text += ",\n"
    con.print(text)


async def run(con: Console, argv: list[str]) -> int:
    fmt: str | None = None
    output: str | None = None
    force_share = False
    start_offset = 0
    max_length = -1
    opts, args = getopt(con, argv, ":f:s:l:hU", LONGOPTS)
    for key, val in opts:
        if key == "h":
            raise show_help(con)
        if key == "f":
            fmt = val
        elif key == "output":
            output = val
        elif key == "image-opts":
            con.image_opts = True
        elif key == "U":
            force_share = True
        elif key == "s":
            assert val is not None
            start_offset = cvtnum(con, "start offset", val)
        elif key == "l":
            assert val is not None
            max_length = cvtnum(con, "max length", val)
    if len(args) != 1:
        raise con.error_exit("Expecting one image file name")
    ofmt = parse_output_format(con, output)
    try:
        node = await open_for_tool(con, args[0], fmt, force_share=force_share)
    except ImgExit:
        return 1
    try:
        return await _map(con, node, ofmt, start_offset, max_length)
    except ImgExit as e:
        return e.code
    finally:
        await close_quietly(node)


async def _map(con: Console, node: BlockDriver, ofmt: str, start: int, max_length: int) -> int:
    length = image_length(node)
    if max_length != -1:
        length = min(start + max_length, length)
    if ofmt == "human":
        con.print(f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}File\n")
    else:
        con.print("[")
    curr = MapEntry(start, 0, False, False, 0, False)
    try:
        while curr.start + curr.length < length:
            offset = curr.start + curr.length
            n = min(GiB, length - offset)
            nxt = await get_block_status(node, offset, n)
            if mergeable(curr, nxt):
                curr = replace(curr, length=curr.length + nxt.length)
                continue
            if curr.length > 0:
                dump_entry(con, ofmt, curr, nxt)
            curr = nxt
    except GenericError as e:
        con.error_report(f"Could not read file metadata: {e.desc}")
        return 1
    dump_entry(con, ofmt, curr, None)
    if ofmt == "json":
        con.print("]\n")
    return 0
