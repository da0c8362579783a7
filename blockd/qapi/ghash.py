"""Which unexpected argument QEMU names first.

When a QMP object has several members the schema does not know, QEMU reports
the first one its ``GHashTable`` of unvisited keys yields.  That order follows
from two hash tables: the ``QDict`` holding the parsed JSON object (iterated
by bucket, newest entry first within a bucket) fills a GLib ``GHashTable``
(open addressing, quadratic probing, tombstones, in-place rehash on resize),
from which visited keys are removed.  This module replays both so blockd names
the same key, byte for byte.
"""

from __future__ import annotations

from blockd.qmp.qdict import qdict_order

_M32 = 0xFFFFFFFF
_MIN_SHIFT = 3
# GLib's prime_mod[] table, indexed by shift.
_PRIME_MOD = (1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381,
              32749, 65521, 131071, 262139, 524287, 1048573, 2097143, 4194301,
              8388593, 16777213, 33554393, 67108859, 134217689, 268435399,
              536870909, 1073741789, 2147483647)
_UNUSED = 0
_TOMBSTONE = 1


def _g_str_hash(key: str) -> int:
    h = 5381
    for c in key.encode("utf-8"):
        h = (h * 33 + (c - 256 if c >= 128 else c)) & _M32
    return h if h >= 2 else 2


class GHashKeys:
    """A GLib string-keyed hash table, tracking only the slot layout."""

    def __init__(self) -> None:
        self._set_shift(_MIN_SHIFT)
        self.hashes = [_UNUSED] * self.size
        self.keys: list[str | None] = [None] * self.size
        self.nnodes = 0
        self.noccupied = 0

    def _set_shift(self, shift: int) -> None:
        self.size = 1 << shift
        self.mod = _PRIME_MOD[shift]
        self.mask = self.size - 1

    def _index(self, h: int) -> int:
        return ((h * 11) & _M32) % self.mod

    def _lookup(self, key: str, h: int) -> int:
        idx = self._index(h)
        step = 0
        tomb: int | None = None
        while self.hashes[idx] != _UNUSED:
            if self.hashes[idx] == h and self.keys[idx] == key:
                return idx
            if self.hashes[idx] == _TOMBSTONE and tomb is None:
                tomb = idx
            step += 1
            idx = (idx + step) & self.mask
        return idx if tomb is None else tomb

    def insert(self, key: str) -> None:
        h = _g_str_hash(key)
        idx = self._lookup(key, h)
        old = self.hashes[idx]
        if old >= 2:
            return
        self.hashes[idx] = h
        self.keys[idx] = key
        self.nnodes += 1
        if old == _UNUSED:
            self.noccupied += 1
            self._maybe_resize()

    def remove(self, key: str) -> None:
        h = _g_str_hash(key)
        idx = self._lookup(key, h)
        if self.hashes[idx] < 2:
            return
        self.hashes[idx] = _TOMBSTONE
        self.keys[idx] = None
        self.nnodes -= 1
        self._maybe_resize()

    def _maybe_resize(self) -> None:
        occ = self.noccupied
        if (self.size > self.nnodes * 4 and self.size > 1 << _MIN_SHIFT) or (
            self.size <= occ + occ // 16
        ):
            self._resize()

    def _resize(self) -> None:
        old_size = self.size
        n = int(self.nnodes * 1.333)
        shift = 0
        while n:
            n >>= 1
            shift += 1
        self._set_shift(max(shift, _MIN_SHIFT))
        if self.size > old_size:
            self.hashes += [_UNUSED] * (self.size - old_size)
            self.keys += [None] * (self.size - old_size)
        moved = [False] * max(self.size, old_size)
        # GLib's in-place rehash: walk the old slots, evicting occupants of
        # each target slot in turn until a free one is reached.
        for i in range(old_size):
            h = self.hashes[i]
            if h < 2:
                self.hashes[i] = _UNUSED
                continue
            if moved[i]:
                continue
            self.hashes[i] = _UNUSED
            key = self.keys[i]
            self.keys[i] = None
            while True:
                idx = self._index(h)
                step = 0
                while moved[idx]:
                    step += 1
                    idx = (idx + step) & self.mask
                moved[idx] = True
                replaced_hash, replaced_key = self.hashes[idx], self.keys[idx]
                self.hashes[idx] = h
                self.keys[idx] = key
                if replaced_hash < 2:
                    break
                h, key = replaced_hash, replaced_key
        if self.size < old_size:
            del self.hashes[self.size:]
            del self.keys[self.size:]
        self.noccupied = self.nnodes

    def ordered(self) -> list[str]:
        """Every key in ``g_hash_table_iter`` order (slot order)."""
        return [k for h, k in zip(self.hashes, self.keys, strict=True)
                if h >= 2 and k is not None]

    def first(self) -> str | None:
        for h, k in zip(self.hashes, self.keys, strict=True):
            if h >= 2:
                return k
        return None


def ghash_order(keys: list[str]) -> list[str]:
    """Iteration order of a GLib string hash table filled with ``keys`` in order."""
    table = GHashKeys()
    for k in keys:
        table.insert(k)
    return table.ordered()


def unvisited_keys(keys: list[str]) -> GHashKeys:
    """The table QEMU's input visitor builds for a JSON object's keys."""
    table = GHashKeys()
    for k in qdict_order(keys):
        table.insert(k)
    return table
