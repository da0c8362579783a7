"""Reference counting: the refcount table, refcount blocks, cluster allocation.

Ordering rules (what keeps a crashed image free of corruption):
- a new refcount block is written before the refcount table entry naming it;
- a grown refcount table is complete on disk before the header points to it;
- refcounts are raised before any table references the clusters (the callers
  link L2/L1 only after ``alloc_clusters`` returned), and lowered only after the
  last reference is gone from disk.
A crash between these steps leaves leaked clusters at worst.
"""

from __future__ import annotations

import errno
import struct
import sys
from array import array
from collections.abc import Awaitable, Callable

from .cache import TableCache

REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
# array type codes of the refcount widths that are whole bytes (order 3..6).
_ARRAY_CODES = {3: "B", 4: "H", 5: "I", 6: "Q"}


def get_entry(block: bytes | bytearray, index: int, order: int) -> int:
    """Refcount number ``index`` of a refcount block with 2^order-bit entries."""
    if order == 4:
        return (block[2 * index] << 8) | block[2 * index + 1]
    if order >= 3:
        width = 1 << (order - 3)
        return int.from_bytes(block[index * width : (index + 1) * width], "big")
    bits = 1 << order
    per_byte = 8 // bits
    shift = (index % per_byte) * bits
    return (block[index // per_byte] >> shift) & ((1 << bits) - 1)


def set_entry(block: bytearray, index: int, order: int, value: int) -> tuple[int, int]:
    """Store a refcount; returns the modified byte range (start, end)."""
    if order >= 3:
        width = 1 << (order - 3)
        block[index * width : (index + 1) * width] = value.to_bytes(width, "big")
        return index * width, (index + 1) * width
    bits = 1 << order
    per_byte = 8 // bits
    shift = (index % per_byte) * bits
    mask = ((1 << bits) - 1) << shift
    pos = index // per_byte
    block[pos] = (block[pos] & ~mask) | ((value << shift) & mask)
    return pos, pos + 1


def next_zero(block: bytes | bytearray, index: int, order: int) -> int | None:
    """Index of the first zero refcount at/after index in a block, or None."""
    if order >= 3:
        width = 1 << (order - 3)
        pat = bytes(width)
        pos = block.find(pat, index * width)
        while pos != -1 and pos % width:
            pos = block.find(pat, pos + 1)
        return None if pos == -1 else pos // width
    entries = len(block) * 8 >> order
    for i in range(index, entries):
        if get_entry(block, i, order) == 0:
            return i
    return None


def zero_run(block: bytes | bytearray, index: int, order: int, limit: int) -> int:
    """How many consecutive zero refcounts start at index (at most limit)."""
    if order >= 3:
        width = 1 << (order - 3)
        start = index * width
        end = min(len(block), start + limit * width)
        chunk = bytes(block[start:end])
        zeros = len(chunk) - len(chunk.lstrip(b"\0"))
        return zeros // width
    entries = len(block) * 8 >> order
    n = 0
    while index + n < entries and n < limit and get_entry(block, index + n, order) == 0:
        n += 1
    return n


class RefcountError(OSError):
    """A refcount update that QEMU refuses (overflow or underflow: -ERANGE/-EINVAL)."""


Reader = Callable[[int, int], Awaitable[bytes]]
Writer = Callable[[int, bytes], Awaitable[None]]


class Refcounts:
    """In-memory refcount table plus a write-through refcount block cache."""

    def __init__(
        self,
        *,
        read: Reader,
        write: Writer,
        barrier: Callable[[], Awaitable[None]],
        update_reftable_location: Callable[[int, int], Awaitable[None]],
        cluster_bits: int,
        refcount_order: int,
        table_offset: int,
        table: list[int],
        cache_entries: int,
    ) -> None:
        self._read = read
        self._write = write
        self._barrier = barrier
        self._set_location = update_reftable_location
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.order = refcount_order
        self.max_refcount = (1 << (1 << refcount_order)) - 1
        # Entries per refcount block = cluster_size * 8 / refcount_bits.
        self.block_bits = cluster_bits + 3 - refcount_order
        self.table_offset = table_offset
        self.table = table
        self.cache = TableCache(cache_entries, self.cluster_size, read)
        self.free_cluster_index = 0
        # Host clusters freed whose discard the caller may want to pass down.
        self.freed: list[tuple[int, int]] = []
        # Called whenever the refcount table or its blocks move or appear.
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    @property
    def table_clusters(self) -> int:
        return (len(self.table) * 8 + self.cluster_size - 1) >> self.cluster_bits

    async def get(self, cluster: int) -> int:
        rt = cluster >> self.block_bits
        if rt >= len(self.table):
            return 0
        block_off = self.table[rt] & REFT_OFFSET_MASK
        if not block_off:
            return 0
        block = await self.cache.get(block_off)
        return get_entry(block, cluster & ((1 << self.block_bits) - 1), self.order)

    def _has_block(self, cluster: int) -> bool:
        rt = cluster >> self.block_bits
        return rt < len(self.table) and bool(self.table[rt] & REFT_OFFSET_MASK)

    async def count_used(self, end: int, stop_above: int) -> int:
        """Clusters below ``end`` with a non-zero refcount (counting stops once it
        exceeds stop_above)."""
        per_block = 1 << self.block_bits
        used = 0
        for rt in range(min(len(self.table), -(-end // per_block))):
            off = self.table[rt] & REFT_OFFSET_MASK
            if not off:
                continue
            block = await self.cache.get(off)
            n = min(per_block, end - rt * per_block)
            if self.order >= 3:
                code = {3: "B", 4: "H", 5: "I", 6: "Q"}[self.order]
                width = 1 << (self.order - 3)
                entries = array(code, bytes(block[: n * width]))
                used += n - entries.count(0)
            else:
                used += sum(1 for i in range(n) if get_entry(block, i, self.order))
            if used > stop_above:
                break
        return used

    async def _find_free(self, count: int) -> int:
        """First run of ``count`` free clusters at/after free_cluster_index (no refs
        taken).  Scans whole refcount blocks with byte searches, not entry by entry."""
        per_block = 1 << self.block_bits
        start = self.free_cluster_index
        run = 0
        idx = start
        while run < count:
            rt = idx >> self.block_bits
            base = rt << self.block_bits
            block_off = self.table[rt] & REFT_OFFSET_MASK if rt < len(self.table) else 0
            if not block_off:
                # No block: the whole range is free.
                if run == 0:
                    start = idx
                run += base + per_block - idx
                idx = base + per_block
                continue
            block = await self.cache.get(block_off)
            i = idx - base
            while i < per_block and run < count:
                if run == 0:
                    z = next_zero(block, i, self.order)
                    if z is None:
                        i = per_block
                        break
                    i = z
                    start = base + i
                n = zero_run(block, i, self.order, count - run)
                run += n
                i += n
                if run < count and i < per_block:
                    run = 0  # the run hit a used cluster
            idx = base + i
        return start

    async def alloc_clusters(self, count: int, extra: int = 0) -> tuple[int, int]:
        """Allocate ``count`` contiguous clusters with refcount 1 at the first fit,
        plus up to ``extra`` free clusters directly following them (a reserve the
        caller hands out later).  Returns (host offset, clusters taken)."""
        while True:
            start = await self._find_free(count)
            total = count
            # The reserve never reaches into ranges without a refcount block: it
            # must not change the metadata layout QEMU would produce.
            per_block = 1 << self.block_bits
            while total < count + extra and self._has_block(start + total):
                c = start + total
                block = await self.cache.get(self.table[c >> self.block_bits] & REFT_OFFSET_MASK)
                idx = c & (per_block - 1)
                limit = min(count + extra - total, per_block - idx)
                n = zero_run(block, idx, self.order, limit)
                total += n
                if n < limit:
                    break
            # The run is taken (as QEMU's alloc_clusters_noref() does by moving
            # the free-cluster index past it), so a refcount block created for it
            # lands behind it, where QEMU puts it.  Like QEMU (-EAGAIN, undo,
            # retry) one block is created per round and the search repeated.
            self.free_cluster_index = start + total
            missing = self._first_missing(start, total)
            if missing is None:
                await self.update(start << self.cluster_bits, total << self.cluster_bits, 1)
                return start << self.cluster_bits, total
            await self._alloc_block(missing)
            if missing > start:
                # QEMU had counted the clusters before it and takes them back.
                self.free_cluster_index = min(self.free_cluster_index, start)

    def _first_missing(self, start: int, count: int) -> int | None:
        """First cluster of [start, start+count) whose refcount block is missing."""
        rt_first = start >> self.block_bits
        rt_last = (start + count - 1) >> self.block_bits
        for rt in range(rt_first, rt_last + 1):
            if not (rt < len(self.table) and self.table[rt] & REFT_OFFSET_MASK):
                return max(start, rt << self.block_bits)
        return None

    async def _ensure_blocks(self, first: int, count: int) -> bool:
        """Create missing refcount blocks for clusters [first, first+count); True if any."""
        created = False
        rt_first = first >> self.block_bits
        rt_last = (first + count - 1) >> self.block_bits
        for rt in range(rt_first, rt_last + 1):
            if rt < len(self.table) and self.table[rt] & REFT_OFFSET_MASK:
                continue
            await self._alloc_block(max(first, rt << self.block_bits))
            created = True
        return created

    async def _alloc_block(self, cluster: int) -> None:
        """Create the refcount block that covers ``cluster`` (alloc_refcount_block).

        The block goes to the first free cluster.  If it lies in the range it
        describes, it counts itself; otherwise its own refcount is set in the
        block of its range (created first if needed: this recurses at most
        twice).  When the table has no slot for it, a new table and blocks are
        built behind everything in use (refcount_area) and the header switched.
        """
        rt = cluster >> self.block_bits
        mask = (1 << self.block_bits) - 1
        while not (rt < len(self.table) and self.table[rt] & REFT_OFFSET_MASK):
            block_cluster = await self._find_free(1)
            self.free_cluster_index = max(self.free_cluster_index, block_cluster + 1)
            block = bytearray(self.cluster_size)
            if block_cluster >> self.block_bits == rt:
                set_entry(block, block_cluster & mask, self.order, 1)
            else:
                if await self._ensure_blocks(block_cluster, 1) and await self.get(block_cluster):
                    continue
                await self.update(block_cluster << self.cluster_bits, self.cluster_size, 1)
            block_off = block_cluster << self.cluster_bits
            if rt < len(self.table):
                await self._write(block_off, bytes(block))
                self.cache.put(block_off, block)
                await self._barrier()
                self.table[rt] = block_off
                self._changed()
                await self._write(self.table_offset + rt * 8, struct.pack(">Q", block_off))
                await self._barrier()
                return
            # No slot: new self-describing structures behind the blocks in use.
            # The block itself is complete already (nothing names it yet).
            await self._write(block_off, bytes(block))
            self.cache.put(block_off, block)
            blocks_used = -(-max(cluster + 1, block_cluster + 1) // (mask + 1))
            await self.refcount_area(blocks_used * (mask + 1), 0, exact=False, new=(rt, block_off))
            return

    def metadata_size(self, clusters: int, generous: bool) -> tuple[int, int]:
        """(refcount blocks, table clusters) needed to count ``clusters`` clusters
        plus themselves (qcow2_refcount_metadata_size's fixed point)."""
        per_table_cluster = self.cluster_size // 8
        per_block = 1 << self.block_bits
        table = blocks = n = 0
        while True:
            last = n
            blocks = -(-(clusters + table + blocks) // per_block)
            table = -(-blocks // per_table_cluster)
            n = clusters + blocks + table
            if n == last and generous:
                clusters += -(-table // 2)
                n = 0
                generous = False
                continue
            if n == last:
                return blocks, table

    async def refcount_area(
        self,
        start: int,
        additional: int,
        *,
        exact: bool = True,
        new: tuple[int, int] | None = None,
    ) -> int:
        """qcow2_refcount_area(): a new refcount table sized for ``start`` +
        ``additional`` clusters, with the missing refcount blocks from the range
        of ``start`` on, laid out at cluster ``start`` (blocks, then the table);
        every cluster of that area gets refcount 1, the header switches to the
        new table and the old one is freed.  ``new`` = (table index, offset) of a
        block created by the caller that the table must name.

        Returns the cluster after the area (where falloc/full data begins).
        """
        per_cluster = self.cluster_size // 8
        per_block = 1 << self.block_bits
        total_blocks, _ = self.metadata_size(start + additional, not exact)
        area_rt = start // per_block
        size = total_blocks if exact else total_blocks + -(-total_blocks // 2)
        size = -(-size // per_cluster) * per_cluster
        table_clusters = size // per_cluster
        if size * 8 > 8 * 1024 * 1024 * 8:
            raise RefcountError(errno.EFBIG, "File too large")
        keep = self.table[:size]
        new_table = keep + [0] * (size - len(keep))
        if new is not None:
            new_table[new[0]] = new[1]
        missing = [i for i in range(area_rt, total_blocks) if not new_table[i] & REFT_OFFSET_MASK]
        table_off = start + len(missing)
        end = table_off + table_clusters
        block_at = start
        for i in range(area_rt, total_blocks):
            if new_table[i] & REFT_OFFSET_MASK:
                block = await self.cache.get(new_table[i] & REFT_OFFSET_MASK)
            else:
                block = bytearray(self.cluster_size)
                new_table[i] = block_at << self.cluster_bits
                self.cache.put(new_table[i], block)
                block_at += 1
            first = i * per_block
            if first < end:
                for c in range(max(start, first), min(end, first + per_block)):
                    set_entry(block, c - first, self.order, 1)
            await self._write(new_table[i] & REFT_OFFSET_MASK, bytes(block))
        await self._write(
            table_off << self.cluster_bits, struct.pack(f">{len(new_table)}Q", *new_table)
        )
        await self._barrier()
        old_off, old_clusters = self.table_offset, self.table_clusters
        await self._set_location(table_off << self.cluster_bits, table_clusters)
        await self._barrier()
        self.table_offset = table_off << self.cluster_bits
        self.table = new_table
        self._changed()
        # The old table is unreferenced now: give its clusters back.
        await self.update(old_off, old_clusters << self.cluster_bits, -1)
        return end

    async def update(self, offset: int, length: int, addend: int) -> None:
        """Add addend to the refcount of every cluster touching [offset, offset+length).

        Writes each touched refcount block once.  Raises RefcountError (EINVAL on
        underflow, ERANGE on overflow) before changing anything.
        """
        if length <= 0:
            return
        first = offset >> self.cluster_bits
        last = (offset + length - 1) >> self.cluster_bits
        mask = (1 << self.block_bits) - 1
        if self.order >= 3 and addend and await self._update_wide(first, last, addend):
            return
        # Validate first, so a refused update changes nothing.
        if addend:
            for c in range(first, last + 1):
                value = await self.get(c) + addend
                if value < 0:
                    raise RefcountError(errno.EINVAL, "Invalid argument")
                if value > self.max_refcount:
                    raise RefcountError(errno.ERANGE, "Numerical result out of range")
        c = first
        while c <= last:
            rt = c >> self.block_bits
            block_off = self.table[rt] & REFT_OFFSET_MASK
            block = await self.cache.get(block_off)
            end = min(last, c | mask)
            lo_byte, hi_byte = len(block), 0
            for i in range(c, end + 1):
                new = get_entry(block, i & mask, self.order) + addend
                s, e = set_entry(block, i & mask, self.order, new)
                lo_byte, hi_byte = min(lo_byte, s), max(hi_byte, e)
                if new == 0:
                    if i < self.free_cluster_index:
                        self.free_cluster_index = i
                    self.freed.append((i << self.cluster_bits, self.cluster_size))
            await self._write(block_off + lo_byte, bytes(block[lo_byte:hi_byte]))
            c = end + 1

    async def _update_wide(self, first: int, last: int, addend: int) -> bool:
        """update() for byte-multiple refcount widths, a block span at a time
        (cluster reserves touch hundreds of entries at once); False, with
        nothing changed, when a touched refcount block is missing."""
        code = _ARRAY_CODES[self.order]
        width = 1 << (self.order - 3)
        mask = (1 << self.block_bits) - 1
        spans: list[tuple[int, bytearray, int, int, int]] = []
        c = first
        while c <= last:
            rt = c >> self.block_bits
            block_off = self.table[rt] & REFT_OFFSET_MASK if rt < len(self.table) else 0
            if not block_off:
                return False
            block = await self.cache.get(block_off)
            end = min(last, c | mask)
            spans.append((block_off, block, (c & mask) * width, ((end & mask) + 1) * width, c))
            c = end + 1
        values: list[array[int]] = []
        # Validate everything first, so a refused update changes nothing.
        for _, block, lo, hi, _ in spans:
            vals = array(code, bytes(block[lo:hi]))
            if width > 1 and sys.byteorder == "little":
                vals.byteswap()
            if addend < 0 and min(vals) < -addend:
                raise RefcountError(errno.EINVAL, "Invalid argument")
            if addend > 0 and max(vals) > self.max_refcount - addend:
                raise RefcountError(errno.ERANGE, "Numerical result out of range")
            values.append(vals)
        for (block_off, block, lo, hi, c0), vals in zip(spans, values, strict=True):
            new = array(code, [v + addend for v in vals])
            if addend < 0:
                for i, v in enumerate(new):
                    if v == 0:
                        cluster = c0 + i
                        if cluster < self.free_cluster_index:
                            self.free_cluster_index = cluster
                        self.freed.append((cluster << self.cluster_bits, self.cluster_size))
            if width > 1 and sys.byteorder == "little":
                new.byteswap()
            block[lo:hi] = new.tobytes()
            await self._write(block_off + lo, bytes(block[lo:hi]))
        return True

    def take_freed(self) -> list[tuple[int, int]]:
        """Host ranges whose refcount dropped to 0 since the last call, merged."""
        out: list[tuple[int, int]] = []
        for off, ln in sorted(self.freed):
            if out and out[-1][0] + out[-1][1] == off:
                out[-1] = (out[-1][0], out[-1][1] + ln)
            else:
                out.append((off, ln))
        self.freed.clear()
        return out
