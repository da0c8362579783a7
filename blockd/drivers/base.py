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


class ChildRole(enum.IntFlag):
    """What a child is to its parent (QEMU's BdrvChildRole bits)."""

    DATA = 1 << 0
    METADATA = 1 << 1
    FILTERED = 1 << 2
    COW = 1 << 3
    PRIMARY = 1 << 4

    # The usual combinations.
    IMAGE = DATA | METADATA  # BDRV_CHILD_IMAGE: the "file" of a format


@dataclass(frozen=True)
class ChildSpec:
    """One child option a driver accepts (``file``, ``backing``, ``image``, ...).

    ``slot`` says where the driver finds the opened child: ``"file"`` and
    ``"backing"`` are the attributes of the same name, ``"extra"`` is
    ``driver.extra_children[child_name]``.  ``multiple`` children (quorum's
    ``children``) are a list in the options and are named ``children.0``,
    ``children.1``, ... on the edges.
    """

    option: str
    slot: str = "extra"
    role: ChildRole = ChildRole.DATA | ChildRole.PRIMARY
    required: bool = True
    multiple: bool = False


# Permission bits again (locking.py holds the lock-byte side); ALL = 0x0f in 7.2.
_PERM_READ, _PERM_WRITE, _PERM_WRITE_UNCHANGED, _PERM_RESIZE = 0x1, 0x2, 0x4, 0x8
_PERM_ALL = 0xF


def default_child_perm(
    role: ChildRole, writable: bool, perm: int, shared: int
) -> tuple[int, int]:
    """QEMU 7.2's bdrv_default_perms(): what a parent takes/shares on a child.

    ``perm``/``shared`` are the parent's own cumulative permissions (what its
    parents take and share), ``writable`` whether the parent is read-write.
    """
    if role & ChildRole.FILTERED:
        # Filters pass everything through (bdrv_filter_default_perms).
        return perm & _PERM_ALL, shared & _PERM_ALL
    if role & ChildRole.COW:
        # Backing files: read only, tolerate writers only if our parents do.
        nperm = perm & _PERM_READ
        nshared = (_PERM_WRITE | _PERM_RESIZE) if shared & _PERM_WRITE else 0
        return nperm, nshared | _PERM_READ | _PERM_WRITE_UNCHANGED
    nperm, nshared = perm & _PERM_ALL, shared & _PERM_ALL
    if role & ChildRole.METADATA:
        # The format touches metadata even when the guest does not write.
        if writable:
            nperm |= _PERM_WRITE | _PERM_RESIZE
        nperm |= _PERM_READ
        nshared &= ~(_PERM_WRITE | _PERM_RESIZE)
    if role & ChildRole.DATA:
        nshared &= ~_PERM_RESIZE
        if nperm & _PERM_WRITE_UNCHANGED:
            nperm |= _PERM_WRITE
        if nperm & _PERM_WRITE:
            nperm |= _PERM_RESIZE
    return nperm, nshared


class BlockDriver(abc.ABC):
    """One node of the block graph: a protocol, format or filter driver."""

    name: ClassVar[str]
    is_protocol: ClassVar[bool] = False
    is_filter: ClassVar[bool] = False
    supports_backing: ClassVar[bool] = False
    # Children the driver takes, in the order they are opened.  Subclasses that
    # do not set it get the format default: ``file`` (+ ``backing``); protocols none.
    child_specs: ClassVar[tuple[ChildSpec, ...]] = ()
    # Drivers without reopen support make blockdev-reopen fail with QEMU's text.
    supports_reopen: ClassVar[bool] = True
    # True when child_specs were filled in by the default rule above.
    default_child_specs: ClassVar[bool] = False
    # Driver options that may be omitted on reopen (QEMU's mutable_opts); None =
    # every option may return to its default.
    mutable_opts: ClassVar[frozenset[str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "child_specs" not in cls.__dict__ and not cls.child_specs:
            # Remember that these are defaults, not the driver's own declaration.
            cls.default_child_specs = True
            if cls.is_protocol:
                cls.child_specs = ()
            elif cls.is_filter:
                cls.child_specs = (
                    ChildSpec("file", "file", ChildRole.FILTERED | ChildRole.PRIMARY),
                )
            else:
                specs = [ChildSpec("file", "file", ChildRole.IMAGE | ChildRole.PRIMARY)]
                if cls.supports_backing:
                    specs.append(ChildSpec("backing", "backing", ChildRole.COW, required=False))
                cls.child_specs = tuple(specs)

    def __init__(self) -> None:
        # Child with role "file" (format drivers); set by the opener before open().
        self.file: BlockDriver | None = None
        # Backing child (qcow2); set by the opener, None = no backing.
        self.backing: BlockDriver | None = None
        # Children in other slots ("image", "test", "raw", "children.0", ...).
        self.extra_children: dict[str, BlockDriver] = {}
        self.flags = OpenFlags()
        # Driver options of the last open/reopen (set by the graph's opener).
        self._open_options: dict[str, Any] = {}
        self._reopen_old: tuple[dict[str, Any], OpenFlags] = ({}, self.flags)
        self._reopen_new: tuple[dict[str, Any], OpenFlags] = ({}, self.flags)
        self._reopen_applied = False

    # --- graph hooks ------------------------------------------------------------

    def child_perm(
        self,
        child_name: str,
        role: ChildRole,
        read_only: bool,
        perm: int = 0,
        shared: int = _PERM_ALL,
    ) -> tuple[int, int]:
        """(perm, shared) this node takes on its child ``child_name``.

        ``perm``/``shared`` are what this node's own parents take and share;
        the default is QEMU's bdrv_default_perms().
        """
        return default_child_perm(role, not read_only, perm, shared)

    async def reopen_prepare(self, options: dict[str, Any], flags: OpenFlags) -> None:
        """Check and stage new driver options/flags; raise to refuse (nothing changes).

        The default re-runs the driver's ``reopen(options, flags)`` when it has one
        (keeping the current read-only state until commit, so nothing is written
        through a read-only child), else validates by opening a scratch instance.
        """
        self._reopen_old = (self._open_options, self.flags)
        self._reopen_new = (options, flags)
        reopen = getattr(self, "reopen", None)
        if reopen is not None:
            going_ro = flags.read_only and not self.flags.read_only
            if going_ro:
                # Flush and mark clean now, while the file below is still writable.
                await reopen(options, flags)
            else:
                staged = OpenFlags(**{**flags.__dict__, "read_only": self.flags.read_only})
                await reopen(options, staged)
            self._reopen_applied = True
            return
        self._reopen_applied = False
        scratch = type(self)()
        scratch.file, scratch.backing = self.file, self.backing
        scratch.extra_children = dict(self.extra_children)
        await scratch.open(options, flags)
        await scratch.close()

    async def reopen_commit(self) -> None:
        """Make the staged state current (children have already been committed)."""
        options, flags = self._reopen_new
        reopen = getattr(self, "reopen", None)
        if reopen is not None:
            if flags != self.flags:
                await reopen(options, flags)
        else:
            await self.open(options, flags)
        self.flags = flags
        self._open_options = options

    async def reopen_abort(self) -> None:
        """Undo what reopen_prepare() applied."""
        if self._reopen_applied:
            options, flags = self._reopen_old
            reopen = getattr(self, "reopen", None)
            if reopen is not None:
                await reopen(options, flags)
            self.flags = flags

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

    async def write_many(
        self, writes: list[tuple[int, bytes | bytearray | memoryview]]
    ) -> None:
        """Write ``(offset, data)`` pieces in order, each once the previous completed.

        For dependent writes (a format's data, then the table entry naming it):
        protocol drivers override it to do the whole chain in one host I/O job
        instead of one thread-pool round trip per piece.  A failure stops the
        chain: earlier pieces are written, later ones are not attempted.
        """
        for offset, data in writes:
            await self.write(offset, data)


# --- registry -----------------------------------------------------------------

_REGISTRY: dict[str, type[BlockDriver]] = {}


def register_driver(cls: D) -> D:
    """Class decorator: make a driver findable by its QEMU name."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_drivers() -> None:
    # Import for the registration side effect; done lazily so base.py has no cycles.
    import importlib

    for mod in ("file", "raw", "null", "qcow2", "throttle", "compress", "copy_on_read",
                "blkdebug", "blkverify", "quorum"):
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


async def bdrv_debug_event(node: BlockDriver | None, event: str) -> None:
    """QEMU's BLKDBG_EVENT: format drivers call it on their ``file`` child at
    the points QEMU does (``read_aio``, ``write_aio``, ...).  Only a driver
    with a ``debug_event`` method (blkdebug) acts on it; for the rest it costs
    one attribute lookup, and the generic code names no driver."""
    hook = getattr(node, "debug_event", None)
    if hook is not None:
        await hook(event)



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
