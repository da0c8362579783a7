"""qemu-io's command language, shared by ``blockd-io`` and the daemon's HMP qemu-io."""

from blockd.tools.qemuio.commands import QemuIo, run_qemu_io_command

__all__ = ["QemuIo", "run_qemu_io_command"]
