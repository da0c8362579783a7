"""Job commands: job-* (job-qmp.c), block-job-* and the job queries (blockdev.c).

job-* look jobs up with ``Job not found`` (GenericError); block-job-* with
``Block job 'x' not found`` (DeviceNotActive), as QEMU 7.2.
"""

from __future__ import annotations

from typing import Any

from blockd.graph.node import BlockNode
from blockd.jobs.drain import drained
from blockd.jobs.manager import get_manager
from blockd.qmp.dispatch import REGISTRY, CommandContext, Handler, qmp_command
from blockd.qmp.errors import GenericError

# -- job-* -------------------------------------------------------------------------


@qmp_command("query-jobs")
async def query_jobs(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    return get_manager(ctx.daemon).query_jobs()


@qmp_command("job-pause")
async def job_pause(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = get_manager(ctx.daemon)
    job = mgr.find_job(args["id"])
    job.user_pause()
    await mgr.settle(job)


@qmp_command("job-resume")
async def job_resume(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = get_manager(ctx.daemon)
    job = mgr.find_job(args["id"])
    job.user_resume()
    await mgr.settle(job)


@qmp_command("job-cancel")
async def job_cancel(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = get_manager(ctx.daemon)
    job = mgr.find_job(args["id"])
    await job.user_cancel(True)
    await mgr.settle(job)


@qmp_command("job-complete")
async def job_complete(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = get_manager(ctx.daemon)
    job = mgr.find_job(args["id"])
    job.complete()
    # No settle(): QEMU replies before the completing job's waiting/pending
    # events (QSD's transcripts; users wait for the events, not the reply).


@qmp_command("job-finalize")
async def job_finalize(ctx: CommandContext, args: dict[str, Any]) -> None:
    await get_manager(ctx.daemon).find_job(args["id"]).finalize()


@qmp_command("job-dismiss")
async def job_dismiss(ctx: CommandContext, args: dict[str, Any]) -> None:
    await get_manager(ctx.daemon).find_job(args["id"]).dismiss()


# -- block-job-* -------------------------------------------------------------------


@qmp_command("query-block-jobs")
async def query_block_jobs(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    return get_manager(ctx.daemon).query_block_jobs()


@qmp_command("block-job-set-speed")
async def block_job_set_speed(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = get_manager(ctx.daemon)
    job = mgr.find_block_job(args["device"])
    job.set_speed(int(args["speed"]))
    await mgr.settle(job)


@qmp_command("block-job-cancel")
async def block_job_cancel(ctx: CommandContext, args: dict[str, Any]) -> None:
    device = str(args["device"])
    mgr = get_manager(ctx.daemon)
    job = mgr.find_block_job(device)
    force = bool(args.get("force", False))
    if job.user_paused and not force:
        raise GenericError(f"The block job for device '{device}' is currently paused")
    await job.user_cancel(force)
    await mgr.settle(job)


@qmp_command("block-job-pause")
async def block_job_pause(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = get_manager(ctx.daemon)
    job = mgr.find_block_job(args["device"])
    job.user_pause()
    await mgr.settle(job)


@qmp_command("block-job-resume")
async def block_job_resume(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = get_manager(ctx.daemon)
    job = mgr.find_block_job(args["device"])
    job.user_resume()
    await mgr.settle(job)


@qmp_command("block-job-complete")
async def block_job_complete(ctx: CommandContext, args: dict[str, Any]) -> None:
    mgr = get_manager(ctx.daemon)
    job = mgr.find_block_job(args["device"])
    job.complete()
    # No settle(): QEMU replies before the completing job's waiting/pending
    # events (QSD's transcripts; users wait for the events, not the reply).


@qmp_command("block-job-finalize")
async def block_job_finalize(ctx: CommandContext, args: dict[str, Any]) -> None:
    await get_manager(ctx.daemon).find_block_job(args["id"]).finalize()


@qmp_command("block-job-dismiss")
async def block_job_dismiss(ctx: CommandContext, args: dict[str, Any]) -> None:
    await get_manager(ctx.daemon).find_block_job(args["id"]).dismiss()


# -- drained sections around blockdev-reopen -----------------------------------------


def _reopen_queue_nodes(ctx: CommandContext, entries: list[Any]) -> list[BlockNode]:
    """The nodes bdrv_reopen_queue() drains: each named node (up to the first
    unknown name) and the children that inherit from it."""
    graph = getattr(ctx.daemon, "graph", None)
    out: list[BlockNode] = []
    if graph is None:
        return out
    for e in entries:
        name = e.get("node-name") if isinstance(e, dict) else None
        node = graph.lookup(str(name)) if name is not None else None
        if node is None:
            break
        stack = [node]
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(c.child for c in n.children if c.child.inherits_from is n)
    return out


def _drain_around(name: str, many: bool) -> None:
    """Wrap a registered reopen command in a drained section: jobs above the
    reopened nodes pause and resume around it, as in QEMU."""
    cmd = REGISTRY.get(name)
    if cmd is None:
        return
    inner: Handler = cmd.handler

    async def handler(ctx: CommandContext, args: dict[str, Any]) -> Any:
        mgr = getattr(ctx.daemon, "jobs", None)
        if mgr is None or not mgr.jobs:
            return await inner(ctx, args)
        entries = list(args.get("options", [])) if many else [args]
        async with drained(mgr, _reopen_queue_nodes(ctx, entries)):
            return await inner(ctx, args)

    cmd.handler = handler


_drain_around("blockdev-reopen", True)
_drain_around("x-blockdev-reopen", False)
