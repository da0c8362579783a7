"""Drained sections (QEMU's bdrv_drained_begin/end) as far as jobs see them.

Draining a node quiesces every user above it; a block job among them is paused
(child_job_drained_begin -> job_pause) and reaches its pause point, so QEMU
emits ``JOB_STATUS_CHANGE paused`` and, when the section ends, ``running``, both
before the reply of the command that drained (blockdev-reopen does, even when
the reopen then fails).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

from blockd.graph.node import BlockNode
from blockd.jobs.blockjob import BlockJob
from blockd.jobs.manager import JobManager


def jobs_above(manager: JobManager, nodes: Iterable[BlockNode]) -> list[BlockJob]:
    """Block jobs with an edge on ``nodes`` or on any node above them."""
    seen: set[int] = set()
    stack = list(nodes)
    edges: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        for c in n.parents:
            if c.parent is None:
                edges.add(id(c))
            else:
                stack.append(c.parent)
    out: list[BlockJob] = []
    for job in manager.block_jobs():
        own = [*job.graph_children, *job.extra_edges()]
        if any(id(c) in edges for c in own):
            out.append(job)
    return out


async def _wait_quiet(job: BlockJob, timeout: float = 30.0) -> None:
    """Until the job sits at a pause point (or has finished running)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if job.paused or job.deferred_to_main_loop or job.is_completed() or not job.started:
            return
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def drained(manager: JobManager | None, nodes: Iterable[BlockNode]) -> AsyncIterator[None]:
    """Pause the jobs above ``nodes`` for the section, resume them after."""
    if manager is None:
        yield
        return
    jobs = [j for j in jobs_above(manager, nodes) if not j.is_completed()]
    for job in jobs:
        job.pause()
    try:
        for job in jobs:
            await _wait_quiet(job)
        yield
    finally:
        for job in jobs:
            if job.status != "null":
                job.resume()
        for job in jobs:
            await manager.settle(job)
