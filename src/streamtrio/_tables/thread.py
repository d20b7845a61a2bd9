"""The thread a store owns: blocking store work (writes, fsync, scans) runs on it.

One :class:`StoreThread` per LMDB environment. Jobs go through a queue and run
one at a time, in order; trio code awaits them with :meth:`StoreThread.run`,
other threads block on :meth:`StoreThread.call`. A job is never abandoned: a
cancelled :meth:`~StoreThread.run` still waits for its job to finish (an LMDB
write transaction must commit or abort on the thread that began it, and the
caller must not touch the store before it did), then raises ``Cancelled``. A
job is one bounded store call, so that wait is bounded too.

Under trio's ``MockClock`` (tests in virtual time) a job is waited for by
blocking the trio thread instead: a trio task waiting on another thread looks
idle to the clock, so an autojumping clock would jump to the next deadline
(a shutdown timeout, window expiry, a recovery stall timeout) while the job
runs, and ``advance_time`` would step past it. Blocking keeps store work at
zero virtual time, as it was when it ran on the trio thread.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any, TypeVar

import trio

from .._exceptions import ClosedError

__all__ = ["StoreThread", "virtual_time"]

T = TypeVar("T")

_STOP = None


def virtual_time() -> bool:
    """Whether the running trio loop keeps virtual time (a ``MockClock``, as in tests).

    There, waiting for another thread must block the trio thread: a task
    awaiting a thread counts as idle, and the clock would jump meanwhile.
    """
    # trio.testing imports pytest (0.2 s): never import it here. A MockClock
    # exists only if the program imported trio.testing itself.
    testing = sys.modules.get("trio.testing")
    return testing is not None and isinstance(trio.lowlevel.current_clock(), testing.MockClock)


class StoreThread:
    """A single thread running store jobs in order.

    Args:
        name: the thread's name (shown in thread dumps and leak reports).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._jobs = queue.SimpleQueue()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the caller, who re-raises it
                future.set_exception(exc)
            else:
                future.set_result(result)

    @property
    def on_thread(self) -> bool:
        """Whether the caller is running on this thread."""
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)``; the future holds its result.

        Raises:
            ClosedError: the thread was stopped.
        """
        if self._stopping:
            raise ClosedError(f"store thread {self.name!r} is stopped")
        future: Future[T] = Future()
        self._jobs.put((future, fn, args))
        return future

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the thread and wait for it (blocking; inline when on it)."""
        if self.on_thread:
            return fn(*args)
        return self.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the thread; the trio thread stays free meanwhile.

        Cancellation: the job is not abandoned. A cancelled caller waits for it
        to finish, then gets ``Cancelled`` (its result or error is dropped).
        Under a ``MockClock`` the trio thread blocks until the job is done (see
        :func:`virtual_time`).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        future = self.submit(fn, *args)
        if virtual_time():
            wait([future])  # blocks the trio thread: no virtual time passes
            await trio.lowlevel.checkpoint()  # raises Cancelled, the job being done
            return future.result()
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: Future[T]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:  # nobody is waiting any more
                pass

        future.add_done_callback(wake)
        with trio.CancelScope(shield=True):
            await done.wait()
        await trio.lowlevel.checkpoint_if_cancelled()
        return future.result()

    def stop(self, timeout: float | None = None) -> bool:
        """Let queued jobs finish, then end the thread; returns whether it ended in ``timeout``.

        Stopping twice is harmless; stopping from the thread itself only queues the stop.
        """
        if not self._stopping:
            self._stopping = True
            self._jobs.put(_STOP)
        if self.on_thread:
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()
