"""The ``throttle`` filter (QEMU's block/throttle.c).

Every read, write, zero-write and discard waits for its turn in the node's
throttle group (``throttle-group``, an object created with object-add) before
reaching ``file``; flushes are not throttled.  Reopen may switch the node to
another group.
"""

from __future__ import annotations

from typing import Any, ClassVar

from blockd.drivers.base import OpenFlags, register_driver
from blockd.drivers.compress import FilterPassthrough
from blockd.qmp.errors import GenericError
from blockd.throttle.group import ThrottleGroup, ThrottleGroupMember, lookup_group


def _group_from(options: dict[str, Any]) -> ThrottleGroup:
    """throttle_parse_options(): the named group, with QEMU's errors."""
    name = options.get("throttle-group")
    if name is None:
        raise GenericError("Please specify a throttle group")
    group = lookup_group(str(name))
    if group is None:
        raise GenericError(f"Throttle group '{name}' does not exist")
    return group


@register_driver
class ThrottleDriver(FilterPassthrough):
    name: ClassVar[str] = "throttle"
    # throttle_reopen_prepare consumes the group name: the one changeable option.
    mutable_opts: ClassVar[frozenset[str] | None] = frozenset({"throttle-group"})

    def __init__(self) -> None:
        super().__init__()
        self.member: ThrottleGroupMember | None = None
        self._staged_group: ThrottleGroup | None = None

    @property
    def group_name(self) -> str:
        return self.member.group.name if self.member is not None else ""

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        group = _group_from(options)
        await super().open(options, flags)
        self.member = group.add_member()

    async def close(self) -> None:
        if self.member is not None:
            self.member.group.remove_member(self.member)
            self.member = None

    # --- reopen: only the group may change ------------------------------------

    async def reopen_prepare(self, options: dict[str, Any], flags: OpenFlags) -> None:
        self._staged_group = _group_from(options)
        self._reopen_new = (dict(options), flags)

    async def reopen_commit(self) -> None:
        group = self._staged_group
        self._staged_group = None
        if group is not None and (self.member is None or self.member.group is not group):
            if self.member is not None:
                self.member.group.remove_member(self.member)
            self.member = group.add_member()
        self._open_options, self.flags = self._reopen_new

    async def reopen_abort(self) -> None:
        self._staged_group = None

    # --- drain: requests bypass the limits while drained (io_limits_disabled) --

    def drain_begin(self) -> None:
        if self.member is not None:
            self.member.io_limits_disabled += 1
            self.member.group.restart()

    def drain_end(self) -> None:
        if self.member is not None and self.member.io_limits_disabled:
            self.member.io_limits_disabled -= 1

    # --- I/O --------------------------------------------------------------------

    async def _intercept(self, nbytes: int, is_write: bool) -> None:
        if self.member is not None:
            await self.member.intercept(nbytes, is_write)

    async def read(self, offset: int, length: int) -> bytes:
        await self._intercept(length, False)
        return await self.child().read(offset, length)

    async def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        compressed: bool = False,
        fua: bool = False,
    ) -> None:
        await self._intercept(memoryview(data).nbytes, True)
        await self.child().write(offset, data, compressed=compressed, fua=fua)

    async def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        await self._intercept(length, True)
        await self.child().write_zeroes(offset, length, may_unmap=may_unmap)

    async def discard(self, offset: int, length: int) -> None:
        await self._intercept(length, True)
        await self.child().discard(offset, length)
