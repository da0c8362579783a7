"""Node file names as QEMU 7.2 reports them (bdrv_refresh_filename, bdrv_dirname).

A node's ``filename`` is either a plain name that would reopen the same subtree
(``/img/a.qcow2``, ``null-co://``, ``blkdebug::/img/a``) or, when options the
user gave change what the node shows (a strong runtime option, an overridden
backing file, a filter), ``json:`` followed by the node's *full open options*:
its strong options plus the full options of every child, printed as QEMU prints
a QDict (hash order) and truncated to QEMU's PATH_MAX buffer.  iotests and
libvirt compare these strings, so the rules below follow block.c step by step.

The names are derived from the graph on demand; a :class:`FilenameCache` lives
for one query so that every node is computed once (a chain of N nodes costs
O(N), the JSON text of each node is capped at the buffer size).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from blockd.drivers.base import ChildRole
from blockd.graph.node import BdrvChild, BlockNode
from blockd.qmp.json_encoder import encode, quote_string
from blockd.qmp.qdict import qdict_keys, qdict_ordered

# bs->filename / bs->exact_filename are char[PATH_MAX] (4096 with the NUL).
FILENAME_BUF = 4096
# JSON text kept per node: anything longer is cut to "..." in bs->filename anyway.
_JSON_CAP = FILENAME_BUF + 16

# Options that change what a node shows (drv->strong_runtime_opts in QEMU 7.2);
# a key ending in "." covers every option below that prefix.  A driver class may
# declare its own ``strong_runtime_opts`` instead.
STRONG_RUNTIME_OPTS: dict[str, tuple[str, ...]] = {
    "raw": ("offset", "size"),
    "null-co": ("size", "read-zeroes"),
    "null-aio": ("size", "read-zeroes"),
    "throttle": ("throttle-group",),
    "qcow2": ("encrypt.key-secret",),
    "luks": ("key-secret",),
    "blkdebug": (
        "config", "inject-error.", "set-state.", "align", "max-transfer",
        "opt-write-zero", "max-write-zero", "opt-discard", "max-discard",
    ),
    "quorum": ("vote-threshold", "blkverify", "rewrite-corrupted", "read-pattern"),
}



def path_has_protocol(path: str) -> bool:
    """Whether ``path`` starts with "<protocol>:" (a colon before any slash)."""
    for ch in path:
        if ch == ":":
            return True
        if ch == "/":
            return False
    return False


def path_is_absolute(path: str) -> bool:
    return path.startswith("/")


def path_combine(base_path: str, filename: str) -> str:
    """``filename`` relative to the directory of ``base_path`` (QEMU's path_combine:
    a protocol prefix of ``base_path`` is kept, URLs work)."""
    if path_is_absolute(filename):
        return filename
    start = 0
    if path_has_protocol(base_path):
        start = base_path.index(":") + 1
    slash = base_path.rfind("/")
    cut = slash + 1 if slash >= 0 else 0
    return base_path[: max(start, cut)] + filename


def full_backing_filename_from_filename(backed: str, backing: str) -> str | None:
    """bdrv_get_full_backing_filename_from_filename(); None when it cannot be made
    absolute (QEMU's "Cannot use relative backing file names for ...")."""
    if not backing:
        return None
    if path_has_protocol(backing) or path_is_absolute(backing):
        return backing
    if not backed or backed.startswith("json:"):
        return None
    return path_combine(backed, backing)


def is_protocol(node: BlockNode) -> bool:
    """Whether the node's driver opens a file itself (QEMU's .bdrv_file_open):
    protocols, and drivers that declare a file-name prefix (blkdebug:): their
    file name may stand for a format node above them."""
    drv = node.driver
    return bool(drv.is_protocol) or bool(getattr(drv, "protocol_name", None))


def primary_child(node: BlockNode) -> BdrvChild | None:
    """bdrv_primary_child(): the child with the PRIMARY role."""
    for c in node.children:
        if c.role & ChildRole.PRIMARY:
            return c
    return None


def filter_child(node: BlockNode) -> BdrvChild | None:
    """bdrv_filter_child(): a filter's filtered child (its backing or file)."""
    if not node.driver.is_filter:
        return None
    c = node.child("backing") or node.child("file")
    if c is None:
        # Filters whose child has another name (blkdebug's "image").
        for c2 in node.children:
            if c2.role & ChildRole.FILTERED:
                return c2
    return c


def cow_child(node: BlockNode) -> BdrvChild | None:
    """bdrv_cow_child(): a non-filter's backing child."""
    if node.driver.is_filter:
        return None
    return node.child("backing")


def filter_or_cow_child(node: BlockNode) -> BdrvChild | None:
    return cow_child(node) or filter_child(node)


def strong_options_of(node: BlockNode) -> tuple[str, ...]:
    declared = getattr(type(node.driver), "strong_runtime_opts", None)
    if declared is not None:
        return tuple(declared)
    return STRONG_RUNTIME_OPTS.get(node.driver.name, ())


@dataclass(eq=False)
class FilenameInfo:
    """What bdrv_refresh_filename() leaves in one node."""

    exact_filename: str
    # Full open options: plain values, child entries as FilenameInfo (or a list
    # of them), None for a suppressed backing file.
    full_open_options: dict[str, Any]
    # full_open_options as QEMU's JSON text, cut after _JSON_CAP characters.
    json: str
    json_complete: bool
    filename: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _encode_value(value: Any, budget: int) -> tuple[str, bool]:
    """JSON text of one full_open_options value (children by their cached text)."""
    if isinstance(value, FilenameInfo):
        return value.json, value.json_complete
    if isinstance(value, list) and any(isinstance(v, FilenameInfo) for v in value):
        parts = ["["]
        used = 1
        for i, v in enumerate(value):
            text, complete = _encode_value(v, budget - used)
            piece = (", " if i else "") + text
            parts.append(piece)
            used += len(piece)
            if not complete or used > budget:
                return "".join(parts), False
        parts.append("]")
        return "".join(parts), True
    return encode(qdict_ordered(value)), True


def _encode_options(opts: dict[str, Any]) -> tuple[str, bool]:
    """QEMU's qobject_to_json() of a full_open_options QDict, capped in length."""
    parts = ["{"]
    used = 1
    for i, key in enumerate(qdict_keys(opts)):
        text, complete = _encode_value(opts[key], _JSON_CAP - used)
        piece = (", " if i else "") + quote_string(key) + ": " + text
        parts.append(piece)
        used += len(piece)
        if not complete or used > _JSON_CAP:
            return "".join(parts)[:_JSON_CAP], False
    parts.append("}")
    return "".join(parts), True


def _json_filename(info: FilenameInfo) -> str:
    """"json:" + the options, cut as QEMU's snprintf into bs->filename does
    (the last three bytes become "..." when it does not fit)."""
    text = "json:" + info.json
    if info.json_complete and len(text) < FILENAME_BUF:
        return text
    return text[: FILENAME_BUF - 4] + "..."


class FilenameCache:
    """bdrv_refresh_filename() results of one query, computed once per node."""

    def __init__(self) -> None:
        self._infos: dict[int, FilenameInfo] = {}

    def filename(self, node: BlockNode) -> str:
        return self.refresh(node).filename

    def exact_filename(self, node: BlockNode) -> str:
        return self.refresh(node).exact_filename

    def refresh(self, node: BlockNode) -> FilenameInfo:
        info = self._infos.get(id(node))
        if info is None:
            # Deep chains: children first without recursing through Python frames.
            self._refresh_below(node)
            info = self._infos[id(node)]
        return info

    def _refresh_below(self, root: BlockNode) -> None:
        stack: list[tuple[BlockNode, bool]] = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if id(node) in self._infos:
                continue
            if ready:
                self._infos[id(node)] = self._compute(node)
                continue
            stack.append((node, True))
            for c in node.children:
                if id(c.child) not in self._infos:
                    stack.append((c.child, False))

    def backing_overridden(self, node: BlockNode) -> bool:
        """bdrv_backing_overridden(): the backing child is not what the image
        header alone would have opened (compared with bs->auto_backing_file: the
        header's name, or the implicitly opened backing's name)."""
        backing = node.child("backing")
        if backing is not None:
            return node.auto_backing_file != self.filename(backing.child)
        return bool(node.auto_backing_file)

    def _compute(self, node: BlockNode) -> FilenameInfo:
        drv = node.driver
        if node.implicit and node.children:
            # Implicit filters just show their (single) child.
            src = self._infos[id(node.children[0].child)]
            return FilenameInfo(
                src.exact_filename, src.full_open_options, src.json, src.json_complete,
                src.filename,
            )

        overridden = self.backing_overridden(node)
        opts: dict[str, Any] = {}
        generate_json = self._append_strong_options(opts, node)
        generate_json = generate_json or overridden

        if drv.name == "quorum":
            # quorum_gather_child_options(): the children as one list.
            kids = sorted(
                (c for c in node.children if c.name.startswith("children.")),
                key=lambda c: int(c.name.split(".", 1)[1]),
            )
            opts["children"] = [self._infos[id(c.child)] for c in kids]
        else:
            for c in node.children:
                if c.name == "backing" and not overridden:
                    continue
                opts[c.name] = self._infos[id(c.child)]
            if overridden and node.child("backing") is None:
                opts["backing"] = None

        json_text, complete = _encode_options(opts)
        info = FilenameInfo("", opts, json_text, complete)

        own = getattr(drv, "refresh_filename", None)
        primary = primary_child(node)
        if own is not None:
            # The driver's own bdrv_refresh_filename (null-co, blkdebug,
            # blkverify): from its children's exact names and its options.
            info.exact_filename = own(
                {c.name: self._infos[id(c.child)].exact_filename for c in node.children},
                tuple(info.full_open_options), node.options)
        elif primary is not None:
            child_exact = self._infos[id(primary.child)].exact_filename
            if (
                child_exact
                and is_protocol(primary.child)
                and not drv.is_filter
                and not generate_json
            ):
                info.exact_filename = child_exact
        elif is_protocol(node):
            # A protocol keeps the name it was opened with (bdrv_open_common).
            info.exact_filename = _opened_filename(node)

        if info.exact_filename:
            info.filename = info.exact_filename.encode()[: FILENAME_BUF - 1].decode(
                "utf-8", "replace"
            )
        else:
            info.filename = _json_filename(info)
        return info

    def _append_strong_options(self, opts: dict[str, Any], node: BlockNode) -> bool:
        """append_strong_runtime_options(): "driver", "filename" and the driver's
        strong options present in bs->options; True if any beyond the first two."""
        found_any = False
        options = node.options
        for key in ("driver", "filename", *strong_options_of(node)):
            given = False
            if key.endswith("."):
                for k, v in options.items():
                    if k.startswith(key):
                        opts[k] = v
                        given = True
            elif key in options:
                value = options[key]
                if key == "filename" and not isinstance(value, str):
                    continue
                opts[key] = value
                given = True
            if given and key not in ("driver", "filename"):
                found_any = True
        if "driver" not in opts:
            opts["driver"] = node.driver.name
        return found_any

    def dirname(self, node: BlockNode) -> str | None:
        """bdrv_dirname(): the directory (with trailing slash) relative backing
        names are resolved against; None when there is none."""
        seen = 0
        while True:
            primary = primary_child(node)
            if primary is None or node.driver.name == "quorum":
                break
            node = primary.child
            seen += 1
            if seen > 100000:  # a cycle would be a graph bug; never loop forever
                return None
        if node.driver.name == "quorum":
            return None
        exact = self.exact_filename(node)
        if exact:
            return path_combine(exact, "")
        return None

    def full_backing_filename(self, node: BlockNode) -> str | None:
        """bdrv_get_full_backing_filename(): the header's backing name made absolute."""
        backing = header_backing(node)[0]
        if not backing:
            return None
        if path_has_protocol(backing) or path_is_absolute(backing):
            return backing
        directory = self.dirname(node)
        if directory is None:
            return None
        return directory + backing


def header_backing(node: BlockNode) -> tuple[str, str]:
    """(bs->backing_file, bs->backing_format): the backing name and format the
    image header holds now (the node's record, else what the driver read)."""
    name = node.backing_file or getattr(node.driver, "backing_file", None) or ""
    fmt = node.backing_format or getattr(node.driver, "backing_format", None) or ""
    return str(name), str(fmt)


def _opened_filename(node: BlockNode) -> str:
    value = node.options.get("filename")
    if isinstance(value, str):
        return value
    fn = getattr(node.driver, "filename", "")
    return fn if isinstance(fn, str) else ""


def allocated_file_size(node: BlockNode) -> int | None:
    """bdrv_get_allocated_file_size(): host bytes behind a node, None if unknown
    (protocols without their own answer, or any child without one)."""
    drv = node.driver
    name = drv.name
    if name in ("file", "host_device"):
        fd = getattr(drv, "fd", -1)
        try:
            if isinstance(fd, int) and fd >= 0:
                st = os.fstat(fd)
            else:
                st = os.stat(_opened_filename(node))
        except OSError:
            return None
        return st.st_blocks * 512
    own = getattr(drv, "allocated_file_size", None)
    if own is not None:
        own_size: int = own()
        return own_size
    if is_protocol(node):
        return None
    filtered = filter_child(node)
    if drv.is_filter:
        return allocated_file_size(filtered.child) if filtered is not None else None
    total = 0
    for c in node.children:
        if c.role & (ChildRole.DATA | ChildRole.METADATA | ChildRole.FILTERED):
            size = allocated_file_size(c.child)
            if size is None:
                return None
            total += size
    return total
