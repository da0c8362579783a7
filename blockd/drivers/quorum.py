"""The ``quorum`` driver (QEMU's block/quorum.c): N-way replication with voting.

Writes go to every child and succeed when at least ``vote-threshold`` children
succeed.  Reads (``read-pattern=quorum``) read all children, group the results
by content and return the version with most votes if it reaches the threshold;
children that returned another version are reported (QUORUM_REPORT_BAD) and,
with ``rewrite-corrupted``, rewritten with the winning data.  ``fifo`` reads the
children in order until one succeeds.  ``blkverify=on`` (2 children, threshold
2) compares both reads like the blkverify driver; QEMU exits on a mismatch,
blockd prints QEMU's line to stderr and fails the request with EIO.

Events need the graph's help: the driver emits through
``OpenFlags.extra["emit-event"]`` (``(name, data) -> None``, e.g.
``daemon.events.emit``) and names nodes by the ``node_name`` attribute the
graph sets on each driver (``""`` when unset).  Quorum cannot be reopened.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

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

SECTOR = 512
_PERM_CONSISTENT_READ, _PERM_WRITE, _PERM_WRITE_UNCHANGED = 0x1, 0x2, 0x4
EventSink = Callable[[str, dict[str, Any]], Any]


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return int(exc.errno)
    return errno.EIO


def _opt_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise GenericError(f"Parameter '{key}' expects a number")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise GenericError(f"Parameter '{key}' expects a number") from None


def _opt_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("on", "yes", "true", "y"):
        return True
    if value in ("off", "no", "false", "n"):
        return False
    raise GenericError(f"Parameter '{key}' expects 'on' or 'off'")


def _most_voted(values: list[Any]) -> tuple[Any, int]:
    """QEMU's vote: new versions go to the list head, the first strict maximum wins."""
    versions: list[list[Any]] = []  # [value, count], head = most recent new version
    for v in values:
        for ver in versions:
            if ver[0] == v:
                ver[1] += 1
                break
        else:
            versions.insert(0, [v, 1])
    winner = versions[0]
    for ver in versions:
        if ver[1] > winner[1]:
            winner = ver
    return winner[0], int(winner[1])


@register_driver
class QuorumDriver(BlockDriver):
    name: ClassVar[str] = "quorum"
    supports_reopen: ClassVar[bool] = False
    child_specs: ClassVar[tuple[ChildSpec, ...]] = (
        ChildSpec("children", "extra", ChildRole.DATA, multiple=True),
    )

    def __init__(self) -> None:
        super().__init__()
        self.threshold = 0
        self.read_pattern = "quorum"
        self.is_blkverify = False
        self.rewrite_corrupted = False
        self.node_name = ""
        self.emit_event: EventSink | None = None

    def child_perm(
        self,
        child_name: str,
        role: ChildRole,
        read_only: bool,
        perm: int = 0,
        shared: int = 0xF,
    ) -> tuple[int, int]:
        """quorum_child_perm(): pass the parents' needs on (plus write when
        rewriting corrupted data); never share write or resize, which would let
        the children drift apart."""
        nperm = perm & 0xF
        if self.rewrite_corrupted:
            nperm |= _PERM_WRITE
        return nperm, shared & (_PERM_CONSISTENT_READ | _PERM_WRITE_UNCHANGED)

    # --- children -----------------------------------------------------------------

    def children(self) -> list[tuple[str, BlockDriver]]:
        """``children.N`` in index order."""
        items = [(k, v) for k, v in self.extra_children.items() if k.startswith("children.")]
        return sorted(items, key=lambda kv: int(kv[0].split(".", 1)[1]))

    @staticmethod
    def _name_of(drv: BlockDriver) -> str:
        name = getattr(drv, "node_name", "")
        return name if isinstance(name, str) else ""

    # --- open -------------------------------------------------------------------

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        self.flags = flags
        self._open_options = dict(options)
        n = len(self.children())
        if n < 1:
            raise GenericError("Number of provided children must be 1 or more")
        threshold = _opt_int("vote-threshold", options.get("vote-threshold", 0))
        if threshold < 1:
            raise GenericError("Parameter 'vote-threshold' expects a value >= 1")
        if threshold > n:
            raise GenericError("threshold may not exceed children count")
        pattern = str(options.get("read-pattern", "quorum"))
        if pattern not in ("quorum", "fifo"):
            raise GenericError("Please set read-pattern as fifo or quorum")
        self.threshold, self.read_pattern = threshold, pattern
        self.is_blkverify = self.rewrite_corrupted = False
        if pattern == "quorum":
            self.is_blkverify = _opt_bool("blkverify", options.get("blkverify", False))
            if self.is_blkverify and (n != 2 or threshold != 2):
                raise GenericError(
                    "blkverify=on can only be set if there are exactly two files and "
                    "vote-threshold is 2"
                )
            self.rewrite_corrupted = _opt_bool(
                "rewrite-corrupted", options.get("rewrite-corrupted", False)
            )
            if self.rewrite_corrupted and self.is_blkverify:
                raise GenericError("rewrite-corrupted=on cannot be used with blkverify=on")
        sink = flags.extra.get("emit-event")
        if callable(sink):
            self.emit_event = sink
        name = flags.extra.get("node-name")
        if isinstance(name, str):
            self.node_name = name

    async def close(self) -> None:
        return None

    # --- events -----------------------------------------------------------------

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        if self.emit_event is not None:
            self.emit_event(event, data)

    @staticmethod
    def _sectors(offset: int, nbytes: int) -> tuple[int, int]:
        start = offset // SECTOR
        end = -(-(offset + nbytes) // SECTOR)
        return start, end - start

    def _report_bad(self, op: str, offset: int, nbytes: int, child: BlockDriver,
                    err: int) -> None:
        start, count = self._sectors(offset, nbytes)
        data: dict[str, Any] = {"type": op}
        if err:
            data["error"] = os.strerror(err)
        data.update({"node-name": self._name_of(child), "sector-num": start,
                     "sectors-count": count})
        self._emit("QUORUM_REPORT_BAD", data)

    def _report_failure(self, offset: int, nbytes: int) -> None:
        start, count = self._sectors(offset, nbytes)
        self._emit("QUORUM_FAILURE", {"reference": self.node_name or "<node>",
                                      "sector-num": start, "sectors-count": count})

    def _too_much_failed(self, offset: int, nbytes: int, errors: list[int],
                         successes: int) -> OSError | None:
        """quorum_has_too_much_io_failed(): the most common error, or None."""
        if successes >= self.threshold:
            return None
        self._report_failure(offset, nbytes)
        err, _ = _most_voted(errors) if errors else (errno.EIO, 0)
        return OSError(err, os.strerror(err))

    # --- I/O --------------------------------------------------------------------

    def get_length(self) -> int:
        kids = self.children()
        if not kids:
            return 0
        first = kids[0][1].get_length()
        for _, c in kids[1:]:
            if c.get_length() != first:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        return first

    async def _all(self, ops: list[Awaitable[Any]]) -> list[Any]:
        results = await asyncio.gather(*ops, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r
        return results

    async def read(self, offset: int, length: int) -> bytes:
        if self.read_pattern == "fifo":
            return await self._read_fifo(offset, length)
        kids = self.children()
        results = await self._all([c.read(offset, length) for _, c in kids])
        errors: list[int] = []
        for (_, c), r in zip(kids, results, strict=True):
            if isinstance(r, BaseException):
                errors.append(_errno_of(r))
                self._report_bad("read", offset, length, c, _errno_of(r))
        ok = [(c, bytes(r)) for (_, c), r in zip(kids, results, strict=True)
              if not isinstance(r, BaseException)]
        failed = self._too_much_failed(offset, length, errors, len(ok))
        if failed is not None:
            raise failed
        first = ok[0][1]
        if all(d == first for _, d in ok[1:]):
            return first
        if self.is_blkverify:
            other = ok[1][1]
            pos = next(i for i, (a, b) in enumerate(zip(first, other, strict=False)) if a != b)
            print(f"quorum: offset={offset} bytes={length} contents mismatch at offset "
                  f"{offset + pos}", file=sys.stderr, flush=True)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        digests = [hashlib.sha256(d).digest() for _, d in ok]
        winner, votes = _most_voted(digests)
        if votes < self.threshold:
            self._report_failure(offset, length)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        data = next(d for (_, d), h in zip(ok, digests, strict=True) if h == winner)
        bad = [c for (c, _), h in zip(ok, digests, strict=True) if h != winner]
        for c in bad:
            self._report_bad("read", offset, length, c, 0)
        if self.rewrite_corrupted and bad:
            await self._all([c.write(offset, data) for c in bad])
        return data

    async def _read_fifo(self, offset: int, length: int) -> bytes:
        last: BaseException | None = None
        for _, c in self.children():
            try:
                return await c.read(offset, length)
            except Exception as e:
                self._report_bad("read", offset, length, c, _errno_of(e))
                last = e
        assert last is not None
        raise last

    async def _write_all(self, offset: int, nbytes: int,
                         op: Callable[[BlockDriver], Awaitable[None]]) -> None:
        kids = [c for _, c in self.children()]
        results = await self._all([op(c) for c in kids])
        errors = []
        for c, r in zip(kids, results, strict=True):
            if isinstance(r, BaseException):
                errors.append(_errno_of(r))
                self._report_bad("write", offset, nbytes, c, _errno_of(r))
        failed = self._too_much_failed(offset, nbytes, errors, len(kids) - len(errors))
        if failed is not None:
            raise failed

    async def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        compressed: bool = False,
        fua: bool = False,
    ) -> None:
        await self._write_all(offset, memoryview(data).nbytes,
                              lambda c: c.write(offset, data, fua=fua))

    async def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        await self._write_all(offset, length,
                              lambda c: c.write_zeroes(offset, length, may_unmap=may_unmap))

    async def discard(self, offset: int, length: int) -> None:
        # No discard callback in quorum: bdrv_co_pdiscard() succeeds doing nothing.
        return None

    async def flush(self) -> None:
        kids = [c for _, c in self.children()]
        errors: list[int] = []
        for c in kids:
            try:
                await c.flush()
            except Exception as e:
                errors.append(_errno_of(e))
                self._report_bad("flush", 0, c.get_length(), c, _errno_of(e))
        if len(kids) - len(errors) < self.threshold:
            err, _ = _most_voted(errors)
            raise OSError(err, os.strerror(err))

    async def truncate(
        self, length: int, *, preallocation: str = "off", exact: bool = False
    ) -> None:
        raise GenericError("Image format driver does not support resize")

    async def block_status(self, offset: int, length: int) -> BlockStatus:
        """quorum_co_block_status(): zero only where every child reads zero."""
        pnum_zero, pnum_data = length, 0
        for _, c in self.children():
            try:
                st = await c.block_status(offset, length)
            except Exception as e:
                self._report_bad("read", offset, length, c, _errno_of(e))
                pnum_data = length
                pnum_zero = 0
                break
            n = max(1, min(st.length, length))
            pnum_zero = min(pnum_zero, n) if st.flags & BlockStatusFlag.ZERO else 0
            pnum_data = max(pnum_data, n)
        if pnum_zero:
            return BlockStatus(BlockStatusFlag.ZERO | BlockStatusFlag.ALLOCATED, pnum_zero)
        return BlockStatus(BlockStatusFlag.DATA | BlockStatusFlag.ALLOCATED, pnum_data)
