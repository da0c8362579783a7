"""Consistency check and repair of a qcow2 image (qemu-img check).

Rebuilds the reference counts every cluster should have from the metadata (header,
L1/L2 tables of the active image and of internal snapshots, snapshot table,
refcount table and blocks), compares them with the stored refcounts and checks the
OFLAG_COPIED flags.  Messages are QEMU 7.2's, one line each, in ``messages``.
Repairs: "leaks" lowers refcounts that are too high; "all" also raises refcounts
that are too low and fixes OFLAG_COPIED flags.
"""

from __future__ import annotations

import errno
import struct
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blockd.qmp.errors import GenericError

from .bitmaps import bitmaps_ext, parse_directory
from .cluster import (
    L1E_OFFSET_MASK,
    L2E_OFFSET_MASK,
    OFLAG_COPIED,
    ClusterType,
    cluster_type,
)
from .header import INCOMPAT_CORRUPT, INCOMPAT_DIRTY
from .refcount import REFT_OFFSET_MASK, set_entry

if TYPE_CHECKING:
    from .driver import Qcow2Driver


@dataclass
class Qcow2CheckResult:
    """BdrvCheckResult plus the lines qemu-img check prints on stderr."""

    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    image_end_offset: int = 0
    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    messages: list[str] = field(default_factory=list)
    # 0, or -errno when the check itself failed (qemu-img: "Check failed: %s").
    ret: int = 0


class _Counter:
    """The in-memory refcount table the check builds."""

    def __init__(self, drv: Qcow2Driver, res: Qcow2CheckResult, file_len: int) -> None:
        self.drv = drv
        self.res = res
        self.cs = drv.cluster_size
        self.bits = drv.cluster_bits
        self.file_len = file_len
        self.refs = array("Q", bytes(8 * (-(-file_len // self.cs))))
        self.max = drv.rc.max_refcount

    def inc(self, offset: int, size: int) -> None:
        if size <= 0:
            return
        if offset + size - self.file_len >= self.cs:
            self.res.messages.append(
                "ERROR: counting reference for region exceeding the end of the file by one "
                f"cluster or more: offset {offset:#x} size {size:#x}"
            )
            self.res.corruptions += 1
            return
        first = offset >> self.bits
        last = (offset + size - 1) >> self.bits
        if last >= len(self.refs):
            self.refs.extend([0] * (last + 1 - len(self.refs)))
        for c in range(first, last + 1):
            if self.refs[c] >= self.max:
                self.res.messages.append(f"ERROR: overflow cluster offset={c << self.bits:#x}")
                self.res.corruptions += 1
                continue
            self.refs[c] += 1


async def _check_l2(
    drv: Qcow2Driver, cnt: _Counter, res: Qcow2CheckResult, l2_off: int, active: bool
) -> None:
    cs = drv.cluster_size
    try:
        raw = await drv._pread(l2_off, cs)
    except OSError:
        res.messages.append("ERROR: I/O error in check_refcounts_l2")
        res.check_errors += 1
        return
    # Extended L2 entries carry a subcluster bitmap after each entry.
    entries = struct.unpack(f">{cs // 8}Q", raw)[:: 2 if drv.extl2 else 1]
    next_contiguous = 0
    for e in entries:
        ct = cluster_type(e)
        if ct == ClusterType.COMPRESSED:
            if e & OFLAG_COPIED:
                res.messages.append(
                    f"ERROR: coffset={e & drv.cgeo.offset_mask:#x}: copied flag must never "
                    "be set for compressed clusters"
                )
                res.corruptions += 1
                e &= ~OFLAG_COPIED
            start, ln = drv.cgeo.decode(e)
            cnt.inc(start, ln)
            if active:
                res.allocated_clusters += 1
                res.compressed_clusters += 1
                res.fragmented_clusters += 1
        elif ct in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC):
            off = e & L2E_OFFSET_MASK
            if off & (cs - 1):
                res.messages.append(
                    f"ERROR offset={off:x}: Data cluster is not properly aligned; "
                    "L2 entry corrupted."
                )
                res.corruptions += 1
            if active:
                res.allocated_clusters += 1
                if next_contiguous and off != next_contiguous:
                    res.fragmented_clusters += 1
                next_contiguous = off + cs
            cnt.inc(off, cs)


async def _check_l1(
    drv: Qcow2Driver,
    cnt: _Counter,
    res: Qcow2CheckResult,
    l1_off: int,
    l1_size: int,
    active: bool,
) -> None:
    cnt.inc(l1_off, l1_size * 8)
    if not l1_size:
        return
    try:
        raw = await drv._pread(l1_off, l1_size * 8)
    except OSError:
        res.messages.append("ERROR: I/O error in check_refcounts_l1")
        res.check_errors += 1
        return
    for e in struct.unpack(f">{l1_size}Q", raw):
        l2 = e & L1E_OFFSET_MASK
        if not l2:
            continue
        cnt.inc(l2, drv.cluster_size)
        if l2 & (drv.cluster_size - 1):
            res.messages.append(
                f"ERROR l2_offset={l2:x}: Table is not cluster aligned; L1 entry corrupted"
            )
            res.corruptions += 1
        # Like QEMU, the entries are checked even at a misaligned offset (past the
        # end of the file they read as zeros).
        await _check_l2(drv, cnt, res, l2, active)


async def _count_bitmaps(drv: Qcow2Driver, cnt: _Counter, res: Qcow2CheckResult) -> None:
    """References held by persistent dirty bitmaps (directory, tables, data)."""
    ext = bitmaps_ext(drv.header)
    if ext is None:
        return
    cnt.inc(ext.directory_offset, ext.directory_size)
    try:
        directory = await drv._pread(ext.directory_offset, ext.directory_size)
    except OSError:
        res.check_errors += 1
        return
    for bm in parse_directory(directory, ext.count):
        cnt.inc(bm.table_offset, bm.table_size * 8)
        if not bm.table_size:
            continue
        try:
            table = await drv._pread(bm.table_offset, bm.table_size * 8)
        except OSError:
            res.check_errors += 1
            continue
        for e in struct.unpack(f">{bm.table_size}Q", table):
            data = e & L2E_OFFSET_MASK
            if data:
                cnt.inc(data, drv.cluster_size)


async def _calculate(
    drv: Qcow2Driver, res: Qcow2CheckResult, fix_errors: bool = False
) -> tuple[_Counter, bool]:
    """Build the in-memory refcounts (calculate_refcounts); returns (counter, rebuild)."""
    cs = drv.cluster_size
    cnt = _Counter(drv, res, drv._f.get_length())
    rebuild = False
    cnt.inc(0, cs)
    await _check_l1(drv, cnt, res, drv.l1_offset, len(drv.l1), True)
    for sn in drv.snapshots:
        await _check_l1(drv, cnt, res, sn.l1_table_offset, sn.l1_size, False)
    if drv.snapshots:
        cnt.inc(drv.header.snapshots_offset, drv.snapshots_size)
    await _count_bitmaps(drv, cnt, res)
    rc = drv.rc
    cnt.inc(rc.table_offset, len(rc.table) * 8)
    nb_clusters = len(cnt.refs)
    for i, e in enumerate(rc.table):
        off = e & REFT_OFFSET_MASK
        if e & ~REFT_OFFSET_MASK:
            res.messages.append(f"ERROR refcount table entry {i} has reserved bits set")
            res.corruptions += 1
            rebuild = True
            continue
        if not off:
            continue
        if off & (cs - 1):
            res.messages.append(
                f"ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
            )
            res.corruptions += 1
            rebuild = True
            continue
        if (off >> drv.cluster_bits) >= nb_clusters:
            res.corruptions += 1
            if not fix_errors:
                res.messages.append(f"ERROR refcount block {i} is outside image")
                continue
            res.messages.append(f"Repairing refcount block {i} is outside image")
            # Grow the file so the block is inside; the rebuild sorts out the rest.
            rebuild = True
            try:
                await drv._f.truncate(off + cs)
            except (OSError, GenericError) as exc:
                text = exc.desc if isinstance(exc, GenericError) else exc.strerror
                res.messages.append(f"ERROR could not resize image: {text}")
                continue
            cnt.file_len = drv._f.get_length()
            nb_clusters = -(-cnt.file_len // cs)
            if nb_clusters > len(cnt.refs):
                cnt.refs.extend([0] * (nb_clusters - len(cnt.refs)))
        cnt.inc(off, cs)
        if cnt.refs[off >> drv.cluster_bits] != 1:
            res.messages.append(
                f"ERROR refcount block {i} refcount={cnt.refs[off >> drv.cluster_bits]}"
            )
            res.corruptions += 1
            rebuild = True
    return cnt, rebuild


async def _compare(
    drv: Qcow2Driver, res: Qcow2CheckResult, cnt: _Counter, fix_leaks: bool, fix_errors: bool
) -> tuple[int, bool]:
    """compare_refcounts(): (highest used cluster, rebuild needed)."""
    rc = drv.rc
    cs = drv.cluster_size
    highest = 0
    rebuild = False
    refs = cnt.refs
    for i in range(len(refs)):
        try:
            stored = await rc.get(i)
        except OSError as exc:
            res.messages.append(f"Can't get refcount for cluster {i}: {exc.strerror}")
            res.check_errors += 1
            continue
        want = refs[i]
        if stored or want:
            highest = i
        if stored == want:
            continue
        fixing = False
        if stored == 0:
            rebuild = True
        elif stored > want and fix_leaks:
            fixing = True
        elif stored < want and fix_errors:
            fixing = True
        kind = "Repairing" if fixing else ("ERROR" if stored < want else "Leaked")
        res.messages.append(f"{kind} cluster {i} refcount={stored} reference={want}")
        if fixing:
            try:
                await rc.update(i << drv.cluster_bits, cs, want - stored)
                rc.take_freed()
                if stored > want:
                    res.leaks_fixed += 1
                else:
                    res.corruptions_fixed += 1
                continue
            except OSError:
                pass
        if stored < want:
            res.corruptions += 1
        else:
            res.leaks += 1
    return highest, rebuild


async def _rebuild(drv: Qcow2Driver, cnt: _Counter) -> None:
    """Write a fresh refcount table and blocks from the computed references
    (rebuild_refcount_structure) into free clusters, then switch the header."""
    rc = drv.rc
    cs = drv.cluster_size
    refs = cnt.refs
    per_block = 1 << rc.block_bits
    per_cluster = cs // 8

    def first_free(count: int) -> int:
        run = 0
        i = 0
        while True:
            if i >= len(refs) or refs[i] == 0:
                run += 1
                if run == count:
                    start = i - count + 1
                    if i >= len(refs):
                        refs.extend([0] * (i + 1 - len(refs)))
                    for c in range(start, start + count):
                        refs[c] = 1
                    return start
            else:
                run = 0
            i += 1

    blocks: dict[int, int] = {}
    table_off = -1
    table_clusters = 0
    while True:
        changed = False
        nblocks = -(-len(refs) // per_block)
        for rt in range(nblocks):
            if rt in blocks:
                continue
            if any(refs[rt * per_block : (rt + 1) * per_block]):
                blocks[rt] = first_free(1)
                changed = True
        need = -(-(max(blocks) + 1 if blocks else 1) // per_cluster)
        if need > table_clusters:
            if table_off >= 0:
                for c in range(table_off, table_off + table_clusters):
                    refs[c] = 0
            table_off = first_free(need)
            table_clusters = need
            changed = True
        if not changed:
            break
    table = [0] * (table_clusters * per_cluster)
    for rt, c in blocks.items():
        block = bytearray(cs)
        for i in range(per_block):
            idx = rt * per_block + i
            if idx < len(refs) and refs[idx]:
                set_entry(block, i, rc.order, min(refs[idx], rc.max_refcount))
        await drv._pwrite(c << drv.cluster_bits, bytes(block))
        table[rt] = c << drv.cluster_bits
    await drv._pwrite(table_off << drv.cluster_bits, struct.pack(f">{len(table)}Q", *table))
    await drv._f.flush()
    await drv._set_reftable_location(table_off << drv.cluster_bits, table_clusters)
    await drv._f.flush()
    rc.table = table
    rc.table_offset = table_off << drv.cluster_bits
    drv._metadata_changed()
    rc.cache.clear()
    rc.free_cluster_index = 0


async def check_image(drv: Qcow2Driver, repair: str | None) -> Qcow2CheckResult:
    """Check (and with repair="leaks"/"all" fix) the open image; caller holds the lock.

    Follows qcow2_check_refcounts(): a first comparison only reports; then either
    the refcount structure is rebuilt (refcounts of 0 for used clusters, broken
    refcount blocks; needs "all"), or the comparison is repeated fixing what the
    mode allows.  When a rebuild is needed but not allowed, ``ret`` is -EIO and
    qemu-img prints "Check failed: Input/output error".
    """
    res = Qcow2CheckResult()
    fix_leaks = repair in ("leaks", "all")
    fix_errors = repair == "all"
    cs = drv.cluster_size
    res.total_clusters = -(-drv.size // cs)
    cnt, rebuild = await _calculate(drv, res, fix_errors)
    pre = (res.corruptions, res.leaks, res.check_errors)
    highest, rebuild2 = await _compare(drv, res, cnt, False, False)
    rebuild = rebuild or rebuild2
    if rebuild and fix_errors:
        old_corruptions, old_leaks = res.corruptions, res.leaks
        res.messages.append("Rebuilding refcount structure")
        await _rebuild(drv, cnt)
        res.corruptions = res.leaks = 0
        frag = (res.allocated_clusters, res.fragmented_clusters, res.compressed_clusters)
        cnt, _ = await _calculate(drv, res)
        res.allocated_clusters, res.fragmented_clusters, res.compressed_clusters = frag
        saved = (res.corruptions, res.leaks, res.leaks_fixed, res.corruptions_fixed)
        res.leaks = 0
        highest, still = await _compare(drv, res, cnt, True, False)
        if still:
            res.messages.append("ERROR rebuilt refcount structure is still broken")
        fresh_leaks = res.leaks
        res.corruptions, res.leaks, res.leaks_fixed, res.corruptions_fixed = saved
        if res.corruptions < old_corruptions:
            res.corruptions_fixed += old_corruptions - res.corruptions
        if res.leaks < old_leaks:
            res.leaks_fixed += old_leaks - res.leaks
        res.leaks += fresh_leaks
    elif repair:
        if rebuild:
            res.messages.append("ERROR need to rebuild refcount structures")
            res.check_errors += 1
            res.ret = -errno.EIO
            return res
        if res.leaks or res.corruptions:
            res.corruptions, res.leaks, res.check_errors = pre
            highest, _ = await _compare(drv, res, cnt, fix_leaks, fix_errors)

    await _check_copied(drv, res, fix_errors)
    res.image_end_offset = (highest + 1) * cs

    if repair and res.check_errors == 0 and res.corruptions == 0 and not drv.read_only:
        # qcow2_mark_clean + qcow2_mark_consistent
        hdr = drv.header
        if hdr.incompatible_features & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT):
            await drv._f.flush()
            hdr.incompatible_features &= ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT)
            drv.dirty = False
            drv.corrupt = False
            await drv._write_incompat()
    return res


async def _check_copied(drv: Qcow2Driver, res: Qcow2CheckResult, fix: bool) -> None:
    cs = drv.cluster_size
    rc = drv.rc
    for i, l1e in enumerate(list(drv.l1)):
        l2 = l1e & L1E_OFFSET_MASK
        if not l2 or l2 & (cs - 1) or l2 + cs > drv._f.get_length():
            continue
        refcount = await rc.get(l2 >> drv.cluster_bits)
        if (refcount == 1) != bool(l1e & OFLAG_COPIED):
            res.messages.append(
                f"{'Repairing' if fix else 'ERROR'} OFLAG_COPIED L2 cluster: l1_index={i} "
                f"l1_entry={l1e:x} refcount={refcount}"
            )
            if fix:
                new = l1e | OFLAG_COPIED if refcount == 1 else l1e & ~OFLAG_COPIED
                drv.l1[i] = new
                drv._metadata_changed()
                await drv._pwrite(drv.l1_offset + i * 8, struct.pack(">Q", new))
                res.corruptions_fixed += 1
            else:
                res.corruptions += 1
        raw = bytearray(await drv._pread(l2, cs))
        entries = list(struct.unpack(f">{cs // 8}Q", raw))
        dirty = False
        step = 2 if drv.extl2 else 1
        for j in range(0, len(entries), step):
            e = entries[j]
            ct = cluster_type(e)
            if ct not in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC):
                continue
            off = e & L2E_OFFSET_MASK
            refcount = await rc.get(off >> drv.cluster_bits)
            if (refcount == 1) != bool(e & OFLAG_COPIED):
                res.messages.append(
                    f"{'Repairing' if fix else 'ERROR'} OFLAG_COPIED data cluster: "
                    f"l2_entry={e:x} refcount={refcount}"
                )
                if fix:
                    entries[j] = e | OFLAG_COPIED if refcount == 1 else e & ~OFLAG_COPIED
                    dirty = True
                    res.corruptions_fixed += 1
                else:
                    res.corruptions += 1
        if dirty:
            data = struct.pack(f">{cs // 8}Q", *entries)
            await drv._pwrite(l2, data)
            drv.l2cache.drop_range(l2, cs)
