"""The lean qemu-io parsers (getopt, cvtnum) against plain reference versions.

getopt() looks option letters up in a per-optstring table and shares Opt
objects between calls; cvtnum() has a digits fast path and a memo.  These
properties check they give exactly what the straightforward algorithms give.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from blockd.tools.qemuio.fmt import INT64_MAX, CvtnumError, cvtnum
from blockd.tools.qemuio.getopt import Opt, OptError, getopt


def _reference_getopt(
    argv: list[str], optstring: str
) -> tuple[list[tuple[str, str | None] | str], list[str]]:
    """glibc getopt() with permutation, scanning optstring for every letter."""
    prog = argv[0]
    items: list[tuple[str, str | None] | str] = []
    operands: list[str] = []
    i = 1
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            operands.extend(argv[i:])
            break
        if not word.startswith("-") or word == "-":
            operands.append(word)
            continue
        j = 1
        while j < len(word):
            c = word[j]
            j += 1
            pos = optstring.find(c)
            if c == ":" or pos < 0:
                items.append(f"{prog}: invalid option -- '{c}'\n")
                return items, operands + argv[i:]
            if pos + 1 < len(optstring) and optstring[pos + 1] == ":":
                if j < len(word):
                    items.append((c, word[j:]))
                elif i < len(argv):
                    items.append((c, argv[i]))
                    i += 1
                else:
                    items.append(f"{prog}: option requires an argument -- '{c}'\n")
                    return items, operands
                break
            items.append((c, None))
    return items, operands


_WORDS = st.one_of(
    st.sampled_from(["-q", "-P", "0x5a", "-qP", "-Pq", "--", "-", "", "-z", "-:", "-s", "64k"]),
    st.text(alphabet="-qPzsvC:0123x ", max_size=5),
)


@settings(max_examples=400, deadline=None)
@given(
    words=st.lists(_WORDS, max_size=8),
    optstring=st.sampled_from(["bcCfnpP:qs:uz", "CP:qv", "P:", "v", "bCl:pP:qs:v", ""]),
)
def test_getopt_matches_reference(words: list[str], optstring: str) -> None:
    argv = ["write", *words]
    items, operands = getopt(argv, optstring)
    ref_items, ref_operands = _reference_getopt(argv, optstring)
    got = [
        it.message if isinstance(it, OptError) else (it.char, it.arg)
        for it in items
        if isinstance(it, (Opt, OptError))
    ]
    assert got == ref_items
    assert operands == ref_operands


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789", min_size=1, max_size=22))
def test_cvtnum_digits(s: str) -> None:
    for _ in range(2):  # the second call may come from the memo
        if int(s) > INT64_MAX:
            try:
                cvtnum(s)
            except CvtnumError as e:
                assert e.errno < 0
            else:
                raise AssertionError(f"{s} should be out of range")
        else:
            assert cvtnum(s) == int(s)


def test_cvtnum_units_memoized_consistently() -> None:
    for s, want in [("64k", 65536), ("1M", 1 << 20), ("2G", 2 << 30), ("64K", 65536), ("0b", 0)]:
        assert cvtnum(s) == want
        assert cvtnum(s) == want
