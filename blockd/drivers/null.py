"""The ``null-co`` / ``null-aio`` protocol drivers (QEMU's block/null.c).

Writes are dropped; reads return zeros.  (QEMU leaves the read buffer untouched
unless ``read-zeroes`` is set; Python has no caller buffer to leave alone, so zeros
are returned either way and ``leaves_read_buffer`` tells callers that emulate a
buffer, like qemu-io's 0xab fill, what QEMU would show.)
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from blockd.drivers.base import (
    BlockDriver,
    BlockStatus,
    BlockStatusFlag,
    OpenFlags,
    register_driver,
)
from blockd.qmp.errors import GenericError

_DEFAULT_SIZE = 1 << 30


@register_driver
class NullCoDriver(BlockDriver):
    name: ClassVar[str] = "null-co"
    is_protocol: ClassVar[bool] = True
    # "null-co://" names this driver (blockd.drivers.protocols).
    protocol_name: ClassVar[str] = "null-co"
    # No .bdrv_get_info: image info has no dirty-flag over it.
    has_get_info: ClassVar[bool] = False

    @classmethod
    def parse_filename(cls, filename: str) -> dict[str, Any]:
        """null_co_parse_filename(): the prefix alone is the only valid name."""
        if filename != f"{cls.protocol_name}://":
            raise GenericError(
                f"The only allowed filename for this driver is '{cls.protocol_name}://'"
            )
        return {}

    def __init__(self) -> None:
        super().__init__()
        self.size = _DEFAULT_SIZE
        self.read_zeroes = False
        self.latency_ns = 0
        self.filename = ""

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        self.flags = flags
        self.filename = f"{self.name}://"
        self.size = int(options.get("size", _DEFAULT_SIZE))
        self.read_zeroes = bool(options.get("read-zeroes", False))
        latency = int(options.get("latency-ns", 0))
        if latency < 0:
            raise GenericError("latency-ns is invalid")
        self.latency_ns = latency

    async def close(self) -> None:
        return None

    def refresh_filename(self, children: dict[str, str], option_keys: tuple[str, ...],
                         options: dict[str, Any]) -> str:
        """null_refresh_filename(): "null-co://" unless an option other than
        latency-ns shapes the node (then only a json: name describes it)."""
        for key in option_keys:
            if key not in ("filename", "driver", "latency-ns"):
                return ""
        return f"{self.name}://"

    def allocated_file_size(self) -> int:
        """null_allocated_file_size(): nothing is stored ("disk size: 0 B")."""
        return 0

    @property
    def leaves_read_buffer(self) -> bool:
        """QEMU would not touch the caller's buffer on reads."""
        return not self.read_zeroes

    async def _delay(self) -> None:
        if self.latency_ns:
            await asyncio.sleep(self.latency_ns / 1e9)

    def get_length(self) -> int:
        return self.size

    async def read(self, offset: int, length: int) -> bytes:
        await self._delay()
        return bytes(length)

    async def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        compressed: bool = False,
        fua: bool = False,
    ) -> None:
        await self._delay()

    async def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        await self._delay()

    async def discard(self, offset: int, length: int) -> None:
        return None

    async def flush(self) -> None:
        await self._delay()

    async def truncate(
        self, length: int, *, preallocation: str = "off", exact: bool = False
    ) -> None:
        raise GenericError("Image format driver does not support resize")

    async def block_status(self, offset: int, length: int) -> BlockStatus:
        flags = BlockStatusFlag(0)
        if self.read_zeroes:
            flags = BlockStatusFlag.ZERO | BlockStatusFlag.ALLOCATED
        return BlockStatus(flags, max(0, min(length, self.size - offset)), offset)


@register_driver
class NullAioDriver(NullCoDriver):
    name: ClassVar[str] = "null-aio"
    protocol_name: ClassVar[str] = "null-aio"
