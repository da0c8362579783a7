"""The implicit filter a commit job puts above its top node (QEMU's
``commit_top`` driver in block/commit.c).

It exists so that the overlay's backing link points at something the job owns
for the job's life: reads go through to the top node, the filter takes no
permissions on it and shares everything (the job takes what it needs with its
own edges).  It is created by the job, never by blockdev-add, and has no
options.  Like QEMU's, these filter drivers are not registered as formats
(``qemu-img --help`` does not list them; no one can open them by name).
"""

from __future__ import annotations

from typing import Any, ClassVar

from blockd.drivers.base import BlockDriver, ChildRole, ChildSpec, OpenFlags
from blockd.drivers.compress import FilterPassthrough
from blockd.qmp.errors import GenericError

PERM_ALL = 0xF


class BackingFilter(FilterPassthrough):
    """A filter whose filtered child is its ``backing`` (commit_top, mirror_top)."""

    child_specs: ClassVar[tuple[ChildSpec, ...]] = (
        ChildSpec("backing", "backing", ChildRole.FILTERED | ChildRole.PRIMARY),
    )
    supports_reopen: ClassVar[bool] = False
    mutable_opts: ClassVar[frozenset[str] | None] = frozenset()
    # bs->never_freeze: another job may not freeze a link to this filter
    # (QEMU: "Cannot freeze '<link>' link to '<filter>'").
    never_freeze: ClassVar[bool] = True

    def child(self) -> BlockDriver:
        if self.backing is None:
            raise GenericError("No backing file")
        return self.backing

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        self.flags = flags
        self._open_options = dict(options)


class CommitTopDriver(BackingFilter):
    name: ClassVar[str] = "commit_top"

    def child_perm(
        self,
        child_name: str,
        role: ChildRole,
        read_only: bool,
        perm: int = 0,
        shared: int = PERM_ALL,
    ) -> tuple[int, int]:
        """bdrv_commit_top_child_perm(): nothing taken, everything shared."""
        return 0, PERM_ALL
