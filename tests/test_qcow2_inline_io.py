"""qcow2 over a file doing its I/O inline (blockd-io's mode, set_inline_io).

In that mode qcow2 serves the common requests without an await (_write_now,
_read_now) and leaves everything else to the general paths.  These tests drive
a seeded mix of requests that hit both, compare every byte with a flat model and
with real ``qemu-img`` (check, convert), and exercise a failing inline chain.
"""

from __future__ import annotations

import random
import resource
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockd.drivers.file import FileDriver
from blockd.drivers.open import close_image, open_image
from blockd.drivers.qcow2.driver import Qcow2Driver
from blockd.io import executor

KiB = 1024
CS = 64 * KiB


@pytest.fixture
def inline_io() -> Iterator[None]:
    old = executor.inline_io()
    executor.set_inline_io(True)
    try:
        yield
    finally:
        executor.set_inline_io(old)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True)


def _flat(qemu_img: str, img: Path, tmp_path: Path) -> bytes:
    out = tmp_path / "flat.raw"
    r = _run(qemu_img, "convert", "-U", "-O", "raw", str(img), str(out))
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


def _requests(rng: random.Random, size: int, cs: int, count: int) -> list[tuple[int, int]]:
    """Aligned whole-cluster runs (the fast path), partial and straddling ones."""
    out: list[tuple[int, int]] = []
    nclusters = size // cs
    for _ in range(count):
        kind = rng.randrange(4)
        if kind == 0:
            c = rng.randrange(nclusters)
            n = rng.randint(1, min(4, nclusters - c))
            out.append((c * cs, n * cs))
        elif kind == 1:
            # Sequential run crossing slice and L2 table boundaries.
            c = rng.randrange(nclusters - 8)
            out.extend((k * cs, cs) for k in range(c, c + 8))
        else:
            off = rng.randrange(size - 1)
            out.append((off, rng.randint(1, min(3 * cs, size - off))))
    return out


@pytest.mark.qemu
@pytest.mark.parametrize(
    "opts", ["", "cluster_size=4096", "l2-cache-entry-size=4096", "backing"]
)
async def test_inline_mixed_requests_match_model_and_qemu(
    tmp_path: Path, qemu_img: str, inline_io: None, opts: str
) -> None:
    size = 16 << 20
    img = tmp_path / "t.qcow2"
    expect = bytearray(size)
    create = [qemu_img, "create", "-f", "qcow2"]
    open_opts: dict[str, object] = {}
    if opts == "backing":
        base = tmp_path / "base.qcow2"
        assert _run(*create, str(base), str(size)).returncode == 0
        r = _run("qemu-io", "-c", "write -P 0x11 0 3M", "-c", "write -P 0x22 9M 2M", str(base))
        assert r.returncode == 0, r.stderr
        expect[0 : 3 << 20] = b"\x11" * (3 << 20)
        expect[9 << 20 : 11 << 20] = b"\x22" * (2 << 20)
        create += ["-b", str(base), "-F", "qcow2"]
    elif opts.startswith("l2-cache"):
        open_opts["l2-cache-entry-size"] = 4096
    elif opts:
        create += ["-o", opts]
    assert _run(*create, str(img), str(size)).returncode == 0
    drv = await open_image(str(img), "qcow2", read_only=False, options=open_opts)
    assert isinstance(drv, Qcow2Driver)
    cs = drv.cluster_size
    rng = random.Random(f"inline-{opts}")
    try:
        for i, (off, ln) in enumerate(_requests(rng, size, cs, 300)):
            data = bytes([(i % 250) + 1]) * ln
            await drv.write(off, data)
            expect[off : off + ln] = data
            if i % 7 == 0:
                roff = rng.randrange(size - 1)
                rln = rng.randint(1, min(4 * cs, size - roff))
                assert await drv.read(roff, rln) == bytes(expect[roff : roff + rln]), (roff, rln)
        for off in range(0, size, 4 * cs):
            assert await drv.read(off, 4 * cs) == bytes(expect[off : off + 4 * cs]), off
    finally:
        await close_image(drv)
    r = _run(qemu_img, "check", str(img))
    assert r.returncode == 0, r.stdout + r.stderr
    assert _flat(qemu_img, img, tmp_path) == bytes(expect)


@pytest.mark.qemu
async def test_inline_fast_paths_serve_sequential_requests(
    tmp_path: Path, qemu_img: str, inline_io: None
) -> None:
    """Past the first request of a table, sequential whole-cluster writes and
    reads (blockd-io's benchmark pattern) take the await-free paths."""
    img = tmp_path / "s.qcow2"
    assert _run(qemu_img, "create", "-f", "qcow2", str(img), "64M").returncode == 0
    drv = await open_image(str(img), "qcow2", read_only=False)
    assert isinstance(drv, Qcow2Driver)
    try:
        await drv.write(0, b"\x01" * CS)  # makes the L2 table and the reserve
        fast_writes = sum(drv._write_now(k * CS, memoryview(b"\x5a" * CS)) for k in range(1, 64))
        assert fast_writes >= 60
        # Overwrites in place take it too.
        assert drv._write_now(5 * CS, memoryview(b"\x6b" * CS))
        data = drv._read_now(4 * CS, 2 * CS)
        assert data == b"\x5a" * CS + b"\x6b" * CS
        assert drv._read_now(100 * CS, CS) == bytes(CS)
    finally:
        await close_image(drv)
    r = _run(qemu_img, "check", str(img))
    assert r.returncode == 0, r.stdout + r.stderr
    assert _flat(qemu_img, img, tmp_path)[: 6 * CS] == (
        b"\x01" * CS + b"\x5a" * 4 * CS + b"\x6b" * CS
    )


@pytest.mark.qemu
async def test_inline_failed_chain_gives_clusters_back(
    tmp_path: Path, qemu_img: str, inline_io: None
) -> None:
    """A data write failing in the inline chain (EFBIG past RLIMIT_FSIZE) leaves
    the L2 entry unwritten: the request fails, the fresh clusters go back, and
    the image stays clean and reads zeros there."""
    img = tmp_path / "f.qcow2"
    assert _run(qemu_img, "create", "-f", "qcow2", str(img), "64M").returncode == 0
    drv = await open_image(str(img), "qcow2", read_only=False)
    assert isinstance(drv, Qcow2Driver)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        await drv.write(0, b"\x01" * CS)
        limit = img.stat().st_size + CS // 2
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            with pytest.raises(OSError):
                await drv.write(CS, b"\x02" * CS)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        assert await drv.read(CS, CS) == bytes(CS)
        await drv.write(2 * CS, b"\x03" * CS)
        assert await drv.read(0, 3 * CS) == b"\x01" * CS + bytes(CS) + b"\x03" * CS
    finally:
        signal.signal(signal.SIGXFSZ, old_handler)
        await close_image(drv)
    r = _run(qemu_img, "check", str(img))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "leaked" not in r.stdout
    assert _flat(qemu_img, img, tmp_path)[: 3 * CS] == b"\x01" * CS + bytes(CS) + b"\x03" * CS


# --- durable metadata writes instead of barriers (RWF_DSYNC) ------------------------


@pytest.mark.parametrize("inline", [False, True])
async def test_file_fua_write_is_range_durable_not_a_flush(tmp_path: Path, inline: bool) -> None:
    """A FUA write on a buffered file is one RWF_DSYNC write: its data lands,
    and nothing counts as flushed (a later flush still syncs the rest)."""
    old = executor.inline_io()
    executor.set_inline_io(inline)
    try:
        path = tmp_path / "f.raw"
        path.write_bytes(bytes(4 * CS))
        drv = await open_image(str(path), "file", read_only=False)
    finally:
        executor.set_inline_io(old)
    try:
        assert isinstance(drv, FileDriver)
        assert drv.dsync
        await drv.write(0, b"\x01" * CS)
        flushed = drv._flushed_gen
        await drv.write(CS, b"\x02" * 100, fua=True)
        assert drv._flushed_gen == flushed
        await drv.flush()
        assert drv._flushed_gen == drv._write_gen
    finally:
        await close_image(drv)
    data = path.read_bytes()
    assert data[:CS] == b"\x01" * CS and data[CS : CS + 100] == b"\x02" * 100


@pytest.mark.parametrize("mode", ["direct", "no-flush"])
async def test_file_dsync_only_for_buffered_flushing_files(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "f.raw"
    path.write_bytes(bytes(CS))
    drv = await open_image(
        str(path), "file", read_only=False, cache_direct=mode == "direct",
        cache_no_flush=mode == "no-flush",
    )
    try:
        assert isinstance(drv, FileDriver)
        assert not drv.dsync
    finally:
        await close_image(drv)


@pytest.mark.qemu
@pytest.mark.parametrize("inline", [False, True])
async def test_qcow2_reserves_and_tables_need_no_flush(
    tmp_path: Path, qemu_img: str, inline: bool
) -> None:
    """With RWF_DSYNC refcount and L2 table writes, sequential allocation past
    several reserves and into a second L2 table issues no fdatasync at all (the
    data stays in the page cache, as with QEMU's write-back metadata caches),
    and the image is clean and complete."""
    old = executor.inline_io()
    executor.set_inline_io(inline)
    img = tmp_path / "d.qcow2"
    assert _run(qemu_img, "create", "-f", "qcow2", "-o", "cluster_size=16384", str(img),
                "128M").returncode == 0
    try:
        drv = await open_image(str(img), "qcow2", read_only=False)
    finally:
        executor.set_inline_io(old)
    assert isinstance(drv, Qcow2Driver)
    f = drv.file
    assert isinstance(f, FileDriver)
    cs = drv.cluster_size
    # 80 MiB: past two L2 tables (32 MiB each) and two reserves (32 MiB), all
    # within the first refcount block (128 MiB; a new block is still made
    # stable with barriers).
    n = 5000
    try:
        await drv.write(0, b"\x07" * cs)
        flushed = f._flushed_gen
        for k in range(1, n):
            await drv.write(k * cs, bytes([k % 200 + 1]) * cs)
        assert f._flushed_gen == flushed
        assert drv._next_pool is None
    finally:
        await close_image(drv)
    r = _run(qemu_img, "check", str(img))
    assert r.returncode == 0, r.stdout + r.stderr
    flat = _flat(qemu_img, img, tmp_path)
    assert flat[:cs] == b"\x07" * cs
    for k in range(1, n):
        assert flat[k * cs : (k + 1) * cs] == bytes([k % 200 + 1]) * cs, k
