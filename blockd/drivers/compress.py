"""The ``compress`` filter (QEMU's block/filter-compress.c) and the pass-through
base shared by blockd's single-child filters.

Every write through ``compress`` reaches its ``file`` child as a compressed
write.  The filter's request alignment is the child's cluster size, so, as
QEMU's generic layer does, unaligned writes are padded by reading the partial
head/tail clusters (read-modify-write) and the whole clusters are written
compressed; a write ending at the (unaligned) image end is trimmed there.
Writing compressed over an allocated cluster fails in the child with EIO, as
in QEMU.
"""

from __future__ import annotations

from typing import Any, ClassVar

from blockd.drivers.base import (
    BlockDriver,
    BlockStatus,
    Limits,
    OpenFlags,
    register_driver,
)
from blockd.qmp.errors import GenericError

# Drivers that implement compressed writes (QEMU's block_driver_can_compress:
# bdrv_co_pwritev_compressed[_part] is set), including filters that forward them.
COMPRESSING_DRIVERS = frozenset({"qcow2", "qcow", "vmdk", "throttle", "copy-on-read"})


def can_compress(drv: BlockDriver) -> bool:
    """Whether compressed writes to ``drv`` are possible."""
    explicit = getattr(drv, "supports_compressed_writes", None)
    if isinstance(explicit, bool):
        return explicit
    return drv.name in COMPRESSING_DRIVERS


class FilterPassthrough(BlockDriver):
    """A filter over ``file``: every operation forwards unless overridden."""

    is_filter: ClassVar[bool] = True

    def child(self) -> BlockDriver:
        if self.file is None:
            raise GenericError('A block device must be specified for "file"')
        return self.file

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        self.flags = flags
        self._open_options = dict(options)
        self.child()

    async def close(self) -> None:
        # The graph closes the child when its last reference goes.
        return None

    # Reopen: the filters' reopen_prepare callbacks accept everything (the
    # generic code refuses changed options), so reopening only records the new
    # options and flags; nothing is re-validated against a scratch instance.
    async def reopen_prepare(self, options: dict[str, Any], flags: OpenFlags) -> None:
        self._reopen_new = (dict(options), flags)

    async def reopen_commit(self) -> None:
        self._open_options, self.flags = self._reopen_new

    async def reopen_abort(self) -> None:
        return None

    def get_length(self) -> int:
        return self.child().get_length()

    def refresh_limits(self) -> Limits:
        return self.child().refresh_limits()

    async def read(self, offset: int, length: int) -> bytes:
        return await self.child().read(offset, length)

    async def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        compressed: bool = False,
        fua: bool = False,
    ) -> None:
        await self.child().write(offset, data, compressed=compressed, fua=fua)

    async def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        await self.child().write_zeroes(offset, length, may_unmap=may_unmap)

    async def discard(self, offset: int, length: int) -> None:
        await self.child().discard(offset, length)

    async def flush(self) -> None:
        await self.child().flush()

    async def truncate(
        self, length: int, *, preallocation: str = "off", exact: bool = False
    ) -> None:
        # bdrv_co_truncate() forwards to the filtered child.
        await self.child().truncate(length, preallocation=preallocation, exact=exact)

    async def block_status(self, offset: int, length: int) -> BlockStatus:
        # bdrv_co_block_status_from_file: the child's answer.
        return await self.child().block_status(offset, length)


@register_driver
class CompressDriver(FilterPassthrough):
    """Turns every write into a compressed write on the child."""

    name: ClassVar[str] = "compress"
    # filter-compress.c has no bdrv_reopen_prepare: QEMU refuses to reopen it.
    supports_reopen: ClassVar[bool] = False
    mutable_opts: ClassVar[frozenset[str] | None] = frozenset()

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        await super().open(options, flags)
        child = self.child()
        if not can_compress(child):
            raise GenericError(
                f"Compression is not supported for underlying format: {child.name}"
            )

    def _cluster(self) -> int:
        cs = getattr(self.child(), "cluster_size", 0)
        return int(cs) if isinstance(cs, int) and cs > 0 else 0

    def refresh_limits(self) -> Limits:
        lim = self.child().refresh_limits()
        cs = self._cluster()
        if cs:
            lim = Limits(cs, lim.max_transfer, lim.opt_transfer, lim.pdiscard_alignment,
                         lim.pwrite_zeroes_alignment)
        return lim

    async def _padded(self, offset: int, data: bytes | bytearray | memoryview
                      ) -> tuple[int, bytes]:
        """Extend [offset, offset+len) to whole clusters with the child's content."""
        mv = memoryview(data).cast("B")
        cs = self._cluster()
        if not cs:
            return offset, bytes(mv)
        size = self.get_length()
        start = offset - offset % cs
        end = offset + len(mv)
        aligned_end = min(-(-end // cs) * cs, max(size, end))
        head = await self.child().read(start, offset - start) if offset > start else b""
        tail = b""
        if aligned_end > end:
            tail = await self.child().read(end, aligned_end - end)
        return start, head + bytes(mv) + tail

    async def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        compressed: bool = False,
        fua: bool = False,
    ) -> None:
        if not len(memoryview(data)):
            return
        start, buf = await self._padded(offset, data)
        await self.child().write(start, buf, compressed=True, fua=fua)

    async def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        cs = self._cluster()
        if not cs or length <= 0:
            await self.child().write_zeroes(offset, length, may_unmap=may_unmap)
            return
        end = offset + length
        # Head and tail partial clusters are padded writes (compressed, as in
        # QEMU where bdrv_co_do_zero_pwritev writes them through pwritev).
        head_end = min(end, -(-offset // cs) * cs)
        if offset % cs:
            await self.write(offset, bytes(head_end - offset))
            offset = head_end
        tail_start = max(offset, end - end % cs)
        if offset < tail_start:
            await self.child().write_zeroes(offset, tail_start - offset, may_unmap=may_unmap)
        if tail_start < end:
            await self.write(tail_start, bytes(end - tail_start))
