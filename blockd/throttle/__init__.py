"""Token-bucket I/O throttling with QEMU's semantics (util/throttle.c, throttle-groups.c)."""

from blockd.throttle.config import (
    LIMIT_FIELDS,
    THROTTLE_VALUE_MAX,
    BucketType,
    LeakyBucket,
    ThrottleConfig,
)
from blockd.throttle.group import ThrottleGroup, ThrottleGroupMember, group_exists, lookup_group

__all__ = [
    "LIMIT_FIELDS",
    "THROTTLE_VALUE_MAX",
    "BucketType",
    "LeakyBucket",
    "ThrottleConfig",
    "ThrottleGroup",
    "ThrottleGroupMember",
    "group_exists",
    "lookup_group",
]
