"""block-stream: QEMU 7.2's qmp_block_stream() argument checks, in its order and
with its texts, then :func:`blockd.jobs.stream.start_stream`."""

from __future__ import annotations

from typing import Any

from blockd.jobs.blockjob import check_op_blocked
from blockd.jobs.graphops import chain_contains, chain_next, find_backing_image, iter_chain
from blockd.jobs.manager import get_manager
from blockd.jobs.stream import start_stream
from blockd.qmp.dispatch import CommandContext, qmp_command
from blockd.qmp.errors import GenericError


@qmp_command("block-stream")
async def block_stream(ctx: CommandContext, args: dict[str, Any]) -> None:
    graph = ctx.daemon.graph
    manager = get_manager(ctx.daemon)
    device = str(args["device"])
    base = args.get("base")
    base_node = args.get("base-node")
    bottom = args.get("bottom")
    backing_file = args.get("backing-file")
    if base is not None and base_node is not None:
        raise GenericError("'base' and 'base-node' cannot be specified at the same time")
    if base is not None and bottom is not None:
        raise GenericError("'base' and 'bottom' cannot be specified at the same time")
    if bottom is not None and base_node is not None:
        raise GenericError("'bottom' and 'base-node' cannot be specified at the same time")

    bs = graph.find(device, device)
    base_bs = None
    bottom_bs = None
    if base is not None:
        base_bs = find_backing_image(bs, str(base))
        if base_bs is None:
            raise GenericError(f"Can't find '{base}' in the backing chain")
    if base_node is not None:
        base_bs = graph.find(None, str(base_node))
        if base_bs is bs or not chain_contains(bs, base_bs):
            raise GenericError(f"Node '{base_node}' is not a backing image of '{device}'")
    if bottom is not None:
        bottom_bs = graph.find(None, str(bottom))
        if bottom_bs.closed:
            raise GenericError(f"Node '{bottom}' is not open")
        if bottom_bs.driver.is_filter:
            raise GenericError(
                f"Node '{bottom}' is a filter, use a non-filter node as 'bottom'"
            )
        if not chain_contains(bs, bottom_bs):
            raise GenericError(f"Node '{bottom}' is not in a chain starting from '{device}'")

    # Op blockers on the whole chain between bs and base (or bottom).
    iter_end = chain_next(bottom_bs) if bottom_bs is not None else base_bs
    for node in iter_chain(bs, iter_end):
        check_op_blocked(node)

    if base_bs is None and backing_file is not None:
        raise GenericError("backing file specified, but streaming the entire chain")

    job = await start_stream(
        manager, graph,
        job_id=str(args.get("job-id", "")),
        bs=bs, base=base_bs,
        backing_file=None if backing_file is None else str(backing_file),
        bottom=bottom_bs,
        auto_finalize=bool(args.get("auto-finalize", True)),
        auto_dismiss=bool(args.get("auto-dismiss", True)),
        speed=int(args.get("speed", 0)),
        on_error=str(args.get("on-error", "report")),
        filter_node_name=args.get("filter-node-name"),
    )
    await manager.settle(job)
