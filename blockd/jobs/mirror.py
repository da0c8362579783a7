"""Active commit: the mirror engine of QEMU's block/mirror.c committing the
active layer into a backing node (job type ``commit``).

The job marks everything allocated above ``base`` dirty (one bit per
granularity chunk, the base's cluster size between 4 KiB and 64 KiB), copies the
dirty chunks into ``base``, and once nothing is dirty goes ``ready``
(``BLOCK_JOB_READY``).  From then on every write to the top node (through the
implicit ``mirror_top`` filter or straight to the node, e.g. HMP ``qemu-io``)
marks its chunks dirty again and the job copies them within a slice (100 ms).

``job-complete`` copies what is still dirty and pivots: every parent of the top
node now uses ``base`` (which takes the top's read-only state).  A soft cancel
(``block-job-cancel`` on a ready job) ends the job successfully without the
pivot (``BLOCK_JOB_COMPLETED``); a forced cancel or a cancel before ready ends
with ``BLOCK_JOB_CANCELLED``.  In both cases the chain is left as it was and the
base stays read-write, as QEMU 7.2 leaves it.

Writes are tracked by wrapping the top driver's write entry points for the
job's life (QEMU's dirty bitmap on the source node sees every write the same
way); the wrappers are removed before the graph changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from blockd.drivers.base import BlockDriver, is_allocated_above
from blockd.drivers.locking import BLK_PERM_ALL
from blockd.drivers.mirror_top import MirrorTopDriver
from blockd.graph import permissions
from blockd.graph.backing import freeze_backing_chain, unfreeze_backing_chain
from blockd.graph.node import BdrvChild, BlockNode, replace_child
from blockd.graph.registry import NodeRegistry
from blockd.graph.users import attach_user, detach_user
from blockd.jobs.blockjob import BlockJob, JobBackend, create_block_job
from blockd.jobs.commit import (
    EXTENT_QUERY,
    PERM_READ,
    PERM_RESIZE,
    PERM_WRITE,
    PERM_WRITE_UNCHANGED,
    CopyError,
    RangeCopier,
    _movable_parents,
    add_intermediate_nodes,
    append_filter,
    cow_or_filter_child,
    drop_filter,
    errno_of,
    new_filter_node,
    release_nodes,
    set_read_only,
)
from blockd.jobs.job import JobFailed
from blockd.jobs.ratelimit import SLICE_NS
from blockd.qmp.errors import GenericError

if TYPE_CHECKING:
    from blockd.jobs.manager import JobManager

# DEFAULT_MIRROR_BUF_SIZE: at most 16 MiB in flight; one copy is at most 1 MiB
# under a speed limit (MAX_IO_BYTES), bigger without one.
BUF_SIZE = 16 * 1024 * 1024
MAX_IO_BYTES = 1024 * 1024
FAST_IO_BYTES = 4 * 1024 * 1024


class DirtyMap:
    """A dirty bitmap: one byte per ``granularity`` chunk, plus a count."""

    def __init__(self, length: int, granularity: int) -> None:
        self.granularity = granularity
        self.length = length
        self.bits = bytearray(-(-length // granularity) if length else 0)
        self.count = 0
        # The first chunk that may be dirty (scans start here).
        self.hint = 0

    def set(self, offset: int, n: int) -> None:
        if n <= 0:
            return
        g = self.granularity
        first, last = offset // g, min(len(self.bits), -(-(offset + n) // g))
        for i in range(first, last):
            if not self.bits[i]:
                self.bits[i] = 1
                self.count += 1
        self.hint = min(self.hint, first)

    def reset(self, offset: int, n: int) -> None:
        if n <= 0:
            return
        g = self.granularity
        for i in range(offset // g, min(len(self.bits), -(-(offset + n) // g))):
            if self.bits[i]:
                self.bits[i] = 0
                self.count -= 1

    def dirty_bytes(self) -> int:
        if not self.count:
            return 0
        total = self.count * self.granularity
        last = len(self.bits) - 1
        if self.bits[last]:
            total -= len(self.bits) * self.granularity - self.length
        return total

    def next_run(self, max_bytes: int) -> tuple[int, int] | None:
        """The first dirty run (offset, length), at most ``max_bytes`` long."""
        if not self.count:
            return None
        i = self.bits.find(1, self.hint)
        if i < 0:
            i = self.bits.find(1)
            if i < 0:
                return None
        self.hint = i
        g = self.granularity
        limit = max(1, max_bytes // g)
        j = self.bits.find(0, i, i + limit)
        end = (i + limit if j < 0 else j)
        end = min(end, len(self.bits))
        offset = i * g
        return offset, min(end * g, self.length) - offset


class WriteTracker:
    """Wraps a driver's write entry points so every write marks the dirty map."""

    _METHODS = ("write", "write_zeroes", "discard")

    def __init__(self, drv: BlockDriver, dirty: DirtyMap, on_write: Callable[[], None]) -> None:
        self.drv = drv
        self.dirty = dirty
        self.on_write = on_write
        self.installed = False

    def install(self) -> None:
        drv = self.drv
        tracker = self
        orig_write = drv.write
        orig_zeroes = drv.write_zeroes
        orig_discard = drv.discard

        async def write(offset: int, data: Any, **kw: Any) -> None:
            try:
                await orig_write(offset, data, **kw)
            finally:
                tracker._mark(offset, len(data))

        async def write_zeroes(offset: int, length: int, **kw: Any) -> None:
            try:
                await orig_zeroes(offset, length, **kw)
            finally:
                tracker._mark(offset, length)

        async def discard(offset: int, length: int) -> None:
            try:
                await orig_discard(offset, length)
            finally:
                tracker._mark(offset, length)

        drv.__dict__["write"] = write
        drv.__dict__["write_zeroes"] = write_zeroes
        drv.__dict__["discard"] = discard
        self.installed = True

    def _mark(self, offset: int, n: int) -> None:
        self.dirty.set(offset, n)
        self.on_write()

    def remove(self) -> None:
        if self.installed:
            for name in self._METHODS:
                self.drv.__dict__.pop(name, None)
            self.installed = False


def default_granularity(base: BlockDriver) -> int:
    """bdrv_get_default_bitmap_granularity(): the cluster size in [4K, 64K]."""
    cs = getattr(base, "cluster_size", 0)
    if isinstance(cs, int) and cs > 0:
        return min(65536, max(4096, cs))
    return 65536


class ActiveCommitJob(BlockJob):
    """commit_active_start() + mirror_run(): ``top`` is the active layer."""

    job_type = "commit"
    has_complete = True

    def __init__(
        self,
        manager: JobManager,
        job_id: str,
        graph: NodeRegistry,
        *,
        top: BlockNode,
        base: BlockNode,
        on_error: str,
        auto_finalize: bool,
        auto_dismiss: bool,
    ) -> None:
        super().__init__(manager, job_id, auto_finalize=auto_finalize,
                         auto_dismiss=auto_dismiss, on_error=on_error)
        self.graph = graph
        self.top = top
        self.base = base
        self.mirror_top: BlockNode | None = None
        self.chain_frozen = False
        self.should_complete = False
        self.synced = False
        self.prepared = False
        self.dirty: DirtyMap | None = None
        self.tracker: WriteTracker | None = None
        self.in_flight = 0
        self.target_writer: BdrvChild | None = None
        self._copier: RangeCopier | None = None

    async def setup(self, speed: int, filter_node_name: str | None) -> None:
        """commit_active_start() and mirror_start_job() in QEMU's order."""
        top, base = self.top, self.base
        base_read_only = base.read_only
        if base_read_only:
            await set_read_only(self.graph, base, False)
        try:
            self.mirror_top = new_filter_node(self.graph, MirrorTopDriver, filter_node_name,
                                              False)
            append_filter(self.mirror_top, top)
        except BaseException:
            if self.mirror_top is not None and not self.mirror_top.closed:
                await drop_filter(self.graph, self.mirror_top)
            if base_read_only:
                await _quiet_read_only(self.graph, base, True)
            raise
        try:
            await create_block_job(self, self.mirror_top, PERM_READ,
                             PERM_READ | PERM_WRITE_UNCHANGED | PERM_WRITE, speed)
        except BaseException:
            await drop_filter(self.graph, self.mirror_top)
            if base_read_only:
                await _quiet_read_only(self.graph, base, True)
            raise
        try:
            self.add_bdrv("source", top, 0, PERM_WRITE_UNCHANGED | PERM_WRITE | PERM_READ)
            c = cow_or_filter_child(top)
            add_intermediate_nodes(self, c.child if c is not None else None, base)
            freeze_backing_chain(self.mirror_top, base)
            self.chain_frozen = True
            self.add_bdrv("target", base, 0, BLK_PERM_ALL)
            # The job's own BlockBackend on the target (resizing only if the
            # base is shorter than the top).
            perm = PERM_WRITE
            if base.driver.get_length() < top.driver.get_length():
                perm |= PERM_RESIZE
            self.target_writer = attach_user(base, "root", perm,
                                             PERM_READ | PERM_WRITE | PERM_WRITE_UNCHANGED,
                                             desc=f"commit job '{self.id}'")
        except BaseException:
            if self.chain_frozen:
                unfreeze_backing_chain(self.mirror_top, base)
                self.chain_frozen = False
            await self._drop_target_writer()
            await self.remove_all_bdrv()
            await drop_filter(self.graph, self.mirror_top)
            if base_read_only:
                await _quiet_read_only(self.graph, base, True)
            await self.early_fail()
            raise

    @property
    def backends(self) -> list[JobBackend]:
        return [JobBackend(self.target_writer)] if self.target_writer is not None else []

    async def _drop_target_writer(self) -> None:
        c, self.target_writer = self.target_writer, None
        if c is not None:
            detach_user(c)

    # -- verbs -------------------------------------------------------------------------

    def cancel_hook(self, force: bool) -> bool:
        """mirror_cancel(): a cancel of a ready job is soft unless forced."""
        return force or not self.is_ready()

    def complete_hook(self) -> None:
        """mirror_complete(): pivot once nothing is dirty any more."""
        if not self.synced:
            raise GenericError(f"The active block job '{self.id}' cannot be completed")
        self.should_complete = True
        self.enter()

    # -- run ---------------------------------------------------------------------------

    def _stop_requested(self) -> bool:
        return self.is_cancelled() or (self.cancelled and self.synced)

    async def run(self) -> None:
        top, base = self.top.driver, self.base.driver
        length = top.get_length()
        if base.get_length() < length:
            await base.truncate(length)
        dirty = DirtyMap(length, default_granularity(base))
        self.dirty = dirty
        self.tracker = WriteTracker(top, dirty, self._kick)
        self.tracker.install()
        await self._dirty_init(top, base, dirty, length)
        tasks: dict[asyncio.Task[None], tuple[int, int]] = {}
        failure: BaseException | None = None
        try:
            while True:
                if self.is_cancelled():
                    break
                self.progress_set_remaining(self.in_flight + dirty.dirty_bytes())
                if self.speed and not tasks and dirty.count:
                    # mirror_iteration(): the whole contiguous dirty run (up to
                    # the buffer size) in pieces of at most 1 MiB, then the
                    # rate limit accounts for it.
                    await self.ratelimit_sleep()
                    if self.is_cancelled():
                        break
                    run = dirty.next_run(BUF_SIZE)
                    if run is not None:
                        self._issue(tasks, top, base, run, MAX_IO_BYTES)
                # Without a limit: keep the buffer full of bigger pieces.
                while not self.speed and dirty.count and self.in_flight < BUF_SIZE:
                    run = dirty.next_run(FAST_IO_BYTES)
                    if run is None:
                        break
                    self._issue(tasks, top, base, run, FAST_IO_BYTES)
                if tasks:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        off, n = tasks.pop(t)
                        self.in_flight -= n
                        exc = t.exception()
                        if exc is None:
                            self.progress_update(n)
                            if self.speed:
                                self.ratelimit_delay(n)
                            continue
                        dirty.set(off, n)
                        if not isinstance(exc, CopyError):
                            raise exc
                        action = self.error_action(exc.is_read, errno_of(exc.cause))
                        if action == "report":
                            failure = exc
                    if failure is not None:
                        break
                    if not self.speed:
                        await self.sleep_ns(0)
                    continue
                # Nothing in flight and nothing dirty: in sync.
                if not dirty.count:
                    if not self.synced:
                        self.synced = True
                        self.progress_set_remaining(0)
                        self.transition_to_ready()
                    if self.should_complete or self._stop_requested():
                        break
                    await self.sleep_ns(SLICE_NS)
                else:
                    await self.pause_point()
                if self.is_cancelled():
                    break
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
                for off, n in tasks.values():
                    dirty.set(off, n)
                self.in_flight = 0
        if failure is not None:
            assert isinstance(failure, CopyError)
            raise JobFailed(-errno_of(failure.cause))

    def _issue(self, tasks: dict[asyncio.Task[None], tuple[int, int]], top: BlockDriver,
               base: BlockDriver, run: tuple[int, int], piece: int) -> None:
        """Clear a dirty run and start copying it in pieces."""
        assert self.dirty is not None
        off, n = run
        self.dirty.reset(off, n)
        end = off + n
        while off < end:
            k = min(piece, end - off)
            self.in_flight += k
            tasks[asyncio.ensure_future(self._copy(top, base, off, k))] = (off, k)
            off += k

    def _kick(self) -> None:
        if self.synced:
            self.enter()

    async def _dirty_init(self, top: BlockDriver, base: BlockDriver, dirty: DirtyMap,
                          length: int) -> None:
        """mirror_dirty_init(): everything allocated above base is dirty."""
        offset = 0
        while offset < length:
            await self.pause_point()
            if self.is_cancelled():
                return
            allocated, n = await is_allocated_above(top, base, offset,
                                                    min(EXTENT_QUERY, length - offset))
            # Each query is CPU work on the event loop: let QMP in between.
            await asyncio.sleep(0)
            n = max(1, n)
            if allocated:
                dirty.set(offset, n)
            offset += n
        self.progress_set_remaining(dirty.dirty_bytes())

    async def _copy(self, top: BlockDriver, base: BlockDriver, offset: int, n: int) -> None:
        if self._copier is None:
            self._copier = RangeCopier(top, base, base, may_unmap=True)
        await self._copier.copy(offset, n)

    async def _sync_rest(self) -> None:
        """Copy what is still dirty (writes that raced with the last pass)."""
        dirty, top, base = self.dirty, self.top.driver, self.base.driver
        if dirty is None:
            return
        while dirty.count:
            run = dirty.next_run(FAST_IO_BYTES)
            if run is None:
                break
            off, n = run
            dirty.reset(off, n)
            try:
                await self._copy(top, base, off, n)
            except CopyError as e:
                dirty.set(off, n)
                raise JobFailed(-errno_of(e.cause)) from e
            self.progress_update(n)

    # -- finalization ------------------------------------------------------------------

    async def prepare(self) -> None:
        await self._exit_common(abort=False)

    async def abort(self) -> None:
        await self._exit_common(abort=True)

    async def _exit_common(self, abort: bool) -> None:
        """mirror_exit_common(): pivot if asked and successful, then the filter
        leaves the graph and the job lets go of every node."""
        if self.prepared:
            return
        self.prepared = True
        mt = self.mirror_top
        assert mt is not None
        pivot = self.should_complete and not abort
        if pivot:
            await self._sync_rest()
        if self.tracker is not None:
            self.tracker.remove()
        if isinstance(mt.driver, MirrorTopDriver):
            mt.driver.stopped = True
        if self.chain_frozen:
            unfreeze_backing_chain(mt, self.base)
            self.chain_frozen = False
        await self._drop_target_writer()
        await self.remove_all_bdrv()
        if pivot:
            top, base = self.top, self.base
            if top.read_only != base.read_only:
                await _quiet_read_only(self.graph, base, top.read_only)
            # bdrv_replace_node(top, base): parents that would not make a loop.
            for c in _movable_parents(top, set()):
                if c.parent is not None and _reaches(base, c.parent):
                    continue
                replace_child(c, base)
            try:
                permissions.refresh([base, top])
            except GenericError:
                pass
        await drop_filter(self.graph, mt)
        if pivot:
            # The replaced node closes when nothing holds it any more (a
            # node opened inline under the top's old parents).
            await release_nodes(self.graph, [self.top])


def _reaches(node: BlockNode, target: BlockNode) -> bool:
    from blockd.graph.node import has_descendant

    return has_descendant(node, target)


async def _quiet_read_only(graph: NodeRegistry, node: BlockNode, ro: bool) -> None:
    if node.closed or node.read_only == ro:
        return
    try:
        await set_read_only(graph, node, ro)
    except GenericError:
        pass
