"""block-commit (blockdev.c's qmp_block_commit): argument checks in QEMU's
order and texts, then an intermediate commit (:mod:`blockd.jobs.commit`) or,
when ``top`` is the active layer or has a writer, an active commit
(:mod:`blockd.jobs.mirror`)."""

from __future__ import annotations

from typing import Any

from blockd.graph.filename import FilenameCache
from blockd.graph.node import BlockNode
from blockd.graph.permissions import cumulative
from blockd.jobs.blockjob import check_op_blocked
from blockd.jobs.commit import (
    PERM_WRITE,
    CommitJob,
    chain_below,
    check_chain_ops,
    find_backing_image,
    find_overlay,
    get_root_bs,
    job_options,
    skip_filters,
)
from blockd.jobs.manager import get_manager
from blockd.jobs.mirror import ActiveCommitJob
from blockd.qmp.dispatch import CommandContext, qmp_command
from blockd.qmp.errors import GenericError


def _chain_contains(top: BlockNode, base: BlockNode) -> bool:
    """bdrv_chain_contains(): ``base`` is ``top`` or below it."""
    return any(n is base for n in chain_below(top))


def _find_base(top: BlockNode) -> BlockNode:
    """bdrv_find_base(): the last node of the backing chain (filters skipped)."""
    last = top
    for n in chain_below(top):
        if not n.driver.is_filter:
            last = n
    return last


@qmp_command("block-commit")
async def block_commit(ctx: CommandContext, args: dict[str, Any]) -> None:
    daemon = ctx.daemon
    graph = daemon.graph
    manager = get_manager(daemon)
    speed = int(args.get("speed", 0))
    auto_finalize, auto_dismiss, on_error = job_options(args)
    device = str(args["device"])
    # libvirt probes with DeviceNotFound: the device lookup comes first.
    bs = get_root_bs(graph, device)
    check_op_blocked(bs)

    top_node, top = args.get("top-node"), args.get("top")
    top_bs: BlockNode | None = bs
    if top_node is not None and top is not None:
        raise GenericError("'top-node' and 'top' are mutually exclusive")
    if top_node is not None:
        top_bs = graph.find(None, str(top_node))
        if not _chain_contains(bs, top_bs):
            raise GenericError(f"'{top_node}' is not in this backing file chain")
    elif top is not None:
        if FilenameCache().filename(bs) != top:
            top_bs = find_backing_image(bs, str(top))
    if top_bs is None:
        raise GenericError(f"Top image file {top if top is not None else 'NULL'} not found")

    base_node, base = args.get("base-node"), args.get("base")
    if base_node is not None and base is not None:
        raise GenericError("'base-node' and 'base' are mutually exclusive")
    if base_node is not None:
        base_bs = graph.find(None, str(base_node))
        if not _chain_contains(top_bs, base_bs):
            raise GenericError(f"'{base_node}' is not in this backing file chain")
    elif base is not None:
        found = find_backing_image(top_bs, str(base))
        if found is None:
            raise GenericError(f"Can't find '{base}' in the backing chain")
        base_bs = found
    else:
        base_bs = _find_base(top_bs)

    check_chain_ops(top_bs, base_bs)
    if top_bs is base_bs:
        raise GenericError("cannot commit an image into itself")

    job_id = args.get("job-id")
    backing_file = args.get("backing-file")
    filter_name = args.get("filter-node-name")
    top_perm = cumulative(top_bs)[0]
    is_active = skip_filters(top_bs) is skip_filters(bs)
    if top_perm & PERM_WRITE or is_active:
        if backing_file is not None:
            if is_active:
                raise GenericError("'backing-file' specified, but 'top' is the active layer")
            raise GenericError("'backing-file' specified, but 'top' has a writer on it")
        # The job is named after the device even when top is below it; in
        # the storage daemon a node has no device name, so that is "".
        job = ActiveCommitJob(
            manager, str(job_id) if job_id is not None else "", graph,
            top=top_bs, base=base_bs, on_error=on_error,
            auto_finalize=auto_finalize, auto_dismiss=auto_dismiss)
        await job.setup(speed, None if filter_name is None else str(filter_name))
        job.start()
        return

    overlay = find_overlay(bs, top_bs)
    if overlay is not None:
        check_op_blocked(overlay)
    commit = CommitJob(
        manager, str(job_id) if job_id is not None else "", graph,
        bs=bs, top=top_bs, base=base_bs,
        backing_file=None if backing_file is None else str(backing_file),
        on_error=on_error, auto_finalize=auto_finalize, auto_dismiss=auto_dismiss)
    await commit.setup(speed, None if filter_name is None else str(filter_name))
    commit.start()
