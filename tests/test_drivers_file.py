"""The file, raw and null-co drivers through the BlockDriver interface, on real files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from blockd.drivers.base import BlockStatusFlag, driver_class, is_allocated_above, run_io
from blockd.drivers.file import FileDriver
from blockd.drivers.locking import (
    BLK_PERM_ALL,
    BLK_PERM_CONSISTENT_READ,
    BLK_PERM_RESIZE,
    BLK_PERM_WRITE,
    BLK_PERM_WRITE_UNCHANGED,
    ImageLockError,
)
from blockd.drivers.open import close_image, open_image, probe_format, resolve_backing_path
from blockd.qmp.errors import GenericError

MiB = 1 << 20


def make_file(path: Path, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


async def test_registry_names_drivers() -> None:
    assert driver_class("file") is FileDriver
    assert driver_class("raw").name == "raw"
    assert driver_class("null-co").name == "null-co"
    assert driver_class("null-aio").name == "null-aio"
    with pytest.raises(GenericError, match="Unknown driver 'nope'"):
        driver_class("nope")


async def test_run_io_runs_off_loop() -> None:
    import threading

    main = threading.get_ident()
    assert await run_io(threading.get_ident) != main


async def test_file_read_write_zero_discard_status(tmp_path: Path) -> None:
    img = make_file(tmp_path / "a.raw", 4 * MiB)
    drv = await open_image(img, "file", read_only=False)
    try:
        assert drv.get_length() == 4 * MiB
        await drv.write(0, b"A" * 65536)
        assert await drv.read(0, 4) == b"AAAA"
        st = await drv.block_status(0, MiB)
        assert st.flags == BlockStatusFlag.DATA | BlockStatusFlag.ALLOCATED
        assert st.length == 65536
        st = await drv.block_status(65536, MiB)
        assert st.flags & BlockStatusFlag.ZERO and st.length == MiB
        # discard punches a hole (qemu-io opens with discard=unmap)
        await drv.discard(0, 4096)
        assert await drv.read(0, 4096) == bytes(4096)
        assert (await drv.block_status(0, MiB)).flags & BlockStatusFlag.ZERO
        await drv.write_zeroes(8192, 4096)
        assert await drv.read(8190, 4) == b"AA\0\0"
        await drv.write_zeroes(16384, 4096, may_unmap=True)
        assert await drv.read(16384, 4096) == bytes(4096)
        # past EOF reads as zeros
        assert await drv.read(4 * MiB - 2, 4) == bytes(4)
        await drv.truncate(MiB)
        assert drv.get_length() == MiB
        await drv.truncate(2 * MiB, preallocation="falloc")
        assert drv.get_length() == 2 * MiB
        with pytest.raises(GenericError, match="Cannot use preallocation for shrinking files"):
            await drv.truncate(MiB, preallocation="full")
        await drv.flush()
    finally:
        await close_image(drv)


async def test_file_direct_io_unaligned(tmp_path: Path) -> None:
    img = make_file(tmp_path / "d.raw", MiB)
    try:
        drv = await open_image(img, "raw", read_only=False, cache_direct=True)
    except GenericError as e:
        assert "filesystem does not support O_DIRECT" in e.desc
        pytest.skip("no O_DIRECT here")
    try:
        assert drv.refresh_limits().request_alignment in (512, 1024, 2048, 4096)
        await drv.write(1, b"xyz")
        await drv.write(4096, b"B" * 8192)
        assert await drv.read(0, 5) == b"\0xyz\0"
        assert await drv.read(4095, 3) == b"\0BB"
        await drv.write_zeroes(4097, 10)
        assert await drv.read(4096, 12) == b"B" + bytes(10) + b"B"
    finally:
        await close_image(drv)
    with open(img, "rb") as f:
        assert f.read(4) == b"\0xyz"


async def test_file_open_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(GenericError) as ei:
        await open_image(missing, "raw")
    assert ei.value.desc == f"Could not open '{missing}': No such file or directory"
    img = make_file(tmp_path / "a.raw", MiB)
    with pytest.raises(GenericError) as ei:
        await open_image(img, "raw", aio="native")
    assert ei.value.desc == (
        "aio=native was specified, but it requires cache.direct=on, which was not specified."
    )
    drv = await open_image(img, "raw", aio="io_uring")
    await close_image(drv)
    with pytest.raises(GenericError, match="force-share=on can only be used with read-only"):
        await open_image(img, "raw", read_only=False, force_share=True)
    if os.geteuid() != 0:
        os.chmod(img, 0)
        with pytest.raises(GenericError) as ei:
            await open_image(img, "raw")
        assert ei.value.desc == f"Could not open '{img}': Permission denied"


async def test_raw_offset_size(tmp_path: Path) -> None:
    img = make_file(tmp_path / "a.raw", MiB)
    drv = await open_image(img, "raw", read_only=False, options={"offset": 4096, "size": 8192})
    try:
        assert drv.get_length() == 8192
        await drv.write(0, b"Q" * 512)
        with pytest.raises(GenericError, match="Cannot resize fixed-size raw disks"):
            await drv.truncate(4096)
    finally:
        await close_image(drv)
    with open(img, "rb") as f:
        f.seek(4096)
        assert f.read(512) == b"Q" * 512
    with pytest.raises(GenericError) as ei:
        await open_image(img, "raw", options={"offset": 2 * MiB})
    assert ei.value.desc == (
        "Offset (2097152) cannot be greater than size of the containing file (1048576)"
    )
    with pytest.raises(GenericError) as ei:
        await open_image(img, "raw", options={"offset": 512, "size": MiB})
    assert ei.value.desc == (
        "The sum of offset (512) and size (1048576) has to be smaller or equal to the  "
        "actual size of the containing file (1048576)"
    )
    with pytest.raises(GenericError, match="Specified size is not multiple of 512"):
        await open_image(img, "raw", options={"size": 1000})


async def test_null_co() -> None:
    # Like QEMU, a protocol filename gets a probed format (raw) on top.
    drv = await open_image("null-co://")
    assert drv.name == "raw" and drv.file is not None and drv.file.name == "null-co"
    await close_image(drv)
    drv = await open_image("null-co://", "null-co")
    assert drv.name == "null-co"
    assert drv.get_length() == 1 << 30
    assert await drv.read(0, 8) == bytes(8)
    assert (await drv.block_status(0, 100)).flags == 0
    await close_image(drv)
    drv = await open_image("", options={"driver": "null-aio", "size": "1M", "read-zeroes": "on"})
    assert drv.get_length() == MiB
    st = await drv.block_status(0, 100)
    assert st.flags == BlockStatusFlag.ZERO | BlockStatusFlag.ALLOCATED
    await drv.write(0, b"x")
    await close_image(drv)


def test_probe_format_and_backing_paths() -> None:
    assert probe_format(b"QFI\xfb\0\0\0\x03" + bytes(100)) == "qcow2"
    assert probe_format(b"QFI\xfb\0\0\0\x01") == "raw"
    assert probe_format(b"hello") == "raw"
    assert resolve_backing_path("/a/b/ov.qcow2", "base.qcow2") == "/a/b/base.qcow2"
    assert resolve_backing_path("ov.qcow2", "base.qcow2") == "base.qcow2"
    assert resolve_backing_path("/a/ov.qcow2", "/x/base") == "/x/base"


async def test_json_filename(tmp_path: Path) -> None:
    img = make_file(tmp_path / "j.raw", MiB)
    spec = {"driver": "raw", "size": 4096, "file": {"driver": "file", "filename": img}}
    drv = await open_image("json:" + json.dumps(spec))
    assert drv.name == "raw" and drv.get_length() == 4096
    await close_image(drv)


@pytest.mark.qemu
async def test_backing_chain_and_is_allocated_above(tmp_path: Path, qemu_img: str,
                                                    qemu_io: str) -> None:
    base = tmp_path / "base.qcow2"
    mid = tmp_path / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    subprocess.run([qemu_img, "create", "-f", "qcow2", str(base), "4M"], check=True,
                   capture_output=True)
    subprocess.run([qemu_io, "-f", "qcow2", "-c", "write -P 1 0 64k", str(base)], check=True,
                   capture_output=True)
    subprocess.run([qemu_img, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                    str(mid)], check=True, capture_output=True)
    subprocess.run([qemu_io, "-f", "qcow2", "-c", "write -P 2 1M 64k", str(mid)], check=True,
                   capture_output=True)
    subprocess.run([qemu_img, "create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2",
                    str(top)], check=True, capture_output=True)
    drv = await open_image(str(top))
    try:
        assert drv.name == "qcow2"
        assert drv.backing is not None and drv.backing.backing is not None
        assert await drv.read(0, 2) == b"\1\1"
        assert await drv.read(MiB, 2) == b"\2\2"
        assert await is_allocated_above(drv, None, 0, 65536) == (True, 65536)
        assert await is_allocated_above(drv, drv.backing, 0, 65536) == (False, 65536)
        alloc, n = await is_allocated_above(drv, drv.backing.backing, MiB, 65536)
        assert alloc and n == 65536
    finally:
        await close_image(drv)
    os.rename(base, tmp_path / "gone.qcow2")
    with pytest.raises(GenericError) as ei:
        await open_image(str(top))
    assert ei.value.desc == (
        f"Could not open backing file: Could not open backing file: "
        f"Could not open '{base}': No such file or directory"
    )


def _lock_bytes(path: str) -> list[int]:
    """Bytes locked on path per /proc/locks (the kernel merges adjacent ranges)."""
    ino = os.stat(path).st_ino
    out: set[int] = set()
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            if parts[1] == "OFDLCK" and parts[5].endswith(f":{ino}"):
                out.update(range(int(parts[6]), int(parts[7]) + 1))
    return sorted(out)


async def test_lock_bytes_match_qemu_layout(tmp_path: Path) -> None:
    img = make_file(tmp_path / "l.raw", MiB)
    drv = await open_image(img, "raw", read_only=False)
    try:
        assert _lock_bytes(img) == [100, 101]
        file = drv.file
        assert isinstance(file, FileDriver)
        file.set_perms(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE | BLK_PERM_RESIZE,
                       BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED)
        assert _lock_bytes(img) == [100, 101, 103, 201, 203]
        file.set_perms(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL)
        assert _lock_bytes(img) == [100]
    finally:
        await close_image(drv)
    assert _lock_bytes(img) == []
    drv = await open_image(img, "raw", options={"file.locking": "off"})
    assert _lock_bytes(img) == []
    await close_image(drv)


async def test_lock_conflict_between_two_opens(tmp_path: Path) -> None:
    img = make_file(tmp_path / "l.raw", MiB)
    holder = await open_image(img, "file", read_only=False)
    assert isinstance(holder, FileDriver)
    holder.set_perms(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE, BLK_PERM_CONSISTENT_READ)
    try:
        with pytest.raises(ImageLockError) as ei:
            await open_image(img, "raw", read_only=False)
        assert ei.value.desc == 'Failed to get "write" lock'
        assert ei.value.hint == f"Is another process using the image [{img}]?\n"
        ro = await open_image(img, "raw")
        await close_image(ro)
        shared = await open_image(img, "raw", force_share=True)
        await close_image(shared)
    finally:
        await close_image(holder)


@pytest.mark.qemu
async def test_lock_interop_with_qemu_io(tmp_path: Path, qemu_io: str, qemu_img: str) -> None:
    img = str(tmp_path / "i.qcow2")
    subprocess.run([qemu_img, "create", "-f", "qcow2", img, "1M"], check=True,
                   capture_output=True)
    # blockd holds the image the way a qcow2 writer does: real qemu-io must refuse.
    holder = await open_image(img, "file", read_only=False)
    assert isinstance(holder, FileDriver)
    holder.set_perms(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE | BLK_PERM_RESIZE,
                     BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED)
    try:
        r = subprocess.run([qemu_io, "-f", "qcow2", "-c", "write 0 512", img],
                           capture_output=True, text=True)
        assert r.returncode == 1
        assert r.stderr == (
            f"qemu-io: can't open device {img}: Failed to get \"write\" lock\n"
            f"Is another process using the image [{img}]?\n"
        )
        r = subprocess.run([qemu_io, "-r", "-f", "qcow2", "-c", "read 0 512", img],
                           capture_output=True, text=True)
        assert 'Failed to get shared "write" lock' in r.stderr
        r = subprocess.run([qemu_io, "-U", "-r", "-f", "qcow2", "-c", "read 0 512", img],
                           capture_output=True, text=True)
        assert r.returncode == 0
    finally:
        await close_image(holder)
    # A real qemu-io holding the image read-write: blockd's open must fail likewise.
    proc = subprocess.Popen([qemu_io, "-f", "qcow2", img], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.read(len("qemu-io> "))  # the prompt: the image is open and locked
        with pytest.raises(ImageLockError) as ei:
            await open_image(img, "raw", read_only=False)
        assert ei.value.desc == 'Failed to get "write" lock'
        # A read-only qcow2 open refuses to share "write" (raw would share it).
        with pytest.raises(ImageLockError) as ei:
            await open_image(img, "qcow2")
        assert ei.value.desc == 'Failed to get shared "write" lock'
        drv = await open_image(img, "raw")
        await close_image(drv)
        drv = await open_image(img, "qcow2", force_share=True)
        await close_image(drv)
    finally:
        proc.communicate(b"quit\n", timeout=10)
