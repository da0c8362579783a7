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


class AnonymousBackend:
    """An unnamed BlockBackend on a node, as HMP ``qemu-io NODE "CMD"`` creates
    one (hmp_qemu_io: no permissions, everything shared), growing its
    permissions when a command needs them (qemu-io's ``ct->perm``)::

        be = AnonymousBackend(node)
        try:
            be.request(write=True)   # GenericError with QEMU's text if refused
            ...                      # run the command on node.driver
        finally:
            be.close()
    """

    DESC = "an unnamed block device"

    def __init__(self, node: BlockNode) -> None:
        self.edge = attach_user(node, "root", 0, BLK_PERM_ALL, self.DESC)

    def request(self, write: bool = False, resize: bool = False) -> None:
        """Add WRITE/RESIZE (blk_set_perm); "Block node is read-only" or the
        permission conflict naming "an unnamed block device" when refused."""
        from blockd.drivers.locking import BLK_PERM_RESIZE, BLK_PERM_WRITE

        want = self.edge.perm | (BLK_PERM_WRITE if write else 0) | (
            BLK_PERM_RESIZE if resize else 0)
        if want != self.edge.perm:
            set_user_perms(self.edge, want, self.edge.shared_perm)

    def close(self) -> None:
        detach_user(self.edge)
