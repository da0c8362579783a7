"""``qemu-img info``: ImageInfo as block/qapi.c builds and prints it."""

from __future__ import annotations

import time
from typing import Any

from blockd.drivers.base import BlockDriver
from blockd.tools.img_cmds.common import Console, ImgExit, parse_output_format
from blockd.tools.img_cmds.getopt import LongOpt, getopt
from blockd.tools.img_cmds.image import (
    allocated_file_size,
    close_quietly,
    image_length,
    node_filename,
    open_for_tool,
)
from blockd.tools.img_cmds.qjson import dump_human, to_json_pretty
from blockd.tools.img_cmds.sizes import size_to_str
from blockd.tools.img_cmds.usage import show_help

LONGOPTS = [
    LongOpt("help", False, "h"),
    LongOpt("image-opts", False, "image-opts"),
    LongOpt("format", True, "f"),
    LongOpt("output", True, "output"),
    LongOpt("backing-chain", False, "backing-chain"),
    LongOpt("force-share", False, "U"),
]


def snapshot_infos(node: BlockDriver) -> list[dict[str, Any]]:
    """SnapshotInfo list of a format with internal snapshots (qcow2's table).

    The driver exposes its decoded table as ``snapshots`` (entries with id_str,
    name, date_sec, date_nsec, vm_clock_nsec, vm_state_size and the raw ``extra``
    data, whose first fields are the 64-bit VM state size and the icount).
    """
    out: list[dict[str, Any]] = []
    for sn in getattr(node, "snapshots", None) or []:
        extra: bytes = getattr(sn, "extra", b"") or b""
        vm_state = int(sn.vm_state_size)
        if len(extra) >= 8:
            vm_state = int.from_bytes(extra[0:8], "big")
        entry: dict[str, Any] = {
            "id": sn.id_str,
            "name": sn.name,
            "vm-state-size": vm_state,
            "date-sec": int(sn.date_sec),
            "date-nsec": int(sn.date_nsec),
            "vm-clock-sec": int(sn.vm_clock_nsec) // 1_000_000_000,
            "vm-clock-nsec": int(sn.vm_clock_nsec) % 1_000_000_000,
        }
        if len(extra) >= 24:
            icount = int.from_bytes(extra[16:24], "big")
            if icount != (1 << 64) - 1:
                entry["icount"] = icount
        out.append(entry)
    return out


def snapshot_line(sn: dict[str, Any] | None) -> str:
    """bdrv_snapshot_dump(): the header (None) or one row, without newline."""
    if sn is None:
        return "%-10s%-17s%8s%20s%13s%11s" % (  # noqa: UP031 - C printf layout
            "ID",
            "TAG",
            "VM SIZE",
            "DATE",
            "VM CLOCK",
            "ICOUNT",
        )
    date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sn["date-sec"]))
    nsec = sn["vm-clock-sec"] * 1_000_000_000 + sn["vm-clock-nsec"]
    secs = nsec // 1_000_000_000
    clock = "%02d:%02d:%02d.%03d" % (  # noqa: UP031
        secs // 3600,
        (secs // 60) % 60,
        secs % 60,
        (nsec // 1_000_000) % 1000,
    )
    icount = str(sn["icount"]) if "icount" in sn else ""
    return "%-9s %-16s %8s%20s%13s%11s" % (  # noqa: UP031
        sn["id"],
        sn["name"],
        size_to_str(sn["vm-state-size"]),
        date,
        clock,
        icount,
    )


def _has_get_info(node: BlockDriver) -> bool:
    """Whether bdrv_get_info() succeeds (ImageInfo has ``dirty-flag`` only
    then): raw and filters ask the node below; a driver without it (null-co)
    makes it fail with ENOTSUP."""
    while node.file is not None and (node.is_filter
                                     or getattr(node, "get_info_from_file", False)):
        node = node.file
    return bool(getattr(node, "has_get_info", True))


def image_info(node: BlockDriver) -> dict[str, Any]:
    """bdrv_query_image_info(): members inserted in QAPI order (ImageInfo).

    The filename is the node's (bs->filename): the file's path, also when the
    image was named by json: options or --image-opts.
    """
    from blockd.drivers.open import resolve_backing_path

    filename = node_filename(node)
    info: dict[str, Any] = {"filename": filename, "format": node.name}
    if _has_get_info(node):
        info["dirty-flag"] = bool(getattr(node, "dirty", False))
    actual = allocated_file_size(node)
    if actual is not None:
        info["actual-size"] = actual
    info["virtual-size"] = image_length(node)
    cluster_size = int(getattr(node, "cluster_size", 0) or 0)
    if cluster_size:
        info["cluster-size"] = cluster_size
    backing_file: str | None = getattr(node, "backing_file", None)
    if backing_file:
        info["backing-filename"] = backing_file
        info["full-backing-filename"] = resolve_backing_path(filename, backing_file)
        backing_fmt: str | None = getattr(node, "backing_format", None)
        if backing_fmt:
            info["backing-filename-format"] = backing_fmt
    snapshots = snapshot_infos(node)
    if snapshots:
        info["snapshots"] = snapshots
    specific = node.format_specific_info()
    if specific is not None:
        info["format-specific"] = {"type": node.name, "data": specific}
    return info


def human_info(info: dict[str, Any]) -> str:
    """bdrv_image_info_dump()."""
    actual = info.get("actual-size")
    dsize = size_to_str(actual) if actual is not None else "unavailable"
    vsize = info["virtual-size"]
    out = [
        f"image: {info['filename']}\n",
        f"file format: {info['format']}\n",
        f"virtual size: {size_to_str(vsize)} ({vsize} bytes)\n",
        f"disk size: {dsize}\n",
    ]
    if info.get("encrypted"):
        out.append("encrypted: yes\n")
    if "cluster-size" in info:
        out.append(f"cluster_size: {info['cluster-size']}\n")
    if info.get("dirty-flag"):
        out.append("cleanly shut down: no\n")
    if "backing-filename" in info:
        line = f"backing file: {info['backing-filename']}"
        full = info.get("full-backing-filename")
        if full is None:
            line += " (cannot determine actual path)"
        elif full != info["backing-filename"]:
            line += f" (actual path: {full})"
        out.append(line + "\n")
        if "backing-filename-format" in info:
            out.append(f"backing file format: {info['backing-filename-format']}\n")
    if "snapshots" in info:
        out.append("Snapshot list:\n")
        out.append(snapshot_line(None) + "\n")
        out.extend(snapshot_line(sn) + "\n" for sn in info["snapshots"])
    if "format-specific" in info:
        out.append("Format specific information:\n")
        out.append(dump_human(info["format-specific"]["data"], 1))
    return "".join(out)


async def collect(
    con: Console,
    filename: str,
    fmt: str | None,
    chain: bool,
    force_share: bool,
    image_opts: bool = False,
) -> list[dict[str, Any]]:
    """collect_image_info_list(): the image, then its backing files one by one."""
    seen: set[str] = set()
    infos: list[dict[str, Any]] = []
    name: str | None = filename
    while name is not None:
        if name in seen:
            raise con.fail(f"Backing file '{name}' creates an infinite loop.")
        seen.add(name)
        node = await open_for_tool(
            con, name, fmt, backing=False, force_share=force_share, image_opts=image_opts
        )
        image_opts = False
        try:
            info = image_info(node)
        finally:
            await close_quietly(node)
        infos.append(info)
        name, fmt = None, None
        if chain:
            name = info.get("full-backing-filename")
            fmt = info.get("backing-filename-format")
    return infos


async def run(con: Console, argv: list[str]) -> int:
    fmt: str | None = None
    output: str | None = None
    chain = False
    force_share = False
    opts, args = getopt(con, argv, ":f:hU", LONGOPTS)
    for key, val in opts:
        if key == "h":
            raise show_help(con)
        if key == "f":
            fmt = val
        elif key == "output":
            output = val
        elif key == "backing-chain":
            chain = True
        elif key == "U":
            force_share = True
        elif key == "image-opts":
            con.image_opts = True
    if len(args) != 1:
        raise con.error_exit("Expecting one image file name")
    ofmt = parse_output_format(con, output)
    try:
        infos = await collect(con, args[0], fmt, chain, force_share, con.image_opts)
    except ImgExit:
        return 1
    if ofmt == "human":
        con.print("\n".join(human_info(i) for i in infos))
    elif chain:
        con.print(to_json_pretty(infos) + "\n")
    else:
        con.print(to_json_pretty(infos[0]) + "\n")
    return 0
