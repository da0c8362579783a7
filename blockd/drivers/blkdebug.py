"""The ``blkdebug`` driver (QEMU's block/blkdebug.c): error injection for tests.

Rules come from a QEMU config file (``config``: ``[inject-error]`` and
``[set-state]`` sections) and from the ``inject-error``/``set-state`` options.
A rule belongs to a debug *event* (``read_aio``, ``write_aio``, ``l2_load``,
``pwritev``, ...; see :data:`BLKDBG_EVENTS`).  When an event fires on the node
and the node is in the rule's state, an ``inject-error`` rule becomes active;
every later request of a matching I/O type (and overlapping ``sector`` when
given) then fails with ``errno`` as an OSError, so qemu-io prints e.g.
``read failed: Input/output error``.  ``once`` rules go away after one hit.

Who fires events: format drivers await :func:`debug_event` on their child
(QEMU's BLKDBG_EVENT(bs->file, ...)); blkdebug itself fires ``none`` at open and the
generic ``pwritev``/``pwritev_zero``/``pwritev_done`` (and ``pwritev_rmw_*``
for unaligned writes) around writes it receives, as QEMU's bdrv_aligned_pwritev
does.  ``align``, ``max-transfer`` and the write-zero/discard limits shape
requests as QEMU's generic layer would (requests are split at max-transfer).

Breakpoints (qemu-io ``break``/``remove_break``/``resume``/``wait_break``, used
by iotests' pause_drive): :meth:`BlkdebugDriver.add_breakpoint` etc. on the node
:func:`find_blkdebug` finds; a request reaching the event waits until resumed,
printing QEMU's ``blkdebug: Suspended request 'tag'`` lines to stdout.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from blockd.drivers.base import (
    BlockDriver,
    BlockStatus,
    ChildRole,
    ChildSpec,
    Limits,
    OpenFlags,
    register_driver,
)
from blockd.qmp.errors import GenericError

BLKDBG_EVENTS: tuple[str, ...] = (
    "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
    "l2_load", "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write",
    "read_aio", "read_backing_aio", "read_compressed", "write_aio", "write_compressed",
    "vmstate_load", "vmstate_save", "cow_read", "cow_write", "reftable_load",
    "reftable_grow", "reftable_update", "refblock_load", "refblock_update",
    "refblock_update_part", "refblock_alloc", "refblock_alloc_hookup",
    "refblock_alloc_write", "refblock_alloc_write_blocks", "refblock_alloc_write_table",
    "refblock_alloc_switch_table", "cluster_alloc", "cluster_alloc_bytes", "cluster_free",
    "flush_to_os", "flush_to_disk", "pwritev_rmw_head", "pwritev_rmw_after_head",
    "pwritev_rmw_tail", "pwritev_rmw_after_tail", "pwritev", "pwritev_zero",
    "pwritev_done", "empty_image_prepare", "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space", "none",
)
IO_TYPES: tuple[str, ...] = ("read", "write", "write-zeroes", "discard", "flush",
                             "block-status")
# Without ``iotype`` a rule hits everything but block-status.
_DEFAULT_IOTYPES = frozenset({"read", "write", "write-zeroes", "discard", "flush"})

_INJECT_KEYS = ("event", "state", "iotype", "errno", "sector", "once", "immediately")
_SET_STATE_KEYS = ("event", "state", "new_state")
_INT_MAX = (1 << 31) - 1
# QAPI BlockPermission names -> BLK_PERM_* bits.
_PERM_BITS = {"consistent-read": 0x1, "write": 0x2, "write-unchanged": 0x4, "resize": 0x8}


async def debug_event(node: BlockDriver | None, event: str) -> None:
    """Fire a debug event on ``node`` (QEMU's BLKDBG_EVENT/bdrv_debug_event).

    A no-op unless the node is a blkdebug node; format drivers await it on their
    ``file`` child at the points QEMU does (``read_aio``, ``write_aio``, ...).
    The call returns late when a breakpoint suspends the request there.
    """
    if isinstance(node, BlkdebugDriver):
        await node.event(event)


def find_blkdebug(node: BlockDriver | None) -> BlkdebugDriver | None:
    """The blkdebug node at or below ``node`` along primary children (``file``),
    as bdrv_debug_breakpoint() looks for it; None when there is none."""
    seen = 0
    while node is not None and seen < 1000:
        if isinstance(node, BlkdebugDriver):
            return node
        node = node.file
        seen += 1
    return None


@dataclass
class Rule:
    """One inject-error (``new_state`` None) or set-state rule."""

    event: str
    state: int = 0
    # inject-error
    error: int = errno_mod.EIO
    iotypes: frozenset[str] = _DEFAULT_IOTYPES
    offset: int = -1
    once: bool = False
    immediately: bool = False
    # set-state
    new_state: int | None = None
    # breakpoint (ACTION_SUSPEND)
    tag: str | None = None


def _opt_number(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise GenericError(f"Parameter '{key}' expects a number")
    if isinstance(value, int):
        return value
    s = str(value).strip()
    try:
        return int(s, 0)
    except ValueError:
        raise GenericError(f"Parameter '{key}' expects a number") from None


def _opt_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value)
    if s in ("on", "yes", "true", "y"):
        return True
    if s in ("off", "no", "false", "n"):
        return False
    raise GenericError(f"Parameter '{key}' expects 'on' or 'off'")


def _enum(value: Any, allowed: tuple[str, ...]) -> str:
    s = str(value)
    if s not in allowed:
        raise GenericError(f"invalid parameter value: {s}")
    return s


def make_rule(kind: str, opts: dict[str, Any]) -> Rule:
    """add_rule(): one rule from a config section or an option list entry."""
    event = opts.get("event")
    if event is None:
        raise GenericError("Missing event name for rule")
    ev = _enum(event, BLKDBG_EVENTS)
    state = _opt_number("state", opts.get("state", 0))
    if kind == "set-state":
        return Rule(ev, state, new_state=_opt_number("new_state", opts.get("new_state", 0)))
    iotypes = _DEFAULT_IOTYPES
    if "iotype" in opts:
        iotypes = frozenset({_enum(opts["iotype"], IO_TYPES)})
    sector = _opt_number("sector", opts.get("sector", -1))
    return Rule(
        ev,
        state,
        error=_opt_number("errno", opts.get("errno", errno_mod.EIO)),
        iotypes=iotypes,
        offset=sector * 512 if sector >= 0 else -1,
        once=_opt_bool("once", opts.get("once", False)),
        immediately=_opt_bool("immediately", opts.get("immediately", False)),
    )


_GROUP_RE = re.compile(r'\[([^\]\s"]+)(?:\s+"[^"]*")?\]')
_ARG_RE = re.compile(r'\s*(\S+)\s*=\s*"([^"]*)"')


def parse_config(text: str) -> list[tuple[str, dict[str, Any]]]:
    """qemu_config_parse() over the blkdebug groups: [(kind, options)]."""
    sections: list[tuple[str, dict[str, Any]]] = []
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        g = _GROUP_RE.match(line)
        if g:
            kind = g.group(1)
            if kind not in ("inject-error", "set-state"):
                raise GenericError(f"There is no option group '{kind}'")
            current = {}
            sections.append((kind, current))
            continue
        words = line.split()
        if not words:
            # QEMU's sscanf finds no argument name on a blank-ish line.
            raise GenericError("parse error")
        m = _ARG_RE.match(line)
        # Like QEMU's sscanf: the first word is the name even when the rest of
        # the line does not parse; the value is then empty.
        arg = m.group(1) if m else words[0]
        value = m.group(2) if m else ""
        if current is None:
            raise GenericError("no group defined")
        kind = sections[-1][0]
        keys = _INJECT_KEYS if kind == "inject-error" else _SET_STATE_KEYS
        if arg not in keys:
            raise GenericError(f"Invalid parameter '{arg}'")
        if arg in ("errno", "sector", "state", "new_state"):
            _opt_number(arg, value)
        elif arg in ("once", "immediately"):
            _opt_bool(arg, value)
        current[arg] = value
    return sections


def parse_filename(filename: str) -> dict[str, Any]:
    """``blkdebug:[config]:image`` -> options (blkdebug_parse_filename)."""
    if not filename.startswith("blkdebug:"):
        raise GenericError("File name string must start with 'blkdebug:'")
    rest = filename[len("blkdebug:"):]
    if ":" not in rest:
        raise GenericError("blkdebug requires both config file and image path")
    config, image = rest.split(":", 1)
    out: dict[str, Any] = {"x-image": image}
    if config:
        out["config"] = config
    return out


def _opt_list(value: Any) -> list[dict[str, Any]]:
    """A list option given as a list or as QDict-flattened {"0": {...}}."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [dict(value[k]) for k in sorted(value, key=int)]
    return [dict(v) for v in value]


def _str_list(value: Any) -> list[str]:
    """A list of strings given as a list or QDict-flattened {"0": ...}."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [str(value[k]) for k in sorted(value, key=int)]
    return [str(v) for v in value]


@register_driver
class BlkdebugDriver(BlockDriver):
    name: ClassVar[str] = "blkdebug"
    is_filter: ClassVar[bool] = True
    # ``image`` is bs->file in QEMU (bdrv_open_file_child of a filter).
    child_specs: ClassVar[tuple[ChildSpec, ...]] = (
        ChildSpec("image", "file", ChildRole.FILTERED | ChildRole.PRIMARY),
    )
    # blkdebug_reopen_prepare consumes nothing: every option must stay as it is.
    mutable_opts: ClassVar[frozenset[str] | None] = frozenset()
    # "blkdebug:<config>:<image>" names this driver; the parsed ``x-image`` is
    # the file name of the ``image`` child (blockd.drivers.protocols).
    protocol_name: ClassVar[str] = "blkdebug"
    filename_children: ClassVar[dict[str, str]] = {"image": "x-image"}
    parse_filename = staticmethod(parse_filename)

    def __init__(self) -> None:
        super().__init__()
        self.rules: dict[str, list[Rule]] = {}
        self.active: list[Rule] = []
        self.state = 1
        self.config_file: str | None = None
        # prepare_open() read the rules already (open() must not read twice).
        self._rules_read = False
        self.align = 0
        self.max_transfer = 0
        self.opt_write_zero = 0
        self.max_write_zero = 0
        self.opt_discard = 0
        self.max_discard = 0
        self.take_child_perms: list[str] = []
        self.unshare_child_perms: list[str] = []
        # QEMU's bs->write_gen / flushed_gen: a flush with nothing written since
        # the last one never reaches the driver (nor its rules).
        self.write_gen = 0
        self.flushed_gen = 0
        # Requests suspended at a breakpoint: (tag, wake-up future), oldest first.
        self.suspended: list[tuple[str, asyncio.Future[None]]] = []

    @property
    def filename(self) -> str:
        """The name QEMU shows for the node (blkdebug_refresh_filename):
        ``blkdebug:<config>:<image>``, or "" when options other than the
        config file shape it (then only a json: description names it)."""
        child = self.file if self.file is not None else self.extra_children.get("image")
        image = getattr(child, "filename", "") if child is not None else ""
        if not isinstance(image, str) or not image:
            return ""
        if any(k not in ("config", "x-image") for k in self._open_options):
            return ""
        return f"blkdebug:{self.config_file or ''}:{image}"

    def refresh_filename(self, children: dict[str, str], option_keys: tuple[str, ...],
                         options: dict[str, Any]) -> str:
        """blkdebug_refresh_filename() in the graph: ``blkdebug:<config>:<image>``
        from the image child's exact name, "" when other options shape the node."""
        image = children.get("image") or children.get("file") or ""
        if not image:
            return ""
        for key in option_keys:
            if key not in ("config", "image", "x-image", "driver"):
                return ""
        config = options.get("config")
        return f"blkdebug:{config if isinstance(config, str) else ''}:{image}"

    def image(self) -> BlockDriver:
        child = self.file if self.file is not None else self.extra_children.get("image")
        if child is None:
            raise GenericError('A block device must be specified for "image"')
        return child

    # --- open -------------------------------------------------------------------

    def _read_rules(self, options: dict[str, Any]) -> None:
        sections: list[tuple[str, dict[str, Any]]] = []
        config = options.get("config")
        if config is not None:
            try:
                with open(str(config), encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError as e:
                raise GenericError(
                    f"Could not read blkdebug config file: {os.strerror(e.errno or 0)}"
                ) from None
            sections += parse_config(text)
        sections += [("inject-error", o) for o in _opt_list(options.get("inject-error"))]
        sections += [("set-state", o) for o in _opt_list(options.get("set-state"))]
        rules: dict[str, list[Rule]] = {}
        # QEMU adds all inject-error rules, then all set-state rules, each at the
        # head of its event's list.
        for wanted in ("inject-error", "set-state"):
            for kind, opts in sections:
                if kind == wanted:
                    rule = make_rule(kind, opts)
                    rules.setdefault(rule.event, []).insert(0, rule)
        self.rules = rules
        self.config_file = None if config is None else str(config)

    def _check_limits(self, options: dict[str, Any]) -> None:
        def size(key: str) -> int:
            return _opt_number(key, options.get(key, 0))

        def fail(key: str, v: int) -> GenericError:
            return GenericError(f"Cannot meet constraints with {key} {v}")

        self.align = size("align")
        if self.align and (self.align >= _INT_MAX or self.align & (self.align - 1)):
            raise fail("align", self.align)
        align = max(self.align, self.image().refresh_limits().request_alignment)
        for key, attr, base in (
            ("max-transfer", "max_transfer", None),
            ("opt-write-zero", "opt_write_zero", None),
            ("max-write-zero", "max_write_zero", "opt_write_zero"),
            ("opt-discard", "opt_discard", None),
            ("max-discard", "max_discard", "opt_discard"),
        ):
            v = size(key)
            unit = max(getattr(self, base), align) if base else align
            if v and (v >= _INT_MAX or v % unit):
                raise fail(key, v)
            setattr(self, attr, v)

    def prepare_open(self, options: dict[str, Any]) -> None:
        """What blkdebug_open does before it opens ``image``: read the rules
        (so a bad config file is reported before a missing image)."""
        self._read_rules(options)
        self._rules_read = True

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        self.flags = flags
        self._open_options = dict(options)
        if not self._rules_read:
            self._read_rules(options)
        self._rules_read = False
        self.state = 1
        self.take_child_perms = _str_list(options.get("take-child-perms"))
        self.unshare_child_perms = _str_list(options.get("unshare-child-perms"))
        self._check_limits(options)
        self.fire("none")

    async def close(self) -> None:
        self.rules.clear()
        self.active.clear()

    async def reopen_prepare(self, options: dict[str, Any], flags: OpenFlags) -> None:
        # blkdebug_reopen_prepare accepts anything; the generic reopen refuses
        # changed options ("Cannot change the option 'align'").
        self._reopen_new = (dict(options), flags)

    async def reopen_commit(self) -> None:
        self._open_options, self.flags = self._reopen_new

    async def reopen_abort(self) -> None:
        return None

    def child_perm(
        self,
        child_name: str,
        role: ChildRole,
        read_only: bool,
        perm: int = 0,
        shared: int = 0xF,
    ) -> tuple[int, int]:
        """Default perms plus ``take-child-perms``, minus ``unshare-child-perms``."""
        nperm, nshared = super().child_perm(child_name, role, read_only, perm, shared)
        for name in self.take_child_perms:
            nperm |= _PERM_BITS.get(name, 0)
        for name in self.unshare_child_perms:
            nshared &= ~_PERM_BITS.get(name, 0)
        return nperm, nshared

    # --- rules ------------------------------------------------------------------

    def fire(self, event: str) -> list[str]:
        """blkdebug_debug_event() without waiting: activate/apply the rules of
        ``event``; returns the tags of the breakpoints hit (now removed)."""
        new_state = self.state
        injected = False
        hits: list[str] = []
        for rule in list(self.rules.get(event, ())):
            if rule.state and rule.state != self.state:
                continue
            if rule.new_state is not None:
                new_state = rule.new_state
                continue
            if rule.tag is not None:
                # A breakpoint fires once: the rule goes, the request suspends.
                self.rules[event].remove(rule)
                hits.append(rule.tag)
                continue
            if not injected:
                # The first inject rule of an event replaces the active set.
                self.active = []
                injected = True
            self.active.insert(0, rule)
        self.state = new_state
        return hits

    async def debug_event(self, event: str) -> None:
        """The generic hook (``base.bdrv_debug_event``) format drivers fire."""
        await self.event(event)

    async def event(self, event: str) -> None:
        """Fire ``event`` and suspend the calling request at each breakpoint hit."""
        for tag in self.fire(event):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.suspended.append((tag, fut))
            # QEMU prints these to stdout (iotests read them back).
            print(f"blkdebug: Suspended request '{tag}'", flush=True)
            try:
                await fut
            finally:
                self.suspended = [s for s in self.suspended if s[1] is not fut]
            print(f"blkdebug: Resuming request '{tag}'", flush=True)

    # --- breakpoints (qemu-io break / remove_break / resume / wait_break) --------

    def add_breakpoint(self, event: str, tag: str) -> None:
        """blkdebug_debug_breakpoint(); OSError(ENOENT) for an unknown event."""
        if event not in BLKDBG_EVENTS:
            raise OSError(errno_mod.ENOENT, os.strerror(errno_mod.ENOENT))
        self.rules.setdefault(event, []).insert(0, Rule(event, 0, error=0, tag=tag))

    def _resume(self, tag: str, resume_all: bool) -> bool:
        found = False
        for t, fut in list(self.suspended):
            if t == tag and not fut.done():
                fut.set_result(None)
                found = True
                if not resume_all:
                    break
        return found

    def remove_breakpoint(self, tag: str) -> None:
        """Drop the breakpoints named ``tag`` and resume what they suspended."""
        found = False
        for rules in self.rules.values():
            for rule in [r for r in rules if r.tag == tag]:
                rules.remove(rule)
                found = True
        if self._resume(tag, True):
            found = True
        if not found:
            raise OSError(errno_mod.ENOENT, os.strerror(errno_mod.ENOENT))

    def resume(self, tag: str) -> None:
        """Resume the oldest request suspended at ``tag``; ENOENT if none."""
        if not self._resume(tag, False):
            raise OSError(errno_mod.ENOENT, os.strerror(errno_mod.ENOENT))

    def is_suspended(self, tag: str) -> bool:
        return any(t == tag and not fut.done() for t, fut in self.suspended)

    def _check(self, offset: int, nbytes: int, iotype: str) -> None:
        """rule_check(): raise the injected error of the first matching rule."""
        for rule in self.active:
            hit = rule.offset == -1 or (nbytes and offset <= rule.offset < offset + nbytes)
            if hit and iotype in rule.iotypes:
                break
        else:
            return
        if not rule.error:
            return
        if rule.once:
            self.active.remove(rule)
            lst = self.rules.get(rule.event, [])
            if rule in lst:
                lst.remove(rule)
        raise OSError(rule.error, os.strerror(rule.error))

    def _chunks(self, offset: int, length: int) -> list[tuple[int, int]]:
        step = self.max_transfer or length or 1
        return [(o, min(step, offset + length - o)) for o in range(offset, offset + length, step)]

    # --- I/O --------------------------------------------------------------------

    def get_length(self) -> int:
        return self.image().get_length()

    def refresh_limits(self) -> Limits:
        lim = self.image().refresh_limits()
        return Limits(
            request_alignment=max(lim.request_alignment, self.align or 1),
            max_transfer=self.max_transfer or lim.max_transfer,
            opt_transfer=lim.opt_transfer,
            pdiscard_alignment=self.opt_discard or lim.pdiscard_alignment,
            pwrite_zeroes_alignment=self.opt_write_zero or lim.pwrite_zeroes_alignment,
        )

    async def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        out = bytearray()
        for off, n in self._chunks(offset, length):
            self._check(off, n, "read")
            out += await self.image().read(off, n)
        return bytes(out)

    async def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        compressed: bool = False,
        fua: bool = False,
    ) -> None:
        mv = memoryview(data).cast("B")
        if not len(mv):
            return
        align = self.refresh_limits().request_alignment
        if align > 1 and (offset % align or len(mv) % align):
            offset, mv = await self._pad(offset, mv, align)
        # bdrv_aligned_pwritev: one event pair per request, split at max-transfer.
        await self.event("pwritev")
        try:
            for off, n in self._chunks(offset, len(mv)):
                self._check(off, n, "write")
                piece = mv[off - offset : off - offset + n]
                await self.image().write(off, piece, compressed=compressed, fua=fua)
        finally:
            self.write_gen += 1
        await self.event("pwritev_done")

    async def _pad(self, offset: int, mv: memoryview, align: int) -> tuple[int, memoryview]:
        """bdrv_co_pwritev padding: read the partial head/tail blocks (with the
        rmw events) and widen the write to them.  Measured on QEMU 7.2: these
        padding reads are not subject to inject-error rules (only the write is)."""
        size = self.get_length()
        req_end = offset + len(mv)
        start = offset - offset % align
        tail_start = req_end - req_end % align
        end = min(tail_start + align, max(size, req_end)) if req_end % align else req_end

        async def block(at: int) -> bytes:
            n = min(align, max(0, size - at))
            got = await self.image().read(at, n) if n else b""
            return got + bytes(align - len(got))

        head_block = b""
        head = tail = b""
        if offset % align:
            await self.event("pwritev_rmw_head")
            head_block = await block(start)
            head = head_block[: offset - start]
            await self.event("pwritev_rmw_after_head")
        if req_end % align and end > req_end:
            await self.event("pwritev_rmw_tail")
            # Head and tail in one block: QEMU reads it once.
            blk = head_block if head_block and tail_start == start else await block(tail_start)
            tail = blk[req_end - tail_start : end - tail_start]
            await self.event("pwritev_rmw_after_tail")
        return start, memoryview(head + bytes(mv) + tail)

    async def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        """bdrv_co_do_pwrite_zeroes over blkdebug: pieces smaller than the zero
        alignment are refused by blkdebug (ENOTSUP) and become plain writes."""
        if length <= 0:
            return
        align = max(self.refresh_limits().request_alignment, self.opt_write_zero or 1)
        max_chunk = self.max_write_zero or (1 << 31) - align
        max_chunk -= max_chunk % align or 0
        await self.event("pwritev_zero")
        self.write_gen += 1
        pos, end = offset, offset + length
        while pos < end:
            n = end - pos
            if pos % align:
                n = min(n, align - pos % align)
            elif n > align and (end % align):
                n -= end % align
            n = min(n, max(max_chunk, align))
            if n < align:
                self._check(pos, n, "write")
                await self.image().write(pos, bytes(n))
            else:
                self._check(pos, n, "write-zeroes")
                await self.image().write_zeroes(pos, n, may_unmap=may_unmap)
            pos += n
        await self.event("pwritev_done")

    async def discard(self, offset: int, length: int) -> None:
        """Pieces smaller than opt-discard are checked against the rules, then
        dropped (ENOTSUP, which bdrv_co_pdiscard ignores); the rest is passed on."""
        align = max(self.opt_discard, self.refresh_limits().request_alignment, 1)
        pos, end = offset, offset + length
        max_chunk = self.max_discard or length
        self.write_gen += 1
        while pos < end:
            n = end - pos
            if pos % align:
                n = min(n, align - pos % align)
            elif n > align and end % align:
                n -= end % align
            n = min(n, max(max_chunk, 1))
            # Rules apply to every piece (measured: a short discard still fails).
            self._check(pos, n, "discard")
            if n >= align:
                await self.image().discard(pos, n)
            pos += n

    async def flush(self) -> None:
        if self.flags.cache_no_flush or self.flushed_gen == self.write_gen:
            # bdrv_co_flush(): nothing to write back at this level.
            await self.image().flush()
            return
        gen = self.write_gen
        self._check(0, 0, "flush")
        await self.image().flush()
        self.flushed_gen = gen

    async def truncate(
        self, length: int, *, preallocation: str = "off", exact: bool = False
    ) -> None:
        await self.image().truncate(length, preallocation=preallocation, exact=exact)

    async def block_status(self, offset: int, length: int) -> BlockStatus:
        self._check(offset, length, "block-status")
        return await self.image().block_status(offset, length)
