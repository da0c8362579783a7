"""The block driver contract shared by every driver and by the generic code.

Drivers (``file``, ``raw``, ``null-co``, ``qcow2``, ...) subclass :class:`BlockDriver`
and register themselves with :func:`register_driver`; generic code (tools, the graph
engine, block jobs) looks them up by QEMU driver name with :func:`driver_class` and
never imports a driver module by name.  All blocking host I/O goes through
:func:`run_io` so the event loop never blocks on a disk.
"""

from __future__ import annotations

import abc
import concurrent.futures
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from blockd.io.executor import io_pool
from blockd.qmp.errors import GenericError

T = TypeVar("T")
D = TypeVar("D", bound="type[BlockDriver]")


class BlockStatusFlag(enum.IntFlag):
    """Status bits of an extent, as QEMU's BDRV_BLOCK_* (subset)."""

    DATA = 1
    ZERO = 2
    # This layer decides the content (data or zero); the backing is not consulted.
    ALLOCATED = 4


@dataclass(frozen=True)
class BlockStatus:
    """Status of the first extent at the queried offset."""

    flags: BlockStatusFlag
    length: int
    # Host offset in the ``file`` child when known (used by ``map``).
    offset: int | None = None


@dataclass
class Limits:
    """Request limits of a node (QEMU's BlockLimits subset); 0 = no limit/preference."""

    request_alignment: int = 1
    max_transfer: int = 0
    opt_transfer: int = 0
    pdiscard_alignment: int = 0
    pwrite_zeroes_alignment: int = 0


@dataclass
class OpenFlags:
    """Generic open options (QEMU's BDRV_O_* flags and the common node options)."""

    read_only: bool = True
    cache_direct: bool = False
    cache_no_flush: bool = False
    # discard=unmap (True) vs discard=ignore (False)
    discard_unmap: bool = False
    force_share: bool = False
    locking: str = "auto"
    # Extra per-open knobs that are not part of the agreed contract but that some
    # drivers honour (e.g. ``aio`` for file); unknown keys are ignored.
    extra: dict[str, Any] = field(default_factory=dict)


class BlockDriver(abc.ABC):
    """One node of the block graph: a protocol, format or filter driver."""

    name: ClassVar[str]
    is_protocol: ClassVar[bool] = False
    is_filter: ClassVar[bool] = False
    supports_backing: ClassVar[bool] = False

    def __init__(self) -> None:
        # Child with role "file" (format drivers); set by the opener before open().
        self.file: BlockDriver | None = None
        # Backing child (qcow2); set by the opener, None = no backing.
        self.backing: BlockDriver | None = None
        self.flags = OpenFlags()

    @abc.abstractmethod
    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        """Open with driver-specific, schema-validated options (children excluded)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release host resources; the node is unusable afterwards."""

    @abc.abstractmethod
    async def read(self, offset: int, length: int) -> bytes:
        """Guest-visible content; zeros where nothing (not even a backing) provides data."""

    @abc.abstractmethod
    async def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        compressed: bool = False,
        fua: bool = False,
    ) -> None:
        """Write guest data at offset."""

    @abc.abstractmethod
    async def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        """Make the range read as zeros, deallocating when may_unmap allows it."""

    @abc.abstractmethod
    async def discard(self, offset: int, length: int) -> None:
        """Hint that the range is unused; content afterwards is unspecified by QEMU."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Make completed writes stable."""

    @abc.abstractmethod
    async def truncate(
        self, length: int, *, preallocation: str = "off", exact: bool = False
    ) -> None:
        """Resize the guest-visible size."""

    @abc.abstractmethod
    async def block_status(self, offset: int, length: int) -> BlockStatus:
        """Status of the first extent starting at offset (its length <= length)."""

    @abc.abstractmethod
    def get_length(self) -> int:
        """Guest-visible size in bytes."""

    def refresh_limits(self) -> Limits:
        """Request limits; by default inherited from the file child."""
        if self.file is not None:
            return self.file.refresh_limits()
        return Limits()

    def format_specific_info(self) -> dict[str, Any] | None:
        """ImageInfoSpecific ``data`` for query-block/info, None when the format has none."""
        return None


# --- registry -----------------------------------------------------------------

_REGISTRY: dict[str, type[BlockDriver]] = {}


def register_driver(cls: D) -> D:
    """Class decorator: make a driver findable by its QEMU name."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_drivers() -> None:
    # Import for the registration side effect; done lazily so base.py has no cycles.
    import importlib

    for mod in ("file", "raw", "null", "qcow2"):
        name = f"blockd.drivers.{mod}"
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            # A driver that does not exist (yet) is simply not registered; a broken
            # import inside an existing driver must not be hidden.
            if e.name != name:
                raise


def driver_class(name: str) -> type[BlockDriver]:
    """Look up a driver by QEMU name; QEMU's error text when unknown."""
    if name not in _REGISTRY:
        _load_builtin_drivers()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GenericError(f"Unknown driver '{name}'") from None


def registered_drivers() -> list[str]:
    """Names of all registered drivers (sorted)."""
    _load_builtin_drivers()
    return sorted(_REGISTRY)


# --- shared I/O thread pool ---------------------------------------------------

_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None


def io_executor() -> concurrent.futures.ThreadPoolExecutor:
    """A process-wide concurrent.futures pool for blocking work that wants one."""
    global _EXECUTOR
    if _EXECUTOR is None:
        # Like QEMU's thread pool (max 64 workers): I/O threads mostly sleep in the kernel.
        workers = min(64, 4 * (os.cpu_count() or 1) + 4)
        _EXECUTOR = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="blockd-io"
        )
    return _EXECUTOR


async def run_io(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking I/O in the shared thread pool, never on the event loop.

    Uses blockd.io's lean pool (one queue hand-off, direct future completion);
    :func:`io_executor` remains for code that needs a concurrent.futures executor.
    """
    return await io_pool().run(fn, *args)


# --- generic helpers ----------------------------------------------------------


async def is_allocated_above(
    top: BlockDriver, base: BlockDriver | None, offset: int, length: int
) -> tuple[bool, int]:
    """Whether [offset, offset+pnum) is allocated in top or any layer above base.

    ``base`` is exclusive (None = the whole chain).  Returns (allocated, pnum) where
    pnum is the length of the run sharing that answer, like QEMU's
    bdrv_is_allocated_above().  Past the end of a shorter layer the range counts as
    allocated in the layer that made the image longer only if it says so.
    """
    if length <= 0:
        return False, 0
    pnum = length
    layer: BlockDriver | None = top
    while layer is not None and layer is not base:
        size = layer.get_length()
        if offset >= size:
            # A short intermediate layer: the zeros synthesized past its end behave
            # as allocated in this layer (bdrv_co_common_block_status_above).
            return True, pnum
        st = await layer.block_status(offset, min(pnum, size - offset))
        if st.flags & BlockStatusFlag.ALLOCATED:
            return True, max(1, min(pnum, st.length))
        # Unallocated run here: narrow to it and look one layer further down.
        pnum = max(1, min(pnum, st.length))
        layer = layer.backing
    return False, pnum
