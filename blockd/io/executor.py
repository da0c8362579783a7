"""A lean thread pool for blocking host I/O.

pread/pwrite/fallocate release the GIL, so a few threads give real parallelism.
The pool is purpose-built rather than ``concurrent.futures.ThreadPoolExecutor``
because every guest request pays one round trip through it, and on a loaded
2-core host the round trip, not the I/O, is what a 64 KiB request costs:

- jobs go on a deque and one idle worker is woken through its own eventfd.
  ``os.eventfd_write`` drops the GIL around the syscall, so the woken worker finds
  the GIL free instead of preempting the loop thread only to wait for it (what a
  ``SimpleQueue.put`` wake-up does, often tens of microseconds), and waking
  exactly one worker avoids the herd a shared semaphore would wake;
- the worker completes the asyncio future directly with ``call_soon_threadsafe``
  (about a third of ``loop.run_in_executor``'s concurrent Future chaining), after
  marking itself idle, so the loop it wakes does not wait for its GIL either.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _deliver(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class _UncancellableFuture(asyncio.Future[Any]):
    """Stands for a host job that runs to its end whatever happens: cancel()
    refuses, so a task cancelled while awaiting it gets its CancelledError only
    once the job is over (the job's result or error is then dropped)."""

    def cancel(self, msg: Any = None) -> bool:
        return False


class IOPool:
    """Threads started on demand up to ``max_workers``; idle ones sleep on their
    own eventfd until a job is posted for them."""

    def __init__(self, max_workers: int, name: str = "blockd-io") -> None:
        self.max_workers = max_workers
        self.name = name
        # Pending jobs (None: a worker should exit).  deque.append/popleft are
        # atomic under the GIL, so no lock is needed between the loop thread and
        # the workers.
        self._jobs: collections.deque[_Job | None] = collections.deque()
        # eventfds of the workers waiting for a job, most recently idle last.
        self._idle: collections.deque[int] = collections.deque()
        self._threads: list[threading.Thread] = []
        self._efds: list[int] = []
        self._lock = threading.Lock()
        self._shutdown = False

    def _worker(self, efd: int) -> None:
        jobs = self._jobs
        while True:
            try:
                job = jobs.popleft()
            except IndexError:
                self._idle.append(efd)
                self._sleep(efd)
                continue
            if job is None:
                return
            loop, fut, fn, args = job
            result: Any = None
            exc: BaseException | None = None
            try:
                result = fn(*args)
            except BaseException as e:
                exc = e
            del job
            # Idle before waking the loop, and only the sleep after it: the loop
            # thread it wakes finds the GIL free instead of waiting for this one.
            self._idle.append(efd)
            try:
                loop.call_soon_threadsafe(_deliver, fut, result, exc)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more
            del fut, result, exc
            self._sleep(efd)

    def _sleep(self, efd: int) -> None:
        """Wait for a job, ``efd`` being in the idle list already."""
        if self._jobs:
            # A job was posted while this worker was busy (or just before it went
            # idle) and may have found nobody idle: take the idle token back, or
            # when a poster already took it, the wake-up it sends.
            try:
                self._idle.remove(efd)
            except ValueError:
                os.eventfd_read(efd)
            return
        os.eventfd_read(efd)

    def _post(self, job: _Job) -> None:
        self._jobs.append(job)
        try:
            efd = self._idle.pop()
        except IndexError:
            # Nobody idle: a new worker takes it, else the next one to finish.
            self._spawn()
            return
        os.eventfd_write(efd, 1)

    def _spawn(self) -> None:
        with self._lock:
            if self._shutdown or len(self._threads) >= self.max_workers:
                return
            efd = os.eventfd(0, os.EFD_CLOEXEC)
            t = threading.Thread(
                target=self._worker, args=(efd,), name=f"{self.name}-{len(self._threads)}",
                daemon=True,
            )
            self._efds.append(efd)
            self._threads.append(t)
            t.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on a pool thread and await its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._post((loop, fut, fn, args))
        return await fut

    async def run_to_end(self, fn: Callable[..., T], *args: Any) -> T:
        """Like run(), but a cancellation is delivered only after fn returned.

        For chains of dependent writes whose caller must know that nothing of
        them is still running when it settles its metadata.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = _UncancellableFuture(loop=loop)
        self._post((loop, fut, fn, args))
        return await fut

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
            efds = list(self._efds)
        for _ in threads:
            self._jobs.append(None)
        for efd in efds:
            os.eventfd_write(efd, 1)
        for t in threads:
            t.join(timeout=5)
        # Exited workers leave their tokens behind: nothing may write to their
        # eventfds once closed (the numbers get reused).
        self._idle.clear()
        for efd, t in zip(efds, threads, strict=True):
            if not t.is_alive():
                os.close(efd)


_POOL: IOPool | None = None
_POOL_LOCK = threading.Lock()

# Whether data I/O may run on the calling (event loop) thread; see set_inline_io().
_INLINE = False


def set_inline_io(enabled: bool) -> None:
    """Let protocol drivers opened from now on do their data reads and writes
    directly on the calling thread instead of through the pool.

    Only for a process that runs one request at a time and has nothing else for
    its event loop to do meanwhile (the ``blockd-io`` CLI): there the pool's
    hand-off, not the I/O, is what a 64 KiB request costs.  The daemon never sets
    it: it must keep disk I/O off its loop.  Flushes stay in the pool either way,
    so background barriers still overlap with the writes that follow them.
    """
    global _INLINE
    _INLINE = enabled


def inline_io() -> bool:
    """Whether set_inline_io(True) is in effect."""
    return _INLINE


def io_pool() -> IOPool:
    """The process-wide I/O pool (like QEMU's thread pool: up to 64 workers)."""
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = IOPool(min(64, 4 * (os.cpu_count() or 1) + 4))
                atexit.register(_POOL.shutdown)
    return _POOL
