"""QEMU 7.2's job core (job.c): state machine, verbs, pause points, finalization.

A job is an asyncio task running :meth:`Job.run`; everything else (verbs from
QMP, the completion path) runs on the event loop like QEMU's main loop.  The
status only changes through :meth:`Job.transition`, checked against
:data:`TRANSITIONS`, and every change emits ``JOB_STATUS_CHANGE``; QMP verbs are
checked against :data:`VERBS` with QEMU's text.

Completion follows job.c: ``run`` returns (or raises) -> the job is "deferred to
the main loop" -> :meth:`Job._completed` under the manager's lock (the QMP
dispatcher lock, so no command interleaves with a graph change, as the BQL
guarantees in QEMU) -> waiting -> pending -> prepare -> commit/abort -> clean
-> COMPLETED/CANCELLED event -> concluded -> null (auto-dismiss).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from typing import TYPE_CHECKING, ClassVar

from blockd.qmp.errors import GenericError

if TYPE_CHECKING:
    from blockd.jobs.manager import JobManager

log = logging.getLogger(__name__)

STATUSES = (
    "undefined", "created", "running", "paused", "ready", "standby",
    "waiting", "pending", "aborting", "concluded", "null",
)


def _table(rows: dict[str, str]) -> dict[str, frozenset[str]]:
    """Rows of 0/1 in STATUSES order (the layout of job.c's tables)."""
    return {
        key: frozenset(s for s, bit in zip(STATUSES, bits.split(), strict=True) if bit == "1")
        for key, bits in rows.items()
    }


# JobSTT: from-status -> statuses it may go to.
#                         U  C  R  P  Y  S  W  D  X  E  N
TRANSITIONS = _table({
    "undefined": "0  1  0  0  0  0  0  0  0  0  0",
    "created":   "0  0  1  0  0  0  0  0  1  0  1",
    "running":   "0  0  0  1  1  0  1  0  1  0  0",
    "paused":    "0  0  1  0  0  0  0  0  0  0  0",
    "ready":     "0  0  0  0  0  1  1  0  1  0  0",
    "standby":   "0  0  0  0  1  0  0  0  0  0  0",
    "waiting":   "0  0  0  0  0  0  0  1  1  0  0",
    "pending":   "0  0  0  0  0  0  0  0  1  1  0",
    "aborting":  "0  0  0  0  0  0  0  0  1  1  0",
    "concluded": "0  0  0  0  0  0  0  0  0  0  1",
    "null":      "0  0  0  0  0  0  0  0  0  0  0",
})

# JobVerbTable: verb -> statuses that accept it.
#                         U  C  R  P  Y  S  W  D  X  E  N
VERBS = _table({
    "cancel":    "0  1  1  1  1  1  1  1  0  0  0",
    "pause":     "0  1  1  1  1  1  0  0  0  0  0",
    "resume":    "0  1  1  1  1  1  0  0  0  0  0",
    "set-speed": "0  1  1  1  1  1  0  0  0  0  0",
    "complete":  "0  0  0  0  1  1  0  0  0  0  0",
    "finalize":  "0  0  0  0  0  0  0  1  0  0  0",
    "dismiss":   "0  0  0  0  0  0  0  0  0  1  0",
})

_COMPLETED = frozenset({"waiting", "pending", "aborting", "concluded", "null"})


class JobFailed(Exception):
    """Raised by :meth:`Job.run` or :meth:`Job.prepare` to fail the job.

    ``ret`` is a negative errno; ``msg`` the text query-jobs shows as ``error``
    (default: strerror(-ret), as job_update_rc()).
    """

    def __init__(self, ret: int, msg: str | None = None) -> None:
        super().__init__(msg or os.strerror(-ret))
        self.ret = ret
        self.msg = msg


class Job:
    """One job (QEMU's Job).  Subclasses set ``job_type`` and override ``run``."""

    job_type: ClassVar[str] = ""

    def __init__(
        self,
        manager: JobManager,
        job_id: str,
        *,
        auto_finalize: bool = True,
        auto_dismiss: bool = True,
    ) -> None:
        self.manager = manager
        self.id = job_id
        self.status = "undefined"
        self.auto_finalize = auto_finalize
        self.auto_dismiss = auto_dismiss
        self.progress_current = 0
        self.progress_total = 0
        # 0 or a negative errno; err is the text for query-jobs/events.
        self.ret = 0
        self.err: str | None = None
        self.busy = False
        self.paused = True
        self.pause_count = 1
        self.user_paused = False
        # cancel requested / cancel must not complete (mirror's soft cancel).
        self.cancelled = False
        self.force_cancel = False
        self.deferred_to_main_loop = False
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._timer_deadline: float | None = None
        self._finished = asyncio.Event()

    # -- state machine ------------------------------------------------------------

    def transition(self, status: str) -> None:
        """job_state_transition(): checked against the table, event on change."""
        old = self.status
        if status not in TRANSITIONS[old]:
            raise AssertionError(f"job {self.id}: illegal transition {old} -> {status}")
        self.status = status
        if status != old:
            self.manager.events.emit("JOB_STATUS_CHANGE", {"id": self.id, "status": status})
        if status == "null":
            self._finished.set()

    def apply_verb(self, verb: str) -> None:
        """job_apply_verb(): QEMU's text when ``verb`` is not allowed now."""
        if self.status not in VERBS[verb]:
            raise GenericError(
                f"Job '{self.id}' in state '{self.status}' cannot accept command verb '{verb}'"
            )

    def is_ready(self) -> bool:
        return self.status in ("ready", "standby")

    def is_completed(self) -> bool:
        return self.status in _COMPLETED

    def is_cancelled(self) -> bool:
        """job_is_cancelled(): a cancel that must not complete the job."""
        return self.cancelled and self.force_cancel

    def cancel_requested(self) -> bool:
        return self.cancelled

    @property
    def started(self) -> bool:
        return self.task is not None

    # -- progress -----------------------------------------------------------------

    def progress_update(self, done: int) -> None:
        self.progress_current += done

    def progress_set_remaining(self, remaining: int) -> None:
        self.progress_total = self.progress_current + remaining

    def progress_increase_remaining(self, delta: int) -> None:
        self.progress_total += delta

    # -- hooks for job types ------------------------------------------------------

    async def run(self) -> None:
        """The job proper.  Raise :class:`JobFailed` to fail it."""
        raise NotImplementedError

    async def prepare(self) -> None:
        """Called once all jobs of the transaction succeeded; may raise JobFailed."""

    async def commit(self) -> None:
        """Make the result permanent (after a successful prepare)."""

    async def abort(self) -> None:
        """Undo what the job did (failure or cancellation)."""

    async def clean(self) -> None:
        """Release what the job holds, after commit or abort."""

    def cancel_hook(self, force: bool) -> bool:
        """Driver .cancel: returns whether the cancel is forced (default: always)."""
        return True

    def complete_hook(self) -> None:
        """Driver .complete (jobs with a READY state); absent means not completable."""
        raise GenericError(f"The active block job '{self.id}' cannot be completed")

    has_complete: ClassVar[bool] = False

    def user_resume_hook(self) -> None:
        """Driver .user_resume (block jobs reset their io-status)."""

    def on_pending(self) -> None:
        """Event hook: the job went pending with manual finalization."""

    def on_ready(self) -> None:
        """Event hook: the job became ready."""

    def on_completed(self) -> None:
        """Event hook: finalized successfully or failed (not cancelled)."""

    def on_cancelled(self) -> None:
        """Event hook: finalized after a cancel."""

    def on_speed_change(self) -> None:
        """Hook: the job's speed was changed."""

    # -- coroutine scheduling -----------------------------------------------------

    def enter(self) -> None:
        """job_enter(): wake the job if it is sleeping (not if it is busy)."""
        if not self.started or self.deferred_to_main_loop or self.busy:
            return
        self._timer_deadline = None
        self._wake.set()

    def enter_if_timer_pending(self) -> None:
        if self._timer_deadline is not None:
            self.enter()

    async def _do_yield(self, timeout_ns: int | None) -> None:
        """Sleep until entered (or the timer fires)."""
        self._wake.clear()
        self.busy = False
        if timeout_ns is None:
            self._timer_deadline = None
            await self._wake.wait()
        else:
            self._timer_deadline = time.monotonic() + timeout_ns / 1e9
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_ns / 1e9)
            self._timer_deadline = None
        self.busy = True

    async def pause_point(self) -> None:
        """job_pause_point(): park in paused/standby while a pause is requested."""
        if self.pause_count <= 0 or self.is_cancelled():
            return
        status = self.status
        self.transition("standby" if status == "ready" else "paused")
        self.paused = True
        while self.pause_count > 0 and not self.is_cancelled():
            await self._do_yield(None)
        self.paused = False
        self.transition(status)

    async def sleep_ns(self, ns: int) -> None:
        """job_sleep_ns(): yield (0 = just let others run), then a pause point."""
        if self.is_cancelled():
            return
        if self.pause_count <= 0:
            await self._do_yield(ns)
        await self.pause_point()

    async def yield_(self) -> None:
        """job_yield(): sleep until entered, then a pause point."""
        if self.is_cancelled():
            return
        if self.pause_count <= 0:
            await self._do_yield(None)
        await self.pause_point()

    def pause(self) -> None:
        """job_pause(): a sleeping job is kicked so it reaches its pause point."""
        self.pause_count += 1
        if not self.paused:
            self.enter()

    def resume(self) -> None:
        self.pause_count -= 1
        if self.pause_count:
            return
        if self._timer_deadline is None:
            self.enter()

    # -- lifecycle ----------------------------------------------------------------

    def create(self) -> None:
        """job_create(): register and go to ``created`` (event)."""
        self.manager.add(self)
        self.transition("created")

    def start(self) -> None:
        """job_start(): the task begins at a pause point."""
        self.pause_count -= 1
        self.busy = True
        self.paused = False
        self.transition("running")
        self.task = asyncio.get_running_loop().create_task(self._co_entry())

    async def _co_entry(self) -> None:
        try:
            await self.pause_point()
            await self.run()
        except JobFailed as e:
            self.ret = e.ret
            self.err = e.msg
        except GenericError as e:
            self.ret = -errno.EINVAL
            self.err = e.desc
        except OSError as e:
            self.ret = -(e.errno or errno.EIO)
            self.err = None
        except asyncio.CancelledError:
            self.ret = -errno.ECANCELED
        except Exception as e:  # a bug fails the job, never the daemon
            log.exception("job %s failed", self.id)
            self.ret = -errno.EIO
            self.err = f"internal error: {e}"
        self.busy = False
        self.deferred_to_main_loop = True
        try:
            async with self.manager.lock():
                if not self.is_completed():
                    await self._completed()
        except Exception:
            log.exception("job %s: completion failed", self.id)

    async def early_fail(self) -> None:
        """job_early_fail(): a job that never started goes straight to null."""
        await self._do_dismiss()

    async def _do_dismiss(self) -> None:
        self.busy = False
        self.paused = False
        self.deferred_to_main_loop = True
        self.transition("null")
        self.manager.remove(self)
        await self.free()

    async def free(self) -> None:
        """Driver .free: release what the job object holds once it is gone."""

    def _update_rc(self) -> None:
        if not self.ret and self.is_cancelled():
            self.ret = -errno.ECANCELED
        if self.ret:
            if self.err is None:
                self.err = os.strerror(-self.ret)
            self.transition("aborting")

    async def _completed(self) -> None:
        """job_completed(): the run is over; go to abort or success."""
        self._update_rc()
        if self.ret:
            await self._finalize_single()
        else:
            await self._txn_success()

    async def _txn_success(self) -> None:
        self.transition("waiting")
        self.transition("pending")
        if not self.auto_finalize:
            self.on_pending()
            return
        await self._do_finalize()

    async def _do_finalize(self) -> None:
        """job_do_finalize(): prepare, then commit or abort the (one-job) txn."""
        if self.ret == 0:
            try:
                await self.prepare()
            except JobFailed as e:
                self.ret, self.err = e.ret, e.msg
            except GenericError as e:
                self.ret, self.err = -errno.EPERM, e.desc
            self._update_rc()
        await self._finalize_single()

    async def _finalize_single(self) -> None:
        """job_finalize_single(): commit/abort, clean, event, conclude."""
        self._update_rc()
        try:
            if not self.ret:
                await self.commit()
            else:
                await self.abort()
        finally:
            await self.clean()
        if self.started:
            if self.is_cancelled():
                self.on_cancelled()
            else:
                self.on_completed()
        self.transition("concluded")
        if self.auto_dismiss or not self.started:
            await self._do_dismiss()

    # -- QMP verbs ----------------------------------------------------------------

    def user_pause(self) -> None:
        self.apply_verb("pause")
        if self.user_paused:
            raise GenericError("Job is already paused")
        self.user_paused = True
        self.pause()

    def user_resume(self) -> None:
        if not self.user_paused or self.pause_count <= 0:
            raise GenericError("Can't resume a job that was not paused")
        self.apply_verb("resume")
        self.user_resume_hook()
        self.user_paused = False
        self.resume()

    def _cancel_async(self, force: bool) -> None:
        force = self.cancel_hook(force)
        if self.user_paused:
            self.user_resume_hook()
            self.user_paused = False
            self.pause_count -= 1
        self.cancelled = True
        self.force_cancel |= force

    async def cancel(self, force: bool) -> None:
        """job_cancel(): ask the run to stop, or abort now if it is already over."""
        if self.status == "concluded":
            await self._do_dismiss()
            return
        self._cancel_async(force)
        if not self.started:
            self.ret = -errno.ECANCELED
            await self._completed()
        elif self.deferred_to_main_loop:
            await self._finalize_single()
        else:
            self.enter()

    async def user_cancel(self, force: bool) -> None:
        self.apply_verb("cancel")
        await self.cancel(force)

    def complete(self) -> None:
        self.apply_verb("complete")
        if self.cancel_requested() or not self.has_complete:
            raise GenericError(f"The active block job '{self.id}' cannot be completed")
        self.complete_hook()

    async def finalize(self) -> None:
        self.apply_verb("finalize")
        await self._do_finalize()

    async def dismiss(self) -> None:
        self.apply_verb("dismiss")
        await self._do_dismiss()

    def transition_to_ready(self) -> None:
        """job_transition_to_ready(): for jobs with a READY state."""
        self.transition("ready")
        self.on_ready()

    async def wait_finished(self) -> None:
        """Until the job reached ``null`` (dismissed)."""
        await self._finished.wait()

    async def wait_completed(self) -> None:
        """Until the run is over and the job left running/paused/ready states."""
        while not self.is_completed():
            if self.task is None:
                return
            await asyncio.sleep(0.005)

    # -- queries ------------------------------------------------------------------

    def info(self) -> dict[str, object]:
        """JobInfo (query-jobs), members in schema order."""
        out: dict[str, object] = {
            "id": self.id,
            "type": self.job_type,
            "status": self.status,
            "current-progress": self.progress_current,
            "total-progress": self.progress_total,
        }
        if self.ret and self.err is not None:
            out["error"] = self.err
        elif self.ret:
            out["error"] = os.strerror(-self.ret)
        return out
