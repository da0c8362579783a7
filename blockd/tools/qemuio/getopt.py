"""glibc getopt() semantics for qemu-io's command lines.

qemu-io parses each command's words with getopt(3), which on glibc permutes
(options may follow operands) and reports errors as ``CMD: invalid option -- 'x'``.
The options are returned in order with an error marker where getopt would have
returned '?', so callers can reproduce the side effects that precede an error.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Opt:
    """One option (callers only read it: instances are shared, see _opt())."""

    char: str
    arg: str | None = None


# Options already seen (scripts repeat "-q", "-P 0x5a" thousands of times); the
# objects are never modified, so one serves every occurrence.  Bounded.
_SEEN: dict[tuple[str, str | None], Opt] = {}


def _opt(c: str, arg: str | None = None) -> Opt:
    key = (c, arg)
    o = _SEEN.get(key)
    if o is None:
        o = Opt(c, arg)
        if len(_SEEN) < 1024:
            _SEEN[key] = o
    return o


@dataclass
class OptError:
    message: str  # already formatted as glibc prints it, with trailing newline


# optstring -> {option char: takes an argument}; qemu-io uses a handful of them.
_SPECS: dict[str, dict[str, bool]] = {}


def _spec(optstring: str) -> dict[str, bool]:
    spec: dict[str, bool] = {}
    for k, c in enumerate(optstring):
        if c != ":" and c not in spec:
            spec[c] = optstring[k + 1 : k + 2] == ":"
    _SPECS[optstring] = spec
    return spec


def getopt(
    argv: list[str], optstring: str
) -> tuple[list[Opt | OptError], list[str]]:
    """Parse argv[1:]; returns (options in order, operands in order).

    Runs once per qemu-io command, so it is kept lean: one dict lookup per
    option letter instead of scanning optstring.
    """
    spec = _SPECS.get(optstring) or _spec(optstring)
    prog = argv[0]
    items: list[Opt | OptError] = []
    operands: list[str] = []
    n = len(argv)
    i = 1
    while i < n:
        word = argv[i]
        i += 1
        if word[:1] != "-" or word == "-":
            operands.append(word)
            continue
        if word == "--":
            operands.extend(argv[i:])
            break
        wl = len(word)
        j = 1
        while j < wl:
            c = word[j]
            j += 1
            takes = spec.get(c)
            if takes is None:
                items.append(OptError(f"{prog}: invalid option -- '{c}'\n"))
                return items, operands + argv[i:]
            if takes:
                if j < wl:
                    items.append(_opt(c, word[j:]))
                elif i < n:
                    items.append(_opt(c, argv[i]))
                    i += 1
                else:
                    items.append(OptError(f"{prog}: option requires an argument -- '{c}'\n"))
                    return items, operands
                break
            items.append(_opt(c))
    return items, operands
