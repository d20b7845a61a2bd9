"""What the runner and the system scripts share: arguments and the result line.

Standard library only: the peer scripts import this module from the peer's
own virtual environment, where neither streamtrio nor its dependencies exist.

Every system script is started as its own process with the same arguments
and prints exactly one result line, ``BENCH-RESULT {json}``, on stdout::

    {"events": 1000000,          # events processed
     "first": 12.3, "last": 19.8,  # time.perf_counter() at the first and last event
     "cpu": 7.4,                 # CPU seconds of the process (all threads) between them
     "sum": 5500000,             # the sum over all keys (amounts; counts for windows)
     "error": null,              # a reason when the system could not run the workload
     ...}                        # extras (latency percentiles, replayed records)

The runner computes the rate from ``first`` and ``last`` (so group join and
start-up are excluded) and compares ``sum`` with the produced total.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

RESULT_PREFIX = "BENCH-RESULT "

#: Workloads every system implements (``latency`` and ``replay`` are streamtrio's alone).
WORKLOADS = ("stateless", "stateful", "windowed")
#: Tumbling window size of the windowed workload, in seconds.
WINDOW_SECONDS = 10
#: Event time the produced events span (workload.SPAN_SECONDS): a grace period this
#: long lets no system drop an event as late, whatever order its partitions arrive in.
SPAN_SECONDS = 100


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bootstrap", required=True, help="broker host:port")
    p.add_argument("--topic", required=True, help="the pre-produced input topic")
    p.add_argument("--events", type=int, required=True, help="events in the topic (stop after as many)")
    p.add_argument("--workload", required=True)
    p.add_argument("--group", required=True, help="a fresh consumer group / application id")
    p.add_argument("--datadir", required=True, help="a fresh directory for local state")
    p.add_argument("--variant", default="", help="a system-specific variant (a store)")
    return p


class Meter:
    """Counts events and notes the time (and the process's CPU time) of the first and the last one."""

    __slots__ = ("count", "cpu_first", "cpu_last", "first", "last", "target")

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu_first = 0.0
        self.cpu_last = 0.0

    def tick(self) -> bool:
        """One event processed; returns True at the last one."""
        count = self.count = self.count + 1
        if count == 1:
            self.first = time.perf_counter()
            self.cpu_first = time.process_time()
        if count >= self.target:
            self.last = time.perf_counter()
            self.cpu_last = time.process_time()
            return True
        return False


def report(meter: Meter | None, total: int | None, *, error: str | None = None, **extra: Any) -> None:
    """Print the result line (and flush: some systems are left with ``os._exit``)."""
    result: dict[str, Any] = {
        "events": meter.count if meter else 0,
        "first": meter.first if meter else 0.0,
        "last": meter.last if meter else 0.0,
        "cpu": meter.cpu_last - meter.cpu_first if meter else 0.0,
        "sum": total,
        "error": error,
    }
    result.update(extra)
    # Straight to file descriptor 1: Faust's worker replaces sys.stdout with a logger.
    sys.stdout.flush()
    os.write(1, (RESULT_PREFIX + json.dumps(result) + "\n").encode())


def parse_result(stdout: str) -> dict[str, Any] | None:
    """The last result line of a system's output, or None."""
    for line in reversed(stdout.splitlines()):
        at = line.find(RESULT_PREFIX)
        if at >= 0:
            parsed: dict[str, Any] = json.loads(line[at + len(RESULT_PREFIX) :])
            return parsed
    return None


def window_start(timestamp_s: float) -> int:
    """The start (whole seconds) of the tumbling window ``timestamp_s`` falls in."""
    t = int(timestamp_s)
    return t - t % WINDOW_SECONDS


def percentiles(delays: list[float]) -> dict[str, float | None]:
    """p50, p99 and max of latencies in seconds, as milliseconds."""
    delays = sorted(delays)
    n = len(delays)
    if not n:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": delays[n // 2] * 1000,
        "p99_ms": delays[min(n - 1, int(n * 0.99))] * 1000,
        "max_ms": delays[-1] * 1000,
    }
