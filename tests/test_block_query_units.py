"""Block query builders in-process: block backends (devices, exports) and jobs,
which qemu-storage-daemon cannot show, checked against QEMU 7.2's recorded shapes."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from blockd.daemon import Daemon
from blockd.drivers.base import ChildRole
from blockd.graph.filename import (
    FilenameInfo,
    full_backing_filename_from_filename,
    path_combine,
)
from blockd.graph.node import BdrvChild, BlockNode, attach_child, detach_child
from blockd.graph.query import BlockQuery, named_block_nodes, query_block, xdbg_block_graph
from blockd.qmp.json_encoder import encode
from blockd.qmp.qdict import qdict_ordered


@dataclass
class Backend:
    """What query-block reads from a BlockBackend."""

    name: str
    qdev: str | None
    root: BdrvChild | None = None
    removable: bool = False
    locked: bool = False
    tray_open: bool | None = None
    io_status: str | None = "ok"
    write_cache: bool = True
    throttle: dict[str, Any] | None = None


@dataclass
class Job:
    id: str
    graph_children: list[BdrvChild] = field(default_factory=list)


async def _chain(tmp_path: Path, qemu_img: str) -> Daemon:
    for args in (["base.qcow2", "1M"], ["-b", "base.qcow2", "-F", "qcow2", "mid.qcow2"],
                 ["-b", "mid.qcow2", "-F", "qcow2", "top.qcow2"]):
        subprocess.run([qemu_img, "create", "-f", "qcow2", *args], check=True,
                       capture_output=True, cwd=tmp_path)
    daemon = Daemon()
    await daemon.execute("blockdev-add", {
        "driver": "qcow2", "node-name": "disk",
        "file": {"driver": "file", "filename": str(tmp_path / "top.qcow2")}})
    return daemon


@pytest.mark.qemu
async def test_query_block_device_shape(tmp_path: Path, qemu_img: str) -> None:
    daemon = await _chain(tmp_path, qemu_img)
    try:
        node = daemon.graph.lookup("disk")
        assert node is not None
        root = attach_child(None, node, "root", ChildRole.DATA | ChildRole.PRIMARY,
                            perm=0x3, shared=0xD, user_desc="block device")
        blk = Backend("", "/machine/peripheral/virtio-disk0/virtio-backend", root)
        anonymous = Backend("", None, root)  # an export's backend: not listed
        [info] = query_block([blk, anonymous])
        wire = encode(qdict_ordered(info))
        # Member order as qemu-system 7.2 prints it (qmp-protocol.md section 9).
        assert wire.startswith('{"io-status": "ok", "device": "", "locked": false, '
                               '"removable": false, "inserted": {')
        assert wire.endswith('"qdev": "/machine/peripheral/virtio-disk0/virtio-backend", '
                             '"type": "unknown"}')
        inserted = info["inserted"]
        assert inserted["backing_file_depth"] == 2
        assert inserted["image"]["backing-image"]["backing-image"]["filename"] == str(
            tmp_path / "base.qcow2")

        # A throttled backend reports its limits, the group and burst lengths.
        blk.throttle = {"bps-total": 1000, "iops-read-max": 50, "iops-read": 10,
                        "group": "g0"}
        inserted = query_block([blk])[0]["inserted"]
        assert (inserted["bps"], inserted["iops_rd"], inserted["iops_rd_max"],
                inserted["iops_rd_max_length"], inserted["group"]) == (1000, 10, 50, 1, "g0")
        assert "bps_max" not in inserted

        job = Job("job0", [root])
        graph = xdbg_block_graph(list(reversed(daemon.graph.named_nodes())), [blk], [job])
        assert graph["nodes"][-1] == {
            "id": 1, "type": "block-backend",
            "name": "/machine/peripheral/virtio-disk0/virtio-backend"}
        assert graph["nodes"][-2] == {"id": 3, "type": "block-job", "name": "job0"}
        assert graph["edges"][-1] == {"parent": 1, "child": 2, "name": "root",
                                      "perm": ["write", "consistent-read"],
                                      "shared-perm": ["resize", "write-unchanged",
                                                      "consistent-read"]}
        detach_child(root)
    finally:
        await daemon.stop()


def test_path_helpers() -> None:
    assert path_combine("/a/b/c.qcow2", "d.qcow2") == "/a/b/d.qcow2"
    assert path_combine("c.qcow2", "d.qcow2") == "d.qcow2"
    assert path_combine("nbd://host/x", "y") == "nbd://host/y"
    assert path_combine("/a/b", "/abs") == "/abs"
    assert full_backing_filename_from_filename("json:{}", "rel") is None
    assert full_backing_filename_from_filename("json:{}", "/abs") == "/abs"
    assert full_backing_filename_from_filename("/d/x", "") is None


@pytest.mark.qemu
async def test_implicit_filter_is_transparent(tmp_path: Path, qemu_img: str) -> None:
    """A job's implicit filter shows its child's name; query-block looks through it."""
    daemon = await _chain(tmp_path, qemu_img)
    try:
        await daemon.execute("blockdev-add", {"driver": "copy-on-read", "node-name": "cor",
                                              "file": "disk"})
        cor = daemon.graph.lookup("cor")
        assert cor is not None
        q = BlockQuery()
        assert q.names.filename(cor).startswith("json:{")
        cor.implicit = True
        q = BlockQuery()
        assert q.names.filename(cor) == str(tmp_path / "top.qcow2")
        root = attach_child(None, cor, "root", ChildRole.DATA | ChildRole.PRIMARY)
        inserted = query_block([Backend("drive0", None, root)])[0]["inserted"]
        assert inserted["node-name"] == "disk" and inserted["backing_file_depth"] == 2
        # query-named-block-nodes does not skip it: the filter counts as a level.
        named = {n["node-name"]: n for n in named_block_nodes(daemon.graph.named_nodes(), False)}
        assert named["cor"]["backing_file_depth"] == 3
        detach_child(root)
    finally:
        await daemon.stop()


class CountingQuery(BlockQuery):
    """Counts how often each node's ImageInfo is built."""

    def __init__(self) -> None:
        super().__init__()
        self.built: dict[str, int] = {}

    def image_info(self, node: BlockNode) -> dict[str, Any]:
        if id(node) not in self._images:
            self.built[node.node_name] = self.built.get(node.node_name, 0) + 1
        return super().image_info(node)


@pytest.mark.qemu
async def test_each_node_computed_once(tmp_path: Path, qemu_img: str) -> None:
    """The nested reply shares one ImageInfo per chain link and each node's name is
    refreshed once per query, so building a reply is linear in the graph size."""
    depth = 12
    subprocess.run([qemu_img, "create", "-f", "qcow2", "c0.qcow2", "1M"], check=True,
                   capture_output=True, cwd=tmp_path)
    for i in range(1, depth):
        subprocess.run([qemu_img, "create", "-f", "qcow2", "-b", f"c{i - 1}.qcow2", "-F",
                        "qcow2", f"c{i}.qcow2"], check=True, capture_output=True, cwd=tmp_path)
    daemon = Daemon()
    try:
        await daemon.execute("blockdev-add", {
            "driver": "qcow2", "node-name": "top", "read-only": True,
            "file": {"driver": "file", "filename": str(tmp_path / f"c{depth - 1}.qcow2")}})
        nodes = daemon.graph.named_nodes()
        q = CountingQuery()
        computed: list[int] = []
        orig = q.names._compute

        def compute(node: BlockNode) -> FilenameInfo:
            computed.append(id(node))
            return orig(node)

        q.names._compute = compute  # type: ignore[method-assign]
        infos = [q.block_device_info(n, False) for n in nodes]
        assert len(nodes) == 2 * depth
        assert sorted(computed) == sorted(id(n) for n in nodes)
        assert set(q.built.values()) == {1} and len(q.built) == len(nodes)
        top = next(i for i in infos if i["node-name"] == "top")
        assert top["backing_file_depth"] == depth - 1
        # The chain below "top" is the very object reported for the next node.
        below = top["image"]["backing-image"]
        assert any(i["image"] is below for i in infos)
    finally:
        await daemon.stop()
