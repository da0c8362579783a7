"""device_add and device_del (see :mod:`blockd.devices`)."""

from __future__ import annotations

from typing import Any

from blockd.devices import get_devices
from blockd.qmp.dispatch import CommandContext, qmp_command


@qmp_command("device_add")
async def device_add(ctx: CommandContext, args: dict[str, Any]) -> None:
    get_devices(ctx.daemon).device_add(args)


@qmp_command("device_del")
async def device_del(ctx: CommandContext, args: dict[str, Any]) -> None:
    get_devices(ctx.daemon).device_del(args["id"])
