"""The qcow2 format driver package (registered as driver "qcow2").

Public interface:

- ``Qcow2Driver``: the BlockDriver ("qcow2", supports_backing).  Besides the
  base contract it offers ``check(repair)``, ``change_backing_file(file, fmt)``,
  ``reopen(options, flags)``, ``set_barriers(enabled)`` and the attributes
  ``cluster_size``, ``backing_file``, ``backing_format``, ``dirty``, ``corrupt``,
  ``snapshots`` (internal snapshot table), ``bitmaps`` (persistent bitmap info),
  ``header`` and ``on_corruption`` (callback ``(message, fatal, offset, size)``).
  ``OpenFlags.extra["check"] = True`` opens like QEMU's BDRV_O_CHECK.
- ``qcow2_create(file, size, ...)``: format an empty protocol node.
- ``Qcow2CheckResult``: what ``check`` returns (counts and qemu-img's lines).
- ``ImageTooLarge``: GenericError with ``errno`` EFBIG for sizes the L1 table
  cannot map.
"""

from __future__ import annotations

from .check import Qcow2CheckResult
from .create import qcow2_create
from .driver import ImageTooLarge, Qcow2Driver

__all__ = ["ImageTooLarge", "Qcow2CheckResult", "Qcow2Driver", "qcow2_create"]
