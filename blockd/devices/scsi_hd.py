"""scsi-hd: a SCSI disk on a node (``drive``), with QEMU's checks in QEMU's order.

Property time: ``drive`` names a node (or a named BlockBackend, of which blockd
has none) and gets an anonymous :class:`DeviceBackend` taking nothing.
Realize: channel/target/LUN assignment on the bus (scsi_qdev_realize), then
``drive property not set``, then the backend's permissions (blkconf:
consistent-read, plus write unless the node is read-only; shared:
consistent-read, write-unchanged, resize, and write with ``share-rw``).
Plug: the controller's context (its iothread's, else the main one) takes the
node graph over, so a disk on a main-context controller cannot use a node that
another device keeps in an iothread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blockd.devices.backend import DeviceBackend
from blockd.devices.props import parse_bool, parse_enum, parse_uint32
from blockd.devices.qdev import Device
from blockd.devices.virtio_scsi import MAX_CHANNEL, MAX_LUN, MAX_TARGET, VirtioScsiPci
from blockd.drivers.locking import (
    BLK_PERM_CONSISTENT_READ,
    BLK_PERM_RESIZE,
    BLK_PERM_WRITE,
    BLK_PERM_WRITE_UNCHANGED,
)
from blockd.qmp.errors import GenericError

if TYPE_CHECKING:
    from blockd.devices.manager import DeviceManager

_UNSET = 0xFFFFFFFF  # the uint32 properties' default -1
_BOOL_PROPS = frozenset({"removable", "dpofua"})
_UINT_PROPS = frozenset({"logical_block_size", "physical_block_size", "min_io_size",
                         "opt_io_size", "discard_granularity", "max_unmap_size",
                         "max_io_size", "rotation_rate"})
_STR_PROPS = frozenset({"serial", "vendor", "product", "ver", "device_id", "wwn",
                        "port_wwn", "port_index", "bootindex"})
_ENUM_PROPS: dict[str, tuple[str, ...]] = {
    "write-cache": ("on", "off", "auto"),
    "rerror": ("report", "ignore", "enospc", "stop", "auto"),
    "werror": ("report", "ignore", "enospc", "stop", "auto"),
}


class ScsiHd(Device):
    type_name = "scsi-hd"
    bus_kind = "SCSI"

    def __init__(self, manager: DeviceManager) -> None:
        super().__init__(manager)
        self.backend: DeviceBackend | None = None
        self.share_rw = False
        self.channel = 0
        self.scsi_id = _UNSET
        self.lun = _UNSET
        self.props: dict[str, object] = {}

    def set_property(self, name: str, value: str) -> None:
        if name == "drive":
            self._set_drive(value)
        elif name == "share-rw":
            self.share_rw = parse_bool(name, value)
        elif name == "scsi-id":
            self.scsi_id = parse_uint32(name, value)
        elif name == "lun":
            self.lun = parse_uint32(name, value)
        elif name == "channel":
            self.channel = parse_uint32(name, value)
        elif name in _BOOL_PROPS:
            self.props[name] = parse_bool(name, value)
        elif name in _UINT_PROPS:
            self.props[name] = parse_uint32(name, value)
        elif name in _ENUM_PROPS:
            self.props[name] = parse_enum(name, value, _ENUM_PROPS[name])
        elif name in _STR_PROPS:
            self.props[name] = value
        else:
            raise GenericError(f"Property '{self.type_name}.{name}' not found")

    def _set_drive(self, ref: str) -> None:
        """set_drive_helper(): a node name gets a new anonymous BlockBackend."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        if ref == "":
            return  # an empty name leaves the property unset
        node = self.manager.daemon.graph.lookup(ref)
        if node is None:
            raise GenericError(f"Property '{self.type_name}.drive' can't find value '{ref}'")
        self.backend = DeviceBackend(node, self)

    def _assign_address(self) -> None:
        """scsi_qdev_realize(): channel, target and LUN checks and defaults."""
        assert self.bus is not None
        others = [d for d in self.bus.children if isinstance(d, ScsiHd) and d is not self]

        def find(target: int, lun: int) -> ScsiHd | None:
            # scsi_device_find(): the exact LUN, else any device on the target.
            on_target = [d for d in others if d.channel == self.channel
                         and d.scsi_id == target]
            exact = next((d for d in on_target if d.lun == lun), None)
            return exact or (on_target[0] if on_target else None)

        if self.channel > MAX_CHANNEL:
            raise GenericError(f"bad scsi channel id: {self.channel}")
        if self.scsi_id != _UNSET and self.scsi_id > MAX_TARGET:
            raise GenericError(f"bad scsi device id: {self.scsi_id}")
        if self.lun != _UNSET and self.lun > MAX_LUN:
            raise GenericError(f"bad scsi device lun: {self.lun}")
        if self.scsi_id == _UNSET:
            if self.lun == _UNSET:
                self.lun = 0
            target = -1
            while True:
                target += 1
                d = find(target, self.lun)
                if not (d is not None and d.lun == self.lun and target < MAX_TARGET):
                    break
            if d is not None and d.lun == self.lun:
                raise GenericError("no free target")
            self.scsi_id = target
        elif self.lun == _UNSET:
            lun = -1
            while True:
                lun += 1
                d = find(self.scsi_id, lun)
                if not (d is not None and d.lun == lun and lun < MAX_LUN):
                    break
            if d is not None and d.lun == lun:
                raise GenericError("no free lun")
            self.lun = lun
        else:
            d = find(self.scsi_id, self.lun)
            if d is not None and d.lun == self.lun:
                raise GenericError(f"lun already used by '{d.id if d.id else '(null)'}'")

    def realize(self) -> None:
        self._assign_address()
        if self.backend is None or self.backend.root is None:
            raise GenericError("drive property not set")
        node = self.backend.root.child
        perm = BLK_PERM_CONSISTENT_READ
        if not node.read_only:
            perm |= BLK_PERM_WRITE
        shared = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED | BLK_PERM_RESIZE
        if self.share_rw:
            shared |= BLK_PERM_WRITE
        self.backend.set_perm(perm, shared)
        self.backend.write_cache = self.props.get("write-cache", "auto") != "off"

    def plug(self) -> None:
        """virtio_scsi_hotplug(): the controller's context takes the graph."""
        ctrl = self.bus.owner if self.bus is not None else None
        if isinstance(ctrl, VirtioScsiPci) and ctrl.has_context and self.backend is not None:
            self.backend.set_aio_context(ctrl.aio_context)

    def unplug(self) -> None:
        """virtio_scsi_hotunplug(): back to the main context if it can go."""
        ctrl = self.bus.owner if self.bus is not None else None
        if isinstance(ctrl, VirtioScsiPci) and ctrl.has_context and self.backend is not None:
            try:
                self.backend.set_aio_context(None)
            except GenericError:
                pass  # other users keep the graph in the iothread: that's ok

    def release(self) -> None:
        """Finalize: the drive property lets go of its BlockBackend."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None
