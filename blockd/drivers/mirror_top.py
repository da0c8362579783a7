"""The implicit filter an active commit (a mirror job) puts above its source
node (QEMU's ``mirror_top`` driver in block/mirror.c).

Guest writes that arrive through the filter are forwarded to the source; the
job learns about every write to the source, through this filter or not, from
its write tracker (:mod:`blockd.jobs.mirror`), as QEMU's dirty bitmap on the
source does.  While a job is attached the filter passes its parents' write
permission down and shares everything; once the job stops (``stopped``) it
takes nothing, so the graph can be changed under it.
"""

from __future__ import annotations

from typing import ClassVar

from blockd.drivers.base import ChildRole
from blockd.drivers.commit_top import PERM_ALL, BackingFilter

_PERM_WRITE, _PERM_RESIZE = 0x2, 0x8


class MirrorTopDriver(BackingFilter):
    name: ClassVar[str] = "mirror_top"

    def __init__(self) -> None:
        super().__init__()
        # bs_opaque->stop: the job is over, take no permissions any more.
        self.stopped = False

    def child_perm(
        self,
        child_name: str,
        role: ChildRole,
        read_only: bool,
        perm: int = 0,
        shared: int = PERM_ALL,
    ) -> tuple[int, int]:
        """bdrv_mirror_top_child_perm(): forward writers' WRITE, share all but
        RESIZE."""
        if self.stopped:
            return 0, PERM_ALL
        # Everything shared but resizing (the job copies a fixed length).
        return perm & _PERM_WRITE, PERM_ALL & ~_PERM_RESIZE
