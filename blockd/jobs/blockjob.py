"""Block jobs (QEMU's blockjob.c): a job over block nodes.

Adds to :class:`~blockd.jobs.job.Job`: the BLOCK_JOB_* events in QEMU's order
and shapes, speed with the slice rate limiter, on-error handling with
BLOCK_JOB_ERROR and io-status, the nodes the job uses (its own graph edges,
``graph_children``, with the permissions it takes) and the op blocker it puts
on them (``Node 'x' is busy: block device is in use by block job: stream``).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blockd.drivers.base import ChildRole
from blockd.graph import permissions
from blockd.graph.node import BdrvChild, BlockNode, attach_child, detach_child
from blockd.jobs.job import Job
from blockd.jobs.ratelimit import RateLimit
from blockd.qmp.errors import GenericError

if TYPE_CHECKING:
    from blockd.jobs.manager import JobManager

ON_ERROR = ("report", "ignore", "enospc", "stop", "auto")


@dataclass(eq=False)
class JobBackend:
    """A job's own anonymous BlockBackend (s->blk): x-debug-query-block-graph
    shows it as a "block-backend" node named "" with a "root" edge; query-block
    does not list it (not monitor-owned)."""

    root: BdrvChild
    name: str = ""


class BlockJob(Job):
    """A job with a main node; ``device`` in its events is the job id."""

    def __init__(
        self,
        manager: JobManager,
        job_id: str,
        *,
        auto_finalize: bool = True,
        auto_dismiss: bool = True,
        on_error: str = "report",
    ) -> None:
        super().__init__(manager, job_id, auto_finalize=auto_finalize, auto_dismiss=auto_dismiss)
        self.speed = 0
        self.limit = RateLimit()
        self.iostatus = "ok"
        self.on_error = on_error
        # Edges from the job to the nodes it uses (block_job_add_bdrv).
        self.graph_children: list[BdrvChild] = []
        self.blocker = f"block device is in use by block job: {self.job_type}"
        # The daemon's NodeRegistry (for closing nodes the job releases).
        self.graph: Any = None

    # -- nodes --------------------------------------------------------------------

    def add_bdrv(self, name: str, node: BlockNode, perm: int, shared: int) -> BdrvChild:
        """block_job_add_bdrv(): a job edge to ``node`` taking ``perm``; the node
        gets this job's op blocker.  QEMU's permission error on conflict."""
        c = attach_child(
            None, node, name, ChildRole(0), perm=perm, shared=shared,
            user_desc=f"{self.job_type} job '{self.id}'",
        )
        try:
            permissions.refresh([node])
        except GenericError:
            detach_child(c)
            permissions.refresh([node])
            raise
        self.graph_children.insert(0, c)
        node.blockers.insert(0, self.blocker)
        return c

    async def remove_all_bdrv(self) -> None:
        """block_job_remove_all_bdrv(): drop every job edge (and its blocker);
        nodes only the job still held (streamed-out intermediates) close."""
        for c in list(self.graph_children):
            await self.remove_bdrv(c)

    async def remove_bdrv(self, c: BdrvChild) -> None:
        """Drop one job edge; close the node if nothing else references it."""
        from blockd.graph.opener import unref

        if c in self.graph_children:
            self.graph_children.remove(c)
        node = c.child
        detach_child(c)
        if self.blocker in node.blockers:
            node.blockers.remove(self.blocker)
        if node.closed:
            return
        if node.refcount <= 0 and not node.monitor_owned:
            node.refcount = 1
            await unref(self.graph_registry(), node)
            return
        try:
            permissions.refresh([node])
        except GenericError:
            pass

    def graph_registry(self) -> Any:
        """The NodeRegistry the job's nodes live in (set by the job type)."""
        return self.graph

    def set_child_perm(self, c: BdrvChild, perm: int, shared: int) -> None:
        """Change what one job edge takes (blk_set_perm on the job's backend)."""
        old = (c.perm, c.shared_perm)
        c.perm, c.shared_perm = perm, shared
        try:
            permissions.refresh([c.child])
        except GenericError:
            c.perm, c.shared_perm = old
            raise

    def extra_edges(self) -> list[BdrvChild]:
        """Job-owned edges besides graph_children (a job's own BlockBackend)."""
        return [b.root for b in self.backends]

    @property
    def backends(self) -> list[JobBackend]:
        """The job's own BlockBackends (for x-debug-query-block-graph)."""
        return []

    def blocks(self, node: BlockNode) -> bool:
        return any(c.child is node for c in self.graph_children)

    # -- speed --------------------------------------------------------------------

    def set_speed(self, speed: int) -> None:
        """block_job_set_speed(): verb check, sign check, then kick a sleeper."""
        self.apply_verb("set-speed")
        if speed < 0:
            raise GenericError("Parameter 'speed' expects a non-negative value")
        old = self.speed
        self.limit.set_speed(speed)
        self.speed = speed
        self.on_speed_change()
        if speed and speed <= old:
            return
        self.enter_if_timer_pending()

    def ratelimit_delay(self, n: int) -> int:
        """block_job_ratelimit_get_delay(): ns to wait after ``n`` bytes."""
        return self.limit.calculate_delay(n)

    async def ratelimit_sleep(self) -> None:
        """block_job_ratelimit_sleep(): wait while over quota (0 = just yield)."""
        while True:
            delay = self.limit.calculate_delay(0)
            await self.sleep_ns(delay)
            if not delay or self.is_cancelled():
                return

    # -- errors -------------------------------------------------------------------

    def error_action(self, is_read: bool, error: int) -> str:
        """block_job_error_action(): decide, emit BLOCK_JOB_ERROR, stop if asked.

        ``error`` is a positive errno.  Returns "report", "ignore" or "stop".
        """
        if self.on_error in ("enospc", "auto"):
            action = "stop" if error == errno.ENOSPC else "report"
        else:
            action = self.on_error
        if not self.is_cancelled():
            self.manager.events.emit("BLOCK_JOB_ERROR", {
                "device": self.id,
                "operation": "read" if is_read else "write",
                "action": action,
            })
        if action == "stop":
            if not self.user_paused:
                self.pause()
                self.user_paused = True
            self.iostatus = "nospace" if error == errno.ENOSPC else "failed"
        return action

    def user_resume_hook(self) -> None:
        # block_job_user_resume(): a resumed job starts with a clean io-status.
        self.iostatus = "ok"

    # -- events -------------------------------------------------------------------

    def _progress_event(self) -> dict[str, Any]:
        return {
            "type": self.job_type,
            "device": self.id,
            "len": self.progress_total,
            "offset": self.progress_current,
            "speed": self.speed,
        }

    def on_completed(self) -> None:
        data = self._progress_event()
        if self.ret < 0:
            data["error"] = self.err if self.err is not None else os.strerror(-self.ret)
        self.manager.events.emit("BLOCK_JOB_COMPLETED", data)

    def on_cancelled(self) -> None:
        self.manager.events.emit("BLOCK_JOB_CANCELLED", self._progress_event())

    def on_pending(self) -> None:
        self.manager.events.emit("BLOCK_JOB_PENDING", {"type": self.job_type, "id": self.id})

    def on_ready(self) -> None:
        self.manager.events.emit("BLOCK_JOB_READY", self._progress_event())

    # -- finalization -------------------------------------------------------------

    async def clean(self) -> None:
        await super().clean()

    async def free(self) -> None:
        # block_job_free(): the job's edges go when the job does.
        await self.remove_all_bdrv()
        await super().free()

    # -- queries ------------------------------------------------------------------

    def block_info(self) -> dict[str, Any]:
        """BlockJobInfo (query-block-jobs), members in schema order."""
        out: dict[str, Any] = {
            "type": self.job_type,
            "device": self.id,
            "len": self.progress_total,
            "offset": self.progress_current,
            "busy": self.busy,
            "paused": self.pause_count > 0,
            "speed": self.speed,
            "io-status": self.iostatus,
            "ready": self.is_ready(),
            "status": self.status,
            "auto-finalize": self.auto_finalize,
            "auto-dismiss": self.auto_dismiss,
        }
        if self.ret:
            out["error"] = self.err if self.err is not None else os.strerror(-self.ret)
        return out


async def create_block_job(
    job: BlockJob,
    main_node: BlockNode,
    perm: int,
    shared: int,
    speed: int,
    main_name: str = "main node",
) -> None:
    """block_job_create(): id checks, ``created``, the main node edge, speed.

    After ``created`` any failure makes the job go to ``null`` before the error
    is raised (job_early_fail), as QSD emits those two events before the reply.
    """
    job.manager.check_new_id(job.id)
    job.create()
    try:
        job.add_bdrv(main_name, main_node, perm, shared)
        if speed < 0:
            raise GenericError("Parameter 'speed' expects a non-negative value")
        job.limit.set_speed(speed)
        job.speed = speed
    except BaseException:
        await job.early_fail()
        raise


def op_blocker(node: BlockNode) -> str | None:
    """The newest job blocker on ``node`` (bdrv_op_is_blocked's first entry for
    the operations backing files do not block: stream, commit target)."""
    return node.blockers[0] if node.blockers else None


def check_op_blocked(node: BlockNode) -> None:
    """Raise ``Node 'x' is busy: ...`` when a job blocks ``node``."""
    reason = op_blocker(node)
    if reason is not None:
        raise GenericError(f"Node '{node.node_name}' is busy: {reason}")
