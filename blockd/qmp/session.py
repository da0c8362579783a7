"""One QMP connection: greeting, negotiation state, request loop, output.

The runstate is explicit: ``NEGOTIATING`` until ``qmp_capabilities`` succeeds,
then ``COMMAND``; ``CLOSED`` once the peer or the daemon ends it.  Output is
queued on the transport synchronously (``\\r\\n``-terminated, QDict-ordered),
so events raised while a command runs reach the client before its reply, as
in QEMU.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from blockd.qmp.dispatch import Dispatcher
from blockd.qmp.events import EventBus
from blockd.qmp.json_encoder import encode, encode_pretty
from blockd.qmp.json_parser import JSONParseError, JSONStreamParser
from blockd.qmp.qdict import qdict_ordered

log = logging.getLogger(__name__)

READ_CHUNK = 65536
# A peer that stops reading must not make us buffer without bound.
MAX_PENDING_OUTPUT = 64 * 1024 * 1024


class Runstate(enum.Enum):
    NEGOTIATING = "negotiating"
    COMMAND = "command"
    CLOSED = "closed"


def format_message(msg: dict[str, Any], pretty: bool = False) -> bytes:
    """Wire bytes of one message: QDict member order, QEMU's JSON, CRLF line ends."""
    ordered = qdict_ordered(msg)
    text = encode_pretty(ordered) if pretty else encode(ordered)
    # QEMU's monitor output turns every '\n' into "\r\n" (monitor_puts).
    if pretty:
        text = text.replace("\n", "\r\n")
    return (text + "\r\n").encode("utf-8")


class QMPSession:
    """Serves one connected client until EOF, error or daemon shutdown."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        dispatcher: Dispatcher,
        events: EventBus,
        greeting: dict[str, Any],
        *,
        pretty: bool = False,
        on_quit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.dispatcher = dispatcher
        self.events = events
        self.greeting = greeting
        self.pretty = pretty
        self.runstate = Runstate.NEGOTIATING
        self.oob_enabled = False
        self.parser = JSONStreamParser()

    # -- Session protocol used by commands ---------------------------------

    @property
    def closed(self) -> bool:
        return self.runstate is Runstate.CLOSED

    @property
    def negotiated(self) -> bool:
        return self.runstate is Runstate.COMMAND

    def enter_command_mode(self, oob: bool) -> None:
        """Called by ``qmp_capabilities``: events flow from now on."""
        self.runstate = Runstate.COMMAND
        self.oob_enabled = oob
        self.events.subscribe(self._on_event)

    # -- I/O -----------------------------------------------------------------

    def send(self, msg: dict[str, Any]) -> None:
        if self.runstate is Runstate.CLOSED or self.writer.is_closing():
            return
        transport = self.writer.transport
        if transport.get_write_buffer_size() > MAX_PENDING_OUTPUT:
            log.warning("QMP client is not reading its output; closing the connection")
            self.close()
            return
        self.writer.write(format_message(msg, self.pretty))

    def _on_event(self, msg: dict[str, Any]) -> None:
        self.send(msg)

    def close(self) -> None:
        if self.runstate is not Runstate.CLOSED:
            self.runstate = Runstate.CLOSED
            self.events.unsubscribe(self._on_event)
            self.writer.close()

    async def run(self) -> None:
        """Greet, then execute requests in arrival order until the peer leaves."""
        try:
            self.send({"QMP": self.greeting})
            while self.runstate is not Runstate.CLOSED:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    break
                for item in self.parser.feed(data):
                    if self.closed:
                        break
                    if isinstance(item, JSONParseError):
                        self.send({"error": {"class": "GenericError", "desc": item.desc}})
                        continue
                    reply = await self.dispatcher.dispatch(item, self)
                    self.send(reply)
                await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            log.debug("QMP connection ended: %s", exc)
        finally:
            self.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
