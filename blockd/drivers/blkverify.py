"""The ``blkverify`` driver (QEMU's block/blkverify.c).

Every request goes to both ``test`` (the image under test, whose data is
returned) and ``raw`` (a reference raw image).  Reads are compared; on a
difference, or when one side fails and the other does not, QEMU prints
``blkverify: read offset=O bytes=N contents mismatch at offset X`` (or
``return value mismatch A != B``) to stderr and exits the whole process.
blockd prints the same line to stderr but, to keep the daemon alive, fails
the request with EIO instead of exiting (documented deviation).
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from collections.abc import Awaitable
from typing import Any, ClassVar, TypeVar

from blockd.drivers.base import (
    BlockDriver,
    BlockStatus,
    BlockStatusFlag,
    ChildRole,
    ChildSpec,
    OpenFlags,
    register_driver,
)
from blockd.qmp.errors import GenericError

T = TypeVar("T")


class BlkverifyMismatch(OSError):
    """The two children disagreed (QEMU would have exited)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, os.strerror(errno.EIO))
        self.message = message


def parse_filename(filename: str) -> dict[str, Any]:
    """``blkverify:raw:test`` -> legacy options (blkverify_parse_filename)."""
    if not filename.startswith("blkverify:"):
        # No prefix: everything else must already be in the options.
        return {"x-image": filename}
    rest = filename[len("blkverify:"):]
    if ":" not in rest:
        raise GenericError("blkverify requires raw copy and original image path")
    raw, image = rest.split(":", 1)
    return {"x-raw": raw, "x-image": image}


def _ret(result: BaseException | Any) -> int:
    """A request's return value as QEMU's blkverify compares them (0 or -errno)."""
    if isinstance(result, OSError):
        return -(result.errno or errno.EIO)
    if isinstance(result, BaseException):
        return -errno.EIO
    return 0


@register_driver
class BlkverifyDriver(BlockDriver):
    name: ClassVar[str] = "blkverify"
    is_filter: ClassVar[bool] = True
    supports_reopen: ClassVar[bool] = False
    # ``raw`` is bs->file (opened first), ``test`` an extra child.
    child_specs: ClassVar[tuple[ChildSpec, ...]] = (
        ChildSpec("raw", "file", ChildRole.FILTERED | ChildRole.PRIMARY),
        ChildSpec("test", "extra", ChildRole.DATA),
    )
    # "blkverify:<raw>:<test>" names this driver; ``x-raw``/``x-image`` are the
    # file names of the ``raw``/``test`` children (blockd.drivers.protocols).
    protocol_name: ClassVar[str] = "blkverify"
    filename_children: ClassVar[dict[str, str]] = {"raw": "x-raw", "test": "x-image"}
    parse_filename = staticmethod(parse_filename)

    @property
    def filename(self) -> str:
        """``blkverify:<raw>:<test>`` (blkverify_refresh_filename), "" when a
        child has no plain name."""
        raw = getattr(self.file, "filename", "")
        test = getattr(self.extra_children.get("test"), "filename", "")
        if isinstance(raw, str) and isinstance(test, str) and raw and test:
            return f"blkverify:{raw}:{test}"
        return ""

    def refresh_filename(self, children: dict[str, str], option_keys: tuple[str, ...],
                         options: dict[str, Any]) -> str:
        """blkverify_refresh_filename() in the graph: ``blkverify:<raw>:<test>``
        when both children have exact names."""
        raw = children.get("raw") or children.get("file") or ""
        test = children.get("test") or ""
        if raw and test:
            return f"blkverify:{raw}:{test}"
        return ""

    def raw(self) -> BlockDriver:
        if self.file is None:
            raise GenericError('A block device must be specified for "raw"')
        return self.file

    def test(self) -> BlockDriver:
        child = self.extra_children.get("test")
        if child is None:
            raise GenericError('A block device must be specified for "test"')
        return child

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        self.flags = flags
        self._open_options = dict(options)
        self.raw()
        self.test()

    async def close(self) -> None:
        return None

    def get_length(self) -> int:
        return self.test().get_length()

    def _fail(self, is_write: bool, offset: int, nbytes: int, what: str) -> BlkverifyMismatch:
        msg = (
            f"blkverify: {'write' if is_write else 'read'} offset={offset} "
            f"bytes={nbytes} {what}"
        )
        print(msg, file=sys.stderr, flush=True)
        return BlkverifyMismatch(msg)

    async def _both(self, is_write: bool, offset: int, nbytes: int,
                    test_op: Awaitable[T], raw_op: Awaitable[T]) -> tuple[T, T]:
        """Run on both children concurrently; check the return values agree."""
        t: T | BaseException
        r: T | BaseException
        t, r = await asyncio.gather(test_op, raw_op, return_exceptions=True)
        for res in (t, r):
            if isinstance(res, BaseException) and not isinstance(res, Exception):
                raise res
        if _ret(t) != _ret(r):
            raise self._fail(is_write, offset, nbytes,
                             f"return value mismatch {_ret(t)} != {_ret(r)}")
        if isinstance(t, BaseException):
            raise t
        assert not isinstance(r, BaseException)
        return t, r

    async def read(self, offset: int, length: int) -> bytes:
        t, r = await self._both(False, offset, length, self.test().read(offset, length),
                                self.raw().read(offset, length))
        t, r = bytes(t), bytes(r)
        if t != r:
            pos = next(i for i, (a, b) in enumerate(zip(t, r, strict=False)) if a != b) \
                if len(t) == len(r) else min(len(t), len(r))
            raise self._fail(False, offset, length, f"contents mismatch at offset {offset + pos}")
        return bytes(t)

    async def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        compressed: bool = False,
        fua: bool = False,
    ) -> None:
        n = memoryview(data).nbytes
        await self._both(True, offset, n,
                         self.test().write(offset, data, compressed=compressed, fua=fua),
                         self.raw().write(offset, data, fua=fua))

    async def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        # blkverify has no zero-write callback: QEMU writes a zeroed buffer.
        await self.write(offset, bytes(length))

    async def discard(self, offset: int, length: int) -> None:
        # No discard callback: bdrv_co_pdiscard() succeeds doing nothing.
        return None

    async def flush(self) -> None:
        # Only the test file matters (blkverify_co_flush).
        await self.test().flush()

    async def truncate(
        self, length: int, *, preallocation: str = "off", exact: bool = False
    ) -> None:
        # A filter without a truncate callback: bdrv_co_truncate() forwards to
        # bs->file, which is ``raw`` (so only the reference image grows).
        await self.raw().truncate(length, preallocation=preallocation, exact=exact)

    async def block_status(self, offset: int, length: int) -> BlockStatus:
        # No block-status callback: everything is data (bdrv_co_block_status).
        n = max(0, min(length, self.get_length() - offset))
        return BlockStatus(BlockStatusFlag.DATA | BlockStatusFlag.ALLOCATED, n, None)
