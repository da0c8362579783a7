"""The qcow2 format driver.

All I/O goes through ``self.file`` (any protocol node).  Metadata is write-through
(see cache.py) and written in dependency order with barriers (``file.flush``)
between dependent steps, so that an interrupted process leaves at worst leaked
clusters:

    refcounts up -> barrier -> data -> L2 entry -> (L1 entry) ; references
    dropped -> barrier -> refcounts down -> discard.

One asyncio lock serialises metadata lookups and updates; reads and in-place
writes of clusters that are already allocated run concurrently outside it, and
any operation that frees clusters first waits until such in-flight data I/O has
drained, so a host cluster is never reused while somebody still reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import struct
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from blockd.drivers.base import (
    BlockDriver,
    BlockStatus,
    BlockStatusFlag,
    Limits,
    OpenFlags,
    bdrv_debug_event,
    register_driver,
    run_io,
)
from blockd.drivers.file import FdRange, FileDriver
from blockd.qmp.errors import GenericError

from . import header as H
from .bitmaps import MAX_DIRECTORY_SIZE, bitmaps_ext, parse_directory
from .cache import CacheConfig, TableCache
from .cluster import (
    L1E_OFFSET_MASK,
    L2E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
    ClusterType,
    CompressedGeometry,
    cluster_type,
)
from .compress import compress_cluster, decompress_cluster
from .options import (
    DISCARD_ALWAYS,
    DISCARD_NEVER,
    DISCARD_OTHER,
    DISCARD_REQUEST,
    OVERLAP_KINDS,
    parse_runtime_options,
)
from .refcount import REFT_OFFSET_MASK, Refcounts
from .runs import leading_run
from .snapshot import (
    MAX_SNAPSHOTS,
    SNAPSHOT_HEADER,
    Snapshot,
    parse_snapshots,
    snapshot_table_bound,
)

if TYPE_CHECKING:
    from .check import Qcow2CheckResult

QCOW_MAX_REFTABLE_SIZE = 8 * 1024 * 1024
QCOW_MAX_L1_SIZE = 32 * 1024 * 1024
INT_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


async def _chain_is_zero(node: BlockDriver | None, offset: int, length: int) -> bool:
    """Whether a backing chain reads as zeros over the range (block status)."""
    pos, end = offset, offset + length
    while node is not None and pos < end:
        if pos >= node.get_length():
            return True
        st = await node.block_status(pos, min(end, node.get_length()) - pos)
        if st.length <= 0:
            return False
        if not st.flags & BlockStatusFlag.ZERO:
            if st.flags & BlockStatusFlag.ALLOCATED or node.backing is None:
                return False
            if not await _chain_is_zero(node.backing, pos, st.length):
                return False
        pos += st.length
    return True


class ImageTooLarge(GenericError):
    """The L1 table cannot map the requested size (QEMU's -EFBIG; qemu-img create
    words it "The image size is too large for file format 'qcow2'")."""

    errno = errno.EFBIG


# Extended L2 subcluster bitmaps (low half: allocated, high half: reads as zero).
BITMAP_ALL_ALLOC = 0x00000000FFFFFFFF
BITMAP_ALL_ZERO = 0xFFFFFFFF00000000

# Packers of n consecutive standard L2 entries, made on first use.
_ENTRY_STRUCTS: dict[int, struct.Struct] = {}


def _entry_struct(n: int) -> struct.Struct:
    st = _ENTRY_STRUCTS.get(n)
    if st is None:
        st = _ENTRY_STRUCTS[n] = struct.Struct(f">{n}Q")
    return st


def _sub_range(first: int, count: int) -> int:
    """Bitmap bits of subclusters first..first+count-1 (low half)."""
    return ((1 << count) - 1) << first


def _hx(value: int) -> str:
    """C's %#x: no 0x prefix for zero."""
    return f"{value:#x}" if value else "0"


def _eio(msg: str = "Input/output error") -> OSError:
    return OSError(errno.EIO, msg)


@dataclass(frozen=True)
class Extent:
    """A run of guest clusters that read the same way."""

    offset: int  # guest byte offset
    length: int  # bytes
    ctype: ClusterType
    host: int  # host byte offset of the first byte (NORMAL/ZERO_ALLOC), else 0
    entry: int  # the L2 entry of the first cluster (for COMPRESSED: the descriptor)
    writable: bool  # NORMAL with OFLAG_COPIED: can be overwritten in place


@dataclass
class _AllocPlan:
    """An allocating write in flight: guest clusters c0..c1 get host clusters
    from ``host`` on; ``old`` are their previous L2 entries."""

    c0: int
    c1: int
    offset: int
    host: int
    old: list[int]
    done: asyncio.Event
    # Subcluster bitmaps of ``old`` (extended L2 entries only).
    old_bitmaps: list[int] | None = None


@register_driver
class Qcow2Driver(BlockDriver):
    """QEMU-compatible qcow2 (v2 and v3) on top of a protocol node."""

    name: ClassVar[str] = "qcow2"
    supports_backing: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.header = H.Qcow2Header()
        self.cluster_size = 65536
        self.cluster_bits = 16
        self.backing_file: str | None = None
        self.backing_format: str | None = None
        self.dirty = False
        self.corrupt = False
        self.read_only = True
        self.size = 0
        self.l1: list[int] = []
        self.snapshots: list[Snapshot] = []
        self.snapshots_size = 0
        self.use_lazy_refcounts = False
        self.discard_passthrough: dict[str, bool] = {}
        self._lock = asyncio.Lock()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._clean_task: asyncio.Task[None] | None = None
        self._file_len = 0
        self._barriers = True
        self._closed = False
        self.cache_config: CacheConfig | None = None
        self._corruption_reported = False
        # QEMU's "bs->drv = NULL" after a fatal corruption report: every later
        # request fails with ENOMEDIUM ("No medium found").
        self.unusable = False
        self._pending_frees: list[tuple[int, int, str]] = []
        # Allocating writes between their two halves (see _alloc_prepare).
        self._allocs: list[_AllocPlan] = []
        self._opened = False
        self.bitmaps: list[dict[str, Any]] = []
        self._metadata_prealloc: bool | None = None
        self.overlap_checks: frozenset[str] = frozenset()
        # Host cluster -> metadata kind, rebuilt when the metadata layout changes.
        self._metadata_map: dict[int, str] | None = None
        # Hook for the graph engine (BLOCK_IMAGE_CORRUPTED): (message, fatal).
        # (message, fatal, host offset or -1, size or -1): the graph turns it
        # into BLOCK_IMAGE_CORRUPTED.
        self.on_corruption: Callable[[str, bool, int, int], None] | None = None

    # --- helpers over the file child -------------------------------------

    @property
    def _f(self) -> BlockDriver:
        if self.file is None:
            raise GenericError("qcow2 needs a 'file' child")
        return self.file

    async def _pread(self, offset: int, length: int) -> bytes:
        return await self._f.read(offset, length)

    async def _pwrite(
        self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False
    ) -> None:
        if self.read_only:
            raise OSError(errno.EPERM, "Operation not permitted")
        if offset < self.cluster_size:
            # Overlap check "main header": never let data or tables land in cluster 0.
            await self._signal_corruption(
                "Preventing invalid write on metadata (overlaps with qcow2_header)",
                offset, len(data),
            )
        await self._f.write(offset, data, fua=fua)
        end = offset + len(data)
        if end > self._file_len:
            self._file_len = end

    async def _rc_pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """How refcount blocks are written: FUA while a reserve is being raised
        with durable writes (see _refill_pool)."""
        await self._pwrite(offset, data, fua=self._rc_fua)

    def _durable_metadata(self) -> bool:
        """Whether metadata that must be stable before something points at it
        is written with FUA writes instead of being followed by a barrier: when
        the file makes a FUA write durable by itself (RWF_DSYNC), a barrier
        would cost an fdatasync of all the guest data written since the last
        one, the FUA write only its own few bytes."""
        f = self.file
        return self._barriers and isinstance(f, FileDriver) and f.dsync

    def set_barriers(self, enabled: bool) -> None:
        """Whether dependent metadata updates are separated by file flushes
        (default: unless cache.no-flush)."""
        self._barriers = enabled

    async def _barrier(self) -> None:
        if self._barriers:
            await self._f.flush()

    async def _signal_corruption(self, msg: str, offset: int = -1, size: int = -1) -> None:
        """QEMU's qcow2_signal_corruption(): report (once, unless a fatal report
        follows non-fatal ones), mark the image corrupt when writable (fatal),
        fail the request with EIO.  ``offset``/``size``: the host range of the
        offending write, when there is one (BLOCK_IMAGE_CORRUPTED's members)."""
        fatal = not self.read_only
        if not (self._corruption_reported and (not fatal or self.corrupt)):
            self._corruption_reported = True
            if fatal:
                text = (
                    f"qcow2: Marking image as corrupt: {msg}; further corruption events "
                    "will be suppressed"
                )
            else:
                text = (
                    f"qcow2: Image is corrupt: {msg}; further non-fatal corruption events "
                    "will be suppressed"
                )
            sys.stderr.write(text + "\n")
            if self.on_corruption is not None:
                self.on_corruption(msg, fatal, offset, size)
        if fatal and not self.corrupt:
            self.corrupt = True
            self.header.incompatible_features |= H.INCOMPAT_CORRUPT
            await self._write_incompat()
        if fatal:
            self.unusable = True
        raise _eio()

    async def _write_incompat(self) -> None:
        if self.header.version < 3:
            return
        await self._f.write(
            H.OFF_INCOMPATIBLE, struct.pack(">Q", self.header.incompatible_features)
        )
        await self._f.flush()

    async def _write_header(self) -> None:
        """Rewrite cluster 0 (header, extensions, backing name) in one write."""
        buf = H.serialize_header(self.header)
        await self._f.write(0, buf)

    # --- open / close ------------------------------------------------------

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        self.flags = flags
        self.read_only = flags.read_only
        self._barriers = not flags.cache_no_flush
        check_mode = bool(flags.extra.get("check", False))
        f = self._f
        self._file_len = f.get_length()
        first = await f.read(0, H.FULL_HEADER_LENGTH)
        # Read the whole header cluster at once when the cluster size is sane, so
        # that errors needing the extensions (feature names) can see them.
        bits = struct.unpack_from(">I", first.ljust(24, b"\0"), 20)[0]
        if H.MIN_CLUSTER_BITS <= bits <= H.MAX_CLUSTER_BITS:
            first = await f.read(0, 1 << bits)
        hdr = H.parse_header(first, check_mode=check_mode, read_write=not self.read_only)
        self.header = hdr
        self.cluster_bits = hdr.cluster_bits
        self.cluster_size = hdr.cluster_size
        # Extended L2 entries: 16 bytes (entry + subcluster bitmap), 32 subclusters.
        self.extl2 = bool(hdr.incompatible_features & H.INCOMPAT_EXTL2)
        self.l2_entry_size = 16 if self.extl2 else 8
        self.l2_bits = self.cluster_bits - (4 if self.extl2 else 3)
        self.l2_size = 1 << self.l2_bits
        self.cgeo = CompressedGeometry(self.cluster_bits)
        self.size = hdr.size
        self.dirty = bool(hdr.incompatible_features & H.INCOMPAT_DIRTY)
        self.corrupt = bool(hdr.incompatible_features & H.INCOMPAT_CORRUPT)
        if self.extl2:
            sub = self.cluster_size // 32
            if sub < 512:
                raise GenericError(f"Unsupported subcluster size: {sub}")

        if hdr.refcount_table_clusters == 0 and not check_mode:
            raise GenericError("Image does not contain a reference count table")
        self._validate_table(
            hdr.refcount_table_offset,
            hdr.refcount_table_clusters,
            self.cluster_size,
            QCOW_MAX_REFTABLE_SIZE,
            "Reference count table",
        )
        if not check_mode:
            self._validate_table(
                hdr.snapshots_offset,
                hdr.nb_snapshots,
                SNAPSHOT_HEADER.size,
                SNAPSHOT_HEADER.size * MAX_SNAPSHOTS,
                "Snapshot table",
            )
        self._validate_table(
            hdr.l1_table_offset, hdr.l1_size, 8, QCOW_MAX_L1_SIZE, "Active L1 table"
        )
        shift = self.cluster_bits + self.l2_bits
        l1_needed = -(-hdr.size // (1 << shift))
        if l1_needed > INT_MAX:
            raise GenericError("Image is too big")
        if hdr.l1_size < l1_needed:
            raise GenericError("L1 table is too small")
        self.l1_offset = hdr.l1_table_offset
        if hdr.l1_size:
            raw = await f.read(hdr.l1_table_offset, hdr.l1_size * 8)
            self.l1 = list(struct.unpack(f">{hdr.l1_size}Q", raw))
        else:
            self.l1 = []

        self._apply_options(options, flags)

        rt_entries = (hdr.refcount_table_clusters * self.cluster_size) // 8
        raw = await f.read(hdr.refcount_table_offset, rt_entries * 8) if rt_entries else b""
        table = list(struct.unpack(f">{rt_entries}Q", raw))
        assert self.cache_config is not None
        self.rc = Refcounts(
            read=self._pread,
            write=self._rc_pwrite,
            barrier=self._barrier,
            update_reftable_location=self._set_reftable_location,
            cluster_bits=self.cluster_bits,
            refcount_order=hdr.refcount_order,
            table_offset=hdr.refcount_table_offset,
            table=table,
            cache_entries=self.cache_config.refcount_cache_entries,
        )
        self.l2cache = TableCache(
            self.cache_config.l2_cache_entries, self.cache_config.l2_cache_entry_size, self._pread
        )
        self.rc.on_change = self._metadata_changed
        self.slice_entries = self.cache_config.l2_cache_entry_size // self.l2_entry_size
        self.free_byte_offset = 0
        # Clusters reserved per refcount update (see _alloc): ~32 MiB of data.
        self._pool_chunk = max(16, min(4096, (32 << 20) >> self.cluster_bits))

        if hdr.extension_error is not None:
            raise GenericError(hdr.extension_error)
        if hdr.incompatible_features & H.INCOMPAT_DATA_FILE:
            raise GenericError("'data-file' is required for this image")
        if hdr.autoclear_features & H.AUTOCLEAR_DATA_FILE_RAW:
            raise GenericError("data-file-raw requires a data file")
        if hdr.backing_error is not None:
            raise GenericError(hdr.backing_error)

        self.backing_file = hdr.backing_file
        self.backing_format = hdr.backing_format

        self.snapshots = []
        if hdr.nb_snapshots:
            try:
                raw = await f.read(hdr.snapshots_offset, snapshot_table_bound(hdr.nb_snapshots))
                self.snapshots, self.snapshots_size = parse_snapshots(raw, hdr.nb_snapshots)
            except GenericError:
                # In check mode a broken table must not prevent the check.
                if not check_mode:
                    raise

        self.bitmaps = await self._read_bitmap_directory()
        if not self.read_only:
            await self._become_writable(check_mode)
        self._opened = True
        if self.cache_config.cache_clean_interval > 0:
            self._clean_task = asyncio.get_running_loop().create_task(
                self._cache_cleaner(self.cache_config.cache_clean_interval)
            )

    async def _become_writable(self, check_mode: bool) -> None:
        """What QEMU does when it gets write access: drop unknown autoclear bits,
        repair a dirty (lazy refcounts) image."""
        hdr = self.header
        if hdr.autoclear_features & ~H.AUTOCLEAR_MASK:
            hdr.autoclear_features &= H.AUTOCLEAR_MASK
            await self._write_header()
            await self._f.flush()
        if not check_mode and self.dirty:
            from .check import check_image

            res = await check_image(self, "all")
            if res.check_errors:
                raise GenericError("Could not repair dirty image: Input/output error")

    async def _before_modify(self) -> None:
        """First change to the image: persistent bitmaps stop being maintained.

        blockd does not update dirty bitmaps, so it clears their autoclear bit
        (the spec's way to tell QEMU they went stale) before the first change,
        not at open: an image only read keeps valid bitmaps.
        """
        if self.header.autoclear_features & H.AUTOCLEAR_BITMAPS:
            async with self._lock:
                if self.header.autoclear_features & H.AUTOCLEAR_BITMAPS:
                    self.header.autoclear_features &= ~H.AUTOCLEAR_BITMAPS
                    await self._write_header()
                    await self._f.flush()
                    self._metadata_changed()

    async def _read_bitmap_directory(self) -> list[dict[str, Any]]:
        """Persistent dirty bitmaps as ImageInfoSpecificQCow2 lists them."""
        ext = bitmaps_ext(self.header)
        if ext is None or ext.directory_size > MAX_DIRECTORY_SIZE:
            return []
        raw = await self._pread(ext.directory_offset, ext.directory_size)
        return [b.info() for b in parse_directory(raw, ext.count)]

    def _validate_table(
        self, offset: int, entries: int, entry_len: int, max_bytes: int, name: str
    ) -> None:
        if entries > max_bytes // entry_len:
            raise GenericError(f"{name} too large")
        if INT64_MAX - entries * entry_len < offset or offset & (self.cluster_size - 1):
            raise GenericError(f"{name} offset invalid")

    def _apply_options(self, options: dict[str, Any], flags: OpenFlags) -> None:
        """Runtime options (qcow2_update_options_prepare) with QEMU's errors;
        nothing changes when they are refused."""
        rt = parse_runtime_options(options, flags, self.header)
        self.cache_config = rt.cache
        self.use_lazy_refcounts = rt.lazy_refcounts
        self.discard_passthrough = dict(rt.discard_passthrough)
        self.overlap_checks = rt.overlap_checks
        self._metadata_map = None

    async def reopen(self, options: dict[str, Any], flags: OpenFlags) -> None:
        """Apply changed runtime options (cache sizes, discard, lazy refcounts)."""
        async with self._locked():
            old = self.cache_config
            self._apply_options(options, flags)
            cfg = self.cache_config
            assert cfg is not None
            if old != cfg:
                self.l2cache = TableCache(
                    cfg.l2_cache_entries, cfg.l2_cache_entry_size, self._pread
                )
                self.slice_entries = cfg.l2_cache_entry_size // self.l2_entry_size
                self.rc.cache = TableCache(
                    cfg.refcount_cache_entries, self.cluster_size, self._pread
                )
                if self._clean_task is not None:
                    self._clean_task.cancel()
                    self._clean_task = None
                if cfg.cache_clean_interval > 0:
                    self._clean_task = asyncio.get_running_loop().create_task(
                        self._cache_cleaner(cfg.cache_clean_interval)
                    )
            if not flags.read_only and self.read_only:
                self.read_only = False
                try:
                    await self._become_writable(False)
                except BaseException:
                    self.read_only = True
                    raise
            if flags.read_only and not self.read_only:
                await self._process_frees()
                await self._release_pool()
                await self._drain()
                await self._f.flush()
                await self._mark_clean()
            self.flags = flags
            self.read_only = flags.read_only
            self._barriers = not flags.cache_no_flush

    async def _cache_cleaner(self, interval: int) -> None:
        while True:
            await asyncio.sleep(interval)
            self.l2cache.clean_unused()
            self.rc.cache.clean_unused()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._opened:
            # A refused image is never written to.
            return
        if self._clean_task is not None:
            self._clean_task.cancel()
            self._clean_task = None
        if not self.read_only and self.file is not None:
            async with self._locked():
                await self._process_frees()
                await self._release_pool()
                await self._drain()
                await self._f.flush()
                await self._mark_clean()

    async def _mark_dirty(self) -> None:
        if self.header.version < 3 or self.header.incompatible_features & H.INCOMPAT_DIRTY:
            return
        self.header.incompatible_features |= H.INCOMPAT_DIRTY
        self.dirty = True
        await self._write_incompat()

    async def _mark_clean(self) -> None:
        if self.header.incompatible_features & H.INCOMPAT_DIRTY:
            self.header.incompatible_features &= ~H.INCOMPAT_DIRTY
            self.dirty = False
            await self._f.flush()
            await self._write_incompat()

    async def _set_reftable_location(self, offset: int, clusters: int) -> None:
        self.header.refcount_table_offset = offset
        self.header.refcount_table_clusters = clusters
        await self._f.write(H.OFF_REFCOUNT_TABLE_OFFSET, struct.pack(">QI", offset, clusters))

    # --- in-flight data I/O tracking --------------------------------------

    def _io_begin(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _io_end(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def _drain(self) -> None:
        """Wait (holding the lock) until no data I/O outside the lock is running."""
        while self._inflight:
            await self._idle.wait()

    # --- L2 access ---------------------------------------------------------

    def _split(self, offset: int) -> tuple[int, int]:
        """(L1 index, L2 index) of a guest offset."""
        cluster = offset >> self.cluster_bits
        return cluster >> self.l2_bits, cluster & (self.l2_size - 1)

    async def _check_overlap(self, host: int, length: int) -> None:
        """qcow2_pre_write_overlap_check() for guest data about to be written:
        a corrupted table must never make blockd overwrite metadata."""
        if not self.overlap_checks or length <= 0:
            return
        if host < self.cluster_size and "qcow2_header" in self.overlap_checks:
            await self._signal_corruption(
                "Preventing invalid write on metadata (overlaps with qcow2_header)",
                host, length,
            )
        meta = self._metadata_map
        if meta is None:
            meta = self._metadata_map = await self._build_metadata_map()
        first = host >> self.cluster_bits
        last = (host + length - 1) >> self.cluster_bits
        if last - first < len(meta):
            hits = [meta[c] for c in range(first, last + 1) if c in meta]
        else:
            hits = [k for c, k in meta.items() if first <= c <= last]
        if hits:
            order = [k for k, _ in OVERLAP_KINDS]
            kind = min(hits, key=order.index)
            await self._signal_corruption(
                f"Preventing invalid write on metadata (overlaps with {kind})", host, length
            )

    async def _build_metadata_map(self) -> dict[int, str]:
        cb = self.cluster_bits
        cs = self.cluster_size
        meta: dict[int, str] = {}
        want = self.overlap_checks

        def add(offset: int, length: int, kind: str) -> None:
            if kind not in want or length <= 0:
                return
            for c in range(offset >> cb, ((offset + length - 1) >> cb) + 1):
                meta.setdefault(c, kind)

        add(self.l1_offset, len(self.l1) * 8, "active L1 table")
        for e in self.l1:
            if e & L1E_OFFSET_MASK:
                add(e & L1E_OFFSET_MASK, cs, "active L2 table")
        add(self.rc.table_offset, len(self.rc.table) * 8, "refcount table")
        for e in self.rc.table:
            if e & REFT_OFFSET_MASK:
                add(e & REFT_OFFSET_MASK, cs, "refcount block")
        if self.snapshots:
            add(self.header.snapshots_offset, self.snapshots_size, "snapshot table")
        for sn in self.snapshots:
            add(sn.l1_table_offset, sn.l1_size * 8, "inactive L1 table")
            if "inactive L2 table" in want and sn.l1_size:
                raw = await self._pread(sn.l1_table_offset, sn.l1_size * 8)
                for e in struct.unpack(f">{sn.l1_size}Q", raw):
                    if e & L1E_OFFSET_MASK:
                        add(e & L1E_OFFSET_MASK, cs, "inactive L2 table")
        ext = bitmaps_ext(self.header)
        if ext is not None:
            add(ext.directory_offset, ext.directory_size, "bitmap directory")
        return meta

    def _metadata_changed(self) -> None:
        self._metadata_map = None

    async def _check_host_range(self, host: int, length: int, what: str) -> None:
        if host + length > self._file_len:
            self._file_len = self._f.get_length()
            if host + length > self._file_len:
                raise _eio(
                    f"qcow2: {what} at offset {host:#x} lies beyond the end of the image file"
                )

    async def _l2_slice(self, l2_off: int, l2_index: int) -> tuple[bytearray, int, int]:
        """The cached slice holding entry l2_index; (slice, first index, host offset)."""
        first = l2_index - l2_index % self.slice_entries
        host = l2_off + first * self.l2_entry_size
        return await self.l2cache.get(host), first, host

    async def _entries(self, offset: int, count: int) -> tuple[list[int], int]:
        """L2 entries of up to count clusters from offset, within one L2 slice.

        Returns (entries, l2 table offset or 0).
        """
        l1_idx, l2_idx = self._split(offset)
        n = min(count, self.slice_entries - l2_idx % self.slice_entries)
        if l1_idx >= len(self.l1):
            return [0] * n, 0
        l2_off = self.l1[l1_idx] & L1E_OFFSET_MASK
        if not l2_off:
            return [0] * n, 0
        if l2_off & (self.cluster_size - 1):
            await self._signal_corruption(
                f"L2 table offset {_hx(l2_off)} unaligned (L1 index: {_hx(l1_idx)})"
            )
        if l2_off + self.cluster_size > self._file_len:
            await self._check_host_range(l2_off, self.cluster_size, "L2 table")
        first = l2_idx - l2_idx % self.slice_entries
        # The hot path: a cached slice needs no await.
        cached = self.l2cache.peek(l2_off + first * self.l2_entry_size)
        slc = cached if cached is not None else (await self._l2_slice(l2_off, l2_idx))[0]
        i = l2_idx - first
        if self.extl2:
            return list(struct.unpack_from(f">{2 * n}Q", slc, i * 16)[::2]), l2_off
        return list(struct.unpack_from(f">{n}Q", slc, i * 8)), l2_off

    async def _bitmaps(self, offset: int, count: int) -> list[int]:
        """Subcluster bitmaps of extended L2 entries (as many as _entries gives)."""
        pairs, _ = await self._entries_ext(offset, count)
        return [bm for _, bm in pairs]

    async def _entries_ext(self, offset: int, count: int) -> tuple[list[tuple[int, int]], int]:
        """Extended L2 (entry, subcluster bitmap) pairs, like _entries()."""
        l1_idx, l2_idx = self._split(offset)
        n = min(count, self.slice_entries - l2_idx % self.slice_entries)
        if l1_idx >= len(self.l1) or not self.l1[l1_idx] & L1E_OFFSET_MASK:
            return [(0, 0)] * n, 0
        l2_off = self.l1[l1_idx] & L1E_OFFSET_MASK
        if l2_off & (self.cluster_size - 1):
            await self._signal_corruption(
                f"L2 table offset {_hx(l2_off)} unaligned (L1 index: {_hx(l1_idx)})"
            )
        await self._check_host_range(l2_off, self.cluster_size, "L2 table")
        slc, first, _ = await self._l2_slice(l2_off, l2_idx)
        raw = struct.unpack_from(f">{2 * n}Q", slc, (l2_idx - first) * 16)
        return [(raw[2 * i], raw[2 * i + 1]) for i in range(n)], l2_off

    async def _map_ext(self, offset: int, length: int) -> list[Extent]:
        """_map() for extended L2 entries: extents at subcluster granularity."""
        cs = self.cluster_size
        sub_bits = self.cluster_bits - 5
        out: list[Extent] = []
        pos = offset
        end = offset + length
        while pos < end:
            first_cluster = pos >> self.cluster_bits
            nclusters = ((end - 1) >> self.cluster_bits) - first_cluster + 1
            pairs, _ = await self._entries_ext(pos, nclusters)
            for i, (e, bitmap) in enumerate(pairs):
                cstart = (first_cluster + i) << self.cluster_bits
                if e & OFLAG_COMPRESSED:
                    s, t = max(cstart, pos), min(cstart + cs, end)
                    out.append(Extent(s, t - s, ClusterType.COMPRESSED, 0, e, False))
                    continue
                base = e & L2E_OFFSET_MASK
                for sc in range(32):
                    sstart = cstart + (sc << sub_bits)
                    s, t = max(sstart, pos), min(sstart + (1 << sub_bits), end)
                    if s >= t:
                        continue
                    if bitmap & (1 << sc):
                        ct, host = ClusterType.NORMAL, base + (s - cstart)
                        writable = bool(e & OFLAG_COPIED)
                    elif bitmap & (1 << (32 + sc)):
                        ct = ClusterType.ZERO_ALLOC if base else ClusterType.ZERO_PLAIN
                        host = base + (s - cstart) if base else 0
                        writable = False
                    else:
                        # Unallocated subcluster (of an allocated cluster: its
                        # host offset is still reported, as QEMU's map shows).
                        ct, writable = ClusterType.UNALLOCATED, False
                        host = base + (s - cstart) if base else 0
                    if out:
                        p = out[-1]
                        if (
                            p.ctype == ct
                            and p.writable == writable
                            and p.offset + p.length == s
                            and (not host or p.host + p.length == host)
                        ):
                            out[-1] = Extent(
                                p.offset, p.length + t - s, ct, p.host, p.entry, writable
                            )
                            continue
                    out.append(Extent(s, t - s, ct, host, e, writable))
            pos = min(end, (first_cluster + len(pairs)) << self.cluster_bits)
        for ext in out:
            if ext.ctype == ClusterType.NORMAL and ext.host + ext.length > self._file_len:
                await self._check_host_range(ext.host, ext.length, "Data cluster")
        return out

    async def _map(self, offset: int, length: int) -> list[Extent]:
        """Classify [offset, offset+length) into extents (caller holds the lock)."""
        if self.extl2:
            return await self._map_ext(offset, length)
        cs = self.cluster_size
        out: list[Extent] = []
        pos = offset
        end = offset + length
        while pos < end:
            first_cluster = pos >> self.cluster_bits
            nclusters = ((end - 1) >> self.cluster_bits) - first_cluster + 1
            entries, l2_off = await self._entries(pos, nclusters)
            for i, e in enumerate(entries):
                cstart = (first_cluster + i) << self.cluster_bits
                s = max(cstart, pos)
                t = min(cstart + cs, end)
                ct = cluster_type(e)
                host = 0
                if ct in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC):
                    base = await self._data_offset(e, first_cluster + i, l2_off)
                    host = base + (s - cstart)
                writable = ct == ClusterType.NORMAL and bool(e & OFLAG_COPIED)
                if out:
                    p = out[-1]
                    if (
                        p.ctype == ct
                        and ct != ClusterType.COMPRESSED
                        and p.writable == writable
                        and (p.entry ^ e) & OFLAG_COPIED == 0
                        and p.offset + p.length == s
                        and (
                            ct not in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC)
                            or p.host + p.length == host
                        )
                    ):
                        out[-1] = Extent(p.offset, p.length + t - s, ct, p.host, p.entry, writable)
                        continue
                out.append(Extent(s, t - s, ct, host, e, writable))
            pos = min(end, (first_cluster + len(entries)) << self.cluster_bits)
        for ext in out:
            if ext.ctype == ClusterType.NORMAL and ext.host + ext.length > self._file_len:
                await self._check_host_range(ext.host, ext.length, "Data cluster")
        return out

    async def _data_offset(self, entry: int, cluster: int, l2_off: int) -> int:
        """The host offset of an allocated L2 entry; QEMU's corruption report
        (qcow2_get_host_offset) when it is not cluster aligned."""
        base = entry & L2E_OFFSET_MASK
        if base & (self.cluster_size - 1):
            l2i = cluster & (self.l2_size - 1)
            await self._signal_corruption(
                f"Cluster allocation offset {_hx(base)} unaligned "
                f"(L2 offset: {_hx(l2_off)}, L2 index: {_hx(l2i)})"
            )
        return base

    async def _first_extent(self, offset: int, length: int) -> Extent:
        """``_map(offset, length)[0]`` without classifying the rest of the range
        (block_status asks for long ranges but uses only the first extent)."""
        if self.extl2:
            return (await self._map_ext(offset, length))[0]
        cs = self.cluster_size
        first_cluster = offset >> self.cluster_bits
        nclusters = ((offset + length - 1) >> self.cluster_bits) - first_cluster + 1
        entries, l2_off = await self._entries(offset, nclusters)
        e = entries[0]
        ct = cluster_type(e)
        cstart = first_cluster << self.cluster_bits
        host = 0
        if ct in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC):
            host = await self._data_offset(e, first_cluster, l2_off) + (offset - cstart)
        end = min(offset + length, (first_cluster + leading_run(entries, cs)) << self.cluster_bits)
        writable = ct == ClusterType.NORMAL and bool(e & OFLAG_COPIED)
        ext = Extent(offset, end - offset, ct, host, e, writable)
        if ct == ClusterType.NORMAL and ext.host + ext.length > self._file_len:
            await self._check_host_range(ext.host, ext.length, "Data cluster")
        return ext

    # --- reads ---------------------------------------------------------------

    async def _read_backing(self, offset: int, length: int) -> bytes:
        b = self.backing
        if b is None:
            return bytes(length)
        blen = b.get_length()
        if offset >= blen:
            return bytes(length)
        n = min(length, blen - offset)
        data = await b.read(offset, n)
        if n < length:
            data += bytes(length - n)
        return data

    async def _read_compressed(self, entry: int) -> bytes:
        host, clen = self.cgeo.decode(entry)
        raw = await self._pread(host, clen)
        return decompress_cluster(raw, self.cluster_size)

    async def _read_extent(self, ext: Extent) -> bytes:
        if ext.ctype == ClusterType.NORMAL:
            await bdrv_debug_event(self.file, "read_aio")
            return await self._pread(ext.host, ext.length)
        if ext.ctype == ClusterType.COMPRESSED:
            await bdrv_debug_event(self.file, "read_compressed")
            data = await self._read_compressed(ext.entry)
            skip = ext.offset & (self.cluster_size - 1)
            return data[skip : skip + ext.length]
        if ext.ctype == ClusterType.UNALLOCATED:
            return await self._read_backing(ext.offset, ext.length)
        return bytes(ext.length)

    async def read(self, offset: int, length: int) -> bytes:
        if self.unusable:
            raise OSError(errno.ENOMEDIUM, os.strerror(errno.ENOMEDIUM))
        if length <= 0:
            return b""
        if offset + length > self.size:
            if offset >= self.size:
                return bytes(length)
            return await self.read(offset, self.size - offset) + bytes(offset + length - self.size)
        data = self._read_now(offset, length)
        if data is not None:
            return data
        async with self._lock:
            extents = await self._map(offset, length)
            self._io_begin()
        try:
            if len(extents) == 1:
                return await self._read_extent(extents[0])
            parts = await asyncio.gather(*(self._read_extent(e) for e in extents))
            return b"".join(parts)
        finally:
            self._io_end()

    def _read_now(self, offset: int, length: int) -> bytes | None:
        """The common read done at once, without an await, when the file does
        its I/O inline (blockd-io): clusters in one cached L2 slice that are all
        data at contiguous host offsets, or all unallocated/zero with nothing
        behind them.  None, having done nothing, for anything else (_map and
        _read_extent then do the full work, including corruption reports)."""
        f = self.file
        if type(f) is not FileDriver or not f.inline or self.extl2 or self._lock.locked():
            return None
        cb = self.cluster_bits
        cs = self.cluster_size
        cluster = offset >> cb
        n = ((offset + length - 1) >> cb) - cluster + 1
        l1_idx = cluster >> self.l2_bits
        l2_idx = cluster & (self.l2_size - 1)
        first = l2_idx - l2_idx % self.slice_entries
        if l2_idx - first + n > self.slice_entries or l1_idx >= len(self.l1):
            return None
        l2_off = self.l1[l1_idx] & L1E_OFFSET_MASK
        if not l2_off:
            if self.backing is None:
                return bytes(length)
            return None
        if l2_off & (cs - 1) or l2_off + cs > self._file_len:
            return None
        slc = self.l2cache.peek(l2_off + first * 8)
        if slc is None:
            return None
        old = struct.unpack_from(f">{n}Q", slc, (l2_idx - first) * 8)
        e0 = old[0]
        if e0 & ~(OFLAG_ZERO | OFLAG_COPIED) == 0:
            # Unallocated or plain zero clusters.
            if self.backing is not None or any(e & ~(OFLAG_ZERO | OFLAG_COPIED) for e in old):
                return None
            return bytes(length)
        if e0 & (OFLAG_COMPRESSED | OFLAG_ZERO):
            return None
        base = e0 & L2E_OFFSET_MASK
        if not base or base & (cs - 1) or (
            n > 1
            and any(
                (old[k] ^ e0) & ~L2E_OFFSET_MASK or old[k] & L2E_OFFSET_MASK != base + k * cs
                for k in range(1, n)
            )
        ):
            return None
        host = base + (offset & (cs - 1))
        if host + length > self._file_len:
            return None
        return f.read_now(host, length)

    # --- allocation helpers ------------------------------------------------

    async def _alloc(self, count: int) -> int:
        """Host offset of ``count`` fresh contiguous clusters (refcount 1).

        Clusters come from a reserve whose refcounts are already stable on disk,
        so referencing them needs no barrier; a reserve is taken at the first fit
        (where QEMU would allocate) and extended over the free clusters after it.
        Once half of it is used, the next reserve is taken and made stable by a
        barrier running in the background, so sequential writes do not wait for
        an fdatasync of everything written since the last one.  A crash leaks the
        unused reserves at worst.  Nothing is awaited once the clusters are taken,
        so a cancelled caller cannot lose them.
        """
        if self._pool_end - self._pool_start < count or self._pool_end == 0:
            await self._settled(self._refill_pool(count))
        if self._prefetch_due(count):
            await self._settled(self._prefetch_pool())
        off = self._pool_start << self.cluster_bits
        self._pool_start += count
        return off

    def _prefetch_due(self, count: int) -> bool:
        """Whether taking ``count`` clusters leaves the reserve under half full
        with the next one still to be taken in the background: that hides its
        barrier (none is needed with durable refcount writes, whose refill is
        cheap enough in line)."""
        return (
            self._next_pool is None
            and self._barriers
            and (self._pool_end - self._pool_start - count) * 2 < self._pool_chunk
            and not self._durable_metadata()
        )

    async def _settled(self, work: Coroutine[Any, Any, None]) -> None:
        """Run reserve bookkeeping (refcount writes, then recording what they
        did) to its end even when the caller is cancelled meanwhile, so no
        reserve is raised on disk but forgotten; the caller keeps the lock until
        then, and the cancellation is raised after."""
        task = asyncio.ensure_future(work)
        cancelled = False
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = cancelled or not task.done()
            except Exception:
                break
        if cancelled:
            if not task.cancelled():
                task.exception()  # retrieved: the cancellation wins
            raise asyncio.CancelledError()
        task.result()

    async def _refill_pool(self, count: int) -> None:
        if await self._take_next_pool(count):
            return
        await self._release_pools()
        if self.use_lazy_refcounts:
            await self._mark_dirty()
        extra = max(0, self._pool_chunk - count)
        if self._durable_metadata():
            # The refcount writes are stable when they return: no barrier, and
            # so no flush of the data written meanwhile.
            self._rc_fua = True
            try:
                off, total = await self.rc.alloc_clusters(count, extra)
            finally:
                self._rc_fua = False
        else:
            off, total = await self.rc.alloc_clusters(count, extra)
            await self._barrier()
        self._pool_start = off >> self.cluster_bits
        self._pool_end = self._pool_start + total

    async def _prefetch_pool(self) -> None:
        """Take the next reserve now (refcounts raised, as a one-cluster request
        with its reserve would) and start the barrier that makes it usable."""
        if self.use_lazy_refcounts:
            await self._mark_dirty()
        off, total = await self.rc.alloc_clusters(1, self._pool_chunk - 1)
        start = off >> self.cluster_bits
        self._next_pool = (start, start + total)
        self._next_ready = asyncio.get_running_loop().create_task(self._barrier())

    async def _take_next_pool(self, count: int) -> bool:
        """Switch to the prefetched reserve if it holds ``count`` clusters, once
        its barrier is done; the rest of the current reserve goes back."""
        nxt, ready = self._next_pool, self._next_ready
        if nxt is None or ready is None or nxt[1] - nxt[0] < count:
            return False
        try:
            await ready
        except BaseException:
            # Never made stable: never used (its clusters leak).
            self._next_pool = self._next_ready = None
            raise
        self._next_pool = self._next_ready = None
        await self._release_current_pool()
        self._pool_start, self._pool_end = nxt
        return True

    async def _release_current_pool(self) -> None:
        start, end = self._pool_start, self._pool_end
        # Forgotten first: a failed update must not be retried on top of itself.
        self._pool_start = self._pool_end = 0
        if end > start:
            cb = self.cluster_bits
            await self.rc.update(start << cb, (end - start) << cb, -1)
            self.rc.take_freed()

    async def _release_pool(self) -> None:
        """Give the unused reserves back (they were never referenced)."""
        await self._settled(self._release_pools())

    async def _release_pools(self) -> None:
        await self._release_current_pool()
        nxt, ready = self._next_pool, self._next_ready
        if nxt is None:
            return
        self._next_pool = self._next_ready = None
        if ready is not None:
            # Let the barrier finish first: it must not outlive the file.
            with contextlib.suppress(Exception):
                await ready
        cb = self.cluster_bits
        await self.rc.update(nxt[0] << cb, (nxt[1] - nxt[0]) << cb, -1)
        self.rc.take_freed()

    _next_pool: tuple[int, int] | None = None
    _next_ready: asyncio.Task[None] | None = None
    _rc_dirty = False
    _rc_fua = False
    _pool_start = 0
    _pool_end = 0

    async def _dependency_barrier(self) -> None:
        """Refcount raises outside the reserve must be stable before tables
        reference the clusters."""
        if self._rc_dirty:
            self._rc_dirty = False
            await self._barrier()

    async def _writable_l2(self, l1_idx: int) -> int:
        """Offset of an L2 table this image alone owns, allocating/COWing as needed.

        The switch to a new table runs to its end even when the caller is
        cancelled meanwhile, so a written table is never left unlinked (leaked).
        """
        if l1_idx >= len(self.l1):
            raise _eio("qcow2: L1 index out of range")
        l1e = self.l1[l1_idx]
        old = l1e & L1E_OFFSET_MASK
        if old and l1e & OFLAG_COPIED:
            return old
        if old:
            await self._check_host_range(old, self.cluster_size, "L2 table")
        await self._settled(self._switch_l2(l1_idx, old))
        return self.l1[l1_idx] & L1E_OFFSET_MASK

    async def _switch_l2(self, l1_idx: int, old: int) -> None:
        new = await self._alloc(1)
        if old:
            content = bytearray(await self._pread(old, self.cluster_size))
        else:
            content = bytearray(self.cluster_size)
        # The table must be stable before L1 names it (its refcount already is,
        # unless _rc_dirty): a FUA write where that is cheaper than a barrier.
        durable = not self._rc_dirty and self._durable_metadata()
        await self._pwrite(new, content, fua=durable)
        es = self.l2cache.entry_size
        for i in range(0, self.cluster_size, es):
            self.l2cache.put(new + i, content[i : i + es])
        if not durable:
            # One barrier covers both the refcount and the table content.
            self._rc_dirty = False
            await self._barrier()
        self.l1[l1_idx] = new | OFLAG_COPIED
        self._metadata_changed()
        await self._pwrite(self.l1_offset + l1_idx * 8, struct.pack(">Q", self.l1[l1_idx]))
        if old:
            self.l2cache.drop_range(old, self.cluster_size)
            await self._free(old, self.cluster_size, DISCARD_OTHER)

    async def _set_entries(
        self,
        offset: int,
        entries: list[int],
        bitmaps: list[int] | None = None,
        fresh_bitmap: int = BITMAP_ALL_ALLOC,
        *,
        to_disk: bool = True,
    ) -> None:
        """Write L2 entries for consecutive clusters from offset (one slice).

        With extended L2 entries, ``bitmaps`` gives the subcluster bitmaps; by
        default an unchanged entry keeps its bitmap, a new data cluster gets
        ``fresh_bitmap`` (all subclusters allocated; preallocation: none) and
        anything else has none.  ``to_disk=False`` only updates the cache (the
        caller already wrote the same bytes).
        """
        l1_idx, l2_idx = self._split(offset)
        l2_off = self.l1[l1_idx] & L1E_OFFSET_MASK
        slc, first, host = await self._l2_slice(l2_off, l2_idx)
        i = l2_idx - first
        n = len(entries)
        if not self.extl2:
            struct.pack_into(f">{n}Q", slc, i * 8, *entries)
            if to_disk:
                await self._pwrite(host + i * 8, bytes(slc[i * 8 : (i + n) * 8]))
            return
        old = struct.unpack_from(f">{2 * n}Q", slc, i * 16)
        flat: list[int] = []
        for k, e in enumerate(entries):
            if bitmaps is not None:
                bm = bitmaps[k]
            elif e == old[2 * k]:
                bm = old[2 * k + 1]
            elif e & L2E_OFFSET_MASK and not e & OFLAG_COMPRESSED:
                bm = fresh_bitmap
            else:
                bm = 0
            flat += [e, bm]
        struct.pack_into(f">{2 * n}Q", slc, i * 16, *flat)
        if to_disk:
            await self._pwrite(host + i * 16, bytes(slc[i * 16 : (i + n) * 16]))

    async def _free(self, host: int, length: int, kind: str) -> None:
        """Drop one reference on the clusters of [host, host+length).

        The drop is queued: the caller has just removed the reference from the
        tables, and the queue is processed behind one barrier (at flush, close,
        check or when it grows), so a crash in between only leaks.
        """
        self._pending_frees.append((host, length, kind))
        if len(self._pending_frees) >= 4096:
            await self._process_frees()

    async def _process_frees(self) -> None:
        """Apply queued reference drops; caller holds the lock."""
        if not self._pending_frees:
            return
        pending, self._pending_frees = self._pending_frees, []
        await self._drain()
        await self._barrier()
        if self.use_lazy_refcounts:
            await self._mark_dirty()
        discards: list[tuple[int, int]] = []
        for host, length, kind in pending:
            await self.rc.update(host, length, -1)
            freed = self.rc.take_freed()
            for off, ln in freed:
                if self.free_byte_offset and off <= self.free_byte_offset - 1 < off + ln:
                    self.free_byte_offset = 0
                self.l2cache.drop_range(off, ln)
            if self.discard_passthrough.get(kind):
                discards.extend(freed)
        for off, ln in discards:
            try:
                await self._f.discard(off, ln)
            except OSError:
                pass

    async def _free_entry(self, entry: int, kind: str) -> None:
        ct = cluster_type(entry)
        if ct == ClusterType.COMPRESSED:
            start, ln = self.cgeo.host_range(entry)
            await self._free(start, ln, kind)
        elif ct in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC):
            await self._free(entry & L2E_OFFSET_MASK, self.cluster_size, kind)

    # --- writes --------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.unusable:
            raise OSError(errno.ENOMEDIUM, os.strerror(errno.ENOMEDIUM))
        if self.read_only:
            raise OSError(errno.EACCES, "Permission denied")
        if self.corrupt:
            raise _eio()

    async def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        compressed: bool = False,
        fua: bool = False,
    ) -> None:
        if self.read_only or self.corrupt:
            self._check_writable()  # raises
        if self.header.autoclear_features & H.AUTOCLEAR_BITMAPS:
            await self._before_modify()
        mv = memoryview(data)
        if mv.itemsize != 1 or mv.ndim != 1:
            mv = mv.cast("B")
        if not len(mv):
            return
        if offset < 0 or offset + len(mv) > self.size:
            raise _eio()
        if compressed:
            await self._write_compressed(offset, mv)
        elif not self._write_now(offset, mv):
            await self._write_data(offset, mv)
        if fua:
            await self._f.flush()

    def _write_now(self, offset: int, mv: memoryview) -> bool:
        """The common write done at once, without an await, when the file does
        its I/O inline (blockd-io, see blockd.io.executor.set_inline_io); False,
        having done nothing, unless the request is exactly that case: whole
        clusters in one cached L2 slice of a table this image owns, all of them
        either unallocated (no COW: fresh clusters from the stable reserve, data
        then L2 entries in one ordered chain, as _alloc_finish writes them) or
        owned and contiguous (overwritten in place).  Nothing can interleave, so
        no lock or in-flight bookkeeping is needed; everything else (COW, L2
        allocation, reserve refills, corruption reports) is left to _write_data.
        """
        f = self.file
        if type(f) is not FileDriver or not f.inline or self.extl2 or self._allocs:
            return False
        cb = self.cluster_bits
        cs = self.cluster_size
        length = len(mv)
        if (offset | length) & (cs - 1) or self._lock.locked():
            return False
        n = length >> cb
        cluster = offset >> cb
        l1_idx = cluster >> self.l2_bits
        l2_idx = cluster & (self.l2_size - 1)
        se = self.slice_entries
        first = l2_idx - l2_idx % se
        if l2_idx - first + n > se or l1_idx >= len(self.l1):
            return False
        l1e = self.l1[l1_idx]
        l2_off = l1e & L1E_OFFSET_MASK
        if not l1e & OFLAG_COPIED or l2_off & (cs - 1) or l2_off < cs:
            return False
        if l2_off + cs > self._file_len:
            return False
        slc = self.l2cache.peek(l2_off + first * 8)
        if slc is None:
            return False
        i = (l2_idx - first) * 8
        entries = _entry_struct(n)
        old = entries.unpack_from(slc, i)
        e0 = old[0]
        if e0 & ~OFLAG_ZERO == 0:
            # Unallocated (or plain zero) clusters: nothing to copy, nothing to free.
            if n > 1 and any(e & ~OFLAG_ZERO for e in old):
                return False
            start = self._pool_start
            avail = self._pool_end - start
            if (
                avail < n
                or self._rc_dirty
                or self._prefetch_due(n)
            ):
                return False  # _alloc() has reserve work to do
            host = start << cb
            if host < cs or (self.overlap_checks and self._overlaps_metadata(host, length)):
                return False
            if n == 1:
                new: tuple[int, ...] = (host | OFLAG_COPIED,)
            else:
                new = tuple((host + k * cs) | OFLAG_COPIED for k in range(n))
            l2_bytes = entries.pack(*new)
            l2_at = l2_off + l2_idx * 8
            self._pool_start = start + n
            try:
                f.write_chain_now([(host, mv), (l2_at, l2_bytes)])
            except BaseException:
                self._settle_failed_now(f, l2_at, l2_bytes, old, host, n, l2_off + first * 8)
                raise
            finally:
                if host + length > self._file_len:
                    self._file_len = host + length
            entries.pack_into(slc, i, *new)
            return True
        # Owned data clusters at contiguous host offsets: overwrite in place.
        if e0 & ~(L2E_OFFSET_MASK | OFLAG_COPIED) or not e0 & OFLAG_COPIED:
            return False
        host = e0 & L2E_OFFSET_MASK
        if n > 1 and any(old[k] != e0 + k * cs for k in range(1, n)):
            return False
        if host < cs or host & (cs - 1) or host + length > self._file_len:
            return False
        if self.overlap_checks and self._overlaps_metadata(host, length):
            return False
        f.write_chain_now([(host, mv)])
        return True

    def _overlaps_metadata(self, host: int, length: int) -> bool:
        """Whether _check_overlap() has something to say about a data write (or
        cannot tell without building its map): the caller then takes the slow
        path, which reports it."""
        if not self.overlap_checks:
            return False
        meta = self._metadata_map
        if meta is None:
            return True
        cb = self.cluster_bits
        first = host >> cb
        last = (host + length - 1) >> cb
        if first == last:
            return first in meta
        return not meta.keys().isdisjoint(range(first, last + 1))

    def _settle_failed_now(
        self, f: FileDriver, l2_at: int, l2_bytes: bytes, old: tuple[int, ...], host: int,
        n: int, slice_key: int,
    ) -> None:
        """After a failed chain of _write_now: what do the L2 entries on disk
        say?  The new ones: the cache learns them.  Still the old ones: the fresh
        clusters were never referenced and go back (queued like any free).
        Unclear: the cached slice is dropped, the clusters stay allocated (a leak
        at worst)."""
        try:
            disk = f.read_now(l2_at, len(l2_bytes))
        except Exception:
            disk = b""
        if disk == l2_bytes:
            slc = self.l2cache.peek(slice_key)
            if slc is not None:
                slc[l2_at - slice_key : l2_at - slice_key + len(l2_bytes)] = l2_bytes
        elif disk == struct.pack(f">{n}Q", *old):
            self._pending_frees.append((host, n << self.cluster_bits, DISCARD_NEVER))
        else:
            self.l2cache.drop(slice_key)

    async def _write_data(self, offset: int, mv: memoryview) -> None:
        cs = self.cluster_size
        end = offset + len(mv)
        pos = offset
        while pos < end:
            # One L2 slice per round keeps the mapping work proportional.
            _, l2_idx = self._split(pos)
            room = (self.slice_entries - l2_idx % self.slice_entries) * cs - (pos & (cs - 1))
            span = min(end - pos, room)
            # QEMU fires write_aio before each data write task (qcow2_co_pwritev_task).
            await bdrv_debug_event(self.file, "write_aio")
            await self._acquire_clusters(pos, span)
            plan: _AllocPlan | None = None
            try:
                extents = await self._map(pos, span)
                head = extents[0]
                if head.writable:
                    # Allocated, owned clusters: overwrite in place outside the lock.
                    run = head.length
                    self._io_begin()
                elif (
                    head.ctype == ClusterType.ZERO_ALLOC
                    and head.entry & OFLAG_COPIED
                    and not self.extl2
                ):
                    # Preallocated zero clusters we own: fill them in place.
                    run = head.length
                    await self._write_zero_alloc(pos, mv[pos - offset : pos - offset + run], head)
                    pos += run
                    continue
                else:
                    # Everything up to the next in-place cluster needs allocation.
                    run = 0
                    for ext in extents:
                        if ext.writable:
                            break
                        run += ext.length
                    plan = await self._alloc_prepare(pos, run)
            finally:
                self._lock.release()
            if plan is not None:
                await self._alloc_finish(plan, mv[pos - offset : pos - offset + run])
                pos += run
                continue
            try:
                await self._check_overlap(head.host, run)
                await self._f.write(head.host, mv[pos - offset : pos - offset + run])
                if head.host + run > self._file_len:
                    self._file_len = head.host + run
            finally:
                self._io_end()
            pos += run

    @contextlib.asynccontextmanager
    async def _locked(self, offset: int = 0, length: int = 1 << 62) -> AsyncIterator[None]:
        """The metadata lock, once no allocation in flight overlaps the guest
        range (default: the whole image)."""
        await self._acquire_clusters(offset, length)
        try:
            yield
        finally:
            self._lock.release()

    async def _acquire_clusters(self, offset: int, length: int) -> None:
        """Take the lock once no allocation in flight overlaps the guest range."""
        c0 = offset >> self.cluster_bits
        c1 = (offset + max(length, 1) - 1) >> self.cluster_bits
        while True:
            await self._lock.acquire()
            busy = next((p.done for p in self._allocs if p.c0 <= c1 and c0 <= p.c1), None)
            if busy is None:
                return
            self._lock.release()
            await busy.wait()

    async def _write_zero_alloc(self, offset: int, data: memoryview, ext: Extent) -> None:
        """Write into owned zero-flagged clusters (contiguous host run, lock held):
        whole clusters go to disk (zeros around the data), then the zero flag goes."""
        cs = self.cluster_size
        first = offset & ~(cs - 1)
        n = -(-(offset + len(data) - first) // cs)
        host = ext.host - (offset - first)
        buf = bytearray(n * cs)
        buf[offset - first : offset - first + len(data)] = data
        await self._check_overlap(host, len(buf))
        await self._pwrite(host, buf)
        await self._set_entries(first, [(host + i * cs) | OFLAG_COPIED for i in range(n)])

    async def _old_cluster(self, cstart: int, entry: int, bitmap: int = 0) -> bytes:
        """Current guest content of the cluster at cstart (for copy-on-write);
        ``bitmap`` is the subcluster bitmap of an extended L2 entry."""
        if self.extl2 and not entry & OFLAG_COMPRESSED:
            sub = self.cluster_size // 32
            out = bytearray(self.cluster_size)
            base = entry & L2E_OFFSET_MASK
            for sc in range(32):
                if bitmap & (1 << sc):
                    out[sc * sub : (sc + 1) * sub] = await self._pread(base + sc * sub, sub)
                elif not bitmap & (1 << (32 + sc)):
                    out[sc * sub : (sc + 1) * sub] = await self._read_backing(
                        cstart + sc * sub, sub
                    )
            return bytes(out)
        ct = cluster_type(entry)
        if ct == ClusterType.NORMAL:
            return await self._pread(entry & L2E_OFFSET_MASK, self.cluster_size)
        if ct == ClusterType.COMPRESSED:
            return await self._read_compressed(entry)
        if ct == ClusterType.UNALLOCATED:
            return await self._read_backing(cstart, self.cluster_size)
        return bytes(self.cluster_size)

    async def _alloc_prepare(self, offset: int, length: int) -> _AllocPlan:
        """First half of an allocating write (lock held): make the L2 table ours,
        take fresh contiguous clusters and mark the guest clusters in flight."""
        end = offset + length
        c0 = offset >> self.cluster_bits
        c1 = (end - 1) >> self.cluster_bits
        n = c1 - c0 + 1
        l1_idx, _ = self._split(offset)
        l1e = self.l1[l1_idx] if l1_idx < len(self.l1) else 0
        if not (l1e & L1E_OFFSET_MASK and l1e & OFLAG_COPIED):
            await self._writable_l2(l1_idx)
        old, _ = await self._entries(offset, n)
        bitmaps = await self._bitmaps(offset, n) if self.extl2 else None
        host = await self._alloc(n)
        plan = _AllocPlan(c0, c1, offset, host, old, asyncio.Event(), bitmaps)
        self._allocs.append(plan)
        self._io_begin()
        return plan

    async def _alloc_finish(self, plan: _AllocPlan, data: memoryview | FdRange) -> None:
        """Second half: the data (completed from the old content of partial
        clusters) and then the L2 entries naming it go to the file as one ordered
        chain outside the lock (one host I/O job on the file driver); then, under
        the lock, the cached L2 slice learns the new entries and the old clusters
        lose a reference.  The guest clusters stay reserved (``plan``) until the
        outcome is settled, so nothing else touches these entries meanwhile."""
        cs = self.cluster_size
        n = plan.c1 - plan.c0 + 1
        guest = plan.c0 << self.cluster_bits
        entries = [(plan.host + i * cs) | OFLAG_COPIED for i in range(n)]
        bitmaps = [BITMAP_ALL_ALLOC] * n if self.extl2 else None
        # What the L2 entries on disk are: the new ones (True), still the old
        # ones (False) or, after a failed write, unclear ("unknown").
        linked: bool | str = False
        try:
            head = plan.offset - guest
            tail = ((plan.c1 + 1) << self.cluster_bits) - (plan.offset + len(data))
            payload: bytearray | memoryview | FdRange
            if head or tail:
                if isinstance(data, FdRange):
                    # Only whole clusters come from another file (bulk.py).
                    data = memoryview(await run_io(data.read_sync))
                buf = bytearray(n * cs)
                bms = plan.old_bitmaps or [0] * n
                if head:
                    buf[:cs] = await self._old_cluster(guest, plan.old[0], bms[0])
                if tail and (n > 1 or not head):
                    buf[(n - 1) * cs :] = await self._old_cluster(
                        plan.c1 << self.cluster_bits, plan.old[-1], bms[-1]
                    )
                buf[head : head + len(data)] = data
                payload = buf
            else:
                payload = data
            if self.overlap_checks:
                await self._check_overlap(plan.host, n * cs)
            l2_at, l2_bytes = self._l2_piece(guest, entries, bitmaps)
            if self.read_only:
                raise OSError(errno.EPERM, "Operation not permitted")
            if min(plan.host, l2_at) < cs:
                # What _pwrite guards against: nothing lands in the header cluster.
                at, size = (plan.host, n * cs) if plan.host < cs else (l2_at, len(l2_bytes))
                await self._signal_corruption(
                    "Preventing invalid write on metadata (overlaps with qcow2_header)",
                    at, size,
                )
            # Refcount raises outside the reserve must be stable before the L2
            # entry goes out (the reserve itself already is, see _alloc).
            if self._rc_dirty:
                await self._dependency_barrier()
            err = await self._run_chain([(plan.host, payload), (l2_at, l2_bytes)])
            end = plan.host + n * cs
            if end > self._file_len:
                self._file_len = end
            if err is None:
                linked = True
            else:
                # Until the file says otherwise (the probe itself may be cancelled),
                # the entries may be the new ones: never free what they may name.
                linked = "unknown"
                _, old_l2 = self._l2_piece(guest, plan.old, plan.old_bitmaps)
                linked = await self._probe_l2(l2_at, l2_bytes, old_l2)
                raise err
        finally:
            self._io_end()
            async with self._lock:
                try:
                    if linked is True:
                        if not self._cache_entries(guest, entries, bitmaps):
                            await self._set_entries(guest, entries, bitmaps, to_disk=False)
                        for e in plan.old:
                            if e & L2E_OFFSET_MASK or e & OFLAG_COMPRESSED:
                                await self._free_entry(e, DISCARD_OTHER)
                    elif linked is False:
                        # Never referenced: give the clusters back.
                        await self._free(plan.host, n * cs, DISCARD_NEVER)
                    else:
                        # Whatever the file holds now is what the cache must show;
                        # the new clusters stay allocated (a leak at worst).
                        l1_idx, l2_idx = self._split(guest)
                        first = l2_idx - l2_idx % self.slice_entries
                        l2_off = self.l1[l1_idx] & L1E_OFFSET_MASK
                        self.l2cache.drop(l2_off + first * self.l2_entry_size)
                finally:
                    self._allocs.remove(plan)
                    plan.done.set()

    def _cache_entries(
        self, offset: int, entries: list[int], bitmaps: list[int] | None
    ) -> bool:
        """Put entries already on disk into the cached L2 slice; False when the
        slice is not cached (the caller then loads it)."""
        l1_idx, l2_idx = self._split(offset)
        first = l2_idx - l2_idx % self.slice_entries
        key = (self.l1[l1_idx] & L1E_OFFSET_MASK) + first * self.l2_entry_size
        slc = self.l2cache.peek(key)
        if slc is None:
            return False
        i = l2_idx - first
        if bitmaps is None:
            struct.pack_into(f">{len(entries)}Q", slc, i * 8, *entries)
        else:
            flat = [v for pair in zip(entries, bitmaps, strict=True) for v in pair]
            struct.pack_into(f">{len(flat)}Q", slc, i * 16, *flat)
        return True

    def _l2_piece(
        self, offset: int, entries: list[int], bitmaps: list[int] | None
    ) -> tuple[int, bytes]:
        """Host offset and on-disk bytes of new L2 entries (with their bitmaps)."""
        l1_idx, l2_idx = self._split(offset)
        at = (self.l1[l1_idx] & L1E_OFFSET_MASK) + l2_idx * self.l2_entry_size
        if bitmaps is None:
            return at, struct.pack(f">{len(entries)}Q", *entries)
        flat = [v for pair in zip(entries, bitmaps, strict=True) for v in pair]
        return at, struct.pack(f">{len(flat)}Q", *flat)

    async def _run_chain(
        self, chain: list[tuple[int, bytes | bytearray | memoryview | FdRange]]
    ) -> BaseException | None:
        """Write the pieces in order; the error to raise once settled, if any.

        Returns only when nothing of the chain runs any more: a cancellation
        does not abandon it half way but is returned (to be raised) after it.
        """
        f = self._f
        if isinstance(f, FileDriver):
            # The file driver's chain always runs to its end before raising.
            try:
                await f.write_many(chain)
            except BaseException as e:
                return e
            return None
        plain = [(o, await run_io(d.read_sync) if isinstance(d, FdRange) else d)
                 for o, d in chain]
        task = asyncio.ensure_future(f.write_many(plain))
        cancelled = False
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = cancelled or not task.done()
            except Exception:
                break
        if cancelled or task.cancelled():
            return asyncio.CancelledError()
        return task.exception()

    async def _probe_l2(self, at: int, new: bytes, old: bytes) -> bool | str:
        """After a failed or cancelled chain: are the L2 entries on disk the new
        ones (True), still the old ones (False), or neither ("unknown")?"""
        try:
            disk = await self._pread(at, len(new))
        except Exception:
            return "unknown"
        if disk == new:
            return True
        return False if disk == old else "unknown"

    async def _write_compressed(self, offset: int, mv: memoryview) -> None:
        cs = self.cluster_size
        if offset & (cs - 1):
            raise OSError(errno.EINVAL, "Invalid argument")
        pos = 0
        while pos < len(mv):
            chunk = mv[pos : pos + cs]
            guest = offset + pos
            if len(chunk) != cs and guest + len(chunk) != self.size:
                raise OSError(errno.EINVAL, "Invalid argument")
            plain = bytes(chunk) + bytes(cs - len(chunk))
            packed = compress_cluster(plain, cs)
            if packed is None:
                await self._write_data(guest, chunk)
                pos += cs
                continue
            async with self._locked(guest, cs):
                l1_idx, _ = self._split(guest)
                await self._writable_l2(l1_idx)
                (entry,), _ = await self._entries(guest, 1)
                if entry & ~OFLAG_ZERO & ~OFLAG_COPIED or entry & L2E_OFFSET_MASK:
                    raise _eio()
                host = await self._alloc_bytes(len(packed))
                await self._check_overlap(host, len(packed))
                await self._pwrite(host, packed)
                await self._dependency_barrier()
                await self._set_entries(guest, [self.cgeo.encode(host, len(packed))], [0])
            pos += cs

    async def _alloc_bytes(self, size: int) -> int:
        """Sub-cluster allocation for compressed data (qcow2_alloc_bytes)."""
        cs = self.cluster_size
        off = self.free_byte_offset
        if off:
            rc = await self.rc.get(off >> self.cluster_bits)
            if rc == 0 or rc >= self.rc.max_refcount or cs - (off & (cs - 1)) < size:
                off = 0
        if off:
            if self.use_lazy_refcounts:
                await self._mark_dirty()
            await self.rc.update(off, size, 1)
            self._rc_dirty = True
        else:
            off = await self._alloc(-(-size // cs))
        self.free_byte_offset = off + size
        if not self.free_byte_offset & (cs - 1):
            self.free_byte_offset = 0
        return off

    # --- zeroes / discard ------------------------------------------------------

    async def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        """Zero a range as QEMU 7.2 does: the generic layer splits it at cluster
        boundaries; aligned clusters get the zero flag (v3) or are discarded (v2
        without backing); a partial cluster is zeroed as a whole when the rest of
        it already reads as zeros, otherwise zero bytes are written."""
        self._check_writable()
        if length <= 0:
            return
        if offset < 0 or offset + length > self.size:
            raise _eio()
        await self._before_modify()
        # pwrite_zeroes_alignment: the subcluster with extended L2 entries.
        g = self.cluster_size >> 5 if self.extl2 else self.cluster_size
        end = offset + length
        pos = offset
        while pos < end:
            ustart = pos & ~(g - 1)
            uend = min(ustart + g, self.size)
            if pos == ustart and end >= uend:
                # Whole units (the last one may end at the image end).
                stop = end if end == self.size else end & ~(g - 1)
                await self._zero_aligned(pos, stop, may_unmap)
                pos = stop
                continue
            piece_end = min(end, uend)
            if not await self._zero_partial(ustart, uend, pos, piece_end, may_unmap):
                await self._write_zero_bytes(pos, piece_end - pos)
            pos = piece_end

    async def _zero_aligned(self, a: int, b: int, may_unmap: bool) -> None:
        """qcow2_co_pwrite_zeroes() on an aligned range; zero bytes where QEMU
        falls back (-ENOTSUP)."""
        cs = self.cluster_size
        if not self.extl2:
            if not await self._zeroize_clusters(a, b - a, may_unmap):
                await self._write_zero_bytes(a, b - a)
            return
        pos = a
        while pos < b:
            cstart = pos & ~(cs - 1)
            cend = min(cstart + cs, self.size)
            if pos == cstart and b >= cend:
                stop = b if b == self.size else b & ~(cs - 1)
                await self._zeroize(pos, stop - pos, may_unmap)
                pos = stop
                continue
            piece_end = min(b, cend)
            if not await self._zero_subclusters(pos, piece_end - pos):
                await self._write_zero_bytes(pos, piece_end - pos)
            pos = piece_end

    async def _zeroize_clusters(self, offset: int, length: int, may_unmap: bool) -> bool:
        """qcow2_subcluster_zeroize(); False where QEMU returns -ENOTSUP."""
        if self.header.version >= 3:
            await self._zeroize(offset, length, may_unmap)
            return True
        if self.backing is None:
            # v2 has no zero flag; without a backing file unallocated reads as zero.
            await self._discard_clusters(offset, offset + length)
            return True
        return False

    async def _zero_partial(
        self, cstart: int, cend: int, start: int, end: int, may_unmap: bool
    ) -> bool:
        """Zero [start, end) inside one cluster by zeroing the whole cluster when
        the rest already reads as zeros and the cluster holds no data."""
        if not (
            await self._is_zero(cstart, start - cstart) and await self._is_zero(end, cend - end)
        ):
            return False
        async with self._locked(cstart, cend - cstart):
            kinds = {e.ctype for e in await self._map(cstart, cend - cstart)}
            if not kinds <= {
                ClusterType.UNALLOCATED,
                ClusterType.ZERO_PLAIN,
                ClusterType.ZERO_ALLOC,
            }:
                return False
        if self.extl2:
            await self._zero_aligned(cstart, cend, may_unmap)
            return True
        return await self._zeroize_clusters(cstart, cend - cstart, may_unmap)

    async def _is_zero(self, offset: int, length: int) -> bool:
        """Whether the range reads as zeros according to block status (the whole
        chain), like bdrv_co_is_zero_fast()."""
        pos, end = offset, offset + length
        while pos < end:
            st = await self.block_status(pos, end - pos)
            if st.length <= 0:
                return False
            if not st.flags & BlockStatusFlag.ZERO:
                if st.flags & BlockStatusFlag.ALLOCATED or self.backing is None:
                    return False
                node: BlockDriver | None = self.backing
                if not await _chain_is_zero(node, pos, st.length):
                    return False
            pos += st.length
        return True

    async def _write_zero_bytes(self, offset: int, length: int) -> None:
        chunk = 1 << 22
        zero = bytes(min(chunk, length))
        pos = 0
        while pos < length:
            n = min(chunk, length - pos)
            await self._write_data(offset + pos, memoryview(zero)[:n])
            pos += n

    async def _zeroize(self, offset: int, length: int, may_unmap: bool) -> None:
        """zero_in_l2_slice() on whole clusters [offset, offset+length)."""
        cs = self.cluster_size
        pos = offset
        end = offset + length
        while pos < end:
            async with self._locked(pos, end - pos):
                n = -(-(end - pos) // cs)
                old, _ = await self._entries(pos, n)
                old_bms = await self._bitmaps(pos, n) if self.extl2 else [0] * len(old)
                new: list[int] = []
                new_bms: list[int] = []
                frees: list[int] = []
                for e, bm in zip(old, old_bms, strict=True):
                    ct = cluster_type(e)
                    unmap = ct == ClusterType.COMPRESSED or (
                        may_unmap and ct in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC)
                    )
                    if self.extl2:
                        new.append(0 if unmap else e)
                        new_bms.append(BITMAP_ALL_ZERO)
                    else:
                        new.append((0 if unmap else e) | OFLAG_ZERO)
                        new_bms.append(bm)
                    if unmap:
                        frees.append(e)
                if new == old and new_bms == old_bms:
                    pos += len(old) * cs
                    continue
                l1_idx, _ = self._split(pos)
                await self._writable_l2(l1_idx)
                await self._dependency_barrier()
                await self._set_entries(pos, new, new_bms if self.extl2 else None)
                for e in frees:
                    await self._free_entry(e, DISCARD_REQUEST)
                pos += len(old) * cs

    async def _zero_subclusters(self, offset: int, length: int) -> bool:
        """zero_l2_subclusters(): mark subclusters of one cluster as zero (extended
        L2); False for a compressed cluster (QEMU then writes zeros)."""
        sub_bits = self.cluster_bits - 5
        cstart = offset & ~(self.cluster_size - 1)
        first = (offset - cstart) >> sub_bits
        count = -(-length // (1 << sub_bits))
        async with self._locked(cstart, self.cluster_size):
            (entry,), _ = await self._entries(cstart, 1)
            if entry & OFLAG_COMPRESSED:
                return False
            l1_idx, _ = self._split(cstart)
            await self._writable_l2(l1_idx)
            (bm,) = await self._bitmaps(cstart, 1)
            new = (bm | (_sub_range(first, count) << 32)) & ~_sub_range(first, count)
            if new != bm:
                await self._set_entries(cstart, [entry], [new])
        return True

    async def discard(self, offset: int, length: int) -> None:
        self._check_writable()
        await self._before_modify()
        cs = self.cluster_size
        end = min(offset + length, self.size)
        a = -(-offset // cs) * cs
        b = end if end == self.size else end & ~(cs - 1)
        if self.header.version < 3 and self.backing is not None:
            # Without the zero flag a discard would expose the backing file:
            # QEMU refuses (ENOTSUP, which the block layer ignores).
            return
        await self._discard_clusters(a, b)

    async def _discard_clusters(self, a: int, b: int) -> None:
        """qcow2_cluster_discard(full_discard=false) on whole clusters [a, b)."""
        cs = self.cluster_size
        pos = a
        while pos < b:
            async with self._locked(pos, b - pos):
                n = -(-(b - pos) // cs)
                old, l2_off = await self._entries(pos, n)
                step = len(old) * cs
                if not l2_off and (self.backing is None or self.header.version < 3):
                    # Nothing allocated and nothing to hide: the range already
                    # reads as it will after the discard.
                    pos += step
                    continue
                new: list[int] = []
                frees: list[int] = []
                old_bms = await self._bitmaps(pos, n) if self.extl2 else [0] * len(old)
                new_bms: list[int] = []
                for e, bm in zip(old, old_bms, strict=True):
                    ct = cluster_type(e)
                    allocated = ct in (
                        ClusterType.NORMAL,
                        ClusterType.ZERO_ALLOC,
                        ClusterType.COMPRESSED,
                    )
                    if self.backing is not None or allocated:
                        # Extended L2: no zero flag, the bitmap says "zero".
                        ne = OFLAG_ZERO if self.header.version >= 3 and not self.extl2 else 0
                        nb = BITMAP_ALL_ZERO if self.extl2 else 0
                    else:
                        ne, nb = e, bm
                    new.append(ne)
                    new_bms.append(nb)
                    if allocated and ne != e:
                        frees.append(e)
                if new == old and new_bms == old_bms:
                    pos += step
                    continue
                l1_idx, _ = self._split(pos)
                await self._writable_l2(l1_idx)
                await self._dependency_barrier()
                await self._set_entries(pos, new, new_bms if self.extl2 else None)
                if frees:
                    for e in frees:
                        await self._free_entry(e, DISCARD_REQUEST)
                pos += step

    async def flush(self) -> None:
        if self.file is not None and not self.read_only:
            async with self._lock:
                await self._process_frees()
            await self._f.flush()

    # --- resize ----------------------------------------------------------------

    async def truncate(
        self, length: int, *, preallocation: str = "off", exact: bool = False
    ) -> None:
        if preallocation not in ("off", "metadata", "falloc", "full"):
            raise GenericError(f"Unsupported preallocation mode '{preallocation}'")
        if length & 511:
            raise GenericError("The new size must be a multiple of 512")
        if not self.read_only:
            await self._before_modify()
        async with self._locked():
            if self.read_only:
                raise GenericError("Image is read-only")
            if self.snapshots and self.header.version < 3 and length != self.size:
                raise GenericError("Can't resize a v2 image which has snapshots")
            if length < self.size:
                if preallocation != "off":
                    raise GenericError("Preallocation can't be used for shrinking an image")
                await self._shrink(length)
                return
            old_size = self.size
            await self._grow_l1(length)
            self.header.size = length
            self.size = length
            await self._barrier()
            await self._write_header_fields()
            await self._barrier()
        if preallocation in ("falloc", "full") and length > old_size:
            await self._preallocate_area(old_size, length, preallocation)
        elif preallocation == "metadata" and length > old_size:
            await self.preallocate(old_size, length, preallocation)

    async def _preallocate_area(self, start: int, end: int, mode: str) -> None:
        """falloc/full growth as QEMU does it: one new data area after a fresh
        refcount area at the end of the file, then L2 entries pointing into it."""
        cs = self.cluster_size
        async with self._locked():
            first = start // cs
            last = -(-end // cs)
            count = last - first
            # The area goes past the end of the file: nothing may be reserved there.
            await self._release_pool()
            area_start = -(-self._f.get_length() // cs)
            # Refcount structures able to count the data and its L2 tables too,
            # so entering them never needs a new refcount block.
            l2_tables = -(-count // self.l2_size) + 1
            data = await self.rc.refcount_area(area_start, count + l2_tables)
            data_end = (data + count) * cs
            if data_end > self._f.get_length():
                await self._f.truncate(data_end, preallocation=mode)
            await self.rc.update(data * cs, count * cs, 1)
            self._rc_dirty = True
            self._file_len = max(self._file_len, data_end)
            pos = first * cs
            host = data * cs
            unused: list[int] = []
            while pos < last * cs:
                l1_idx, l2_idx = self._split(pos)
                await self._writable_l2(l1_idx)
                n = min(last - (pos // cs), self.slice_entries - l2_idx % self.slice_entries)
                old, _ = await self._entries(pos, n)
                new = list(old)
                for k, e in enumerate(old):
                    if cluster_type(e) in (ClusterType.UNALLOCATED, ClusterType.ZERO_PLAIN):
                        new[k] = (host + k * cs) | OFLAG_COPIED
                    else:
                        unused.append(host + k * cs)
                await self._dependency_barrier()
                # Preallocated clusters hold no data yet: no subcluster allocated.
                await self._set_entries(pos, new, fresh_bitmap=0)
                pos += n * cs
                host += n * cs
            for off in unused:
                await self._free(off, cs, DISCARD_OTHER)

    async def _write_header_fields(self) -> None:
        """Rewrite the header cluster (size/L1 fields changed)."""
        await self._write_header()

    async def _grow_l1(self, size: int) -> None:
        shift = self.cluster_bits + self.l2_bits
        needed = -(-size // (1 << shift))
        if needed <= len(self.l1):
            return
        if needed * 8 > QCOW_MAX_L1_SIZE:
            raise ImageTooLarge("Failed to grow the L1 table: File too large")
        new_size = needed
        new_l1 = self.l1 + [0] * (new_size - len(self.l1))
        raw = struct.pack(f">{new_size}Q", *new_l1)
        nclusters = -(-len(raw) // self.cluster_size)
        new_off = await self._alloc(nclusters)
        await self._pwrite(new_off, raw)
        await self._dependency_barrier()
        await self._barrier()
        old_off, old_len = self.l1_offset, len(self.l1) * 8
        self.header.l1_table_offset = new_off
        self.header.l1_size = new_size
        await self._f.write(H.OFF_L1_SIZE, struct.pack(">IQ", new_size, new_off))
        self.l1 = new_l1
        self.l1_offset = new_off
        self._metadata_changed()
        if old_len:
            await self._free(old_off, old_len, DISCARD_OTHER)

    async def _shrink(self, length: int) -> None:
        cs = self.cluster_size
        start = -(-length // cs) * cs
        # Free whole clusters past the new end, then whole L2 tables past it.
        pos = start
        while pos < self.size:
            old, l2_off = await self._entries(pos, -(-(self.size - pos) // cs))
            if l2_off and any(old):
                l1_idx, _ = self._split(pos)
                await self._writable_l2(l1_idx)
                await self._set_entries(pos, [0] * len(old))
                for e in old:
                    await self._free_entry(e, DISCARD_ALWAYS)
            pos += len(old) * cs
        shift = self.cluster_bits + self.l2_bits
        keep = -(-length // (1 << shift))
        for i in range(keep, len(self.l1)):
            l2 = self.l1[i] & L1E_OFFSET_MASK
            if l2:
                self.l1[i] = 0
                self._metadata_changed()
                await self._pwrite(self.l1_offset + i * 8, bytes(8))
                self.l2cache.drop_range(l2, cs)
                await self._free(l2, cs, DISCARD_ALWAYS)
        self.header.size = length
        self.size = length
        await self._barrier()
        await self._write_header_fields()
        await self._process_frees()

    async def preallocate(self, start: int, end: int, mode: str) -> None:
        """Allocate L2 tables and data clusters for [start, end) (metadata/falloc/full)."""
        cs = self.cluster_size
        pos = start & ~(cs - 1)
        while pos < end:
            async with self._locked(pos, end - pos):
                l1_idx, l2_idx = self._split(pos)
                await self._writable_l2(l1_idx)
                n = min(-(-(end - pos) // cs), self.slice_entries - l2_idx % self.slice_entries)
                old, _ = await self._entries(pos, n)
                todo = [
                    i
                    for i, e in enumerate(old)
                    if cluster_type(e) in (ClusterType.UNALLOCATED, ClusterType.ZERO_PLAIN)
                ]
                if todo:
                    i0 = todo[0]
                    cnt = len(old) - i0
                    host = await self._alloc(cnt)
                    if mode == "full":
                        await self._pwrite(host, bytes(cnt * cs))
                    elif host + cnt * cs > self._f.get_length():
                        await self._f.truncate(
                            host + cnt * cs,
                            preallocation="falloc" if mode == "falloc" else "off",
                        )
                        self._file_len = host + cnt * cs
                    await self._dependency_barrier()
                    new = list(old)
                    for k in range(i0, len(old)):
                        if cluster_type(old[k]) in (
                            ClusterType.UNALLOCATED,
                            ClusterType.ZERO_PLAIN,
                        ):
                            new[k] = (host + (k - i0) * cs) | OFLAG_COPIED
                    await self._set_entries(pos, new, fresh_bitmap=0)
                    # Clusters of the run that were already allocated stay unused.
                    unused = [k for k in range(i0, len(old)) if new[k] == old[k]]
                    if unused:
                        for k in unused:
                            await self._free(host + (k - i0) * cs, cs, DISCARD_OTHER)
                pos += n * cs

    # --- status ----------------------------------------------------------------

    async def block_status(self, offset: int, length: int) -> BlockStatus:
        if offset >= self.size:
            return BlockStatus(BlockStatusFlag(0), 0)
        length = min(length, self.size - offset)
        async with self._lock:
            cs = self.cluster_size
            _, l2_idx = self._split(offset)
            room = (self.slice_entries - l2_idx % self.slice_entries) * cs - (offset & (cs - 1))
            ext = await self._first_extent(offset, min(length, room))
            if self._metadata_prealloc is None and ext.ctype == ClusterType.NORMAL:
                self._metadata_prealloc = await self._detect_metadata_prealloc()
        F = BlockStatusFlag
        if ext.ctype == ClusterType.NORMAL:
            if self._metadata_prealloc:
                # BDRV_BLOCK_RECURSE: holes in the file read as zeros.
                st = await self._f.block_status(ext.host, ext.length)
                if st.length > 0 and st.flags & F.ZERO:
                    return BlockStatus(F.DATA | F.ZERO | F.ALLOCATED, st.length, ext.host)
                if st.length > 0:
                    return BlockStatus(F.DATA | F.ALLOCATED, min(st.length, ext.length), ext.host)
            return BlockStatus(F.DATA | F.ALLOCATED, ext.length, ext.host)
        if ext.ctype == ClusterType.COMPRESSED:
            return BlockStatus(F.DATA | F.ALLOCATED, ext.length, None)
        if ext.ctype == ClusterType.ZERO_ALLOC:
            return BlockStatus(F.ZERO | F.ALLOCATED, ext.length, ext.host)
        if ext.ctype == ClusterType.ZERO_PLAIN:
            return BlockStatus(F.ZERO | F.ALLOCATED, ext.length, None)
        if self.backing is None or offset >= self.backing.get_length():
            return BlockStatus(F.ZERO, ext.length, ext.host or None)
        return BlockStatus(F(0), ext.length, ext.host or None)

    async def _detect_metadata_prealloc(self) -> bool:
        """qcow2_detect_metadata_preallocation(): far more clusters in use than
        the file really occupies means preallocated metadata over holes."""
        fd = getattr(self.file, "fd", -1)
        if not isinstance(fd, int) or fd < 0:
            return False
        try:
            real = os.fstat(fd).st_blocks * 512
        except OSError:
            return False
        real_clusters = real // self.cluster_size
        threshold = max(real_clusters * 10 // 9, real_clusters + 2)
        end = -(-self._f.get_length() // self.cluster_size)
        return await self.rc.count_used(end, threshold) > threshold

    def get_length(self) -> int:
        return self.size

    def refresh_limits(self) -> Limits:
        base = self.file.refresh_limits() if self.file is not None else Limits()
        return Limits(
            request_alignment=1,
            max_transfer=0,
            opt_transfer=base.opt_transfer,
            pdiscard_alignment=self.cluster_size,
            pwrite_zeroes_alignment=self.cluster_size,
        )

    def format_specific_info(self) -> dict[str, Any] | None:
        h = self.header
        info: dict[str, Any] = {
            "compat": "1.1" if h.version >= 3 else "0.10",
            "compression-type": "zlib",
        }
        if h.version >= 3:
            info["lazy-refcounts"] = bool(h.compatible_features & H.COMPAT_LAZY_REFCOUNTS)
        info["refcount-bits"] = h.refcount_bits
        if h.version >= 3:
            info["corrupt"] = bool(h.incompatible_features & H.INCOMPAT_CORRUPT)
            info["extended-l2"] = bool(h.incompatible_features & H.INCOMPAT_EXTL2)
        if self.bitmaps:
            info["bitmaps"] = [dict(b) for b in self.bitmaps]
        return info

    # --- backing file ----------------------------------------------------------

    async def change_backing_file(self, backing_file: str | None, backing_fmt: str | None) -> None:
        """Rewrite the backing file name and format in the header (one cluster write)."""
        if backing_file is not None and len(backing_file.encode()) > H.MAX_BACKING_NAME:
            raise GenericError("Backing file name too long")
        if backing_fmt and not backing_file:
            raise GenericError("Cannot set backing format without a backing file")
        if backing_fmt is not None and len(backing_fmt) > H.MAX_BACKING_FORMAT:
            raise GenericError("Backing format name too long")
        async with self._lock:
            if self.read_only:
                raise GenericError("Image is read-only")
            new = H.Qcow2Header(**{**self.header.__dict__})
            new.backing_file = backing_file or None
            new.backing_format = backing_fmt or None if backing_file else None
            # Validate the layout first: a header that does not fit changes nothing.
            H.serialize_header(new)
            await self._f.flush()
            self.header = new
            await self._write_header()
            await self._f.flush()
            self.backing_file = new.backing_file
            self.backing_format = new.backing_format

    # --- check -----------------------------------------------------------------

    async def check(self, repair: str | None = None) -> Qcow2CheckResult:
        """Consistency check like ``qemu-img check`` (repair None, "leaks", "all")."""
        from .check import check_image

        async with self._locked():
            if not self.read_only:
                await self._process_frees()
                await self._release_pool()
            await self._drain()
            return await check_image(self, repair)


__all__ = ["Extent", "Qcow2Driver"]
