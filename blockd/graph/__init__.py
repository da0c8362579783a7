"""The daemon's block graph: nodes, edges, permissions, blockdev-add/del/reopen.

``node`` holds the data model (BlockNode, BdrvChild and the one edge primitive),
``registry`` the named nodes, ``permissions`` QEMU 7.2's permission rules,
``opener`` blockdev-add, ``reopen`` the transactional reopen queue.
"""

from blockd.graph.node import BdrvChild, BlockNode, attach_child, detach_child, replace_child
from blockd.graph.registry import NodeRegistry

__all__ = [
    "BdrvChild",
    "BlockNode",
    "NodeRegistry",
    "attach_child",
    "detach_child",
    "replace_child",
]
