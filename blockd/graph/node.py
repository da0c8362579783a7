"""Graph data model: a node per driver instance, an edge per parent/child link.

Every edge change goes through :func:`attach_child`, :func:`detach_child` or
:func:`replace_child`, which update both ends (``parent.children`` and
``child.parents``) and the driver's child slot (``driver.file``,
``driver.backing`` or ``driver.extra_children[name]``) in one step, so the graph
can never be half-updated (the children-list consistency mail).

Lists are kept in QEMU's order: QEMU inserts at the head of ``bs->children`` and
``bs->parents``, so the most recently attached edge comes first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from blockd.drivers.base import BlockDriver, ChildRole


@dataclass(eq=False)
class BdrvChild:
    """One edge.  ``parent`` is None for a user that is not a node (a BlockBackend,
    a device, a job): ``user_desc`` then says what it is in permission errors."""

    name: str
    role: ChildRole
    parent: BlockNode | None
    child: BlockNode
    perm: int = 0
    shared_perm: int = 0xF
    # Jobs freeze links they rely on; reopen/set_backing refuse to change them.
    frozen: bool = False
    # Driver slot: "file", "backing" or "extra" (driver.extra_children[name]).
    slot: str = "extra"
    # For non-node users: e.g. "block device 'foo'" (QEMU's get_parent_desc()).
    user_desc: str = ""

    def parent_desc(self) -> str:
        """How QEMU names this edge's user in permission errors."""
        if self.parent is not None:
            return f"node '{self.parent.node_name}'"
        return self.user_desc or "a user"


@dataclass(eq=False)
class BlockNode:
    """A block node (QEMU's BlockDriverState).

    ``options``/``explicit_options`` are QDict-style *flattened* dicts
    (``{"driver": "qcow2", "file": "hd0-file", "cache.direct": False}``), as QEMU
    keeps bs->options: children opened by this node appear as their node name
    under the child option, except ``backing`` which QEMU drops from bs->options.
    ``options`` holds the effective options, ``explicit_options`` only what the
    user (or an inheriting parent's explicit options) gave.
    """

    node_name: str
    driver: BlockDriver
    options: dict[str, Any] = field(default_factory=dict)
    explicit_options: dict[str, Any] = field(default_factory=dict)
    read_only: bool = True
    auto_read_only: bool = False
    # The parent whose options this node inherits (it was opened as part of it).
    inherits_from: BlockNode | None = None
    # QEMU's bs->implicit: a filter inserted by a job without a user-given name;
    # such nodes are skipped by query-block and may not be replaced by reopen.
    implicit: bool = False
    # Named "#blockNNN" by the daemon because the user gave no node-name.
    auto_named: bool = False
    # blockdev-add created it as a root: blockdev-del may delete it.
    monitor_owned: bool = False
    parents: list[BdrvChild] = field(default_factory=list)
    children: list[BdrvChild] = field(default_factory=list)
    # References held by edges + the monitor + ``extra_refs``; closes at 0.
    refcount: int = 0
    # References held by something that is neither an edge nor the monitor
    # (a job keeping its filter node alive: QEMU's bdrv_ref()).
    extra_refs: int = 0
    aio_context: str | None = None
    # Generic node options (QEMU's BDRV_O_* derived state).
    detect_zeroes: str = "off"
    discard: str = "ignore"
    force_share: bool = False
    cache_direct: bool = False
    cache_no_flush: bool = False
    # Cumulative permissions applied (union of parents' perm / AND of shared).
    perm: int = 0
    shared_perm: int = 0xF
    # Backing file name from the image header as opened (bs->backing_file).
    backing_file: str = ""
    backing_format: str = ""
    # bs->auto_backing_file: the header's name, replaced by the opened node's
    # file name when the backing was opened implicitly from the header; query
    # code compares it with the backing's name to tell an overridden backing.
    auto_backing_file: str = ""
    # QEMU's op blockers ("block device is in use by block job: stream"), most
    # recent first; blockdev-del reports the first as "Node 'x' is busy: ...".
    blockers: list[str] = field(default_factory=list)
    closed: bool = False

    @property
    def drv_name(self) -> str:
        return self.driver.name

    def child(self, name: str) -> BdrvChild | None:
        """The edge named ``name`` ("file", "backing", ...), if any."""
        for c in self.children:
            if c.name == name:
                return c
        return None

    @property
    def file(self) -> BdrvChild | None:
        return self.child("file")

    @property
    def backing(self) -> BdrvChild | None:
        return self.child("backing")

    @property
    def filename(self) -> str:
        """The image file name as QEMU reports it (bs->filename, simplified)."""
        node: BlockNode | None = self
        while node is not None:
            fn = getattr(node.driver, "filename", None)
            if isinstance(fn, str) and fn:
                return fn
            f = node.file or node.child("image") or node.child("raw")
            node = f.child if f is not None else None
        return ""

    def __repr__(self) -> str:
        return f"<BlockNode {self.node_name} {self.driver.name}>"


def _set_slot(parent: BlockNode, slot: str, name: str, drv: BlockDriver | None) -> None:
    d = parent.driver
    if slot == "file":
        d.file = drv
    elif slot == "backing":
        d.backing = drv
    elif drv is None:
        d.extra_children.pop(name, None)
    else:
        d.extra_children[name] = drv


def attach_child(
    parent: BlockNode | None,
    child: BlockNode,
    name: str,
    role: ChildRole,
    *,
    slot: str = "extra",
    perm: int = 0,
    shared: int = 0xF,
    user_desc: str = "",
) -> BdrvChild:
    """Create an edge parent -> child; both ends and the driver slot in one step.

    Permissions are not checked here: callers run :mod:`blockd.graph.permissions`
    over the changed graph and undo the edge if it is refused.  An edge that
    would close a cycle is refused with QEMU's text (bdrv_attach_child_noperm).
    """
    if parent is not None and has_descendant(child, parent):
        from blockd.qmp.errors import GenericError

        raise GenericError(
            f"Making '{child.node_name}' a {name} child of '{parent.node_name}' "
            "would create a cycle"
        )
    c = BdrvChild(name, role, parent, child, perm, shared, slot=slot, user_desc=user_desc)
    child.parents.insert(0, c)
    child.refcount += 1
    if parent is not None:
        parent.children.insert(0, c)
        _set_slot(parent, slot, name, child.driver)
    return c


def detach_child(c: BdrvChild) -> None:
    """Remove an edge from both ends and clear the driver slot (refcount - 1).

    The caller decides whether the child, now perhaps unreferenced, is closed.
    """
    if c in c.child.parents:
        c.child.parents.remove(c)
        c.child.refcount -= 1
    p = c.parent
    if p is not None and c in p.children:
        p.children.remove(c)
        _set_slot(p, c.slot, c.name, None)


def detach_child_undoable(c: BdrvChild) -> tuple[int, int]:
    """:func:`detach_child`, returning the positions :func:`reattach_child` needs
    to put the edge back exactly where it was."""
    pi = c.parent.children.index(c) if c.parent is not None and c in c.parent.children else 0
    ci = c.child.parents.index(c) if c in c.child.parents else 0
    detach_child(c)
    return pi, ci


def reattach_child(c: BdrvChild, parent_index: int, child_index: int) -> None:
    """Undo :func:`detach_child_undoable`: both ends and the slot again."""
    c.child.parents.insert(child_index, c)
    c.child.refcount += 1
    if c.parent is not None:
        c.parent.children.insert(parent_index, c)
        _set_slot(c.parent, c.slot, c.name, c.child.driver)


def replace_child(c: BdrvChild, new_child: BlockNode) -> None:
    """Point an existing edge at another node, keeping its place in the parent's
    list (QEMU's bdrv_replace_child_noperm): both ends and the slot in one step."""
    old = c.child
    if old is new_child:
        return
    if c in old.parents:
        old.parents.remove(c)
        old.refcount -= 1
    c.child = new_child
    new_child.parents.insert(0, c)
    new_child.refcount += 1
    if c.parent is not None:
        _set_slot(c.parent, c.slot, c.name, new_child.driver)


def has_descendant(node: BlockNode, target: BlockNode) -> bool:
    """Whether ``target`` is ``node`` or reachable through its children
    (bdrv_recurse_has_child)."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n is target:
            return True
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.extend(c.child for c in n.children)
    return False


def subtree(node: BlockNode) -> list[BlockNode]:
    """``node`` and everything below it, each once, parents before children."""
    out: list[BlockNode] = []
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        out.append(n)
        stack.extend(c.child for c in reversed(n.children))
    return out
