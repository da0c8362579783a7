"""JSON exactly as qemu-img prints it (``qobject_to_json_pretty``).

Two things make QEMU's output recognisable: the member order, which is the walk
order of QDict's hash table (bucket ``tdb_hash(key) % 512`` ascending, newest
insertion first within a bucket), and the pretty layout (4-space indent,
``"key": value``, empty containers as ``{`` newline ``}``, non-ASCII escaped as
``\\uXXXX``).  Python dicts passed in must be in QEMU's *insertion* order (the
QAPI member order); this module applies the walk order.
"""

from __future__ import annotations

from typing import Any

_BUCKETS = 512


def _bucket(key: str) -> int:
    data = key.encode("utf-8", "surrogatepass")
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * value + 12345) & 0xFFFFFFFF) % _BUCKETS


def qdict_order(d: dict[str, Any]) -> list[str]:
    """Keys of ``d`` (given in insertion order) in the order QEMU walks them."""
    ranked = sorted((_bucket(k), -i, k) for i, k in enumerate(d))
    return [k for _, _, k in ranked]


def _quote(s: str) -> str:
    out = ['"']
    for ch in s:
        cp = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif 0xDC80 <= cp <= 0xDCFF:
            # An undecodable byte of a file name: QEMU prints U+FFFD.
            out.append("\\uFFFD")
        elif cp > 0xFFFF:
            cp -= 0x10000
            out.append(f"\\u{0xD800 + (cp >> 10):04X}\\u{0xDC00 + (cp & 0x3FF):04X}")
        elif cp < 0x20 or cp >= 0x7F:
            out.append(f"\\u{cp:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _scalar(v: Any) -> str:
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "%.17g" % v  # noqa: UP031 - C's %g
    if isinstance(v, str):
        return _quote(v)
    raise TypeError(f"cannot serialise {type(v).__name__}")


def to_json_pretty(obj: Any) -> str:
    """The text qobject_to_json_pretty() produces for ``obj`` (no final newline)."""
    parts: list[str] = []
    _emit(obj, 0, parts)
    return "".join(parts)


def _emit(obj: Any, depth: int, parts: list[str]) -> None:
    pad = "\n" + " " * (4 * (depth + 1))
    if isinstance(obj, dict):
        parts.append("{")
        for n, key in enumerate(qdict_order(obj)):
            parts.append("," + pad if n else pad)
            parts.append(_quote(key) + ": ")
            _emit(obj[key], depth + 1, parts)
        parts.append("\n" + " " * (4 * depth) + "}")
    elif isinstance(obj, list):
        parts.append("[")
        for n, item in enumerate(obj):
            parts.append("," + pad if n else pad)
            _emit(item, depth + 1, parts)
        parts.append("\n" + " " * (4 * depth) + "]")
    else:
        parts.append(_scalar(obj))


def dump_human(data: dict[str, Any], indent: int) -> str:
    """block/qapi.c dump_qdict(): ``key: value`` lines, dashes shown as spaces."""
    lines: list[str] = []
    _human_dict(data, indent, lines)
    return "".join(lines)


def _human_value(v: Any, indent: int, lines: list[str]) -> None:
    if isinstance(v, dict):
        _human_dict(v, indent, lines)
    elif isinstance(v, list):
        for i, item in enumerate(v):
            composite = isinstance(item, dict | list)
            lines.append(f"{' ' * (indent * 4)}[{i}]:{chr(10) if composite else ' '}")
            _human_value(item, indent + 1, lines)
            if not composite:
                lines.append("\n")
    elif isinstance(v, bool):
        lines.append("true" if v else "false")
    elif isinstance(v, float):
        lines.append("%f" % v)  # noqa: UP031 - qnum_to_string uses %f-like output
    else:
        lines.append(str(v))


def _human_dict(d: dict[str, Any], indent: int, lines: list[str]) -> None:
    for key in qdict_order(d):
        v = d[key]
        composite = isinstance(v, dict | list)
        name = key.replace("-", " ")
        lines.append(f"{' ' * (indent * 4)}{name}:{chr(10) if composite else ' '}")
        _human_value(v, indent + 1, lines)
        if not composite:
            lines.append("\n")
