"""Protocol prefixes in file names (QEMU's bdrv_find_protocol / bdrv_fill_options).

A file name such as ``blkdebug:rules.cfg:disk.img``, ``null-co://`` or
``file:disk.img`` names the driver that opens it by its prefix.  Drivers declare
the prefix as ``protocol_name`` and turn the whole name into their options
with a ``parse_filename(filename) -> dict`` class method; the generic code
(the tools' opener, the graph's implicit backing files, qemu-img create)
names no driver and goes through :func:`filename_options`.  A name without a
prefix (no colon before the first slash) belongs to the ``file`` driver;
``json:{...}`` is the pseudo-protocol the callers handle themselves.
"""

from __future__ import annotations

from typing import Any

from blockd.drivers.base import BlockDriver, driver_class, registered_drivers
from blockd.qmp.errors import GenericError


def path_has_protocol(path: str) -> bool:
    """QEMU's path_has_protocol(): a colon comes before any slash."""
    colon = path.find(":")
    if colon < 0:
        return False
    slash = path.find("/")
    return slash < 0 or colon < slash


def protocol_drivers() -> dict[str, type[BlockDriver]]:
    """Registered drivers that declare a protocol prefix, by prefix."""
    out: dict[str, type[BlockDriver]] = {}
    for name in registered_drivers():
        cls = driver_class(name)
        proto = getattr(cls, "protocol_name", None)
        if isinstance(proto, str) and proto:
            out.setdefault(proto, cls)
    return out


def find_protocol(filename: str) -> type[BlockDriver]:
    """bdrv_find_protocol(): the driver a file name's prefix names, ``file``
    without a prefix; QEMU's ``Unknown protocol '...'`` otherwise."""
    if not path_has_protocol(filename):
        return driver_class("file")
    prefix = filename[: filename.index(":")]
    cls = protocol_drivers().get(prefix)
    if cls is None:
        raise GenericError(f"Unknown protocol '{prefix}'")
    return cls


def filename_options(filename: str) -> dict[str, Any]:
    """Options (nested) that open ``filename`` as QEMU does when a bare name is
    given: ``{"driver": <protocol>, ...}`` with the driver's parsed options, or
    ``{"driver": "file", "filename": ...}``; a ``json:{...}`` name gives its
    options."""
    if filename.startswith("json:"):
        from blockd.drivers.open import parse_json_filename

        return parse_json_filename(filename)
    cls = find_protocol(filename)
    parse = getattr(cls, "parse_filename", None)
    opts: dict[str, Any] = {"driver": cls.name}
    if parse is None:
        opts["filename"] = filename
    else:
        opts.update(parse(filename))
    return opts


def filename_children(cls: type[BlockDriver]) -> dict[str, str]:
    """Child option -> legacy option holding that child's file name (blkdebug's
    ``image`` <- ``x-image``): how a driver opened from a prefixed file name
    finds its children (QEMU's bdrv_open_child(filename, ...))."""
    declared = getattr(cls, "filename_children", None)
    return dict(declared) if isinstance(declared, dict) else {}
