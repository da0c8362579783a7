"""The daemon's jobs (QEMU's global job list) and job-id rules.

:func:`get_manager` attaches one :class:`JobManager` to a daemon as
``daemon.jobs`` (and ``daemon.block_jobs`` for x-debug-query-block-graph) and
registers the shutdown hook that cancels running jobs before the graph closes
its nodes (QSD's job_cancel_sync_all before bdrv_close_all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from blockd.qmp.errors import DeviceNotActive, GenericError
from blockd.qmp.events import EventBus

if TYPE_CHECKING:
    from blockd.jobs.blockjob import BlockJob
    from blockd.jobs.job import Job

log = logging.getLogger(__name__)


def id_wellformed(job_id: str) -> bool:
    """QEMU's id_wellformed(): a letter, then letters, digits, '-', '.', '_'."""
    if not job_id or not (job_id[0].isascii() and job_id[0].isalpha()):
        return False
    return all((c.isascii() and c.isalnum()) or c in "-._" for c in job_id[1:])


class JobManager:
    """Every job of one daemon, newest first (QLIST_INSERT_HEAD order)."""

    def __init__(self, events: EventBus, lock: asyncio.Lock | None = None) -> None:
        self.events = events
        self._lock = lock
        self.jobs: list[Job] = []

    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        """The main-loop lock: job completion does not interleave with commands."""
        if self._lock is None:
            yield
            return
        async with self._lock:
            yield

    # -- registry -----------------------------------------------------------------

    def check_new_id(self, job_id: str) -> None:
        """job_create()'s id checks and texts."""
        if not id_wellformed(job_id):
            raise GenericError(f"Invalid job ID '{job_id}'")
        if self.get(job_id) is not None:
            raise GenericError(f"Job ID '{job_id}' already in use")

    def add(self, job: Job) -> None:
        self.jobs.insert(0, job)

    def remove(self, job: Job) -> None:
        if job in self.jobs:
            self.jobs.remove(job)

    def get(self, job_id: str) -> Job | None:
        for job in self.jobs:
            if job.id == job_id:
                return job
        return None

    def find_job(self, job_id: str) -> Job:
        """job-* commands: GenericError ``Job not found``."""
        job = self.get(job_id)
        if job is None:
            raise GenericError("Job not found")
        return job

    def find_block_job(self, job_id: str) -> BlockJob:
        """block-job-* commands: DeviceNotActive ``Block job 'x' not found``."""
        from blockd.jobs.blockjob import BlockJob

        job = self.get(job_id)
        if not isinstance(job, BlockJob):
            raise DeviceNotActive(f"Block job '{job_id}' not found")
        return job

    def job_backends(self) -> list[Any]:
        """Every job's own BlockBackend (JobBackend: ``name`` "", ``root``), for
        x-debug-query-block-graph's "block-backend" nodes."""
        return [b for j in self.block_jobs() for b in j.backends]

    def block_jobs(self) -> list[BlockJob]:
        """Block jobs, newest first (query-block-jobs, x-debug-query-block-graph)."""
        from blockd.jobs.blockjob import BlockJob

        return [j for j in self.jobs if isinstance(j, BlockJob)]

    async def settle(self, job: Job) -> None:
        """Let a job that a command just woke run to its next yield, and finish
        it if its run ended, before the command replies.

        In QEMU the woken coroutine runs inside the command, and job_exit() is
        a bottom half that runs before the reply is sent: a cancelled or
        already finished job emits its events ahead of the command's reply.
        The caller holds the dispatcher lock, so the completion runs here.
        """
        for _ in range(3):
            await asyncio.sleep(0)
        if job.deferred_to_main_loop and not job.is_completed() and job.status != "null":
            await job._completed()

    # -- queries ------------------------------------------------------------------

    def query_jobs(self) -> list[dict[str, Any]]:
        return [j.info() for j in self.jobs]

    def query_block_jobs(self) -> list[dict[str, Any]]:
        return [j.block_info() for j in self.block_jobs()]

    # -- shutdown -----------------------------------------------------------------

    async def cancel_all(self, timeout: float = 30.0) -> None:
        """job_cancel_sync_all(): cancel every job and wait until each is gone."""
        for job in list(self.jobs):
            try:
                # job_cancel_sync_all(): forced, a ready mirror does not pivot.
                await job.cancel(True)
            except Exception:
                log.exception("cancelling job %s", job.id)
        for job in list(self.jobs):
            if job.status == "concluded":
                with contextlib.suppress(Exception):
                    await job.dismiss()
                continue
            try:
                await asyncio.wait_for(job.wait_completed(), timeout)
            except TimeoutError:
                log.error("job %s did not stop", job.id)
            if job.status == "concluded":
                with contextlib.suppress(Exception):
                    await job.dismiss()


def get_manager(daemon: Any) -> JobManager:
    """The daemon's JobManager, created (with its shutdown hook) on first use."""
    mgr = getattr(daemon, "jobs", None)
    if isinstance(mgr, JobManager):
        return mgr
    dispatcher = getattr(daemon, "dispatcher", None)
    lock = getattr(dispatcher, "lock", None)
    mgr = JobManager(daemon.events, lock if isinstance(lock, asyncio.Lock) else None)
    daemon.jobs = mgr
    daemon.block_jobs = mgr.block_jobs
    hooks = getattr(daemon, "shutdown_hooks", None)
    if isinstance(hooks, list):
        # Hooks run in reverse order: this one before the graph's close_all.
        hooks.append(mgr.cancel_all)
    return mgr
