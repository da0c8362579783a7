"""``qemu-img create``: option handling, the ``Formatting ...`` line, creation."""

from __future__ import annotations

import errno
import os

from blockd.drivers.base import BlockDriver, OpenFlags, driver_class
from blockd.drivers.locking import BLK_PERM_ALL, BLK_PERM_RESIZE, BLK_PERM_WRITE
from blockd.qmp.errors import GenericError
from blockd.tools.img_cmds.common import Console, ImgExit, OptionError
from blockd.tools.img_cmds.getopt import LongOpt, getopt
from blockd.tools.img_cmds.image import image_length
from blockd.tools.img_cmds.opts import (
    CREATE_OPTS,
    QemuOpts,
    accumulate,
    format_help,
    has_help_option,
    is_valid_option_list,
)
from blockd.tools.img_cmds.sizes import INT64_MAX, SizeError, strtosz
from blockd.tools.img_cmds.usage import show_help

U64_MAX = (1 << 64) - 1


class CreateError(Exception):
    """bdrv_img_create() failure: reported as ``<filename>: <msg>`` plus hint."""

    def __init__(self, msg: str, hint: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.hint = hint


def cvtnum(con: Console, name: str, value: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    """qemu-img's cvtnum_full(): a size argument with qemu-img's two error texts."""
    try:
        res = strtosz(value, con.warn_report)
    except SizeError as e:
        if e.code != -errno.ERANGE:
            con.error_report(
                f"Invalid {name} specified. You may use k, M, G, T, P or E suffixes for"
            )
            con.error_report("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
            raise ImgExit(1) from None
        res = -1
    if res < lo or res > hi:
        con.error_report(f"Invalid {name} specified. Must be between {lo} and {hi}.")
        raise ImgExit(1)
    return res


async def run(con: Console, argv: list[str]) -> int:
    fmt = "raw"
    base_fmt: str | None = None
    base_filename: str | None = None
    options: str | None = None
    quiet = False
    no_backing = False
    opts, args = getopt(con, argv, ":F:b:f:ho:qu", [LongOpt("help", False, "h")])
    for key, val in opts:
        if key == "h":
            raise show_help(con)
        if key == "F":
            base_fmt = val
        elif key == "b":
            base_filename = val
        elif key == "f":
            assert val is not None
            fmt = val
        elif key == "o":
            assert val is not None
            if not is_valid_option_list(val):
                raise con.fail(f"Invalid option list: {val}")
            options = accumulate(options, val)
        elif key == "q":
            quiet = True
        elif key == "u":
            no_backing = True

    filename = args[0] if args else None
    if options is not None and has_help_option(options):
        if fmt not in CREATE_OPTS:
            raise con.fail(f"Unknown file format '{fmt}'")
        con.print(format_help(fmt, filename is not None))
        return 0
    if filename is None:
        raise con.error_exit("Expecting image file name")
    img_size = U64_MAX
    if len(args) > 1:
        img_size = cvtnum(con, "image size", args[1])
    if len(args) > 2:
        raise con.error_exit(f"Unexpected argument: {args[2]}")

    try:
        await img_create(
            con, filename, fmt, base_filename, base_fmt, options, img_size, no_backing, quiet
        )
    except CreateError as e:
        con.error_report(f"{filename}: {e.msg}")
        if e.hint:
            con.error_print(e.hint)
        return 1
    return 0


async def img_create(
    con: Console,
    filename: str,
    fmt: str,
    base_filename: str | None,
    base_fmt: str | None,
    options: str | None,
    img_size: int,
    no_backing: bool,
    quiet: bool,
) -> None:
    """bdrv_img_create(): the checks, in QEMU's order, then the format's create."""
    if fmt not in CREATE_OPTS:
        try:
            driver_class(fmt)
        except GenericError:
            raise CreateError(f"Unknown file format '{fmt}'") from None
        raise CreateError(f"Format driver '{fmt}' does not support image creation")
    opts = QemuOpts(list(CREATE_OPTS[fmt]))
    try:
        if options:
            opts.parse(options)
    except OptionError as e:
        raise CreateError(e.msg, e.hint) from None
    if not opts.has("size"):
        opts.set_number("size", img_size)
    elif img_size != U64_MAX:
        raise CreateError("The image size must be specified only once")
    if base_filename is not None and not opts.set("backing_file", base_filename):
        raise CreateError(f"Backing file not supported for file format '{fmt}'")
    if base_fmt is not None and not opts.set("backing_fmt", base_fmt):
        raise CreateError(f"Backing file format not supported for file format '{fmt}'")

    backing_file = opts.get_str("backing_file")
    if backing_file is not None:
        if filename == backing_file:
            raise CreateError(
                "Error: Trying to create an image with the same filename as the backing file"
            )
        if backing_file == "":
            raise CreateError("Expected backing file name, got empty string")
    backing_fmt = opts.get_str("backing_fmt")
    size = opts.get_int("size", img_size)
    if backing_file is not None and not no_backing:
        size = await _size_from_backing(filename, backing_file, backing_fmt, size, opts)
    elif backing_file is not None and backing_fmt is None:
        raise CreateError("Backing file specified without backing format")
    if size == U64_MAX:
        raise CreateError("Image creation needs a size parameter")

    con.qprint(quiet, f"Formatting '{filename}', fmt={fmt} {opts.print_line()}\n")
    con.out.flush()
    if fmt == "qcow2":
        await create_qcow2_image(filename, size, opts)
    else:
        await create_raw_image(filename, size, opts)


async def _size_from_backing(
    filename: str, backing_file: str, backing_fmt: str | None, size: int, opts: QemuOpts
) -> int:
    from blockd.drivers.open import close_image, open_image, resolve_backing_path

    full = resolve_backing_path(filename, backing_file)
    try:
        bs = await open_image(full, backing_fmt, read_only=True, force_share=True)
    except GenericError as e:
        raise CreateError(e.desc, "Could not open backing image.\n") from None
    try:
        if backing_fmt is None:
            # QEMU's hint has no final newline.
            raise CreateError(
                "Backing file specified without backing format", f"Detected format of {bs.name}."
            )
        if size == U64_MAX:
            size = image_length(bs)
            opts.set_number("size", size)
    finally:
        await close_image(bs)
    return size


async def _create_protocol(filename: str) -> BlockDriver:
    """file-posix's create: make the file, lock it, empty it; return it opened.

    The locks come before the truncation so that an image in use by another
    process (qemu, qemu-io, blockd) is refused instead of destroyed.
    """
    try:
        os.close(os.open(filename, os.O_RDWR | os.O_CREAT, 0o644))
    except OSError as e:
        raise CreateError(f"Could not create '{filename}': {os.strerror(e.errno or 5)}") from None
    node = driver_class("file")()
    flags = OpenFlags(read_only=False)
    try:
        await node.open({"filename": filename}, flags)
    except GenericError as e:
        raise CreateError(e.desc, getattr(e, "hint", "") or "") from None
    node.flags = flags
    try:
        set_perms = getattr(node, "set_perms", None)
        if set_perms is not None:
            # We write and resize; nobody else may resize meanwhile.
            set_perms(BLK_PERM_WRITE | BLK_PERM_RESIZE, BLK_PERM_ALL & ~BLK_PERM_RESIZE)
        await node.truncate(0)
    except GenericError as e:
        await node.close()
        hint = getattr(e, "hint", "") or ""
        raise CreateError(
            e.desc, hint if not hint or hint.endswith("\n") else hint + "\n"
        ) from None
    return node


async def create_raw_image(filename: str, size: int, opts: QemuOpts) -> None:
    prealloc = opts.get_str("preallocation") or "off"
    if prealloc not in ("off", "metadata", "falloc", "full"):
        raise CreateError(f"invalid parameter value: {prealloc}")
    node = await _create_protocol(filename)
    try:
        if prealloc == "metadata":
            raise CreateError("Unsupported preallocation mode: metadata")
        await node.truncate((size + 511) & ~511, preallocation=prealloc)
    except GenericError as e:
        if "File too large" in e.desc:
            raise CreateError("The image size is too large for file format 'raw'") from None
        raise CreateError(e.desc) from None
    finally:
        await node.close()


async def create_qcow2_image(filename: str, size: int, opts: QemuOpts) -> None:
    node = await _create_protocol(filename)
    try:
        await _format_qcow2(node, size, opts)
    finally:
        await node.close()


async def _format_qcow2(node: BlockDriver, size: int, opts: QemuOpts) -> None:
    from blockd.drivers.qcow2 import qcow2_create

    compat = opts.get_str("compat") or "1.1"
    if compat in ("0.10", "v2"):
        compat = "0.10"
    elif compat in ("1.1", "v3"):
        compat = "1.1"
    else:
        raise CreateError(f"Parameter 'version' does not accept value '{compat}'")
    cluster_size = opts.get_int("cluster_size", 65536)
    if opts.get_bool("extended_l2", False):
        if cluster_size < 16384:
            raise CreateError(
                "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"
            )
        raise CreateError("Extended L2 entries are not supported by blockd")
    ctype = opts.get_str("compression_type") or "zlib"
    if ctype not in ("zlib", "zstd"):
        raise CreateError(f"Parameter 'compression-type' does not accept value '{ctype}'")
    if ctype != "zlib":
        raise CreateError("Compression type 'zstd' is not supported by blockd")
    try:
        await qcow2_create(
            node,
            size,
            cluster_size=cluster_size,
            compat=compat,
            backing_file=opts.get_str("backing_file"),
            backing_fmt=opts.get_str("backing_fmt"),
            lazy_refcounts=opts.get_bool("lazy_refcounts", False),
            preallocation=opts.get_str("preallocation") or "off",
            refcount_bits=opts.get_int("refcount_bits", 16),
        )
    except GenericError as e:
        raise CreateError(e.desc) from None


__all__ = ["CreateError", "create_qcow2_image", "create_raw_image", "cvtnum", "img_create", "run"]
