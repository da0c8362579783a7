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


def _bool(options: dict[str, Any], key: str, default: bool) -> bool:
    from blockd.drivers.open import parse_bool

    val = options.get(key)
    return default if val is None else parse_bool(key, val)


def parse_runtime_options(
    options: dict[str, Any], flags: OpenFlags, hdr: H.Qcow2Header
) -> RuntimeOptions:
    """Validate the node options in QEMU's order; GenericError with its texts."""
    cache = resolve_cache_options(options, hdr.cluster_size, hdr.size)
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
    if isinstance(enc, dict) and enc.get("format") and not hdr.crypt_method:
        raise GenericError(
            f"No encryption in image header, but options specified format '{enc['format']}'"
        )
    return RuntimeOptions(cache, lazy, passthrough)
