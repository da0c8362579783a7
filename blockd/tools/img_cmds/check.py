"""``qemu-img check``: ImageCheck, its human/JSON reports and exit codes.

Exit codes (qemu-img documents them): 0 clean, 1 check not completed (open or
internal error), 2 corruptions, 3 leaks only, 63 format without checks.
"""

from __future__ import annotations

import os
from typing import Any

from blockd.drivers.base import BlockDriver
from blockd.qmp.errors import GenericError
from blockd.tools.img_cmds.common import Console, ImgExit, parse_cache, parse_output_format
from blockd.tools.img_cmds.getopt import LongOpt, getopt
from blockd.tools.img_cmds.image import close_quietly, open_for_tool
from blockd.tools.img_cmds.qjson import to_json_pretty
from blockd.tools.img_cmds.usage import show_help

LONGOPTS = [
    LongOpt("help", False, "h"),
    LongOpt("image-opts", False, "image-opts"),
    LongOpt("format", True, "f"),
    LongOpt("repair", True, "r"),
    LongOpt("output", True, "output"),
    LongOpt("force-share", False, "U"),
]

_FIELDS = (
    "corruptions",
    "leaks",
    "check_errors",
    "corruptions_fixed",
    "leaks_fixed",
    "image_end_offset",
    "total_clusters",
    "allocated_clusters",
    "fragmented_clusters",
    "compressed_clusters",
)


class NotSupported(Exception):
    """The format has no consistency check (qemu-img exits 63)."""


async def _run_check(con: Console, node: BlockDriver, repair: str | None) -> dict[str, int]:
    checker = getattr(node, "check", None)
    if checker is None:
        raise NotSupported
    result = await checker(repair)
    for line in getattr(result, "messages", []):
        con.error_print(line if line.endswith("\n") else line + "\n")
    r = {f: int(getattr(result, f, 0)) for f in _FIELDS}
    # -errno when the check itself failed: QEMU then prints no report at all.
    r["ret"] = int(getattr(result, "ret", 0) or 0)
    return r


def image_check(filename: str, fmt: str, r: dict[str, int]) -> dict[str, Any]:
    """collect_image_check(): optional members only when non-zero, QAPI order."""
    out: dict[str, Any] = {"filename": filename, "format": fmt, "check-errors": r["check_errors"]}
    for key in (
        "image_end_offset",
        "corruptions",
        "leaks",
        "corruptions_fixed",
        "leaks_fixed",
        "total_clusters",
        "allocated_clusters",
        "fragmented_clusters",
        "compressed_clusters",
    ):
        if r[key]:
            out[key.replace("_", "-")] = r[key]
    return out


def human_check(r: dict[str, int]) -> str:
    """dump_human_image_check()."""
    out: list[str] = []
    if not (r["corruptions"] or r["leaks"] or r["check_errors"]):
        out.append("No errors were found on the image.\n")
    else:
        if r["corruptions"]:
            out.append(
                f"\n{r['corruptions']} errors were found on the image.\n"
                "Data may be corrupted, or further writes to the image may corrupt it.\n"
            )
        if r["leaks"]:
            out.append(
                f"\n{r['leaks']} leaked clusters were found on the image.\n"
                "This means waste of disk space, but no harm to data.\n"
            )
        if r["check_errors"]:
            out.append(f"\n{r['check_errors']} internal errors have occurred during the check.\n")
    total, alloc = r["total_clusters"], r["allocated_clusters"]
    if total and alloc:
        out.append(
            "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n"  # noqa: UP031
            % (
                alloc,
                total,
                alloc * 100.0 / total,
                r["fragmented_clusters"] * 100.0 / alloc,
                r["compressed_clusters"] * 100.0 / alloc,
            )
        )
    if r["image_end_offset"]:
        out.append(f"Image end offset: {r['image_end_offset']}\n")
    return "".join(out)


async def _open(
    con: Console,
    filename: str,
    fmt: str | None,
    repair: str | None,
    force_share: bool,
    direct: bool,
) -> BlockDriver:
    """Open for checking, as QEMU does with BDRV_O_CHECK: a dirty image is not
    repaired implicitly by a read-write open (the check must see it as it is),
    and a corrupt-flagged image may be opened read-write to be repaired."""
    return await open_for_tool(
        con,
        filename,
        fmt,
        read_only=repair is None,
        force_share=force_share,
        check_mode=True,
        cache_direct=direct,
    )


async def run(con: Console, argv: list[str]) -> int:
    fmt: str | None = None
    output: str | None = None
    repair: str | None = None
    quiet = False
    force_share = False
    src_cache = "writeback"
    opts, args = getopt(con, argv, ":hf:r:T:qU", LONGOPTS)
    for key, val in opts:
        if key == "h":
            raise show_help(con)
        if key == "f":
            fmt = val
        elif key == "r":
            if val not in ("leaks", "all"):
                raise con.error_exit(
                    f"Unknown option value for -r (expecting 'leaks' or 'all'): {val}"
                )
            repair = val
        elif key == "output":
            output = val
        elif key == "T":
            assert val is not None
            src_cache = val
        elif key == "q":
            quiet = True
        elif key == "image-opts":
            con.image_opts = True
        elif key == "U":
            force_share = True
    if len(args) != 1:
        raise con.error_exit("Expecting one image file name")
    filename = args[0]
    ofmt = parse_output_format(con, output)
    direct = parse_cache(con, src_cache, "source cache")
    try:
        node = await _open(con, filename, fmt, repair, force_share, direct)
    except ImgExit:
        return 1
    try:
        try:
            r = await _run_check(con, node, repair)
        except NotSupported:
            con.error_report("This image format does not support checks")
            return 63
        except GenericError as e:
            con.error_report(f"Check failed: {e.desc}")
            return 1
        if r["ret"] < 0:
            con.error_report(f"Check failed: {os.strerror(-r['ret'])}")
            return 1
        if r["corruptions_fixed"] or r["leaks_fixed"]:
            fixed = (r["leaks_fixed"], r["corruptions_fixed"])
            if ofmt == "human":
                con.qprint(
                    quiet,
                    "The following inconsistencies were found and repaired:\n\n"
                    f"    {fixed[0]} leaked clusters\n"
                    f"    {fixed[1]} corruptions\n\n"
                    "Double checking the fixed image now...\n",
                )
            r = await _run_check(con, node, None)
            r["leaks_fixed"], r["corruptions_fixed"] = fixed
            if r["ret"] < 0:
                con.error_report(f"Check failed: {os.strerror(-r['ret'])}")
                return 1
        if ofmt == "human":
            con.qprint(quiet, human_check(r))
        else:
            con.qprint(quiet, to_json_pretty(image_check(filename, node.name, r)) + "\n")
        if r["check_errors"]:
            con.error_report("Check failed")
            return 1
        if r["corruptions"]:
            return 2
        if r["leaks"]:
            return 3
        return 0
    finally:
        await close_quietly(node)
