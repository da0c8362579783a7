"""``qemu-img resize``: grow or (with --shrink) shrink the guest-visible size."""

from __future__ import annotations

from blockd.qmp.errors import GenericError
from blockd.tools.img_cmds.common import Console, ImgExit, OptionError
from blockd.tools.img_cmds.getopt import LongOpt, getopt
from blockd.tools.img_cmds.image import close_quietly, image_length, open_for_tool
from blockd.tools.img_cmds.sizes import option_size
from blockd.tools.img_cmds.usage import show_help

PREALLOC_MODES = ("off", "metadata", "falloc", "full")
LONGOPTS = [
    LongOpt("help", False, "h"),
    LongOpt("image-opts", False, "image-opts"),
    LongOpt("preallocation", True, "preallocation"),
    LongOpt("shrink", False, "shrink"),
]


def _int64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


async def run(con: Console, argv: list[str]) -> int:
    # The size is taken off the end before option parsing so that "-1G" is a size.
    if len(argv) < 3:
        raise con.error_exit("Not enough arguments")
    size = argv[-1]
    fmt: str | None = None
    quiet = shrink = False
    prealloc = "off"
    opts, args = getopt(con, argv[:-1], ":f:hq", LONGOPTS)
    for key, val in opts:
        if key == "h":
            raise show_help(con)
        if key == "f":
            fmt = val
        elif key == "image-opts":
            con.image_opts = True
        elif key == "q":
            quiet = True
        elif key == "preallocation":
            assert val is not None
            if val not in PREALLOC_MODES:
                raise con.fail(f"Invalid preallocation mode '{val}'")
            prealloc = val
        elif key == "shrink":
            shrink = True
    if len(args) != 1:
        raise con.error_exit("Expecting image file name and size")
    filename = args[0]
    relative = 0
    if size.startswith("+"):
        relative, size = 1, size[1:]
    elif size.startswith("-"):
        relative, size = -1, size[1:]
    try:
        n = _int64(option_size("size", size, con.warn_report))
    except OptionError as e:
        con.error_report(e.msg)
        con.error_print(e.hint)
        return 1
    try:
        node = await open_for_tool(con, filename, fmt, read_only=False)
    except ImgExit:
        return 1
    try:
        current = image_length(node)
        total = _int64(current + n * relative) if relative else n
        if total <= 0:
            con.error_report("New image size must be positive")
            return 1
        if total <= current and prealloc != "off":
            con.error_report("Preallocation can only be used for growing images")
            return 1
        if total < current and not shrink:
            con.error_report("Use the --shrink option to perform a shrink operation.")
            con.warn_report(
                "Shrinking an image will delete all data beyond the shrunken image's end. "
                "Before performing such an operation, make sure there is no important "
                "data there."
            )
            return 1
        try:
            await node.truncate(total, preallocation=prealloc, exact=True)
            await node.flush()
        except GenericError as e:
            con.error_report(e.desc)
            return 1
        con.qprint(quiet, "Image resized.\n")
        return 0
    finally:
        await close_quietly(node)
