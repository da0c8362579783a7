"""How many L2 entries read the same way as the first one, without a Python
loop per cluster.

``block_status`` needs only the first extent of a range, but a job asks for
ranges of hundreds of MiB (thousands of clusters) over and over; classifying
each cluster in Python made those queries the biggest CPU cost on the event
loop during a block job.  The common shapes (a run of contiguous data
clusters, a run of identical entries) are recognised with list comparisons,
which run in C; whatever is left is decided entry by entry with the same rule
``Qcow2Driver._map`` merges extents by, so the answer is the same.
"""

from __future__ import annotations

from blockd.drivers.qcow2.cluster import (
    L2E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    ClusterType,
    cluster_type,
)


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two equally long lists
    (a handful of C-level slice comparisons)."""
    lo, hi = 0, len(a)
    if a == b:
        return hi
    # Invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi].
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def leading_run(entries: list[int], cluster_size: int) -> int:
    """Number of leading standard L2 entries (at least 1) that form one extent
    with ``entries[0]``: the same cluster type and COPIED flag, host clusters
    contiguous for data and preallocated zero clusters; a compressed cluster
    is an extent of its own."""
    n = len(entries)
    if n <= 1:
        return n
    e0 = entries[0]
    ct = cluster_type(e0)
    if ct == ClusterType.COMPRESSED:
        return 1
    contiguous = ct in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC)
    if contiguous:
        expected = list(range(e0, e0 + n * cluster_size, cluster_size))
    else:
        expected = [e0] * n
    k = _common_prefix(entries, expected)
    # Entries with other (reserved) bits set can still merge: the exact rule.
    base = e0 & L2E_OFFSET_MASK
    copied = e0 & OFLAG_COPIED
    while k < n:
        e = entries[k]
        if e & OFLAG_COMPRESSED or cluster_type(e) != ct or (e & OFLAG_COPIED) != copied:
            break
        if contiguous and (e & L2E_OFFSET_MASK) != base + k * cluster_size:
            break
        k += 1
    return k
