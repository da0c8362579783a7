"""block-stream (QEMU 7.2's block/stream.c and qmp_block_stream).

The job copies every extent allocated between the top and the base into the
top, then makes the base the top's backing (header rewritten) and lets the
intermediate nodes go.  While it runs a copy-on-read filter sits above the top
(named by ``filter-node-name``, else implicit), the links from the filter down
to the node above the base are frozen, and the job holds the top and the
intermediate nodes with QEMU's permissions and op blockers.

Copying: the allocation map is walked on the event loop (metadata lookups are
cached by the format drivers), the data moves in large requests with several in
flight, and every read and write runs in the I/O thread pool.  With a speed
limit the job works like QEMU's: 512 KiB requests, one at a time, the rate
limiter's delay slept between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections import deque
from dataclasses import dataclass
from typing import Any

from blockd.drivers.base import BlockDriver, BlockStatusFlag, run_io
from blockd.drivers.file import FdRange, FileDriver
from blockd.drivers.locking import (
    BLK_PERM_ALL,
    BLK_PERM_CONSISTENT_READ,
    BLK_PERM_WRITE,
    BLK_PERM_WRITE_UNCHANGED,
)
from blockd.drivers.qcow2.bulk import can_copy_in, copy_in
from blockd.drivers.qcow2.driver import Qcow2Driver
from blockd.graph.backing import freeze_backing_chain, set_backing, unfreeze_backing_chain
from blockd.graph.filename import FilenameCache, cow_child
from blockd.graph.node import BdrvChild, BlockNode
from blockd.graph.registry import NodeRegistry
from blockd.graph.users import attach_user, detach_user
from blockd.jobs.blockjob import BlockJob, JobBackend, create_block_job
from blockd.jobs.drain import drained
from blockd.jobs.graphops import (
    chain_next,
    drop_filter,
    find_overlay,
    insert_filter,
    skip_filters,
)
from blockd.jobs.job import JobFailed
from blockd.jobs.manager import JobManager
from blockd.qmp.errors import GenericError

log = logging.getLogger(__name__)

# QEMU's STREAM_CHUNK: request size when rate limited (and progress granularity).
STREAM_CHUNK = 512 * 1024
# Unlimited speed: large requests, several in flight.
BIG_CHUNK = 4 * 1024 * 1024
MAX_IN_FLIGHT = 4
# Unlimited speed: allocation looked up in stretches this long, then carved.
SCAN_CHUNK = 64 * 1024 * 1024
_ZEROES = bytes(BIG_CHUNK)

BASIC_PERMS = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED
# Drivers whose errors depend on the order of requests (error injection).
class StreamJob(BlockJob):
    """One block-stream."""

    job_type = "stream"

    def __init__(
        self,
        manager: JobManager,
        job_id: str,
        graph: NodeRegistry,
        *,
        target: BlockNode,
        base_overlay: BlockNode,
        above_base: BlockNode,
        backing_file: str | None,
        bs_read_only: bool,
        on_error: str,
        auto_finalize: bool,
        auto_dismiss: bool,
    ) -> None:
        super().__init__(manager, job_id, auto_finalize=auto_finalize,
                         auto_dismiss=auto_dismiss, on_error=on_error)
        self.graph = graph
        self.target = target
        self.base_overlay = base_overlay
        self.above_base = above_base
        self.backing_file = backing_file
        self.bs_read_only = bs_read_only
        self.cor_filter: BlockNode | None = None
        # The job's own BlockBackend edge on the filter (s->blk).
        self.blk: BdrvChild | None = None
        self.frozen_from: BlockNode | None = None
        # Reused copy buffers (BIG_CHUNK each): memory stays flat during a job.
        self._buffers: list[bytearray] = []

    @property
    def backends(self) -> list[JobBackend]:
        return [JobBackend(self.blk)] if self.blk is not None else []

    # -- the copy ---------------------------------------------------------------

    def _stop_layer(self) -> BlockDriver | None:
        """The first layer not to copy from: the base (exclusive), re-read each
        time because a parallel job may change what lies below base_overlay."""
        c = self.base_overlay.child("backing")
        return c.child.driver if c is not None else None

    async def _find_source(
        self, top: BlockDriver, offset: int, length: int
    ) -> tuple[Source | None, int]:
        """Where [offset, offset+n) of the chain below the top comes from: the
        first layer above the base that allocates it (None: nothing above the
        base does, nothing to copy), like bdrv_is_allocated_above() but telling
        which layer answered."""
        stop = self._stop_layer()
        n = length
        layer = top.backing
        while layer is not None and layer is not stop:
            if offset >= layer.get_length():
                # Zeros synthesized past the end of a short layer count as its own.
                return Source(layer, BlockStatusFlag.ZERO | BlockStatusFlag.ALLOCATED, None), n
            st = await layer.block_status(offset, n)
            m = max(1, min(n, st.length))
            if st.flags & BlockStatusFlag.ALLOCATED:
                return Source(layer, st.flags, st.offset), m
            n = m
            layer = layer.backing
        return None, n

    async def _copy(self, top: BlockDriver, offset: int, length: int, src: Source) -> None:
        """Copy one run from its source layer into the top: host data straight
        from the layer's file into a pooled buffer in one pool call when the
        layer maps it plainly, else through the layer's driver; all-zero data
        as a zero write.  Parts a guest wrote meanwhile (allocated in the top
        now) are left alone."""
        data: bytes | bytearray | FdRange | None
        pooled: bytearray | None = None
        try:
            fd = _plain_file(src.layer) if src.host is not None else None
            if src.flags & BlockStatusFlag.ZERO:
                data = None
            elif fd is not None and src.host is not None and isinstance(top, Qcow2Driver) \
                    and can_copy_in(top) \
                    and await run_io(_pieces_lead_nonzero, fd, src.host, length):
                # Certainly not all zero: the kernel copies it, host to host.
                data = FdRange(fd, src.host, length)
            elif src.host is not None and fd is not None:
                if length == BIG_CHUNK:
                    pooled = self._buffers.pop() if self._buffers else bytearray(BIG_CHUNK)
                    buf = pooled
                else:
                    buf = bytearray(length)
                zero = await run_io(_pread_into, fd, buf, src.host, length)
                data = None if zero else buf
            else:
                data = await src.layer.read(offset, length)
                if _is_zero(data):
                    data = None
            pos, end = offset, offset + length
            while pos < end:
                st = await top.block_status(pos, end - pos)
                n = max(1, min(st.length, end - pos))
                if not st.flags & BlockStatusFlag.ALLOCATED:
                    if data is None:
                        await top.write_zeroes(pos, n)
                    elif isinstance(data, FdRange):
                        assert isinstance(top, Qcow2Driver)
                        await copy_in(top, pos, data.sub(pos - offset, n))
                    elif n == length:
                        await top.write(pos, data)
                    else:
                        await top.write(pos, memoryview(data)[pos - offset: pos - offset + n])
                pos += n
        finally:
            if pooled is not None:
                self._buffers.append(pooled)

    def _order_sensitive(self, top: BlockNode) -> bool:
        """Whether injected errors can depend on request order (a node
        under the top that acts on debug events, such as blkdebug): then the
        copy runs as QEMU's does, one STREAM_CHUNK at a time, so every read,
        event and error comes in the same order and at the same offset as in
        QEMU."""
        seen: set[int] = set()
        todo = [top]
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            # A driver acting on debug events (base.bdrv_debug_event) can
            # inject errors that depend on request order.
            if hasattr(node.driver, "debug_event"):
                return True
            todo.extend(c.child for c in node.children)
        return False

    async def run(self) -> None:
        unfiltered = skip_filters(self.target)
        if unfiltered is None or unfiltered is self.base_overlay:
            return  # nothing to stream
        top = unfiltered.driver
        length = top.get_length()
        self.progress_set_remaining(length)
        careful = self._order_sensitive(unfiltered)
        offset = 0
        delay = 0
        error = 0
        # Chunks issued and not yet accounted, in offset order: (offset, bytes,
        # copy task or None for a chunk with nothing to copy).  Progress and
        # errors are taken from its head only, so they come out as QEMU's
        # sequential loop publishes them even though copies run in parallel.
        queue: deque[tuple[int, int, asyncio.Task[None] | None]] = deque()
        # (start, end, source) of a long copy run being carved into requests.
        carry: tuple[int, int, Source] | None = None

        async def wait(every: bool) -> None:
            tasks = {t for _, _, t in queue if t is not None and not t.done()}
            if tasks:
                await asyncio.wait(tasks, return_when=asyncio.ALL_COMPLETED if every
                                   else asyncio.FIRST_COMPLETED)

        def policy(off: int, n: int, err: int) -> bool:
            """block_job_error_action() for the chunk at ``off``; True = leave
            the loop.  ``stop``: the chunk is retried after the pause, like
            QEMU's ``n = 0; continue`` (everything after it is looked at again)."""
            nonlocal error, offset, carry
            action = self.error_action(True, err)
            if action == "stop":
                offset = off
                carry = None
                return False
            if error == 0:
                error = -err
            if action == "report":
                return True
            self.progress_update(n)
            return False

        async def settle() -> bool:
            """Account the finished head of the queue; True = leave the loop."""
            while queue:
                off, n, task = queue[0]
                if task is not None:
                    if not task.done():
                        return False
                    exc = _task_error(task)
                    if exc is not None:
                        queue.popleft()
                        # What QEMU would not have started yet is dropped (a
                        # retry looks at it again; copies skip what they did).
                        await wait(True)
                        for _, _, t in queue:
                            if t is not None:
                                _task_error(t)
                        queue.clear()
                        return policy(off, n, _errno_of(exc))
                queue.popleft()
                self.progress_update(n)
            return False

        while offset < length or queue:
            # A speed limit (set at start or later) means QEMU's way: one
            # 512 KiB request at a time, the limiter's delay between them.
            limited = self.speed > 0
            sequential = limited or careful
            # A pause or cancel waits for the requests in flight (QEMU's job is
            # idle at its pause points), as does switching to one at a time.
            if queue and (self.pause_count > 0 or self.is_cancelled() or sequential
                          or offset >= length):
                await wait(True)
                if await settle():
                    break
                continue
            await self.sleep_ns(delay)
            delay = 0
            if self.is_cancelled():
                break
            if offset >= length:
                continue
            if carry is not None and offset < carry[1] and not sequential:
                # The rest of a long run found by the last lookup.
                off = offset
                n = min(BIG_CHUNK, carry[1] - off)
                whole = carry[2]
                src: Source | None = Source(
                    whole.layer, whole.flags,
                    None if whole.host is None else whole.host + off - carry[0])
            else:
                carry = None
                off = offset
                want = min(STREAM_CHUNK if sequential else SCAN_CHUNK, length - off)
                try:
                    st = await top.block_status(off, want)
                    n = max(1, min(st.length, want))
                    src = None
                    if not st.flags & BlockStatusFlag.ALLOCATED:
                        if top.backing is None:
                            n = length - off
                        else:
                            src, n = await self._find_source(top, off, n)
                    if src is not None and n > BIG_CHUNK and not sequential:
                        carry = (off, off + n, src)
                        n = BIG_CHUNK
                except Exception as exc:
                    offset = off + STREAM_CHUNK
                    await wait(True)
                    if await settle() or policy(off, min(STREAM_CHUNK, length - off),
                                                _errno_of(exc)):
                        break
                    continue
            offset = off + n
            if src is None:
                # Nothing to copy: accounted in order with the copies before it.
                if queue:
                    queue.append((off, n, None))
                else:
                    self.progress_update(n)
                continue
            task = asyncio.get_running_loop().create_task(self._copy(top, off, n, src))
            queue.append((off, n, task))
            if sequential:
                await wait(True)
                failed = _task_error(task) is not None
                if await settle():
                    break
                if limited and not failed:
                    delay = self.ratelimit_delay(n)
                continue
            if sum(1 for _, _, t in queue if t is not None and not t.done()) >= MAX_IN_FLIGHT:
                await wait(False)
                if await settle():
                    break
        if queue:
            # Stopping early: let the requests in flight finish, errors ignored.
            await wait(True)
            for _, _, t in queue:
                if t is not None:
                    _task_error(t)
            queue.clear()
        if error:
            raise JobFailed(error)
        if not self.is_cancelled():
            # prepare()'s header rewrite first flushes the copied data (the
            # backing link never drops before the data is on disk).  Most of
            # that write-back happens here instead, outside the completion's
            # locked section, so QMP is not held up by it; its errors are
            # reported by the flush in prepare().
            with contextlib.suppress(OSError):
                await top.flush()

    def on_speed_change(self) -> None:
        # A limit switches the copy to QEMU's chunking on its next request.
        return None

    # -- finalization -----------------------------------------------------------

    async def _drop_filter(self) -> None:
        """bdrv_cor_filter_drop(): unfreeze, parents back to the top, filter gone."""
        cor = self.cor_filter
        if cor is None:
            return
        self.cor_filter = None
        if self.frozen_from is not None:
            unfreeze_backing_chain(self.frozen_from, self.above_base)
            self.frozen_from = None
        keep = [c for c in cor.parents if c in self.graph_children or c is self.blk]
        for c in keep:
            if c in self.graph_children:
                self.graph_children.remove(c)
            if self.blocker in cor.blockers:
                cor.blockers.remove(self.blocker)
        self.blk = None
        fc = cor.child("file")
        # bdrv_drop_filter() replaces a node: the jobs above it are drained.
        async with drained(self.manager, [fc.child] if fc is not None else []):
            await drop_filter(self.graph, cor, keep)

    async def prepare(self) -> None:
        """stream_prepare(): the top's backing becomes the base, header rewritten."""
        await self._drop_filter()
        unfiltered = skip_filters(self.target)
        if unfiltered is None or cow_child(unfiltered) is None:
            return
        base = chain_next(self.above_base)
        unfiltered_base = skip_filters(base)
        base_id: str | None = None
        base_fmt: str | None = None
        if unfiltered_base is not None:
            base_id = self.backing_file or FilenameCache().filename(unfiltered_base)
            base_fmt = unfiltered_base.driver.name
        async with drained(self.manager, [unfiltered]):
            try:
                await set_backing(self.graph, unfiltered, base)
            except GenericError as e:
                log.error("%s", e.desc)
                raise JobFailed(-errno.EPERM) from None
            await change_backing_file(unfiltered, base_id, base_fmt)

    async def abort(self) -> None:
        await self._drop_filter()

    async def clean(self) -> None:
        await self._drop_filter()
        if self.bs_read_only:
            for c in self.graph_children:
                if c.child is self.target:
                    self.set_child_perm(c, 0, BLK_PERM_ALL)
            try:
                await reopen_read_only(self.graph, self.target, True)
            except GenericError as e:
                log.error("stream: reopening '%s' read-only: %s", self.target.node_name, e.desc)


@dataclass
class Source:
    """The layer a run of the chain comes from, its status and host offset."""

    layer: BlockDriver
    flags: BlockStatusFlag
    host: int | None


def _plain_file(layer: BlockDriver) -> int | None:
    """The fd to read a qcow2 layer's data clusters from directly (its ``file``
    child, buffered), or None when data must go through the driver."""
    if layer.name != "qcow2":
        return None
    f = layer.file
    if not isinstance(f, FileDriver) or f.flags.cache_direct:
        return None
    fd = getattr(f, "fd", -1)
    return fd if isinstance(fd, int) and fd >= 0 else None


def _pieces_lead_nonzero(fd: int, host: int, length: int) -> bool:
    """Whether every STREAM_CHUNK piece of the run starts with a non-zero
    byte, i.e. none of them is all zero (copy-on-read writes an all-zero piece
    as zeros, so only such runs may skip the zero check).  In a pool thread."""
    for skip in range(0, length, STREAM_CHUNK):
        b = os.pread(fd, 1, host + skip)
        if not b or not b[0]:
            return False
    return True


def _is_zero(data: bytes | bytearray) -> bool:
    """buffer_is_zero(): all-zero data is copied as a zero write, as QEMU's
    copy-on-read does."""
    n = len(data)
    if not n or data[0]:
        return not n
    # bytes equality is one memcmp; only data starting with a zero gets here.
    return data == (_ZEROES if n == len(_ZEROES) else bytes(n))


def _pread_into(fd: int, buf: bytearray, offset: int, length: int) -> bool:
    """Fill buf[:length] from the file (zeros past EOF) in a pool thread;
    whether the data is all zero."""
    mv = memoryview(buf)
    got = 0
    while got < length:
        n = os.preadv(fd, [mv[got:length]], offset + got)
        if n <= 0:
            mv[got:length] = bytes(length - got)
            break
        got += n
    if not length or buf[0]:
        return not length
    if length == len(_ZEROES) == len(buf):
        return buf == _ZEROES
    return buf.count(0, 0, length) == length


def _task_error(task: asyncio.Task[None]) -> BaseException | None:
    """A finished copy's exception (retrieved), a cancellation counting as one."""
    if task.cancelled():
        return asyncio.CancelledError()
    return task.exception()


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


async def change_backing_file(node: BlockNode, backing_file: str | None,
                              backing_fmt: str | None) -> None:
    """bdrv_change_backing_file(): the image header and the node's record of it."""
    drv = node.driver
    change = getattr(drv, "change_backing_file", None)
    if change is None:
        raise JobFailed(-errno.ENOTSUP)
    try:
        await change(backing_file, backing_fmt)
    except OSError as e:
        raise JobFailed(-(e.errno or errno.EIO)) from None
    node.backing_file = backing_file or ""
    node.backing_format = backing_fmt or ""
    node.auto_backing_file = backing_file or ""


async def reopen_read_only(graph: NodeRegistry, node: BlockNode, read_only: bool) -> None:
    """bdrv_reopen_set_read_only(): the node's current options with read-only
    changed, through the graph's reopen transaction."""
    from blockd.graph.options import unflatten
    from blockd.graph.reopen import reopen_multiple

    opts: dict[str, Any] = unflatten(dict(node.explicit_options))
    opts["node-name"] = node.node_name
    opts.setdefault("driver", node.driver.name)
    for c in node.children:
        if c.name not in opts or not isinstance(opts[c.name], dict):
            opts[c.name] = c.child.node_name
    if node.child("backing") is None and "backing" in {
        s.option for s in type(node.driver).child_specs
    }:
        opts["backing"] = None
    opts["read-only"] = read_only
    await reopen_multiple(graph, [opts], compat="7.2")


async def start_stream(
    manager: JobManager,
    graph: NodeRegistry,
    *,
    job_id: str,
    bs: BlockNode,
    base: BlockNode | None,
    backing_file: str | None,
    bottom: BlockNode | None,
    auto_finalize: bool,
    auto_dismiss: bool,
    speed: int,
    on_error: str,
    filter_node_name: str | None,
) -> StreamJob:
    """stream_start(): filter, job, permissions, frozen chain, then run."""
    if bottom is not None:
        base_overlay = above_base = bottom
    else:
        found = find_overlay(bs, base)
        if found is None:
            assert base is not None
            raise GenericError(
                f"'{base.node_name}' is not in the backing chain of '{bs.node_name}'"
            )
        base_overlay = above_base = found
        below = cow_child(above_base)
        if below is not None and below.child is not base:
            above_base = below.child
            while chain_next(above_base) is not base:
                nxt = chain_next(above_base)
                if nxt is None:
                    break
                above_base = nxt

    bs_read_only = bs.read_only
    if bs_read_only:
        # Hold the chain during the reopen.
        freeze_backing_chain(bs, above_base)
        try:
            await reopen_read_only(graph, bs, False)
        finally:
            unfreeze_backing_chain(bs, above_base)

    job = StreamJob(
        manager, job_id, graph, target=bs, base_overlay=base_overlay, above_base=above_base,
        backing_file=backing_file, bs_read_only=bs_read_only, on_error=on_error,
        auto_finalize=auto_finalize, auto_dismiss=auto_dismiss,
    )
    cor: BlockNode | None = None
    created = False
    try:
        # bdrv_insert_node() replaces bs: the jobs above it are drained.
        async with drained(manager, [bs]):
            cor = await insert_filter(
                graph, bs, "copy-on-read", filter_node_name,
                {"bottom": base_overlay.node_name}, {"bottom": base_overlay.driver}, keep=[],
            )
        job.cor_filter = cor
        # block_job_create() on the filter: it takes nothing and shares all.
        manager.check_new_id(job_id)
        await create_block_job(job, cor, 0, BLK_PERM_ALL, speed)
        created = True
        job.blk = attach_user(cor, "root", BLK_PERM_CONSISTENT_READ,
                              BASIC_PERMS | BLK_PERM_WRITE, desc="an unnamed block device")
        job.add_bdrv("active node", bs, 0, BASIC_PERMS | BLK_PERM_WRITE)
        iter_node = chain_next(bs)
        base_now = chain_next(above_base)
        while iter_node is not None and iter_node is not base_now:
            job.add_bdrv("intermediate node", iter_node, 0, BASIC_PERMS)
            iter_node = chain_next(iter_node)
        freeze_backing_chain(cor, above_base)
        job.frozen_from = cor
    except BaseException:
        if job.blk is not None:
            detach_user(job.blk)
            job.blk = None
        if created:
            await job.early_fail()
        if cor is not None:
            job.cor_filter = cor
            await job._drop_filter()
        if bs_read_only:
            try:
                await reopen_read_only(graph, bs, True)
            except GenericError:
                pass
        raise
    job.start()
    return job
