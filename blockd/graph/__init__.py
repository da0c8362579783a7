"""The daemon's block graph: nodes, edges, permissions, blockdev-add/del/reopen.

``node`` holds the data model (BlockNode, BdrvChild and the edge primitives),
``registry`` the named nodes, ``naming`` node-name rules and "#blockNNN" names,
``options`` QDict-style flattening and inheritance, ``permissions`` QEMU 7.2's
permission rules and the file locks, ``opener`` blockdev-add/-del and closing,
``reopen`` the transactional reopen queue, ``backing`` the chain edits jobs use
(set_backing, frozen links, replace/insert node), ``users`` non-node users
(jobs, exports, HMP's anonymous BlockBackend), ``filefd`` descriptor switching
(reopen, dynamic auto-read-only), ``consistency`` the invariant checker.
``query``/``filename`` (query commands) belong to the query engineer.
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
