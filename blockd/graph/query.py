"""Replies of the block query commands, shaped as QEMU 7.2's block/qapi.c builds them.

* :meth:`BlockQuery.block_device_info` is bdrv_block_device_info() (BlockDeviceInfo),
* :meth:`BlockQuery.image_info` is bdrv_query_image_info() (ImageInfo, flat),
* :func:`named_block_nodes` is bdrv_named_nodes_list() (query-named-block-nodes),
* :func:`query_block` is qmp_query_block() over the daemon's block backends,
* :func:`xdbg_block_graph` is bdrv_get_xdbg_block_graph().

Every dict is filled in QAPI schema member order; the QMP layer derives QEMU's
QDict wire order from that.  A :class:`BlockQuery` lives for one command: it
computes each node's file name and ImageInfo once, so the flat reply is linear
in the number of nodes and the nested reply (each node carries its whole
backing chain, O(depth^2) in size) shares one ImageInfo object per chain link.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from blockd.drivers.base import ChildRole
from blockd.graph.filename import (
    FilenameCache,
    allocated_file_size,
    cow_child,
    filter_child,
    filter_or_cow_child,
    header_backing,
    is_protocol,
    primary_child,
)
from blockd.graph.node import BdrvChild, BlockNode
from blockd.tools.img_cmds.info import snapshot_infos

_DATA_ROLES = ChildRole.DATA | ChildRole.METADATA | ChildRole.FILTERED

# BlockPermission in enum order (bit i = value i): QEMU 7.2's BLK_PERM_*.
PERMISSION_NAMES = ("consistent-read", "write", "write-unchanged", "resize")

# Throttle members of BlockDeviceInfo after ``image`` (schema order), each with
# the key of the backend's ThrottleLimits-style config it comes from.
_THROTTLE_MAX_KEYS = (
    ("bps_max", "bps-total-max"),
    ("bps_rd_max", "bps-read-max"),
    ("bps_wr_max", "bps-write-max"),
    ("iops_max", "iops-total-max"),
    ("iops_rd_max", "iops-read-max"),
    ("iops_wr_max", "iops-write-max"),
)
_THROTTLE_LEN_KEYS = (
    ("bps_max_length", "bps_max", "bps-total-max-length"),
    ("bps_rd_max_length", "bps_rd_max", "bps-read-max-length"),
    ("bps_wr_max_length", "bps_wr_max", "bps-write-max-length"),
    ("iops_max_length", "iops_max", "iops-total-max-length"),
    ("iops_rd_max_length", "iops_rd_max", "iops-read-max-length"),
    ("iops_wr_max_length", "iops_wr_max", "iops-write-max-length"),
)
_THROTTLE_AVG_KEYS = (
    ("bps", "bps-total"),
    ("bps_rd", "bps-read"),
    ("bps_wr", "bps-write"),
    ("iops", "iops-total"),
    ("iops_rd", "iops-read"),
    ("iops_wr", "iops-write"),
)


def _get_info(node: BlockNode) -> tuple[int, bool] | None:
    """bdrv_get_info(): (cluster size, dirty) or None where QEMU gets -ENOTSUP.

    Filters without their own answer pass the question to the filtered child;
    raw asks its file child.
    """
    seen = 0
    cur: BlockNode | None = node
    while cur is not None and seen < 100000:
        seen += 1
        drv = cur.driver
        name = drv.name
        if name == "qcow2":
            return int(getattr(drv, "cluster_size", 0) or 0), bool(getattr(drv, "dirty", False))
        if name in ("file", "host_device"):
            return 0, False
        custom = getattr(drv, "get_info", None)
        if callable(custom):
            result = custom()
            if result is None:
                return None
            return int(result[0]), bool(result[1])
        if name == "raw":
            f = cur.child("file")
            cur = f.child if f is not None else None
            continue
        filtered = filter_child(cur)
        cur = filtered.child if filtered is not None else None
    return None


def _snapshot_list(node: BlockNode) -> list[dict[str, Any]] | None:
    """bdrv_snapshot_list(): the format's table, else the primary child's when it is
    the only child holding data (bdrv_snapshot_fallback_child), else None."""
    cur = node
    for _ in range(100000):
        if cur.driver.name == "qcow2":
            return snapshot_infos(cur.driver)
        fallback = primary_child(cur)
        if fallback is None:
            return None
        for c in cur.children:
            if c is not fallback and c.role & _DATA_ROLES:
                return None
        cur = fallback.child
    return None


def _image_length(node: BlockNode) -> int:
    """bdrv_getlength(): whole 512-byte sectors."""
    return (int(node.driver.get_length()) + 511) & ~511


def _perm_list(bits: int) -> list[str]:
    # QEMU prepends while walking the enum upwards: highest permission first.
    return [PERMISSION_NAMES[i] for i in reversed(range(len(PERMISSION_NAMES))) if bits & (1 << i)]


def skip_implicit_filters(node: BlockNode) -> BlockNode:
    """bdrv_skip_implicit_filters(): below job-inserted filters the user never named."""
    for _ in range(100000):
        if not node.implicit:
            break
        c = filter_child(node)
        if c is None:
            break
        node = c.child
    return node


class BlockQuery:
    """One query's view of the graph: names and ImageInfo computed once per node."""

    def __init__(self) -> None:
        self.names = FilenameCache()
        self._images: dict[int, dict[str, Any]] = {}
        self._nested: dict[tuple[int, bool], tuple[dict[str, Any], int]] = {}

    # -- ImageInfo -----------------------------------------------------------------

    def image_info(self, node: BlockNode) -> dict[str, Any]:
        """bdrv_query_image_info(): the node's flat ImageInfo (shared, don't mutate)."""
        cached = self._images.get(id(node))
        if cached is not None:
            return cached
        drv = node.driver
        info: dict[str, Any] = {"filename": self.names.filename(node), "format": drv.name}
        got = _get_info(node)
        if got is not None:
            info["dirty-flag"] = got[1]
        actual = allocated_file_size(node)
        if actual is not None:
            info["actual-size"] = actual
        info["virtual-size"] = _image_length(node)
        if got is not None and got[0]:
            info["cluster-size"] = got[0]
        if getattr(drv, "encrypted", False) is True:
            info["encrypted"] = True
        backing_name, backing_fmt = header_backing(node)
        if backing_name:
            info["backing-filename"] = backing_name
            full = self.names.full_backing_filename(node)
            if full is not None:
                info["full-backing-filename"] = full
            if backing_fmt:
                info["backing-filename-format"] = backing_fmt
        snapshots = _snapshot_list(node)
        if snapshots:
            info["snapshots"] = snapshots
        specific = drv.format_specific_info()
        if specific is not None:
            info["format-specific"] = {"type": drv.name, "data": specific}
        self._images[id(node)] = info
        return info

    def _chain(self, node: BlockNode, skip_implicit: bool) -> list[BlockNode]:
        """The node and what bdrv_block_device_info() walks below it."""
        chain = [node]
        seen = {id(node)}
        cur = node
        while True:
            c = filter_or_cow_child(cur)
            if c is None:
                break
            cur = c.child
            if skip_implicit:
                cur = skip_implicit_filters(cur)
            if id(cur) in seen:  # a cycle would be a graph bug; stop rather than hang
                break
            seen.add(id(cur))
            chain.append(cur)
        return chain

    def nested_image_info(
        self, node: BlockNode, skip_implicit: bool = False
    ) -> tuple[dict[str, Any], int]:
        """ImageInfo with ``backing-image`` all the way down, and the chain depth."""
        key = (id(node), skip_implicit)
        hit = self._nested.get(key)
        if hit is not None:
            return hit
        chain = self._chain(node, skip_implicit)
        # Build bottom-up, reusing any link already built for another node.
        start = len(chain) - 1
        for i, n in enumerate(chain):
            if (id(n), skip_implicit) in self._nested:
                start = i
                break
        below_key = (id(chain[start]), skip_implicit)
        if below_key not in self._nested:
            self._nested[below_key] = (self.image_info(chain[start]), 0)
        below, depth = self._nested[below_key]
        for n in reversed(chain[:start]):
            flat = self.image_info(n)
            info: dict[str, Any] = {k: v for k, v in flat.items() if k != "format-specific"}
            info["backing-image"] = below
            if "format-specific" in flat:
                info["format-specific"] = flat["format-specific"]
            depth += 1
            self._nested[(id(n), skip_implicit)] = (info, depth)
            below = info
        return self._nested[key]

    # -- BlockDeviceInfo -----------------------------------------------------------

    def block_device_info(
        self, node: BlockNode, flat: bool, backend: Any = None
    ) -> dict[str, Any]:
        """bdrv_block_device_info(blk, bs, flat): ``backend`` is the BlockBackend
        (query-block) or None (query-named-block-nodes)."""
        drv = node.driver
        info: dict[str, Any] = {
            "file": self.names.filename(node),
            "node-name": node.node_name,
            "ro": bool(node.read_only),
            "drv": drv.name,
        }
        cow = cow_child(node)
        if cow is not None:
            info["backing_file"] = self.names.filename(cow.child)
        if flat:
            image, depth = self.image_info(node), 0
        else:
            image, depth = self.nested_image_info(node, skip_implicit=backend is not None)
        info["backing_file_depth"] = depth
        info["encrypted"] = getattr(drv, "encrypted", False) is True
        info["detect_zeroes"] = node.detect_zeroes
        throttle = _backend_throttle(backend)
        for key, src in _THROTTLE_AVG_KEYS:
            info[key] = int(throttle.get(src, 0)) if throttle else 0
        info["image"] = image
        if throttle:
            for key, src in _THROTTLE_MAX_KEYS:
                if throttle.get(src):
                    info[key] = int(throttle[src])
            for key, has, src in _THROTTLE_LEN_KEYS:
                if has in info:
                    info[key] = int(throttle.get(src, 1))
            if throttle.get("iops-size"):
                info["iops_size"] = int(throttle["iops-size"])
            info["group"] = str(throttle.get("group", ""))
        info["cache"] = {
            "writeback": bool(getattr(backend, "write_cache", True)) if backend else True,
            "direct": bool(node.cache_direct),
            "no-flush": bool(node.cache_no_flush),
        }
        info["write_threshold"] = int(getattr(node, "write_threshold", 0) or 0)
        bitmaps = getattr(node, "dirty_bitmaps", None)
        if bitmaps:
            info["dirty-bitmaps"] = [_bitmap_info(b) for b in bitmaps]
        return info


def _backend_throttle(backend: Any) -> dict[str, Any] | None:
    """The backend's I/O limits (ThrottleLimits keys plus "group"), None if unthrottled."""
    if backend is None:
        return None
    cfg = getattr(backend, "throttle", None)
    if callable(cfg):
        cfg = cfg()
    return dict(cfg) if cfg else None


def _bitmap_info(bitmap: Any) -> dict[str, Any]:
    """BlockDirtyInfo of a bitmap object (``query_info()`` or its attributes)."""
    query = getattr(bitmap, "query_info", None)
    if callable(query):
        result: dict[str, Any] = query()
        return result
    out: dict[str, Any] = {}
    name = getattr(bitmap, "name", None)
    if name:
        out["name"] = name
    out["count"] = int(getattr(bitmap, "count", 0))
    out["granularity"] = int(getattr(bitmap, "granularity", 65536))
    out["recording"] = bool(getattr(bitmap, "recording", True))
    out["busy"] = bool(getattr(bitmap, "busy", False))
    out["persistent"] = bool(getattr(bitmap, "persistent", False))
    if getattr(bitmap, "inconsistent", False):
        out["inconsistent"] = True
    return out


def named_block_nodes(nodes: Iterable[BlockNode], flat: bool) -> list[dict[str, Any]]:
    """query-named-block-nodes: ``nodes`` most recently named first."""
    q = BlockQuery()
    return [q.block_device_info(n, flat) for n in nodes]


def query_block(backends: Iterable[Any]) -> list[dict[str, Any]]:
    """query-block: one BlockInfo per backend with a name or an attached device.

    A backend object offers ``name`` ("" if anonymous), ``qdev`` (the attached
    device's QOM path or None), ``root`` (its BdrvChild or None), ``removable``,
    ``locked``, ``tray_open`` (None without a tray), ``io_status`` (None if not
    enabled), ``write_cache`` and ``throttle`` (ThrottleLimits-style dict + "group"
    or None).  qemu-storage-daemon has no such backends: the reply is ``[]``.
    """
    q = BlockQuery()
    out: list[dict[str, Any]] = []
    for blk in backends:
        name = str(getattr(blk, "name", "") or "")
        qdev = getattr(blk, "qdev", None)
        if not name and not qdev:
            continue
        info: dict[str, Any] = {"device": name}
        if qdev:
            info["qdev"] = qdev
        info["type"] = "unknown"
        info["removable"] = bool(getattr(blk, "removable", False))
        info["locked"] = bool(getattr(blk, "locked", False))
        root: BdrvChild | None = getattr(blk, "root", None)
        if root is not None:
            bs = skip_implicit_filters(root.child)
            info["inserted"] = q.block_device_info(bs, False, backend=blk)
        tray = getattr(blk, "tray_open", None)
        if tray is not None:
            info["tray_open"] = bool(tray)
        io_status = getattr(blk, "io_status", None)
        if io_status is not None:
            info["io-status"] = io_status
        out.append(info)
    return out


def xdbg_block_graph(
    nodes: Iterable[BlockNode],
    backends: Iterable[Any] = (),
    jobs: Iterable[Any] = (),
) -> dict[str, Any]:
    """x-debug-query-block-graph: ``nodes`` in the order they got their names.

    Backends (``name`` or ``qdev``, ``root``) come first, then jobs (``id`` and
    ``graph_children``: the BdrvChild list of nodes the job uses), then nodes with
    their child edges; ids are handed out on first sight.  QEMU prepends to both
    lists, so they come out reversed.
    """
    ids: dict[int, int] = {}
    out_nodes: list[dict[str, Any]] = []
    out_edges: list[dict[str, Any]] = []

    def num(obj: object) -> int:
        n = ids.get(id(obj))
        if n is None:
            n = ids[id(obj)] = len(ids) + 1
        return n

    def add_node(obj: object, kind: str, name: str) -> None:
        out_nodes.append({"id": num(obj), "type": kind, "name": name})

    def add_edge(parent: object, child: BdrvChild) -> None:
        out_edges.append({
            "parent": num(parent),
            "child": num(child.child),
            "name": child.name,
            "perm": _perm_list(child.perm),
            "shared-perm": _perm_list(child.shared_perm),
        })

    for blk in backends:
        name = str(getattr(blk, "name", "") or "") or str(getattr(blk, "qdev", "") or "")
        add_node(blk, "block-backend", name)
        root = getattr(blk, "root", None)
        if root is not None:
            add_edge(blk, root)
    for job in jobs:
        add_node(job, "block-job", str(getattr(job, "id", "")))
        for c in getattr(job, "graph_children", ()):
            add_edge(job, c)
    for bs in nodes:
        add_node(bs, "block-driver", bs.node_name)
        for c in bs.children:
            add_edge(bs, c)
    out_nodes.reverse()
    out_edges.reverse()
    return {"nodes": out_nodes, "edges": out_edges}


__all__ = [
    "PERMISSION_NAMES",
    "BlockQuery",
    "is_protocol",
    "named_block_nodes",
    "query_block",
    "skip_implicit_filters",
    "xdbg_block_graph",
]
