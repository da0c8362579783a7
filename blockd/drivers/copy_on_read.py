"""The ``copy-on-read`` filter (QEMU's block/copy-on-read.c).

Reads through the filter copy the data they find in the backing chain of
``file`` into ``file`` itself (QEMU's BDRV_REQ_COPY_ON_READ path,
bdrv_co_do_copy_on_readv): per cluster of ``file``, a range not allocated in
``file`` is read, then written back unchanged (as a zero-write when it is all
zeros).  With ``bottom`` only data allocated in the backing chain down to and
including ``bottom`` is copied; what lies below is read but left in place
(block-stream's ``filter-node-name`` relies on that).

``bottom`` names a node; the graph resolves it through the callable in
``OpenFlags.extra["lookup-node"]`` (name -> BlockDriver | None), or passes the
driver itself in the options.
"""

from __future__ import annotations

from typing import Any, ClassVar

from blockd.drivers.base import (
    BlockDriver,
    BlockStatusFlag,
    ChildRole,
    OpenFlags,
    is_allocated_above,
    register_driver,
)
from blockd.drivers.compress import FilterPassthrough
from blockd.qmp.errors import GenericError

# QEMU's MAX_BOUNCE_BUFFER for copy-on-read.
MAX_BOUNCE_BUFFER = 32768 * 512
# consistent-read | write | resize, and write-unchanged (BLK_PERM_* bits).
_PERM_PASSTHROUGH = 0x1 | 0x2 | 0x8
_PERM_WRITE_UNCHANGED = 0x4


@register_driver
class CopyOnReadDriver(FilterPassthrough):
    name: ClassVar[str] = "copy-on-read"
    # QEMU 7.2's copy-on-read has no bdrv_reopen_prepare (measured on QSD).
    supports_reopen: ClassVar[bool] = False
    mutable_opts: ClassVar[frozenset[str] | None] = frozenset()

    def __init__(self) -> None:
        super().__init__()
        self.bottom: BlockDriver | None = None

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        await super().open(options, flags)
        bottom = options.get("bottom")
        if bottom is None or isinstance(bottom, BlockDriver):
            self.bottom = bottom
            return
        lookup = flags.extra.get("lookup-node")
        found = lookup(str(bottom)) if callable(lookup) else None
        if found is None:
            raise GenericError(f"Bottom node '{bottom}' not found")
        if not isinstance(found, BlockDriver):
            found = getattr(found, "driver", None)
            if not isinstance(found, BlockDriver):
                raise GenericError(f"Bottom node '{bottom}' not opened")
        self.bottom = found

    def child_perm(
        self,
        child_name: str,
        role: ChildRole,
        read_only: bool,
        perm: int = 0,
        shared: int = 0xF,
    ) -> tuple[int, int]:
        """cor_child_perm(): pass read/write/resize through, always take
        write-unchanged (copying up does not change guest data), share it."""
        nperm = (perm & _PERM_PASSTHROUGH) | _PERM_WRITE_UNCHANGED
        nshared = (shared & _PERM_PASSTHROUGH) | _PERM_WRITE_UNCHANGED
        return nperm, nshared

    def _cluster_size(self, top: BlockDriver) -> int:
        cs = getattr(top, "cluster_size", 0)
        if isinstance(cs, int) and cs > 0:
            return cs
        return max(1, top.refresh_limits().request_alignment)

    async def read(self, offset: int, length: int) -> bytes:
        top = self.child()
        if length <= 0:
            return b""
        if self.bottom is None:
            return await self._cor_read(top, offset, length)
        # Per run: copy only what the chain above-and-including bottom provides.
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            if top.backing is None:
                allocated, n = False, end - pos
            else:
                # Allocated anywhere from top's backing down to bottom (inclusive).
                allocated, n = await is_allocated_above(
                    top.backing, self.bottom.backing, pos, end - pos
                )
            n = max(1, min(n, end - pos))
            if allocated:
                out += await self._cor_read(top, pos, n)
            else:
                out += await top.read(pos, n)
            pos += n
        return bytes(out)

    async def _cor_read(self, top: BlockDriver, offset: int, length: int) -> bytes:
        """bdrv_co_do_copy_on_readv(): copy whole clusters not allocated in top."""
        cs = self._cluster_size(top)
        size = top.get_length()
        start = offset - offset % cs
        end = min(-(-(offset + length) // cs) * cs, max(size, offset + length))
        out = bytearray()
        pos = start
        while pos < end:
            st = await top.block_status(pos, min(end - pos, MAX_BOUNCE_BUFFER))
            n = max(1, min(st.length, end - pos))
            if st.flags & BlockStatusFlag.ALLOCATED:
                out += await top.read(pos, n)
            else:
                # Copy whole clusters of the run (the last one may end at EOF).
                n = min(end - pos, max(cs, n - n % cs), MAX_BOUNCE_BUFFER)
                data = await top.read(pos, n)
                if data.count(0) == len(data):
                    await top.write_zeroes(pos, n)
                else:
                    await top.write(pos, data)
                out += data
            pos += n
        skip = offset - start
        return bytes(out[skip : skip + length])
