"""Opening images the way QEMU's tools do: protocol + format + backing chain.

``open_image`` builds the small graph a CLI tool needs (format node over a ``file``
node, plus the backing chain), takes QEMU-compatible image locks for it, and maps
failures to QEMU's texts.  The daemon's graph engine may build graphs itself and
still use :func:`probe_format`, :func:`resolve_backing_path` and :func:`file_perms`.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Any

from blockd.drivers.base import BlockDriver, OpenFlags, driver_class
from blockd.drivers.locking import (
    BLK_PERM_ALL,
    BLK_PERM_CONSISTENT_READ,
    BLK_PERM_RESIZE,
    BLK_PERM_WRITE,
    BLK_PERM_WRITE_UNCHANGED,
)
from blockd.drivers.protocols import filename_children, filename_options, path_has_protocol
from blockd.qmp.errors import GenericError

QCOW2_MAGIC = b"QFI\xfb"

# Option keys handled generically (by the opener), never passed to a driver.
_GENERIC_KEYS = frozenset(
    {
        "driver",
        "node-name",
        "read-only",
        "auto-read-only",
        "cache",
        "discard",
        "detect-zeroes",
        "force-share",
        "file",
        "backing",
    }
)
# Keys whose values arrive as strings from --image-opts / -o and must be typed.
_BOOL_KEYS = frozenset(
    {
        "read-only",
        "auto-read-only",
        "force-share",
        "direct",
        "no-flush",
        "read-zeroes",
        "x-check-cache-dropped",
        "drop-cache",
        "lazy-refcounts",
        "pass-discard-request",
        "pass-discard-snapshot",
        "pass-discard-other",
    }
)
_INT_KEYS = frozenset(
    {
        "size",
        "offset",
        "latency-ns",
        "cache-size",
        "l2-cache-size",
        "l2-cache-entry-size",
        "refcount-cache-size",
        "cache-clean-interval",
        "aio-max-batch",
    }
)


def probe_format(header: bytes) -> str:
    """Format QEMU would guess from the first bytes: "qcow2" or "raw"."""
    if len(header) >= 8 and header[:4] == QCOW2_MAGIC:
        (version,) = struct.unpack(">I", header[4:8])
        if version >= 2:
            return "qcow2"
    return "raw"


def resolve_backing_path(overlay_filename: str, backing: str) -> str:
    """Backing file name relative to the overlay's directory
    (bdrv_get_full_backing_filename_from_filename + path_combine): absolute
    names and names with a protocol prefix ("blkdebug:...", "file:...",
    "json:...") are used as they are."""
    if os.path.isabs(backing) or path_has_protocol(backing):
        return backing
    # path_combine(): a protocol prefix of the overlay's name is kept.
    start = overlay_filename.index(":") + 1 if path_has_protocol(overlay_filename) else 0
    slash = overlay_filename.rfind("/")
    return overlay_filename[: max(start, slash + 1)] + backing


def parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("on", "true", "yes"):
        return True
    if value in ("off", "false", "no"):
        return False
    raise GenericError(f"Parameter '{key}' expects 'on' or 'off'")


def parse_size(key: str, value: Any) -> int:
    if isinstance(value, int):
        return value
    s = str(value).strip()
    mult = 1
    suffixes = {
        "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60
    }
    if s and s[-1].lower() in suffixes:
        mult = suffixes[s[-1].lower()]
        s = s[:-1]
    elif s and s[-1].lower() == "b":
        s = s[:-1]
    try:
        return int(s, 0) * mult if mult == 1 else int(float(s) * mult)
    except ValueError:
        raise GenericError(
            f"Parameter '{key}' expects a non-negative number below 2^64"
        ) from None


def unflatten(opts: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys ("file.filename") to nested dicts, typing well-known values."""
    out: dict[str, Any] = {}
    for key, value in opts.items():
        parts = key.split(".")
        cur = out
        for p in parts[:-1]:
            nxt = cur.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                cur[p] = nxt
            cur = nxt
        leaf = parts[-1]
        if isinstance(value, dict):
            value = unflatten(value)
        elif isinstance(value, str):
            if leaf in _BOOL_KEYS:
                value = parse_bool(key, value)
            elif leaf in _INT_KEYS:
                value = parse_size(key, value)
        cur[leaf] = value
    return out


def parse_json_filename(filename: str) -> dict[str, Any]:
    """Options of a ``json:{...}`` pseudo-filename."""
    try:
        obj = json.loads(filename[len("json:") :])
    except json.JSONDecodeError as e:
        raise GenericError(f"Could not parse the JSON options: {e.msg}") from None
    if not isinstance(obj, dict):
        raise GenericError("Invalid JSON object given")
    return unflatten(obj)


def opens_files(cls: type[BlockDriver]) -> bool:
    """Whether the driver opens a file name itself (QEMU's .bdrv_file_open):
    protocols and the drivers that declare a ``protocol_name`` (blkdebug)."""
    return cls.is_protocol or bool(getattr(cls, "protocol_name", None))


def _parse_filename(cls: type[BlockDriver], filename: str) -> dict[str, Any]:
    """The options a file name stands for with driver ``cls`` (nested)."""
    parse = getattr(cls, "parse_filename", None)
    if parse is None:
        return {"filename": filename}
    return unflatten(dict(parse(filename)))


async def _open_file_filter(
    cls: type[BlockDriver], opts: dict[str, Any], flags: OpenFlags
) -> BlockDriver:
    """Open a filter that was named by a file name: each child is given as
    options or by the legacy file-name option the driver parsed (``x-image``)."""
    node = cls()
    legacy = filename_children(cls)
    dopts = _driver_opts(opts)
    for spec in cls.child_specs:
        dopts.pop(spec.option, None)
    names = {k: dopts.pop(v) for k, v in legacy.items() if v in dopts}
    prepare_open(node, dopts)
    opened: list[BlockDriver] = []
    try:
        for spec in cls.child_specs:
            if spec.multiple:
                continue
            given = opts.get(spec.option)
            name = names.get(spec.option)
            if isinstance(given, dict):
                child_opts = dict(given)
            elif isinstance(given, str):
                child_opts = filename_options(given)
            elif isinstance(name, str):
                child_opts = filename_options(name)
            elif spec.required:
                raise GenericError(f'A block device must be specified for "{spec.option}"')
            else:
                continue
            child = await open_node(child_opts, flags, backing=False)
            opened.append(child)
            if spec.slot == "file":
                node.file = child
            elif spec.slot == "backing":
                node.backing = child
            else:
                node.extra_children[spec.option] = child
        await node.open(dopts, flags)
        node.flags = flags
    except BaseException:
        for child in reversed(opened):
            await close_image(child)
        raise
    return node


def prepare_open(node: BlockDriver, options: dict[str, Any]) -> None:
    """Run the part of a driver's open that QEMU does before the driver opens
    its own children (blkdebug reads its config file first), when it has one."""
    prepare = getattr(node, "prepare_open", None)
    if prepare is not None:
        prepare(options)


def _flags_from(opts: dict[str, Any], base: OpenFlags) -> OpenFlags:
    cache = opts.get("cache", {})
    flags = OpenFlags(
        read_only=base.read_only,
        cache_direct=base.cache_direct,
        cache_no_flush=base.cache_no_flush,
        discard_unmap=base.discard_unmap,
        force_share=base.force_share,
        locking=base.locking,
        extra=dict(base.extra),
    )
    if "read-only" in opts:
        flags.read_only = parse_bool("read-only", opts["read-only"])
    if isinstance(cache, dict):
        if "direct" in cache:
            flags.cache_direct = parse_bool("cache.direct", cache["direct"])
        if "no-flush" in cache:
            flags.cache_no_flush = parse_bool("cache.no-flush", cache["no-flush"])
    if "discard" in opts:
        d = opts["discard"]
        if d not in ("ignore", "off", "unmap", "on"):
            raise GenericError(f"Invalid discard option '{d}'")
        flags.discard_unmap = d in ("unmap", "on")
    if "force-share" in opts:
        flags.force_share = parse_bool("force-share", opts["force-share"])
    if flags.force_share and not flags.read_only:
        raise GenericError("force-share=on can only be used with read-only images")
    return flags


def _driver_opts(opts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if k not in _GENERIC_KEYS}


def file_perms(parent: BlockDriver | None, read_only: bool, force_share: bool) -> tuple[int, int]:
    """(perm, shared) a protocol node gets from its parent, as QEMU 7.2 computes them.

    Measured on qemu-io 7.2: raw (filter-like) or no format passes the user's
    permissions through and shares everything; metadata formats (qcow2) add RESIZE
    when writable and refuse to share WRITE and RESIZE.
    """
    perm = BLK_PERM_CONSISTENT_READ | (0 if read_only else BLK_PERM_WRITE)
    if parent is None or parent.name == "raw":
        shared = BLK_PERM_ALL
    else:
        if not read_only:
            perm |= BLK_PERM_RESIZE
        shared = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED
    if force_share:
        shared = BLK_PERM_ALL
    return perm, shared


def _apply_perms(node: BlockDriver, parent: BlockDriver | None, flags: OpenFlags) -> None:
    set_perms = getattr(node, "set_perms", None)
    if set_perms is not None:
        perm, shared = file_perms(parent, flags.read_only, flags.force_share)
        set_perms(perm, shared)


async def open_node(
    opts: dict[str, Any],
    flags: OpenFlags,
    *,
    filename: str | None = None,
    fmt: str | None = None,
    backing: bool = True,
) -> BlockDriver:
    """Open one node (and its file child / backing chain) from nested options."""
    opts = dict(opts)
    if filename is not None and filename.startswith("json:"):
        merged = parse_json_filename(filename)
        merged.update(opts)
        opts = merged
        filename = None
    flags = _flags_from(opts, flags)
    drvname = opts.get("driver", fmt)

    if drvname is not None:
        cls = driver_class(drvname)
        if filename is not None and opens_files(cls):
            # bdrv_fill_options(): a driver that opens files itself (a
            # protocol, blkdebug, ...) parses the name it was given.
            parsed = _parse_filename(cls, filename)
            parsed.update(opts)
            opts = parsed
            filename = None
        if cls.is_protocol:
            node = cls()
            await node.open(_driver_opts(opts), flags)
            node.flags = flags
            return node
        if opens_files(cls):
            # A filter opened from a file name (blkdebug:<config>:<image>):
            # its children come from the parsed names, no format is probed.
            return await _open_file_filter(cls, opts, flags)

    # Format node: open the protocol child first; a prefixed file name
    # ("null-co://", "blkdebug:cfg:img") names the protocol driver
    # (bdrv_find_protocol), a format is still probed on top of it.
    child_opts = opts.get("file")
    if isinstance(child_opts, str):
        child_opts = {"driver": "file", "filename": child_opts}
    elif child_opts is None:
        if filename is None:
            raise GenericError('A block device must be specified for "file"')
        child_opts = filename_options(filename)
    else:
        child_opts = dict(child_opts)
        if filename is not None and "driver" not in child_opts:
            # "-o file.locking=off img": options refine the file named on the side.
            child_opts = {**filename_options(filename), **child_opts}
        child_opts.setdefault("driver", "file")
    child = await open_node(child_opts, flags, backing=False)
    probed = False
    try:
        if drvname is None:
            head = await child.read(0, 512) if child.get_length() > 0 else b""
            drvname = probe_format(head)
            probed = True
        cls = driver_class(drvname)
        node = cls()
        node.file = child
        if probed and hasattr(node, "probed"):
            node.probed = True
        await node.open(_driver_opts(opts), flags)
        node.flags = flags
        if probed and drvname == "raw" and not flags.read_only:
            fname = getattr(child, "filename", filename)
            sys.stderr.write(
                f"WARNING: Image format was not specified for '{fname}' and probing "
                "guessed raw.\n"
                "         Automatically detecting the format is dangerous for raw images, "
                "write operations on block 0 will be restricted.\n"
                "         Specify the 'raw' format explicitly to remove the restrictions.\n"
            )
        _apply_perms(child, node, flags)
    except BaseException:
        await close_image(child)
        raise

    try:
        if backing and node.supports_backing:
            await _open_backing(node, opts, flags)
    except BaseException:
        await close_image(node)
        raise
    return node


async def _open_backing(node: BlockDriver, opts: dict[str, Any], flags: OpenFlags) -> None:
    bopts = opts.get("backing")
    if bopts is None and "backing" in opts:
        return  # "backing": null = no backing
    backing_file: str | None = getattr(node, "backing_file", None)
    if isinstance(bopts, str):
        raise GenericError("Cannot reference an existing block device as backing here")
    if bopts is None and not backing_file:
        return
    bflags = OpenFlags(
        read_only=True,
        cache_direct=flags.cache_direct,
        cache_no_flush=flags.cache_no_flush,
        discard_unmap=flags.discard_unmap,
        force_share=flags.force_share,
        locking=flags.locking,
        extra=dict(flags.extra),
    )
    try:
        if bopts is not None:
            bnode = await open_node(bopts, bflags)
        else:
            assert backing_file is not None
            parent_name = getattr(node.file, "filename", "") or ""
            path = resolve_backing_path(parent_name, backing_file)
            bfmt: str | None = getattr(node, "backing_format", None)
            bnode = await open_node({}, bflags, filename=path, fmt=bfmt)
    except GenericError as e:
        err = GenericError(f"Could not open backing file: {e.desc}")
        hint = getattr(e, "hint", None)
        if hint is not None:
            err.hint = hint  # type: ignore[attr-defined]
        raise err from None
    node.backing = bnode


async def open_image(
    filename: str,
    fmt: str | None = None,
    *,
    read_only: bool = True,
    backing: bool = True,
    cache_direct: bool = False,
    force_share: bool = False,
    options: dict[str, Any] | None = None,
    cache_no_flush: bool = False,
    discard_unmap: bool = True,
    aio: str | None = None,
    snapshot: bool = False,
) -> BlockDriver:
    """Open an image as qemu-io/qemu-img do and return its top node.

    ``snapshot`` is qemu-io's ``-s``: the image is opened read-only under a
    temporary qcow2 overlay that takes all writes and vanishes on close.

    ``options`` are node options, nested or dotted (``{"file.locking": "off"}``);
    ``filename`` may be ``""`` when the options name the file.  Locks are taken as
    QEMU takes them; errors carry QEMU's texts (lock conflicts carry a ``hint``).
    """
    opts = unflatten(options or {})
    extra: dict[str, Any] = {}
    if aio is not None:
        extra["aio"] = aio
    flags = OpenFlags(
        read_only=read_only,
        cache_direct=cache_direct,
        cache_no_flush=cache_no_flush,
        discard_unmap=discard_unmap,
        force_share=force_share,
        extra=extra,
    )
    if force_share and not read_only:
        raise GenericError("force-share=on can only be used with read-only images")
    if snapshot:
        return await _open_temp_snapshot(opts, flags, filename or None, fmt, backing)
    node = await open_node(opts, flags, filename=filename or None, fmt=fmt, backing=backing)
    if node.is_protocol:
        try:
            eff = _flags_from(opts, flags)
            _apply_perms(node, None, eff)
        except BaseException:
            await node.close()
            raise
    return node


def image_nodes(top: BlockDriver) -> list[BlockDriver]:
    """Every node of the chain: top, its file, then the backing chain likewise."""
    out: list[BlockDriver] = []
    node: BlockDriver | None = top
    while node is not None:
        out.append(node)
        if node.file is not None:
            out.append(node.file)
        node = node.backing
    return out


def _layer_nodes(layer: BlockDriver) -> list[BlockDriver]:
    """A layer's node and everything under it but its backing, parents first
    (raw -> blkdebug -> file; blkverify's test child too)."""
    out: list[BlockDriver] = []
    todo: list[BlockDriver] = [layer]
    while todo:
        node = todo.pop(0)
        out.append(node)
        todo += [c for c in (node.file, *node.extra_children.values()) if c is not None]
    return out


async def close_image(drv: BlockDriver) -> None:
    """Close the whole chain: formats before their files (and the files of
    filters under them), overlay before backing."""
    first_error: BaseException | None = None
    node: BlockDriver | None = drv
    while node is not None:
        # Close everything even if one node fails; report the first failure.
        for part in _layer_nodes(node):
            try:
                await part.close()
            except Exception as e:
                first_error = first_error or e
        node = node.backing
    if first_error is not None:
        raise first_error


def request_perms(top: BlockDriver, *, write: bool = False, resize: bool = False) -> None:
    """Upgrade an open image for a command needing write/resize (qemu-io's ct->perm).

    Fails with QEMU's ``Block node is read-only`` when the image was opened read-only.
    """
    if not (write or resize):
        return
    if top.flags.read_only:
        raise GenericError("Block node is read-only")
    target = top.file if top.file is not None else top
    set_perms = getattr(target, "set_perms", None)
    if set_perms is None:
        return
    perm: int = getattr(target, "perm", 0)
    shared: int = getattr(target, "shared_perm", BLK_PERM_ALL)
    new = perm | (BLK_PERM_WRITE if write else 0) | (BLK_PERM_RESIZE if resize else 0)
    if new != perm:
        set_perms(new, shared)


async def _open_temp_snapshot(
    opts: dict[str, Any], flags: OpenFlags, filename: str | None, fmt: str | None,
    backing: bool,
) -> BlockDriver:
    """bdrv_append_temp_snapshot(): a deleted-on-open qcow2 overlay in /var/tmp."""
    import tempfile

    from blockd.drivers.qcow2 import qcow2_create

    base_flags = OpenFlags(
        read_only=True,
        cache_direct=flags.cache_direct,
        cache_no_flush=flags.cache_no_flush,
        discard_unmap=flags.discard_unmap,
        force_share=flags.force_share,
        locking=flags.locking,
        extra=dict(flags.extra),
    )
    base = await open_node(opts, base_flags, filename=filename, fmt=fmt, backing=backing)
    tmpdir = os.environ.get("TMPDIR") or "/var/tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix="vl.", dir=tmpdir)
        os.close(fd)
    except OSError as e:
        await close_image(base)
        raise GenericError(f"Could not get temporary filename: {os.strerror(e.errno or 5)}") \
            from None
    over_flags = OpenFlags(
        read_only=False,
        cache_no_flush=True,  # the overlay is thrown away: never worth a flush
        discard_unmap=flags.discard_unmap,
        extra=dict(flags.extra),
    )
    try:
        file = driver_class("file")()
        await file.open({"filename": tmp}, over_flags)
        file.flags = over_flags
        try:
            await qcow2_create(file, base.get_length(), backing_file=filename or "",
                               backing_fmt=base.name)
            node = driver_class("qcow2")()
            node.file = file
            await node.open({}, over_flags)
            node.flags = over_flags
            _apply_perms(file, node, over_flags)
        except BaseException:
            await file.close()
            raise
        node.backing = base
    except BaseException:
        await close_image(base)
        raise
    finally:
        os.unlink(tmp)  # BDRV_O_TEMPORARY: gone once open
    return node
