"""Number parsing and printing exactly as qemu-io 7.2 does it.

qemu-io's output is parsed by iotests and scripts, so sizes, rates, times and hex
dumps must come out byte for byte like QEMU's C formatting (cvtstr, timestr,
dump_buffer, qemu_strtosz).

printf-style formatting is used on purpose: it mirrors the C format strings.
"""

# ruff: noqa: UP031

from __future__ import annotations

import errno
import math
import re

# BDRV_REQUEST_MAX_BYTES: INT_MAX rounded down to the sector size.
BDRV_REQUEST_MAX_BYTES = 2147483136
INT64_MAX = (1 << 63) - 1

_UNITS = (
    (60, " EiB"),
    (50, " PiB"),
    (40, " TiB"),
    (30, " GiB"),
    (20, " MiB"),
    (10, " KiB"),
)
_SUFFIX_SHIFT = {"b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


class CvtnumError(Exception):
    """qemu_strtosz() failure; errno is -EINVAL or -ERANGE like QEMU's return."""

    def __init__(self, err: int) -> None:
        super().__init__(err)
        self.errno = err


def cvtstr(value: float) -> str:
    """Human size: "64 KiB", "1.062 MiB", "512 bytes" (cvtstr())."""
    if math.isnan(value):
        return "nan bytes"
    suffix = " bytes"
    s = "%f" % value
    for shift, unit in _UNITS:
        if value >= float(1 << shift):
            s = "%.3f" % (value / float(1 << shift))
            suffix = unit
            break
    i = s.find(".000")
    return s[:i] + suffix if i >= 0 else s + suffix


def tdiv(value: float, seconds: float) -> float:
    """value / seconds with C's floating semantics (x/0 = inf, 0/0 = nan)."""
    if seconds == 0.0:
        if value == 0.0:
            return math.nan
        return math.inf
    return value / seconds


def _cfloat(fmt: str, v: float) -> str:
    # C prints inf/nan as "inf"/"nan" (also with %05.2f: padded with spaces).
    if math.isinf(v) or math.isnan(v):
        width = fmt[1:].split(".")[0].lstrip("0")
        text = ("-" if v < 0 else "") + ("inf" if math.isinf(v) else "nan")
        return text.rjust(int(width)) if width else text
    return fmt % v


def timestr(seconds_int: int, nsec: int, verbose: bool) -> str:
    """Elapsed time as qemu-io prints it ("00.00 sec" or "0:00:00.00")."""
    frac = nsec / 1e9
    if verbose or seconds_int:
        h = seconds_int // 3600
        m = (seconds_int % 3600) // 60
        s = seconds_int % 60
        return "%u:%02u:%05.2f" % (h, m, s + frac)
    return "%05.2f sec" % frac


def report(op: str, elapsed_ns: int, offset: int, count: int, total: int, cnt: int,
           cflag: bool) -> str:
    """The two statistics lines (or the -C line) after an I/O command."""
    sec_int, nsec = divmod(elapsed_ns, 1_000_000_000)
    secs = sec_int + nsec / 1e9
    ts = timestr(sec_int, nsec, cflag)
    if not cflag:
        s1 = cvtstr(float(total))
        s2 = cvtstr(tdiv(float(total), secs))
        ops = _cfloat("%.4f", tdiv(float(cnt), secs))
        return (
            f"{op} {total}/{count} bytes at offset {offset}\n"
            f"{s1}, {cnt} ops; {ts} ({s2}/sec and {ops} ops/sec)\n"
        )
    return "%d,%d,%s,%s,%s\n" % (
        total,
        cnt,
        ts,
        _cfloat("%.3f", tdiv(float(total), secs)),
        _cfloat("%.3f", tdiv(float(cnt), secs)),
    )


def dump_buffer(buf: bytes, offset: int) -> str:
    """Hex dump as qemu-io -v: 16 bytes per line, C-locale isalnum for the text."""
    lines = []
    for i in range(0, len(buf), 16):
        chunk = buf[i : i + 16]
        hexpart = "".join("%02x " % b for b in chunk)
        text = "".join(chr(b) if (b < 128 and chr(b).isalnum()) else "." for b in chunk)
        lines.append("%08x:  %s %s\n" % (offset + i, hexpart, text))
    return "".join(lines)


def _strtou64_prefix(s: str, base: int) -> tuple[int, int] | None:
    """strtoull(): (value, index after the number) or None when nothing parsed."""
    i = 0
    n = len(s)
    while i < n and s[i] in " \t\n\v\f\r":
        i += 1
    neg = False
    if i < n and s[i] in "+-":
        neg = s[i] == "-"
        i += 1
    if base == 16 and s[i : i + 2].lower() == "0x" and i + 2 < n and s[i + 2] in _HEX:
        i += 2
    digits = "0123456789" if base == 10 else _HEX
    start = i
    while i < n and s[i] in digits:
        i += 1
    if i == start:
        return None
    v = int(s[start:i], base)
    if v >= 1 << 64:
        raise CvtnumError(-errno.ERANGE)
    return ((-v) % (1 << 64) if neg else v), i


_HEX = "0123456789abcdefABCDEF"


_SIMPLE = re.compile(r"([0-9]+)([bkmgtpeBKMGTPE]?)")


# Sizes with a unit already converted by cvtnum(), bounded.
_SIZES: dict[str, int] = {}


def cvtnum(s: str) -> int:
    """qemu_strtosz() with a default unit of bytes; raises CvtnumError."""
    if s.isdigit() and s.isascii():
        # The most common case of all (offsets): plain decimal digits.
        plain = int(s)
        if plain > INT64_MAX:
            raise CvtnumError(-errno.ERANGE)
        return plain
    value = _SIZES.get(s)
    if value is not None:
        return value
    m = _SIMPLE.fullmatch(s)
    if m is not None:
        # The common case ("65536", "64k"): digits and an optional unit.
        value = int(m.group(1)) << _SUFFIX_SHIFT[m.group(2).lower() or "b"]
        if value > INT64_MAX:
            raise CvtnumError(-errno.ERANGE)
        if len(_SIZES) < 256:
            # Scripts repeat a few sizes ("64k") thousands of times.
            _SIZES[s] = value
        return value
    r = _strtou64_prefix(s, 10)
    if r is None:
        raise CvtnumError(-errno.EINVAL)
    val, end = r
    if "-" in s[:end]:
        raise CvtnumError(-errno.EINVAL)
    frac = 0.0
    has_frac = False
    if val == 0 and end < len(s) and s[end] in "xX":
        r = _strtou64_prefix(s, 16)
        if r is None:
            raise CvtnumError(-errno.EINVAL)
        val, end = r
        if end < len(s) and (s[end] == "." or s[end].lower() in _SUFFIX_SHIFT):
            raise CvtnumError(-errno.EINVAL)
    elif end < len(s) and s[end] == ".":
        j = end + 1
        while j < len(s) and s[j].isdigit():
            j += 1
        if j < len(s) and s[j] in "eE":
            raise CvtnumError(-errno.EINVAL)
        frac = float("0" + s[end:j]) if j > end + 1 else 0.0
        has_frac = True
        end = j
    shift = 0
    if end < len(s) and s[end].lower() in _SUFFIX_SHIFT:
        shift = _SUFFIX_SHIFT[s[end].lower()]
        end += 1
    if end != len(s):
        raise CvtnumError(-errno.EINVAL)
    if shift == 0:
        if has_frac and frac != 0.0:
            raise CvtnumError(-errno.EINVAL)
        result = val
    else:
        mul = 1 << shift
        # 64.64 fixed point like QEMU, rounding 0.5 up.
        valf = int(frac * 2.0**64)
        prod_f = valf * mul
        result = val * mul + (prod_f >> 64) + ((prod_f >> 63) & 1)
        if result >= 1 << 64:
            raise CvtnumError(-errno.ERANGE)
    if result > INT64_MAX:
        raise CvtnumError(-errno.ERANGE)
    return result


def cvtnum_error(err: int, arg: str) -> str:
    """print_cvtnum_err()."""
    if err == -errno.EINVAL:
        return f"Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {arg}\n"
    if err == -errno.ERANGE:
        return f"Parsing error: argument too large -- {arg}\n"
    return f"Parsing error: {arg}\n"
