"""block-commit into a backing node below an overlay (QEMU's block/commit.c).

The job copies everything allocated from ``top`` down to just above ``base``
into ``base``, then drops the committed nodes: every parent of ``top`` (through
the implicit ``commit_top`` filter) now points at ``base`` and the overlay's
image header names the new backing file.

While it runs, an implicit ``commit_top`` filter sits between the overlay and
``top`` (``#blockNNN`` unless ``filter-node-name`` names it), the backing links
from the filter down to ``base`` are frozen, the job holds edges on the nodes it
uses (their op blocker says ``block device is in use by block job: commit``)
and ``base`` is reopened read-write if it was read-only (back afterwards).

Crash safety: data goes into ``base`` only in ranges the intermediate layers
shadow, so the overlay's guest view never changes; every write into ``base``
(data and qcow2 metadata, which the driver writes through) has completed before
the overlay's header is rewritten, so after the daemon is killed the overlay
names either the old chain or a base that already holds everything.  Like QEMU
(which issues no fdatasync during a commit), the job does not sync to stable
storage.

The graph helpers here (filter insertion/removal, read-only reopen, backing
image lookup) are shared with the active commit in :mod:`blockd.jobs.mirror`.
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import TYPE_CHECKING, Any

from blockd.drivers.base import (
    BlockDriver,
    BlockStatusFlag,
    ChildRole,
    OpenFlags,
    is_allocated_above,
    run_io,
)
from blockd.drivers.commit_top import CommitTopDriver
from blockd.drivers.file import FdRange
from blockd.drivers.locking import BLK_PERM_ALL
from blockd.drivers.qcow2.bulk import can_copy_in, copy_in
from blockd.drivers.qcow2.driver import Qcow2Driver
from blockd.graph import permissions
from blockd.graph.backing import (
    cow_child,
    freeze_backing_chain,
    inherits_from_recursive,
    unfreeze_backing_chain,
)
from blockd.graph.filename import FilenameCache, header_backing, path_has_protocol
from blockd.graph.naming import check_node_name
from blockd.graph.node import BdrvChild, BlockNode, attach_child, detach_child, replace_child
from blockd.graph.registry import NodeRegistry
from blockd.graph.users import attach_user, detach_user
from blockd.jobs.blockjob import BlockJob, JobBackend, check_op_blocked, create_block_job
from blockd.jobs.job import JobFailed
from blockd.qmp.errors import DeviceNotFound, GenericError

if TYPE_CHECKING:
    from blockd.jobs.manager import JobManager

PERM_READ, PERM_WRITE, PERM_WRITE_UNCHANGED, PERM_RESIZE = 0x1, 0x2, 0x4, 0x8

# COMMIT_BUFFER_SIZE: QEMU copies 512 KiB per iteration.  Without a speed limit
# blockd copies bigger pieces, several at a time (same result, fewer round trips).
COMMIT_BUFFER_SIZE = 512 * 1024
FAST_CHUNK = 8 * 1024 * 1024
FAST_WORKERS = 2
# How much allocation status one query may cover: a query is CPU work on the
# event loop, so it is kept to a few milliseconds (QMP stays responsive).
EXTENT_QUERY = 64 << 20


# -- graph helpers -------------------------------------------------------------------


# bdrv_filter_or_cow_child() lives with the graph's backing-chain primitives.
cow_or_filter_child = cow_child


def chain_below(node: BlockNode) -> list[BlockNode]:
    """``node`` and every node under it along backing/filtered links."""
    out = [node]
    c = cow_or_filter_child(node)
    while c is not None and len(out) < 100000:
        out.append(c.child)
        c = cow_or_filter_child(c.child)
    return out


def skip_filters(node: BlockNode) -> BlockNode:
    """bdrv_skip_filters(): below every filter."""
    while node.driver.is_filter:
        c = cow_or_filter_child(node)
        if c is None:
            break
        node = c.child
    return node


def find_overlay(active: BlockNode, node: BlockNode) -> BlockNode | None:
    """bdrv_find_overlay(): the node in ``active``'s chain whose backing is ``node``."""
    prev: BlockNode | None = None
    for n in chain_below(active):
        if n is node:
            return prev
        prev = n
    return None


def filtered_base(top: BlockNode, base: BlockNode) -> BlockNode | None:
    """bdrv_cow_bs(bdrv_find_overlay(top, base)): the topmost node from which
    everything down to ``base`` is a filter over it."""
    base_real = skip_filters(base)
    node = skip_filters(top)
    for _ in range(100000):
        b = node.child("backing")
        if b is None:
            return None
        below = skip_filters(b.child)
        if below is base_real:
            return b.child
        node = below
    return None


def add_intermediate_nodes(job: BlockJob, first: BlockNode | None, base: BlockNode) -> None:
    """The job edges on the nodes that leave the chain (commit_start and
    mirror_start_job): they share WRITE and WRITE_UNCHANGED, and from the
    filters on the base down also CONSISTENT_READ."""
    if first is None:
        return
    fb = filtered_base(first, base)
    shared = PERM_WRITE_UNCHANGED | PERM_WRITE
    node: BlockNode | None = first
    while node is not None and node is not base:
        if node is fb:
            shared |= PERM_READ
        job.add_bdrv("intermediate node", node, 0, shared)
        c = cow_or_filter_child(node)
        node = c.child if c is not None else None


def find_backing_image(bs: BlockNode, name: str) -> BlockNode | None:
    """bdrv_find_backing_image(): a backing node by file name, as QEMU compares
    (the header's name relative to the overlay, or the node's own file name
    when the backing was overridden)."""
    cache = FilenameCache()
    is_protocol = path_has_protocol(name)
    curr = skip_filters(bs)
    for _ in range(100000):
        c = curr.child("backing")
        if c is None:
            return None
        # bdrv_backing_chain_next(): filters (a job's) are looked through.
        below = skip_filters(c.child)
        header = header_backing(curr)[0]
        if cache.backing_overridden(curr):
            if name == cache.filename(below):
                return below
        elif is_protocol or path_has_protocol(header):
            if name == header or name == cache.full_backing_filename(curr):
                return below
        else:
            directory = cache.dirname(curr)
            full = cache.full_backing_filename(curr)
            if directory is not None and full is not None:
                wanted = name if os.path.isabs(name) else directory + name
                if os.path.exists(wanted) and os.path.exists(full) and \
                        os.path.realpath(wanted) == os.path.realpath(full):
                    return below
        curr = below
    return None


def get_root_bs(graph: NodeRegistry, device: str) -> BlockNode:
    """qmp_get_root_bs() as block-commit uses it: DeviceNotFound when nothing has
    that name, ``Need a root block node`` when the node has a parent other than
    a BlockBackend-like user (a node, or a job)."""
    node = graph.lookup(device)
    if node is None:
        raise DeviceNotFound(f"Device '{device}' not found")
    for c in node.parents:
        if c.parent is not None or " job '" in c.user_desc:
            raise GenericError("Need a root block node")
    return node


def new_filter_node(
    graph: NodeRegistry, drv_cls: type[BlockDriver], node_name: str | None, read_only: bool
) -> BlockNode:
    """bdrv_new_open_driver(): an option-less filter node, ``#blockNNN`` and
    implicit when the user gave no name."""
    if node_name is not None:
        check_node_name(node_name, node_name in graph)
    drv = drv_cls()
    name = node_name if node_name is not None else graph.namer.next()
    node = BlockNode(name, drv, options={"driver": drv.name, "node-name": name},
                     read_only=read_only, implicit=node_name is None,
                     auto_named=node_name is None)
    drv.flags = OpenFlags(read_only=read_only)
    graph.add(node)
    return node


def _movable_parents(node: BlockNode, skip: set[int]) -> list[BdrvChild]:
    """Parent edges bdrv_replace_node() moves: not job edges, not ``skip``."""
    return [c for c in node.parents
            if id(c) not in skip and " job '" not in c.user_desc]


def append_filter(filter_node: BlockNode, top: BlockNode) -> None:
    """bdrv_append(): ``top`` becomes the filter's backing and every parent of
    ``top`` now points at the filter.  Undone completely on error."""
    moved = _movable_parents(top, set())
    for c in moved:
        if c.frozen:
            raise GenericError(f"Cannot change '{c.name}' link to '{top.node_name}'")
    edge = attach_child(filter_node, top, "backing", ChildRole.FILTERED | ChildRole.PRIMARY,
                        slot="backing")
    for c in moved:
        replace_child(c, filter_node)
    try:
        permissions.refresh([filter_node, top])
    except GenericError:
        for c in moved:
            replace_child(c, top)
        detach_child(edge)
        permissions.refresh([top])
        raise


async def drop_filter(graph: NodeRegistry, filter_node: BlockNode) -> None:
    """bdrv_drop_filter(): the filter's parents go to its filtered child, then the
    filter leaves the graph."""
    from blockd.graph.opener import close_node

    c = cow_or_filter_child(filter_node)
    below = c.child if c is not None else None
    if below is not None:
        for p in _movable_parents(filter_node, set()):
            replace_child(p, below)
    if c is not None:
        detach_child(c)
    await close_node(graph, filter_node)
    if below is not None and not below.closed:
        try:
            permissions.refresh([below])
        except GenericError:
            pass


async def set_read_only(graph: NodeRegistry, node: BlockNode, read_only: bool) -> None:
    """bdrv_reopen_set_read_only(): reopen ``node`` (and what inherits from it)
    with only ``read-only`` changed."""
    from blockd.graph import reopen

    queue: list[reopen.Entry] = []
    reopen.queue_child(queue, node, {"read-only": read_only}, None, None, True)
    await reopen._reopen(graph, queue)


async def release_nodes(graph: NodeRegistry, nodes: list[BlockNode]) -> None:
    """Close nodes nobody references any more (bdrv_unref at refcount 0)."""
    from blockd.graph.opener import unref

    for n in nodes:
        if not n.closed and n.refcount <= 0 and not n.monitor_owned:
            n.refcount = 1
            await unref(graph, n)


def errno_of(e: BaseException) -> int:
    """The positive errno of an I/O failure."""
    if isinstance(e, OSError) and e.errno:
        return e.errno
    if isinstance(e, JobFailed):
        return -e.ret
    return errno.EIO


def _host_fd(layer: BlockDriver) -> int | None:
    """The descriptor a qcow2 layer's plainly mapped data can be read from
    (its buffered ``file`` child), or None when reads must go through it."""
    from blockd.drivers.file import FileDriver

    if layer.name != "qcow2" or not isinstance(layer.file, FileDriver):
        return None
    f = layer.file
    if f.flags.cache_direct:
        return None
    fd = getattr(f, "fd", -1)
    return fd if isinstance(fd, int) and fd >= 0 else None


def _bulk_target(target: BlockDriver) -> bool:
    """Whether data for ``target`` can be handed over as host extents
    (:mod:`blockd.drivers.qcow2.bulk`) instead of buffers."""
    return isinstance(target, Qcow2Driver) and can_copy_in(target)


def _pread_into(fd: int, buf: bytearray, offset: int, length: int) -> None:
    """Fill buf[:length] from the host file (zeros past its end), in a pool
    thread."""
    mv = memoryview(buf)
    got = 0
    while got < length:
        n = os.preadv(fd, [mv[got:length]], offset + got)
        if n <= 0:
            mv[got:length] = bytes(length - got)
            break
        got += n


class RangeCopier:
    """Copies ranges of the chain ``top`` .. above ``stop`` into ``target``:
    each run from the layer that allocates it (what a read through ``top``
    returns there), plainly mapped qcow2 data straight from the layer's file
    into a reused buffer in one pool call.  Ranges the source layer reports as
    zero become zero writes (the mirror's way) or, with ``zeroes_as_data``,
    writes of zeros (the intermediate commit's); data is copied as read,
    without scanning it for zeros (QEMU's commit and mirror copy data as data
    too).

    Errors are raised as :class:`CopyError` saying whether the source (status,
    read) or the target (write) failed."""

    def __init__(self, top: BlockDriver, stop: BlockDriver | None, target: BlockDriver,
                 may_unmap: bool = False, zeroes_as_data: bool = False) -> None:
        self.top = top
        self.stop = stop
        self.target = target
        self.may_unmap = may_unmap
        # QEMU 7.2's intermediate commit reads and writes (commit_populate):
        # zero clusters arrive in the base as data clusters full of zeros.
        self.zeroes_as_data = zeroes_as_data
        self._buffers: list[bytearray] = []

    async def source(self, offset: int, n: int) -> tuple[BlockDriver | None, int, int, int | None]:
        """(layer, flags, length, host offset) of the run at ``offset``; layer
        None when nothing above ``stop`` allocates it (reads as the stop layer)."""
        layer: BlockDriver | None = self.top
        while layer is not None and layer is not self.stop:
            if offset >= layer.get_length():
                return layer, int(BlockStatusFlag.ZERO | BlockStatusFlag.ALLOCATED), n, None
            st = await layer.block_status(offset, n)
            m = max(1, min(n, st.length))
            if st.flags & BlockStatusFlag.ALLOCATED:
                return layer, int(st.flags), m, st.offset
            n = m
            layer = layer.backing
        return None, 0, n, None

    async def copy(self, offset: int, length: int) -> None:
        pos, end = offset, offset + length
        while pos < end:
            try:
                layer, flags, n, host = await self.source(pos, end - pos)
            except (OSError, GenericError) as e:
                raise CopyError(True, e) from e
            await self.copy_run(layer, flags, pos, n, host)
            pos += n

    async def copy_run(self, layer: BlockDriver | None, flags: int, offset: int, n: int,
                       host: int | None) -> None:
        """Copy one run whose source ``source()`` told (``host`` adjusted to
        ``offset``)."""
        pooled: bytearray | None = None
        data: bytes | bytearray | memoryview | FdRange | None = None
        try:
            try:
                if layer is not None and flags & BlockStatusFlag.ZERO:
                    data = bytes(n) if self.zeroes_as_data else None
                elif layer is not None and host is not None and \
                        (fd := _host_fd(layer)) is not None and _bulk_target(self.target):
                    # Host extents to a qcow2 image: copied by the kernel.
                    data = FdRange(fd, host, n)
                elif layer is not None and host is not None and \
                        (fd := _host_fd(layer)) is not None:
                    if n <= FAST_CHUNK:
                        pooled = self._buffers.pop() if self._buffers else bytearray(FAST_CHUNK)
                        buf = pooled
                    else:
                        buf = bytearray(n)
                    await run_io(_pread_into, fd, buf, host, n)
                    data = memoryview(buf)[:n]
                else:
                    # Compressed/encrypted data, other formats, or below stop.
                    data = await (layer or self.top).read(offset, n)
            except (OSError, GenericError) as e:
                raise CopyError(True, e) from e
            try:
                if data is None:
                    await self.target.write_zeroes(offset, n, may_unmap=self.may_unmap)
                elif isinstance(data, FdRange):
                    assert isinstance(self.target, Qcow2Driver)
                    await copy_in(self.target, offset, data)
                else:
                    await self.target.write(offset, data)
            except (OSError, GenericError) as e:
                raise CopyError(False, e) from e
        finally:
            if pooled is not None:
                self._buffers.append(pooled)


class CopyError(Exception):
    """An I/O error and whether it happened in the source or the target."""

    def __init__(self, is_read: bool, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.is_read = is_read
        self.cause = cause


# -- the job ---------------------------------------------------------------------------


class CommitJob(BlockJob):
    """Intermediate commit: ``top`` (not the active layer) into ``base``."""

    job_type = "commit"

    def __init__(
        self,
        manager: JobManager,
        job_id: str,
        graph: NodeRegistry,
        *,
        bs: BlockNode,
        top: BlockNode,
        base: BlockNode,
        backing_file: str | None,
        on_error: str,
        auto_finalize: bool,
        auto_dismiss: bool,
    ) -> None:
        super().__init__(manager, job_id, auto_finalize=auto_finalize,
                         auto_dismiss=auto_dismiss, on_error=on_error)
        self.graph = graph
        self.bs = bs
        self.top = top
        self.base = base
        self.backing_file = backing_file
        self.commit_top: BlockNode | None = None
        self.base_read_only = False
        self.chain_frozen = False
        self.base_writer: BdrvChild | None = None
        self.top_reader: BdrvChild | None = None
        self._prepared = False
        self._copier: RangeCopier | None = None
        # job_sleep_ns() delay the last piece asked for (rate limit).
        self._delay_ns = 0

    async def setup(self, speed: int, filter_node_name: str | None) -> None:
        """commit_start() after the argument checks, in QEMU's order; on failure
        everything is undone and the job (if created) goes to null."""
        top, base = self.top, self.base
        if skip_filters(top) is skip_filters(base):
            raise GenericError("Invalid files for merge: top and base are the same")
        await create_block_job(self, self.bs, 0, BLK_PERM_ALL, speed)
        try:
            self.base_read_only = base.read_only
            if self.base_read_only:
                await set_read_only(self.graph, base, False)
            self.commit_top = new_filter_node(self.graph, CommitTopDriver, filter_node_name,
                                              True)
            append_filter(self.commit_top, top)
            # The nodes that disappear from the chain afterwards.
            add_intermediate_nodes(self, top, base)
            freeze_backing_chain(self.commit_top, base)
            self.chain_frozen = True
            self.add_bdrv("base", base, 0, BLK_PERM_ALL)
            # The job's own BlockBackends: a writer on base (resizing only if
            # base is shorter than top), a permission-less reader on top.
            base_perm = PERM_READ | PERM_WRITE
            if base.driver.get_length() < top.driver.get_length():
                base_perm |= PERM_RESIZE
            self.base_writer = attach_user(base, "root", base_perm,
                                           PERM_READ | PERM_WRITE_UNCHANGED,
                                           desc=f"commit job '{self.id}'")
            self.top_reader = attach_user(top, "root", 0, BLK_PERM_ALL,
                                          desc=f"commit job '{self.id}'")
        except BaseException:
            await self._undo_setup()
            await self.early_fail()
            raise

    @property
    def backends(self) -> list[JobBackend]:
        return [JobBackend(c) for c in (self.base_writer, self.top_reader) if c is not None]

    async def _drop_backend(self, which: str) -> None:
        """blk_unref() of the job's own backend; the node closes if that was
        its last reference."""
        c: BdrvChild | None = getattr(self, which)
        setattr(self, which, None)
        if c is not None:
            detach_user(c)
            await release_nodes(self.graph, [c.child])

    async def _undo_setup(self) -> None:
        if self.chain_frozen and self.commit_top is not None:
            unfreeze_backing_chain(self.commit_top, self.base)
            self.chain_frozen = False
        await self._drop_backend("base_writer")
        await self._drop_backend("top_reader")
        await self.remove_all_bdrv()
        if self.commit_top is not None and not self.commit_top.closed:
            await drop_filter(self.graph, self.commit_top)
        if self.base_read_only and not self.base.read_only:
            try:
                await set_read_only(self.graph, self.base, True)
            except GenericError:
                pass

    # -- run ---------------------------------------------------------------------------

    async def run(self) -> None:
        top, base = self.top.driver, self.base.driver
        length = top.get_length()
        self.progress_set_remaining(length)
        if base.get_length() < length:
            await base.truncate(length)
        offset = 0
        while offset < length and not self.is_cancelled():
            if self.speed:
                offset = await self._step_limited(top, base, length, offset)
            else:
                offset = await self._run_fast(top, base, length, offset)

    async def _allocated(self, top: BlockDriver, base: BlockDriver, offset: int,
                         n: int) -> tuple[bool, int]:
        """is_allocated_above(); a failure counts as an error in the source."""
        try:
            return await is_allocated_above(top, base, offset, n)
        except (OSError, GenericError) as e:
            raise CopyError(True, e) from e

    async def _copy(self, top: BlockDriver, base: BlockDriver, offset: int, n: int) -> None:
        """One piece: from the layers above base into base."""
        if self._copier is None:
            self._copier = RangeCopier(top, base, base, zeroes_as_data=True)
        await self._copier.copy(offset, n)

    def _handle_error(self, err: CopyError) -> None:
        """block_job_error_action(): fail on "report", else retry the piece
        (after the pause "stop" asked for)."""
        action = self.error_action(err.is_read, errno_of(err.cause))
        if action == "report":
            raise JobFailed(-errno_of(err.cause))

    async def _step_limited(self, top: BlockDriver, base: BlockDriver, length: int,
                            offset: int) -> int:
        """One iteration of QEMU 7.2's commit_run(): sleep what the previous
        piece asked for (one sleep: a resume or a speed change ends it early,
        as in 7.2), then 512 KiB."""
        delay, self._delay_ns = self._delay_ns, 0
        await self.sleep_ns(delay)
        if self.is_cancelled():
            return offset
        try:
            allocated, n = await self._allocated(top, base, offset,
                                                 min(COMMIT_BUFFER_SIZE, length - offset))
            if allocated:
                await self._copy(top, base, offset, n)
        except CopyError as e:
            self._handle_error(e)
            return offset
        self.progress_update(n)
        if allocated:
            self._delay_ns = self.ratelimit_delay(n)
        return offset + n

    async def _run_fast(self, top: BlockDriver, base: BlockDriver, length: int,
                        offset: int) -> int:
        """Unlimited speed: big pieces, several in flight.  Returns where to go
        on: the end, or the first failed piece (everything before it is done)."""
        pending: dict[asyncio.Task[None], tuple[int, int]] = {}
        failed: tuple[int, CopyError] | None = None
        # The allocation status of [offset, extent_end), asked for in big
        # stretches and carved into pieces.
        if self._copier is None:
            self._copier = RangeCopier(top, base, base, zeroes_as_data=True)
        copier = self._copier
        # The source of [extent_start, extent_end): asked for in big stretches
        # (one status query per run of the chain) and carved into pieces.
        extent_start = extent_end = offset
        extent: tuple[BlockDriver | None, int, int, int | None] = (None, 0, 0, None)
        while True:
            while (offset < length and len(pending) < FAST_WORKERS and failed is None
                   and not self.speed):
                await self.pause_point()
                if self.is_cancelled():
                    break
                if offset >= extent_end:
                    if extent_end > extent_start:
                        await asyncio.sleep(0)
                    try:
                        extent = await copier.source(offset, min(EXTENT_QUERY, length - offset))
                    except (OSError, GenericError) as e:
                        failed = (offset, CopyError(True, e))
                        break
                    extent_start, extent_end = offset, offset + extent[2]
                layer, flags, _, host = extent
                allocated = layer is not None
                n = extent_end - offset if not allocated else \
                    min(FAST_CHUNK, extent_end - offset)
                if allocated:
                    piece_host = None if host is None else host + offset - extent_start
                    task = asyncio.ensure_future(
                        copier.copy_run(layer, flags, offset, n, piece_host))
                    pending[task] = (offset, n)
                else:
                    self.progress_update(n)
                offset += n
            if not pending:
                break
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                off, n = pending.pop(t)
                exc = t.exception()
                if isinstance(exc, CopyError):
                    if failed is None or off < failed[0]:
                        failed = (off, exc)
                elif exc is not None:
                    raise exc
                else:
                    self.progress_update(n)
            if (failed is not None or self.speed or self.is_cancelled()) and not pending:
                break
        if failed is not None:
            self.progress_current = failed[0]
            self._handle_error(failed[1])
            # Retrying (ignore/stop) yields first, as QEMU's loop sleeps.
            await self.sleep_ns(0)
            return failed[0]
        return offset

    # -- finalization ------------------------------------------------------------------

    async def prepare(self) -> None:
        """commit_prepare(): unfreeze, drop the base writer, drop the
        intermediate nodes (bdrv_drop_intermediate)."""
        self._prepared = True
        assert self.commit_top is not None
        unfreeze_backing_chain(self.commit_top, self.base)
        self.chain_frozen = False
        await self._drop_backend("base_writer")
        await drop_intermediate(self.graph, self.commit_top, self.top, self.base,
                                self.backing_file)

    async def abort(self) -> None:
        """commit_abort(): the filter leaves, the chain is as before."""
        if self.chain_frozen and self.commit_top is not None:
            unfreeze_backing_chain(self.commit_top, self.base)
            self.chain_frozen = False
        await self._drop_backend("base_writer")
        await self.remove_all_bdrv()
        if self.commit_top is not None and not self.commit_top.closed:
            await drop_filter(self.graph, self.commit_top)

    async def clean(self) -> None:
        """commit_clean(): the base goes back to read-only, the reader of top
        goes (the job's node edges go when the job is dismissed)."""
        if self.base_read_only and not self.base.closed and not self.base.read_only:
            try:
                await set_read_only(self.graph, self.base, True)
            except GenericError:
                pass
        await self._drop_backend("top_reader")


async def drop_intermediate(
    graph: NodeRegistry,
    commit_top: BlockNode,
    top: BlockNode,
    base: BlockNode,
    backing_file: str | None,
) -> None:
    """bdrv_drop_intermediate(): every parent of the filter now uses ``base``;
    backing parents get ``backing_file`` (default: the base's file name) and
    the base's format in their image header; ``base`` inherits from whatever
    ``top`` inherited from when it inherited through ``top``."""
    update_inherits = inherits_from_recursive(base, top)
    name = backing_file
    if name is None:
        name = FilenameCache().filename(base)
    fmt = base.driver.name
    parents = _movable_parents(commit_top, set())
    for c in parents:
        if c.frozen:
            raise GenericError(f"Cannot change '{c.name}' link to '{commit_top.node_name}'")
    for c in parents:
        replace_child(c, base)
    permissions.refresh([base, commit_top])
    if update_inherits:
        base.inherits_from = top.inherits_from
    for c in parents:
        p = c.parent
        if p is None or not (c.role & ChildRole.COW):
            continue
        change = getattr(p.driver, "change_backing_file", None)
        if change is None:
            continue
        if p.read_only:
            # QEMU cannot rewrite a read-only overlay's header either; the
            # chain in the file stays valid (the dropped layer still exists).
            continue
        await change(name, fmt)
        p.backing_file, p.backing_format = name, fmt
    # The filter (and with it the committed nodes nobody else holds) go.
    await release_after_drop(graph, commit_top)


async def release_after_drop(graph: NodeRegistry, commit_top: BlockNode) -> None:
    from blockd.graph.opener import unref

    if commit_top.closed:
        return
    if commit_top.refcount <= 0:
        commit_top.refcount = 1
        await unref(graph, commit_top)


def job_options(args: dict[str, Any]) -> tuple[bool, bool, str]:
    return (bool(args.get("auto-finalize", True)), bool(args.get("auto-dismiss", True)),
            str(args.get("on-error", "report")))


def check_chain_ops(top: BlockNode, base: BlockNode) -> None:
    """bdrv_op_is_blocked(COMMIT_TARGET) from top down to base included."""
    for node in chain_below(top):
        check_op_blocked(node)
        if node is base:
            break
