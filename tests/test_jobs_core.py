"""Job core unit tests: transition/verb tables, event order, verbs, rate limiter.

A trivial job type (copies nothing, sleeps in steps with pause points) runs on a
real JobManager and EventBus; the daemon-level sequences are compared with QSD
in test_stream_vs_qsd.py.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest

from blockd.jobs import TRANSITIONS, VERBS, BlockJob, JobFailed, JobManager, RateLimit
from blockd.jobs.manager import id_wellformed
from blockd.qmp.errors import DeviceNotActive, GenericError
from blockd.qmp.events import EventBus


class StepJob(BlockJob):
    """Advances progress in ``steps`` steps; fails at step ``fail_at``."""

    job_type = "stream"

    def __init__(self, mgr: JobManager, job_id: str, steps: int = 5,
                 fail_at: int | None = None, **kw: Any) -> None:
        super().__init__(mgr, job_id, **kw)
        self.steps = steps
        self.fail_at = fail_at
        self.gate = asyncio.Event()
        self.gate.set()
        self.hooks: list[str] = []

    async def run(self) -> None:
        self.progress_set_remaining(self.steps)
        for i in range(self.steps):
            await self.ratelimit_sleep()
            if self.is_cancelled():
                return
            await self.gate.wait()
            if self.fail_at == i:
                if self.error_action(True, errno.EIO) == "stop":
                    self.fail_at = None
                    continue
                raise JobFailed(-errno.EIO)
            self.progress_update(1)
            self.limit.calculate_delay(1)

    async def prepare(self) -> None:
        self.hooks.append("prepare")

    async def commit(self) -> None:
        self.hooks.append("commit")

    async def abort(self) -> None:
        self.hooks.append("abort")

    async def clean(self) -> None:
        self.hooks.append("clean")


def setup() -> tuple[JobManager, list[tuple[str, Any]]]:
    bus = EventBus()
    seen: list[tuple[str, Any]] = []

    def sink(msg: dict[str, Any]) -> None:
        data = msg.get("data", {})
        if msg["event"] == "JOB_STATUS_CHANGE":
            seen.append((msg["event"], data["status"]))
        else:
            seen.append((msg["event"], data))
    bus.subscribe(sink)
    return JobManager(bus), seen


def start(mgr: JobManager, job: StepJob) -> StepJob:
    mgr.check_new_id(job.id)
    job.create()
    job.start()
    return job


def names(seen: list[tuple[str, Any]]) -> list[str]:
    return [s[1] if s[0] == "JOB_STATUS_CHANGE" else s[0] for s in seen]


async def settle(job: StepJob) -> None:
    for _ in range(200):
        if job.status in ("pending", "concluded", "null"):
            return
        await asyncio.sleep(0.001)


def test_tables_match_job_c() -> None:
    assert TRANSITIONS["created"] == {"running", "aborting", "null"}
    assert TRANSITIONS["running"] == {"paused", "ready", "waiting", "aborting"}
    assert TRANSITIONS["ready"] == {"standby", "waiting", "aborting"}
    assert TRANSITIONS["pending"] == {"aborting", "concluded"}
    assert VERBS["complete"] == {"ready", "standby"}
    assert VERBS["cancel"] == {"created", "running", "paused", "ready", "standby",
                               "waiting", "pending"}
    assert VERBS["dismiss"] == {"concluded"}


def test_id_rules() -> None:
    assert id_wellformed("a1-._x")
    assert not id_wellformed("")
    assert not id_wellformed("1bad")
    assert not id_wellformed("a b")
    mgr, _ = setup()
    with pytest.raises(GenericError, match="Invalid job ID ''"):
        mgr.check_new_id("")


async def test_default_sequence() -> None:
    mgr, seen = setup()
    job = start(mgr, StepJob(mgr, "j0"))
    await job.wait_finished()
    assert names(seen) == ["created", "running", "waiting", "pending",
                           "BLOCK_JOB_COMPLETED", "concluded", "null"]
    assert seen[4][1] == {"type": "stream", "device": "j0", "len": 5, "offset": 5, "speed": 0}
    assert job.hooks == ["prepare", "commit", "clean"]
    assert mgr.jobs == []


async def test_manual_finalize_dismiss() -> None:
    mgr, seen = setup()
    job = start(mgr, StepJob(mgr, "j0", auto_finalize=False, auto_dismiss=False))
    await settle(job)
    assert names(seen)[-2:] == ["pending", "BLOCK_JOB_PENDING"]
    assert seen[-1][1] == {"type": "stream", "id": "j0"}
    with pytest.raises(GenericError, match="Job 'j0' in state 'pending' cannot accept "
                       "command verb 'dismiss'"):
        await job.dismiss()
    await job.finalize()
    assert names(seen)[-2:] == ["BLOCK_JOB_COMPLETED", "concluded"]
    assert mgr.query_jobs() == [{"id": "j0", "type": "stream", "status": "concluded",
                                 "current-progress": 5, "total-progress": 5}]
    await job.dismiss()
    assert names(seen)[-1] == "null"
    assert mgr.jobs == []


async def test_cancel_running() -> None:
    mgr, seen = setup()
    job = StepJob(mgr, "j0", auto_dismiss=False)
    job.gate.clear()
    start(mgr, job)
    await asyncio.sleep(0.01)
    await job.user_cancel(True)
    job.gate.set()  # the in-flight "request" finishes
    await settle(job)
    assert names(seen) == ["created", "running", "aborting", "BLOCK_JOB_CANCELLED",
                           "concluded"]
    assert mgr.query_jobs()[0]["error"] == "Operation canceled"
    assert job.hooks == ["abort", "clean"]


async def test_pause_resume_and_texts() -> None:
    mgr, seen = setup()
    job = StepJob(mgr, "j0")
    job.gate.clear()
    start(mgr, job)
    await asyncio.sleep(0.01)
    job.user_pause()
    with pytest.raises(GenericError, match="Job is already paused"):
        job.user_pause()
    job.gate.set()
    await asyncio.sleep(0.02)
    assert job.status == "paused"
    assert mgr.query_block_jobs()[0]["paused"] is True
    with pytest.raises(GenericError, match="cannot accept command verb 'complete'"):
        job.complete()
    job.user_resume()
    with pytest.raises(GenericError, match="Can't resume a job that was not paused"):
        job.user_resume()
    await job.wait_finished()
    assert names(seen)[:4] == ["created", "running", "paused", "running"]


async def test_error_report_and_stop() -> None:
    mgr, seen = setup()
    job = start(mgr, StepJob(mgr, "j0", fail_at=2))
    await job.wait_finished()
    assert names(seen) == ["created", "running", "BLOCK_JOB_ERROR", "aborting",
                           "BLOCK_JOB_COMPLETED", "concluded", "null"]
    assert seen[2][1] == {"device": "j0", "operation": "read", "action": "report"}
    assert seen[4][1]["error"] == "Input/output error"

    mgr, seen = setup()
    job = start(mgr, StepJob(mgr, "j1", fail_at=2, on_error="stop"))
    for _ in range(100):
        if job.status == "paused":
            break
        await asyncio.sleep(0.001)
    info = mgr.query_block_jobs()[0]
    assert info["io-status"] == "failed" and info["paused"] is True
    await job.user_cancel(True)
    await job.wait_finished()
    assert names(seen) == ["created", "running", "BLOCK_JOB_ERROR", "paused", "running",
                           "aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]


async def test_lookup_errors() -> None:
    mgr, _ = setup()
    with pytest.raises(GenericError, match="Job not found"):
        mgr.find_job("x")
    with pytest.raises(DeviceNotActive, match="Block job 'x' not found"):
        mgr.find_block_job("x")


def test_ratelimit_slices() -> None:
    rl = RateLimit()
    rl.set_speed(1000)  # 100 bytes per 100 ms slice
    t0 = 10**12
    assert rl.calculate_delay(0, t0) == 0
    assert rl.calculate_delay(50, t0) == 0
    # 250 bytes in a 100-byte slice: wait until 2.5 slices after the start.
    assert rl.calculate_delay(200, t0) == 250_000_000
    rl.set_speed(0)
    assert rl.calculate_delay(10**9, t0) == 0
