"""qcow2 interoperability with real QEMU 7.2 in both directions."""

from __future__ import annotations

import asyncio
import json
import os
import random
import struct
from pathlib import Path

import pytest
from test_qcow2_util import (
    assert_clean,
    close,
    create,
    open_ro,
    open_rw,
    qio,
    run,
)

from blockd.drivers.base import BlockStatusFlag

pytestmark = pytest.mark.qemu

MiB = 1 << 20


@pytest.mark.parametrize(
    "opts,qopts",
    [
        ({}, ""),
        ({"compat": "0.10"}, "compat=0.10"),
        ({"cluster_size": 512}, "cluster_size=512"),
        ({"cluster_size": 4096}, "cluster_size=4096"),
        ({"cluster_size": 2 * MiB}, "cluster_size=2M"),
        ({"lazy_refcounts": True}, "lazy_refcounts=on"),
        ({"refcount_bits": 1}, "refcount_bits=1"),
        ({"refcount_bits": 8}, "refcount_bits=8"),
        ({"refcount_bits": 64}, "refcount_bits=64"),
        (
            {"backing_file": "base.img", "backing_fmt": "raw"},
            "backing_file=base.img,backing_fmt=raw",
        ),
        ({"extended_l2": True}, "extended_l2=on"),
        ({"extended_l2": True, "cluster_size": 16384}, "extended_l2=on,cluster_size=16k"),
    ],
)
async def test_create_is_byte_identical(
    tmp_path: Path, qemu_img: str, opts: dict[str, object], qopts: str
) -> None:
    (tmp_path / "base.img").write_bytes(bytes(MiB))
    size = 100 * MiB
    mine, ref = tmp_path / "mine.qcow2", tmp_path / "ref.qcow2"
    await create(mine, size, **opts)  # type: ignore[arg-type]
    args = [qemu_img, "create", "-f", "qcow2"]
    if qopts:
        args += ["-o", qopts]
    run(*args, str(ref), str(size))
    assert mine.read_bytes() == ref.read_bytes()
    assert_clean(qemu_img, mine)


@pytest.mark.parametrize("prealloc", ["metadata", "falloc", "full"])
async def test_create_preallocated(tmp_path: Path, qemu_img: str, prealloc: str) -> None:
    mine, ref = tmp_path / "mine.qcow2", tmp_path / "ref.qcow2"
    await create(mine, 40 * MiB, preallocation=prealloc)
    run(qemu_img, "create", "-f", "qcow2", "-o", f"preallocation={prealloc}", str(ref), "40M")
    assert mine.read_bytes()[:65536] == ref.read_bytes()[:65536]
    assert_clean(qemu_img, mine)
    mine_map = json.loads(run(qemu_img, "map", "--output=json", str(mine)).stdout)
    ref_map = json.loads(run(qemu_img, "map", "--output=json", str(ref)).stdout)
    assert mine_map == ref_map
    assert os.path.getsize(mine) == os.path.getsize(ref)
    # Our own block status agrees with QEMU's view (holes under preallocated
    # metadata read as zero: QEMU's BDRV_BLOCK_RECURSE heuristic).
    drv = await open_ro(mine)
    try:
        st = await drv.block_status(0, 40 * MiB)
    finally:
        await close(drv)
    first = ref_map[0]
    assert st.length == first["length"]
    assert bool(st.flags & BlockStatusFlag.ZERO) == first["zero"]
    assert bool(st.flags & BlockStatusFlag.DATA) == first["data"]


async def _write_mix(path: Path, size: int) -> bytearray:
    """Write a mix of requests through blockd; returns the expected guest content."""
    expect = bytearray(size)
    drv = await open_rw(path)
    cs = drv.cluster_size
    rnd = random.Random(42)
    try:
        for _ in range(40):
            off = rnd.randrange(0, size - 300_000)
            ln = rnd.randrange(1, 300_000)
            data = rnd.randbytes(ln)
            await drv.write(off, data)
            expect[off : off + ln] = data
        # whole-cluster compressed writes into unallocated space
        for c in (size // cs - 1, size // cs - 3):
            data = bytes([c & 0xFF]) * (cs // 2) + rnd.randbytes(cs // 2)
            try:
                await drv.write(c * cs, data, compressed=True)
            except OSError:
                continue  # already allocated by a random write above
            expect[c * cs : (c + 1) * cs] = data
        await drv.write_zeroes(3 * cs + 100, 5 * cs)
        expect[3 * cs + 100 : 8 * cs + 100] = bytes(5 * cs)
        await drv.write_zeroes(20 * cs, 4 * cs, may_unmap=True)
        expect[20 * cs : 24 * cs] = bytes(4 * cs)
        await drv.discard(30 * cs, 6 * cs)
        expect[30 * cs : 36 * cs] = bytes(6 * cs)
        assert await drv.read(0, size) == bytes(expect)
    finally:
        await close(drv)
    return expect


@pytest.mark.parametrize("cluster_size,compat", [(65536, "1.1"), (4096, "1.1"), (65536, "0.10")])
async def test_blockd_writes_qemu_reads(
    tmp_path: Path, qemu_img: str, cluster_size: int, compat: str
) -> None:
    size = 8 * MiB
    img = tmp_path / "t.qcow2"
    await create(img, size, cluster_size=cluster_size, compat=compat)
    expect = await _write_mix(img, size)
    assert_clean(qemu_img, img)
    raw = tmp_path / "expect.raw"
    raw.write_bytes(expect)
    run(qemu_img, "compare", "-f", "qcow2", "-F", "raw", str(img), str(raw))


async def test_compressed_roundtrip(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    img = tmp_path / "c.qcow2"
    await create(img, 4 * MiB)
    drv = await open_rw(img)
    try:
        await drv.write(0, b"\xab" * 65536 * 4, compressed=True)
        # partial cluster: rejected like QEMU (EINVAL)
        with pytest.raises(OSError):
            await drv.write(65536 * 8, b"x" * 4096, compressed=True)
        # already allocated cluster: EIO like QEMU
        with pytest.raises(OSError):
            await drv.write(0, b"\xcd" * 65536, compressed=True)
        st = await drv.block_status(0, 65536)
        assert st.flags & BlockStatusFlag.DATA and st.offset is None
        # overwrite part of a compressed cluster: COW decompresses it
        await drv.write(100, b"\x01" * 10)
    finally:
        await close(drv)
    assert_clean(qemu_img, img)
    info = run(qemu_img, "check", "--output=json", str(img)).stdout
    assert json.loads(info)["compressed-clusters"] == 3
    qio(qemu_io, img, "read -P 0xab 0 100", "read -P 1 100 10", "read -P 0xab 110 262034")


async def test_backing_copy_on_write(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    base = tmp_path / "base.qcow2"
    run(qemu_img, "create", "-f", "qcow2", str(base), "4M")
    qio(qemu_io, base, "write -P 0x11 0 4M")
    top = tmp_path / "top.qcow2"
    await create(top, 4 * MiB, backing_file="base.qcow2", backing_fmt="qcow2")
    drv = await open_rw(top)
    try:
        assert drv.backing is not None
        assert await drv.read(0, 4096) == b"\x11" * 4096
        st = await drv.block_status(0, MiB)
        assert not st.flags & BlockStatusFlag.ALLOCATED
        await drv.write(70000, b"\x22" * 1000)
        await drv.discard(2 * MiB, 65536)  # v3 with backing: reads zeros afterwards
        await drv.write_zeroes(3 * MiB, 65536)
        assert await drv.read(65536, 65536) == (
            b"\x11" * (70000 - 65536) + b"\x22" * 1000 + b"\x11" * (131072 - 71000)
        )
    finally:
        await close(drv)
    assert_clean(qemu_img, top)
    qio(
        qemu_io,
        top,
        "read -P 0x11 0 70000",
        "read -P 0x22 70000 1000",
        "read -P 0x11 71000 60072",
        "read -P 0 2M 64k",
        "read -P 0 3M 64k",
        "read -P 0x11 3211264 983040",
    )
    info = json.loads(run(qemu_img, "info", "--output=json", str(top)).stdout)
    assert info["backing-filename"] == "base.qcow2"
    assert info["backing-filename-format"] == "qcow2"


async def test_qemu_writes_blockd_reads(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    base = tmp_path / "base.qcow2"
    run(qemu_img, "create", "-f", "qcow2", str(base), "8M")
    qio(qemu_io, base, "write -P 0x55 0 8M")
    img = tmp_path / "q.qcow2"
    run(qemu_img, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(img), "8M")
    qio(
        qemu_io,
        img,
        "write -P 0x11 100 5000",
        "write -c -P 0x22 1M 128k",
        "write -z 2M 192k",
        "write -z -u 3M 64k",
        "discard 4M 128k",
        "write -P 0x33 5M 1M",
        "write -P 0x44 8323072 65536",
    )
    flat = tmp_path / "flat.raw"
    run(qemu_img, "convert", "-O", "raw", str(img), str(flat))
    drv = await open_ro(img)
    try:
        got = await drv.read(0, 8 * MiB)
        assert got == flat.read_bytes()
        st = await drv.block_status(2 * MiB, MiB)
        assert st.flags & BlockStatusFlag.ZERO and st.flags & BlockStatusFlag.ALLOCATED
        st = await drv.block_status(1 * MiB, MiB)
        assert st.flags & BlockStatusFlag.DATA
        res = await drv.check()
        assert (res.corruptions, res.leaks) == (0, 0)
    finally:
        await close(drv)


async def test_refcount_table_growth(tmp_path: Path, qemu_img: str) -> None:
    # 512-byte clusters with 64-bit refcounts: one block covers 64 clusters and the
    # one-cluster table 64 blocks, so a few MiB of data forces the table to move.
    img = tmp_path / "g.qcow2"
    await create(img, 16 * MiB, cluster_size=512, refcount_bits=64)
    drv = await open_rw(img)
    data = os.urandom(3 * MiB)
    try:
        old_table = drv.rc.table_offset
        await drv.write(0, data)
        assert drv.rc.table_offset != old_table
    finally:
        await close(drv)
    assert_clean(qemu_img, img)
    raw = tmp_path / "r.raw"
    raw.write_bytes(data + bytes(13 * MiB))
    run(qemu_img, "compare", "-f", "qcow2", "-F", "raw", str(img), str(raw))


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 32, 64])
async def test_other_refcount_widths(tmp_path: Path, qemu_img: str, bits: int) -> None:
    img = tmp_path / "w.qcow2"
    run(qemu_img, "create", "-f", "qcow2", "-o", f"refcount_bits={bits}", str(img), "4M")
    drv = await open_rw(img)
    try:
        await drv.write(12345, b"\x77" * 300000)
        await drv.write(3 * MiB, b"\x66" * 65536, compressed=True)
        await drv.discard(0, 65536 * 2)
    finally:
        await close(drv)
    assert_clean(qemu_img, img)


async def test_internal_snapshot_preserved(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    img = tmp_path / "s.qcow2"
    run(qemu_img, "create", "-f", "qcow2", str(img), "4M")
    qio(qemu_io, img, "write -P 0x11 0 4M")
    run(qemu_img, "snapshot", "-c", "snap1", str(img))
    drv = await open_rw(img)
    try:
        await drv.write(1000, b"\x22" * 100000)
        await drv.write_zeroes(2 * MiB, MiB, may_unmap=True)
        await drv.discard(3 * MiB, 65536)
        res = await drv.check()
        assert (res.corruptions, res.leaks, res.messages) == (0, 0, [])
    finally:
        await close(drv)
    assert_clean(qemu_img, img)
    qio(qemu_io, img, "read -P 0x22 1000 100000", "read -P 0 2M 1M", "read -P 0x11 0 1000")
    snap = tmp_path / "snap.raw"
    run(qemu_img, "convert", "-l", "snapshot.name=snap1", "-O", "raw", str(img), str(snap))
    assert snap.read_bytes() == b"\x11" * (4 * MiB)


async def test_change_backing_file(tmp_path: Path, qemu_img: str) -> None:
    img = tmp_path / "o.qcow2"
    run(qemu_img, "create", "-f", "qcow2", str(img), "1M")
    (tmp_path / "new-base.raw").write_bytes(b"\x09" * MiB)
    drv = await open_rw(img)
    try:
        await drv.change_backing_file("new-base.raw", "raw")
    finally:
        await close(drv)
    info = json.loads(run(qemu_img, "info", "--output=json", str(img)).stdout)
    assert info["backing-filename"] == "new-base.raw"
    assert info["backing-filename-format"] == "raw"
    assert_clean(qemu_img, img)
    drv = await open_rw(img)
    try:
        assert await drv.read(0, 10) == b"\x09" * 10
        await drv.change_backing_file(None, None)
    finally:
        await close(drv)
    info = json.loads(run(qemu_img, "info", "--output=json", str(img)).stdout)
    assert "backing-filename" not in info


async def test_lazy_refcounts_dirty_bit(tmp_path: Path, qemu_img: str) -> None:
    img = tmp_path / "l.qcow2"
    await create(img, 4 * MiB, lazy_refcounts=True)
    drv = await open_rw(img)
    try:
        await drv.write(0, b"x" * 70000)
        assert drv.dirty
        # While open and dirty, qemu sees the dirty bit (refcounts are still right).
        info = json.loads(run(qemu_img, "info", "-U", "--output=json", str(img)).stdout)
        assert info["dirty-flag"] is True
    finally:
        await close(drv)
    info = json.loads(run(qemu_img, "info", "--output=json", str(img)).stdout)
    assert info["dirty-flag"] is False
    assert info["format-specific"]["data"]["lazy-refcounts"] is True
    assert_clean(qemu_img, img)


async def test_resize(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    img = tmp_path / "r.qcow2"
    await create(img, MiB, cluster_size=512)
    drv = await open_rw(img)
    try:
        await drv.write(0, b"\x01" * MiB)
        await drv.truncate(64 * MiB)  # L1 must grow (512-byte clusters)
        await drv.write(60 * MiB, b"\x02" * 4096)
        await drv.truncate(61 * MiB)
    finally:
        await close(drv)
    assert_clean(qemu_img, img)
    info = json.loads(run(qemu_img, "info", "--output=json", str(img)).stdout)
    assert info["virtual-size"] == 61 * MiB
    qio(qemu_io, img, "read -P 1 0 1M", "read -P 2 60M 4k", "read -P 0 1M 59M")


async def test_concurrent_requests(tmp_path: Path, qemu_img: str) -> None:
    """Many overlapping and disjoint requests in flight at once stay consistent."""
    img = tmp_path / "cc.qcow2"
    size = 16 * MiB
    await create(img, size)
    drv = await open_rw(img)
    rnd = random.Random(7)
    try:
        # Disjoint writes: content is deterministic.
        chunks = [(i * 300_001 % (size - 70_000), bytes([i % 250 + 1]) * 70_000) for i in range(40)]
        chunks = [(o - o % 70_000, d) for o, d in chunks]
        uniq = dict(chunks)
        await asyncio.gather(*(drv.write(o, d) for o, d in uniq.items()))
        expect = bytearray(size)
        for o, d in uniq.items():
            expect[o : o + len(d)] = d
        # Mixed reads/writes/discards racing on other areas.
        ops = []
        for _ in range(30):
            o = rnd.randrange(0, size - 200_000)
            ops.append(drv.read(o, 100_000))
        await asyncio.gather(*ops)
        assert await drv.read(0, size) == bytes(expect)
    finally:
        await close(drv)
    assert_clean(qemu_img, img)


async def test_preallocated_zero_clusters_written_in_place(tmp_path: Path, qemu_img: str) -> None:
    img = tmp_path / "p.qcow2"
    await create(img, 4 * MiB, preallocation="metadata")
    drv = await open_rw(img)
    try:
        await drv.write_zeroes(0, 4 * MiB)  # keeps the allocation, sets the zero flag
        before = await drv.block_status(0, MiB)
        assert before.flags & BlockStatusFlag.ZERO and before.offset is not None
        await drv.write(70000, b"\x42" * 100000)
        after = await drv.block_status(65536, 65536)
        assert after.flags & BlockStatusFlag.DATA
        assert after.offset == before.offset + 65536  # same host cluster, no reallocation
        assert await drv.read(0, 200000) == bytes(70000) + b"\x42" * 100000 + bytes(30000)
    finally:
        await close(drv)
    assert_clean(qemu_img, img)
    raw = tmp_path / "e.raw"
    raw.write_bytes(bytes(70000) + b"\x42" * 100000 + bytes(4 * MiB - 170000))
    run(qemu_img, "compare", "-f", "qcow2", "-F", "raw", str(img), str(raw))


async def test_bitmaps_recognised(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    """Persistent bitmaps QEMU wrote: their clusters count as referenced."""
    img = tmp_path / "b.qcow2"
    run(qemu_img, "create", "-f", "qcow2", str(img), "64M")
    run(qemu_img, "bitmap", "--add", str(img), "b1")
    run(qemu_img, "bitmap", "--add", "-g", "65536", str(img), "b2")
    qio(qemu_io, img, "write -P 7 1M 3M")  # QEMU records the writes in the bitmaps
    drv = await open_ro(img)
    try:
        res = await drv.check()
        assert (res.leaks, res.corruptions, res.messages) == (0, 0, [])
        assert await drv.read(1 * MiB, 4096) == b"\x07" * 4096
        info = drv.format_specific_info()
        assert info is not None
        qinfo = json.loads(run(qemu_img, "info", "-U", "--output=json", str(img)).stdout)
        assert info["bitmaps"] == qinfo["format-specific"]["data"]["bitmaps"]
    finally:
        await close(drv)
    # Untouched read-only: QEMU still sees valid bitmaps.
    info = json.loads(run(qemu_img, "info", "--output=json", str(img)).stdout)
    names = [b["name"] for b in info["format-specific"]["data"]["bitmaps"]]
    assert names == ["b1", "b2"]
    # Opened read/write but not changed: still valid.
    drv = await open_rw(img)
    await close(drv)
    info = json.loads(run(qemu_img, "info", "--output=json", str(img)).stdout)
    assert "bitmaps" in info["format-specific"]["data"]
    # Changed by blockd, which does not track bitmaps: QEMU must see them stale
    # (autoclear bit cleared); their clusters become leaks, no corruption.
    drv = await open_rw(img)
    try:
        await drv.write(0, b"x")
    finally:
        await close(drv)
    info = json.loads(run(qemu_img, "info", "--output=json", str(img)).stdout)
    assert "bitmaps" not in info["format-specific"]["data"]
    assert_clean(qemu_img, img, leaks_ok=True)


@pytest.mark.parametrize("backing", [False, True])
async def test_concurrent_writes_sharing_clusters(
    tmp_path: Path, qemu_img: str, backing: bool
) -> None:
    """Concurrent partial writes into the same new clusters (copy-on-write from
    the backing file) all survive: allocation of a cluster is serialised."""
    size = 4 * MiB
    img = tmp_path / "cw.qcow2"
    expect = bytearray(size)
    if backing:
        base = tmp_path / "base.raw"
        expect = bytearray(random.Random(3).randbytes(size))
        base.write_bytes(expect)
        await create(img, size, backing_file="base.raw", backing_fmt="raw", cluster_size=65536)
    else:
        await create(img, size, cluster_size=65536)
    drv = await open_rw(img)
    try:
        pieces = list(range(0, size, 3000))
        random.Random(5).shuffle(pieces)
        jobs = []
        for n, off in enumerate(pieces):
            ln = min(3000, size - off)
            data = bytes([n % 250 + 1]) * ln
            expect[off : off + ln] = data
            jobs.append(drv.write(off, data))
        # Reads and discards elsewhere race with the writes.
        await asyncio.gather(*jobs, *(drv.read(o, 70000) for o in range(0, size - 70000, 99999)))
        assert await drv.read(0, size) == bytes(expect)
    finally:
        await close(drv)
    assert_clean(qemu_img, img)
    raw = tmp_path / "e.raw"
    raw.write_bytes(expect)
    run(qemu_img, "compare", "-f", "qcow2", "-F", "raw", str(img), str(raw))


ZERO_SCRIPT = [
    ("w", 0, MiB),
    ("z", 0, 256 * 1024, False),
    ("z", 512 * 1024, 1000, False),
    ("z", 2 * MiB, 65536, False),
    ("z", 2200000, 1000, False),
    ("z", 3000000, 200000, False),
    ("z", 700000, 200000, True),
    ("d", 300000, 200000),
    ("w", 3500000, 5000),
    ("z", 3500000 + 5000, 1000, False),
    ("c", 3 * MiB + 65536 * 2, 65536),
]


@pytest.mark.parametrize("compat", ["1.1", "0.10"])
@pytest.mark.parametrize("backing", [False, True])
async def test_zero_and_discard_map_like_qemu(
    tmp_path: Path, qemu_img: str, qemu_io: str, compat: str, backing: bool
) -> None:
    """write_zeroes/discard leave the same allocation map as QEMU's."""
    size = 4 * MiB
    base = tmp_path / "base.raw"
    base.write_bytes(b"\x01" * (size // 2) + bytes(size // 2))
    ref, mine = tmp_path / "ref.qcow2", tmp_path / "mine.qcow2"
    opts = f"compat={compat}"
    if backing:
        opts += ",backing_file=base.raw,backing_fmt=raw"
    run(qemu_img, "create", "-f", "qcow2", "-o", opts, str(ref), str(size))
    run(qemu_img, "create", "-f", "qcow2", "-o", opts, str(mine), str(size))
    cmds = []
    for op in ZERO_SCRIPT:
        if op[0] == "w":
            cmds.append(f"write -P 5 {op[1]} {op[2]}")
        elif op[0] == "z":
            cmds.append(f"write -z {'-u ' if op[3] else ''}{op[1]} {op[2]}")
        elif op[0] == "d":
            cmds.append(f"discard {op[1]} {op[2]}")
        else:
            cmds.append(f"write -c -P 6 {op[1]} {op[2]}")
    qio(qemu_io, ref, *cmds)
    drv = await open_rw(mine)
    try:
        for op in ZERO_SCRIPT:
            if op[0] == "w":
                await drv.write(op[1], b"\x05" * op[2])
            elif op[0] == "z":
                await drv.write_zeroes(op[1], op[2], may_unmap=bool(op[3]))
            elif op[0] == "d":
                await drv.discard(op[1], op[2])
            else:
                await drv.write(op[1], b"\x06" * op[2], compressed=True)
    finally:
        await close(drv)
    assert_clean(qemu_img, mine)
    run(qemu_img, "compare", str(ref), str(mine))

    def amap(p: Path) -> list[dict[str, object]]:
        out = json.loads(run(qemu_img, "map", "--output=json", str(p)).stdout)
        for e in out:
            e.pop("offset", None)
        return out

    assert amap(mine) == amap(ref)


async def test_unknown_extension_preserved(tmp_path: Path, qemu_img: str) -> None:
    """A header extension blockd does not know survives a header rewrite."""
    img = tmp_path / "u.qcow2"
    run(qemu_img, "create", "-f", "qcow2", str(img), "1M")
    data = bytearray(img.read_bytes())
    end = data.index(b"raw external data") + 46  # end of the feature table
    ext = struct.pack(">II", 0x12345678, 5) + b"hello" + bytes(3)
    data[end : end + 8 + len(ext)] = ext + bytes(8)
    img.write_bytes(bytes(data))
    run(qemu_img, "check", str(img))
    drv = await open_rw(img)
    try:
        await drv.change_backing_file("b.raw", "raw")
    finally:
        await close(drv)
    out = img.read_bytes()[:65536]
    assert struct.pack(">II", 0x12345678, 5) + b"hello" in out
    info = json.loads(run(qemu_img, "info", "--output=json", "-U", str(img)).stdout)
    assert info["backing-filename"] == "b.raw"


@pytest.mark.parametrize("passthrough", [True, False])
async def test_pass_discard_request(tmp_path: Path, qemu_img: str, passthrough: bool) -> None:
    img = tmp_path / "pd.qcow2"
    await create(img, 16 * MiB)
    drv = await open_rw(img, options={"pass-discard-request": passthrough})
    try:
        await drv.write(0, os.urandom(8 * MiB))
        await drv.flush()
        before = os.stat(img).st_blocks
        await drv.discard(0, 8 * MiB)
        await drv.flush()
        after = os.stat(img).st_blocks
    finally:
        await close(drv)
    if passthrough:
        assert after < before - (7 * MiB) // 512
    else:
        assert after == before
    assert_clean(qemu_img, img)


@pytest.mark.parametrize(
    "size,opts,qopts",
    [
        (4 << 40, {}, ""),
        (64 << 40, {}, ""),
        (
            100 << 30,
            {"cluster_size": 4096, "refcount_bits": 1},
            "cluster_size=4096,refcount_bits=1",
        ),
        (20 << 30, {"cluster_size": 512}, "cluster_size=512"),
        # The L1 table outgrows the refcount table: QEMU's table growth layout.
        (100 << 30, {"cluster_size": 512}, "cluster_size=512"),
    ],
)
async def test_create_large_is_byte_identical(
    tmp_path: Path, qemu_img: str, size: int, opts: dict[str, int], qopts: str
) -> None:
    mine, ref = tmp_path / "mine.qcow2", tmp_path / "ref.qcow2"
    await create(mine, size, **opts)  # type: ignore[arg-type]
    run(qemu_img, "create", "-f", "qcow2", *(["-o", qopts] if qopts else []), str(ref), str(size))
    assert mine.read_bytes() == ref.read_bytes()


async def test_create_too_large(tmp_path: Path, qemu_img: str) -> None:
    from blockd.drivers.qcow2 import ImageTooLarge

    img = tmp_path / "t.qcow2"
    with pytest.raises(ImageTooLarge) as exc:
        await create(img, 200 << 30, cluster_size=512)
    assert exc.value.desc == "Could not resize image: Failed to grow the L1 table: File too large"
    p = run(
        qemu_img,
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        str(tmp_path / "q.qcow2"),
        str(200 << 30),
        check=False,
    )
    assert "The image size is too large for file format 'qcow2'" in p.stderr


async def test_create_strict_size(tmp_path: Path) -> None:
    from blockd.qmp.errors import GenericError

    with pytest.raises(GenericError, match="Image size must be a multiple of 512 bytes"):
        await create(tmp_path / "s.qcow2", 1000, strict_size=True)
    await create(tmp_path / "r.qcow2", 1000)
    drv = await open_ro(tmp_path / "r.qcow2")
    try:
        assert drv.get_length() == 1024
    finally:
        await close(drv)


async def test_create_metadata_prealloc_beyond_one_refblock(tmp_path: Path, qemu_img: str) -> None:
    """2.2 GiB of preallocated clusters need a second refcount block mid-way."""
    mine, ref = tmp_path / "mine.qcow2", tmp_path / "ref.qcow2"
    await create(mine, 2200 << 20, preallocation="metadata")
    run(qemu_img, "create", "-f", "qcow2", "-o", "preallocation=metadata", str(ref), "2200M")
    assert os.path.getsize(mine) == os.path.getsize(ref)
    # The data clusters are holes in both; compare every metadata cluster.
    assert _metadata(mine) == _metadata(ref)


def _metadata(path: Path) -> list[bytes]:
    """Header, L1, L2 tables, refcount table and blocks of an image, in order."""
    out: list[bytes] = []
    with open(path, "rb") as f:

        def at(off: int, ln: int) -> bytes:
            f.seek(off)
            return f.read(ln)

        hdr = at(0, 65536)
        out.append(hdr)
        cs = 1 << struct.unpack_from(">I", hdr, 20)[0]
        l1_size, l1_off, rt_off, rt_clusters = struct.unpack_from(">IQQI", hdr, 36)
        l1 = struct.unpack(f">{l1_size}Q", at(l1_off, l1_size * 8))
        out.append(at(l1_off, l1_size * 8))
        out += [at(e & 0x00FFFFFFFFFFFE00, cs) for e in l1 if e]
        rt = at(rt_off, rt_clusters * cs)
        out.append(rt)
        out += [at(e, cs) for e in struct.unpack(f">{len(rt) // 8}Q", rt) if e]
    return out


async def test_extended_l2_reads(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    """Images with extended L2 entries (subclusters) read like QEMU reads them."""
    base = tmp_path / "base.raw"
    base.write_bytes(b"\x07" * (4 * MiB))
    img = tmp_path / "x.qcow2"
    run(
        qemu_img,
        "create",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on,cluster_size=65536,backing_file=base.raw,backing_fmt=raw",
        str(img),
        "4M",
    )
    qio(
        qemu_io,
        img,
        "write -P 1 0 2048",  # one subcluster allocated, the rest from the backing file
        "write -P 2 70000 5000",
        "write -z 1M 4096",  # zero subclusters
        "write -z 2M 64k",
        "write -c -P 3 3M 64k",
    )
    flat = tmp_path / "flat.raw"
    run(qemu_img, "convert", "-O", "raw", str(img), str(flat))
    drv = await open_ro(img)
    try:
        assert await drv.read(0, 4 * MiB) == flat.read_bytes()
        st = await drv.block_status(2048, 65536)
        assert not st.flags & BlockStatusFlag.ALLOCATED  # backing subclusters
        st = await drv.block_status(1 * MiB, 65536)
        assert st.flags & BlockStatusFlag.ZERO and st.length == 4096
        res = await drv.check()
        assert (res.corruptions, res.leaks, res.messages) == (0, 0, [])
        info = drv.format_specific_info()
        assert info is not None and info["extended-l2"] is True
    finally:
        await close(drv)


@pytest.mark.parametrize("prealloc", ["off", "metadata", "falloc", "full"])
async def test_extended_l2_create(tmp_path: Path, qemu_img: str, prealloc: str) -> None:
    mine, ref = tmp_path / "mine.qcow2", tmp_path / "ref.qcow2"
    await create(mine, 40 * MiB, extended_l2=True, preallocation=prealloc)
    run(
        qemu_img,
        "create",
        "-f",
        "qcow2",
        "-o",
        f"extended_l2=on,preallocation={prealloc}",
        str(ref),
        "40M",
    )
    assert mine.read_bytes() == ref.read_bytes()


async def test_extended_l2_create_errors(tmp_path: Path) -> None:
    from blockd.qmp.errors import GenericError

    with pytest.raises(GenericError) as e:
        await create(tmp_path / "a.qcow2", MiB, extended_l2=True, cluster_size=8192)
    assert e.value.desc == (
        "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"
    )
    with pytest.raises(GenericError) as e:
        await create(tmp_path / "b.qcow2", MiB, extended_l2=True, compat="0.10")
    assert e.value.desc == (
        "Extended L2 entries are only supported with compatibility level 1.1 "
        "and above (use version=v3 or greater)"
    )
