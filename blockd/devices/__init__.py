"""blockd's device model: just enough qdev for block tests (iotest 245).

``device_add`` of ``virtio-scsi`` (``virtio-scsi-pci``, with ``iothread``) and
``scsi-hd`` (``drive``, ``share-rw``, ``bus``, ``scsi-id``, ``lun``), and
``device_del``, with QEMU 7.2's texts.  A disk's BlockBackend is a non-node
user of its node (permissions, query-block, AioContext rules).
"""

from blockd.devices.backend import DeviceBackend
from blockd.devices.manager import DeviceManager, get_devices

__all__ = ["DeviceBackend", "DeviceManager", "get_devices"]
