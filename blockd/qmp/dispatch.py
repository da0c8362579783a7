"""Command registry and dispatch: QEMU 7.2's ``qmp_dispatch`` rules.

A request goes through, in order: the envelope check (members walked in QDict
order, so the first bad member reported is QEMU's), the command lookup, the
OOB check, argument visiting against the schema, and finally the handler.
Commands run one at a time across all monitors, like QEMU's main loop; a
handler may await I/O but no other command starts meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from blockd.qmp.errors import CommandNotFound, GenericError, QMPError
from blockd.qmp.qdict import qdict_keys

if TYPE_CHECKING:
    from blockd.qapi import Schema


class Session(Protocol):
    """What a command may know of the monitor connection that sent it."""

    @property
    def negotiated(self) -> bool: ...

    oob_enabled: bool

    def enter_command_mode(self, oob: bool) -> None: ...


Handler = Callable[["CommandContext", dict[str, Any]], Awaitable[Any]]


@dataclass
class CommandContext:
    """Passed to every handler: the daemon-wide state and the calling session."""

    daemon: Any
    session: Session | None


@dataclass
class Command:
    name: str
    handler: Handler
    allow_oob: bool = False
    # Runs in capabilities-negotiation mode (only qmp_capabilities does).
    negotiation: bool = False


@dataclass
class CommandRegistry:
    """Handlers by name.  The schema says what exists; this says what is implemented."""

    commands: dict[str, Command] = field(default_factory=dict)

    def register(self, name: str, handler: Handler, *, negotiation: bool = False) -> None:
        if name in self.commands:
            raise ValueError(f"command {name} registered twice")
        self.commands[name] = Command(name, handler, negotiation=negotiation)

    def get(self, name: str) -> Command | None:
        return self.commands.get(name)


# Module-level registry filled by ``@qmp_command`` in blockd.commands.*.
REGISTRY = CommandRegistry()


def qmp_command(
    name: str, *, negotiation: bool = False
) -> Callable[[Handler], Handler]:
    """Decorator registering a handler under its QMP name."""

    def deco(fn: Handler) -> Handler:
        REGISTRY.register(name, fn, negotiation=negotiation)
        return fn

    return deco


log = logging.getLogger(__name__)

_MISSING = object()

NEGOTIATION_DESC = "Expecting capabilities negotiation with 'qmp_capabilities'"


def _check_envelope(request: dict[str, Any], allow_oob: bool) -> tuple[str, bool]:
    """Return (command name, is_oob) or raise QEMU's envelope error."""
    exec_key: str | None = None
    for key in qdict_keys(request):
        value = request[key]
        if key == "execute" or (key == "exec-oob" and allow_oob):
            if not isinstance(value, str):
                raise GenericError(f"QMP input member '{key}' must be a string")
            if exec_key is not None:
                raise GenericError(f"QMP input member '{key}' clashes with '{exec_key}'")
            exec_key = key
        elif key == "arguments":
            if not isinstance(value, dict):
                raise GenericError("QMP input member 'arguments' must be an object")
        elif key == "id":
            continue
        else:
            raise GenericError(f"QMP input member '{key}' is unexpected")
    if exec_key is None:
        raise GenericError("QMP input lacks member 'execute'")
    return request[exec_key], exec_key == "exec-oob"


class Dispatcher:
    """Turns one parsed request into one reply dict (never raises)."""

    def __init__(self, schema: Schema, registry: CommandRegistry, daemon: Any) -> None:
        self.schema = schema
        self.registry = registry
        self.daemon = daemon
        self.lock = asyncio.Lock()

    def available(self, name: str) -> bool:
        """Implemented and described by the schema (what query-commands lists)."""
        return name in self.registry.commands and self.schema.command(name) is not None

    async def dispatch(self, request: Any, session: Session | None) -> dict[str, Any]:
        reply: dict[str, Any]
        rid: Any = _MISSING
        negotiating = session is not None and not session.negotiated
        try:
            if not isinstance(request, dict):
                raise GenericError("QMP input must be a JSON object")
            rid = request.get("id", _MISSING)
            allow_oob = session is not None and session.oob_enabled
            name, oob = _check_envelope(request, allow_oob)
            cmd = self.registry.get(name)
            if (
                cmd is None
                or self.schema.command(name) is None
                or (negotiating and not cmd.negotiation)
            ):
                raise CommandNotFound(f"The command {name} has not been found")
            if oob and not cmd.allow_oob:
                raise GenericError(f"The command {name} does not support OOB")
            args = self.schema.visit_command_args(name, request.get("arguments"))
            async with self.lock:
                ret = await cmd.handler(CommandContext(self.daemon, session), args)
            reply = {"return": {} if ret is None else ret}
        except QMPError as err:
            error = err.to_wire()
            if negotiating and err.error_class == "CommandNotFound":
                error["desc"] = NEGOTIATION_DESC
            reply = {"error": error}
        except Exception as exc:  # a bug must cost one reply, never the connection
            log.exception("command failed unexpectedly")
            reply = {"error": {"class": "GenericError", "desc": f"internal error: {exc}"}}
        if rid is not _MISSING:
            reply["id"] = rid
        return reply
