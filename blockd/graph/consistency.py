"""An internal consistency checker for the graph, used by tests and debugging.

It states the invariants the engine maintains: edges visible from both ends and
in the driver slots, reference counts, no cycles, names registered, edge
permissions equal to what the parents' drivers ask for, no conflicts, no writer
on a read-only node, and the file driver's locks equal to the node's cumulative
permissions.
"""

from __future__ import annotations

from typing import Any

from blockd.drivers.locking import BLK_PERM_ALL, BLK_PERM_WRITE, BLK_PERM_WRITE_UNCHANGED
from blockd.graph import permissions
from blockd.graph.node import BlockNode
from blockd.graph.registry import NodeRegistry
from blockd.qmp.errors import GenericError


def _slot_ok(node: BlockNode, c: Any) -> bool:
    d = node.driver
    if c.slot == "file":
        return d.file is c.child.driver
    if c.slot == "backing":
        return d.backing is c.child.driver
    return d.extra_children.get(c.name) is c.child.driver


def check_graph(graph: NodeRegistry) -> list[str]:
    """Every broken invariant, as text; empty when the graph is consistent."""
    problems: list[str] = []
    nodes = graph.all_nodes()
    ids = {id(n) for n in nodes}
    for n in nodes:
        if n.closed:
            problems.append(f"{n.node_name}: closed but registered")
        if graph.lookup(n.node_name) is not n:
            problems.append(f"{n.node_name}: registry name mismatch")
        for c in n.children:
            if c.parent is not n:
                problems.append(f"{n.node_name}: child edge {c.name} has another parent")
            if c not in c.child.parents:
                problems.append(f"{n.node_name}: edge {c.name} missing in child's parents")
            if id(c.child) not in ids:
                problems.append(f"{n.node_name}: child {c.child.node_name} not registered")
            if not _slot_ok(n, c):
                problems.append(f"{n.node_name}: driver slot {c.slot}/{c.name} out of step")
        names = [c.name for c in n.children]
        if len(names) != len(set(names)):
            problems.append(f"{n.node_name}: duplicate child names {names}")
        for c in n.parents:
            if c.child is not n:
                problems.append(f"{n.node_name}: parent edge points elsewhere")
            if c.parent is not None and c not in c.parent.children:
                problems.append(f"{n.node_name}: edge {c.name} missing in parent's children")
        want_ref = len(n.parents) + (1 if n.monitor_owned else 0) + n.extra_refs
        if n.refcount != want_ref:
            problems.append(f"{n.node_name}: refcount {n.refcount} != {want_ref}")
        if n.inherits_from is not None and n.inherits_from.closed:
            problems.append(f"{n.node_name}: inherits from a closed node")
        if n.refcount == 0:
            problems.append(f"{n.node_name}: unreferenced but open")
    try:
        order = permissions.topo_order(nodes)
    except GenericError:
        return [*problems, "cycle in the graph"]
    for n in order:
        perm, shared = permissions.cumulative(n)
        if perm & (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED) and n.read_only:
            problems.append(f"{n.node_name}: writer on a read-only node")
        for a in n.parents:
            for b in n.parents:
                if a is not b and b.perm & ~a.shared_perm:
                    problems.append(f"{n.node_name}: permission conflict {b.name}/{a.name}")
        for c in n.children:
            p, s = n.driver.child_perm(c.name, c.role, n.read_only, perm, shared)
            if c.child.force_share:
                s = BLK_PERM_ALL
            if (c.perm, c.shared_perm) != (p, s):
                problems.append(
                    f"{n.node_name}->{c.child.node_name}: edge perms "
                    f"{(c.perm, c.shared_perm)} != {(p, s)}"
                )
        lock = getattr(n.driver, "lock", None)
        if lock is not None:
            if (lock.locked_perm, lock.locked_unshared) != (perm, BLK_PERM_ALL & ~shared):
                problems.append(
                    f"{n.node_name}: locks {(lock.locked_perm, lock.locked_unshared)} != "
                    f"{(perm, BLK_PERM_ALL & ~shared)}"
                )
    return problems


def graph_snapshot(graph: NodeRegistry) -> list[Any]:
    """Everything a failed command must leave unchanged, comparable with ==."""
    out: list[Any] = []
    for n in graph.all_nodes():
        lock = getattr(n.driver, "lock", None)
        out.append((
            n.node_name, n.driver.name, repr(sorted(n.options.items(), key=str)),
            repr(sorted(n.explicit_options.items(), key=str)), n.read_only,
            n.monitor_owned, n.refcount,
            n.inherits_from.node_name if n.inherits_from else None,
            [(c.name, c.child.node_name, c.perm, c.shared_perm, c.frozen) for c in n.children],
            (lock.locked_perm, lock.locked_unshared) if lock is not None else None,
            getattr(n.driver, "fd", None) is not None and n.driver.flags.read_only,
            n.detect_zeroes, n.discard, n.cache_direct, n.cache_no_flush,
        ))
    return out
