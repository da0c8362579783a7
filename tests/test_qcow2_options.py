"""qcow2 runtime options (cache sizes, lazy refcounts, overlap checks, discard)
against real qemu-io, plus pure unit tests of the cache-size rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_qcow2_util import close, create, open_rw, run

from blockd.drivers.base import OpenFlags
from blockd.drivers.file import FileDriver
from blockd.drivers.qcow2 import Qcow2Driver
from blockd.drivers.qcow2.cache import resolve_cache_options
from blockd.qmp.errors import GenericError

MiB = 1 << 20

OPTION_SETS = [
    "l2-cache-size=1M,cache-size=512K",
    "l2-cache-entry-size=128K",
    "l2-cache-entry-size=256",
    "l2-cache-entry-size=3000",
    "l2-cache-entry-size=4096",
    "cache-size=1M,l2-cache-size=512K,refcount-cache-size=256K",
    "refcount-cache-size=2M,cache-size=1M",
    "cache-size=1M,refcount-cache-size=256K",
    "cache-size=1M,l2-cache-size=256K",
    "cache-size=64K",
    "cache-size=100M",
    "l2-cache-size=4M,refcount-cache-size=4M,l2-cache-entry-size=32K",
    "cache-clean-interval=-1",
    "cache-clean-interval=5000000000",
    "cache-clean-interval=0",
    "cache-clean-interval=abc",
    "l2-cache-size=abc",
    "lazy-refcounts=on",
    "lazy-refcounts=maybe",
    "overlap-check=foo",
    "overlap-check=none",
    "overlap-check=all",
    "pass-discard-request=on,pass-discard-other=on",
]


def _qemu_error(qemu_io: str, path: Path, opts: str) -> str | None:
    p = run(
        qemu_io,
        "--image-opts",
        "-c",
        "quit",
        f"driver=qcow2,file.filename={path},{opts}",
        check=False,
    )
    m = re.search(r"can't open(?: device [^:]*)?: (.*)", p.stderr)
    return m.group(1).strip() if m else None


@pytest.mark.qemu
@pytest.mark.parametrize("opts", OPTION_SETS)
@pytest.mark.parametrize("compat", ["1.1", "0.10"])
async def test_open_options_match_qemu(
    tmp_path: Path, qemu_img: str, qemu_io: str, opts: str, compat: str
) -> None:
    img = tmp_path / "o.qcow2"
    run(qemu_img, "create", "-f", "qcow2", "-o", f"compat={compat}", str(img), "1G")
    expected = _qemu_error(qemu_io, img, opts)
    # Options as QemuOpts strings, straight to the driver (the generic open path
    # types some values itself before the driver sees them).
    options: dict[str, object] = {}
    for kv in opts.split(","):
        k, v = kv.split("=", 1)
        options[k] = v
    f = FileDriver()
    await f.open({"filename": str(img)}, OpenFlags(read_only=False))
    drv = Qcow2Driver()
    drv.file = f
    try:
        await drv.open(options, OpenFlags(read_only=False))
    except GenericError as e:
        assert e.desc == expected
        return
    finally:
        await drv.close()
        await f.close()
    assert expected is None


def test_cache_defaults() -> None:
    cs = 65536
    cfg = resolve_cache_options({}, cs, 1 << 30)
    # 1 GiB needs 128 KiB of L2 tables: all of it fits, entries of a cluster.
    assert cfg.l2_cache_entry_size == cs
    assert cfg.l2_cache_entries == 2
    assert cfg.refcount_cache_entries == 4
    assert cfg.cache_clean_interval == 600
    big = resolve_cache_options({}, cs, 1 << 42)
    # 4 TiB: the 32 MiB default cannot cover it, so 4 KiB slices are used.
    assert big.l2_cache_entry_size == 4096
    assert big.l2_cache_entries == 32 * MiB // 4096


def test_cache_combined_split() -> None:
    cs = 65536
    cfg = resolve_cache_options({"cache-size": 4 * MiB}, cs, 100 << 30)
    # Needs 12.5 MiB of L2 tables: the refcount cache keeps its minimum.
    assert cfg.refcount_cache_entries == 4
    assert cfg.l2_cache_entries == (4 * MiB - 4 * cs) // 4096


async def test_small_l2_cache_still_correct(tmp_path: Path) -> None:
    """A tiny L2 cache with small slices evicts constantly; data stays right."""
    img = tmp_path / "s.qcow2"
    await create(img, 64 * MiB, cluster_size=4096)
    drv = await open_rw(
        img,
        options={"l2-cache-size": "8K", "l2-cache-entry-size": "1K", "refcount-cache-size": "4K"},
    )
    try:
        assert isinstance(drv, Qcow2Driver)
        assert drv.l2cache.capacity == 8
        for i in range(64):
            await drv.write(i * MiB + 123, bytes([i + 1]) * 5000)
        assert len(drv.l2cache) <= 8
        for i in range(64):
            assert await drv.read(i * MiB + 123, 5000) == bytes([i + 1]) * 5000
    finally:
        await close(drv)


async def test_cache_clean_interval_drops_unused(tmp_path: Path) -> None:
    img = tmp_path / "c.qcow2"
    await create(img, 16 * MiB)
    drv = await open_rw(img, options={"cache-clean-interval": 1})
    try:
        await drv.write(0, b"x" * 100)
        assert len(drv.l2cache) == 1
        drv.l2cache.clean_unused()  # marks the used entries, keeps them
        assert len(drv.l2cache) == 1
        drv.l2cache.clean_unused()  # unused for a whole interval: dropped
        assert len(drv.l2cache) == 0
        assert await drv.read(0, 100) == b"x" * 100
    finally:
        await close(drv)


async def test_reopen_options(tmp_path: Path) -> None:
    """iotest 245's qcow2 reopen cases: refused changes leave the node as it was."""
    img = tmp_path / "r.qcow2"
    await create(img, 1 << 30)
    f = FileDriver()
    await f.open({"filename": str(img)}, OpenFlags(read_only=True))
    drv = Qcow2Driver()
    drv.file = f
    try:
        await drv.open({}, OpenFlags(read_only=True))
        before = drv.cache_config
        with pytest.raises(GenericError) as e:
            await drv.reopen({"l2-cache-entry-size": 128 * 1024}, OpenFlags(read_only=True))
        assert e.value.desc == (
            "L2 cache entry size must be a power of two between 512 and the cluster size (65536)"
        )
        with pytest.raises(GenericError, match="l2-cache-size may not exceed cache-size"):
            await drv.reopen(
                {"l2-cache-size": 1 * MiB, "cache-size": 512 * 1024}, OpenFlags(read_only=True)
            )
        assert drv.cache_config == before
        await drv.reopen(
            {
                "l2-cache-size": 4 * MiB,
                "refcount-cache-size": 4 * MiB,
                "l2-cache-entry-size": 32 * 1024,
            },
            OpenFlags(read_only=True),
        )
        assert drv.cache_config is not None
        assert drv.cache_config.l2_cache_entry_size == 32 * 1024
        assert drv.l2cache.entry_size == 32 * 1024
        await drv.reopen({"pass-discard-request": True}, OpenFlags(read_only=True))
        assert drv.discard_passthrough["request"] is True
        # read-only -> read/write (the file child is reopened by the graph; here
        # a second writable handle stands in for it)
        f2 = FileDriver()
        await f2.open({"filename": str(img)}, OpenFlags(read_only=False, locking="off"))
        drv.file = f2
        await drv.reopen({}, OpenFlags(read_only=False))
        await drv.write(0, b"abc")
        assert await drv.read(0, 3) == b"abc"
        await drv.close()
        await f2.close()
    finally:
        await f.close()
