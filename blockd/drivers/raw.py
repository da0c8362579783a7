"""The ``raw`` format driver (QEMU's block/raw-format.c).

A window ``[offset, offset + size)`` onto its ``file`` child; without ``size`` the
window extends to the end of the file and follows its length.
"""

from __future__ import annotations

import errno
import os
from typing import Any, ClassVar

from blockd.drivers.base import (
    BlockDriver,
    BlockStatus,
    Limits,
    OpenFlags,
    bdrv_debug_event,
    register_driver,
)
from blockd.qmp.errors import GenericError

SECTOR = 512


@register_driver
class RawDriver(BlockDriver):
    name: ClassVar[str] = "raw"
    # raw_get_info() asks the file (image info's dirty-flag comes from there).
    get_info_from_file: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0
        self.size: int | None = None
        # Set by the opener when the format was guessed: block 0 is then protected
        # against writes that would make the image probe as another format.
        self.probed = False

    def _child(self) -> BlockDriver:
        if self.file is None:
            raise GenericError("A block device must be specified for \"file\"")
        return self.file

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        self.flags = flags
        child = self._child()
        offset = int(options.get("offset", 0))
        size = options.get("size")
        real_size = child.get_length()
        if offset > real_size:
            raise GenericError(
                f"Offset ({offset}) cannot be greater than size of the containing file "
                f"({real_size})"
            )
        if size is not None:
            size = int(size)
            if real_size - offset < size:
                raise GenericError(
                    f"The sum of offset ({offset}) and size ({size}) has to be smaller or "
                    f"equal to the  actual size of the containing file ({real_size})"
                )
            if size % SECTOR:
                raise GenericError(f"Specified size is not multiple of {SECTOR}")
        self.offset = offset
        self.size = size

    async def close(self) -> None:
        # The opener closes the file child.
        return None

    def get_length(self) -> int:
        if self.size is not None:
            return self.size
        return max(0, self._child().get_length() - self.offset)

    def refresh_limits(self) -> Limits:
        return self._child().refresh_limits()

    async def read(self, offset: int, length: int) -> bytes:
        child = self._child()
        # raw_co_preadv: BLKDBG_EVENT(bs->file, BLKDBG_READ_AIO)
        await bdrv_debug_event(child, "read_aio")
        return await child.read(self.offset + offset, length)

    def _check_probe_write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if not self.probed or offset >= SECTOR:
            return
        from blockd.drivers.open import probe_format

        head = bytes(memoryview(data).cast("B")[: SECTOR - offset])
        if offset == 0 and probe_format(head) != "raw":
            # raw_check_write(): refuse to turn a probed raw image into another format.
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    async def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        compressed: bool = False,
        fua: bool = False,
    ) -> None:
        self._check_probe_write(offset, data)
        child = self._child()
        # raw_co_pwritev: BLKDBG_EVENT(bs->file, BLKDBG_WRITE_AIO)
        await bdrv_debug_event(child, "write_aio")
        await child.write(self.offset + offset, data, compressed=compressed, fua=fua)

    async def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        await self._child().write_zeroes(self.offset + offset, length, may_unmap=may_unmap)

    async def discard(self, offset: int, length: int) -> None:
        await self._child().discard(self.offset + offset, length)

    async def flush(self) -> None:
        await self._child().flush()

    async def truncate(
        self, length: int, *, preallocation: str = "off", exact: bool = False
    ) -> None:
        if self.size is not None:
            raise GenericError("Cannot resize fixed-size raw disks")
        if (1 << 63) - 1 - length < self.offset:
            raise GenericError("Disk size too large for the chosen offset")
        await self._child().truncate(
            self.offset + length, preallocation=preallocation, exact=exact
        )

    async def block_status(self, offset: int, length: int) -> BlockStatus:
        # raw forwards to its file (BDRV_BLOCK_RAW): same status, shifted offset.
        st = await self._child().block_status(self.offset + offset, length)
        return BlockStatus(st.flags, min(st.length, length), st.offset)
