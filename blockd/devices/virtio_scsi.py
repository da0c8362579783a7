"""virtio-scsi-pci (alias virtio-scsi): a SCSI controller, optionally on an iothread.

Its bus is ``<id>.0``, or ``scsi.<N>`` for a controller without an id (qbus
automatic ids).  Disks plugged into it move their node graph
into its AioContext (virtio_scsi_hotplug: the iothread's, else the main one)
and back to the main context when unplugged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from blockd.devices.props import parse_bool, parse_uint32
from blockd.devices.qdev import Bus, Device
from blockd.qmp.errors import DeviceNotFound, GenericError
from blockd.qom import IOThread

if TYPE_CHECKING:
    from blockd.devices.manager import DeviceManager

# VIRTIO_SCSI_MAX_CHANNEL / TARGET / LUN.
MAX_CHANNEL = 0
MAX_TARGET = 255
MAX_LUN = 16383

_BOOL_PROPS = frozenset({"hotplug", "param_change", "seg_max_adjust", "ioeventfd",
                         "multifunction", "x-pcie-lnksta-dllla", "iommu_platform"})
_UINT_PROPS = frozenset({"num_queues", "virtqueue_size", "max_sectors", "cmd_per_lun",
                         "vectors"})
_STR_PROPS = frozenset({"addr", "romfile", "disable-legacy", "disable-modern"})


class VirtioScsiPci(Device):
    type_name = "virtio-scsi-pci"
    guest_unplug: ClassVar[bool] = True

    def __init__(self, manager: DeviceManager) -> None:
        super().__init__(manager)
        self.iothread: str | None = None
        self.props: dict[str, object] = {}

    @property
    def has_context(self) -> bool:
        """virtio_scsi_dataplane_setup(): s->ctx is the iothread's, or the main
        loop's when ioeventfd is on (the default); without ioeventfd there is none."""
        return self.iothread is not None or self.props.get("ioeventfd", True) is not False

    @property
    def aio_context(self) -> str | None:
        """The AioContext disks on this controller use (s->ctx)."""
        return self.iothread

    def set_property(self, name: str, value: str) -> None:
        if name == "iothread":
            self.iothread = self._resolve_iothread(value)
        elif name in _BOOL_PROPS:
            self.props[name] = parse_bool(name, value)
        elif name in _UINT_PROPS:
            self.props[name] = parse_uint32(name, value)
        elif name in _STR_PROPS:
            self.props[name] = value
        else:
            raise GenericError(f"Property '{self.type_name}.{name}' not found")

    def _resolve_iothread(self, path: str) -> str | None:
        """object_resolve_link(): "" clears the link; else an iothread object."""
        if path == "":
            return None
        qom = self.manager.daemon.qom
        try:
            obj = qom.resolve(path)
        except DeviceNotFound:
            raise DeviceNotFound(f"Device '{path}' not found") from None
        except GenericError:
            raise GenericError(f"Path '{path}' does not uniquely identify an object") from None
        if not isinstance(obj, IOThread):
            raise GenericError("Invalid parameter type for 'iothread', expected: iothread")
        return obj.id

    def realize(self) -> None:
        if self.id is not None:
            name = f"{self.id}.0"
        else:
            name = f"scsi.{self.manager.next_bus_id('SCSI')}"
        self.child_buses = [Bus(name, "SCSI", self)]
