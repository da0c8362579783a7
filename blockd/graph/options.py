"""QDict-style option handling: flattening, inheritance, generic node options."""

from __future__ import annotations

from typing import Any

from blockd.drivers.base import ChildRole

# Options the block layer handles itself (bdrv_runtime_opts); never given to drivers.
GENERIC_KEYS = frozenset(
    {
        "driver",
        "node-name",
        "read-only",
        "auto-read-only",
        "cache.direct",
        "cache.no-flush",
        "discard",
        "detect-zeroes",
        "force-share",
    }
)


def flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """qdict_flatten(): nested dicts and lists to dotted keys (``file.filename``,
    ``children.0``); scalars and null stay as they are."""
    out: dict[str, Any] = {}
    for key, v in value.items():
        full = f"{prefix}{key}"
        if isinstance(v, dict):
            if v:
                out.update(flatten(v, full + "."))
            else:
                out[full] = {}
        elif isinstance(v, list):
            out.update(flatten({str(i): e for i, e in enumerate(v)}, full + "."))
        else:
            out[full] = v
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys back to nested dicts (numeric levels stay dicts)."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        parts = key.split(".")
        cur = out
        for p in parts[:-1]:
            nxt = cur.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                cur[p] = nxt
            cur = nxt
        cur[parts[-1]] = v
    return out


def extract_sub(flat: dict[str, Any], prefix: str) -> dict[str, Any]:
    """qdict_extract_subqdict(): remove ``prefix.*`` keys, return them unprefixed."""
    dot = prefix + "."
    sub = {k[len(dot):]: v for k, v in flat.items() if k.startswith(dot)}
    for k in [k for k in flat if k.startswith(dot)]:
        del flat[k]
    return sub


def has_sub(flat: dict[str, Any], prefix: str) -> bool:
    dot = prefix + "."
    return any(k.startswith(dot) for k in flat)


def inherit(child: dict[str, Any], parent: dict[str, Any], role: ChildRole) -> None:
    """bdrv_inherited_options(): defaults a child takes from its parent.

    Only keys the child does not set are filled in.
    """
    for key in ("cache.direct", "cache.no-flush", "force-share"):
        if key not in child and key in parent:
            child[key] = parent[key]
    if role & ChildRole.COW:
        # Backing files are opened read-only by default.
        child.setdefault("read-only", True)
        child.setdefault("auto-read-only", False)
    else:
        for key in ("read-only", "auto-read-only"):
            if key not in child and key in parent:
                child[key] = parent[key]
    # Discards are filtered by the top node's policy; lower layers pass them on.
    child.setdefault("discard", "unmap")


def root_defaults(opts: dict[str, Any]) -> None:
    """What blockdev-add puts in a root node's options (bds_tree_init)."""
    opts.setdefault("cache.direct", False)
    opts.setdefault("cache.no-flush", False)
    opts.setdefault("read-only", False)


def driver_options(flat: dict[str, Any], child_options: set[str]) -> dict[str, Any]:
    """The driver-specific part, nested, without generic keys and children."""
    mine = {
        k: v
        for k, v in flat.items()
        if k not in GENERIC_KEYS and k.split(".", 1)[0] not in child_options
    }
    return unflatten(mine)
