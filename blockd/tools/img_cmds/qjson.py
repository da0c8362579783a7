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

from blockd.qmp.json_encoder import encode_pretty
from blockd.qmp.qdict import qdict_order, qdict_ordered

__all__ = ["dump_human", "qdict_order", "to_json_pretty"]

def to_json_pretty(obj: Any) -> str:
    """The text qobject_to_json_pretty() produces for ``obj`` (no final newline)."""
    return encode_pretty(qdict_ordered(obj))


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
