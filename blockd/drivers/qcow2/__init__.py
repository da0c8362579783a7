"""The qcow2 format driver package (registered as driver "qcow2")."""

from __future__ import annotations

from .check import Qcow2CheckResult
from .create import qcow2_create
from .driver import ImageTooLarge, Qcow2Driver

__all__ = ["ImageTooLarge", "Qcow2CheckResult", "Qcow2Driver", "qcow2_create"]
