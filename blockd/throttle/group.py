"""Throttle groups: one set of leaky buckets shared by several members.

QEMU's block/throttle-groups.c: every request of a member first passes
:meth:`ThrottleGroup.intercept`, which waits (asyncio timers, never blocking the
loop) while the group's buckets are over their limit or earlier requests of the
same direction are still queued, then accounts the request and lets the next
queued one go when the buckets allow.  Queues are per direction and FIFO across
the whole group, so no member can overtake another.

Groups live in a process-wide registry by name, as in QEMU (throttle_groups).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

from blockd.qmp.errors import GenericError
from blockd.throttle.config import BucketType, ThrottleConfig, buckets_for

_GROUPS: dict[str, ThrottleGroup] = {}


def _now_ns() -> int:
    return int(asyncio.get_running_loop().time() * 1e9)


@dataclass
class _Direction:
    """Waiters and the timer of one direction (read = 0, write = 1)."""

    queue: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)
    timer: asyncio.TimerHandle | None = None


class ThrottleGroupMember:
    """A user of a group (a throttle filter node); ``io_limits_disabled`` > 0
    (drained) lets its requests bypass the limits as QEMU does."""

    def __init__(self, group: ThrottleGroup) -> None:
        self.group = group
        self.io_limits_disabled = 0

    async def intercept(self, nbytes: int, is_write: bool) -> None:
        await self.group.intercept(self, nbytes, is_write)


class ThrottleGroup:
    """The shared state: configuration, bucket levels, per-direction queues."""

    def __init__(self, name: str, config: ThrottleConfig | None = None) -> None:
        self.name = name
        self.config = config.copy() if config is not None else ThrottleConfig()
        self.members: list[ThrottleGroupMember] = []
        self._dirs = (_Direction(), _Direction())
        self._previous_leak: int | None = None
        self.registered = False

    # --- registry -------------------------------------------------------------

    def register(self) -> None:
        """Make the group findable by name (throttle_group_obj_complete)."""
        if self.name in _GROUPS:
            raise GenericError("A group with this name already exists")
        _GROUPS[self.name] = self
        self.registered = True

    def unregister(self) -> None:
        if _GROUPS.get(self.name) is self:
            del _GROUPS[self.name]
        self.registered = False
        for d in self._dirs:
            if d.timer is not None:
                d.timer.cancel()
                d.timer = None

    # --- membership -------------------------------------------------------------

    def add_member(self) -> ThrottleGroupMember:
        member = ThrottleGroupMember(self)
        self.members.append(member)
        return member

    def remove_member(self, member: ThrottleGroupMember) -> None:
        if member in self.members:
            self.members.remove(member)

    def in_use(self) -> bool:
        return bool(self.members)

    # --- configuration ----------------------------------------------------------

    def set_config(self, config: ThrottleConfig) -> None:
        """throttle_config(): new limits, levels reset; queued requests re-checked."""
        self.config = config.copy()
        for bkt in self.config.buckets:
            bkt.level = bkt.burst_level = 0.0
        self._previous_leak = None
        for is_write in (False, True):
            d = self._dirs[is_write]
            if d.timer is not None:
                d.timer.cancel()
                d.timer = None
            self._schedule_next(is_write)

    # --- the engine -------------------------------------------------------------

    def _leak(self, now: int) -> None:
        if self._previous_leak is None:
            self._previous_leak = now
            return
        delta = now - self._previous_leak
        self._previous_leak = now
        if delta <= 0:
            return
        for bkt in self.config.buckets:
            bkt.leak(delta)

    def _wait_ns(self, is_write: bool) -> int:
        """Leak up to now, then the longest wait any relevant bucket demands."""
        self._leak(_now_ns())
        return max(self.config.buckets[t].compute_wait_ns() for t in buckets_for(is_write))

    def _account(self, is_write: bool, nbytes: int) -> None:
        """throttle_account(): bytes into the bps buckets, operations into iops."""
        units = 1.0
        if self.config.op_size and nbytes > self.config.op_size:
            units = nbytes / self.config.op_size
        b = self.config.buckets
        rw_bps = BucketType.BPS_WRITE if is_write else BucketType.BPS_READ
        rw_ops = BucketType.OPS_WRITE if is_write else BucketType.OPS_READ
        for t, amount in ((BucketType.BPS_TOTAL, float(nbytes)), (rw_bps, float(nbytes)),
                          (BucketType.OPS_TOTAL, units), (rw_ops, units)):
            b[t].level += amount
            if b[t].burst_length > 1:
                b[t].burst_level += amount

    async def intercept(self, member: ThrottleGroupMember, nbytes: int, is_write: bool) -> None:
        """Wait for this request's turn, then account it (io_limits_intercept)."""
        if member.io_limits_disabled or not self.config.enabled():
            self._account(is_write, nbytes)
            return
        d = self._dirs[is_write]
        if d.queue or self._wait_ns(is_write) > 0:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            d.queue.append(fut)
            self._arm(is_write)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in d.queue:
                    d.queue.remove(fut)
                elif fut.done() and not fut.cancelled():
                    # We were released but will not run: let the next one go.
                    self._schedule_next(is_write)
                raise
        self._account(is_write, nbytes)
        self._schedule_next(is_write)

    def _arm(self, is_write: bool) -> None:
        d = self._dirs[is_write]
        if d.timer is not None:
            return
        wait = self._wait_ns(is_write)
        loop = asyncio.get_running_loop()
        d.timer = loop.call_later(max(wait, 0) / 1e9, self._timer_fired, is_write)

    def _timer_fired(self, is_write: bool) -> None:
        self._dirs[is_write].timer = None
        self._schedule_next(is_write)

    def _schedule_next(self, is_write: bool) -> None:
        """Release the oldest waiter if the buckets allow, else arm the timer."""
        d = self._dirs[is_write]
        while d.queue and d.queue[0].done():
            d.queue.popleft()
        if not d.queue or d.timer is not None:
            return
        if self.config.enabled() and self._wait_ns(is_write) > 0:
            self._arm(is_write)
            return
        d.queue.popleft().set_result(None)

    def restart(self) -> None:
        """Release every queued request regardless of limits (drain begin)."""
        for d in self._dirs:
            if d.timer is not None:
                d.timer.cancel()
                d.timer = None
            while d.queue:
                fut = d.queue.popleft()
                if not fut.done():
                    fut.set_result(None)


def lookup_group(name: str) -> ThrottleGroup | None:
    return _GROUPS.get(name)


def group_exists(name: str) -> bool:
    return name in _GROUPS
