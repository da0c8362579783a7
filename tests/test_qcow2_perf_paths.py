"""The throughput paths of qcow2 writes: ordered write chains and the I/O pool.

An allocating qcow2 write sends its data and then the L2 entries naming it as one
ordered chain (``BlockDriver.write_many``; the file driver runs it as one pool
job).  These tests check the chain itself (order, O_DIRECT read-modify-write,
the generic fallback), what qcow2 makes of a chain that fails half way or whose
request is cancelled, and that a writer killed during sequential writes through
``blockd-io`` leaves an image real ``qemu-img check`` accepts with every write it
reported complete in place.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blockd.drivers.base import OpenFlags
from blockd.drivers.blkdebug import BlkdebugDriver
from blockd.drivers.file import FileDriver
from blockd.drivers.open import close_image, open_image
from blockd.drivers.qcow2.driver import Qcow2Driver
from blockd.drivers.raw import RawDriver
from blockd.io.executor import IOPool

KiB = 1024
CS = 64 * KiB
RW = OpenFlags(read_only=False)


def _qemu_img(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=check)


def _flat(qemu_img: str, img: Path, tmp_path: Path) -> bytes:
    out = tmp_path / "flat.raw"
    subprocess.run([qemu_img, "convert", "-U", "-O", "raw", str(img), str(out)], check=True)
    return out.read_bytes()


# --- the chain on the protocol driver ------------------------------------------


@pytest.mark.parametrize("direct", [False, True])
async def test_file_write_many_runs_pieces_in_order(tmp_path: Path, direct: bool) -> None:
    path = tmp_path / "f.raw"
    path.write_bytes(bytes(256 * KiB))
    drv = await open_image(str(path), "file", read_only=False, cache_direct=direct)
    try:
        assert isinstance(drv, FileDriver)
        # Overlapping pieces: the later one must win; unaligned pieces under
        # O_DIRECT go through read-modify-write inside the same chain.
        await drv.write_many(
            [
                (0, b"a" * (64 * KiB)),
                (4 * KiB, b"b" * (8 * KiB)),
                (100, b"c" * 8),
                (130 * KiB + 3, b"d" * 5000),
            ]
        )
        await drv.write_many([])
    finally:
        await close_image(drv)
    data = path.read_bytes()
    exp = bytearray(256 * KiB)
    exp[0 : 64 * KiB] = b"a" * (64 * KiB)
    exp[4 * KiB : 12 * KiB] = b"b" * (8 * KiB)
    exp[100:108] = b"c" * 8
    exp[130 * KiB + 3 : 130 * KiB + 5003] = b"d" * 5000
    assert data == bytes(exp)


async def test_generic_write_many_is_sequential_writes(tmp_path: Path) -> None:
    path = tmp_path / "g.raw"
    path.write_bytes(bytes(64 * KiB))
    image = await open_image(str(path), "file", read_only=False)
    raw = RawDriver()
    raw.file = image
    try:
        await raw.open({}, RW)
        # RawDriver has no write_many of its own: BlockDriver's runs write() in turn.
        await raw.write_many([(0, b"x" * 4096), (1000, b"y" * 10), (4090, b"z" * 20)])
        got = await raw.read(0, 8192)
    finally:
        await raw.close()
        await close_image(image)
    exp = bytearray(8192)
    exp[0:4096] = b"x" * 4096
    exp[1000:1010] = b"y" * 10
    exp[4090:4110] = b"z" * 20
    assert got == bytes(exp)


async def test_pool_run_to_end_defers_cancellation() -> None:
    pool = IOPool(2, name="test-pool")
    try:
        started = asyncio.Event()
        loop = asyncio.get_running_loop()
        finished: list[bool] = []

        def job() -> int:
            loop.call_soon_threadsafe(started.set)
            time.sleep(0.2)
            finished.append(True)
            return 7

        task = asyncio.ensure_future(pool.run_to_end(job))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The cancellation arrived only once the job was over.
        assert finished == [True]
        # Many concurrent jobs: every one runs once, with at most max_workers threads.
        results = await asyncio.gather(*(pool.run(pow, i, 2) for i in range(200)))
        assert results == [i * i for i in range(200)]
        assert len(pool._threads) <= 2
    finally:
        pool.shutdown()


# --- qcow2 allocating writes -----------------------------------------------------


@pytest.mark.qemu
@pytest.mark.parametrize("opts", ["", "extended_l2=on", "cluster_size=4096"])
async def test_qcow2_allocating_writes_read_back(tmp_path: Path, qemu_img: str, opts: str) -> None:
    img = tmp_path / "a.qcow2"
    size = 8 << 20
    _qemu_img("create", "-f", "qcow2", *(["-o", opts] if opts else []), str(img), str(size))
    drv = await open_image(str(img), "qcow2", read_only=False)
    expect = bytearray(size)
    cs = int(getattr(drv, "cluster_size", CS))
    writes = [
        (0, 3 * cs),  # whole clusters
        (5 * cs + 100, 2 * cs),  # partial head and tail (COW from zeros)
        (5 * cs + 50, 10),  # overwrite in place
        (20 * cs - 7, 14),  # straddles two fresh clusters
        (size - cs, cs),  # last cluster
        (3 * cs, cs),  # right after the first run
    ]
    try:
        for i, (off, ln) in enumerate(writes):
            data = bytes([i + 1]) * ln
            await drv.write(off, data)
            expect[off : off + ln] = data
        # Concurrent sequential writes (queued requests sharing an L2 slice).
        base = 64 * cs
        await asyncio.gather(
            *(drv.write(base + k * cs, bytes([0x40 + k]) * cs) for k in range(16))
        )
        for k in range(16):
            expect[base + k * cs : base + (k + 1) * cs] = bytes([0x40 + k]) * cs
        assert await drv.read(0, size) == bytes(expect)
    finally:
        await close_image(drv)
    check = _qemu_img("check", str(img), check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert _flat(qemu_img, img, tmp_path) == bytes(expect)


async def _qcow2_over_blkdebug(img: Path, rules: list[dict[str, object]]) -> Qcow2Driver:
    image = await open_image(str(img), "file", read_only=False)
    bd = BlkdebugDriver()
    bd.file = image
    await bd.open({"inject-error": rules}, RW)
    q = Qcow2Driver()
    q.file = bd
    await q.open({}, RW)
    return q


async def _close_qcow2_over_blkdebug(q: Qcow2Driver) -> None:
    bd = q.file
    await q.close()
    assert bd is not None and bd.file is not None
    image = bd.file
    await bd.close()
    await close_image(image)


@pytest.mark.qemu
@pytest.mark.parametrize("target", ["data", "l2"])
async def test_qcow2_failed_chain_leaves_consistent_image(
    tmp_path: Path, qemu_img: str, target: str
) -> None:
    img = tmp_path / "e.qcow2"
    _qemu_img("create", "-f", "qcow2", str(img), str(8 << 20))
    # Learn where the next data cluster (the first free one: the reserve is
    # given back at close) and the L2 entry of guest cluster 64 go (the first
    # entry of an L2 sector: blkdebug matches the rule's sector start).
    q = await _qcow2_over_blkdebug(img, [])
    await q.write(0, b"\x11" * CS)
    l2_entry = (q.l1[0] & ~0x8000_0000_0000_0000) + 64 * 8
    data_at = q._pool_start << q.cluster_bits
    await _close_qcow2_over_blkdebug(q)

    at = l2_entry if target == "l2" else data_at
    rule = {"event": "pwritev", "iotype": "write", "errno": errno.EIO,
            "sector": at // 512, "once": True}
    q = await _qcow2_over_blkdebug(img, [rule])
    try:
        with pytest.raises(OSError) as ei:
            await q.write(64 * CS, b"\x22" * CS)
        assert ei.value.errno == errno.EIO
        # Nothing of the failed write is visible, and the cluster can be written.
        assert await q.read(64 * CS, CS) == bytes(CS)
        await q.write(65 * CS, b"\x33" * CS)
        await q.write(64 * CS, b"\x44" * CS)
        assert await q.read(64 * CS, 2 * CS) == b"\x44" * CS + b"\x33" * CS
    finally:
        await _close_qcow2_over_blkdebug(q)
    check = _qemu_img("check", str(img), check=False)
    # The clusters of the failed write went back: no leak, no corruption.
    assert check.returncode == 0, check.stdout + check.stderr
    flat = _flat(qemu_img, img, tmp_path)
    assert flat[:CS] == b"\x11" * CS
    assert flat[64 * CS : 66 * CS] == b"\x44" * CS + b"\x33" * CS


@pytest.mark.qemu
async def test_qcow2_cancelled_writes_settle_consistently(tmp_path: Path, qemu_img: str) -> None:
    img = tmp_path / "c.qcow2"
    _qemu_img("create", "-f", "qcow2", str(img), str(8 << 20))
    drv = await open_image(str(img), "qcow2", read_only=False)
    try:
        # Cancel at every point of the request's life; each cluster then reads
        # as either untouched or fully written, never anything else.
        states: list[bytes] = []
        for k in range(24):
            task = asyncio.ensure_future(drv.write(k * CS, bytes([k + 1]) * CS))
            for _ in range(k % 8):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            got = await drv.read(k * CS, CS)
            assert got in (bytes(CS), bytes([k + 1]) * CS), k
            states.append(got)
    finally:
        await close_image(drv)
    check = _qemu_img("check", str(img), check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert _flat(qemu_img, img, tmp_path)[: 24 * CS] == b"".join(states)


# --- SIGKILL during blockd-io sequential writes ------------------------------------


@pytest.mark.qemu
@pytest.mark.parametrize("cache", ["writeback", "none"])
def test_sigkill_during_sequential_blockd_io_writes(
    tmp_path: Path, qemu_img: str, cache: str
) -> None:
    img = tmp_path / "k.qcow2"
    nclusters = 384
    _qemu_img("create", "-f", "qcow2", str(img), str(nclusters * CS))
    blockd_io = str(Path(sys.executable).with_name("blockd-io"))
    args = [blockd_io, "-f", "qcow2", "-t", cache]
    for i in range(nclusters):
        args += ["-c", f"write -P {i % 250 + 1} {i * CS} 64k"]
    p = subprocess.Popen([*args, str(img)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    buf = b""
    deadline = time.monotonic() + 0.4
    try:
        # Kill once some writes were reported (or after a while regardless).
        while time.monotonic() < deadline + 5 and buf.count(b"\n") < 40:
            r, _, _ = select.select([p.stdout], [], [], 0.05)
            if r:
                chunk = os.read(p.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                buf += chunk
        p.send_signal(signal.SIGKILL)
        p.wait()
        buf += p.stdout.read() or b""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    lines = buf.split(b"\n")[:-1]
    done = sum(1 for ln in lines if ln.startswith(b"wrote 65536/65536 bytes"))
    assert done > 0, (buf[:300], p.stderr.read() if p.stderr else b"")
    check = _qemu_img("check", str(img), check=False)
    assert check.returncode in (0, 3), check.stdout + check.stderr
    assert "ERROR" not in check.stderr, check.stderr
    flat = _flat(qemu_img, img, tmp_path)
    for i in range(nclusters):
        got = flat[i * CS : (i + 1) * CS]
        if i < done:
            # Reported complete ("wrote" comes after the write): it is in.
            assert got == bytes([i % 250 + 1]) * CS, i
        else:
            # Later ones (output not read yet, or in flight) landed whole or not at all.
            assert got in (bytes(CS), bytes([i % 250 + 1]) * CS), i
