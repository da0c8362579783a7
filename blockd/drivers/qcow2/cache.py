"""Metadata table caches (L2 slices, refcount blocks) and their size options.

The caches are write-through: every modification is written to the file before
the operation that made it returns, so a process killed at any point leaves on
disk exactly the metadata the completed requests produced (ordering between
tables is the callers' job).  Capacity limits memory only, like QEMU's
``l2-cache-size``/``refcount-cache-size``; ``cache-clean-interval`` drops entries
that were not used during one interval.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from blockd.qmp.errors import GenericError

from .header import MIN_CLUSTER_BITS

DEFAULT_L2_CACHE_MAX_SIZE = 32 * 1024 * 1024
DEFAULT_CACHE_CLEAN_INTERVAL = 600
MIN_L2_CACHE_SIZE = 2  # entries
MIN_REFCOUNT_CACHE_SIZE = 4  # clusters
INT_MAX = 2**31 - 1
UINT_MAX = 2**32 - 1


class TableCache:
    """LRU cache of fixed-size table pieces keyed by their host offset."""

    def __init__(
        self,
        entries: int,
        entry_size: int,
        reader: Callable[[int, int], Awaitable[bytes]],
    ) -> None:
        self.capacity = max(1, entries)
        self.entry_size = entry_size
        self._read = reader
        self._tables: OrderedDict[int, bytearray] = OrderedDict()
        self._used: set[int] = set()

    async def get(self, offset: int) -> bytearray:
        """The table piece at offset, loaded from the file when not cached."""
        table = self._tables.get(offset)
        if table is None:
            data = await self._read(offset, self.entry_size)
            # Another task may have loaded it meanwhile; keep the first copy.
            table = self._tables.get(offset)
            if table is None:
                table = bytearray(data.ljust(self.entry_size, b"\0"))
                self._insert(offset, table)
        else:
            self._tables.move_to_end(offset)
        self._used.add(offset)
        return table

    def peek(self, offset: int) -> bytearray | None:
        """The cached piece at offset (marked used), or None; never loads."""
        table = self._tables.get(offset)
        if table is not None:
            self._tables.move_to_end(offset)
            self._used.add(offset)
        return table

    def put(self, offset: int, data: bytes | bytearray) -> bytearray:
        """Install a freshly written table piece."""
        table = bytearray(data)
        self._insert(offset, table)
        self._used.add(offset)
        return table

    def _insert(self, offset: int, table: bytearray) -> None:
        self._tables[offset] = table
        self._tables.move_to_end(offset)
        while len(self._tables) > self.capacity:
            old, _ = self._tables.popitem(last=False)
            self._used.discard(old)

    def drop(self, offset: int) -> None:
        self._tables.pop(offset, None)
        self._used.discard(offset)

    def drop_range(self, offset: int, length: int) -> None:
        """Forget every piece inside [offset, offset+length) (a freed table)."""
        for key in [k for k in self._tables if offset <= k < offset + length]:
            self.drop(key)

    def clear(self) -> None:
        self._tables.clear()
        self._used.clear()

    def clean_unused(self) -> None:
        """Drop entries not used since the previous call (cache-clean-interval)."""
        for key in [k for k in self._tables if k not in self._used]:
            del self._tables[key]
        self._used.clear()

    def __len__(self) -> int:
        return len(self._tables)


@dataclass(frozen=True)
class CacheConfig:
    """Resolved cache geometry for one open image."""

    l2_cache_entries: int
    l2_cache_entry_size: int
    refcount_cache_entries: int
    cache_clean_interval: int


def _is_set(options: dict[str, Any], key: str) -> bool:
    return options.get(key) is not None


def resolve_cache_options(
    options: dict[str, Any], cluster_size: int, virtual_size: int, l2_entry_size: int = 8
) -> CacheConfig:
    """Apply QEMU 7.2's read_cache_sizes() rules; GenericError with its texts."""
    min_refcount_cache = MIN_REFCOUNT_CACHE_SIZE * cluster_size
    max_l2_entries = -(-virtual_size // cluster_size)
    max_l2_cache = -(-(max_l2_entries * l2_entry_size) // cluster_size) * cluster_size

    combined_set = _is_set(options, "cache-size")
    l2_set = _is_set(options, "l2-cache-size")
    refcount_set = _is_set(options, "refcount-cache-size")
    entry_size_set = _is_set(options, "l2-cache-entry-size")

    def size(key: str, default: int) -> int:
        from blockd.drivers.open import parse_size

        val = options.get(key)
        return default if val is None else parse_size(key, val)

    combined = size("cache-size", 0)
    l2_max_setting = size("l2-cache-size", DEFAULT_L2_CACHE_MAX_SIZE)
    refcount_size = size("refcount-cache-size", 0)
    entry_size = size("l2-cache-entry-size", cluster_size)
    l2_size = min(max_l2_cache, l2_max_setting)

    if combined_set:
        if l2_set and refcount_set:
            raise GenericError(
                "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"
            )
        if l2_set and l2_max_setting > combined:
            raise GenericError("l2-cache-size may not exceed cache-size")
        if refcount_size > combined:
            raise GenericError("refcount-cache-size may not exceed cache-size")
        if l2_set:
            refcount_size = combined - l2_size
        elif refcount_set:
            l2_size = combined - refcount_size
        elif combined >= max_l2_cache + min_refcount_cache:
            l2_size = max_l2_cache
            refcount_size = combined - l2_size
        else:
            refcount_size = min(combined, min_refcount_cache)
            l2_size = combined - refcount_size

    if l2_size < max_l2_cache and not entry_size_set:
        entry_size = min(cluster_size, 4096)

    if (
        entry_size < (1 << MIN_CLUSTER_BITS)
        or entry_size > cluster_size
        or entry_size & (entry_size - 1)
    ):
        raise GenericError(
            "L2 cache entry size must be a power of two between "
            f"{1 << MIN_CLUSTER_BITS} and the cluster size ({cluster_size})"
        )

    l2_entries = max(MIN_L2_CACHE_SIZE, l2_size // entry_size)
    if l2_entries > INT_MAX:
        raise GenericError("L2 cache size too big")
    refcount_entries = max(MIN_REFCOUNT_CACHE_SIZE, refcount_size // cluster_size)
    if refcount_entries > INT_MAX:
        raise GenericError("Refcount cache size too big")

    interval = options.get("cache-clean-interval")
    try:
        clean = DEFAULT_CACHE_CLEAN_INTERVAL if interval is None else int(interval)
    except (TypeError, ValueError):
        raise GenericError("Parameter 'cache-clean-interval' expects a number") from None
    if clean < 0:
        # QemuOpts reads the number as uint64: a negative value wraps around.
        clean += 1 << 64
    if clean > UINT_MAX:
        raise GenericError("Cache clean interval too big")
    return CacheConfig(l2_entries, entry_size, refcount_entries, clean)
