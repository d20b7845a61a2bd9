"""Finding what a test left running: threads, LMDB environments, stores, system tasks.

Trio's structured concurrency ends every task a test starts when its nursery
closes, so what can outlive a test is what lives outside the task tree:
threads (an abandoned ``to_thread`` call, a client's own thread), LMDB
environments and stores that were never closed, and trio *system* tasks.
:class:`LeakCheck` snapshots those when a test starts and reports the new
ones still there when it ends; the pytest fixtures fail the test with that
report.
"""

from __future__ import annotations

import gc
import os
import re
import threading
import time
from pathlib import Path

import trio

from .._tables.base import Store

__all__ = ["LeakCheck"]

#: Idle worker threads of trio's thread cache carry this name (a busy one
#: carries its job's name) and are kept for reuse, not leaked.
_IDLE_TRIO_THREAD = re.compile(r"Trio thread \d+")
_PROC_FDS = Path("/proc/self/fd")


def _open_lmdb_files() -> set[str]:
    """Paths of LMDB files this process holds open (empty where /proc is unavailable)."""
    found: set[str] = set()
    try:
        entries = list(_PROC_FDS.iterdir())
    except OSError:
        return found
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.endswith(("/data.mdb", "/lock.mdb")):
            found.add(target)
    return found


def _open_stores() -> dict[int, Store]:
    return {id(obj): obj for obj in gc.get_objects() if isinstance(obj, Store) and not obj.closed}


def _system_tasks() -> set[trio.lowlevel.Task]:
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return set()
    if root is None:
        return set()
    return {task for nursery in root.child_nurseries for task in nursery.child_tasks}


class LeakCheck:
    """Snapshot at creation; :meth:`problems` lists what appeared since and is still alive.

    Args:
        grace: seconds new threads are given to finish before they count as leaked.
    """

    def __init__(self, *, grace: float = 2.0) -> None:
        self.grace = grace
        self._threads = set(threading.enumerate())
        self._lmdb_files = _open_lmdb_files()
        self._stores = set(_open_stores())
        self._system_tasks = _system_tasks()

    def thread_problems(self) -> list[str]:
        """Threads started since the snapshot that are still running after ``grace`` seconds.

        Blocks for up to ``grace`` seconds: call it outside trio (a sync
        fixture's teardown), or from a worker thread.
        """
        deadline = time.monotonic() + self.grace
        leaked = []
        for thread in threading.enumerate():
            if thread in self._threads or thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive() and not _IDLE_TRIO_THREAD.fullmatch(thread.name):
                leaked.append(f"thread {thread.name!r} (daemon={thread.daemon}) is still running")
        return leaked

    def resource_problems(self) -> list[str]:
        """LMDB environments and stores opened since the snapshot and not closed."""
        problems = [
            f"LMDB file {path} is still open (an LMDB environment was not closed)"
            for path in sorted(_open_lmdb_files() - self._lmdb_files)
        ]
        problems += [
            f"store {store!r} was not closed"
            for key, store in _open_stores().items()
            if key not in self._stores
        ]
        return problems

    def task_problems(self) -> list[str]:
        """Trio system tasks spawned since the snapshot that still run (call inside the run)."""
        return [
            f"trio system task {task.name!r} is still running"
            for task in _system_tasks() - self._system_tasks
        ]

    def problems(self) -> list[str]:
        """Everything above that can be checked from here (threads need a blocking wait)."""
        return self.task_problems() + self.thread_problems() + self.resource_problems()

    @staticmethod
    def report(problems: list[str]) -> str:
        lines = "\n".join(f"  - {p}" for p in problems)
        return f"the test left things running:\n{lines}"
