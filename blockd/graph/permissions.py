"""QEMU 7.2's permission system over the whole graph (bdrv_refresh_perms).

Each edge carries what its parent takes (``perm``) and lets others do
(``shared_perm``); a node's cumulative permissions are the union of its parent
edges' ``perm`` and the intersection of their ``shared_perm``.  Edges from nodes
are recomputed top-down with the parent driver's ``child_perm`` hook; edges of
non-node users (jobs, exports) keep what their owner set.  Conflicts are
reported with QEMU's texts and the file driver's OFD locks follow
(``set_perms``), so another process sees exactly what QEMU would show it.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable

from blockd.drivers.locking import (
    BLK_PERM_ALL,
    BLK_PERM_WRITE,
    BLK_PERM_WRITE_UNCHANGED,
    perm_names,
)
from blockd.graph.node import BdrvChild, BlockNode
from blockd.qmp.errors import GenericError


def topo_order(nodes: Iterable[BlockNode]) -> list[BlockNode]:
    """Nodes reachable from ``nodes`` with every parent before its children."""
    everything: dict[int, BlockNode] = {}
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if id(n) in everything:
            continue
        everything[id(n)] = n
        stack.extend(c.child for c in n.children)
        stack.extend(c.parent for c in n.parents if c.parent is not None)
    indeg = {
        k: sum(1 for c in n.parents if c.parent is not None and id(c.parent) in everything)
        for k, n in everything.items()
    }
    ready = [n for k, n in everything.items() if indeg[k] == 0]
    out: list[BlockNode] = []
    while ready:
        n = ready.pop(0)
        out.append(n)
        for c in reversed(n.children):
            k = id(c.child)
            indeg[k] -= 1
            if indeg[k] == 0:
                ready.append(c.child)
    if len(out) != len(everything):
        raise GenericError("Block graph contains a cycle")
    return out


def cumulative(node: BlockNode) -> tuple[int, int]:
    """(perm, shared) all parents of ``node`` take and share together."""
    perm, shared = 0, BLK_PERM_ALL
    for c in node.parents:
        perm |= c.perm
        shared &= c.shared_perm
    return perm, shared


def _check_parents(node: BlockNode) -> None:
    """bdrv_parent_perms_conflict(): every ordered pair of parent edges."""
    for a in node.parents:
        for b in node.parents:
            if a is b:
                continue
            if b.perm & a.shared_perm == b.perm:
                continue
            name = node.node_name
            raise GenericError(
                f"Permission conflict on node '{name}': permissions "
                f"'{perm_names(b.perm & ~a.shared_perm)}' are both required by "
                f"{b.parent_desc()} (uses node '{name}' as '{b.name}' child) and "
                f"unshared by {a.parent_desc()} (uses node '{name}' as '{a.name}' child)."
            )


def compute(
    nodes: Iterable[BlockNode], read_only_after: dict[int, bool] | None = None
) -> list[BlockNode]:
    """Recompute edge permissions below ``nodes`` and check them (no driver calls).

    ``read_only_after`` maps id(node) to the read-only state a pending reopen
    gives it.  Returns the nodes in top-down order; raises QEMU's error on the
    first conflict.  Callers snapshot edges first to be able to undo.
    """
    ro_after = read_only_after or {}
    order = topo_order(nodes)
    for node in order:
        perm, shared = cumulative(node)
        now_ro = node.read_only
        after_ro = ro_after.get(id(node), now_ro)
        if perm & (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED) and after_ro:
            if now_ro:
                raise GenericError("Block node is read-only")
            raise GenericError(
                f"Read-only block node '{node.node_name}' cannot support read-write users"
            )
        _check_parents(node)
        for c in node.children:
            p, s = node.driver.child_perm(c.name, c.role, after_ro, perm, shared)
            # A force-share child shares everything (bdrv_child_perm).
            c.perm, c.shared_perm = p, BLK_PERM_ALL if c.child.force_share else s
    return order


def snapshot(nodes: Iterable[BlockNode]) -> list[tuple[BdrvChild, int, int]]:
    """Every edge's permissions below/above ``nodes``, for :func:`restore`."""
    out: list[tuple[BdrvChild, int, int]] = []
    for n in topo_order(nodes):
        for c in n.children:
            out.append((c, c.perm, c.shared_perm))
    return out


def restore(saved: list[tuple[BdrvChild, int, int]]) -> None:
    for c, p, s in saved:
        c.perm, c.shared_perm = p, s


def apply(order: list[BlockNode], skip_fd: frozenset[int] = frozenset()) -> None:
    """Push cumulative permissions to the drivers that lock (file: OFD locks).

    ``auto-read-only`` files get a read-write descriptor while they have a
    writer and a read-only one otherwise (nodes in ``skip_fd``, being reopened,
    are left to the reopen).  On a failure everything already switched is
    switched back and the error propagates.
    """
    from blockd.drivers.file import FileDriver
    from blockd.graph import filefd

    done: list[tuple[BlockNode, int, int]] = []
    new_fds: list[tuple[FileDriver, int, bool, bool]] = []
    try:
        for node in order:
            perm, shared = cumulative(node)
            drv = node.driver
            if (isinstance(drv, FileDriver) and drv.fd >= 0 and node.auto_read_only
                    and not node.read_only and id(node) not in skip_fd):
                rw, direct = filefd.fd_mode(drv)
                if filefd.wants_write(perm) != rw:
                    fd = filefd.open_fd(drv, not rw, direct)
                    new_fds.append((drv, fd, not rw, direct))
            set_perms = getattr(node.driver, "set_perms", None)
            if (perm, shared) == (node.perm, node.shared_perm) and set_perms is None:
                continue
            if set_perms is not None and (perm, shared) != (node.perm, node.shared_perm):
                set_perms(perm, shared)
            done.append((node, node.perm, node.shared_perm))
            node.perm, node.shared_perm = perm, shared
    except GenericError:
        for _drv, fd, _rw, _direct in new_fds:
            os.close(fd)
        for node, p, s in reversed(done):
            set_perms = getattr(node.driver, "set_perms", None)
            if set_perms is not None:
                try:
                    set_perms(p, s)
                except GenericError:
                    pass
            node.perm, node.shared_perm = p, s
        raise
    for drv, fd, rw, direct in new_fds:
        filefd.install_fd(drv, fd, rw, direct)


def _touched_order(touched: list[BlockNode]) -> list[BlockNode]:
    """``touched`` with every parent before its children (Kahn over the set)."""
    ids = {id(n) for n in touched}
    indeg = {id(n): sum(1 for c in n.parents if c.parent is not None and id(c.parent) in ids)
             for n in touched}
    ready = deque(n for n in touched if indeg[id(n)] == 0)
    out: list[BlockNode] = []
    while ready:
        n = ready.popleft()
        out.append(n)
        for c in n.children:
            k = id(c.child)
            if k in indeg:
                indeg[k] -= 1
                if indeg[k] == 0:
                    ready.append(c.child)
    if len(out) != len(touched):
        raise GenericError("Block graph contains a cycle")
    return out


def refresh(
    nodes: Iterable[BlockNode], read_only_after: dict[int, bool] | None = None
) -> None:
    """Recompute, check and apply; on failure every edge and lock is as before.

    Incremental, like QEMU's bdrv_refresh_perms over the affected subtree:
    propagation starts at ``nodes`` and their direct parents (a parent's edge
    depends on its child's force-share) and descends only along edges whose
    permissions actually changed, so a change near the top of a deep chain
    costs what it changes, not the whole chain.  The checks (read-only users,
    conflicts between parents) run afterwards on every node touched, parents
    first, against the settled state.  Nodes in ``read_only_after`` are being
    reopened: their descriptors are the reopen's business.
    """
    nodes = list(nodes)
    ro_after = read_only_after or {}
    undo: dict[int, tuple[BdrvChild, int, int]] = {}
    touched: dict[int, BlockNode] = {}
    queue: deque[BlockNode] = deque()
    queued: set[int] = set()

    def push(n: BlockNode) -> None:
        if id(n) not in queued:
            queued.add(id(n))
            queue.append(n)

    for n in nodes:
        push(n)
        for c in n.parents:
            if c.parent is not None:
                push(c.parent)
    try:
        # A DAG settles: an edge changes only when its parent's inputs changed.
        while queue:
            node = queue.popleft()
            queued.discard(id(node))
            touched.setdefault(id(node), node)
            perm, shared = cumulative(node)
            after_ro = ro_after.get(id(node), node.read_only)
            for c in node.children:
                p, sh = node.driver.child_perm(c.name, c.role, after_ro, perm, shared)
                # A force-share child shares everything (bdrv_child_perm).
                if c.child.force_share:
                    sh = BLK_PERM_ALL
                if (p, sh) != (c.perm, c.shared_perm):
                    undo.setdefault(id(c), (c, c.perm, c.shared_perm))
                    c.perm, c.shared_perm = p, sh
                    push(c.child)
                elif id(c.child) not in touched:
                    # Unchanged edge: the child is still checked (and its lock
                    # state applied) but its subtree is not revisited.
                    touched[id(c.child)] = c.child
        order = _touched_order(list(touched.values()))
        for node in order:
            perm, _shared = cumulative(node)
            now_ro = node.read_only
            if perm & (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED) and ro_after.get(
                    id(node), now_ro):
                if now_ro:
                    raise GenericError("Block node is read-only")
                raise GenericError(
                    f"Read-only block node '{node.node_name}' cannot support read-write users"
                )
            _check_parents(node)
        apply(order, frozenset(ro_after))
    except GenericError:
        restore(list(undo.values()))
        raise
