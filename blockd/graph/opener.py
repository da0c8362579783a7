"""blockdev-add: open a node tree from BlockdevOptions (QEMU's bdrv_open_inherit).

Children given inline are opened as part of their parent (they inherit its
options and get ``inherits_from``), children given by name are referenced,
a qcow2 backing file named in the image header is opened implicitly relative to
the overlay, ``backing: null`` opens none.  Unnamed nodes are "#blockNNN".
A failure closes everything opened so far and detaches every edge made, so a
failed blockdev-add leaves no node, no lock and no open file behind.
"""

from __future__ import annotations

import os
from typing import Any

from blockd.drivers.base import BlockDriver, ChildRole, ChildSpec, OpenFlags, driver_class
from blockd.drivers.file import FileDriver
from blockd.drivers.open import (
    parse_json_filename,
    prepare_open,
    probe_format,
    resolve_backing_path,
)
from blockd.drivers.protocols import filename_children, filename_options, path_has_protocol
from blockd.graph import accounting, aio_context, detect_zeroes, permissions
from blockd.graph.naming import AutoNamer, check_node_name
from blockd.graph.node import BdrvChild, BlockNode, attach_child, detach_child
from blockd.graph.options import (
    driver_options,
    extract_sub,
    flatten,
    has_sub,
    inherit,
    root_defaults,
)
from blockd.graph.registry import NodeRegistry
from blockd.qmp.errors import GenericError

_DISCARD = {"ignore": "ignore", "off": "ignore", "unmap": "unmap", "on": "unmap"}


def parse_generic(
    options: dict[str, Any], reopen: bool = False
) -> tuple[bool, bool, bool, str, str]:
    """(read_only, auto_read_only, force_share, discard, detect_zeroes) with
    bdrv_open_common()'s checks and texts, in its order.  On reopen force-share
    is not checked here: it cannot change at all."""
    read_only = bool(options.get("read-only", False))
    auto_ro = bool(options.get("auto-read-only", False))
    force_share = bool(options.get("force-share", False))
    if force_share and not read_only and not reopen:
        raise GenericError("force-share=on can only be used with read-only images")
    d = options.get("discard", "ignore")
    if d not in _DISCARD:
        raise GenericError("Invalid discard option")
    discard = _DISCARD[d]
    dz = options.get("detect-zeroes", "off")
    if dz == "unmap" and discard != "unmap":
        raise GenericError(
            "setting detect-zeroes to unmap is not allowed without setting discard "
            "operation to unmap"
        )
    return read_only, auto_ro, force_share, discard, dz


def open_flags(node: BlockNode, options: dict[str, Any]) -> OpenFlags:
    return OpenFlags(
        read_only=node.read_only,
        cache_direct=bool(options.get("cache.direct", False)),
        cache_no_flush=bool(options.get("cache.no-flush", False)),
        discard_unmap=node.discard == "unmap",
        force_share=node.force_share,
        locking=str(options.get("locking", "auto")),
    )


_RAW_SPECS = (ChildSpec("file", "file", ChildRole.FILTERED | ChildRole.PRIMARY),)


def child_specs_of(drv: type[BlockDriver]) -> tuple[ChildSpec, ...]:
    """The driver's children; raw given explicitly is a filter over its file
    (raw_open: BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY) unless it says otherwise."""
    if drv.name == "raw" and drv.__dict__.get("default_child_specs", False):
        return _RAW_SPECS
    return drv.child_specs


def child_option_names(drv: type[BlockDriver]) -> set[str]:
    return {s.option for s in child_specs_of(drv)}


class GraphOpener:
    """One blockdev-add (or one reopen's new children): remembers what it made."""

    def __init__(self, graph: NodeRegistry, namer: AutoNamer) -> None:
        self.graph = graph
        self.namer = namer
        self.created: list[BlockNode] = []
        self.edges: list[BdrvChild] = []
        self.aio_undo: aio_context.Undo = []  # AioContext moves made for new edges

    async def rollback(self) -> None:
        """Detach every edge made and close every node opened, newest first."""
        aio_context.undo(self.aio_undo)
        touched: list[BlockNode] = []
        for c in reversed(self.edges):
            detach_child(c)
            touched.append(c.child)
        for node in reversed(self.created):
            await close_node(self.graph, node)
        # Referenced nodes drop the permissions the new parents took.
        alive = [n for n in touched if not n.closed]
        if alive:
            try:
                permissions.refresh(alive)
            except GenericError:
                pass

    def _attach(
        self, parent: BlockNode, child: BlockNode, spec: ChildSpec, name: str
    ) -> BdrvChild:
        # bdrv_attach_child_common(): child or parent changes AioContext.
        self.aio_undo += aio_context.match_for_attach(parent, child)
        c = attach_child(parent, child, name, spec.role, slot=spec.slot)
        self.edges.append(c)
        # Take the permissions now: the driver may write during open.
        permissions.refresh([parent])
        return c

    async def open(
        self,
        flat: dict[str, Any],
        parent_options: dict[str, Any] | None = None,
        role: ChildRole | None = None,
    ) -> BlockNode:
        """Open one node (and its inline children) from flattened options."""
        options = dict(flat)
        explicit = dict(flat)
        if parent_options is None or role is None:
            root_defaults(options)
        else:
            inherit(options, parent_options, role)
        cls = driver_class(str(options["driver"]))
        node = BlockNode(node_name="", driver=cls(), options=options,
                         explicit_options=explicit)
        detect_zeroes.install(node)
        accounting.install(node.driver)
        node.read_only = bool(options.get("read-only", False))
        node.auto_read_only = bool(options.get("auto-read-only", False))

        self._expand_filename_children(cls, options)
        specs = [s for s in child_specs_of(cls) if s.slot != "backing"]
        # bdrv_open_inherit() opens a "file" child before the node gets its
        # name; other children (image, test, raw, children.N) are opened by the
        # driver's open, after the name.
        early = [s for s in specs if s.option == "file"]
        late = [s for s in specs if s.option != "file"]
        pending: list[tuple[BlockNode, ChildSpec, str]] = []
        try:
            for spec in early:
                await self._open_child(node, spec, options, pending)
            (node.read_only, node.auto_read_only, node.force_share, node.discard,
             node.detect_zeroes) = parse_generic(options)
            node.cache_direct = bool(options.get("cache.direct", False))
            node.cache_no_flush = bool(options.get("cache.no-flush", False))
            given = options.get("node-name")
            if given is not None:
                check_node_name(str(given), given in self.graph)
                node.node_name = str(given)
            else:
                node.node_name = self.namer.next()
                node.auto_named = True
                options["node-name"] = node.node_name
            self.graph.add(node)
            self.created.append(node)
            for child, spec, key in pending:
                self._attach(node, child, spec, key)
            if late:
                # The driver opens these children itself in QEMU, after its
                # own option checks (blkdebug's config file).
                prepare_open(node.driver, driver_options(options, child_option_names(cls)))
            for spec in late:
                for one in self._expand(spec, options):
                    # bdrv_open_child(): each child is attached as it opens.
                    opened: list[tuple[BlockNode, ChildSpec, str]] = []
                    await self._open_child(node, one, options, opened)
                    for child, sp, key in opened:
                        self._attach(node, child, sp, key)
            await self._open_driver(node, options)
        except BaseException:
            # Inline children are in self.created; the caller rolls back.
            raise
        backing = [s for s in child_specs_of(cls) if s.slot == "backing"]
        for spec in backing:
            await self._open_backing(node, spec, options)
        return node

    @staticmethod
    def _expand_filename_children(cls: type[BlockDriver], options: dict[str, Any]) -> None:
        """A driver opened from a prefixed file name (``blkdebug:cfg:img``) got
        its children as file names (``x-image``): turn each into the child's
        options, opened by the protocol its own prefix names (bdrv_open_child
        with a file name)."""
        for child_opt, legacy in filename_children(cls).items():
            if legacy not in options:
                continue
            name = options.pop(legacy)
            if child_opt in options or has_sub(options, child_opt):
                continue
            for key, value in flatten(filename_options(str(name))).items():
                options[f"{child_opt}.{key}"] = value

    async def _open_driver(self, node: BlockNode, options: dict[str, Any]) -> None:
        drv = node.driver
        dopts = driver_options(options, child_option_names(type(drv)))
        flags = open_flags(node, options)
        # Drivers that name other nodes in their options (copy-on-read's
        # "bottom") resolve them through the graph.
        flags.extra["lookup-node"] = self.graph.lookup
        if isinstance(drv, FileDriver) and node.auto_read_only:
            # Dynamic auto-read-only: read-only until a writer attaches (the
            # permission code switches the descriptor then).
            flags.read_only = True
        try:
            await drv.open(dopts, flags)
        except GenericError:
            node.driver = type(drv)()
            raise
        drv.flags = flags
        drv._open_options = dopts
        # Remember the header's backing file name (bs->backing_file).
        bf = getattr(drv, "backing_file", None)
        node.backing_file = bf or ""
        node.backing_format = getattr(drv, "backing_format", None) or ""
        node.auto_backing_file = node.backing_file
        permissions.refresh([node])

    @staticmethod
    def _expand(spec: ChildSpec, options: dict[str, Any]) -> list[ChildSpec]:
        """A ``multiple`` spec as one spec per given child (children.0, ...)."""
        if not spec.multiple:
            return [spec]
        out: list[ChildSpec] = []
        i = 0
        while f"{spec.option}.{i}" in options or has_sub(options, f"{spec.option}.{i}"):
            out.append(ChildSpec(f"{spec.option}.{i}", "extra", spec.role, True))
            i += 1
        return out

    async def _open_child(
        self, node: BlockNode, spec: ChildSpec, options: dict[str, Any],
        pending: list[tuple[BlockNode, ChildSpec, str]],
    ) -> None:
        """Open or look up one child; attaching waits until the parent has a name
        (QEMU attaches in the driver's open, after bdrv_assign_node_name)."""
        key = spec.option
        if spec.multiple:
            i = 0
            while f"{key}.{i}" in options or has_sub(options, f"{key}.{i}"):
                one = ChildSpec(f"{key}.{i}", "extra", spec.role, True)
                await self._open_child(node, one, options, pending)
                i += 1
            return
        if key in options:
            ref = options[key]
            if ref is None:
                if spec.required:
                    raise GenericError(f'A block device must be specified for "{key}"')
                return
            child = self.graph.lookup(str(ref))
            if child is None:
                raise GenericError(f"Cannot find device='{ref}' nor node-name='{ref}'")
            pending.append((child, spec, key))
            return
        if not has_sub(options, key):
            if spec.required:
                raise GenericError(f'A block device must be specified for "{key}"')
            return
        child_opts = extract_sub(options, key)
        extract_sub(node.explicit_options, key)
        child = await self.open(child_opts, options, spec.role)
        child.inherits_from = node
        options[key] = child.node_name
        pending.append((child, spec, key))

    async def _header_backing_options(self, node: BlockNode) -> dict[str, Any]:
        """Options for the backing file the image header names: a ``json:{...}``
        description, a name with a protocol prefix (``blkdebug:cfg:img``,
        ``null-co://``: opened by the driver the prefix names, as
        bdrv_find_protocol) or a path relative to the overlay."""
        name, fmt = node.backing_file, node.backing_format
        if name.startswith("json:"):
            sub = flatten(parse_json_filename(name))
            if fmt and "driver" not in sub:
                sub["driver"] = fmt
            if "driver" not in sub:
                raise GenericError("Must specify either driver or file")
            return sub
        if not path_has_protocol(name):
            name = resolve_backing_path(node.filename, name)
        proto = flatten(filename_options(name))
        if not fmt:
            # No backing format in the header: probe, as QEMU does, through
            # the node the name opens.
            fmt = await (_probe(str(proto["filename"])) if proto["driver"] == "file"
                         else _probe_through(proto))
        return {"driver": fmt, **{f"file.{k}": v for k, v in proto.items()}}

    async def _open_backing(
        self, node: BlockNode, spec: ChildSpec, options: dict[str, Any]
    ) -> None:
        key = spec.option
        if key in options:
            ref = options.pop(key)
            node.explicit_options.pop(key, None)
            if ref is None:
                return
            child = self.graph.lookup(str(ref))
            if child is None:
                raise GenericError(f"Cannot find device='{ref}' nor node-name='{ref}'")
            self._attach(node, child, spec, key)
            return
        implicit = False
        sub: dict[str, Any] = {}
        if has_sub(options, key):
            sub = extract_sub(options, key)
            extract_sub(node.explicit_options, key)
        elif node.backing_file:
            implicit = True
        else:
            return
        try:
            if implicit:
                sub = await self._header_backing_options(node)
            child = await self.open(sub, options, spec.role)
        except GenericError as e:
            raise GenericError(f"Could not open backing file: {e.desc}") from None
        if implicit:
            node.auto_backing_file = child.filename
        child.inherits_from = node
        self._attach(node, child, spec, key)


async def _probe_through(flat: dict[str, Any]) -> str:
    """The format QEMU would probe on a protocol node opened from ``flat``
    options: the node is opened read-only on its own, its first sector read."""
    from blockd.drivers.open import close_image, open_node, unflatten

    node = await open_node(unflatten(flat), OpenFlags(read_only=True, force_share=True),
                           backing=False)
    try:
        head = await node.read(0, min(512, node.get_length()))
    except OSError as e:
        raise GenericError(f"Could not read image for determining its format: "
                           f"{os.strerror(e.errno or 5)}") from None
    finally:
        await close_image(node)
    return probe_format(head)


async def _probe(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise GenericError(f"Could not open '{path}': {os.strerror(e.errno or 5)}") from None
    return probe_format(head)


async def close_node(graph: NodeRegistry, node: BlockNode) -> None:
    """Detach a node's children, close its driver, forget its name."""
    if node.closed:
        return
    node.closed = True
    graph.remove(node)
    set_perms = getattr(node.driver, "set_perms", None)
    if set_perms is not None and node.perm:
        try:
            set_perms(0, 0xF)
        except GenericError:
            pass
    try:
        # The driver closes with its children still attached (qcow2 flushes
        # and marks the image clean through its file).
        await node.driver.close()
    except Exception:  # closing must go on for the rest of the graph
        pass
    for c in list(node.children):
        detach_child(c)


async def blockdev_add(graph: NodeRegistry, args: dict[str, Any]) -> BlockNode:
    """qmp_blockdev_add(): open a monitor-owned root from visited BlockdevOptions."""
    if "node-name" not in args:
        raise GenericError("'node-name' must be specified for the root node")
    op = GraphOpener(graph, graph.namer)
    try:
        node = await op.open(flatten(args))
    except BaseException:
        await op.rollback()
        raise
    node.monitor_owned = True
    node.refcount += 1
    return node


def _busy_reason(node: BlockNode) -> str | None:
    """The first op blocker: a job's, or the one QEMU puts on backing files
    (bdrv_set_backing_hd)."""
    if node.blockers:
        return node.blockers[0]
    for c in node.parents:
        if c.name == "backing" and c.parent is not None:
            return f"node is used as backing hd of '{c.parent.node_name}'"
    return None


async def blockdev_del(graph: NodeRegistry, node_name: str) -> None:
    """qmp_blockdev_del(): checks in QEMU's order, then release the root."""
    node = graph.lookup(node_name)
    if node is None:
        raise GenericError(f"Failed to find node with node-name='{node_name}'")
    # bdrv_has_blk(): a BlockBackend ("root" edge) uses it.  A job's own node
    # edges are not BlockBackends; they block through node.blockers below.
    if any(c.parent is None and c.name == "root" for c in node.parents):
        raise GenericError(f"Node {node_name} is in use")
    busy = _busy_reason(node)
    if busy is not None:
        raise GenericError(f"Node '{node_name}' is busy: {busy}")
    if not node.monitor_owned:
        raise GenericError(f"Node {node_name} is not owned by the monitor")
    if node.refcount > 1:
        raise GenericError(f"Block device {node_name} is in use")
    node.monitor_owned = False
    await unref(graph, node)


async def unref(graph: NodeRegistry, node: BlockNode) -> None:
    """Drop one reference; at zero flush and close the node, then release what it
    held: its children lose an edge each and close when nobody else holds them."""
    node.refcount -= 1
    if node.refcount > 0 or node.closed:
        return
    try:
        await node.driver.flush()
    except Exception:
        pass
    children = [c for c in node.children]
    await close_node(graph, node)
    for c in children:
        # close_node detached the edge (refcount - 1 already).
        child = c.child
        if child.refcount <= 0 and not child.monitor_owned:
            child.refcount = 1
            await unref(graph, child)
        elif not child.closed:
            if child.inherits_from is node:
                child.inherits_from = None
            try:
                permissions.refresh([child])
            except GenericError:
                pass


async def close_all(graph: NodeRegistry) -> None:
    """Shutdown: flush and close every node, parents before children."""
    nodes = graph.all_nodes()
    try:
        order = permissions.topo_order(nodes)
    except GenericError:
        order = list(reversed(nodes))
    for node in order:
        try:
            await node.driver.flush()
        except Exception:
            pass
    for node in order:
        await close_node(graph, node)
