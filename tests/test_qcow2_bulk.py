"""qcow2 bulk copy (copy_in): another file's bytes land exactly as a write of
the same bytes would put them, over every kind of cluster, and the image stays
clean."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from blockd.drivers.file import FdRange
from blockd.drivers.open import close_image, open_image
from blockd.drivers.qcow2.bulk import copy_in
from blockd.drivers.qcow2.driver import Qcow2Driver

pytestmark = pytest.mark.qemu

KiB = 1024
MiB = 1024 * KiB
SIZE = 16 * MiB

# (guest offset, source offset, length): aligned runs, unaligned heads and
# tails, runs across allocated, zero (plain and preallocated), compressed and
# unallocated clusters.
COPIES = [
    (0, 0, 2 * MiB),
    (3 * MiB + 100, 5000, 300 * KiB),
    (4 * MiB, 1 * MiB, 4 * MiB + 64 * KiB),
    (9 * MiB - 32 * KiB, 2 * MiB, 96 * KiB),
    (9 * MiB + 16 * KiB, 0, 2 * MiB),
    (12 * MiB, 0, 4 * MiB),
]


def _image(qemu_img: str, qemu_io: str, path: Path) -> None:
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(path), str(SIZE)], check=True)
    subprocess.run([qemu_io, "-c", "write -P 9 1M 2M", "-c", "write -z 4M 1M",
                    "-c", "write -c -P 8 6M 128k", "-c", "write -P 7 8196k 8k",
                    "-c", "write -P 6 10M 1M", "-c", "write -z 10M 512k",
                    "-c", "write -z 13M 512k", str(path)], check=True, capture_output=True)


def _map(qemu_img: str, path: Path) -> list[tuple[int, int, bool, bool]]:
    out = json.loads(subprocess.run([qemu_img, "map", "--output=json", str(path)],
                                    check=True, capture_output=True, text=True).stdout)
    merged: list[tuple[int, int, bool, bool]] = []
    for e in out:
        if merged and merged[-1][2:] == (e["zero"], e["data"]):
            s, n, z, d = merged.pop()
            merged.append((s, n + e["length"], z, d))
        else:
            merged.append((e["start"], e["length"], e["zero"], e["data"]))
    return merged


async def test_copy_in_equals_write(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    src = tmp_path / "src"
    data = bytes((i * 131 + 7) & 0xFF or 1 for i in range(6 * MiB))
    assert all(off + n <= len(data) for _, off, n in COPIES)
    src.write_bytes(data)
    images = {name: tmp_path / f"{name}.qcow2" for name in ("bulk", "write")}
    for path in images.values():
        _image(qemu_img, qemu_io, path)
    fd = os.open(src, os.O_RDONLY)
    try:
        for name, path in images.items():
            q = await open_image(str(path), "qcow2", read_only=False)
            assert isinstance(q, Qcow2Driver)
            chunk = q._pool_chunk
            try:
                for at, off, n in COPIES:
                    if name == "bulk":
                        await copy_in(q, at, FdRange(fd, off, n))
                    else:
                        await q.write(at, data[off : off + n])
                # The bigger bulk reserve is for the copies only.
                assert q._pool_chunk == chunk
            finally:
                await close_image(q)
    finally:
        os.close(fd)
    for path in images.values():
        r = subprocess.run([qemu_img, "check", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([qemu_img, "compare", str(images["bulk"]), str(images["write"])],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _map(qemu_img, images["bulk"]) == _map(qemu_img, images["write"])
