"""FdRange: another file's bytes written by the file driver (copy_file_range,
else through a buffer), alone and inside an ordered write chain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blockd.drivers.file import FdRange, FileDriver
from blockd.drivers.open import close_image, open_image

KiB = 1024


def _source(path: Path, size: int) -> bytes:
    data = bytes((i * 7 + 3) & 0xFF for i in range(size))
    path.write_bytes(data)
    return data


async def _copy(dst: Path, src: Path, direct: bool, pieces: list[tuple[int, int, int]],
                chain: bool) -> None:
    """(target offset, source offset, length) pieces from src into dst."""
    fd = os.open(src, os.O_RDONLY)
    drv = await open_image(str(dst), "file", read_only=False, cache_direct=direct)
    try:
        assert isinstance(drv, FileDriver)
        ranges = [(at, FdRange(fd, off, n)) for at, off, n in pieces]
        if chain:
            await drv.write_many([(0, b"head"), *ranges])
        else:
            for at, r in ranges:
                await drv.copy_from(at, r)
    finally:
        await close_image(drv)
        os.close(fd)


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("chain", [False, True])
async def test_copy_from_matches_the_bytes(tmp_path: Path, direct: bool, chain: bool) -> None:
    src = tmp_path / "src"
    data = _source(src, 300 * KiB)
    dst = tmp_path / "dst"
    dst.write_bytes(bytes(512 * KiB))
    # Aligned, unaligned, and running past the source's end (zeros there).
    pieces = [(64 * KiB, 0, 128 * KiB), (200 * KiB + 5, 7, 1000), (400 * KiB, 250 * KiB, 100 * KiB)]
    await _copy(dst, src, direct, pieces, chain)
    exp = bytearray(512 * KiB)
    if chain:
        exp[0:4] = b"head"
    exp[64 * KiB : 192 * KiB] = data[0 : 128 * KiB]
    exp[200 * KiB + 5 : 200 * KiB + 1005] = data[7:1007]
    exp[400 * KiB : 450 * KiB] = data[250 * KiB :]
    assert dst.read_bytes() == bytes(exp)


async def test_copy_from_another_file_system(tmp_path: Path) -> None:
    """copy_file_range refuses (EXDEV) between file systems: the buffered way."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test directory")
    src = shm / f"blockd-copy-test-{os.getpid()}"
    try:
        data = _source(src, 5 << 20)
        dst = tmp_path / "dst"
        dst.write_bytes(bytes(6 << 20))
        await _copy(dst, src, False, [(1 << 20, 0, 5 << 20)], False)
        assert dst.read_bytes() == bytes(1 << 20) + data
    finally:
        src.unlink(missing_ok=True)
