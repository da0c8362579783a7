"""Bulk copy into a qcow2 image from another file's host extents.

Block jobs (stream, commit, active commit) move data that already lies
plainly in another image's file.  Passing it through Python buffers costs two
copies (read, write) and a pool round trip each; this path gives the file
driver an :class:`~blockd.drivers.file.FdRange` instead, which it copies in
the kernel (``copy_file_range``, what QEMU calls copy_range offload) as part
of the same ordered write chain a buffered write uses:

* clusters the image owns already are overwritten in place;
* clusters that need allocating get one contiguous run of fresh clusters
  (refcounts stable first, from the driver's reserve), then the data, then the
  L2 entries of the whole run in one write: the crash-safety order of every
  other allocating write, by the same code (``_alloc_prepare`` and
  ``_alloc_finish``);
* anything else (partial clusters, owned zero clusters, extended L2 entries,
  a file child that is not a plain buffered file) goes through the normal
  ``write`` with the data read into memory, so the result is always the same
  as a write of the same bytes.

While bulk copies run, the image takes fresh clusters in reserves of
``BULK_RESERVE`` instead of ~32 MiB: each reserve costs one refcount update and
one barrier (an fdatasync on a real disk), which dominated a stream on ext4.
After a crash the unused part of a reserve is a leak (``qemu-img check``
reports leaked clusters, nothing worse), as with the normal reserve.
"""

from __future__ import annotations

import errno
import weakref
from typing import TYPE_CHECKING

from blockd.drivers.base import bdrv_debug_event, run_io
from blockd.drivers.file import FdRange, FileDriver

from . import header as H
from .cluster import ClusterType

# Data per reserve of fresh clusters for bulk copies (at most this many clusters).
BULK_RESERVE = 256 << 20
BULK_RESERVE_MAX = 8192

if TYPE_CHECKING:
    from .driver import Qcow2Driver, _AllocPlan

# Images with bulk copies running: [copies, the image's own reserve size].
_bulk_writers: weakref.WeakKeyDictionary[Qcow2Driver, list[int]] = weakref.WeakKeyDictionary()


def can_copy_in(q: Qcow2Driver) -> bool:
    """Whether ``copy_in`` can take the kernel-copy path on this image."""
    f = q.file
    return isinstance(f, FileDriver) and not f.flags.cache_direct and not q.extl2


async def copy_in(q: Qcow2Driver, offset: int, src: FdRange) -> None:
    """Write ``src`` (another file's bytes) at guest ``offset``: the same
    result as ``q.write(offset, <those bytes>)``."""
    length = len(src)
    if not length:
        return
    if not can_copy_in(q):
        await q.write(offset, await run_io(src.read_sync))
        return
    q._check_writable()
    if q.header.autoclear_features & H.AUTOCLEAR_BITMAPS:
        await q._before_modify()
    if offset < 0 or offset + length > q.size:
        raise OSError(errno.EIO, "Input/output error")
    f = q.file
    assert isinstance(f, FileDriver)
    # While bulk copies run, fresh clusters come in bigger reserves: one
    # refcount update and one barrier per BULK_RESERVE instead of per ~32 MiB.
    state = _bulk_writers.get(q)
    if state is None:
        state = _bulk_writers[q] = [0, q._pool_chunk]
        q._pool_chunk = max(q._pool_chunk, min(BULK_RESERVE_MAX, BULK_RESERVE >> q.cluster_bits))
    state[0] += 1
    try:
        await _copy_in(q, f, offset, src)
    finally:
        state[0] -= 1
        if state[0] == 0:
            # Back to the image's own reserve size for ordinary writes.
            q._pool_chunk = state[1]
            del _bulk_writers[q]


async def _copy_in(q: Qcow2Driver, f: FileDriver, offset: int, src: FdRange) -> None:
    cs = q.cluster_size
    length = len(src)
    end = offset + length
    pos = offset
    while pos < end:
        # One L2 slice per round, as _write_data does.
        _, l2_idx = q._split(pos)
        room = (q.slice_entries - l2_idx % q.slice_entries) * cs - (pos & (cs - 1))
        span = min(end - pos, room)
        piece = src.sub(pos - offset, span)
        await bdrv_debug_event(q.file, "write_aio")
        await q._acquire_clusters(pos, span)
        plan: _AllocPlan | None = None
        in_place = False
        try:
            # Extent by extent (_first_extent: no per-cluster Python loop).
            head = await q._first_extent(pos, span)
            run = head.length
            if head.writable:
                in_place = True
                q._io_begin()
            elif head.ctype != ClusterType.ZERO_ALLOC:
                # Everything up to the next cluster owned (or zero) needs allocating.
                while run < span:
                    ext = await q._first_extent(pos + run, span - run)
                    if ext.writable or ext.ctype == ClusterType.ZERO_ALLOC:
                        break
                    run += ext.length
                if pos & (cs - 1):
                    # A partial first cluster: completed by the ordinary write.
                    run = min(run, cs - (pos & (cs - 1)))
                elif run >= cs:
                    # Whole clusters only; a partial last one comes next round.
                    run &= ~(cs - 1)
                    plan = await q._alloc_prepare(pos, run)
        finally:
            q._lock.release()
        part = piece.sub(0, run)
        if plan is not None:
            await q._alloc_finish(plan, part)
        elif in_place:
            try:
                await q._check_overlap(head.host, run)
                await f.copy_from(head.host, part)
                if head.host + run > q._file_len:
                    q._file_len = head.host + run
            finally:
                q._io_end()
        else:
            # Not whole clusters (or zero clusters): the ordinary write, which
            # completes partial clusters from their old content.
            await q.write(pos, await run_io(part.read_sync))
        pos += run
