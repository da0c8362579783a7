"""blockd: a QMP daemon that emulates QEMU's block layer over real image files."""

__version__ = "0.1.0"
