"""QEMU-exact JSON output (blockd.qmp.json_encoder).

Expected strings are bytes qemu-storage-daemon 7.2 sent (shared/reference and
tests/test_json_vs_qsd.py), without the trailing CRLF.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockd.qmp.json_encoder import encode, encode_reference, format_double, quote_string
from blockd.qmp.json_parser import JSONStreamParser

VERSION = {
    "qemu": {"micro": 22, "minor": 2, "major": 7},
    "package": "Debian 1:7.2+dfsg-7+deb12u18+b3",
}

RECORDED: list[tuple[Any, str]] = [
    (
        {"QMP": {"version": VERSION, "capabilities": ["oob"]}},
        '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
        '"package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}',
    ),
    ({"return": {}, "id": "x"}, '{"return": {}, "id": "x"}'),
    ({"return": [], "id": 26}, '{"return": [], "id": 26}'),
    (
        {"return": VERSION, "id": {"a": [1, 2]}},
        '{"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
        '"package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": {"a": [1, 2]}}',
    ),
    (
        {"return": VERSION, "id": None},
        '{"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
        '"package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": null}',
    ),
    (
        {"id": 8, "error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}},
        '{"id": 8, "error": {"class": "GenericError", "desc": "Parameter \'x\' is unexpected"}}',
    ),
    (
        {"error": {"class": "GenericError", "desc": "JSON parse error, stray '\ufffd'"}},
        '{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}',
    ),
    (
        {"error": {"class": "GenericError", "desc": "JSON parse error, stray '\"\x01'"}},
        '{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\"\\u0001\'"}}',
    ),
    (
        {"error": {"class": "GenericError", "desc": 'JSON parse error, \\u12" is not a valid'}},
        '{"error": {"class": "GenericError", '
        '"desc": "JSON parse error, \\\\u12\\" is not a valid"}}',
    ),
    (
        {
            "timestamp": {"seconds": 1795250180, "microseconds": 478772},
            "event": "JOB_STATUS_CHANGE",
            "data": {"status": "created", "id": "pull0"},
        },
        '{"timestamp": {"seconds": 1795250180, "microseconds": 478772}, '
        '"event": "JOB_STATUS_CHANGE", "data": {"status": "created", "id": "pull0"}}',
    ),
    # ids echoed by qemu-storage-daemon 7.2
    (
        [
            0.1,
            1.5,
            1e300,
            -0.0,
            1.0,
            100.0,
            1e16,
            1.2345678901234568e29,
            -9.223372036854776e18,
            18446744073709551615,
            -9223372036854775808,
        ],
        "[0.10000000000000001, 1.5, 1.0000000000000001e+300, -0, 1, 100, 10000000000000000, "
        "1.2345678901234568e+29, -9.2233720368547758e+18, 18446744073709551615, "
        "-9223372036854775808]",
    ),
    (math.inf, "inf"),
    ("\U0001f600\x7f\xe9/\x1f", '"\\uD83D\\uDE00\\u007F\\u00E9/\\u001F"'),
    ("\x00", '"\\u0000"'),
]


@pytest.mark.parametrize(("obj", "text"), RECORDED)
def test_recorded(obj: Any, text: str) -> None:
    assert encode(obj) == text
    assert encode_reference(obj) == text


@pytest.mark.parametrize(
    ("obj", "text"),
    [
        ({}, "{}"),
        ([], "[]"),
        ({"a": {}, "b": []}, '{"a": {}, "b": []}'),
        ((1, "x"), '[1, "x"]'),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ("", '""'),
        (-5, "-5"),
        ('"\\/\b\f\n\r\t', '"\\"\\\\/\\b\\f\\n\\r\\t"'),
        ("\x01\x1f\x7f\x80\xff", '"\\u0001\\u001F\\u007F\\u0080\\u00FF"'),
        ("\u20ac\uffff\ufdd0\ufffd", '"\\u20AC\\uFFFD\\uFFFD\\uFFFD"'),
        ("\U0010fffd\U0001fffe", '"\\uDBFF\\uDFFD\\uFFFD"'),
        # lone surrogates: U+DC80..U+DCFF are surrogateescape'd bytes
        ("a\udcc3\udca9b", '"a\\u00E9b"'),
        ("\udcff", '"\\uFFFD"'),
        ("\ud800x", '"\\uFFFDx"'),
        ("\udcc3\u00a9", '"\\uFFFD\\u00A9"'),
        # text that merely looks like something to fix
        ("\\u00e9 1.5 [1e+5, NaN] Infinity", '"\\\\u00e9 1.5 [1e+5, NaN] Infinity"'),
        ({"1.5": "x 2.5"}, '{"1.5": "x 2.5"}'),
        (5e-324, "4.9406564584124654e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (-math.inf, "-inf"),
        (math.nan, "nan"),
        (123456.789, "123456.789"),
        (1e21, "1e+21"),
        (1e-7, "9.9999999999999995e-08"),
        (2**63, "9223372036854775808"),
        (-(2**63), "-9223372036854775808"),
        (2**64 - 1, "18446744073709551615"),
        ({"z": 1, "a": 2}, '{"z": 1, "a": 2}'),
    ],
)
def test_encoding(obj: Any, text: str) -> None:
    assert encode(obj) == text
    assert encode_reference(obj) == text


@pytest.mark.parametrize("bad", [2**64, -(2**63) - 1, [2**70], {"a": -(2**80)}])
def test_integers_qemu_cannot_hold_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        encode(bad)
    with pytest.raises(ValueError):
        encode_reference(bad)


def test_no_trailing_newline() -> None:
    assert not encode({"return": {}}).endswith(("\n", "\r"))


def test_helpers() -> None:
    assert format_double(0.1) == "0.10000000000000001"
    assert format_double(-0.0) == "-0"
    assert format_double(-math.nan) == "-nan"
    assert quote_string("a\x7f") == '"a\\u007F"'


# --------------------------------------------------------------------------
# properties

any_text = st.text(max_size=16)  # all code points, surrogates and noncharacters included
floats = st.floats(allow_nan=False)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | floats
    | any_text
    | st.sampled_from(["1.5", "a 1e+5", "[1.5]", "\\u00e9", "\x7f", "Infinity", "x, 2.5]"]),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(any_text, c, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(values)
def test_property_fast_path_equals_reference(v: Any) -> None:
    assert encode(v) == encode_reference(v)


_NONCHARS = (
    [chr(c) for c in range(0xFDD0, 0xFDF0)]
    + [chr(p * 0x10000 + 0xFFFE) for p in range(17)]
    + [chr(p * 0x10000 + 0xFFFF) for p in range(17)]
)
clean_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters=_NONCHARS),
    max_size=16,
)
clean_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | clean_text,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(clean_text, c, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(clean_values)
def test_property_output_is_ascii_json_of_the_same_value(v: Any) -> None:
    out = encode(v)
    assert out.isascii()
    assert "\n" not in out
    # %.17g round-trips every double exactly
    assert json.loads(out) == v


def qemu_reads(v: Any) -> Any:
    """What QEMU's parser makes of its own output: "%.17g" may print an integer."""
    if isinstance(v, float):
        t = format_double(v)
        return int(t) if t.lstrip("-").isdigit() else float(t)
    if isinstance(v, list):
        return [qemu_reads(x) for x in v]
    if isinstance(v, dict):
        return {k: qemu_reads(x) for k, x in v.items()}
    return v


@settings(max_examples=300, deadline=None)
@given(clean_values)
def test_property_parser_reads_encoder_output(v: Any) -> None:
    out = JSONStreamParser().feed(encode([v]).encode())
    assert out == [[qemu_reads(v)]]
