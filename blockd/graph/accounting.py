"""I/O accounting, as QEMU's block/accounting.c and the node counters of block/io.c.

Two levels, as in QEMU:

* :class:`BlockAcctStats` belongs to a BlockBackend (a device's backend): the
  I/O its user submits is counted there (``start`` -> ``done``/``failed``,
  ``invalid``, ``merge``).  query-blockstats shows it as ``stats`` of the
  device's entry.
* :class:`NodeStats` belongs to a node: ``wr_highest_offset`` (the end of the
  highest write request that reached the node, failed ones included, as
  bdrv_co_write_req_finish() records it) and the driver-specific counters
  (the ``file`` driver's discard counts, raw_account_discard()).  The graph
  installs the counting on each node's driver with :func:`install`.

Timed statistics (``timed_stats``) and latency histograms need intervals or
boundaries set up by ``-drive stats-intervals`` or
``block-latency-histogram-set``, which blockd does not offer: the lists stay
empty and the histograms absent, as in QEMU without that setup.
"""

from __future__ import annotations

import enum
import time
import weakref
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from blockd.drivers.base import BlockDriver
from blockd.drivers.file import FdRange, WritePiece


class AcctType(enum.IntEnum):
    """QEMU's BlockAcctType (the I/O kinds counted)."""

    READ = 0
    WRITE = 1
    FLUSH = 2
    UNMAP = 3


def _clock_ns() -> int:
    # QEMU_CLOCK_REALTIME: the host's monotonic clock.
    return time.monotonic_ns()


@dataclass
class AcctCookie:
    """One request in flight (BlockAcctCookie)."""

    bytes: int
    start_ns: int
    type: AcctType | None


def _zeros() -> list[int]:
    return [0] * len(AcctType)


@dataclass
class BlockAcctStats:
    """A BlockBackend's counters (BlockAcctStats).

    ``account_invalid``/``account_failed``: whether invalid and failed
    requests update the idle time and total times (QEMU's block_acct_setup();
    a disk device turns both on).
    """

    account_invalid: bool = False
    account_failed: bool = False
    nr_bytes: list[int] = field(default_factory=_zeros)
    nr_ops: list[int] = field(default_factory=_zeros)
    invalid_ops: list[int] = field(default_factory=_zeros)
    failed_ops: list[int] = field(default_factory=_zeros)
    merged: list[int] = field(default_factory=_zeros)
    total_time_ns: list[int] = field(default_factory=_zeros)
    last_access_time_ns: int = 0

    def start(self, nbytes: int, kind: AcctType) -> AcctCookie:
        """block_acct_start(): a request of ``nbytes`` begins."""
        return AcctCookie(nbytes, _clock_ns(), kind)

    def _account(self, cookie: AcctCookie, failed: bool) -> None:
        kind = cookie.type
        if kind is None:
            return
        now = _clock_ns()
        if failed:
            self.failed_ops[kind] += 1
        else:
            self.nr_bytes[kind] += cookie.bytes
            self.nr_ops[kind] += 1
        if not failed or self.account_failed:
            self.total_time_ns[kind] += now - cookie.start_ns
            self.last_access_time_ns = now
        # A cookie counts once.
        cookie.type = None

    def done(self, cookie: AcctCookie) -> None:
        """block_acct_done(): the request succeeded."""
        self._account(cookie, False)

    def failed(self, cookie: AcctCookie) -> None:
        """block_acct_failed(): the request failed."""
        self._account(cookie, True)

    def invalid(self, kind: AcctType) -> None:
        """block_acct_invalid(): a request refused before any I/O (no time)."""
        self.invalid_ops[kind] += 1
        if self.account_invalid:
            self.last_access_time_ns = _clock_ns()

    def merge(self, kind: AcctType, num_requests: int) -> None:
        """block_acct_merge_done(): ``num_requests`` were merged into others."""
        self.merged[kind] += num_requests

    def idle_time_ns(self) -> int | None:
        """Time since the last counted access; None before any."""
        if self.last_access_time_ns <= 0:
            return None
        return _clock_ns() - self.last_access_time_ns

    def device_stats(self, wr_highest_offset: int) -> dict[str, Any]:
        """BlockDeviceStats with these counters (bdrv_query_blk_stats)."""
        out = empty_device_stats(wr_highest_offset)
        r, w, f, u = AcctType.READ, AcctType.WRITE, AcctType.FLUSH, AcctType.UNMAP
        out.update({
            "rd_bytes": self.nr_bytes[r], "wr_bytes": self.nr_bytes[w],
            "unmap_bytes": self.nr_bytes[u],
            "rd_operations": self.nr_ops[r], "wr_operations": self.nr_ops[w],
            "flush_operations": self.nr_ops[f], "unmap_operations": self.nr_ops[u],
            "rd_total_time_ns": self.total_time_ns[r],
            "wr_total_time_ns": self.total_time_ns[w],
            "flush_total_time_ns": self.total_time_ns[f],
            "unmap_total_time_ns": self.total_time_ns[u],
            "rd_merged": self.merged[r], "wr_merged": self.merged[w],
            "unmap_merged": self.merged[u],
            "failed_rd_operations": self.failed_ops[r],
            "failed_wr_operations": self.failed_ops[w],
            "failed_flush_operations": self.failed_ops[f],
            "failed_unmap_operations": self.failed_ops[u],
            "invalid_rd_operations": self.invalid_ops[r],
            "invalid_wr_operations": self.invalid_ops[w],
            "invalid_flush_operations": self.invalid_ops[f],
            "invalid_unmap_operations": self.invalid_ops[u],
            "account_invalid": self.account_invalid,
            "account_failed": self.account_failed,
        })
        idle = self.idle_time_ns()
        if idle is not None:
            out["idle_time_ns"] = idle
        return out


def empty_device_stats(wr_highest_offset: int = 0) -> dict[str, Any]:
    """BlockDeviceStats of a node-level entry: all counters zero (QEMU's
    zero-filled struct) but the node's wr_highest_offset."""
    keys = ("rd_bytes", "wr_bytes", "unmap_bytes", "rd_operations", "wr_operations",
            "flush_operations", "unmap_operations", "rd_total_time_ns",
            "wr_total_time_ns", "flush_total_time_ns", "unmap_total_time_ns",
            "rd_merged", "wr_merged", "unmap_merged", "failed_rd_operations",
            "failed_wr_operations", "failed_flush_operations", "failed_unmap_operations",
            "invalid_rd_operations", "invalid_wr_operations", "invalid_flush_operations",
            "invalid_unmap_operations")
    out: dict[str, Any] = dict.fromkeys(keys, 0)
    out["wr_highest_offset"] = wr_highest_offset
    out["account_invalid"] = False
    out["account_failed"] = False
    out["timed_stats"] = []
    return out


@dataclass
class NodeStats:
    """Per-node counters: bs->wr_highest_offset and file-posix's discard stats."""

    wr_highest_offset: int = 0
    discard_nb_ok: int = 0
    discard_nb_failed: int = 0
    discard_bytes_ok: int = 0
    # Whether the driver keeps BlockStatsSpecificFile counters.
    counts_discards: bool = False

    def wrote(self, offset: int, nbytes: int) -> None:
        if nbytes > 0 and offset + nbytes > self.wr_highest_offset:
            self.wr_highest_offset = offset + nbytes

    def driver_specific(self, driver: str) -> dict[str, Any] | None:
        """BlockStatsSpecific for the node, None when the driver has none."""
        if not self.counts_discards:
            return None
        return {"driver": driver, "discard-nb-ok": self.discard_nb_ok,
                "discard-nb-failed": self.discard_nb_failed,
                "discard-bytes-ok": self.discard_bytes_ok}


_NODE_STATS: weakref.WeakKeyDictionary[BlockDriver, NodeStats] = weakref.WeakKeyDictionary()


def node_stats(drv: BlockDriver) -> NodeStats:
    """The counters of the node whose driver is ``drv`` (zero until it does I/O)."""
    stats = _NODE_STATS.get(drv)
    if stats is None:
        # Drivers with file-posix's discard counters declare ``discard_stats``.
        stats = NodeStats(counts_discards=bool(getattr(drv, "discard_stats", False)))
        _NODE_STATS[drv] = stats
    return stats


def install(drv: BlockDriver) -> None:
    """Count the node's write requests (and a file node's discards) on its
    driver instance, around whatever ``write`` is installed now (detect-zeroes
    included, as QEMU counts after that conversion)."""
    stats = node_stats(drv)
    write, write_zeroes, write_many = drv.write, drv.write_zeroes, drv.write_many
    discard = drv.discard

    # Plain functions returning the driver's coroutine: no extra coroutine
    # frame on the write path.  The offset is recorded at submission; QEMU
    # records it at completion whatever the result, so the value after the
    # request is the same.
    def counted_write(
        offset: int, data: bytes | bytearray | memoryview, *,
        compressed: bool = False, fua: bool = False,
    ) -> Coroutine[Any, Any, None]:
        stats.wrote(offset, memoryview(data).nbytes)
        return write(offset, data, compressed=compressed, fua=fua)

    def counted_write_zeroes(offset: int, length: int, *,
                             may_unmap: bool = False) -> Coroutine[Any, Any, None]:
        stats.wrote(offset, length)
        return write_zeroes(offset, length, may_unmap=may_unmap)

    def counted_write_many(
        writes: Sequence[tuple[int, WritePiece]],
    ) -> Coroutine[Any, Any, None]:
        for offset, data in writes:
            # A kernel-side copy (FdRange) knows its length; buffers by bytes.
            n = len(data) if isinstance(data, FdRange) else memoryview(data).nbytes
            stats.wrote(offset, n)
        # FdRange pieces are only ever given to drivers that take them (file).
        return write_many(writes)  # type: ignore[arg-type]

    # Instance attributes shadow the class methods for every caller.
    drv.write = counted_write  # type: ignore[method-assign]
    drv.write_zeroes = counted_write_zeroes  # type: ignore[method-assign]
    drv.write_many = counted_write_many  # type: ignore[method-assign]
    if not stats.counts_discards:
        return

    async def counted_discard(offset: int, length: int) -> None:
        if length <= 0 or not drv.flags.discard_unmap:
            # bdrv_co_pdiscard() returns before the driver: nothing counted.
            await discard(offset, length)
            return
        try:
            await discard(offset, length)
        except BaseException:
            stats.discard_nb_failed += 1
            raise
        stats.discard_nb_ok += 1
        stats.discard_bytes_ok += length

    drv.discard = counted_discard  # type: ignore[method-assign]
