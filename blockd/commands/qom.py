"""QOM commands: object-add, object-del, qom-list, qom-get."""

from __future__ import annotations

from typing import Any

import blockd.qom_throttle  # noqa: F401  (registers the throttle-group type)
from blockd.qmp.dispatch import CommandContext, qmp_command


@qmp_command("object-add")
async def object_add(ctx: CommandContext, args: dict[str, Any]) -> None:
    props = {k: v for k, v in args.items() if k not in ("qom-type", "id")}
    ctx.daemon.qom.add_object(args["qom-type"], args["id"], props, ctx.daemon)


@qmp_command("object-del")
async def object_del(ctx: CommandContext, args: dict[str, Any]) -> None:
    ctx.daemon.qom.del_object(args["id"])


@qmp_command("qom-list")
async def qom_list(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, str]]:
    result: list[dict[str, str]] = ctx.daemon.qom.resolve(args["path"]).list_properties()
    return result


@qmp_command("qom-get")
async def qom_get(ctx: CommandContext, args: dict[str, Any]) -> Any:
    return ctx.daemon.qom.resolve(args["path"]).find_property(args["property"])
