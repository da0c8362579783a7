"""QEMU's QDict member order.

QEMU builds every reply and event as a QDict and serialises it by walking the
hash table: bucket ``tdb_hash(key) % 512`` ascending, and within one bucket the
most recently inserted key first (``QLIST_INSERT_HEAD``).  That is why QEMU
prints ``{"micro": 22, "minor": 2, "major": 7}`` and puts ``"id"`` before
``"error"``.  Byte-exact replies need the same order, and the same walk decides
which of several bad envelope members QEMU reports first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

QDICT_BUCKETS = 512
_bucket_cache: dict[str, int] = {}


def tdb_hash(key: str) -> int:
    """QDict's string hash (qobject/qdict.c) over QEMU's modified UTF-8 key
    bytes, where U+0000 is the two bytes C0 80."""
    data = key.encode("utf-8", "surrogatepass").replace(b"\0", b"\xc0\x80")
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def _bucket(key: str) -> int:
    try:
        return _bucket_cache[key]
    except KeyError:
        pass
    bucket = tdb_hash(key) % QDICT_BUCKETS
    if len(_bucket_cache) < 65536:
        _bucket_cache[key] = bucket
    return bucket


def qdict_order(keys: Iterable[str]) -> list[str]:
    """Walk order of a QDict whose keys were inserted in ``keys`` order."""
    keys = list(keys)
    if len(keys) < 2:
        return keys
    # Sort on (bucket, -insertion index): later insertions first per bucket.
    indexed = [(_bucket(k), -i, k) for i, k in enumerate(keys)]
    indexed.sort()
    return [k for _, _, k in indexed]


_order_cache: dict[tuple[str, ...], list[str]] = {}


def qdict_keys(d: dict[str, Any]) -> list[str]:
    """Keys of ``d`` (insertion order = QEMU's insertion order) in QDict walk order.

    Replies reuse a few shapes over and over, so orders are cached by key tuple.
    """
    if len(d) < 2:
        return list(d)
    shape = tuple(d)
    order = _order_cache.get(shape)
    if order is None:
        order = qdict_order(shape)
        if len(_order_cache) < 4096:
            _order_cache[shape] = order
    return order


def qdict_ordered(obj: Any) -> Any:
    """A deep copy of ``obj`` whose dicts are in QDict walk order."""
    if isinstance(obj, dict):
        return {k: qdict_ordered(obj[k]) for k in qdict_keys(obj)}
    if isinstance(obj, list):
        return [qdict_ordered(v) for v in obj]
    return obj
