"""``blockd-img``: qemu-img's command line over blockd's drivers.

Same syntax, output and exit codes as ``qemu-img`` 7.2 for create, info, check,
map, compare, convert, rebase and resize.  Each subcommand lives in
:mod:`blockd.tools.img_cmds`; this module handles the global options and the
dispatch, and turns the internal exit signal into the process status.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from blockd.tools.img_cmds import check, compare, convert, create, info, map, rebase, resize
from blockd.tools.img_cmds.common import Console, ImgExit
from blockd.tools.img_cmds.usage import VERSION, show_help

Handler = Callable[[Console, list[str]], Coroutine[Any, Any, int]]

COMMANDS: dict[str, Handler] = {
    "check": check.run,
    "compare": compare.run,
    "convert": convert.run,
    "create": create.run,
    "info": info.run,
    "map": map.run,
    "rebase": rebase.run,
    "resize": resize.run,
}


def _dispatch(con: Console, argv: list[str]) -> int:
    if len(argv) < 1:
        raise con.error_exit("Not enough arguments")
    # Global options end at the first operand ("+" in qemu-img's optstring).
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if arg in ("-h", "--help") or (arg.startswith("--h") and "--help".startswith(arg)):
            raise show_help(con)
        if arg in ("-V", "--version") or (len(arg) > 3 and "--version".startswith(arg)):
            con.print(VERSION)
            return 0
        if arg == "-T" or (len(arg) > 3 and "--trace".startswith(arg)):
            # Tracing is accepted for compatibility and ignored.
            if i >= len(argv):
                raise con.error_exit(f"missing argument for option '{arg}'")
            i += 1
            continue
        if arg.startswith("-T") or arg.startswith("--trace="):
            continue
        raise con.error_exit(f"unrecognized option '{arg}'")
    rest = argv[i:]
    if not rest:
        return 0
    handler = COMMANDS.get(rest[0])
    if handler is None:
        raise con.error_exit(f"Command not found: {rest[0]}")
    return asyncio.run(handler(con, rest))


def run(argv: list[str], con: Console | None = None) -> int:
    """Run one qemu-img command line (without the program name); return the status."""
    con = con or Console()
    try:
        code = _dispatch(con, argv)
    except ImgExit as e:
        code = e.code
    finally:
        con.out.flush()
        con.err.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: the program name comes from argv[0], like QEMU."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "qemu-img"
    code = run(sys.argv[1:] if argv is None else argv, Console(prog=prog))
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
