"""Graph operations block jobs need, built on the node primitives
(attach_child/detach_child/replace_child) of :mod:`blockd.graph.node`.

QEMU names: bdrv_find_backing_image, bdrv_chain_contains, bdrv_find_overlay,
bdrv_insert_node / bdrv_drop_filter.  bdrv_set_backing_hd and the frozen-link
helpers are :mod:`blockd.graph.backing`'s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from blockd.drivers.base import ChildRole, OpenFlags, driver_class
from blockd.graph import permissions
from blockd.graph.filename import (
    FilenameCache,
    cow_child,
    filter_or_cow_child,
    path_combine,
    path_has_protocol,
)
from blockd.graph.naming import check_node_name
from blockd.graph.node import BdrvChild, BlockNode, attach_child, detach_child, replace_child
from blockd.graph.registry import NodeRegistry
from blockd.qmp.errors import GenericError


def chain_next(node: BlockNode) -> BlockNode | None:
    """bdrv_filter_or_cow_bs(): the next node down the backing chain."""
    c = filter_or_cow_child(node)
    return c.child if c is not None else None


def skip_filters(node: BlockNode | None) -> BlockNode | None:
    """bdrv_skip_filters(): the first non-filter node at or below ``node``."""
    while node is not None and node.driver.is_filter:
        node = chain_next(node)
    return node


def backing_chain_next(node: BlockNode) -> BlockNode | None:
    """bdrv_backing_chain_next(): the COW child's node, filters skipped."""
    c = cow_child(skip_filters(node) or node)
    return skip_filters(c.child) if c is not None else None


def iter_chain(top: BlockNode, stop: BlockNode | None = None) -> Iterator[BlockNode]:
    """``top`` and every node below through filter/COW links, until ``stop``."""
    node: BlockNode | None = top
    while node is not None and node is not stop:
        yield node
        node = chain_next(node)


def chain_contains(top: BlockNode, base: BlockNode | None) -> bool:
    """bdrv_chain_contains()."""
    node: BlockNode | None = top
    while node is not None:
        if node is base:
            return True
        node = chain_next(node)
    return base is None


def find_overlay(active: BlockNode, base: BlockNode | None) -> BlockNode | None:
    """bdrv_find_overlay(): the non-filter node whose COW child leads to ``base``."""
    node = skip_filters(active)
    while node is not None:
        c = cow_child(node)
        below = c.child if c is not None else None
        if skip_filters(below) is skip_filters(base) or below is base:
            return node
        node = skip_filters(below) if below is not None else None
    return None


def find_backing_image(node: BlockNode, backing_file: str) -> BlockNode | None:
    """bdrv_find_backing_image(): the chain node named ``backing_file`` as the
    overlay's header (or, for overridden backings, the node's filename) says."""
    names = FilenameCache()
    is_proto = path_has_protocol(backing_file)
    curr = skip_filters(node)
    while curr is not None and cow_child(curr) is not None:
        below = backing_chain_next(curr)
        if below is None:
            break
        if names.backing_overridden(curr):
            if backing_file == names.filename(below):
                return below
        elif is_proto or path_has_protocol(curr.backing_file):
            if backing_file == curr.backing_file:
                return below
        else:
            want = os.path.realpath(path_combine(names.filename(curr), backing_file))
            have = os.path.realpath(path_combine(names.filename(curr), curr.backing_file))
            if os.path.exists(want) and os.path.exists(have) and want == have:
                return below
        curr = below
    return None


async def release_if_unused(graph: NodeRegistry, node: BlockNode) -> None:
    """Close ``node`` when nothing references it any more (bdrv_unref at 0)."""
    from blockd.graph.opener import unref

    if node.closed:
        return
    if node.refcount <= 0 and not node.monitor_owned:
        node.refcount = 1
        await unref(graph, node)
        return
    try:
        permissions.refresh([node])
    except GenericError:
        pass


async def insert_filter(
    graph: NodeRegistry,
    below: BlockNode,
    driver: str,
    node_name: str | None,
    extra_options: dict[str, Any],
    driver_options: dict[str, Any],
    keep: list[BdrvChild],
) -> BlockNode:
    """bdrv_insert_node(): open a filter over ``below`` and move ``below``'s
    parents (except the edges in ``keep``, QEMU's stay_at_node job edges) to it.

    Without ``node_name`` the filter is implicit and auto-named "#blockNNN".
    """
    if node_name is not None:
        try:
            check_node_name(node_name, node_name in graph)
        except GenericError as e:
            raise GenericError(f"Could not create node: {e.desc}") from None
    cls = driver_class(driver)
    drv = cls()
    name = node_name if node_name is not None else graph.namer.next()
    options = {"driver": driver, "file": below.node_name, **extra_options, "node-name": name}
    explicit = {"driver": driver, "file": below.node_name, **extra_options}
    if node_name is not None:
        explicit["node-name"] = node_name
    node = BlockNode(node_name=name, driver=drv, options=options, explicit_options=explicit)
    node.read_only = False
    node.auto_named = node_name is None
    node.implicit = node_name is None
    graph.add(node)
    edge = attach_child(node, below, "file", ChildRole.FILTERED | ChildRole.PRIMARY, slot="file")
    try:
        flags = OpenFlags(read_only=False)
        try:
            await drv.open(driver_options, flags)
        except GenericError as e:
            raise GenericError(f"Could not create node: {e.desc}") from None
        drv.flags = flags
        permissions.refresh([node])
        moved: list[BdrvChild] = []
        for c in list(below.parents):
            if c is edge or c in keep:
                continue
            replace_child(c, node)
            moved.append(c)
        try:
            permissions.refresh([node, below])
        except GenericError:
            for c in moved:
                replace_child(c, below)
            raise
    except BaseException:
        detach_child(edge)
        graph.remove(node)
        node.closed = True
        permissions.refresh([below])
        raise
    # The inserting job's own reference.
    node.refcount += 1
    return node


async def drop_filter(graph: NodeRegistry, node: BlockNode, keep: list[BdrvChild]) -> None:
    """bdrv_drop_filter() + unref: parents go back to the filtered node, the
    filter leaves the graph and closes."""
    if node.closed:
        return
    fc = node.child("file")
    below = fc.child if fc is not None else None
    if below is not None:
        for c in list(node.parents):
            if c in keep:
                continue
            replace_child(c, below)
    for c in list(node.parents):
        detach_child(c)
    node.closed = True
    graph.remove(node)
    try:
        await node.driver.close()
    except Exception:
        pass
    for c in list(node.children):
        detach_child(c)
    if below is not None and not below.closed:
        try:
            permissions.refresh([below])
        except GenericError:
            pass
