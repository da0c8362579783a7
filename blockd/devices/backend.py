"""The BlockBackend a disk device uses (QEMU's anonymous blk of set_drive_helper).

It is a non-node user of its root node: it shows in query-block (``device``
"", ``qdev`` the device id or QOM path) and in x-debug-query-block-graph, is
named "block device '<id or path>'" in permission errors, and refuses to be
moved to another AioContext by a change that starts elsewhere
(blk_root_change_aio_ctx: it has a device).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blockd.drivers.locking import BLK_PERM_ALL
from blockd.graph import aio_context
from blockd.graph.accounting import BlockAcctStats
from blockd.graph.node import BdrvChild, BlockNode
from blockd.graph.users import attach_user, detach_user, set_user_perms

if TYPE_CHECKING:
    from blockd.devices.qdev import Device


class DeviceBackend:
    """An anonymous BlockBackend attached to ``device``; attributes as
    :func:`blockd.graph.query.query_block` reads them."""

    name = ""
    removable = False
    locked = False
    tray_open: bool | None = None

    def __init__(self, node: BlockNode, device: Device) -> None:
        self.device = device
        # blk_new(bdrv_get_aio_context(bs), 0, BLK_PERM_ALL) + blk_insert_bs.
        self.aio_context: str | None = node.aio_context
        self.io_status: str | None = "ok"
        self.write_cache = True
        self.throttle: dict[str, object] | None = None
        # blk->stats; a disk device accounts invalid and failed requests
        # (QEMU 7.2 shows both true for a -device on a -blockdev node).
        self.stats = BlockAcctStats(account_invalid=True, account_failed=True)
        self.root: BdrvChild | None = attach_user(node, "root", 0, BLK_PERM_ALL,
                                                  self._desc())
        aio_context.register_user(self.root, self)

    def _desc(self) -> str:
        return f"block device '{self.device.id_or_path}'"

    @property
    def qdev(self) -> str:
        return self.device.id_or_path

    def allow_aio_context_change(self) -> bool:
        """blk_root_change_aio_ctx(): a backend with a device stays put."""
        return False

    def set_perm(self, perm: int, shared: int) -> None:
        """blk_set_perm(): QEMU's error and nothing changed when refused."""
        assert self.root is not None
        set_user_perms(self.root, perm, shared)

    def set_aio_context(self, ctx: str | None) -> None:
        """blk_set_aio_context(): the backend moves its whole graph with it."""
        if self.root is not None:
            aio_context.set_aio_context(self.root.child, ctx, ignore=self.root)
        self.aio_context = ctx

    def close(self) -> None:
        """blk_unref(): drop the edge and its permissions."""
        if self.root is None:
            return
        aio_context.unregister_user(self.root)
        detach_user(self.root)
        self.root = None
