"""AioContext bookkeeping in-process: which nodes a device, a reopen or a
blockdev-add moves, and that a failed command leaves every context as it was."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from blockd.daemon import Daemon
from blockd.graph.consistency import check_graph
from blockd.qmp.errors import GenericError

pytestmark = pytest.mark.qemu


def hd(d: Path, i: int) -> dict[str, Any]:
    return {"driver": "qcow2", "node-name": f"hd{i}",
            "file": {"driver": "file", "node-name": f"hd{i}-file",
                     "filename": str(d / f"hd{i}.img")}}


async def run(daemon: Daemon, cmd: str, args: dict[str, Any]) -> Any:
    return await daemon.execute(cmd, daemon.schema.visit_command_args(cmd, args))


def contexts(daemon: Daemon) -> dict[str, str | None]:
    return {n.node_name: n.aio_context for n in daemon.graph.named_nodes()}


@pytest.fixture
async def daemon(tmp_path: Path, qemu_img: str) -> Any:
    for i in range(3):
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", f"hd{i}.img", "1M"],
                       check=True, cwd=tmp_path)
    d = Daemon()
    for i in range(3):
        await run(d, "blockdev-add", hd(tmp_path, i))
    await run(d, "object-add", {"qom-type": "iothread", "id": "iothread0"})
    await run(d, "object-add", {"qom-type": "iothread", "id": "iothread1"})
    yield d
    await d.stop()


async def test_disk_moves_its_component_and_back(daemon: Daemon) -> None:
    await run(daemon, "device_add", {"driver": "virtio-scsi", "id": "scsi0",
                                     "iothread": "iothread0"})
    await run(daemon, "device_add", {"driver": "scsi-hd", "drive": "hd0", "id": "d0",
                                     "bus": "scsi0.0", "share-rw": True})
    assert contexts(daemon) == {"hd0": "iothread0", "hd0-file": "iothread0",
                                "hd1": None, "hd1-file": None, "hd2": None, "hd2-file": None}
    # The backing joins the overlay's iothread (bdrv_attach_child_common).
    await run(daemon, "blockdev-reopen", {"options": [
        {"driver": "qcow2", "node-name": "hd0", "file": "hd0-file", "backing": "hd2"}]})
    assert contexts(daemon)["hd2-file"] == "iothread0"
    await run(daemon, "blockdev-reopen", {"options": [
        {"driver": "qcow2", "node-name": "hd0", "file": "hd0-file", "backing": None}]})
    await run(daemon, "device_del", {"id": "d0"})
    await asyncio.sleep(0)
    ctx = contexts(daemon)
    assert ctx["hd0"] is None and ctx["hd0-file"] is None
    # Nothing pulls hd2 back: it stays where the reopen put it, as in QEMU.
    assert ctx["hd2"] == "iothread0"
    assert check_graph(daemon.graph) == []


async def test_failed_reopen_restores_contexts(daemon: Daemon) -> None:
    await run(daemon, "device_add", {"driver": "virtio-scsi", "id": "scsi0",
                                     "iothread": "iothread0"})
    await run(daemon, "device_add", {"driver": "scsi-hd", "drive": "hd0", "id": "d0",
                                     "bus": "scsi0.0"})
    before = contexts(daemon)
    # The first item moves hd2 into iothread0; the second fails afterwards.
    with pytest.raises(GenericError, match="would create a cycle"):
        await run(daemon, "blockdev-reopen", {"options": [
            {"driver": "qcow2", "node-name": "hd0", "file": "hd0-file", "backing": "hd2"},
            {"driver": "qcow2", "node-name": "hd2", "file": "hd2-file", "backing": "hd0"}]})
    assert contexts(daemon) == before
    assert check_graph(daemon.graph) == []


async def test_failed_plug_changes_nothing(daemon: Daemon) -> None:
    await run(daemon, "device_add", {"driver": "virtio-scsi", "id": "scsi0",
                                     "iothread": "iothread0"})
    await run(daemon, "device_add", {"driver": "virtio-scsi", "id": "scsi1",
                                     "iothread": "iothread1"})
    await run(daemon, "device_add", {"driver": "scsi-hd", "drive": "hd0", "id": "d0",
                                     "bus": "scsi0.0", "share-rw": True})
    before = contexts(daemon)
    with pytest.raises(GenericError, match="Cannot change iothread of active block backend"):
        await run(daemon, "device_add", {"driver": "scsi-hd", "drive": "hd0", "id": "d1",
                                         "bus": "scsi1.0", "share-rw": True})
    assert contexts(daemon) == before
    # The failed disk's BlockBackend is gone: only d0 holds hd0.
    node = daemon.graph.lookup("hd0")
    assert node is not None
    assert [c.user_desc for c in node.parents] == ["block device 'd0'"]
