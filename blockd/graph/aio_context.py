"""AioContexts of nodes and BlockBackends: QEMU 7.2's bdrv_try_change_aio_context.

A node lives in the main context (``aio_context`` None) or in an iothread's
(the iothread id).  blockd runs everything in one event loop, so a context is
bookkeeping, but the *rules* are QEMU's and clients see them: all nodes of a
connected component share one context, a context change walks parents and
children from the node (each edge once), and a BlockBackend attached to a
device refuses to follow (``Cannot change iothread of active block backend``)
unless the change comes through the backend itself (``ignore``).

Non-node users opt in by registering their edge with :func:`register_user`
(device BlockBackends do); unregistered users (job and HMP backends) follow
along, as QEMU's job BlockBackends do (allow_aio_context_change).
"""

from __future__ import annotations

from typing import Protocol

from blockd.graph.node import BdrvChild, BlockNode
from blockd.qmp.errors import GenericError


class ContextUser(Protocol):
    """A BlockBackend-like owner of a non-node edge."""

    aio_context: str | None

    def allow_aio_context_change(self) -> bool:
        """Whether the backend may be moved by a change that starts elsewhere."""
        ...


# Edge -> its BlockBackend (only while attached).
_users: dict[int, tuple[BdrvChild, ContextUser]] = {}

ACTIVE_BACKEND = "Cannot change iothread of active block backend"

# An undo log entry: the node or user and the context it had.
Undo = list[tuple[BlockNode | ContextUser, str | None]]


def register_user(edge: BdrvChild, user: ContextUser) -> None:
    """Make ``user`` (the owner of the non-node ``edge``) take part in changes."""
    _users[id(edge)] = (edge, user)


def unregister_user(edge: BdrvChild) -> None:
    _users.pop(id(edge), None)


def user_of(edge: BdrvChild) -> ContextUser | None:
    entry = _users.get(id(edge))
    return entry[1] if entry is not None and entry[0] is edge else None


def _walk(node: BlockNode, ctx: str | None, visited: set[int],
          plan: Undo) -> None:
    """bdrv_change_aio_context(): parents first, then children; raises on refusal."""
    if node.aio_context == ctx or any(n is node for n, _ in plan):
        return
    plan.append((node, node.aio_context))
    for c in list(node.parents):
        if id(c) in visited:
            continue
        visited.add(id(c))
        if c.parent is not None:
            _walk(c.parent, ctx, visited, plan)
            continue
        user = user_of(c)
        if user is None:
            continue
        if not user.allow_aio_context_change():
            raise GenericError(ACTIVE_BACKEND)
        if user.aio_context != ctx:
            plan.append((user, user.aio_context))
    for c in list(node.children):
        if id(c) in visited:
            continue
        visited.add(id(c))
        _walk(c.child, ctx, visited, plan)


def _apply(plan: Undo, ctx: str | None) -> None:
    for obj, _old in plan:
        obj.aio_context = ctx


def can_set_aio_context(node: BlockNode, ctx: str | None,
                        ignore: BdrvChild | None = None) -> bool:
    """Whether :func:`set_aio_context` would succeed (nothing changes)."""
    try:
        _walk(node, ctx, {id(ignore)} if ignore is not None else set(), [])
    except GenericError:
        return False
    return True


def set_aio_context(node: BlockNode, ctx: str | None,
                    ignore: BdrvChild | None = None) -> Undo:
    """bdrv_try_change_aio_context(): move ``node``'s connected component (not
    crossing ``ignore``) into ``ctx``, or raise QEMU's error with nothing
    changed.  Returns the undo log for :func:`undo`."""
    plan: Undo = []
    _walk(node, ctx, {id(ignore)} if ignore is not None else set(), plan)
    _apply(plan, ctx)
    return plan


def undo(log: Undo) -> None:
    """Put every node and user of an undo log back into its old context."""
    for obj, old in reversed(log):
        obj.aio_context = old


def match_for_attach(parent: BlockNode, child: BlockNode) -> Undo:
    """bdrv_attach_child_common(): before ``child`` becomes a child of
    ``parent`` in another context, move the child's component into the
    parent's context, or else the parent's into the child's; when neither can
    move, the child's error is QEMU's error.  Call it before the edge exists."""
    if parent.aio_context == child.aio_context:
        return []
    try:
        return set_aio_context(child, parent.aio_context)
    except GenericError as child_err:
        try:
            return set_aio_context(parent, child.aio_context)
        except GenericError:
            raise child_err from None


__all__ = [
    "ACTIVE_BACKEND",
    "ContextUser",
    "Undo",
    "can_set_aio_context",
    "match_for_attach",
    "register_user",
    "set_aio_context",
    "undo",
    "unregister_user",
    "user_of",
]
