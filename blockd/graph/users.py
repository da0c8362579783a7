"""Users of a node that are not nodes: block jobs, exports, BlockBackends.

They hold an edge with ``parent=None`` whose permissions their owner chooses;
the graph checks them like any other edge (QEMU's blk_insert_bs /
block_job_add_bdrv), and ``user_desc`` names the user in conflict messages
("stream job 'job0'", "block device 'vda'").
"""

from __future__ import annotations

from blockd.drivers.base import ChildRole
from blockd.drivers.locking import BLK_PERM_ALL
from blockd.graph import permissions
from blockd.graph.node import BdrvChild, BlockNode, attach_child, detach_child


def attach_user(
    node: BlockNode,
    name: str,
    perm: int,
    shared: int = BLK_PERM_ALL,
    desc: str = "",
    role: ChildRole = ChildRole.DATA | ChildRole.PRIMARY,
) -> BdrvChild:
    """Add a non-node user taking ``perm`` and sharing ``shared``; QEMU's error
    (and nothing changed) when the graph refuses it."""
    c = attach_child(None, node, name, role, perm=perm, shared=shared, user_desc=desc)
    try:
        permissions.refresh([node])
    except BaseException:
        detach_child(c)
        permissions.refresh([node])
        raise
    return c


def set_user_perms(c: BdrvChild, perm: int, shared: int) -> None:
    """Change what a user takes/shares (blk_set_perm); unchanged on error."""
    old = (c.perm, c.shared_perm)
    c.perm, c.shared_perm = perm, shared
    try:
        permissions.refresh([c.child])
    except BaseException:
        c.perm, c.shared_perm = old
        permissions.refresh([c.child])
        raise


def detach_user(c: BdrvChild) -> None:
    """Drop a user's edge and the permissions it held.  The node itself stays
    open (it belongs to the monitor or to its parents)."""
    node = c.child
    detach_child(c)
    if not node.closed:
        permissions.refresh([node])
