"""Block query commands: query-named-block-nodes, query-block, query-blockstats,
x-debug-query-block-graph.

The replies are built by :mod:`blockd.graph.query` from the daemon's node graph
(``daemon.graph``, a NodeRegistry).  Block backends (devices, exports) and block
jobs appear when the daemon offers them as ``daemon.block_backends`` and
``daemon.block_jobs`` (see :func:`blockd.graph.query.query_block` and
:func:`blockd.graph.query.xdbg_block_graph` for what each object provides).
"""

from __future__ import annotations

from typing import Any

from blockd.graph.blockstats import query_blockstats
from blockd.graph.node import BlockNode
from blockd.graph.query import named_block_nodes, query_block, xdbg_block_graph
from blockd.qmp.dispatch import CommandContext, qmp_command


def _named_nodes(daemon: Any) -> list[BlockNode]:
    """Named nodes, most recently named first (empty before the graph exists)."""
    graph = getattr(daemon, "graph", None)
    if graph is None:
        return []
    nodes: list[BlockNode] = graph.named_nodes()
    return nodes


def _iter_attr(daemon: Any, name: str) -> list[Any]:
    value = getattr(daemon, name, None)
    if value is None:
        return []
    if isinstance(value, dict):
        return list(value.values())
    if callable(value):
        value = value()
    return list(value)


@qmp_command("query-named-block-nodes")
async def query_named_block_nodes(
    ctx: CommandContext, args: dict[str, Any]
) -> list[dict[str, Any]]:
    return named_block_nodes(_named_nodes(ctx.daemon), bool(args.get("flat", False)))


@qmp_command("query-block")
async def query_block_cmd(ctx: CommandContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    return query_block(_iter_attr(ctx.daemon, "block_backends"))


@qmp_command("query-blockstats")
async def query_blockstats_cmd(
    ctx: CommandContext, args: dict[str, Any]
) -> list[dict[str, Any]]:
    # Device backends oldest first; nodes in bdrv_next_node() order (the
    # order they got their names).
    nodes = list(reversed(_named_nodes(ctx.daemon)))
    return query_blockstats(_iter_attr(ctx.daemon, "block_backends"), nodes,
                            bool(args.get("query-nodes", False)))


@qmp_command("x-debug-query-block-graph")
async def x_debug_query_block_graph(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    # graph_bdrv_states order: the order nodes got their names.
    nodes = list(reversed(_named_nodes(ctx.daemon)))
    return xdbg_block_graph(
        nodes,
        _iter_attr(ctx.daemon, "block_backends"),
        _iter_attr(ctx.daemon, "block_jobs"),
    )
