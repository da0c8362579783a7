"""Event emission: one bus, delivered to every negotiated monitor session."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

EventSink = Callable[[dict[str, Any]], None]


def timestamp() -> dict[str, int]:
    """Realtime clock as QEMU stamps events (gettimeofday, not monotonic)."""
    ns = time.time_ns()
    return {"seconds": ns // 1_000_000_000, "microseconds": (ns // 1000) % 1_000_000}


class EventBus:
    """Fans events out to subscribers (the negotiated QMP sessions).

    Events emitted while nobody is subscribed are lost, as in QEMU.  Emission
    is synchronous and never blocks: sinks only queue bytes for their socket,
    so an event can precede the reply of the command that caused it.
    """

    def __init__(self) -> None:
        self._sinks: list[EventSink] = []

    def subscribe(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def unsubscribe(self, sink: EventSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"event": name}
        if data is not None:
            msg["data"] = data
        msg["timestamp"] = timestamp()
        for sink in list(self._sinks):
            sink(msg)
