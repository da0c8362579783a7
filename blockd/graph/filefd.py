"""Switching a ``file`` node's descriptor at run time (QEMU's
raw_reconfigure_getfd): for reopen (read-only <-> read-write, cache.direct) and
for dynamic ``auto-read-only``, where the file stays read-only until a writer
attaches and goes back to read-only when the last writer leaves.

The new descriptor is opened first (failing with QEMU's ``Could not open``
text, nothing changed); :func:`install_fd` then moves the lock bytes to it and
closes the old one.
"""

from __future__ import annotations

import errno
import os
from dataclasses import replace

from blockd.drivers.file import FileDriver
from blockd.drivers.locking import BLK_PERM_WRITE, BLK_PERM_WRITE_UNCHANGED, ImageLock
from blockd.qmp.errors import GenericError


def wants_write(perm: int) -> bool:
    """Whether these permissions need a read-write descriptor."""
    return bool(perm & (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED))


def fd_mode(drv: FileDriver) -> tuple[bool, bool]:
    """(read_write, direct) of the current descriptor."""
    return (not drv.flags.read_only, drv.flags.cache_direct)


def open_fd(drv: FileDriver, read_write: bool, direct: bool) -> int:
    mode = os.O_CLOEXEC | (os.O_RDWR if read_write else os.O_RDONLY)
    if direct:
        mode |= os.O_DIRECT
    try:
        return os.open(drv.filename, mode)
    except OSError as e:
        if e.errno == errno.EINVAL and direct:
            raise GenericError(
                f"Could not open '{drv.filename}': filesystem does not support O_DIRECT"
            ) from None
        err = errno.EACCES if e.errno == errno.EROFS else (e.errno or errno.EIO)
        raise GenericError(f"Could not open '{drv.filename}': {os.strerror(err)}") from None


def install_fd(drv: FileDriver, fd: int, read_write: bool, direct: bool) -> None:
    """Make ``fd`` the driver's descriptor, with the same lock bytes held."""
    old_fd, old_lock = drv.fd, drv.lock
    drv.fd = fd
    if old_lock is not None:
        lock = ImageLock(fd, drv.filename)
        lock._apply(old_lock.locked_perm, old_lock.locked_unshared)
        drv.lock = lock
    drv.flags = replace(drv.flags, read_only=not read_write, cache_direct=direct)
    if direct:
        drv.request_alignment = drv._probe_alignment()
    else:
        drv.request_alignment = 1
    if old_fd >= 0:
        os.close(old_fd)
