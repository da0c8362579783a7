"""Shared helpers for the qcow2 driver tests (no tests here)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from blockd.drivers.base import BlockDriver, OpenFlags
from blockd.drivers.file import FileDriver
from blockd.drivers.open import close_image, open_image
from blockd.drivers.qcow2 import Qcow2Driver, qcow2_create


async def create(path: Path, size: int, **opts: Any) -> None:
    """Format a new qcow2 image with blockd's qcow2_create."""
    path.write_bytes(b"")
    f = FileDriver()
    await f.open({"filename": str(path)}, OpenFlags(read_only=False))
    try:
        await qcow2_create(f, size, **opts)
    finally:
        await f.close()


async def open_rw(path: Path, *, options: dict[str, Any] | None = None) -> Qcow2Driver:
    drv = await open_image(str(path), "qcow2", read_only=False, options=options)
    assert isinstance(drv, Qcow2Driver)
    return drv


async def open_ro(path: Path, *, options: dict[str, Any] | None = None) -> Qcow2Driver:
    drv = await open_image(str(path), "qcow2", read_only=True, options=options)
    assert isinstance(drv, Qcow2Driver)
    return drv


async def close(drv: BlockDriver) -> None:
    await close_image(drv)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=120)


def qemu_check(qemu_img: str, path: Path) -> subprocess.CompletedProcess[str]:
    return run(qemu_img, "check", str(path), check=False)


def assert_clean(qemu_img: str, path: Path, *, leaks_ok: bool = False) -> None:
    """qemu-img check must report no corruption (and no leaks unless allowed)."""
    p = qemu_check(qemu_img, path)
    allowed = (0, 3) if leaks_ok else (0,)
    assert p.returncode in allowed, p.stdout + p.stderr
    assert "ERROR" not in p.stderr, p.stderr


def qio(qemu_io_bin: str, path: Path, *cmds: str, fmt: str = "qcow2") -> str:
    args = [qemu_io_bin, "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    args.append(str(path))
    p = run(*args, check=False)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "failed" not in out and "fail" not in out.lower(), out
    return out
