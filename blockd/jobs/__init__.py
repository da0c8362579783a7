"""Block jobs: the job core (QEMU's job.c/blockjob.c) and the job types.

``job`` holds the state machine and verbs, ``blockjob`` the block-job layer
(events, speed, on-error, the nodes a job uses), ``manager`` the daemon's job
list (``daemon.jobs``), ``ratelimit`` QEMU's slice rate limiter, ``drain``
drained sections (jobs above a changed node pause and resume), ``graphops``
chain walks and filter insertion, ``stream`` block-stream.
"""

from blockd.jobs.blockjob import (
    BlockJob,
    JobBackend,
    check_op_blocked,
    create_block_job,
    op_blocker,
)
from blockd.jobs.job import TRANSITIONS, VERBS, Job, JobFailed
from blockd.jobs.manager import JobManager, get_manager
from blockd.jobs.ratelimit import RateLimit

__all__ = [
    "TRANSITIONS",
    "VERBS",
    "BlockJob",
    "Job",
    "JobBackend",
    "JobFailed",
    "JobManager",
    "RateLimit",
    "check_op_blocked",
    "create_block_job",
    "get_manager",
    "op_blocker",
]
