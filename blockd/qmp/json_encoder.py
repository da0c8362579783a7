"""QMP output encoding, byte for byte as QEMU 7.2's ``qobject_to_json``.

QEMU writes replies and events with ``qobject/json-writer.c``:

* separators ``", "`` and ``": "``, empty containers as ``{}`` / ``[]``;
* strings: ``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t``; every other code point
  below 0x20 or from 0x7F up as ``\\uXXXX`` with *uppercase* hex, code points
  beyond the BMP as a surrogate pair, ``/`` unescaped; bytes that are not valid
  (modified) UTF-8 -- including UTF-8-encoded surrogates and noncharacters --
  print as ``\\uFFFD``;
* integers as ``%"PRId64"`` / ``%"PRIu64"``; doubles as ``%.17g`` (so ``0.1``
  prints ``0.10000000000000001``, ``-0.0`` prints ``-0``, infinity ``inf``).

Member order is the dict's insertion order; callers that need QEMU's QDict walk
order arrange their dicts accordingly.

Fast path: ``json.dumps`` already produces the same separators, short escapes,
``true``/``false``/``null`` and integers.  Its output is used verbatim unless it
contains a ``\\u`` escape, a DEL, a float or a 19+ digit integer; only then is
it re-tokenised and the affected tokens are rewritten QEMU's way.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from typing import Any

from blockd.qmp.json_parser import qemu_decode

__all__ = ["encode", "encode_pretty", "encode_reference", "format_double", "quote_string"]

_dumps = json.JSONEncoder(
    ensure_ascii=True,
    check_circular=False,
    allow_nan=True,
    separators=(", ", ": "),
).encode

# Anything in json.dumps output that QEMU could print differently: a \\u escape,
# DEL, Infinity/NaN, a top-level number, or a float (repr: "1.5", "1e+16") or a
# 19+ digit integer.  In json.dumps output a number only follows ": ", ", " or
# "[", so " 0.1" inside a string ("blockd 0.1.0") does not count; string content
# that still looks like a number only costs the slower (still exact) path.
_SUSPECT_NUMBER = re.compile(r"(?:[:,] |\[)-?[0-9]+(?:\.[0-9]|e[-+]|[0-9]{18})")


def _suspect(out: str) -> bool:
    return (
        "\\u" in out
        or "\x7f" in out
        or "Infinity" in out
        or "NaN" in out
        or out[0] in "-0123456789"
        or _SUSPECT_NUMBER.search(out) is not None
    )


# Tokens of json.dumps output that may need rewriting.
_FIX_TOKEN = re.compile(
    r'"(?:[^"\\]++|\\.)*+"|-?Infinity|NaN|-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?'
)
# In json.dumps output of a surrogate-free string: escapes to uppercase, DEL.
_FIX_ESC = re.compile(r"\\\\|\\u[0-9a-f]{4}|\x7f")

# A \\uD800..\\uDFFF escape (possibly preceded by an escaped backslash: harmless,
# it only sends us down the reference path).
_SURROGATE_ESC = re.compile(r"\\u[dD][89a-fA-F]")

_INT64_MIN = -(1 << 63)
_UINT64_MAX = (1 << 64) - 1


def _c_string_errors(exc: UnicodeError) -> tuple[bytes, int]:
    """Encode lone surrogates the way they reach a C string.

    U+DC80..U+DCFF are ``surrogateescape``'d raw bytes (e.g. from
    ``os.fsdecode``); any other surrogate is kept as its 3-byte form, which
    QEMU's decoder rejects (and prints as U+FFFD).
    """
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = bytearray()
    for ch in exc.object[exc.start : exc.end]:
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:
            out.append(cp - 0xDC00)
        else:
            out += ch.encode("utf-8", "surrogatepass")
    return bytes(out), exc.end


codecs.register_error("blockd-cstring", _c_string_errors)


def _fix_escape(m: re.Match[str]) -> str:
    t = m.group()
    if t == "\x7f":
        return "\\u007F"
    if t == "\\\\":
        return t
    return "\\u" + t[2:].upper()


def quote_string(s: str) -> str:
    """``s`` as QEMU's JSON writer quotes the C string it would hold.

    The C string is ``s`` in modified UTF-8 (U+0000 as ``C0 80``), with lone
    surrogates handled as in :func:`_c_string_errors`.
    """
    if s.isascii() and "\x7f" not in s:
        # json.dumps and QEMU differ only in the hex case of \u00XX.
        out = json.dumps(s)
    else:
        raw = s.encode("utf-8", "blockd-cstring").replace(b"\0", b"\xc0\x80")
        out = json.dumps(qemu_decode(raw))
    if "\\u" in out or "\x7f" in out:
        out = _FIX_ESC.sub(_fix_escape, out)
    return out


def format_double(v: float) -> str:
    """``printf("%.17g", v)`` as glibc prints it."""
    if math.isnan(v):
        return "-nan" if math.copysign(1.0, v) < 0 else "nan"
    return format(v, ".17g")


def _fix_token(m: re.Match[str]) -> str:
    t = m.group()
    c = t[0]
    if c == '"':
        if "\\u" in t or "\x7f" in t:
            return quote_string(json.loads(t))
        return t
    if "I" in t:
        return "-inf" if c == "-" else "inf"
    if c == "N":
        return "nan"  # json.dumps has already lost a NaN's sign
    if "." in t or "e" in t or "E" in t:
        return format_double(float(t))
    if len(t) >= 19 and not _INT64_MIN <= int(t) <= _UINT64_MAX:
        raise ValueError(f"integer {t} does not fit QEMU's int64/uint64")
    return t


def encode_reference(obj: Any) -> str:
    """Straightforward recursive form of :func:`encode` (the specification).

    Used when the fast path cannot be proven equal (strings with surrogates,
    whose pairing ``json.dumps`` output no longer shows) and by the tests.
    """
    if isinstance(obj, str):
        return quote_string(obj)
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        if not _INT64_MIN <= obj <= _UINT64_MAX:
            raise ValueError(f"integer {obj} does not fit QEMU's int64/uint64")
        return str(int(obj))
    if isinstance(obj, float):
        return format_double(obj)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        return (
            "{"
            + ", ".join(quote_string(k) + ": " + encode_reference(v) for k, v in obj.items())
            + "}"
        )
    if isinstance(obj, list | tuple):
        if not obj:
            return "[]"
        return "[" + ", ".join(encode_reference(v) for v in obj) + "]"
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def encode(obj: Any) -> str:
    """Serialise ``obj`` exactly as QEMU 7.2's ``qobject_to_json`` would.

    ``obj`` is built from dict (str keys, insertion order), list/tuple, str,
    int (int64 or uint64 range), float, bool and None.  No trailing newline.
    """
    out: str = _dumps(obj)
    if not _suspect(out):
        return out
    if _SURROGATE_ESC.search(out) is not None:
        return encode_reference(obj)
    return _FIX_TOKEN.sub(_fix_token, out)


def encode_pretty(obj: Any) -> str:
    """``qobject_to_json_pretty``: 4-space indent, one member per line.

    Used by ``--monitor pretty=on`` and qemu-img's ``--output=json``.  Empty
    containers print as ``{`` newline, indent, ``}`` as QEMU's JSON writer
    does.  Member order is the dict's; no final newline.
    """
    parts: list[str] = []
    _emit_pretty(obj, 0, parts)
    return "".join(parts)


def _emit_pretty(obj: Any, depth: int, parts: list[str]) -> None:
    pad = "\n" + " " * (4 * (depth + 1))
    if isinstance(obj, dict):
        parts.append("{")
        for n, (key, value) in enumerate(obj.items()):
            parts.append("," + pad if n else pad)
            parts.append(quote_string(key) + ": ")
            _emit_pretty(value, depth + 1, parts)
        parts.append("\n" + " " * (4 * depth) + "}")
    elif isinstance(obj, list):
        parts.append("[")
        for n, item in enumerate(obj):
            parts.append("," + pad if n else pad)
            _emit_pretty(item, depth + 1, parts)
        parts.append("\n" + " " * (4 * depth) + "]")
    else:
        parts.append(encode(obj))
