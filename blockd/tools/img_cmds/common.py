"""Process-level plumbing shared by every ``blockd-img`` subcommand.

qemu-img reports errors in three shapes and the exit code depends on which one
was used, so each shape gets its own helper:

* ``error_report``: ``<prog>: <msg>`` on stderr (the caller decides the exit code);
* ``error_exit``: usage errors, followed by the ``Try 'qemu-img --help'`` line and
  exit status 1;
* ``warn_report``: ``<prog>: warning: <msg>``.

``<prog>`` is the basename of argv[0], as QEMU's ``error_init(argv[0])`` does, so
the tool installed or linked as ``qemu-img`` prints exactly what qemu-img prints.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO


class ImgExit(Exception):
    """Unwind to ``main`` and exit with ``code`` (everything was already printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class OptionError(Exception):
    """An option QEMU rejects; ``hint`` is printed verbatim after the message."""

    def __init__(self, msg: str, hint: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.hint = hint


@dataclass
class Console:
    """Where a run prints, and under which program name it reports errors."""

    prog: str = "qemu-img"
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    # --image-opts: image names on the command line are option strings.
    image_opts: bool = False

    def print(self, text: str) -> None:
        """printf() to stdout: no newline is added."""
        self.out.write(text)

    def qprint(self, quiet: bool, text: str) -> None:
        """qemu-img's qprintf(): stdout unless -q."""
        if not quiet:
            self.out.write(text)

    def error_report(self, msg: str) -> None:
        # stdout first: QEMU's stdout is line buffered on a tty and flushed at exit,
        # keeping the relative order of both streams sane for interleaved readers.
        self.out.flush()
        self.err.write(f"{self.prog}: {msg}\n")
        self.err.flush()

    def warn_report(self, msg: str) -> None:
        self.out.flush()
        self.err.write(f"{self.prog}: warning: {msg}\n")
        self.err.flush()

    def error_print(self, text: str) -> None:
        """error_printf(): raw text on stderr (hints, repair notes)."""
        self.err.write(text)

    def error_exit(self, msg: str) -> ImgExit:
        """Usage error: message, the --help hint, exit status 1.  Raise the result."""
        self.error_report(msg)
        self.err.write("Try 'qemu-img --help' for more information\n")
        return ImgExit(1)

    def fail(self, msg: str, code: int = 1) -> ImgExit:
        """error_report() then exit with ``code``.  Raise the result."""
        self.error_report(msg)
        return ImgExit(code)


# bdrv_parse_cache_mode(): the modes, and whether they bypass the host page cache.
CACHE_MODES = {
    "none": True,
    "off": True,
    "directsync": True,
    "writeback": False,
    "writethrough": False,
    "unsafe": False,
}


def parse_cache(con: Console, value: str, what: str, code: int = 1) -> bool:
    """A -t/-T cache mode; True when it means O_DIRECT.  ``what`` is "cache" or
    "source cache" as in qemu-img's error."""
    if value not in CACHE_MODES:
        raise con.fail(f"Invalid {what} option: {value}", code)
    return CACHE_MODES[value]


def parse_output_format(con: Console, value: str | None) -> str:
    """``--output`` value: "human" or "json", with qemu-img's complaint otherwise."""
    if value is None or value == "human":
        return "human"
    if value == "json":
        return "json"
    raise con.fail("--output must be used with human or json as argument.")
