"""Internal snapshot table (read-only: blockd preserves snapshots, never edits them)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from blockd.qmp.errors import GenericError

SNAPSHOT_HEADER = struct.Struct(">QIHHIIQII")  # 40 bytes, QCowSnapshotHeader
MAX_SNAPSHOTS = 65536
MAX_SNAPSHOT_EXTRA_DATA = 1024
MAX_SNAPSHOTS_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Snapshot:
    l1_table_offset: int
    l1_size: int
    id_str: str
    name: str
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    extra: bytes


def parse_snapshots(buf: bytes, count: int) -> tuple[list[Snapshot], int]:
    """Decode ``count`` snapshot entries; returns them and the table's byte size."""
    out: list[Snapshot] = []
    off = 0
    for _ in range(count):
        if off + SNAPSHOT_HEADER.size > len(buf):
            raise GenericError("Failed to read snapshot table: Snapshot table exceeds the file")
        (
            l1_off,
            l1_size,
            id_len,
            name_len,
            dsec,
            dnsec,
            vmclock,
            vmsize,
            extra_len,
        ) = SNAPSHOT_HEADER.unpack_from(buf, off)
        off += SNAPSHOT_HEADER.size
        if extra_len > MAX_SNAPSHOT_EXTRA_DATA:
            raise GenericError("Too much extra metadata in snapshot table entry 0")
        extra = bytes(buf[off : off + extra_len])
        off += extra_len
        id_str = bytes(buf[off : off + id_len]).decode("utf-8", "replace")
        off += id_len
        name = bytes(buf[off : off + name_len]).decode("utf-8", "replace")
        off += name_len
        off = (off + 7) & ~7
        if off > MAX_SNAPSHOTS_SIZE:
            raise GenericError("Snapshot table too large")
        out.append(Snapshot(l1_off, l1_size, id_str, name, dsec, dnsec, vmclock, vmsize, extra))
    return out, off


def snapshot_table_bound(count: int) -> int:
    """An upper bound of the table size to read before parsing."""
    return min(
        MAX_SNAPSHOTS_SIZE, count * (SNAPSHOT_HEADER.size + MAX_SNAPSHOT_EXTRA_DATA + 2 * 65535 + 8)
    )
