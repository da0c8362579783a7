"""Unit tests of the active commit's dirty map (no daemon needed)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from blockd.jobs.mirror import DirtyMap, default_granularity

G = 65536


def test_set_reset_count_and_bytes() -> None:
    m = DirtyMap(10 * G + 4096, G)
    assert m.count == 0 and m.dirty_bytes() == 0 and m.next_run(G) is None
    m.set(G + 1, 1)  # one byte dirties its whole chunk
    assert m.count == 1 and m.dirty_bytes() == G
    m.set(G, 3 * G)  # overlapping: chunks 1..3
    assert m.count == 3
    assert m.next_run(10 * G) == (G, 3 * G)
    assert m.next_run(2 * G) == (G, 2 * G)
    m.reset(G, G)
    assert m.next_run(10 * G) == (2 * G, 2 * G)
    # The short last chunk counts only its real length.
    m.set(10 * G, 10)
    assert m.dirty_bytes() == 2 * G + 4096
    assert m.next_run(10 * G) == (2 * G, 2 * G)
    m.reset(0, 10 * G + 4096)
    assert m.count == 0 and m.next_run(G) is None


def test_hint_goes_back_for_earlier_writes() -> None:
    m = DirtyMap(8 * G, G)
    m.set(6 * G, G)
    assert m.next_run(G) == (6 * G, G)
    m.reset(6 * G, G)
    m.set(0, 1)
    assert m.next_run(G) == (0, G)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 20 * G), st.integers(0, 4 * G)),
                max_size=40))
def test_matches_a_set_of_chunks(ops: list[tuple[bool, int, int]]) -> None:
    length = 16 * G + 512
    m = DirtyMap(length, G)
    model: set[int] = set()
    for is_set, off, n in ops:
        chunks = set(range(off // G, min(-(-length // G), -(-(off + n) // G)))) if n else set()
        if is_set:
            m.set(off, n)
            model |= chunks
        else:
            m.reset(off, n)
            model -= chunks
        assert m.count == len(model)
    # Walking the runs visits exactly the dirty chunks, in order.
    seen: list[int] = []
    while (run := m.next_run(3 * G)) is not None:
        off, n = run
        assert off % G == 0 and 0 < n <= 3 * G
        seen += list(range(off // G, -(-(off + n) // G)))
        m.reset(off, n)
    assert seen == sorted(model)


def test_default_granularity_follows_cluster_size() -> None:
    class Fake:
        def __init__(self, cs: int) -> None:
            self.cluster_size = cs

    assert default_granularity(Fake(512)) == 4096  # type: ignore[arg-type]
    assert default_granularity(Fake(65536)) == 65536  # type: ignore[arg-type]
    assert default_granularity(Fake(2 << 20)) == 65536  # type: ignore[arg-type]
