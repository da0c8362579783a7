"""QMP error classes.

One exception hierarchy for every error a command can report.  The wire form is
``{"error": {"class": CLASS, "desc": DESC}}``; the class names are QEMU's
(``qapi/error.json``: ErrorClass), and ``desc`` must be QEMU's text byte for byte.
"""


class QMPError(Exception):
    """An error reported to the QMP client.  Subclasses fix the error class."""

    error_class = "GenericError"

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc

    def to_wire(self) -> dict[str, str]:
        return {"class": self.error_class, "desc": self.desc}


class GenericError(QMPError):
    error_class = "GenericError"


class CommandNotFound(QMPError):
    error_class = "CommandNotFound"


class DeviceNotFound(QMPError):
    error_class = "DeviceNotFound"


class DeviceNotActive(QMPError):
    error_class = "DeviceNotActive"


class KVMMissingCap(QMPError):
    error_class = "KVMMissingCap"
