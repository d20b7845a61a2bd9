"""A lock file naming its holder: how a worker holds its data dir.

``fcntl.flock`` on a file in the data dir, with the holder's pid written in
it so that the refusal can name it. The lock goes with the process (or the
descriptor), so a worker killed with -9 leaves nothing to clean up.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["LockHeld", "hold", "release"]


class LockHeld(Exception):
    """Another holder (of any process) has the lock; ``holder`` is its pid as written."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def hold(path: Path) -> int:
    """Take the lock file ``path`` (created if missing) and write our pid in it.

    Returns:
        The descriptor that holds the lock: :func:`release` it (or close it).

    Raises:
        LockHeld: another descriptor holds it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LockHeld(holder) from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
