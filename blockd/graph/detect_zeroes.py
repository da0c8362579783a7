"""``detect-zeroes``: guest writes of all-zero data become zero writes.

QEMU does this in the generic write path of every node (bdrv_aligned_pwritev):
with ``detect-zeroes`` on, a write whose data is all zeros is issued as a
write-zeroes request instead (compressed writes included), with may-unmap when
the option is ``unmap``.  blockd's drivers implement ``write`` themselves, so
the graph installs this check on each node's driver instance; it reads the
node's current setting on every call, so a reopen that changes the option
takes effect without reinstalling anything.
"""

from __future__ import annotations

from blockd.graph.node import BlockNode


def _is_zero(data: bytes | bytearray | memoryview) -> bool:
    # count() runs in C over the buffer; only a memoryview needs a bytes copy.
    if isinstance(data, memoryview):
        data = data.cast("B").tobytes()
    return data.count(0) == len(data)


def install(node: BlockNode) -> None:
    """Wrap ``node.driver.write`` with QEMU's zero detection for ``node``."""
    drv = node.driver
    write = type(drv).write

    async def detecting_write(
        offset: int, data: bytes | bytearray | memoryview, *,
        compressed: bool = False, fua: bool = False,
    ) -> None:
        mode = node.detect_zeroes
        if mode != "off" and len(data) and _is_zero(data):
            await drv.write_zeroes(offset, len(data), may_unmap=(mode == "unmap"))
            return
        await write(drv, offset, data, compressed=compressed, fua=fua)

    # An instance attribute shadows the class method for every caller.
    drv.write = detecting_write  # type: ignore[method-assign]

