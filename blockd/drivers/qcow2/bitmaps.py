"""Persistent dirty bitmaps stored in a qcow2 image (read side only).

blockd does not maintain bitmaps; it needs to know where their metadata and data
live (so ``check`` counts those clusters as referenced) and to list them for
``query``/``info`` like QEMU's ImageInfoSpecificQCow2 ``bitmaps``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from . import header as H

BITMAP_IN_USE = 1 << 0
BITMAP_AUTO = 1 << 1
_DIR_ENTRY = struct.Struct(">QIIBBHI")  # 24 bytes
MAX_DIRECTORY_SIZE = 64 << 20


@dataclass(frozen=True)
class BitmapExt:
    count: int
    directory_size: int
    directory_offset: int


@dataclass(frozen=True)
class Bitmap:
    name: str
    table_offset: int
    table_size: int  # entries
    flags: int
    granularity_bits: int

    def info(self) -> dict[str, Any]:
        """Qcow2BitmapInfo: flags, name, granularity."""
        flags = []
        if self.flags & BITMAP_IN_USE:
            flags.append("in-use")
        if self.flags & BITMAP_AUTO:
            flags.append("auto")
        return {"flags": flags, "name": self.name, "granularity": 1 << self.granularity_bits}


def bitmaps_ext(hdr: H.Qcow2Header) -> BitmapExt | None:
    """The bitmaps extension when it is valid (autoclear bit set), else None."""
    ext = hdr.bitmaps_ext
    if ext is None or not hdr.autoclear_features & H.AUTOCLEAR_BITMAPS or len(ext) < 24:
        return None
    count, _reserved, size, offset = struct.unpack_from(">IIQQ", ext)
    return BitmapExt(count, size, offset)


def parse_directory(raw: bytes, count: int) -> list[Bitmap]:
    """Decode ``count`` bitmap directory entries (each padded to 8 bytes)."""
    out: list[Bitmap] = []
    pos = 0
    for _ in range(count):
        if pos + _DIR_ENTRY.size > len(raw):
            break
        table_off, table_size, flags, _type, gran, name_len, extra = _DIR_ENTRY.unpack_from(
            raw, pos
        )
        name_at = pos + _DIR_ENTRY.size + extra
        name = raw[name_at : name_at + name_len].decode("utf-8", "replace")
        out.append(Bitmap(name, table_off, table_size, flags, gran))
        pos = (name_at + name_len + 7) & ~7
    return out
