"""device_add / device_del over blockd's device model (QEMU 7.2's qdev_device_add).

The order of checks is QEMU's: the id must be an identifier, the model must
exist, an explicit bus must exist (else a bus of the right kind is searched),
then the device gets its place in QOM (id or anonymous index), its properties
(in QDict order), realize, and the hotplug handler's plug.  A failure after the
device got its place removes it again (its anonymous index stays used).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from blockd.devices.backend import DeviceBackend
from blockd.devices.props import as_opts
from blockd.devices.qdev import Bus, Device, device_type_map, machine_containers
from blockd.devices.scsi_hd import ScsiHd
from blockd.qmp.errors import DeviceNotFound, GenericError

_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")


class DeviceManager:
    """The daemon's devices (``daemon.devices``); offers ``block_backends``."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        # Realized devices in creation order.
        self.devices: list[Device] = []
        self._anon_count = 0
        self._bus_ids: dict[str, int] = {}
        # The pc machine's PCI bus (PCI devices are not tracked on it).
        self._pci = Bus("pci.0", "PCI", None)

    # -- lookups -----------------------------------------------------------------

    def next_bus_id(self, kind: str) -> int:
        """qbus automatic ids: per bus type, never reused."""
        n = self._bus_ids.get(kind, 0)
        self._bus_ids[kind] = n + 1
        return n

    def buses(self) -> list[Bus]:
        """Every bus, most recently created first (QEMU lists children newest first)."""
        return [b for d in reversed(self.devices) for b in d.child_buses]

    def block_backends(self) -> list[DeviceBackend]:
        """BlockBackends of devices, oldest first (QEMU's block_backends list)."""
        return [d.backend for d in self.devices
                if isinstance(d, ScsiHd) and d.backend is not None]

    def find(self, dev_id: str) -> Device:
        """find_device_state(): an id under /machine/peripheral or an absolute path."""
        if dev_id.startswith("/"):
            try:
                obj = self.daemon.qom.resolve(dev_id)
            except (DeviceNotFound, GenericError):
                obj = None
            if isinstance(obj, Device):
                return obj
            if obj is not None:
                raise GenericError(f"{dev_id} is not a hotpluggable device")
        else:
            for d in self.devices:
                if d.id == dev_id:
                    return d
        raise DeviceNotFound(f"Device '{dev_id}' not found")

    def lookup_backend(self, qdev_id: str) -> Any:
        """blk_by_qdev_id() for HMP ``qemu-io -d``: the device's BlockBackend.
        (HMP prints any error the same way, so every error is a GenericError.)"""
        try:
            dev = self.find(qdev_id)
        except DeviceNotFound as exc:
            raise GenericError(exc.desc) from None
        backend = getattr(dev, "backend", None)
        if backend is None or backend.root is None:
            raise GenericError("Device does not have a block device backend")
        return backend

    def lookup_device(self, qdev_id: str) -> Any:
        """The root driver of the device's BlockBackend (see lookup_backend)."""
        return self.lookup_backend(qdev_id).root.child.driver

    # -- device_add ----------------------------------------------------------------

    def device_add(self, args: dict[str, Any]) -> None:
        opts = as_opts(args)
        dev_id = args.get("id") if isinstance(args.get("id"), str) else None
        if dev_id is not None and not _ID_RE.match(dev_id):
            raise GenericError("Parameter 'id' expects an identifier")
        driver = opts.get("driver", "")
        cls = device_type_map().get(driver)
        if cls is None:
            raise GenericError(f"'{driver}' is not a valid device model name")
        bus = self._find_bus(cls, opts.get("bus"))
        dev: Device = cls(self)
        peripheral, anon = machine_containers(self.daemon.qom.root)
        if dev_id is not None:
            if dev_id in peripheral.children:
                raise GenericError(f"Duplicate device ID '{dev_id}'")
            peripheral.add_child(dev_id, dev)
            dev.id = dev_id
        else:
            anon.add_child(f"device[{self._anon_count}]", dev)
            self._anon_count += 1
        try:
            for key, value in opts.items():
                if key not in ("driver", "bus", "id"):
                    dev.set_property(key, value)
            dev.bus = bus
            if bus is not None:
                bus.children.insert(0, dev)
            dev.realize()
            dev.realized = True
            if isinstance(dev, ScsiHd):
                dev.plug()
        except BaseException:
            self._discard(dev)
            raise
        self.devices.append(dev)

    def _find_bus(self, cls: type[Device], path: str | None) -> Bus | None:
        """qbus_find(): an explicit bus by name, else the first of the kind.

        The machine's PCI bus is ``pci.0``; absolute paths start at the system
        bus, whose devices (the PCI host bridge) are not modelled."""
        if path is not None:
            if path.startswith("/"):
                first = next((p for p in path.split("/") if p), "")
                raise DeviceNotFound(f"Device '{first}' not found")
            if path == "pci.0":
                bus: Bus | None = self._pci
            else:
                bus = next((b for b in self.buses() if b.name == path), None)
            if bus is None:
                raise GenericError(f"Bus '{path}' not found")
            if bus.kind != (cls.bus_kind or "PCI"):
                raise GenericError(
                    f"Device '{cls.type_name}' can't go on {bus.kind} bus")
            return None if bus is self._pci else bus
        if cls.bus_kind is None:
            return None
        bus = next((b for b in self.buses() if b.kind == cls.bus_kind), None)
        if bus is None:
            raise GenericError(
                f"No '{cls.bus_kind}' bus found for device '{cls.type_name}'")
        return bus

    def _discard(self, dev: Device) -> None:
        """A device that failed half-way leaves QOM, its bus and its backend."""
        if isinstance(dev, ScsiHd):
            dev.release()
        if dev.bus is not None and dev in dev.bus.children:
            dev.bus.children.remove(dev)
        if dev.parent is not None:
            dev.parent.remove_child(dev.name)

    # -- device_del ----------------------------------------------------------------

    def device_del(self, dev_id: str) -> None:
        dev = self.find(dev_id)
        if dev.pending_unplug:
            raise GenericError(f"Device {dev_id} is already in the process of unplug")
        if dev.guest_unplug:
            # ACPI PCI hotplug: the request waits for a guest that never runs.
            dev.pending_unplug = True
            return
        assert isinstance(dev, ScsiHd)
        dev.unplug()
        path, qid = dev.path, dev.id
        if dev.bus is not None and dev in dev.bus.children:
            dev.bus.children.remove(dev)
        self.devices.remove(dev)
        if dev.parent is not None:
            dev.parent.remove_child(dev.name)
        # Finalization (backend release, DEVICE_DELETED) runs after the reply.
        asyncio.get_running_loop().call_soon(self._finalize, dev, qid, path)

    def _finalize(self, dev: ScsiHd, qid: str | None, path: str) -> None:
        dev.release()
        data: dict[str, Any] = {}
        if qid is not None:
            data["device"] = qid
        data["path"] = path
        self.daemon.events.emit("DEVICE_DELETED", data)

    async def shutdown(self) -> None:
        """Quit: backends let go of their nodes before the graph closes."""
        for dev in self.devices:
            if isinstance(dev, ScsiHd):
                dev.release()


def get_devices(daemon: Any) -> DeviceManager:
    """The daemon's DeviceManager, created on first use: it becomes the
    daemon's ``block_backends`` and ``lookup_device`` and registers a shutdown
    hook that runs before the graph's."""
    mgr = getattr(daemon, "devices", None)
    if isinstance(mgr, DeviceManager):
        return mgr
    mgr = DeviceManager(daemon)
    daemon.devices = mgr
    daemon.block_backends = mgr.block_backends
    daemon.lookup_device = mgr.lookup_device
    hooks = getattr(daemon, "shutdown_hooks", None)
    if isinstance(hooks, list):
        hooks.append(mgr.shutdown)
    return mgr
