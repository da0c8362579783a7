"""qemu-img's ``-p`` progress indicator (util/qemu-progress.c, "simple" mode).

The state is kept in single-precision floats like QEMU's, so the printed
percentages and the decision when to reprint (``min_skip``) are the same.
"""

from __future__ import annotations

import struct

from blockd.tools.img_cmds.common import Console


def f32(x: float) -> float:
    """Round to single precision, as C float arithmetic does."""
    return float(struct.unpack("f", struct.pack("f", x))[0])


class Progress:
    """``qemu_progress_init/print/end``; disabled instances print nothing."""

    def __init__(self, con: Console, enabled: bool, min_skip: float) -> None:
        self.con = con
        self.enabled = enabled
        self.min_skip = f32(min_skip)
        self.current = f32(0.0)
        self.last_print = f32(0.0)

    def _show(self) -> None:
        if self.enabled:
            self.con.out.write("    (%3.2f/100%%)\r" % self.current)  # noqa: UP031
            self.con.out.flush()

    def print(self, delta: float, maximum: int) -> None:
        """Advance by ``delta`` percent scaled by ``maximum`` percent; maximum 0 sets
        the absolute value ``delta``."""
        delta = f32(delta)
        if maximum == 0:
            current = delta
        else:
            current = f32(self.current + f32(f32(delta / 100) * maximum))
        # Rounding (and callers that overshoot) never show more than 100%.
        current = min(current, f32(100.0))
        self.current = current
        if (
            current == 0
            or current - self.last_print > self.min_skip
            or current < self.last_print - self.min_skip
            or current == 100
        ):
            self.last_print = current
            self._show()

    def end(self) -> None:
        if self.enabled:
            self.con.out.write("\n")
            self.con.out.flush()
