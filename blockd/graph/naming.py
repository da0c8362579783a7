"""Node names: QEMU's id_wellformed() rules and generated "#blockNNN" names."""

from __future__ import annotations

import random
import re

from blockd.qmp.errors import GenericError

_WELLFORMED = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")
# sizeof(bs->node_name) in QEMU: names must be shorter.
NODE_NAME_SIZE = 32


def check_node_name(name: str, taken: bool) -> None:
    """bdrv_assign_node_name()'s checks, in its order, with its texts."""
    if not _WELLFORMED.match(name):
        raise GenericError(f"Invalid node-name: '{name}'")
    if taken:
        raise GenericError(f"Duplicate nodes with node-name='{name}'")
    if len(name) >= NODE_NAME_SIZE:
        raise GenericError("Node name too long")


class AutoNamer:
    """id_generate(ID_BLOCK): "#block", a counter that never goes back, then two
    random digits ("#block769" is counter 7, random 69)."""

    def __init__(self) -> None:
        self.counter = 0

    def next(self) -> str:
        name = f"#block{self.counter}{random.randrange(100):02d}"
        self.counter += 1
        return name
