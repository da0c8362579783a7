"""QMP commands that change the block graph: blockdev-add, blockdev-del,
blockdev-reopen and x-blockdev-reopen (QEMU 6.0 wording)."""

from __future__ import annotations

from typing import Any

from blockd.graph import opener
from blockd.qmp.dispatch import CommandContext, qmp_command


@qmp_command("blockdev-add")
async def blockdev_add(ctx: CommandContext, args: dict[str, Any]) -> None:
    await opener.blockdev_add(ctx.daemon.graph, args)


@qmp_command("blockdev-del")
async def blockdev_del(ctx: CommandContext, args: dict[str, Any]) -> None:
    await opener.blockdev_del(ctx.daemon.graph, str(args["node-name"]))


@qmp_command("blockdev-reopen")
async def blockdev_reopen(ctx: CommandContext, args: dict[str, Any]) -> None:
    from blockd.graph.reopen import reopen_multiple

    await reopen_multiple(ctx.daemon.graph, list(args["options"]), compat="7.2")


@qmp_command("x-blockdev-reopen")
async def x_blockdev_reopen(ctx: CommandContext, args: dict[str, Any]) -> None:
    from blockd.graph.reopen import reopen_multiple

    await reopen_multiple(ctx.daemon.graph, [args], compat="6.0")
