"""The ``file`` protocol driver: a regular host file (QEMU's block/file-posix.c).

Blocking syscalls run in the shared I/O pool (``run_io``); ``os.pread``/``os.pwrite``
release the GIL so several requests proceed in parallel.  ``aio=native`` and
``aio=io_uring`` are accepted with QEMU's rules but served by the thread pool,
which is what ``aio=threads`` does in QEMU too.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import mmap
import os
import stat
from collections.abc import Sequence
from typing import Any, ClassVar

from blockd.drivers.base import (
    BlockDriver,
    BlockStatus,
    BlockStatusFlag,
    Limits,
    OpenFlags,
    register_driver,
    run_io,
)
from blockd.drivers.locking import ImageLock, ofd_locks_supported
from blockd.io.executor import inline_io, io_pool
from blockd.qmp.errors import GenericError

# fallocate(2) modes (linux/falloc.h)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_ALIGN_CANDIDATES = (1, 512, 1024, 2048, 4096)
# Largest bounce buffer for O_DIRECT; larger requests are split.
_BOUNCE_MAX = 8 << 20

_libc: ctypes.CDLL | None = None


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) through libc; Python only exposes posix_fallocate (mode 0)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        _libc.fallocate.restype = ctypes.c_int
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _unsupported(e: OSError) -> bool:
    # File systems say "not supported" in several ways (ovirt-imageio treats the
    # same set as "capability missing, fall back").
    return e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL)


class FdRange:
    """Data to take from another open file instead of a buffer: ``length``
    bytes at ``offset`` of ``fd`` (zeros past its end).  A write chain piece of
    this kind is copied by the kernel (``copy_file_range``, QEMU's copy_range
    offload) without passing through Python buffers."""

    __slots__ = ("fd", "length", "offset")

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd = fd
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    def sub(self, skip: int, length: int) -> FdRange:
        """The part ``length`` bytes long, ``skip`` bytes in."""
        return FdRange(self.fd, self.offset + skip, length)

    def read_sync(self) -> bytes:
        """The data itself (for paths that need it in memory), in a pool thread."""
        out = bytearray(self.length)
        view = memoryview(out)
        got = 0
        while got < self.length:
            n = os.preadv(self.fd, [view[got:]], self.offset + got)
            if n <= 0:
                break  # past the end: zeros (already there)
            got += n
        return bytes(out)


WritePiece = bytes | bytearray | memoryview | FdRange


@register_driver
class FileDriver(BlockDriver):
    """Protocol driver for a regular file or block device node."""

    name: ClassVar[str] = "file"
    is_protocol: ClassVar[bool] = True
    # "file:<path>" names this driver (blockd.drivers.protocols).
    protocol_name: ClassVar[str] = "file"
    # file-posix keeps discard counters (raw_get_specific_stats), shown by
    # query-blockstats as BlockStatsSpecificFile (blockd.graph.accounting).
    discard_stats: ClassVar[bool] = True

    @staticmethod
    def parse_filename(filename: str) -> dict[str, Any]:
        """raw_parse_filename(): an optional "file:" prefix is dropped."""
        return {"filename": filename.removeprefix("file:")}

    def __init__(self) -> None:
        super().__init__()
        self.fd = -1
        self.filename = ""
        self.aio = "threads"
        self.request_alignment = 1
        self.lock: ImageLock | None = None
        self.perm = 0
        self.shared_perm = 0
        self.is_block_device = False
        # Capabilities learned at run time; cleared on the first "unsupported".
        self._can_zero_range = True
        self._can_punch_hole = True
        self._can_fallocate = True
        self._can_nowait = hasattr(os, "RWF_NOWAIT")
        # FUA as pwritev2(RWF_DSYNC): only the written range is made durable,
        # instead of an fdatasync of everything dirty in the file.
        self._can_dsync = hasattr(os, "RWF_DSYNC")
        self._can_copy_range = hasattr(os, "copy_file_range")
        # Like bs->write_gen/flushed_gen: a flush with nothing written since the
        # last one is skipped.
        self._write_gen = 0
        self._flushed_gen = 0
        # Serializes read-modify-write cycles of unaligned O_DIRECT writes.
        self._rmw_lock = asyncio.Lock()
        # Data reads and writes on the calling thread (the blockd-io CLI only, see
        # blockd.io.executor.set_inline_io): they never suspend, so nothing
        # interleaves with them and no lock is needed around a read-modify-write.
        # Read by format drivers on their hot paths: a plain attribute.
        self.inline = inline_io()

    # --- open/close ---------------------------------------------------------

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        self.flags = flags
        filename = options.get("filename")
        if not isinstance(filename, str):
            raise GenericError("Parameter 'filename' is missing")
        self.filename = filename
        aio = options.get("aio", flags.extra.get("aio", "threads"))
        if aio not in ("threads", "native", "io_uring"):
            raise GenericError(f"Invalid parameter '{aio}'")
        if aio == "native" and not flags.cache_direct:
            raise GenericError(
                "aio=native was specified, but it requires cache.direct=on, "
                "which was not specified."
            )
        self.aio = aio
        locking = options.get("locking", flags.locking)
        if locking not in ("on", "off", "auto"):
            raise GenericError(f"Invalid parameter '{locking}'")

        oflags = os.O_CLOEXEC | (os.O_RDONLY if flags.read_only else os.O_RDWR)
        if flags.cache_direct:
            oflags |= os.O_DIRECT
        try:
            self.fd = await run_io(os.open, filename, oflags)
        except OSError as e:
            if e.errno == errno.EINVAL and flags.cache_direct:
                raise GenericError(
                    f"Could not open '{filename}': filesystem does not support O_DIRECT"
                ) from None
            # QEMU maps EROFS to EACCES when opening read-write.
            err = errno.EACCES if e.errno == errno.EROFS else (e.errno or errno.EIO)
            raise GenericError(f"Could not open '{filename}': {os.strerror(err)}") from None
        try:
            st = os.fstat(self.fd)
            self.is_block_device = stat.S_ISBLK(st.st_mode)
            if not (stat.S_ISREG(st.st_mode) or self.is_block_device
                    or stat.S_ISCHR(st.st_mode)):
                raise GenericError(f"'file' driver requires '{filename}' to be a regular file")
            if flags.cache_direct:
                self.request_alignment = await run_io(self._probe_alignment)
            if locking != "off" and (locking == "on" or ofd_locks_supported(self.fd)):
                self.lock = ImageLock(self.fd, filename)
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise

    def _probe_alignment(self) -> int:
        """Smallest read size/offset O_DIRECT accepts (raw_probe_alignment())."""
        # Some file systems accept any O_DIRECT read size but not any write: when
        # even 1 byte "works", QEMU falls back to the safe max(4 KiB, page size).
        safe = max(4096, mmap.PAGESIZE)
        buf = mmap.mmap(-1, max(_ALIGN_CANDIDATES))
        try:
            for align in _ALIGN_CANDIDATES:
                try:
                    os.preadv(self.fd, [memoryview(buf)[:align]], 0)
                except OSError as e:
                    if e.errno == errno.EINVAL:
                        continue
                return align if align != 1 else safe
        finally:
            buf.close()
        raise GenericError("Could not find working O_DIRECT alignment")

    async def close(self) -> None:
        if self.fd >= 0:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
            fd, self.fd = self.fd, -1
            await run_io(os.close, fd)

    # --- permissions / locking ---------------------------------------------

    def set_perms(self, perm: int, shared: int) -> None:
        """Record the permissions the graph takes on this file and lock accordingly.

        Raises :class:`blockd.drivers.locking.ImageLockError` (``Failed to get
        "write" lock`` and the hint) when another process holds conflicting locks.
        """
        if self.lock is not None:
            self.lock.set_perms(perm, shared)
        self.perm, self.shared_perm = perm, shared

    # --- I/O ----------------------------------------------------------------

    def _size(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)

    def get_length(self) -> int:
        # QEMU counts whole sectors (bdrv_getlength = total_sectors * 512): a file
        # whose size is not a multiple of 512 shows a zero-filled partial sector.
        return -(-self._size() // 512) * 512

    def refresh_limits(self) -> Limits:
        return Limits(request_alignment=self.request_alignment)

    async def read(self, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        if self.inline:
            return self.read_now(offset, length)
        if self.flags.cache_direct:
            return await run_io(self._read_direct, offset, length)
        if self._can_nowait:
            data = self._read_nowait(offset, length)
            if data is not None:
                return data
        return await run_io(self._read_buffered, offset, length)

    def _read_nowait(self, offset: int, length: int) -> bytes | None:
        """Serve a read from the page cache without blocking, or return None.

        preadv2(RWF_NOWAIT) fails with EAGAIN instead of waiting for the disk, so
        trying it on the event loop never blocks it, and cached reads skip the
        round trip through the thread pool.
        """
        buf = bytearray(length)
        try:
            n = os.preadv(self.fd, [buf], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as e:
            if _unsupported(e):
                self._can_nowait = False
                return None
            raise
        if n != length:
            # Partly cached or at EOF: let the pool do the full, padded read.
            return None
        return bytes(buf)

    def _read_buffered(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) == length:
            return data
        # Short read at EOF: the rest reads as zeros, as file-posix pads.
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(self.fd, length - got, offset + got)
            if not more:
                parts.append(bytes(length - got))
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def _aligned_span(self, offset: int, length: int) -> tuple[int, int]:
        a = self.request_alignment
        start = offset - offset % a
        end = -(-(offset + length) // a) * a
        return start, end

    def _read_direct(self, offset: int, length: int) -> bytes:
        start, end = self._aligned_span(offset, length)
        out = bytearray()
        pos = start
        while pos < end:
            chunk = min(end - pos, _BOUNCE_MAX)
            buf = mmap.mmap(-1, chunk)
            try:
                n = os.preadv(self.fd, [buf], pos)
                out += buf[:n]
                if n < chunk:
                    out += bytes(end - pos - n)
                    break
            finally:
                buf.close()
            pos += chunk
        skip = offset - start
        return bytes(out[skip : skip + length])

    def _pwrite_all(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        n = os.pwrite(self.fd, data, offset)
        if n == memoryview(data).nbytes:
            return  # the usual case: all of it at once
        view = memoryview(data).cast("B")[n:]
        offset += n
        while len(view):
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def _pwrite_all_sync(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        self._pwrite_all(data, offset)
        os.fdatasync(self.fd)

    def _pwrite_dsync(self, data: bytes | bytearray | memoryview, offset: int) -> bool:
        """Write data durably by itself (RWF_DSYNC, the per-write O_DSYNC); True
        if done, False (nothing written) when the kernel or file system does
        not support it, which is remembered."""
        view = memoryview(data).cast("B")
        while True:
            try:
                n = os.pwritev(self.fd, [view], offset, os.RWF_DSYNC)
            except OSError as e:
                if _unsupported(e) and len(view) == memoryview(data).nbytes:
                    self._can_dsync = False
                    return False
                raise
            if n == len(view):
                return True
            view = view[n:]
            offset += n

    @property
    def dsync(self) -> bool:
        """Whether a FUA write makes only its own range durable (RWF_DSYNC) rather
        than flushing the whole file: format drivers then prefer FUA writes of
        their metadata to barriers, which would flush all the data written."""
        return self._can_dsync and not self.flags.cache_direct and not self.flags.cache_no_flush

    def _write_direct_aligned(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            chunk = min(len(view) - pos, _BOUNCE_MAX)
            buf = mmap.mmap(-1, chunk)
            try:
                buf[:] = view[pos : pos + chunk]
                done = 0
                while done < chunk:
                    done += os.pwritev(self.fd, [memoryview(buf)[done:]], offset + pos + done)
            finally:
                buf.close()
            pos += chunk

    async def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        compressed: bool = False,
        fua: bool = False,
    ) -> None:
        if compressed:
            # file-posix has no compressed writes; the generic layer reports ENOTSUP.
            raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))
        self._write_gen += 1
        if self.inline:
            if fua and self.dsync and self._pwrite_dsync(data, offset):
                return
            if self.flags.cache_direct:
                self._write_direct_chain([(offset, data)])
            else:
                self._pwrite_all(data, offset)
            if fua:
                await self.flush()
            return
        if not self.flags.cache_direct:
            if fua and self.dsync and await run_io(self._pwrite_dsync, data, offset):
                # Durable by itself; nothing else written is flushed.
                return
            if fua and not self.flags.cache_no_flush:
                # One pool round trip for the write and its flush.
                gen = self._write_gen
                await run_io(self._pwrite_all_sync, data, offset)
                # Everything written before this request is on disk too.
                self._flushed_gen = max(self._flushed_gen, gen)
                return
            await run_io(self._pwrite_all, data, offset)
        else:
            a = self.request_alignment
            if offset % a == 0 and len(data) % a == 0:
                await run_io(self._write_direct_aligned, data, offset)
            else:
                # Read-modify-write of the covering aligned span (QEMU does this in
                # the generic layer with serialising requests).
                async with self._rmw_lock:
                    start, end = self._aligned_span(offset, len(data))
                    cur = bytearray(await run_io(self._read_direct, start, end - start))
                    cur[offset - start : offset - start + len(data)] = data
                    await run_io(self._write_direct_aligned, cur, start)
        if fua:
            await self.flush()

    def _pwrite_chain(self, writes: Sequence[tuple[int, WritePiece]]) -> None:
        for offset, data in writes:
            if isinstance(data, FdRange):
                self._copy_in(data, offset)
            else:
                self._pwrite_all(data, offset)

    def _copy_in(self, src: FdRange, offset: int) -> None:
        """Copy ``src`` to ``offset`` in the kernel; where copy_file_range
        cannot (another file system, no support) through a buffer instead.
        Zeros where the source file ends early."""
        done = 0
        while done < src.length and self._can_copy_range:
            try:
                n = os.copy_file_range(src.fd, self.fd, src.length - done,
                                       src.offset + done, offset + done)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EBADF) and not _unsupported(e):
                    raise
                if e.errno != errno.EXDEV:
                    # EXDEV depends on the pair of files; the rest on this one.
                    self._can_copy_range = False
                break
            if n <= 0:
                # The source ends here: the rest reads as zeros.
                self._pwrite_all(bytes(src.length - done), offset + done)
                return
            done += n
        step = 4 << 20
        while done < src.length:
            n = min(step, src.length - done)
            self._pwrite_all(src.sub(done, n).read_sync(), offset + done)
            done += n

    async def copy_from(self, offset: int, src: FdRange) -> None:
        """Write ``src`` (another file's data) at ``offset``, copied by the
        kernel where it can be; buffered files only (O_DIRECT copies through a
        bounce buffer as a write does)."""
        self._write_gen += 1
        if not self.flags.cache_direct:
            await run_io(self._copy_in, src, offset)
            return
        await self.write(offset, await run_io(src.read_sync))

    def _write_direct_chain(self, writes: Sequence[tuple[int, WritePiece]]) -> None:
        a = self.request_alignment
        for offset, piece in writes:
            data = piece.read_sync() if isinstance(piece, FdRange) else piece
            if offset % a == 0 and len(data) % a == 0:
                self._write_direct_aligned(data, offset)
                continue
            # Read-modify-write of the covering aligned span (the caller holds
            # the RMW lock).
            start, end = self._aligned_span(offset, len(data))
            cur = bytearray(self._read_direct(start, end - start))
            cur[offset - start : offset - start + len(data)] = data
            self._write_direct_aligned(cur, start)

    async def write_many(self, writes: Sequence[tuple[int, WritePiece]]) -> None:
        """The ordered chain in one pool job: pwrite() returns only once the data
        is in the page cache, so each piece reaches the file before the next is
        issued, which is the order a killed process leaves behind.

        Once started the chain runs to its end: a cancellation is raised only
        after it is over, so callers never settle metadata while it still runs.
        """
        if not writes:
            return
        if self.inline:
            self.write_chain_now(writes)
            return
        self._write_gen += 1
        if not self.flags.cache_direct:
            await io_pool().run_to_end(self._pwrite_chain, writes)
            return
        a = self.request_alignment
        if all(off % a == 0 and len(data) % a == 0 for off, data in writes):
            await io_pool().run_to_end(self._write_direct_chain, writes)
            return
        async with self._rmw_lock:
            await io_pool().run_to_end(self._write_direct_chain, writes)

    def write_chain_now(self, writes: Sequence[tuple[int, WritePiece]]) -> None:
        """write_many() done synchronously, for callers that checked ``inline``:
        format drivers finish a simple request without any await."""
        self._write_gen += 1
        if self.flags.cache_direct:
            self._write_direct_chain(writes)
        else:
            self._pwrite_chain(writes)

    def read_now(self, offset: int, length: int) -> bytes:
        """read() done synchronously, for callers that checked ``inline``."""
        if self.flags.cache_direct:
            return self._read_direct(offset, length)
        return self._read_buffered(offset, length)

    def _write_zeroes_sync(self, offset: int, length: int, may_unmap: bool) -> None:
        if may_unmap and self._can_punch_hole and offset + length <= self._size():
            try:
                _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
                return
            except OSError as e:
                if not _unsupported(e):
                    raise
                self._can_punch_hole = False
        if self._can_zero_range:
            try:
                _fallocate(self.fd, FALLOC_FL_ZERO_RANGE, offset, length)
                return
            except OSError as e:
                if not _unsupported(e):
                    raise
                # e.g. tmpfs/NFS: remember and use the next best way.
                self._can_zero_range = False
        size = self._size()
        if self._can_punch_hole and self._can_fallocate and offset < size:
            # Punching then re-allocating keeps the range allocated but zeroed.
            try:
                _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
                _fallocate(self.fd, 0, offset, length)
                return
            except OSError as e:
                if not _unsupported(e):
                    raise
                self._can_punch_hole = False
        if offset >= size and self._can_fallocate:
            # Beyond EOF a plain allocation already reads as zeros.
            try:
                os.posix_fallocate(self.fd, offset, length)
                return
            except OSError as e:
                if not _unsupported(e):
                    raise
                self._can_fallocate = False
        # Last resort: write zero buffers.
        step = 1 << 20
        zero = bytes(min(step, length))
        pos = offset
        end = offset + length
        while pos < end:
            n = min(step, end - pos)
            if self.flags.cache_direct:
                self._write_direct_aligned(zero[:n], pos)
            else:
                self._pwrite_all(zero[:n], pos)
            pos += n

    async def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        if length <= 0:
            return
        self._write_gen += 1
        a = self.request_alignment
        if self.flags.cache_direct and (offset % a or length % a):
            await self.write(offset, bytes(length))
            return
        await run_io(
            self._write_zeroes_sync, offset, length, may_unmap and self.flags.discard_unmap
        )

    def _discard_sync(self, offset: int, length: int) -> None:
        if not self._can_punch_hole:
            return
        try:
            _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as e:
            # Discard is only a hint: a file system without hole punching ignores it.
            if not _unsupported(e):
                raise
            self._can_punch_hole = False

    async def discard(self, offset: int, length: int) -> None:
        if length <= 0 or not self.flags.discard_unmap:
            return
        self._write_gen += 1
        await run_io(self._discard_sync, offset, length)

    async def flush(self) -> None:
        if self.flags.cache_no_flush or self.fd < 0:
            return
        gen = self._write_gen
        if gen == self._flushed_gen:
            return
        await run_io(os.fdatasync, self.fd)
        self._flushed_gen = max(self._flushed_gen, gen)

    def _truncate_sync(self, length: int, preallocation: str) -> None:
        cur = self._size()
        if preallocation != "off" and length < cur:
            raise GenericError("Cannot use preallocation for shrinking files")
        if preallocation == "off" or length <= cur:
            os.ftruncate(self.fd, length)
        elif preallocation == "falloc":
            os.posix_fallocate(self.fd, cur, length - cur)
        elif preallocation == "full":
            os.ftruncate(self.fd, cur)
            zero = bytes(1 << 20)
            pos = cur
            while pos < length:
                n = min(len(zero), length - pos)
                self._pwrite_all(zero[:n], pos)
                pos += n
        else:
            raise GenericError(f"Unsupported preallocation mode '{preallocation}'")

    async def truncate(
        self, length: int, *, preallocation: str = "off", exact: bool = False
    ) -> None:
        if self.is_block_device:
            size = self._size()
            if length > size or (exact and length != size):
                raise GenericError("Cannot grow device files")
            return
        if preallocation not in ("off", "falloc", "full"):
            raise GenericError(f"Unsupported preallocation mode '{preallocation}'")
        self._write_gen += 1
        try:
            await run_io(self._truncate_sync, length, preallocation)
        except OSError as e:
            raise GenericError(f"Failed to resize file: {os.strerror(e.errno or 5)}") from None

    def _block_status_sync(self, offset: int, length: int) -> BlockStatus:
        size = self._size()
        if offset >= size:
            return BlockStatus(BlockStatusFlag.ZERO | BlockStatusFlag.ALLOCATED, length, offset)
        length = min(length, size - offset)
        try:
            data = os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                # No data after offset: a hole up to EOF.
                return BlockStatus(
                    BlockStatusFlag.ZERO | BlockStatusFlag.ALLOCATED, length, offset
                )
            # SEEK_DATA unsupported: everything is data.
            return BlockStatus(BlockStatusFlag.DATA | BlockStatusFlag.ALLOCATED, length, offset)
        if data > offset:
            return BlockStatus(
                BlockStatusFlag.ZERO | BlockStatusFlag.ALLOCATED,
                min(length, data - offset),
                offset,
            )
        try:
            hole = os.lseek(self.fd, offset, os.SEEK_HOLE)
        except OSError:
            hole = offset + length
        return BlockStatus(
            BlockStatusFlag.DATA | BlockStatusFlag.ALLOCATED,
            max(1, min(length, hole - offset)),
            offset,
        )

    async def block_status(self, offset: int, length: int) -> BlockStatus:
        st = await run_io(self._block_status_sync, offset, length)
        a = self.request_alignment
        if a > 1 and st.length % a and offset + st.length < self._size():
            # Keep answers aligned to what the host can address.
            aligned = max(a, st.length - st.length % a)
            st = BlockStatus(st.flags, min(aligned, length), st.offset)
        return st

    def drop_cache(self) -> None:
        """Drop the page cache of the file (``drop-cache`` on reopen)."""
        if self.fd >= 0 and not self.flags.cache_direct:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
