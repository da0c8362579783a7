"""The daemon: schema, dispatcher, event bus, QOM tree, monitors, lifecycle.

Later subsystems (the node graph, the job scheduler) attach to the daemon and
register shutdown hooks, so that ``quit`` and SIGTERM flush and close every
image before the process exits, as qemu-storage-daemon does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import blockd.commands  # noqa: F401  (registers the QMP commands)
from blockd.chardev import Chardev, ChardevSpec
from blockd.qapi import Schema
from blockd.qmp.dispatch import REGISTRY, Dispatcher
from blockd.qmp.errors import GenericError
from blockd.qmp.events import EventBus
from blockd.qmp.session import QMPSession
from blockd.qom import ObjectTree, QObject
from blockd.version import version_info

log = logging.getLogger(__name__)

ShutdownHook = Callable[[], Awaitable[None]]


class ChardevObject(QObject):
    """A chardev's entry in ``/chardevs`` (type ``chardev-stdio``)."""

    type_name = "chardev-stdio"

    def __init__(self, chardev: Chardev) -> None:
        super().__init__()
        self.chardev = chardev


class SocketChardevObject(ChardevObject):
    """``chardev-socket``: its address and whether a client is connected."""

    type_name = "chardev-socket"
    class_properties: ClassVar[dict[str, str]] = {"addr": "SocketAddress", "connected": "bool"}

    def get_property(self, name: str) -> Any:
        opts = self.chardev.spec.opts
        if name == "addr":
            if "path" in opts:
                return {"type": "unix", "path": opts["path"]}
            return {"type": "inet", "host": opts.get("host", ""), "port": str(opts["port"])}
        if name == "connected":
            return self.chardev.connected
        return super().get_property(name)


class Monitor:
    """A QMP monitor on one chardev: serves its clients one after another."""

    def __init__(self, daemon: Daemon, chardev: Chardev, pretty: bool) -> None:
        self.daemon = daemon
        self.chardev = chardev
        self.pretty = pretty
        self.session: QMPSession | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            try:
                conn = await self.chardev.next_connection()
            except OSError as exc:
                log.error("monitor %s: accept failed: %s", self.chardev.spec.id, exc)
                return
            if conn is None:
                return
            reader, writer = conn
            self.session = QMPSession(
                reader, writer, self.daemon.dispatcher, self.daemon.events,
                self.daemon.greeting(), pretty=self.pretty,
            )
            self.chardev.connected = True
            try:
                await self.session.run()
            finally:
                self.session = None
                self.chardev.connected = False

    async def stop(self) -> None:
        if self.session is not None:
            self.session.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


class Daemon:
    """Everything one blockd process holds."""

    def __init__(self, schema: Schema | None = None) -> None:
        self.schema = schema or Schema.load_default()
        self.events = EventBus()
        self.dispatcher = Dispatcher(self.schema, REGISTRY, self)
        self.qom = ObjectTree()
        self.chardevs: dict[str, Chardev] = {}
        self.monitors: list[Monitor] = []
        self.shutdown_hooks: list[ShutdownHook] = []
        # The block graph; its hook runs last at shutdown (jobs/exports first).
        from blockd.graph import NodeRegistry

        self.graph = NodeRegistry(self.events.emit)
        self.shutdown_hooks.append(self._close_graph)
        self._shutdown = asyncio.Event()
        self._stopped = False

    def greeting(self) -> dict[str, Any]:
        return {"version": version_info(), "capabilities": ["oob"]}

    # -- configuration (command line) ------------------------------------------

    async def add_chardev(self, spec: ChardevSpec) -> None:
        if spec.id in self.chardevs:
            raise GenericError("duplicate yank instance")
        if spec.backend == "stdio" and any(
            c.spec.backend == "stdio" for c in self.chardevs.values()
        ):
            raise GenericError("cannot use stdio by multiple character devices")
        chardev = Chardev(spec)
        await chardev.open()
        self.chardevs[spec.id] = chardev
        cls = SocketChardevObject if spec.backend == "socket" else ChardevObject
        self.qom.chardevs.add_child(spec.id, cls(chardev))

    def add_monitor(self, chardev_id: str, pretty: bool) -> None:
        chardev = self.chardevs.get(chardev_id)
        if chardev is None:
            raise GenericError(f'chardev "{chardev_id}" not found')
        if chardev.in_use:
            raise GenericError(f"Device '{chardev_id}' is in use")
        chardev.in_use = True
        monitor = Monitor(self, chardev, pretty)
        self.monitors.append(monitor)

    async def execute(self, name: str, args: dict[str, Any]) -> Any:
        """Run a command with already-visited arguments (command-line options)."""
        cmd = self.dispatcher.registry.get(name)
        if cmd is None:
            raise GenericError(f"The command {name} has not been found")
        from blockd.qmp.dispatch import CommandContext

        async with self.dispatcher.lock:
            return await cmd.handler(CommandContext(self, None), args)

    # -- block layer lookups (the node graph replaces these) ----------------------

    def lookup_bs(self, node_name: str) -> Any:
        """The driver of the node named ``node_name`` (bdrv_lookup_bs, no device)."""
        return self.graph.find(None, node_name).driver

    async def _close_graph(self) -> None:
        """Flush and close every node so that locks are gone when we exit."""
        from blockd.graph.opener import close_all

        await close_all(self.graph)

    def lookup_device(self, qdev_id: str) -> Any:
        """The node attached to the emulated device ``qdev_id``."""
        raise GenericError(f"Device '{qdev_id}' not found")

    # -- lifecycle ----------------------------------------------------------------

    def request_shutdown(self) -> None:
        """Ask the main loop to exit (``quit``, SIGTERM, SIGINT, SIGHUP)."""
        self._shutdown.set()

    async def serve(self) -> None:
        """Start the monitors and run until shutdown is requested."""
        for monitor in self.monitors:
            monitor.start()
        await self._shutdown.wait()
        await self.stop()

    async def stop(self) -> None:
        """Close monitors, run shutdown hooks (flush/close images), remove sockets."""
        if self._stopped:
            return
        self._stopped = True
        for monitor in self.monitors:
            await monitor.stop()
        for hook in reversed(self.shutdown_hooks):
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        self.qom.destroy_all()
        for chardev in self.chardevs.values():
            chardev.close()
