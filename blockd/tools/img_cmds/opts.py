"""``-o`` option lists as QEMU's QemuOpts parses, stores and prints them.

``-o`` takes ``name=value`` pairs separated by commas (a literal comma in a
value is written ``,,``); later occurrences win.  Each format has a typed option
table: types decide how values are validated (with QEMU's error texts) and how
``Formatting '...'`` prints them; the table order is the print order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from blockd.tools.img_cmds.common import OptionError
from blockd.tools.img_cmds.sizes import SizeError, option_size, strtou64

# Values QEMU's qapi_bool_parse() accepts.
_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


class OptType(Enum):
    STRING = "str"
    BOOL = "bool (on/off)"
    NUMBER = "num"
    SIZE = "size"


@dataclass(frozen=True)
class OptDesc:
    name: str
    type: OptType
    help: str
    default: str | None = None


@dataclass
class Opt:
    name: str
    text: str
    # Parsed value (bool / int) for typed options, the text for strings.
    value: object = None


@dataclass
class QemuOpts:
    """A parsed option list bound to an option table."""

    descs: list[OptDesc]
    items: list[Opt] = field(default_factory=list)

    def desc(self, name: str) -> OptDesc | None:
        for d in self.descs:
            if d.name == name:
                return d
        return None

    def find(self, name: str) -> Opt | None:
        for opt in reversed(self.items):
            if opt.name == name:
                return opt
        return None

    def get_str(self, name: str) -> str | None:
        opt = self.find(name)
        return opt.text if opt is not None else None

    def get_bool(self, name: str, default: bool) -> bool:
        opt = self.find(name)
        return bool(opt.value) if opt is not None else default

    def get_int(self, name: str, default: int) -> int:
        opt = self.find(name)
        if opt is None:
            return default
        assert isinstance(opt.value, int)
        return opt.value

    def has(self, name: str) -> bool:
        return self.find(name) is not None

    def set(self, name: str, text: str) -> bool:
        """qemu_opt_set(); False when the table has no such option."""
        d = self.desc(name)
        if d is None:
            return False
        self.items.append(_validated(d, text))
        return True

    def set_number(self, name: str, value: int) -> None:
        self.items.append(Opt(name, str(value), value))

    def parse(self, params: str) -> None:
        """qemu_opts_do_parse(): validate and append each ``name=value``."""
        for name, value in split_option_list(params):
            if name == "id":
                continue
            d = self.desc(name)
            if d is None:
                raise OptionError(f"Invalid parameter '{name}'")
            self.items.append(_validated(d, value))

    def print_line(self) -> str:
        """qemu_opts_print(opts, " "): set options, else defaults, in table order."""
        parts: list[str] = []
        for d in self.descs:
            opt = self.find(d.name)
            text = opt.text if opt is not None else d.default
            if text is None:
                continue
            if d.type is OptType.STRING:
                parts.append(f"{d.name}={text.replace(',', ',,')}")
            elif d.type in (OptType.SIZE, OptType.NUMBER) and opt is not None:
                assert isinstance(opt.value, int)
                parts.append(f"{d.name}={opt.value}")
            else:
                parts.append(f"{d.name}={text}")
        return " ".join(parts)


def _validated(d: OptDesc, text: str) -> Opt:
    if d.type is OptType.BOOL:
        if text in _TRUE:
            return Opt(d.name, text, True)
        if text in _FALSE:
            return Opt(d.name, text, False)
        raise OptionError(f"Parameter '{d.name}' expects 'on' or 'off'")
    if d.type is OptType.NUMBER:
        return Opt(d.name, text, _option_number(d.name, text))
    if d.type is OptType.SIZE:
        return Opt(d.name, text, option_size(d.name, text))
    return Opt(d.name, text, text)


def _option_number(name: str, text: str) -> int:
    # qemustrtou64(value, NULL, 0): C integer syntax in any base, whole string.
    try:
        num = strtou64(text, 0, 0)
        if num.end != len(text):
            raise SizeError(-22)
        return num.value
    except SizeError as e:
        if e.code == -34:
            raise OptionError(f"Value '{text}' is too large for parameter '{name}'") from None
        raise OptionError(f"Parameter '{name}' expects a number") from None


def opt_value(params: str, pos: int) -> tuple[str, int]:
    """get_opt_value(): up to an unescaped comma; ``,,`` is a literal comma."""
    out: list[str] = []
    while pos < len(params):
        ch = params[pos]
        if ch == ",":
            if params.startswith(",,", pos):
                out.append(",")
                pos += 2
                continue
            break
        out.append(ch)
        pos += 1
    return "".join(out), pos


def split_option_list(params: str) -> list[tuple[str, str]]:
    """``a=1,b,nocow`` -> [(a, 1), (b, on), (cow, off)] (QEMU's flag shorthand)."""
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(params):
        stop = len(params)
        for sep in "=,":
            k = params.find(sep, pos)
            if k != -1:
                stop = min(stop, k)
        if stop >= len(params) or params[stop] != "=":
            name, pos = opt_value(params, pos)
            if name.startswith("no"):
                pairs.append((name[2:], "off"))
            else:
                pairs.append((name, "on"))
        else:
            name = params[pos:stop]
            value, pos = opt_value(params, stop + 1)
            pairs.append((name, value))
        if pos < len(params) and params[pos] == ",":
            pos += 1
    return pairs


def is_valid_option_list(optarg: str) -> bool:
    """qemu-img's sanity check on each -o argument before accumulating it."""
    if not optarg or optarg[0] == ",":
        return False
    trailing = len(optarg) - len(optarg.rstrip(","))
    return trailing % 2 == 0


def accumulate(options: str | None, optarg: str) -> str:
    return optarg if options is None else f"{options},{optarg}"


def has_help_option(params: str) -> bool:
    return any(name in ("help", "?") for name, _ in split_option_list(params))


# --- create option tables (QEMU 7.2 print order) ------------------------------

_SIZE = OptDesc("size", OptType.SIZE, "Virtual disk size")
_NOCOW = OptDesc("nocow", OptType.BOOL, "Turn off copy-on-write (valid only on btrfs)")
_EXTENT = OptDesc(
    "extent_size_hint", OptType.SIZE, "Extent size hint for the image file, 0 to disable"
)

QCOW2_CREATE_OPTS: list[OptDesc] = [
    OptDesc("cluster_size", OptType.SIZE, "qcow2 cluster size", "65536"),
    OptDesc("extended_l2", OptType.BOOL, "Extended L2 tables", "off"),
    OptDesc(
        "preallocation",
        OptType.STRING,
        "Preallocation mode (allowed values: off, metadata, falloc, full)",
    ),
    OptDesc(
        "compression_type",
        OptType.STRING,
        "Compression method used for image cluster compression",
        "zlib",
    ),
    _SIZE,
    OptDesc("compat", OptType.STRING, "Compatibility level (v2 [0.10] or v3 [1.1])"),
    OptDesc("backing_file", OptType.STRING, "File name of a base image"),
    OptDesc("backing_fmt", OptType.STRING, "Image format of the base image"),
    OptDesc("lazy_refcounts", OptType.BOOL, "Postpone refcount updates", "off"),
    OptDesc("refcount_bits", OptType.NUMBER, "Width of a reference count entry in bits", "16"),
    _NOCOW,
    _EXTENT,
]

RAW_CREATE_OPTS: list[OptDesc] = [
    _SIZE,
    _NOCOW,
    OptDesc(
        "preallocation", OptType.STRING, "Preallocation mode (allowed values: off, falloc, full)"
    ),
    _EXTENT,
]

# Options of the protocol (file) layer: listed separately by ``-o help``.
FILE_CREATE_OPTS = ("nocow", "preallocation", "extent_size_hint", "size")

CREATE_OPTS: dict[str, list[OptDesc]] = {"qcow2": QCOW2_CREATE_OPTS, "raw": RAW_CREATE_OPTS}


def format_help(fmt: str, with_filename: bool) -> str:
    """``-o help`` text: the format's options, or all of them given a filename."""
    descs = CREATE_OPTS[fmt]
    if with_filename:
        shown = sorted(descs, key=lambda d: d.name)
        title = "Supported options:\n"
        tail = ""
    else:
        shown = sorted((d for d in descs if fmt != "raw" or d.name == "size"), key=lambda d: d.name)
        if fmt == "qcow2":
            shown = [d for d in shown if d.name not in ("nocow", "extent_size_hint")]
        title = f"Supported {fmt} options:\n"
        tail = (
            "\nThe protocol level may support further options.\n"
            "Specify the target filename to include those options.\n"
        )
    lines = [title]
    for d in shown:
        left = f"{d.name}=<{d.type.value}>"
        lines.append(f"  {left:<22} - {d.help}\n")
    return "".join(lines) + tail
