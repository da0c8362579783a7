"""query-blockstats replies (QEMU's qmp_query_blockstats, block/qapi.c).

Without ``query-nodes`` there is one entry per BlockBackend that has a name or
a device (blockd's device backends): the BlockBackend's counters as
``stats``, the node below it (implicit job filters skipped) with its ``parent``
(``file`` child) and ``backing`` chain.  With ``query-nodes: true`` every named
node gets an entry, oldest first, with its ``parent`` chain only; node-level
``stats`` carry only ``wr_highest_offset``, all other counters are zero, as in
QEMU (the I/O counters live in BlockBackends).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from blockd.graph.accounting import BlockAcctStats, empty_device_stats, node_stats
from blockd.graph.node import BlockNode
from blockd.graph.query import skip_implicit_filters


def _file_child(node: BlockNode) -> BlockNode | None:
    """bs->file: the child in the driver's ``file`` slot."""
    for c in node.children:
        if c.slot == "file":
            return c.child
    return None


def _backing_child(node: BlockNode) -> BlockNode | None:
    """bs->backing: the child in the driver's ``backing`` slot."""
    for c in node.children:
        if c.slot == "backing":
            return c.child
    return None


def bds_stats(node: BlockNode, blk_level: bool) -> dict[str, Any]:
    """bdrv_query_bds_stats(): one BlockStats for ``node`` and what is below it.

    ``blk_level``: for a BlockBackend's entry, implicit filters are skipped
    and the backing chain follows; a node-level entry stays at the exact node
    and shows only its ``file`` chain.
    """
    # Iterative over the chain: deep backing chains must not hit the
    # recursion limit.
    root: dict[str, Any] = {}
    todo: list[tuple[BlockNode, dict[str, Any]]] = [(node, root)]
    while todo:
        cur, out = todo.pop()
        if blk_level:
            cur = skip_implicit_filters(cur)
        if cur.node_name:
            out["node-name"] = cur.node_name
        ns = node_stats(cur.driver)
        out["stats"] = empty_device_stats(ns.wr_highest_offset)
        specific = ns.driver_specific(cur.driver.name)
        if specific is not None:
            out["driver-specific"] = specific
        file = _file_child(cur)
        if file is not None:
            out["parent"] = {}
            todo.append((file, out["parent"]))
        backing = _backing_child(cur) if blk_level else None
        if backing is not None:
            out["backing"] = {}
            todo.append((backing, out["backing"]))
    return root


def backend_stats(backend: Any) -> dict[str, Any] | None:
    """The entry of one BlockBackend, None for one QEMU leaves out (no name
    and no device).  ``backend`` offers ``name``, ``qdev`` (device id or QOM
    path, "" without a device), ``root`` (its edge, None when empty) and
    ``stats`` (a :class:`BlockAcctStats`)."""
    name = str(getattr(backend, "name", "") or "")
    qdev = str(getattr(backend, "qdev", "") or "")
    if not name and not qdev:
        return None
    root = getattr(backend, "root", None)
    if root is not None:
        entry = bds_stats(root.child, True)
    else:
        entry = {"stats": empty_device_stats()}
    entry["device"] = name
    if qdev:
        entry["qdev"] = qdev
    acct = getattr(backend, "stats", None)
    if not isinstance(acct, BlockAcctStats):
        acct = BlockAcctStats()
    entry["stats"] = acct.device_stats(entry["stats"]["wr_highest_offset"])
    return entry


def query_blockstats(
    backends: Iterable[Any], nodes: Iterable[BlockNode], query_nodes: bool
) -> list[dict[str, Any]]:
    """The reply: per BlockBackend (``backends``, oldest first) or, with
    ``query_nodes``, per named node (``nodes``, oldest first)."""
    if query_nodes:
        return [bds_stats(n, False) for n in nodes]
    out = []
    for backend in backends:
        entry = backend_stats(backend)
        if entry is not None:
            out.append(entry)
    return out
