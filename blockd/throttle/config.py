"""Throttling configuration: QEMU's LeakyBucket/ThrottleConfig (util/throttle.c).

Six buckets (bps/iops x total/read/write), each with an average rate ``avg``, a
burst rate ``max`` and a burst length in seconds ``burst_length``; plus
``op_size`` (``iops-size``) that makes a large request count as several
operations.  Validation and the ThrottleLimits conversion produce QEMU's texts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from blockd.qmp.errors import GenericError

NANOSECONDS_PER_SECOND = 1_000_000_000
# QEMU's THROTTLE_VALUE_MAX: no rate or burst may exceed it.
THROTTLE_VALUE_MAX = 1_000_000_000_000_000
UINT_MAX = 0xFFFFFFFF


class BucketType(enum.IntEnum):
    """Bucket indices in QEMU's order (BucketType in include/qemu/throttle.h)."""

    BPS_TOTAL = 0
    BPS_READ = 1
    BPS_WRITE = 2
    OPS_TOTAL = 3
    OPS_READ = 4
    OPS_WRITE = 5


@dataclass
class LeakyBucket:
    """One bucket: configured rates plus the running levels."""

    avg: int = 0
    max: int = 0
    burst_length: int = 1
    level: float = 0.0
    burst_level: float = 0.0

    def leak(self, delta_ns: int) -> None:
        """Drain in proportion to the time elapsed (throttle_leak_bucket)."""
        leak = self.avg * delta_ns / NANOSECONDS_PER_SECOND
        self.level = max(self.level - leak, 0.0)
        if self.burst_length > 1:
            leak = self.max * delta_ns / NANOSECONDS_PER_SECOND
            self.burst_level = max(self.burst_level - leak, 0.0)

    def compute_wait_ns(self) -> int:
        """Nanoseconds before the next request may run (throttle_compute_wait)."""
        if not self.avg:
            return 0
        if not self.max:
            # Without a burst rate a tenth of a second's worth may still pass at once.
            bucket_size = self.avg / 10
            burst_bucket_size = 0.0
        else:
            bucket_size = float(self.max * self.burst_length)
            burst_bucket_size = self.max / 10
        extra = self.level - bucket_size
        if extra > 0:
            return int(extra * NANOSECONDS_PER_SECOND / self.avg)
        if self.burst_length > 1:
            extra = self.burst_level - burst_bucket_size
            if extra > 0:
                return int(extra * NANOSECONDS_PER_SECOND / self.max)
        return 0


# Buckets consulted per direction (throttle_compute_wait_for).
_READ_BUCKETS = (BucketType.BPS_TOTAL, BucketType.OPS_TOTAL, BucketType.BPS_READ,
                 BucketType.OPS_READ)
_WRITE_BUCKETS = (BucketType.BPS_TOTAL, BucketType.OPS_TOTAL, BucketType.BPS_WRITE,
                  BucketType.OPS_WRITE)


@dataclass
class ThrottleConfig:
    """QEMU's ThrottleConfig: six buckets and the iops-size."""

    buckets: list[LeakyBucket] = field(
        default_factory=lambda: [LeakyBucket() for _ in BucketType]
    )
    op_size: int = 0

    def copy(self) -> ThrottleConfig:
        return ThrottleConfig([replace(b) for b in self.buckets], self.op_size)

    def bucket(self, t: BucketType) -> LeakyBucket:
        return self.buckets[t]

    def enabled(self) -> bool:
        return any(b.avg > 0 for b in self.buckets)

    def validate(self) -> None:
        """Raise QEMU's throttle_is_valid() error for an invalid configuration."""
        b = self.buckets
        bt = BucketType

        def conflict(attr: str, total: BucketType, rd: BucketType, wr: BucketType) -> bool:
            return bool(getattr(b[total], attr)) and bool(
                getattr(b[rd], attr) or getattr(b[wr], attr)
            )

        if (
            conflict("avg", bt.BPS_TOTAL, bt.BPS_READ, bt.BPS_WRITE)
            or conflict("avg", bt.OPS_TOTAL, bt.OPS_READ, bt.OPS_WRITE)
            or conflict("max", bt.BPS_TOTAL, bt.BPS_READ, bt.BPS_WRITE)
            or conflict("max", bt.OPS_TOTAL, bt.OPS_READ, bt.OPS_WRITE)
        ):
            raise GenericError(
                "bps/iops/max total values and read/write values cannot be used at the "
                "same time"
            )
        if self.op_size and not (
            b[bt.OPS_TOTAL].avg or b[bt.OPS_READ].avg or b[bt.OPS_WRITE].avg
        ):
            raise GenericError("iops size requires an iops value to be set")
        for bkt in b:
            # The QAPI integers land in unsigned C fields: negatives wrap to huge.
            avg, mx = bkt.avg % (1 << 64), bkt.max % (1 << 64)
            if avg > THROTTLE_VALUE_MAX or mx > THROTTLE_VALUE_MAX:
                raise GenericError(
                    f"bps/iops/max values must be within [0, {THROTTLE_VALUE_MAX}]"
                )
            if not bkt.burst_length:
                raise GenericError("the burst length cannot be 0")
            if bkt.burst_length > 1 and not mx:
                raise GenericError("burst length set without burst rate")
            if mx and bkt.burst_length > THROTTLE_VALUE_MAX // mx:
                raise GenericError("burst length too high for this burst rate")
            if mx and not avg:
                raise GenericError("bps_max/iops_max require corresponding bps/iops values")
            if mx and mx < avg:
                raise GenericError("bps_max/iops_max cannot be lower than bps/iops")

    # --- ThrottleLimits (QAPI) conversion ------------------------------------

    def apply_limits(self, limits: dict[str, Any]) -> None:
        """throttle_limits_to_config(): set what ``limits`` has, then validate."""
        for key, (kind, bkt) in LIMIT_FIELDS.items():
            if key not in limits:
                continue
            value = int(limits[key])
            if kind == "avg":
                self.buckets[bkt].avg = value
            elif kind == "max":
                self.buckets[bkt].max = value
            elif kind == "length":
                if not 0 <= value <= UINT_MAX:
                    raise GenericError(
                        f"{key} value must be in the range [0, {UINT_MAX}]"
                    )
                self.buckets[bkt].burst_length = value
            else:
                self.op_size = value
        self.validate()

    def to_limits(self) -> dict[str, Any]:
        """throttle_config_to_limits(): every member, in ThrottleLimits order."""
        out: dict[str, Any] = {}
        for key, (kind, bkt) in LIMIT_FIELDS.items():
            out[key] = self.get_field(kind, bkt)
        return out

    def get_field(self, kind: str, bkt: BucketType) -> int:
        if kind == "avg":
            return self.buckets[bkt].avg
        if kind == "max":
            return self.buckets[bkt].max
        if kind == "length":
            return self.buckets[bkt].burst_length
        return self.op_size

    def set_field(self, kind: str, bkt: BucketType, value: int) -> None:
        if kind == "avg":
            self.buckets[bkt].avg = value
        elif kind == "max":
            self.buckets[bkt].max = value
        elif kind == "length":
            self.buckets[bkt].burst_length = value
        else:
            self.op_size = value


def _limit_fields() -> dict[str, tuple[str, BucketType]]:
    # ThrottleLimits member order (qapi/block-core.json), which is also the order
    # of QEMU's throttle-group property table.
    out: dict[str, tuple[str, BucketType]] = {}
    for unit, prefix in (("OPS", "iops"), ("BPS", "bps")):
        for dirn in ("TOTAL", "READ", "WRITE"):
            bkt = BucketType[f"{unit}_{dirn}"]
            base = f"{prefix}-{dirn.lower()}"
            out[base] = ("avg", bkt)
            out[f"{base}-max"] = ("max", bkt)
            out[f"{base}-max-length"] = ("length", bkt)
    out["iops-size"] = ("size", BucketType.OPS_TOTAL)
    return out


LIMIT_FIELDS: dict[str, tuple[str, BucketType]] = _limit_fields()


def buckets_for(is_write: bool) -> tuple[BucketType, ...]:
    return _WRITE_BUCKETS if is_write else _READ_BUCKETS
