"""L1/L2 entry layout and classification (standard, non-extended L2 entries)."""

from __future__ import annotations

import enum

OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1 << 0
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
# Bits that must be zero in a standard L2 entry of an uncompressed cluster.
L2E_RESERVED_MASK = 0x3F000000000001FE
L1E_RESERVED_MASK = 0x7F000000000001FF


class ClusterType(enum.IntEnum):
    UNALLOCATED = 0
    ZERO_PLAIN = 1
    ZERO_ALLOC = 2
    NORMAL = 3
    COMPRESSED = 4


def cluster_type(entry: int) -> ClusterType:
    """Classify an L2 entry as qcow2_get_cluster_type() does."""
    if entry & OFLAG_COMPRESSED:
        return ClusterType.COMPRESSED
    if entry & OFLAG_ZERO:
        return ClusterType.ZERO_ALLOC if entry & L2E_OFFSET_MASK else ClusterType.ZERO_PLAIN
    if entry & L2E_OFFSET_MASK:
        return ClusterType.NORMAL
    return ClusterType.UNALLOCATED


class CompressedGeometry:
    """Bit layout of compressed cluster descriptors for one cluster size."""

    def __init__(self, cluster_bits: int) -> None:
        self.csize_shift = 62 - (cluster_bits - 8)
        self.csize_mask = (1 << (cluster_bits - 8)) - 1
        self.offset_mask = (1 << self.csize_shift) - 1

    def decode(self, entry: int) -> tuple[int, int]:
        """(host byte offset, bytes to read) of a compressed L2 entry."""
        host = entry & self.offset_mask
        nb_sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1
        return host, nb_sectors * 512 - (host & 511)

    def encode(self, host: int, length: int) -> int:
        extra = ((host + length - 1) >> 9) - (host >> 9)
        return OFLAG_COMPRESSED | host | (extra << self.csize_shift)

    def host_range(self, entry: int) -> tuple[int, int]:
        """Host byte range [start, start+len) whose clusters carry a reference."""
        host = entry & self.offset_mask
        nb_sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1
        start = host & ~511
        return start, nb_sectors * 512
