"""Device properties as ``device_add`` delivers them (QEMU 7.2 qmp_device_add).

QMP arguments go through QemuOpts first: strings stay, numbers become their
decimal text, booleans "on"/"off", anything else is dropped; then the keyval
visitor parses each property from that text.  So ``"share-rw": "yes"`` works
and ``"iothread": 1`` looks for an object named "1", exactly as in QEMU.
"""

from __future__ import annotations

from typing import Any

from blockd.qmp.errors import GenericError
from blockd.qmp.qdict import qdict_keys

_TRUE = frozenset({"on", "yes", "true", "y"})
_FALSE = frozenset({"off", "no", "false", "n"})


def as_opts(args: dict[str, Any]) -> dict[str, str]:
    """qemu_opts_from_qdict(): every scalar as QemuOpts text, in QDict order."""
    out: dict[str, str] = {}
    for key in qdict_keys(args):
        value = args[key]
        if isinstance(value, bool):
            out[key] = "on" if value else "off"
        elif isinstance(value, int):
            out[key] = str(value)
        elif isinstance(value, float):
            out[key] = f"{value:.17g}"
        elif isinstance(value, str):
            out[key] = value
    return out


def parse_bool(name: str, text: str) -> bool:
    """qapi_bool_parse()."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise GenericError(f"Parameter '{name}' expects 'on' or 'off'")


def parse_uint32(name: str, text: str) -> int:
    """A uint32 property through the keyval visitor: strtou64 (a leading '-'
    wraps around, as C's does), then the uint32 range."""
    t = text.strip()
    neg = t.startswith("-")
    try:
        value = int(t[1:] if neg else t, 0)
    except ValueError:
        raise GenericError(f"Parameter '{name}' expects integer") from None
    if value < 0 or value >= 2**64:
        raise GenericError(f"Parameter '{name}' expects integer")
    if neg:
        value = (2**64 - value) % 2**64
    if value > 0xFFFFFFFF:
        raise GenericError(f"Parameter '{name}' expects uint32_t")
    return value


def parse_enum(name: str, text: str, values: tuple[str, ...]) -> str:
    """An enum property (OnOffAuto, BlockdevOnError, ...)."""
    if text not in values:
        raise GenericError(f"Parameter '{name}' does not accept value '{text}'")
    return text
