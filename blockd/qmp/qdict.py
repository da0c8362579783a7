"""QEMU's QDict member order.

QEMU builds every reply and event as a QDict and serialises it by walking the
hash table: bucket ``tdb_hash(key) % 512`` ascending, and within one bucket the
most recently inserted key first (``QLIST_INSERT_HEAD``).  That is why QEMU
prints ``{"micro": 22, "minor": 2, "major": 7}`` and puts ``"id"`` before
``"error"``.  Byte-exact replies need the same order, and the same walk decides
which of several bad envelope members QEMU reports first.
"""

from __future__ import annotations

from typing import Any

_BUCKETS = 512
_bucket_cache: dict[str, int] = {}


def _bucket(key: str) -> int:
    try:
        return _bucket_cache[key]
    except KeyError:
        pass
    data = key.encode("utf-8", "surrogatepass")
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    bucket = ((1103515243 * value + 12345) & 0xFFFFFFFF) % _BUCKETS
    if len(_bucket_cache) < 65536:
        _bucket_cache[key] = bucket
    return bucket


def qdict_keys(d: dict[str, Any]) -> list[str]:
    """Keys of ``d`` (insertion order = QEMU's insertion order) in QDict walk order."""
    if len(d) < 2:
        return list(d)
    # Stable sort on (bucket, -insertion index): later insertions first per bucket.
    indexed = [(_bucket(k), -i, k) for i, k in enumerate(d)]
    indexed.sort()
    return [k for _, _, k in indexed]


def qdict_ordered(obj: Any) -> Any:
    """A deep copy of ``obj`` whose dicts are in QDict walk order."""
    if isinstance(obj, dict):
        return {k: qdict_ordered(obj[k]) for k in qdict_keys(obj)}
    if isinstance(obj, list):
        return [qdict_ordered(v) for v in obj]
    return obj
