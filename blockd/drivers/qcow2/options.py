"""Runtime options of an open qcow2 node (qcow2_update_options_prepare()).

Parsed into one immutable value first and applied afterwards, so that an open or
reopen that QEMU would refuse changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blockd.drivers.base import OpenFlags
from blockd.qmp.errors import GenericError

from . import header as H
from .cache import CacheConfig, resolve_cache_options

DISCARD_REQUEST = "request"
DISCARD_OTHER = "other"
DISCARD_SNAPSHOT = "snapshot"
DISCARD_NEVER = "never"
DISCARD_ALWAYS = "always"

OVERLAP_TEMPLATES = ("none", "constant", "cached", "all")


@dataclass(frozen=True)
class RuntimeOptions:
    cache: CacheConfig
    lazy_refcounts: bool
    # Which kinds of freed clusters are discarded in the file too.
    discard_passthrough: dict[str, bool]
    # Metadata kinds data writes are checked against (overlap-check).
    overlap_checks: frozenset[str]


def _bool(options: dict[str, Any], key: str, default: bool) -> bool:
    from blockd.drivers.open import parse_bool

    val = options.get(key)
    return default if val is None else parse_bool(key, val)


def parse_runtime_options(
    options: dict[str, Any], flags: OpenFlags, hdr: H.Qcow2Header
) -> RuntimeOptions:
    """Validate the node options in QEMU's order; GenericError with its texts."""
    entry = 16 if hdr.incompatible_features & H.INCOMPAT_EXTL2 else 8
    cache = resolve_cache_options(options, hdr.cluster_size, hdr.size, entry)
    lazy = _bool(options, "lazy-refcounts", bool(hdr.compatible_features & H.COMPAT_LAZY_REFCOUNTS))
    if lazy and hdr.version < 3:
        raise GenericError(
            "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level"
        )
    ov = options.get("overlap-check")
    if isinstance(ov, dict):
        ov = ov.get("template")
    tmpl = options.get("overlap-check.template")
    if ov is not None and tmpl is not None and ov != tmpl:
        raise GenericError(
            "Conflicting values for qcow2 options 'overlap-check' "
            f"('{ov}') and 'overlap-check.template' ('{tmpl}')"
        )
    ov = ov if ov is not None else tmpl
    if ov is not None and ov not in OVERLAP_TEMPLATES:
        raise GenericError(
            f"Unsupported value '{ov}' for qcow2 option 'overlap-check'. "
            "Allowed are any of the following: none, constant, cached, all"
        )
    passthrough = {
        DISCARD_NEVER: False,
        DISCARD_ALWAYS: True,
        DISCARD_REQUEST: _bool(options, "pass-discard-request", flags.discard_unmap),
        DISCARD_SNAPSHOT: _bool(options, "pass-discard-snapshot", True),
        DISCARD_OTHER: _bool(options, "pass-discard-other", False),
    }
    enc = options.get("encrypt")
    fmt = enc.get("format") if isinstance(enc, dict) else options.get("encrypt.format")
    if fmt and not hdr.crypt_method:
        raise GenericError(f"No encryption in image header, but options specified format '{fmt}'")
    if hdr.crypt_method:
        # blockd has no cipher support: QEMU's answer when no secret is given.
        raise GenericError("Parameter 'encrypt.key-secret' is required for cipher")
    return RuntimeOptions(cache, lazy, passthrough, _overlap_checks(options, ov or "cached"))


# QCOW2_OL_* in bit order (the lowest set bit names an overlap) and the option
# that switches each one on or off.
OVERLAP_KINDS: tuple[tuple[str, str], ...] = (
    ("qcow2_header", "main-header"),
    ("active L1 table", "active-l1"),
    ("active L2 table", "active-l2"),
    ("refcount table", "refcount-table"),
    ("refcount block", "refcount-block"),
    ("snapshot table", "snapshot-table"),
    ("inactive L1 table", "inactive-l1"),
    ("inactive L2 table", "inactive-l2"),
    ("bitmap directory", "bitmap-directory"),
)
_CONSTANT = {
    "qcow2_header",
    "active L1 table",
    "refcount table",
    "snapshot table",
    "bitmap directory",
}
_CACHED = _CONSTANT | {"active L2 table", "refcount block", "inactive L1 table"}
_TEMPLATES = {
    "none": set(),
    "constant": _CONSTANT,
    "cached": _CACHED,
    "all": _CACHED | {"inactive L2 table"},
}


def _overlap_checks(options: dict[str, Any], template: str) -> frozenset[str]:
    """The template's checks, each overridable by overlap-check.<name>."""
    enabled = set(_TEMPLATES[template])
    nested = options.get("overlap-check")
    for kind, opt in OVERLAP_KINDS:
        val = nested.get(opt) if isinstance(nested, dict) else None
        if val is None:
            val = options.get(f"overlap-check.{opt}")
        if val is not None and _bool({opt: val}, opt, False):
            enabled.add(kind)
        elif val is not None:
            enabled.discard(kind)
    return frozenset(enabled)
