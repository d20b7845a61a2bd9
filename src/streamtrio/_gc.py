"""The garbage collector's first threshold while workers run (the ``gc_threshold`` setting).

A worker allocates a few container objects per event (the message, the event,
the decoded value), and fetches ahead: up to ``stream_buffer_maxsize``
messages per partition wait in their lanes. With Python's default threshold
(700 more container objects alive than at the last collection) the collector
ran every few hundred events, moved the buffered messages into the older
generations and scanned them again and again there: raising it gave 18-23%
more throughput on the benchmark (docs/benchmarks.md). A raised threshold
collects when that many more objects are alive than at the last collection;
cyclic garbage waits that long.

Thresholds are per interpreter: the first worker of a process that asks for
a higher one raises it, and the last worker to stop restores what was
there. A threshold that is already higher, or 0 (automatic collection
disabled), is left alone.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["raised_gc_threshold"]

_lock = threading.Lock()
_workers = 0
#: the thresholds before the first worker raised them; None when it changed nothing
_saved: tuple[int, int, int] | None = None


@contextmanager
def raised_gc_threshold(threshold: int) -> Iterator[None]:
    """While inside, the first-generation threshold is at least ``threshold`` (0: unchanged)."""
    global _workers, _saved
    with _lock:
        if _saved is None and threshold > 0:
            first, second, third = gc.get_threshold()
            if 0 < first < threshold:
                _saved = (first, second, third)
                gc.set_threshold(threshold, second, third)
        _workers += 1
    try:
        yield
    finally:
        with _lock:
            _workers -= 1
            if _workers == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
