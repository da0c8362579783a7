"""glibc getopt() semantics for qemu-io's command lines.

qemu-io parses each command's words with getopt(3), which on glibc permutes
(options may follow operands) and reports errors as ``CMD: invalid option -- 'x'``.
The options are returned in order with an error marker where getopt would have
returned '?', so callers can reproduce the side effects that precede an error.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Opt:
    char: str
    arg: str | None = None


@dataclass
class OptError:
    message: str  # already formatted as glibc prints it, with trailing newline


def getopt(
    argv: list[str], optstring: str
) -> tuple[list[Opt | OptError], list[str]]:
    """Parse argv[1:]; returns (options in order, operands in order)."""
    if not any(w.startswith("-") and w != "-" for w in argv[1:]):
        return [], argv[1:]
    prog = argv[0]
    items: list[Opt | OptError] = []
    operands: list[str] = []
    i = 1
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            operands.extend(argv[i:])
            break
        if not word.startswith("-") or word == "-":
            operands.append(word)
            continue
        j = 1
        while j < len(word):
            c = word[j]
            j += 1
            pos = optstring.find(c)
            if c == ":" or pos < 0:
                items.append(OptError(f"{prog}: invalid option -- '{c}'\n"))
                return items, operands + argv[i:]
            if pos + 1 < len(optstring) and optstring[pos + 1] == ":":
                if j < len(word):
                    items.append(Opt(c, word[j:]))
                elif i < len(argv):
                    items.append(Opt(c, argv[i]))
                    i += 1
                else:
                    items.append(OptError(f"{prog}: option requires an argument -- '{c}'\n"))
                    return items, operands
                break
            items.append(Opt(c))
    return items, operands
