"""QEMU-exact streaming JSON parser (blockd.qmp.json_parser).

Expected results are QEMU 7.2's (qemu-storage-daemon 7.2.22 replies recorded in
shared/reference and re-checked by tests/test_json_vs_qsd.py).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockd.qmp import json_parser
from blockd.qmp.errors import GenericError
from blockd.qmp.json_parser import (
    MAX_NESTING,
    MAX_TOKEN_COUNT,
    MAX_TOKEN_SIZE,
    JSONParseError,
    JSONStreamParser,
    qemu_decode,
    qobject_from_json,
)

E = JSONParseError


def err(text: str) -> JSONParseError:
    return JSONParseError("JSON parse error, " + text)


EXPECTING = err("expecting value")


def same(a: Any, b: Any) -> bool:
    """Equality that also insists on equal types (1 vs 1.0) and dict order.

    Iterative: values may be nested 1024 deep.
    """
    todo = [(a, b)]
    while todo:
        x, y = todo.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if list(x) != list(y):
                return False
            todo.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            todo.extend(zip(x, y, strict=True))
        elif isinstance(x, float):
            if math.copysign(1.0, x) != math.copysign(1.0, y) or x != y:
                return False
        elif x != y:
            return False
    return True


def same_list(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))


def parse(data: bytes, *, fast: bool = True) -> list[Any]:
    return JSONStreamParser(fast=fast).feed(data)


def both(data: bytes) -> list[Any]:
    """Parse with and without the fast paths; they must agree."""
    fast = parse(data)
    exact = parse(data, fast=False)
    assert same_list(fast, exact), (data, fast, exact)
    return fast


# (input, expected) -- QEMU 7.2's answers
RECORDED: list[tuple[bytes, list[Any]]] = [
    # shared/reference/qmp-protocol.md §6, qsd72-transcripts.txt t1/t2
    (b'{"execute":"query-version",}\n', [EXPECTING]),
    (b'{"execute" "query-version"}\n', [err("missing : in object pair")]),
    (b"{foo}\n", [err("invalid keyword 'foo'")]),
    (b"garbage\n", [err("invalid keyword 'garbage'")]),
    (b"}\n", [EXPECTING]),
    (b"]\n", [EXPECTING]),
    (b'{"a":1}}\n', [{"a": 1}, EXPECTING]),
    (b"\xff\n", [err("stray '\ufffd'")]),
    (
        b'{"execute":"query-version","id":"\x01"}\n',
        [err("stray '\"\x01'"), EXPECTING],
    ),
    (b"{'execute':'query-version','id':25}\n", [{"execute": "query-version", "id": 25}]),
    (b"[1,2,3]\n", [[1, 2, 3]]),
    (b'"hello"\n', ["hello"]),
    (b"42\n", [42]),
    (b'{"execute":"query-version", \n "id":20}\n', [{"execute": "query-version", "id": 20}]),
    (
        b'{"execute":"query-version", "id":17}{"execute":"query-version", "id":18}\n',
        [{"execute": "query-version", "id": 17}, {"execute": "query-version", "id": 18}],
    ),
    (b'{"execute":"query-version","id":null}\n', [{"execute": "query-version", "id": None}]),
    # re-checked against qemu-storage-daemon 7.2 (see test_json_vs_qsd.py)
    (b'{"id":1,"id":2}\n', [err("duplicate key")]),
    (b'{"id":"\\uFFFF"}\n', [err("\\uFFFF is not a valid Unicode character")]),
    (b'{"id":"\\uD800"}\n', [err("\\uD800 is not a valid Unicode character")]),
    (b'{"id":"\\u12"}\n', [err('\\u12" is not a valid Unicode character')]),
    (b'{"id":01}\n', [err("stray '01'"), EXPECTING]),
    (b'{"id":1e999}\n', [{"id": math.inf}]),
    (b'{"id":"\xc0\x80"}\n', [{"id": "\x00"}]),
    (b'{"id":"\\u0000"}\n', [{"id": "\x00"}]),
    (b'{"id":"\xef\xbf\xbe"}\n', [err("invalid UTF-8 sequence in string")]),
    (b'{"id":"\xc3"}\n', [err("invalid UTF-8 sequence in string")]),
    (b'{"id":"a\x00b"}\n', [err("stray '\"a'"), EXPECTING]),
    (b"\xc3(\n", [err("stray '\ufffd'")]),
    (b'{"id":"\xff"}\n', [err("stray '\"\ufffd'"), EXPECTING]),
    (
        b'{"id":"\\uD83D\\uDE00\\u007f\\u00e9/\\u001f"}\n',
        [{"id": "\U0001f600\x7f\xe9/\x1f"}],
    ),
    (
        b'{"id":[0.1,-0.0,1.0,123456789012345678901234567890,-9223372036854775809,'
        b"18446744073709551615,-9223372036854775808,-0]}\n",
        [
            {
                "id": [
                    0.1,
                    -0.0,
                    1.0,
                    1.2345678901234568e29,
                    -9.223372036854775809e18,
                    18446744073709551615,
                    -9223372036854775808,
                    0,
                ]
            }
        ],
    ),
]


@pytest.mark.parametrize(("data", "expected"), RECORDED)
def test_recorded(data: bytes, expected: list[Any]) -> None:
    assert same_list(both(data), expected)


# Further cases, derived from QEMU's lexer table and parser (and checked against
# QSD by the differential test).
DERIVED: list[tuple[bytes, list[Any]]] = [
    (b"", []),
    (b" \t\r\n", []),
    (b"{}", [{}]),
    (b"[]", [[]]),
    (b"[[[]]]", [[[[]]]]),
    (b'{"a":{"b":[{}]}}', [{"a": {"b": [{}]}}]),
    # single quotes, \' in both kinds of strings, " inside '...'
    (b"{'a':'it\\'s \"q\"'}", [{"a": 'it\'s "q"'}]),
    (b'{"a":"it\\\'s"}', [{"a": "it's"}]),
    (b'["\\"\\\\\\/\\b\\f\\n\\r\\t"]', [['"\\/\b\f\n\r\t']]),
    (b'["\\x"]', [err("invalid escape sequence in string")]),
    (b'["\\\xc3\xa9"]', [err("invalid escape sequence in string")]),
    (b'["\\uD83D"]', [err("\\uD83D is not a valid Unicode character")]),
    (b'["\\uD83D\\u0041"]', [err("\\uD83D is not a valid Unicode character")]),
    (b'["\\uDE00"]', [err("\\uDE00 is not a valid Unicode character")]),
    (b'["\\uD83F\\uDFFE"]', [err("\\uD83F\\uDFFE is not a valid Unicode character")]),
    (b'["\\uFDD0"]', [err("\\uFDD0 is not a valid Unicode character")]),
    (b'["\\u1"]', [err('\\u1" is not a valid Unicode character')]),
    (b'["\\uzzzz"]', [err("\\uzzzz is not a valid Unicode character")]),
    (b'["\\u12\xc3\xa9"]', [err("\\u12\xe9 is not a valid Unicode character")]),
    (b'["\\u123\xc3\xa9"]', [err("\\u123\ufffd is not a valid Unicode character")]),
    (b'["\xed\xa0\x80"]', [err("invalid UTF-8 sequence in string")]),
    (b'["\xe0\x80\x80"]', [err("invalid UTF-8 sequence in string")]),
    (b'["\xf4\x90\x80\x80"]', [err("invalid UTF-8 sequence in string")]),
    (b'["\xf8\x88\x80\x80\x80"]', [err("invalid UTF-8 sequence in string")]),
    (b'["\xf0\x9f\x98\x80\xc3\xa9\x7f"]', [["\U0001f600\xe9\x7f"]]),
    # errors inside strings: the first one (left to right) wins
    (b'["\\x\xc3("]', [err("invalid escape sequence in string")]),
    (b'["\xc3(\\x"]', [err("invalid UTF-8 sequence in string")]),
    # numbers
    (b"[0,-0,1,-1,1.5,-1.5e3,1E+2,2e-1]", [[0, 0, 1, -1, 1.5, -1500.0, 100.0, 0.2]]),
    (b"[9223372036854775807,9223372036854775808]", [[9223372036854775807, 9223372036854775808]]),
    (b"[18446744073709551616]", [[1.8446744073709552e19]]),
    (b"[-9223372036854775808,-9223372036854775809]", [[-(1 << 63), -9.223372036854776e18]]),
    (b"[1e400,-1e400,1e-400]", [[math.inf, -math.inf, 0.0]]),
    (b"[1.]", [err("stray '1.]'")]),
    (b"[-]", [err("stray '-]'")]),
    (b"[1e]", [err("stray '1e]'")]),
    (b"[1e+]", [err("stray '1e+]'")]),
    (b"[.5]", [err("stray '.'"), EXPECTING]),
    (b"[+1]", [err("stray '+'"), EXPECTING]),
    (b"[1x]", [err("expected separator in list")]),
    (b"[0x10]", [err("expected separator in list")]),
    (b"[x1]", [err("invalid keyword 'x'")]),
    (b"[1 2]", [err("expected separator in list")]),
    # json-lexer.c's IN_ZERO has no exponent: "0e5" is 0, keyword "e", 5
    (b"[0e5]", [err("expected separator in list")]),
    (b"[0.5e5, 5e05, 5e+0]", [[50000.0, 500000.0, 5.0]]),
    (b"[1,]", [EXPECTING]),
    (b"[,1]", [EXPECTING]),
    (b"[}", [EXPECTING]),
    (b"[{]}", [EXPECTING]),
    (b'{"a" 1}', [err("missing : in object pair")]),
    (b'{"a":1 "b":2}', [err("expected separator in dict")]),
    (b'{"a":}', [EXPECTING]),
    (b"{1:2}", [err("key is not a string in object")]),
    (b"{[1,x]:2}", [err("invalid keyword 'x'")]),
    (b"{[1,2]:2}", [err("key is not a string in object")]),
    (b"{null:2}", [err("key is not a string in object")]),
    (b'{"a":1,}', [EXPECTING]),
    (b'{"a":1,"a":x}', [err("invalid keyword 'x'")]),
    (b'{"a":[1,2}', []),  # the streamer still waits for a "]"
    (b'{"a":[1,2}]', [err("expected separator in list")]),
    (b"tru\n", [err("invalid keyword 'tru'")]),
    (b"true false null\n", [True, False, None]),
    (b"nulls\n", [err("invalid keyword 'nulls'")]),
    (b"True\n", [err("stray 'T'")]),
    (b"%d\n", [err("stray '%'")]),
    # lexical errors and recovery: skip to a structural char, control char, FE/FF
    (b'{"a":@@ "x" 1 2 3}{"b":1}', [err("stray '@'"), EXPECTING, {"b": 1}]),
    (b'{"a":\x01}', [err("stray '\x01'"), EXPECTING]),
    (b"\x01\x02\n", [err("stray '\x01'"), err("stray '\x02'")]),
    (b"\xff\xff\n", [err("stray '\ufffd'"), err("stray '\ufffd'")]),
    (b"\xfe\n", [err("stray '\ufffd'")]),
    (b"\x00\n", [err("stray ''")]),
    (b'"abc\xfe', [err("stray '\"abc\ufffd'")]),
    (b'"abc\n', [err("stray '\"abc\n'")]),
    (b"@\tx\ny\n", [err("stray '@'"), err("invalid keyword 'y'")]),
    (b'[1,\xff"a"]', [err("stray '\ufffd'"), EXPECTING]),
    (b"[1\xff]", [err("stray '\ufffd'"), EXPECTING]),
    (b"[1,2", []),
    (b'{"a":1}\xff{"b":2}', [{"a": 1}, err("stray '\ufffd'"), {"b": 2}]),
    (b'{"a":1}\xffxyz"q"{"b":2}', [{"a": 1}, err("stray '\ufffd'"), {"b": 2}]),
    (b'{"a":1}\xff\n{"b":2}', [{"a": 1}, err("stray '\ufffd'"), {"b": 2}]),
]


@pytest.mark.parametrize(("data", "expected"), DERIVED)
def test_derived(data: bytes, expected: list[Any]) -> None:
    assert same_list(both(data), expected)


def test_long_keyword_message_is_cut_like_vsnprintf() -> None:
    kw = b"x" * 5000
    [e] = both(kw + b"\n")
    assert isinstance(e, JSONParseError)
    # "invalid keyword '...'" is formatted into a 1024-byte buffer
    assert e.desc == "JSON parse error, " + ("invalid keyword '" + "x" * 5000)[:1023]


def test_stray_keeps_the_whole_token() -> None:
    body = b"a" * 100000
    assert same_list(both(b'"' + body + b"\x01"), [err("stray '\"" + "a" * 100000 + "\x01'")])


STREAM = (
    b'{"execute":"query-version","id":1}\r\n'
    b'{\'execute\':\'x\',"id":"a\\u00e9\\"b"}'
    b'{"a":[1,2.5,-0,{"b":null}],"c":true}\n'
    b"}garbage\n"
    b'{"id":"\x01"}\n'
    b'"str"42 [1,2] \xff\n'
    b'{"k":"\xc3\xa9\xf0\x9f\x98\x80","n":-12e-1}\n'
    b"[1.5, 1e400, 18446744073709551616]\n"
)
STREAM_RESULT: list[Any] = [
    {"execute": "query-version", "id": 1},
    {"execute": "x", "id": 'a\xe9"b'},
    {"a": [1, 2.5, 0, {"b": None}], "c": True},
    EXPECTING,
    err("invalid keyword 'garbage'"),
    err("stray '\"\x01'"),
    EXPECTING,
    "str",
    42,
    [1, 2],
    err("stray '\ufffd'"),
    {"k": "\xe9\U0001f600", "n": -1.2},
    [1.5, math.inf, 1.8446744073709552e19],
]


@pytest.mark.parametrize("fast", [True, False])
def test_stream_in_one_chunk(fast: bool) -> None:
    assert same_list(parse(STREAM, fast=fast), STREAM_RESULT)


@pytest.mark.parametrize("fast", [True, False])
def test_stream_split_at_every_byte(fast: bool) -> None:
    for i in range(len(STREAM) + 1):
        p = JSONStreamParser(fast=fast)
        got = p.feed(STREAM[:i]) + p.feed(STREAM[i:])
        assert same_list(got, STREAM_RESULT), i


@pytest.mark.parametrize("fast", [True, False])
def test_stream_byte_by_byte(fast: bool) -> None:
    p = JSONStreamParser(fast=fast)
    got: list[Any] = []
    for i in range(len(STREAM)):
        got += p.feed(STREAM[i : i + 1])
    assert same_list(got, STREAM_RESULT)


def test_stream_three_way_splits() -> None:
    n = len(STREAM)
    for i in range(0, n + 1, 7):
        for j in range(i, n + 1, 5):
            p = JSONStreamParser()
            got = p.feed(STREAM[:i]) + p.feed(STREAM[i:j]) + p.feed(STREAM[j:])
            assert same_list(got, STREAM_RESULT), (i, j)


def test_reset_forgets_partial_input() -> None:
    p = JSONStreamParser()
    assert p.feed(b'{"execute": "query-ver') == []
    p.reset()
    assert p.feed(b'{"a": 1}') == [{"a": 1}]
    assert p.feed(b'"open') == []
    p.reset()
    assert p.feed(b"[2]") == [[2]]


def test_typical_command_and_order_kept() -> None:
    cmd = b'{"execute": "query-version", "id": "__qmp#00001"}\n'
    [v] = parse(cmd)
    assert list(v.items()) == [("execute", "query-version"), ("id", "__qmp#00001")]
    [v] = parse(b'{"z":1,"a":2,"m":3}')
    assert list(v) == ["z", "a", "m"]


def test_fast_path_refuses_what_json_accepts_differently() -> None:
    # json.loads would accept all of these (or read them differently).
    assert both(b'{"a":1,"a":2}') == [err("duplicate key")]
    assert both(b'{"a":"\\ud800"}') == [err("\\ud800 is not a valid Unicode character")]
    assert both(b'{"a":"\\uffff"}') == [err("\\uffff is not a valid Unicode character")]
    assert same_list(both(b'{"a":99999999999999999999}'), [{"a": 1e20}])
    assert same_list(both(b'{"a":-99999999999999999999}'), [{"a": -1e20}])
    assert both(b'{"a":NaN}') == [err("stray 'N'"), EXPECTING]
    assert both(b'{"a":Infinity}') == [err("stray 'I'"), EXPECTING]
    assert both(b'{"a":"\t"}') == [err("stray '\"\t'"), EXPECTING]


# --------------------------------------------------------------------------
# limits


def test_nesting_limit() -> None:
    p = JSONStreamParser()
    out = p.feed(b"[" * MAX_NESTING)
    assert out == []
    out = p.feed(b"[")
    assert out == [E("JSON nesting depth limit exceeded")]
    # the refused "[" and the whole queue were dropped
    assert p.feed(b"1]") == [1, EXPECTING]
    assert p.feed(b"[2]") == [[2]]


def test_nesting_limit_counts_braces_and_brackets_together() -> None:
    half = MAX_NESTING // 2
    data = (b'{"a":[' * half) + b'{"b":1'
    # the 1025th opening bracket is refused; '"b"' is then a value of its own
    assert both(data) == [E("JSON nesting depth limit exceeded"), "b", EXPECTING]
    deep = (b'{"a":[' * (half - 1)) + b"{}" + (b"]}" * (half - 1))
    [v] = both(deep)
    assert isinstance(v, dict)


def test_deep_nesting_within_limit_parses() -> None:
    data = b"[" * MAX_NESTING + b"]" * MAX_NESTING
    [v] = both(data)
    depth = 0
    while v:
        v = v[0]
        depth += 1
    assert depth == MAX_NESTING - 1


def test_token_count_limit() -> None:
    # MAX_TOKEN_COUNT tokens are fine, one more is not.
    n = (MAX_TOKEN_COUNT - 4) // 2
    ok = b"[" + b"1," * n + b"[]]"
    assert 1 + 2 * n + 3 == MAX_TOKEN_COUNT
    p = JSONStreamParser()
    [v] = p.feed(ok)
    assert isinstance(v, list)
    assert len(v) == n + 1
    assert v[-1] == []
    del v
    bad = b"[" + b"1," * (n + 1) + b"[]]"
    # token MAX_TOKEN_COUNT + 1 (the first "]") is refused, then "]" stands alone
    assert p.feed(bad) == [E("JSON token count limit exceeded"), EXPECTING]


def test_token_size_limit_complete_token() -> None:
    # A complete token of MAX_TOKEN_SIZE - 1 bytes is fine, MAX_TOKEN_SIZE is not.
    ok = b'"' + b"a" * (MAX_TOKEN_SIZE - 3) + b'"'
    [v] = parse(ok)
    assert v == "a" * (MAX_TOKEN_SIZE - 3)
    del v
    bad = b'"' + b"a" * (MAX_TOKEN_SIZE - 2) + b'"'
    assert parse(bad) == [E("JSON token size limit exceeded")]


def test_token_size_limit_partial_token_is_cut() -> None:
    # The lexer cuts a token as it passes MAX_TOKEN_SIZE and goes on lexing the
    # rest from its start state, as QEMU does.
    p = JSONStreamParser()
    got = p.feed(b'"' + b"a" * (MAX_TOKEN_SIZE - 1))
    assert got == []
    got = p.feed(b"abc\n")
    assert got == [E("JSON token size limit exceeded"), err("invalid keyword 'bc'")]
    assert p.feed(b'{"x":1}') == [{"x": 1}]


def test_token_size_limit_counts_the_whole_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_parser, "MAX_TOKEN_SIZE", 64)
    # refused when token_size + len + 1 > MAX; strings of 15 bytes
    s = b'"' + b"a" * 13 + b'"'
    # '[' s ',' s ',' s ',' = 49 bytes; the 4th string would make 49 + 15 + 1
    assert both(b"[" + s + b"," + s + b"," + s + b"," + s + b"]") == [
        E("JSON token size limit exceeded"),
        EXPECTING,
    ]
    assert same_list(both(b"[" + s + b"," + s + b"," + s + b"]"), [["a" * 13] * 3])


def test_token_size_limit_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_parser, "MAX_TOKEN_SIZE", 10)
    for fast in (True, False):
        # the lexer cuts at 11 bytes: '"aaaaaaaaaa' then lexes 'bb"' afresh
        assert parse(b'"aaaaaaaaaabb"\n', fast=fast) == [
            E("JSON token size limit exceeded"),
            err("invalid keyword 'bb'"),
            err("stray '\"\n'"),
        ]
        # numbers and keywords are cut the same way
        assert parse(b"123456789012345 ", fast=fast) == [E("JSON token size limit exceeded"), 2345]
        assert parse(b"abcdefghijkl ", fast=fast) == [
            E("JSON token size limit exceeded"),
            err("invalid keyword 'l'"),
        ]


@pytest.mark.parametrize("fast", [True, False])
def test_endless_string_memory_is_bounded(fast: bool) -> None:
    p = JSONStreamParser(fast=fast)
    chunk = b"a" * (4 << 20)
    errors = 0
    p.feed(b'{"execute":"')
    for _ in range(40):  # 160 MiB of one string
        out = p.feed(chunk)
        errors += len(out)
        assert all(o == E("JSON token size limit exceeded") for o in out)
        assert len(p._tok) <= MAX_TOKEN_SIZE + 1
        assert len(p._queue) <= MAX_TOKEN_SIZE
    assert errors == 2
    p.reset()


def test_endless_nesting_memory_is_bounded() -> None:
    p = JSONStreamParser()
    errors = 0
    for _ in range(100):
        errors += len(p.feed(b"[" * 1000))
        assert len(p._queue) <= 2 * (MAX_NESTING + 1)
    assert errors == 100 * 1000 // (MAX_NESTING + 1)


# --------------------------------------------------------------------------
# properties

# Text QEMU can carry: no surrogates (category Cs), no noncharacters.
_NONCHARS = (
    [chr(c) for c in range(0xFDD0, 0xFDF0)]
    + [chr(p * 0x10000 + 0xFFFE) for p in range(17)]
    + [chr(p * 0x10000 + 0xFFFF) for p in range(17)]
)
qemu_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters=_NONCHARS),
    max_size=20,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | qemu_text,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(qemu_text, children, max_size=5)
    ),
    max_leaves=25,
)


def qemu_view(v: Any) -> Any:
    """What QEMU's parser makes of json.dumps(v): out-of-range integers -> double."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return v if -(1 << 63) <= v <= (1 << 64) - 1 else float(v)
    if isinstance(v, list):
        return [qemu_view(x) for x in v]
    if isinstance(v, dict):
        return {k: qemu_view(x) for k, x in v.items()}
    return v


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_property_roundtrip_json_dumps(v: Any, ascii_only: bool) -> None:
    text = json.dumps(v, ensure_ascii=ascii_only).encode()
    if not isinstance(v, dict | list | str):
        text += b"\n"  # a top-level number or keyword ends at the next byte
    assert same_list(both(text), [qemu_view(v)])


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=4), st.data())
def test_property_concatenated_values_any_chunking(values: list[Any], data: st.DataObject) -> None:
    text = b"\n".join(json.dumps(v).encode() for v in values) + b"\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=5)))
    p = JSONStreamParser()
    got: list[Any] = []
    prev = 0
    for c in [*cuts, len(text)]:
        got += p.feed(text[prev:c])
        prev = c
    assert same_list(got, [qemu_view(v) for v in values])


GOOD = b'{"execute":"query-version","id":"after"}'


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_property_random_bytes_never_raise_and_recover(junk: bytes) -> None:
    for fast in (True, False):
        p = JSONStreamParser(fast=fast)
        out = p.feed(junk)
        assert all(isinstance(o, JSONParseError | dict | list | str | int | float) for o in out)
        # 0xFF always ends a token and clears the queue; "\n" ends recovery
        out = p.feed(b"\xff\n" + GOOD)
        assert same(out[-1], {"execute": "query-version", "id": "after"})
        assert isinstance(out[-2], JSONParseError)


FRAGMENTS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b" ",
    b"\n",
    b"\r\n",
    b"\t",
    b'"a"',
    b"'b'",
    b'"\\u00e9"',
    b'"\\uD83D\\uDE00"',
    b'"\\ud800"',
    b'"\\\'"',
    b"'\\\"'",
    b'"\\q"',
    b'"x',
    b"'",
    b'"',
    b"\\",
    b"1",
    b"0",
    b"-",
    b"-0",
    b"01",
    b"1.5",
    b"1e5",
    b"1.",
    b"e",
    b"18446744073709551616",
    b"0e5",
    b"-0E+1",
    b"0.0e1",
    b"true",
    b"null",
    b"false",
    b"nul",
    b"foo",
    b"\x01",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"\xfe",
    b"\xc3\xa9",
    b"\xc3",
    b"\xc0\x80",
    b"\xef\xbf\xbf",
    b'{"a":1}',
    b'{"a":1,"a":2}',
    b"[1,2]",
    b"{'k':[true,null]}",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30), st.data())
def test_property_fast_equals_exact(frags: list[bytes], data: st.DataObject) -> None:
    text = b"".join(frags)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=4)))
    results = []
    for fast in (True, False):
        p = JSONStreamParser(fast=fast)
        got: list[Any] = []
        prev = 0
        for c in [*cuts, len(text)]:
            got += p.feed(text[prev:c])
            prev = c
        results.append(got)
    whole = JSONStreamParser(fast=False).feed(text)
    assert same_list(results[0], results[1])
    assert same_list(results[1], whole)


def test_qemu_decode() -> None:
    assert qemu_decode(b"abc") == "abc"
    assert qemu_decode(b"\xc3\xa9") == "\xe9"
    assert qemu_decode(b"\xc0\x80") == "\x00"
    assert qemu_decode(b"\xff") == "\ufffd"
    assert qemu_decode(b"\xc3(") == "\ufffd("  # stops before the non-continuation byte
    assert qemu_decode(b"\xed\xa0\x80x") == "\ufffdx"  # one U+FFFD per complete sequence
    assert qemu_decode(b"\xef\xbf\xbe") == "\ufffd"
    assert qemu_decode(b"\xe0\x80\x80") == "\ufffd"
    assert qemu_decode(b"\x80\x80") == "\ufffd\ufffd"


LIMIT_FRAGMENTS = [
    *FRAGMENTS,
    b'"aaaaaaaaaaaaaaaaaaaa"',
    b"123456789012",
    b"abcdefghijklmn",
    b"[[[",
    b"]]]",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(LIMIT_FRAGMENTS), max_size=40), st.data())
def test_property_fast_equals_exact_near_limits(frags: list[bytes], data: st.DataObject) -> None:
    # Small limits make every limit path reachable in short inputs; the fast
    # paths (json, batching) must still answer exactly like the plain machine.
    text = b"".join(frags)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=3)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(json_parser, "MAX_TOKEN_SIZE", 24)
        mp.setattr(json_parser, "MAX_TOKEN_COUNT", 9)
        mp.setattr(json_parser, "MAX_NESTING", 3)
        results = []
        for fast in (True, False):
            p = JSONStreamParser(fast=fast)
            got: list[Any] = []
            prev = 0
            for c in [*cuts, len(text)]:
                got += p.feed(text[prev:c])
                prev = c
            results.append(got)
    assert same_list(results[0], results[1]), text


# --------------------------------------------------------------------------
# whole texts: flush() and qobject_from_json (messages checked against
# qemu-img's json: filenames in test_json_vs_qsd.py)


@pytest.mark.parametrize(
    ("text", "result"),
    [
        ('{"a":1', "JSON parse error, premature EOI"),
        ("[1,", "JSON parse error, premature EOI"),
        ('{"a":1}{"b":2}', "Expecting at most one JSON value"),
        ('{"a":1}}', "Expecting at most one JSON value"),
        ("{'a':1}x", "Expecting at most one JSON value"),
        ("", "Expecting a JSON value"),
        (" \n", "Expecting a JSON value"),
        ('"abc', "JSON parse error, stray '\"abc'"),
        ('{"a":-', "JSON parse error, stray '-'"),
        ('{"a":1e', "JSON parse error, stray '1e'"),
        ('{"a":tru', "JSON parse error, invalid keyword 'tru'"),
        ("]", "JSON parse error, expecting value"),
        ('{"a":"x\x00y"}', "JSON parse error, stray '\"x'"),  # a C string ends at NUL
        ("1", 1),
        ("12", 12),
        ("1.5", 1.5),
        ("null", None),
        (' {"a": [1, "\\u00e9"]} ', {"a": [1, "\xe9"]}),
    ],
)
def test_qobject_from_json(text: str, result: Any) -> None:
    if isinstance(result, str):
        with pytest.raises(GenericError) as info:
            qobject_from_json(text)
        assert info.value.desc == result
    else:
        assert same(qobject_from_json(text), result)
        assert same(qobject_from_json(text.encode()), result)


def test_flush_finishes_or_rejects_the_partial_token() -> None:
    p = JSONStreamParser()
    assert p.feed(b"123") == []
    assert p.flush() == [123]
    assert p.feed(b"[1, tr") == []
    assert p.flush() == [err("invalid keyword 'tr'")]
    assert p.feed(b"'ab") == []
    assert p.flush() == [err("stray ''ab'")]
    assert p.feed(b"@@") == [err("stray '@'")]
    assert p.flush() == []
    assert p.feed(b'{"a":1}') == [{"a": 1}]
