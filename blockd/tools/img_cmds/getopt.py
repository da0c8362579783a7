"""GNU ``getopt_long`` as qemu-img uses it.

qemu-img's subcommands call getopt_long with an optstring starting with ``:`` (so
getopt itself prints nothing) and in GNU's default *permute* mode: options and
operands may be mixed, ``--`` ends the options.  Unknown options and missing
arguments are reported by qemu-img with the offending argv element, which is
why the parser keeps it around.  Long options may be abbreviated to any unique
prefix, as with GNU getopt.
"""

from __future__ import annotations

from dataclasses import dataclass

from blockd.tools.img_cmds.common import Console


@dataclass(frozen=True)
class LongOpt:
    """One long option; ``key`` is what the parser yields for it (a short letter
    or the long name itself)."""

    name: str
    has_arg: bool
    key: str


def _short_spec(optstring: str) -> dict[str, bool]:
    spec: dict[str, bool] = {}
    chars = optstring.lstrip(":+")
    i = 0
    while i < len(chars):
        letter = chars[i]
        takes = i + 1 < len(chars) and chars[i + 1] == ":"
        spec[letter] = takes
        i += 2 if takes else 1
    return spec


def getopt(
    con: Console, argv: list[str], optstring: str, longopts: list[LongOpt] | None = None
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Parse ``argv`` (``argv[0]`` is the subcommand name, as in qemu-img).

    Returns the options in command-line order as (key, argument) pairs and the
    operands in order.  Usage errors are reported as qemu-img does
    (``unrecognized option '...'`` / ``missing argument for option '...'``).
    """
    shorts = _short_spec(optstring)
    longs = longopts or []
    opts: list[tuple[str, str | None]] = []
    operands: list[str] = []
    # argv[optind - 1] of GNU's partially permuted argv, which qemu-img names in its
    # error for an unknown letter in the middle of a cluster: skipped operands are
    # kept in one block just before the element being scanned.
    before = argv[0] if argv else ""
    i = 1
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            operands.extend(argv[i:])
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            exact = [lo for lo in longs if lo.name == name]
            matches = exact or [lo for lo in longs if lo.name.startswith(name)]
            # GNU accepts an ambiguous prefix when all candidates are the same option.
            if len({(lo.key, lo.has_arg) for lo in matches}) != 1:
                raise con.error_exit(f"unrecognized option '{arg}'")
            lo = matches[0]
            if lo.has_arg:
                if eq:
                    opts.append((lo.key, value))
                elif i < len(argv):
                    opts.append((lo.key, argv[i]))
                    i += 1
                else:
                    raise con.error_exit(f"missing argument for option '{arg}'")
            else:
                if eq:
                    raise con.error_exit(f"unrecognized option '{arg}'")
                opts.append((lo.key, None))
            before = argv[i - 1]
            continue
        if arg.startswith("-") and arg != "-":
            j = 1
            while j < len(arg):
                letter = arg[j]
                j += 1
                if letter not in shorts or letter == ":":
                    named = arg if j == len(arg) else (operands[-1] if operands else before)
                    raise con.error_exit(f"unrecognized option '{named}'")
                if not shorts[letter]:
                    opts.append((letter, None))
                    continue
                if j < len(arg):
                    opts.append((letter, arg[j:]))
                elif i < len(argv):
                    opts.append((letter, argv[i]))
                    i += 1
                else:
                    raise con.error_exit(f"missing argument for option '{arg}'")
                break
            before = argv[i - 1]
            continue
        operands.append(arg)
    return opts, operands
