"""The qdev side of devices: buses, the device base class, QOM placement.

Devices live where QEMU puts them: ``/machine/peripheral/<id>`` when the user
gave an id, else ``/machine/peripheral-anon/device[N]`` with N from a counter
that never goes back (QEMU's static anon_count counts every device that got
that far, failed ones included).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from blockd.qom import Container, QObject

if TYPE_CHECKING:
    from blockd.devices.manager import DeviceManager


class Bus:
    """A qbus: ``name`` ("scsi0.0"), its kind ("SCSI") and the devices on it,
    most recently plugged first (QEMU inserts at the head)."""

    def __init__(self, name: str, kind: str, owner: Device | None) -> None:
        self.name = name
        self.kind = kind
        self.owner = owner
        self.children: list[Device] = []


class Device(QObject):
    """A device instance.  Subclasses set ``type_name``, parse their properties
    in :meth:`set_property` (QEMU's texts) and do their work in
    :meth:`realize` / :meth:`unrealize`."""

    # The bus kind the device plugs into ("SCSI"), None for the machine's
    # default bus (PCI on pc).
    bus_kind: ClassVar[str | None] = None
    # Unplugging needs the guest's cooperation (ACPI PCI hotplug): with the
    # guest stopped, device_del only marks the request.
    guest_unplug: ClassVar[bool] = False

    def __init__(self, manager: DeviceManager) -> None:
        super().__init__()
        self.manager = manager
        self.id: str | None = None
        self.bus: Bus | None = None
        self.child_buses: list[Bus] = []
        self.realized = False
        self.pending_unplug = False

    @property
    def path(self) -> str:
        """The canonical QOM path."""
        parts: list[str] = []
        obj: QObject | None = self
        while obj is not None and obj.parent is not None:
            parts.append(obj.name)
            obj = obj.parent
        return "/" + "/".join(reversed(parts))

    @property
    def id_or_path(self) -> str:
        """blk_get_attached_dev_id(): the id, else the QOM path."""
        return self.id if self.id is not None else self.path

    def set_property(self, name: str, value: str) -> None:
        raise NotImplementedError

    def realize(self) -> None:
        """Bring the device up; raise GenericError (nothing kept) on failure."""

    def unrealize(self) -> None:
        """Tear the device down (device_del or failure after realize)."""


class Machine(Container):
    """``/machine``: the pc machine type the oracle runs (``-machine pc``)."""

    type_name = "pc-i440fx-7.2-machine"


def machine_containers(root: QObject) -> tuple[Container, Container]:
    """``/machine/peripheral`` and ``/machine/peripheral-anon``, made on first use."""
    machine = root.children.get("machine")
    if not isinstance(machine, Container):
        machine = Machine()
        root.add_child("machine", machine)
    out: list[Container] = []
    for name in ("peripheral", "peripheral-anon"):
        c = machine.children.get(name)
        if not isinstance(c, Container):
            c = Container()
            machine.add_child(name, c)
        out.append(c)
    return out[0], out[1]


def device_type_map() -> dict[str, Any]:
    """Device model names (and QEMU's aliases) to classes."""
    from blockd.devices.scsi_hd import ScsiHd
    from blockd.devices.virtio_scsi import VirtioScsiPci

    return {
        "virtio-scsi-pci": VirtioScsiPci,
        "virtio-scsi": VirtioScsiPci,
        "scsi-hd": ScsiHd,
    }
