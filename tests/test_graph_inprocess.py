"""The graph engine driven in-process through the daemon's command path:
edges from both ends, inherits_from, set_backing (the inherits-from commit),
frozen links, non-node users and op blockers, generated names, shutdown."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from blockd.daemon import Daemon
from blockd.drivers.locking import (
    BLK_PERM_CONSISTENT_READ,
    BLK_PERM_WRITE,
    BLK_PERM_WRITE_UNCHANGED,
    _conflicts,
)
from blockd.graph.backing import freeze_backing_chain, set_backing, unfreeze_backing_chain
from blockd.graph.consistency import check_graph, graph_snapshot
from blockd.graph.users import attach_user, detach_user
from blockd.qmp.errors import GenericError

pytestmark = pytest.mark.qemu


@pytest.fixture
def chain(tmp_path: Path, qemu_img: str) -> Path:
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "hd2.img", "1M"], check=True,
                   cwd=tmp_path)
    for lower, upper in (("hd2.img", "hd1.img"), ("hd1.img", "hd0.img")):
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", lower, "-F", "qcow2",
                        upper], check=True, cwd=tmp_path)
    return tmp_path


def hd(d: Path, i: int, **kw: Any) -> dict[str, Any]:
    return {"driver": "qcow2", "node-name": f"hd{i}",
            "file": {"driver": "file", "node-name": f"hd{i}-file",
                     "filename": str(d / f"hd{i}.img")}, **kw}


async def run(daemon: Daemon, cmd: str, args: dict[str, Any]) -> Any:
    visited = daemon.schema.visit_command_args(cmd, args)
    before = graph_snapshot(daemon.graph)
    try:
        return await daemon.execute(cmd, visited)
    except GenericError:
        assert graph_snapshot(daemon.graph) == before
        raise
    finally:
        assert check_graph(daemon.graph) == []


async def test_inline_chain_edges_and_inheritance(chain: Path) -> None:
    d = Daemon()
    opts = hd(chain, 0, backing=hd(chain, 1, backing=hd(chain, 2)))
    await run(d, "blockdev-add", opts)
    g = d.graph
    hd0, hd1, hd2 = (g.lookup(f"hd{i}") for i in range(3))
    assert hd0 and hd1 and hd2
    # QEMU's list order: the most recently attached child first.
    assert [c.name for c in hd0.children] == ["backing", "file"]
    hd0_file = g.lookup("hd0-file")
    assert hd0_file is not None
    assert hd0.driver.backing is hd1.driver and hd0.driver.file is hd0_file.driver
    assert hd1.inherits_from is hd0 and hd2.inherits_from is hd1
    assert hd0.monitor_owned and not hd1.monitor_owned
    # Backing files are read-only by default.
    assert not hd0.read_only and hd1.read_only and hd2.read_only
    # Names are given parent first (before its backing is opened); the query
    # order is the most recently named first.
    assert [n.node_name for n in g.named_nodes()] == [
        "hd2", "hd2-file", "hd1", "hd1-file", "hd0", "hd0-file"]
    await d.stop()


async def test_set_backing_repoints_inherits_from(chain: Path) -> None:
    d = Daemon()
    await run(d, "blockdev-add", hd(chain, 0, backing=hd(chain, 1, backing=hd(chain, 2))))
    g = d.graph
    hd0, hd2 = g.lookup("hd0"), g.lookup("hd2")
    assert hd0 and hd2
    # What block-stream does at the end: drop hd1 from the chain.
    await set_backing(g, hd0, hd2)
    assert check_graph(g) == []
    assert g.lookup("hd1") is None and g.lookup("hd1-file") is None
    assert hd2.inherits_from is hd0
    # hd2 still inherits, so its options can be changed through hd0.
    await run(d, "x-blockdev-reopen",
              hd(chain, 0, backing={**hd(chain, 2), "l2-cache-size": 2 << 20}))
    await d.stop()


async def test_referenced_backing_is_not_reopened(chain: Path) -> None:
    d = Daemon()
    await run(d, "blockdev-add", hd(chain, 1, backing=None))
    await run(d, "blockdev-add", hd(chain, 0, backing="hd1"))
    hd1 = d.graph.lookup("hd1")
    assert hd1 is not None and hd1.inherits_from is None
    with pytest.raises(GenericError, match=r"^Cannot change the option 'backing\."):
        await run(d, "x-blockdev-reopen",
                  hd(chain, 0, backing={**hd(chain, 1), "l2-cache-size": 2 << 20}))
    await d.stop()


async def test_frozen_links(chain: Path) -> None:
    d = Daemon()
    await run(d, "blockdev-add", hd(chain, 0, backing=hd(chain, 1, backing=hd(chain, 2))))
    g = d.graph
    hd0, hd1 = g.lookup("hd0"), g.lookup("hd1")
    assert hd0 and hd1
    freeze_backing_chain(hd0, None)
    # 245 test_block_commit_1: the deeper link is checked first.
    with pytest.raises(GenericError) as e:
        await run(d, "blockdev-reopen", {"options": [
            hd(chain, 0, backing=hd(chain, 1, backing=None))]})
    assert e.value.desc == "Cannot change frozen 'backing' link from 'hd1' to 'hd2'"
    with pytest.raises(GenericError) as e:
        await run(d, "blockdev-reopen", {"options": [hd(chain, 0, backing=None)]})
    assert e.value.desc == "Cannot change frozen 'backing' link from 'hd0' to 'hd1'"
    with pytest.raises(GenericError) as e:
        await set_backing(g, hd1, None)
    assert e.value.desc == "Cannot change frozen 'backing' link from 'hd1' to 'hd2'"
    with pytest.raises(GenericError) as e:
        freeze_backing_chain(hd1, None)
    assert e.value.desc == "Cannot change 'backing' link from 'hd1' to 'hd2'"
    unfreeze_backing_chain(hd0, None)
    await run(d, "blockdev-reopen",
              {"options": [hd(chain, 0, backing=hd(chain, 1, backing=None))]})
    assert g.lookup("hd2") is None
    await d.stop()


async def test_users_and_blockers(chain: Path) -> None:
    d = Daemon()
    await run(d, "blockdev-add", hd(chain, 1, backing=None))
    g = d.graph
    hd1 = g.lookup("hd1")
    assert hd1 is not None
    job = attach_user(hd1, "root", BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                      BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED,
                      "stream job 'job0'")
    with pytest.raises(GenericError) as e:
        await run(d, "blockdev-reopen", {"options": [hd(chain, 1, backing=None,
                                                        **{"read-only": True})]})
    assert e.value.desc == "Read-only block node 'hd1' cannot support read-write users"
    with pytest.raises(GenericError) as e:
        await run(d, "blockdev-add", {"driver": "qcow2", "node-name": "q", "file": "hd1"})
    assert e.value.desc == "Permission conflict on node 'hd1': permissions 'write' are both " \
        "required by stream job 'job0' (uses node 'hd1' as 'root' child) and unshared by " \
        "node 'q' (uses node 'hd1' as 'file' child)."
    with pytest.raises(GenericError, match=r"^Node hd1 is in use$"):
        await run(d, "blockdev-del", {"node-name": "hd1"})
    detach_user(job)
    hd1.blockers.insert(0, "block device is in use by block job: commit")
    with pytest.raises(GenericError) as e:
        await run(d, "blockdev-del", {"node-name": "hd1"})
    assert e.value.desc == "Node 'hd1' is busy: block device is in use by block job: commit"
    hd1.blockers.clear()
    await run(d, "blockdev-del", {"node-name": "hd1"})
    assert len(g) == 0
    await d.stop()


async def test_generated_names_and_shutdown(chain: Path) -> None:
    d = Daemon()
    await run(d, "blockdev-add", {"driver": "qcow2", "node-name": "top",
                                  "file": {"driver": "file",
                                           "filename": str(chain / "hd0.img")}})
    names = [n.node_name for n in d.graph.all_nodes()]
    auto = [n for n in names if n.startswith("#")]
    # file child, implicit hd1 and its file, implicit hd2 and its file.
    assert len(auto) == 5
    assert all(re.fullmatch(r"#block\d+\d\d", n) for n in auto)
    await d.stop()
    assert len(d.graph) == 0
    for i in range(3):
        fd = os.open(chain / f"hd{i}.img", os.O_RDONLY)
        try:
            assert not any(_conflicts(fd, b) for b in (100, 101, 102, 103, 200, 201, 202, 203))
        finally:
            os.close(fd)


async def test_failed_add_leaves_no_trace(chain: Path, qemu_img: str) -> None:
    """No node, no edge, no lock, no open descriptor after any failed add."""
    subprocess.run([qemu_img, "create", "-q", "-f", "raw", str(chain / "r.img"), "1M"],
                   check=True)
    d = Daemon()
    await run(d, "blockdev-add", hd(chain, 2, backing=None))
    fds = set(os.listdir("/proc/self/fd"))
    before = graph_snapshot(d.graph)
    failing: list[dict[str, Any]] = [
        # Not qcow2: the file child is closed again.
        {"driver": "qcow2", "node-name": "x",
         "file": {"driver": "file", "filename": str(chain / "r.img")}},
        # The implicit backing chain ends in hd2.img, locked by node hd2.
        hd(chain, 0),
        # A duplicate name found after the children were opened.
        {"driver": "qcow2", "node-name": "hd2",
         "file": {"driver": "file", "node-name": "other", "filename": str(chain / "hd1.img")},
         "backing": None},
        # Backing reference to a missing node after file and format opened.
        {"driver": "qcow2", "node-name": "y", "backing": "nope",
         "file": {"driver": "file", "filename": str(chain / "hd1.img")}},
        # Permission conflict on a referenced node.
        {"driver": "qcow2", "node-name": "z", "file": "hd2-file"},
    ]
    for opts in failing:
        with pytest.raises(GenericError):
            await run(d, "blockdev-add", opts)
        assert graph_snapshot(d.graph) == before
        assert set(os.listdir("/proc/self/fd")) == fds
    await d.stop()


async def test_stream_like_filter_insertion(chain: Path) -> None:
    """iotest 245 test_block_stream_4 with the job's graph changes made by the
    primitives a stream job uses: a copy-on-read filter inserted above hd1, the
    chain below it frozen, the job reading through the filter."""
    from blockd.graph.backing import insert_node, release
    from blockd.graph.reopen import reopen_set_read_only

    d = Daemon()
    opts = hd(chain, 0, backing=hd(chain, 1, backing=hd(chain, 2)))
    await run(d, "blockdev-add", opts)
    g = d.graph
    hd1, hd2 = g.lookup("hd1"), g.lookup("hd2")
    assert hd1 and hd2
    # block-stream device=hd1: the job makes hd1 writable first.
    await reopen_set_read_only(g, hd1, False)
    assert not hd1.read_only and not g.lookup("hd1-file").read_only  # type: ignore[union-attr]
    cor = await insert_node(g, hd1, {"driver": "copy-on-read", "node-name": "cor",
                                     "file": "hd1"})
    assert check_graph(g) == []
    hd0 = g.lookup("hd0")
    assert hd0 is not None and hd0.driver.backing is cor.driver
    freeze_backing_chain(cor, hd2)
    job = attach_user(cor, "root", BLK_PERM_CONSISTENT_READ, 0xF, "stream job 'stream0'")

    with pytest.raises(GenericError) as e:
        await run(d, "x-blockdev-reopen", opts)
    assert e.value.desc == "Cannot change the option 'backing.backing.file.node-name'"
    with pytest.raises(GenericError) as e:
        await run(d, "x-blockdev-reopen", {**opts["backing"], "read-only": True})
    assert e.value.desc == "Read-only block node 'hd1' cannot support read-write users"
    with pytest.raises(GenericError) as e:
        await run(d, "x-blockdev-reopen",
                  {**opts["backing"], "backing": None, "read-only": False})
    assert e.value.desc == "Cannot change frozen 'backing' link from 'hd1' to 'hd2'"
    await run(d, "x-blockdev-reopen", {**opts, "backing": None})
    assert hd0.child("backing") is None

    detach_user(job)
    unfreeze_backing_chain(cor, hd2)
    await release(g, cor)
    assert check_graph(g) == []
    assert g.lookup("cor") is None and g.lookup("hd1") is None
    await d.stop()


async def test_commit_like_implicit_filter(chain: Path) -> None:
    """iotest 245 test_block_commit_2: a commit job's implicit filter above hd1
    cannot be replaced by reopen, and hd0's backing.* options no longer apply."""
    from blockd.graph.backing import insert_node, release

    d = Daemon()
    opts = hd(chain, 0, backing=hd(chain, 1, backing=hd(chain, 2)))
    await run(d, "blockdev-add", opts)
    g = d.graph
    hd1, hd2 = g.lookup("hd1"), g.lookup("hd2")
    assert hd1 and hd2
    # A pass-through filter standing in for commit's "commit_top".
    top = await insert_node(g, hd1, {"driver": "compress", "file": "hd1",
                                     "read-only": True})
    top.implicit = True
    freeze_backing_chain(top, hd2)
    with pytest.raises(GenericError) as e:
        await run(d, "x-blockdev-reopen",
                  {**opts, "backing": {**opts["backing"], "backing": None}})
    assert e.value.desc == "Cannot change the option 'backing.driver'"
    with pytest.raises(GenericError) as e:
        await run(d, "x-blockdev-reopen", {**opts, "backing": None})
    assert e.value.desc == "Cannot replace implicit backing child of hd0"
    # Naming the node below the implicit filter keeps the graph as it is.
    await run(d, "x-blockdev-reopen", {**opts, "backing": "hd1"})
    assert g.lookup("hd0").driver.backing is top.driver  # type: ignore[union-attr]
    unfreeze_backing_chain(top, hd2)
    await release(g, top)
    await d.stop()


@pytest.mark.parametrize("base", [None, "hd2"])
async def test_after_stream(chain: Path, base: str | None) -> None:
    """iotest 245 test_block_stream_1/2 after the job's graph change: hd1 left
    the chain (hd0's header updated), hd0's old backing.* options no longer fit."""
    from blockd.graph.backing import change_backing_file

    d = Daemon()
    opts = hd(chain, 0, backing=hd(chain, 1, backing=hd(chain, 2, backing=None)
                                   if base else None))
    await run(d, "blockdev-add", opts)
    g = d.graph
    hd0 = g.lookup("hd0")
    assert hd0 is not None
    new = g.lookup(base) if base else None
    await change_backing_file(hd0, str(chain / f"{base}.img") if base else None,
                              "qcow2" if base else None)
    await set_backing(g, hd0, new)
    assert g.lookup("hd1") is None
    with pytest.raises(GenericError) as e:
        await run(d, "x-blockdev-reopen", opts)
    assert e.value.desc == "Cannot change the option 'backing.driver'"
    if base is None:
        await run(d, "x-blockdev-reopen", {k: v for k, v in opts.items() if k != "backing"})
        await run(d, "x-blockdev-reopen", {**opts, "backing": None})
    else:
        fixed = {**opts, "backing": opts["backing"]["backing"]}
        await run(d, "x-blockdev-reopen", fixed)
        await run(d, "x-blockdev-reopen", {**fixed, "backing": "hd2"})
        with pytest.raises(GenericError) as e:
            await run(d, "x-blockdev-reopen",
                      {k: v for k, v in opts.items() if k != "backing"})
        assert e.value.desc == "backing is missing for 'hd0'"
    await run(d, "blockdev-del", {"node-name": "hd0"})
    assert len(g) == 0
    await d.stop()


async def test_anonymous_backend_like_hmp_qemu_io(chain: Path) -> None:
    """The texts qemu-system-x86_64 7.2's HMP qemu-io gives (measured): a write
    through the file under a read-write qcow2 node conflicts, a read-only node
    refuses writers; nothing stays changed afterwards."""
    from blockd.graph.users import AnonymousBackend

    d = Daemon()
    await run(d, "blockdev-add", hd(chain, 2, backing=None))
    g = d.graph
    hd2, hd2_file = g.lookup("hd2"), g.lookup("hd2-file")
    assert hd2 is not None and hd2_file is not None
    before = graph_snapshot(g)
    be = AnonymousBackend(hd2_file)
    with pytest.raises(GenericError) as e:
        be.request(write=True)
    assert e.value.desc == (
        "Permission conflict on node 'hd2-file': permissions 'write' are both required by "
        "an unnamed block device (uses node 'hd2-file' as 'root' child) and unshared by "
        "node 'hd2' (uses node 'hd2-file' as 'file' child).")
    be.close()
    be = AnonymousBackend(hd2)
    be.request(write=True)
    assert check_graph(g) == []
    be.close()
    assert graph_snapshot(g) == before
    await run(d, "blockdev-reopen", {"options": [hd(chain, 2, backing=None,
                                                    **{"read-only": True})]})
    be = AnonymousBackend(hd2)
    with pytest.raises(GenericError, match=r"^Block node is read-only$"):
        be.request(write=True)
    be.close()
    await d.stop()


async def test_replaced_implicit_file_is_closed(chain: Path, qemu_img: str) -> None:
    """A child opened inline and replaced by reopen closes (its lock goes); a
    failed replacement keeps it."""
    subprocess.run([qemu_img, "create", "-q", "-f", "raw", str(chain / "r.img"), "1M"],
                   check=True)
    d = Daemon()
    raw = {"driver": "raw", "node-name": "r",
           "file": {"driver": "file", "node-name": "r-file", "filename": str(chain / "r.img")}}
    await run(d, "blockdev-add", raw)
    await run(d, "blockdev-add", {"driver": "file", "node-name": "other",
                                  "filename": str(chain / "hd2.img")})
    await run(d, "blockdev-add", {"driver": "null-co", "node-name": "n"})
    g = d.graph
    old = g.lookup("r-file")
    assert old is not None
    with pytest.raises(GenericError):
        # raw's "size" larger than the new file: refused, nothing changes.
        await run(d, "x-blockdev-reopen", {**raw, "file": "other", "size": 1 << 40})
    assert g.lookup("r-file") is old and not old.closed
    await run(d, "x-blockdev-reopen", {**raw, "file": "other"})
    assert g.lookup("r-file") is None and old.closed
    r = g.lookup("r")
    assert r is not None and r.driver.file is g.lookup("other").driver  # type: ignore[union-attr]
    # Nodes the monitor added stay when dropped.
    await run(d, "x-blockdev-reopen", {**raw, "file": "n"})
    assert g.lookup("other") is not None
    await d.stop()
