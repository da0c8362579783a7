"""Named nodes of one daemon (QEMU's graph_bdrv_states list and node names)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blockd.graph.naming import AutoNamer
from blockd.graph.node import BlockNode
from blockd.qmp.errors import GenericError


class NodeRegistry:
    """Every node of the daemon by node name, in creation order.

    Nodes are registered before their parent is opened (children first), as
    QEMU inserts into graph_bdrv_states when a node gets its name.
    """

    def __init__(self, emit: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self._nodes: dict[str, BlockNode] = {}
        # Generator of "#blockNNN" names (QEMU's id_generate(ID_BLOCK)).
        self.namer = AutoNamer()
        # The daemon's event emitter (EventBus.emit), for node events.
        self._emit = emit

    def lookup(self, node_name: str) -> BlockNode | None:
        """The node named ``node_name`` or None (bdrv_find_node)."""
        return self._nodes.get(node_name)

    def find(self, device: str | None, node_name: str | None) -> BlockNode:
        """bdrv_lookup_bs(): QEMU's text when neither names anything.

        The storage daemon has no devices with a medium, so ``device`` only
        matters for the error text.
        """
        if node_name is not None:
            node = self._nodes.get(node_name)
            if node is not None:
                return node
        raise GenericError(
            f"Cannot find device='{device or ''}' nor node-name='{node_name or ''}'"
        )

    def named_nodes(self) -> list[BlockNode]:
        """All nodes, most recently added first (query-named-block-nodes order)."""
        return list(reversed(self._nodes.values()))

    def all_nodes(self) -> list[BlockNode]:
        """All nodes in creation order."""
        return list(self._nodes.values())

    def __contains__(self, node_name: object) -> bool:
        return node_name in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def add(self, node: BlockNode) -> None:
        if node.node_name in self._nodes:
            raise GenericError(f"Duplicate nodes with node-name='{node.node_name}'")
        self._nodes[node.node_name] = node
        if self._emit is not None and hasattr(node.driver, "on_corruption"):
            node.driver.on_corruption = self._corruption_reporter(node.node_name)

    def _corruption_reporter(self, node_name: str) -> Callable[[str, bool, int, int], None]:
        """BLOCK_IMAGE_CORRUPTED for a format driver's corruption report.

        ``device`` is the BlockBackend's name: always empty here, as the
        storage daemon's backends are anonymous; offset and size only when the
        report concerns a host range (QEMU passes -1 otherwise).
        """
        emit = self._emit
        assert emit is not None

        def report(msg: str, fatal: bool, offset: int, size: int) -> None:
            data: dict[str, Any] = {"device": "", "node-name": node_name, "msg": msg}
            if offset >= 0:
                data["offset"] = offset
            if size >= 0:
                data["size"] = size
            data["fatal"] = fatal
            emit("BLOCK_IMAGE_CORRUPTED", data)

        return report

    def remove(self, node: BlockNode) -> None:
        if self._nodes.get(node.node_name) is node:
            del self._nodes[node.node_name]
