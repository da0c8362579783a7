"""The QEMU version blockd emulates, and its own version for the ``package`` field."""

from typing import Any

from blockd import __version__

QEMU_MAJOR = 7
QEMU_MINOR = 2
QEMU_MICRO = 0

PACKAGE = f"blockd {__version__}"


def version_info() -> dict[str, Any]:
    """The VersionInfo object shared by the greeting and ``query-version``.

    Members are inserted in schema order, as QEMU's output visitor does; the
    wire order is then derived from that (see blockd.qmp.qdict).
    """
    return {
        "qemu": {"major": QEMU_MAJOR, "minor": QEMU_MINOR, "micro": QEMU_MICRO},
        "package": PACKAGE,
    }
