"""Deterministic time for tests: trio's ``MockClock``.

streamtrio measures every interval with trio's clock (timers, the commit
loop, ``stream.take(within=...)``, restart backoff, window expiry), so a test
run under ``trio.testing.MockClock`` controls all of them. With pytest-trio,
request the ``autojump_clock`` fixture: whenever every task is waiting, the
clock jumps to the next deadline, so a test that sleeps an hour takes
milliseconds and fires everything due on the way, in order.
"""

from __future__ import annotations

import math

import trio
import trio.testing

__all__ = ["advance_time"]


async def advance_time(seconds: float) -> None:
    """Let ``seconds`` of trio time pass, running everything that falls due on the way.

    With an autojumping ``MockClock`` (pytest-trio's ``autojump_clock``) this
    is ``trio.sleep(seconds)`` and takes no real time. With a non-jumping
    ``MockClock`` (pytest-trio's ``mock_clock``) the clock is stepped from
    deadline to deadline, letting every task run to a standstill at each.

    Raises:
        RuntimeError: the run does not use a ``MockClock`` (real time would pass).
        ValueError: ``seconds`` is negative.
    """
    if seconds < 0:
        raise ValueError(f"advance_time: seconds must be >= 0, got {seconds}")
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        raise RuntimeError(
            "advance_time() needs trio's MockClock, so no real time passes: with pytest-trio, "
            "request the autojump_clock fixture (or mock_clock)"
        )
    target = trio.current_time() + seconds
    if clock.rate != 0 or clock.autojump_threshold != math.inf:
        await trio.sleep_until(target)
        return
    while True:
        await trio.testing.wait_all_tasks_blocked()
        now = trio.current_time()
        if now >= target:
            return
        step = trio.lowlevel.current_statistics().seconds_to_next_deadline
        clock.jump(min(step, target - now))
