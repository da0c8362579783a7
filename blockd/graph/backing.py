"""Backing-chain edits for block jobs (stream, commit, mirror): QEMU's
bdrv_set_backing_hd() and the frozen-link helpers.

``set_backing`` keeps ``inherits_from`` meaningful when intermediate nodes leave
a chain (the inherits-from commit): a new backing that inherited, through the
removed nodes, from ``node`` now inherits from ``node`` directly, so that a later
reopen of ``node`` still reopens it with inherited options.
"""

from __future__ import annotations

from typing import Any

from blockd.drivers.base import ChildRole
from blockd.graph import permissions
from blockd.graph.node import (
    BdrvChild,
    BlockNode,
    attach_child,
    detach_child_undoable,
    has_descendant,
    reattach_child,
    replace_child,
    subtree,
)
from blockd.graph.registry import NodeRegistry
from blockd.qmp.errors import GenericError


def cow_child(node: BlockNode) -> BdrvChild | None:
    """bdrv_filter_or_cow_child(): the backing, or a filter's filtered child."""
    b = node.child("backing")
    if b is not None:
        return b
    if node.driver.is_filter:
        for c in node.children:
            if c.role & ChildRole.FILTERED:
                return c
    return None


def inherits_from_recursive(child: BlockNode | None, parent: BlockNode) -> bool:
    """Whether following inherits_from from ``child`` reaches ``parent``."""
    while child is not None and child is not parent:
        child = child.inherits_from
    return child is not None


def _unset_inherits_from(root: BlockNode, c: BdrvChild) -> None:
    """bdrv_unset_inherits_from(): ``c`` is going away; nodes below it stop
    inheriting from ``root`` when no other edge of ``root`` leads to them."""
    child = c.child
    if child.inherits_from is root:
        if not any(o is not c and o.child is child for o in root.children):
            child.inherits_from = None
    for gc in child.children:
        _unset_inherits_from(root, gc)


def is_backing_chain_frozen(top: BlockNode, base: BlockNode | None) -> str | None:
    """QEMU's error text when a link from ``top`` down to ``base`` is frozen."""
    node: BlockNode | None = top
    while node is not None and node is not base:
        c = cow_child(node)
        if c is None:
            break
        if c.frozen:
            return f"Cannot change '{c.name}' link from '{node.node_name}' to " \
                   f"'{c.child.node_name}'"
        node = c.child
    return None


def freeze_backing_chain(top: BlockNode, base: BlockNode | None) -> None:
    """bdrv_freeze_backing_chain(): freeze every link from ``top`` to ``base``."""
    err = is_backing_chain_frozen(top, base)
    if err is not None:
        raise GenericError(err)
    node: BlockNode | None = top
    links: list[BdrvChild] = []
    while node is not None and node is not base:
        c = cow_child(node)
        if c is None:
            break
        # A job's own filter (commit_top, mirror_top) sets never_freeze: another
        # job may not freeze a link to it (QEMU's bs->never_freeze).
        if getattr(c.child.driver, "never_freeze", False):
            raise GenericError(f"Cannot freeze '{c.name}' link to '{c.child.node_name}'")
        links.append(c)
        node = c.child
    for c in links:
        c.frozen = True


def unfreeze_backing_chain(top: BlockNode, base: BlockNode | None) -> None:
    node: BlockNode | None = top
    while node is not None and node is not base:
        c = cow_child(node)
        if c is None:
            break
        c.frozen = False
        node = c.child


async def set_backing(
    graph: NodeRegistry, node: BlockNode, new_backing: BlockNode | None
) -> None:
    """bdrv_set_backing_hd(): make ``new_backing`` the backing of ``node``.

    Refuses a frozen link or a cycle with QEMU's texts; checks permissions over
    the changed graph and undoes everything on failure.  The old backing is
    closed when nothing else holds it.
    """
    cur = node.child("backing")
    if cur is not None and cur.child is new_backing:
        return
    if cur is not None and cur.frozen:
        raise GenericError(
            f"Cannot change frozen 'backing' link from '{node.node_name}' to "
            f"'{cur.child.node_name}'"
        )
    if (new_backing is not None and not node.driver.supports_backing
            and not node.driver.is_filter):
        raise GenericError(
            f"Driver '{node.driver.name}' of node '{node.node_name}' does not support "
            "backing files"
        )
    update_inherits = new_backing is not None and inherits_from_recursive(new_backing, node)
    old = cur.child if cur is not None else None
    pos = (0, 0)
    touched = [node]
    saved_inherits: list[tuple[BlockNode, BlockNode | None]] = []
    if cur is not None:
        saved_inherits = [(n, n.inherits_from) for n in subtree(cur.child)]
        _unset_inherits_from(node, cur)
        pos = detach_child_undoable(cur)
        touched.append(cur.child)
    made: BdrvChild | None = None
    try:
        if new_backing is not None:
            role = ChildRole.FILTERED | ChildRole.PRIMARY if node.driver.is_filter \
                else ChildRole.COW
            made = attach_child(node, new_backing, "backing", role, slot="backing")
            touched.append(new_backing)
        permissions.refresh(touched)
    except GenericError:
        if made is not None:
            from blockd.graph.node import detach_child

            detach_child(made)
        if cur is not None:
            reattach_child(cur, *pos)
        for n, parent in saved_inherits:
            n.inherits_from = parent
        permissions.refresh([n for n in touched if not n.closed])
        raise
    if update_inherits and new_backing is not None:
        new_backing.inherits_from = node
    if old is not None and old.refcount <= 0 and not old.monitor_owned:
        from blockd.graph.opener import unref

        old.refcount = 1
        await unref(graph, old)


def _should_update(c: BdrvChild, to: BlockNode) -> bool:
    """should_update_child(): never make ``to`` point (through this edge) at
    itself, directly or below."""
    if c.parent is None:
        return True
    return not has_descendant(to, c.parent)


def replace_node(graph: NodeRegistry, old: BlockNode, new: BlockNode) -> None:
    """bdrv_replace_node(): every parent of ``old`` (except those below ``new``,
    e.g. a filter's own edge to ``old``) now uses ``new``.  Frozen links and
    permission conflicts refuse the whole change, with QEMU's texts."""
    edges = [c for c in old.parents if _should_update(c, new)]
    for c in edges:
        if c.frozen:
            raise GenericError(f"Cannot change '{c.name}' link to '{old.node_name}'")
    undo: list[BdrvChild] = []
    try:
        for c in edges:
            replace_child(c, new)
            undo.append(c)
        permissions.refresh([old, new])
    except GenericError:
        for c in reversed(undo):
            replace_child(c, old)
        permissions.refresh([old, new])
        raise


async def insert_node(
    graph: NodeRegistry, below: BlockNode, options: dict[str, Any]
) -> BlockNode:
    """bdrv_insert_node(): open a filter from ``options`` (its child given by
    reference to ``below``) and put it between ``below`` and all its parents."""
    from blockd.graph.opener import GraphOpener
    from blockd.graph.options import flatten

    op = GraphOpener(graph, graph.namer)
    try:
        node = await op.open(flatten(options))
    except BaseException:
        await op.rollback()
        raise
    ref(node)  # held by the caller (the job) until it calls release()
    try:
        replace_node(graph, below, node)
    except GenericError:
        node.refcount -= 1
        node.extra_refs -= 1
        await op.rollback()
        raise
    return node


def ref(node: BlockNode) -> None:
    """bdrv_ref(): keep ``node`` open for a holder that is not an edge."""
    node.refcount += 1
    node.extra_refs += 1


async def release(graph: NodeRegistry, node: BlockNode) -> None:
    """bdrv_unref() of a :func:`ref`: closes the node (and what only it held)
    when nothing else uses it."""
    from blockd.graph.opener import unref

    node.extra_refs -= 1
    await unref(graph, node)


async def change_backing_file(
    node: BlockNode, backing_file: str | None, backing_format: str | None
) -> None:
    """bdrv_change_backing_file(): rewrite the backing name in the image header
    (formats that store one) and keep the node's view of it in step."""
    change = getattr(node.driver, "change_backing_file", None)
    if change is None:
        raise GenericError("Operation not supported")
    await change(backing_file, backing_format)
    node.backing_file = backing_file or ""
    node.backing_format = backing_format or ""
    node.auto_backing_file = node.backing_file
