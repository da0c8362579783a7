"""QEMU-compatible image locking: byte-range OFD locks on the image file.

QEMU (block/file-posix.c) advertises which permissions a process holds on an image
by taking shared (F_RDLCK) open-file-description locks on single bytes: byte
``100 + i`` while it holds permission bit ``i``, byte ``200 + i`` while it does NOT
share permission bit ``i`` with others.  Before taking a permission it tests byte
``200 + i`` (someone refuses to share it), and before refusing to share it tests
byte ``100 + i`` (someone holds it).  Using the very same bytes and lock type makes
blockd and real QEMU processes refuse each other exactly as two QEMUs do.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from blockd.qmp.errors import GenericError

# Permission bits (include/block/block-common.h, QEMU 7.2: BLK_PERM_ALL = 0x0f).
BLK_PERM_CONSISTENT_READ = 0x01
BLK_PERM_WRITE = 0x02
BLK_PERM_WRITE_UNCHANGED = 0x04
BLK_PERM_RESIZE = 0x08
BLK_PERM_ALL = 0x0F
_PERM_NAMES = ("consistent read", "write", "write unchanged", "resize")
_PERM_COUNT = 4

LOCK_PERM_BASE = 100
LOCK_SHARED_BASE = 200

# Linux OFD lock commands (not exported by Python's fcntl module on all versions).
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)

# struct flock on Linux x86_64/aarch64: short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (+ padding).
_FLOCK = struct.Struct("hhqqi4x")


def perm_names(perm: int) -> str:
    """Comma-separated names of the bits in perm, as bdrv_perm_names()."""
    return ", ".join(name for i, name in enumerate(_PERM_NAMES) if perm & (1 << i))


def _lock(fd: int, byte: int, lock_type: int) -> None:
    fcntl.fcntl(fd, F_OFD_SETLK, _FLOCK.pack(lock_type, os.SEEK_SET, byte, 1, 0))


def _conflicts(fd: int, byte: int) -> bool:
    """Would an exclusive lock on byte conflict with another description's lock?"""
    res = fcntl.fcntl(fd, F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
    return bool(_FLOCK.unpack(res)[0] != fcntl.F_UNLCK)


def ofd_locks_supported(fd: int) -> bool:
    """Probe OFD lock support the way QEMU does (a GETLK on byte 0)."""
    try:
        _conflicts(fd, 0)
    except OSError:
        return False
    return True


class ImageLockError(GenericError):
    """A lock conflict.  ``desc`` is the QMP text; ``hint`` is what QEMU's CLI
    tools print on the following line(s) (error_append_hint), never sent over QMP."""

    def __init__(self, desc: str, hint: str) -> None:
        super().__init__(desc)
        self.hint = hint


class ImageLock:
    """The lock bytes one open file holds, kept in sync with its permissions."""

    def __init__(self, fd: int, filename: str) -> None:
        self.fd = fd
        self.filename = filename
        # Bits whose "perm" byte (100+i) / "not shared" byte (200+i) we hold.
        self.locked_perm = 0
        self.locked_unshared = 0

    def _apply(self, perm: int, unshared: int) -> None:
        """Take/release lock bytes so exactly perm / unshared are held."""
        for i in range(_PERM_COUNT):
            bit = 1 << i
            for held_mask, want, base in (
                (self.locked_perm, perm, LOCK_PERM_BASE),
                (self.locked_unshared, unshared, LOCK_SHARED_BASE),
            ):
                try:
                    if want & bit and not held_mask & bit:
                        _lock(self.fd, base + i, fcntl.F_RDLCK)
                    elif not want & bit and held_mask & bit:
                        _lock(self.fd, base + i, fcntl.F_UNLCK)
                except OSError as e:
                    raise _lock_error(e.errno, f"Failed to lock byte {base + i}") from None
        self.locked_perm = perm
        self.locked_unshared = unshared

    def _check(self, perm: int, shared: int) -> None:
        for i in range(_PERM_COUNT):
            bit = 1 << i
            if perm & bit:
                err = _test(self.fd, LOCK_SHARED_BASE + i)
                if err:
                    raise _lock_error(err, f'Failed to get "{_PERM_NAMES[i]}" lock')
        for i in range(_PERM_COUNT):
            bit = 1 << i
            if not shared & bit:
                err = _test(self.fd, LOCK_PERM_BASE + i)
                if err:
                    raise _lock_error(err, f'Failed to get shared "{_PERM_NAMES[i]}" lock')

    def set_perms(self, perm: int, shared: int) -> None:
        """Switch to (perm, shared), failing with QEMU's text if another holder objects.

        Like raw_handle_perm_lock(): first add the new bytes on top of the old ones,
        then test for conflicts; on conflict roll back to the old set and report with
        the "Is another process using the image" hint.
        """
        old_perm, old_unshared = self.locked_perm, self.locked_unshared
        unshared = BLK_PERM_ALL & ~shared
        try:
            self._apply(old_perm | perm, old_unshared | unshared)
            self._check(perm, shared)
        except GenericError as e:
            try:
                self._apply(old_perm, old_unshared)
            except GenericError:
                pass
            raise ImageLockError(
                e.desc, f"Is another process using the image [{self.filename}]?\n"
            ) from None
        self._apply(perm, unshared)

    def release(self) -> None:
        """Drop every lock byte (closing the fd drops them too)."""
        try:
            self._apply(0, 0)
        except GenericError:
            pass


def _test(fd: int, byte: int) -> int:
    """0 when free, else an errno (EAGAIN = held by someone else)."""
    try:
        return errno.EAGAIN if _conflicts(fd, byte) else 0
    except OSError as e:
        return e.errno or errno.EIO


def _lock_error(err: int | None, msg: str) -> GenericError:
    # QEMU appends strerror only for errors other than a plain conflict.
    if err in (errno.EAGAIN, errno.EACCES, None):
        return GenericError(msg)
    return GenericError(f"{msg}: {os.strerror(err)}")
