"""leading_run() against the extent merging rule of Qcow2Driver._map, and
block_status through it against _map on a real image."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockd.drivers.base import BlockStatusFlag
from blockd.drivers.open import close_image, open_image
from blockd.drivers.qcow2.cluster import (
    L2E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
    ClusterType,
    cluster_type,
)
from blockd.drivers.qcow2.driver import Qcow2Driver
from blockd.drivers.qcow2.runs import leading_run

CS = 65536


def reference_run(entries: list[int]) -> int:
    """The merge loop of _map, on whole clusters, for the first extent."""
    e0 = entries[0]
    ct0 = cluster_type(e0)
    if ct0 == ClusterType.COMPRESSED:
        return 1
    for i, e in enumerate(entries[1:], 1):
        ct = cluster_type(e)
        if ct != ct0 or (e ^ e0) & OFLAG_COPIED:
            return i
        if ct in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC) and \
                e & L2E_OFFSET_MASK != (e0 & L2E_OFFSET_MASK) + i * CS:
            return i
    return len(entries)


@st.composite
def entry_lists(draw: st.DrawFn) -> list[int]:
    """Runs of typical entries with a few odd ones (stray bits, host gaps)."""
    out: list[int] = []
    host = draw(st.integers(1, 1000)) * CS
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["data", "zero", "zalloc", "unalloc", "compressed"]))
        n = draw(st.integers(1, 300))
        copied = OFLAG_COPIED if draw(st.booleans()) else 0
        stray = set(draw(st.lists(st.integers(0, n - 1), max_size=2)))
        gaps = set(draw(st.lists(st.integers(0, n - 1), max_size=2)))
        for i in range(n):
            if kind == "data":
                e = host | copied
            elif kind == "zalloc":
                e = host | copied | OFLAG_ZERO
            elif kind == "zero":
                e = OFLAG_ZERO
            elif kind == "unalloc":
                e = 0
            else:
                e = OFLAG_COMPRESSED | host
            if i in stray:
                e |= 0x200  # a stray bit inside the offset: breaks contiguity
            host += 2 * CS if i in gaps else CS
            out.append(e)
    return out


@given(entry_lists())
@settings(max_examples=200, deadline=None)
def test_leading_run_matches_map_rule(entries: list[int]) -> None:
    assert leading_run(entries, CS) == reference_run(entries)


def test_leading_run_edges() -> None:
    assert leading_run([], CS) == 0
    assert leading_run([5 * CS], CS) == 1
    run = [(10 + i) * CS | OFLAG_COPIED for i in range(8192)]
    assert leading_run(run, CS) == 8192
    run[5000] += CS
    assert leading_run(run, CS) == 5000
    assert leading_run([0] * 100 + [OFLAG_ZERO], CS) == 100


@pytest.mark.qemu
async def test_block_status_matches_map(tmp_path: Path, qemu_img: str) -> None:
    """Every block_status answer over a fragmented image is _map's first extent."""
    path = tmp_path / "t.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(path), str(64 << 20)],
                   check=True)
    q = await open_image(str(path), "qcow2", read_only=False)
    assert isinstance(q, Qcow2Driver)
    try:
        # Interleaved allocations make non-contiguous data runs, zero runs, holes.
        for i in range(0, 200, 3):
            await q.write(i * CS, b"\1" * CS)
        for i in range(400, 200, -2):
            await q.write(i * CS, b"\2" * (CS // 2))
        await q.write_zeroes(600 * CS, 10 * CS)
        await q.write(700 * CS + 100, b"\3" * 5 * CS)
        pos, end = 0, 64 << 20
        while pos < end:
            st_ = await q.block_status(pos, end - pos)
            async with q._lock:
                cs = q.cluster_size
                _, l2_idx = q._split(pos)
                room = (q.slice_entries - l2_idx % q.slice_entries) * cs - (pos & (cs - 1))
                ext = (await q._map(pos, min(end - pos, room)))[0]
            assert st_.length == ext.length, pos
            assert bool(st_.flags & BlockStatusFlag.ALLOCATED) == (
                ext.ctype != ClusterType.UNALLOCATED), pos
            pos += st_.length
    finally:
        await close_image(q)
