"""block-stream's graph effects, in process: the COR filter's place during the
job, frozen links, closed intermediates and inherits_from after it (the
inherits-from seed commit), job edges and op blockers cleared by dismiss."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from blockd.commands.block_stream import block_stream
from blockd.daemon import Daemon
from blockd.graph import opener
from blockd.jobs.manager import get_manager
from blockd.qmp.dispatch import CommandContext
from tests.stream_helpers import backing_of, check_clean, compare, make_chain, snapshot_raw

pytestmark = pytest.mark.qemu


async def _open_top_alone(d: Path) -> tuple[Daemon, list[dict[str, Any]]]:
    dm = Daemon()
    await opener.blockdev_add(dm.graph, {
        "driver": "qcow2", "node-name": "top",
        "file": {"driver": "file", "filename": str(d / "top.qcow2")},
    })
    events: list[dict[str, Any]] = []
    dm.events.subscribe(events.append)
    return dm, events


async def _wait_status(events: list[dict[str, Any]], status: str) -> None:
    for _ in range(2000):
        if any(e["event"] == "JOB_STATUS_CHANGE" and e["data"]["status"] == status
               for e in events):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"no {status} in {events}")


async def test_stream_with_base_repoints_inherits_from(tmp_path: Path) -> None:
    make_chain(tmp_path)
    snapshot_raw(tmp_path, "top.qcow2", tmp_path / "expected.raw")
    dm, events = await _open_top_alone(tmp_path)
    top = dm.graph.lookup("top")
    assert top is not None and top.backing is not None
    mid = top.backing.child
    assert mid.backing is not None
    base = mid.backing.child
    # Opened implicitly: base inherits from mid, mid from top.
    assert base.inherits_from is mid and mid.inherits_from is top

    ctx = CommandContext(dm, None)
    await block_stream(ctx, {"device": "top", "job-id": "j", "base": "base.qcow2",
                             "auto-finalize": False, "auto-dismiss": False})
    job = get_manager(dm).find_block_job("j")
    # The filter sits above the top; the top -> mid link is frozen, mid -> base not.
    assert any(c.parent is not None and c.parent.driver.name == "copy-on-read"
               for c in top.parents)
    assert top.backing.frozen and not mid.backing.frozen
    assert mid.blockers == ["block device is in use by block job: stream"]
    assert base.blockers == []
    await _wait_status(events, "pending")
    await job.finalize()
    # After: top's backing is the base, which now inherits from the top; mid
    # stays (the job's edge holds it) until the job is dismissed.
    assert top.backing is not None and top.backing.child is base
    assert base.inherits_from is top
    assert not mid.closed
    await job.dismiss()
    assert mid.closed and mid.node_name not in dm.graph
    assert all(c.parent is not None for c in top.parents) or not top.parents
    assert top.blockers == [] and base.blockers == []
    assert not any(n.driver.name == "copy-on-read" for n in dm.graph.all_nodes())
    await dm.stop()
    assert backing_of(tmp_path / "top.qcow2") == (str(tmp_path / "base.qcow2"), "qcow2")
    for name in ("base", "mid", "top"):
        check_clean(tmp_path / f"{name}.qcow2")
    compare(tmp_path / "top.qcow2", tmp_path / "expected.raw")


async def test_failed_start_leaves_graph_unchanged(tmp_path: Path) -> None:
    """An invalid job id is found after the filter went in: it comes out again."""
    make_chain(tmp_path)
    dm, events = await _open_top_alone(tmp_path)
    before = sorted(n.node_name for n in dm.graph.all_nodes())
    top = dm.graph.lookup("top")
    assert top is not None
    ctx = CommandContext(dm, None)
    from blockd.qmp.errors import GenericError

    with pytest.raises(GenericError, match="Invalid job ID ''"):
        await block_stream(ctx, {"device": "top"})
    with pytest.raises(GenericError, match="Parameter 'speed' expects a non-negative value"):
        await block_stream(ctx, {"device": "top", "job-id": "j", "speed": -1})
    assert [e["data"]["status"] for e in events] == ["created", "null"]
    assert sorted(n.node_name for n in dm.graph.all_nodes()) == before
    assert top.backing is not None and not top.backing.frozen
    assert top.blockers == [] and all(c.parent is not None for c in top.parents)
    await dm.stop()


async def test_speed_limit_set_while_running(tmp_path: Path) -> None:
    """A limit set on a running unlimited stream holds it (QEMU's chunking from
    then on); lifting it lets the job finish with the right data."""
    make_chain(tmp_path, "64M", writes={"base": ["write -P 7 0 64M"]})
    snapshot_raw(tmp_path, "top.qcow2", tmp_path / "expected.raw")
    dm, events = await _open_top_alone(tmp_path)
    ctx = CommandContext(dm, None)
    await block_stream(ctx, {"device": "top", "job-id": "j"})
    job = get_manager(dm).find_block_job("j")
    job.set_speed(1)
    await asyncio.sleep(0.3)
    stalled = job.progress_current
    await asyncio.sleep(0.3)
    assert job.progress_current == stalled < job.progress_total
    assert job.status == "running"
    job.set_speed(0)
    await _wait_status(events, "null")
    await dm.stop()
    check_clean(tmp_path / "top.qcow2")
    compare(tmp_path / "top.qcow2", tmp_path / "expected.raw")
