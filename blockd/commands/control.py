"""Monitor control commands: capabilities, version, introspection, quit."""

from __future__ import annotations

from typing import Any

from blockd.qmp.dispatch import CommandContext, qmp_command
from blockd.qmp.errors import CommandNotFound
from blockd.version import version_info


@qmp_command("qmp_capabilities", negotiation=True)
async def qmp_capabilities(ctx: CommandContext, args: dict[str, Any]) -> None:
    session = ctx.session
    if session is None or session.negotiated:
        raise CommandNotFound("Capabilities negotiation is already complete, command ignored")
    session.enter_command_mode(oob="oob" in args.get("enable", []))


@qmp_command("query-version")
async def query_version(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    return version_info()


@qmp_command("query-commands")
async def query_commands(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, str]]:
    # QEMU lists commands in reverse registration (= schema) order.
    dispatcher = ctx.daemon.dispatcher
    names = [n for n in ctx.daemon.schema.command_names() if dispatcher.available(n)]
    return [{"name": n} for n in reversed(names)]


@qmp_command("query-qmp-schema")
async def query_qmp_schema(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    dispatcher = ctx.daemon.dispatcher
    implemented = frozenset(n for n in dispatcher.registry.commands if dispatcher.available(n))
    result: list[dict[str, Any]] = ctx.daemon.schema.introspect(implemented)
    return result


@qmp_command("quit")
async def quit_(ctx: CommandContext, args: dict[str, Any]) -> None:
    # The reply is queued before the daemon stops; closing flushes it (QEMU: reply, then EOF).
    ctx.daemon.request_shutdown()
