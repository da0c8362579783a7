"""QEMU's slice-based rate limiter (include/qemu/ratelimit.h).

A job may dispatch ``slice_quota`` bytes per slice (100 ms for block jobs);
once the quota is used up it waits until the (possibly extended) slice ends.
Overshooting by one big request extends the slice proportionally, so the
average rate stays at ``speed`` even with requests larger than a slice's quota.
"""

from __future__ import annotations

import time

# BLOCK_JOB_SLICE_TIME: 100 ms.
SLICE_NS = 100_000_000


class RateLimit:
    """Bytes per second in slices; ``speed == 0`` means unlimited."""

    def __init__(self, slice_ns: int = SLICE_NS) -> None:
        self.slice_ns = slice_ns
        self.slice_quota = 0
        self.slice_start = 0
        self.slice_end = 0
        self.dispatched = 0

    def set_speed(self, speed: int, slice_ns: int = SLICE_NS) -> None:
        """ratelimit_set_speed(): a quota of at least one byte per slice."""
        self.slice_ns = slice_ns
        self.slice_quota = 0 if speed == 0 else max(int(speed * slice_ns / 1e9), 1)

    def calculate_delay(self, n: int, now_ns: int | None = None) -> int:
        """Account ``n`` bytes; return how many ns to wait before dispatching more."""
        if not self.slice_quota:
            return 0
        now = time.monotonic_ns() if now_ns is None else now_ns
        if self.slice_end < now:
            # The previous (possibly extended) slice is over: start a new one.
            self.slice_start = now
            self.slice_end = now + self.slice_ns
            self.dispatched = 0
        self.dispatched += n
        if self.dispatched < self.slice_quota:
            return 0
        # Over quota: wait for as many slices as were used, then start afresh.
        delay_slices = self.dispatched / self.slice_quota
        self.slice_end = self.slice_start + int(delay_slices * self.slice_ns)
        return self.slice_end - now
