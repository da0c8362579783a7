"""Sizes as qemu-img reads and prints them (QEMU 7.2 ``qemu_strtosz``/``size_to_str``).

Accepted input: decimal integers with an optional fraction and a binary suffix
(``B``/``K``/``M``/``G``/``T``/``P``/``E``, either case, ``1.5k``), or a ``0x``
hex integer (a suffix on hex is deprecated and warned about).  A fraction needs
a real multiplier (``1.5`` and ``1.5b`` are rejected), a ``-`` anywhere in the
number is rejected, and the result must fit in 64 bits.  The error classes
(-EINVAL vs -ERANGE) matter because callers print different texts for them.
"""

from __future__ import annotations

import errno
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from blockd.tools.img_cmds.common import OptionError

_SPACE = " \t\n\v\f\r"
_DEC = re.compile(r"[+-]?[0-9]+")
_HEX = re.compile(r"[+-]?(?:0[xX](?=[0-9a-fA-F]))?[0-9a-fA-F]+")
# strtoull(..., 0): C literal syntax.
_ANY = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
# strtod() on the text starting at '.': digits, optional exponent.
_FRACTION = re.compile(r"\.[0-9]*(?:[eE][+-]?[0-9]+)?")
_SUFFIXES = "BKMGTPE"

INT64_MAX = (1 << 63) - 1
U64 = 1 << 64


class SizeError(Exception):
    """A size string qemu would reject; ``code`` is the negative errno it reports."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class _Num:
    value: int
    end: int


def strtou64(text: str, start: int, base: int) -> _Num:
    """glibc strtoull + QEMU's qemu_strtou64 error mapping."""
    pos = start
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    m = {10: _DEC, 16: _HEX, 0: _ANY}[base].match(text, pos)
    if m is None:
        raise SizeError(-errno.EINVAL)
    digits = m.group(0)
    negative = digits.startswith("-")
    body = digits.lstrip("+-")
    if base == 0 and len(body) > 1 and body[0] == "0" and body[1] not in "xX":
        body = "0o" + body[1:]
    magnitude = int(body, base)
    if magnitude >= U64:
        raise SizeError(-errno.ERANGE)
    value = (U64 - magnitude) % U64 if negative else magnitude
    return _Num(value, m.end())


def _suffix_mul(ch: str, unit: int = 1024) -> int:
    idx = _SUFFIXES.find(ch.upper()) if ch else -1
    return unit**idx if idx >= 0 else 0


def strtosz(text: str, warn: Callable[[str], None] | None = None) -> int:
    """Parse ``text`` entirely as qemu_strtosz() does; raise SizeError otherwise."""
    num = strtou64(text, 0, 10)
    val, end = num.value, num.end
    if "-" in text[:end]:
        raise SizeError(-errno.EINVAL)
    hexa = False
    frac = 0
    if val == 0 and text[end : end + 1] in ("x", "X"):
        num = strtou64(text, 0, 16)
        val, end = num.value, num.end
        if text[end : end + 1] == ".":
            raise SizeError(-errno.EINVAL)
        hexa = True
    elif text[end : end + 1] == ".":
        m = _FRACTION.match(text, end)
        if m is None or m.group(0) == "." or re.fullmatch(r"\.[eE].*", m.group(0)):
            end += 1  # strtod found no number: skip the dot only
        elif "e" in m.group(0).lower():
            raise SizeError(-errno.EINVAL)
        else:
            fraction = float("0" + m.group(0))
            # (uint64_t)(1.0 * 2^64) wraps to 0 on x86-64, so ".99999999999999999999"
            # adds nothing, exactly as in QEMU.
            frac = int(fraction * 2.0**64) % U64
            end = m.end()
    mul = _suffix_mul(text[end : end + 1])
    if mul > 0:
        if hexa and warn is not None:
            warn(f"Using a multiplier suffix on hex numbers is deprecated: {text}")
        end += 1
    else:
        mul = 1
    if mul == 1:
        if frac != 0:
            raise SizeError(-errno.EINVAL)
    else:
        # 64.64 fixed point times the multiplier, rounding half up.
        product = val * mul + ((frac * mul) >> 64) + (((frac * mul) % U64) >> 63)
        if product >= U64:
            raise SizeError(-errno.ERANGE)
        val = product
    if end != len(text):
        raise SizeError(-errno.EINVAL)
    return val


def size_to_str(val: int) -> str:
    """QEMU's size_to_str(): ``1 GiB``, ``196 KiB``, ``1.5 MiB``, ``512 B``."""
    suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
    _, exp = math.frexp(val / (1000.0 / 1024.0))
    i = int((exp - 1) / 10)  # C division truncates toward zero
    div = 1 << (i * 10)
    return "%0.3g %sB" % (val / div, suffixes[i])  # noqa: UP031 - C's %g semantics


SIZE_HINT = (
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively.\n"
)


def option_size(name: str, value: str, warn: Callable[[str], None] | None = None) -> int:
    """A QemuOpts size parameter; raise OptionError with QEMU's text (and hint)."""
    try:
        return strtosz(value, warn)
    except SizeError as e:
        if e.code == -errno.ERANGE:
            raise OptionError(f"Value '{value}' is too large for parameter '{name}'") from None
        raise OptionError(
            f"Parameter '{name}' expects a non-negative number below 2^64", hint=SIZE_HINT
        ) from None
