"""The qcow2 format driver package (registered as driver "qcow2")."""

from __future__ import annotations

from .check import Qcow2CheckResult
from .create import qcow2_create
from .driver import Qcow2Driver

__all__ = ["Qcow2CheckResult", "Qcow2Driver", "qcow2_create"]
