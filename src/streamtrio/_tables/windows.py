"""Window types: which time ranges a timestamp belongs to.

Times are epoch seconds (floats) at the API and integer microseconds inside,
so that window arithmetic is exact: ``1700000060.0`` is on a one-minute
boundary, not ``0.000001`` short of it. A range is ``(start, end)``.

==================  ======================================  ==========================
window              ranges containing timestamp ``t``       range bounds
==================  ======================================  ==========================
TumblingWindow(s)   the one ``[k*s, k*s + s)`` with t in it  start inclusive, end exclusive
HoppingWindow(s, h) every ``[k*h, k*h + s)`` with t in it    start inclusive, end exclusive
SlidingWindow(b, a) ``[t - b, t + a]`` (one per event time)  both inclusive
==================  ======================================  ==========================

A window is *final* once the stream time reaches ``end + grace``: it is
reported to ``on_window_close`` and events arriving for it after that are
late; it is deleted at ``end + expires`` (``grace`` defaults to ``expires``;
see ``docs/windows.md``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime, timedelta

from .._exceptions import ConfigurationError
from .._settings import parse_duration

__all__ = ["HoppingWindow", "SlidingWindow", "TumblingWindow", "Window", "WindowRange"]

#: A window range ``(start, end)`` in epoch seconds.
WindowRange = tuple[float, float]

#: Microseconds per second: the resolution of window arithmetic.
US = 1_000_000

Duration = float | int | timedelta | str

#: The reserved key under which a windowed table partition keeps the stream time
#: its expiry reported through. Shorter than any window key (key bytes + 16), so
#: it never collides with one.
STREAM_TIME_KEY = b"\x00~stream-time"


def to_us(seconds: float) -> int:
    """Epoch seconds to integer microseconds (rounded to the nearest)."""
    return round(seconds * US)


def from_us(us: int) -> float:
    return us / US


def timestamp_of(value: float | int | datetime) -> float:
    """Epoch seconds of a float/int timestamp or a ``datetime`` (naive means local time)."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"a timestamp must be epoch seconds or a datetime, got {value!r:.60}")
    return float(value)


def _duration_us(value: Duration, name: str, *, zero: bool = False) -> int:
    seconds = parse_duration(value, name=name)
    us = to_us(seconds)
    if us < 0 or (us == 0 and not zero):
        raise ConfigurationError(f"{name} must be {'>= 0' if zero else '> 0'} seconds, got {value!r}")
    return us


def _expires_us(value: Duration | None) -> int | None:
    return None if value is None else _duration_us(value, "window expires", zero=True)


def _grace_and_expires(
    grace: Duration | None, expires: Duration | None, what: str
) -> tuple[int | None, int | None]:
    """``(grace, expires)`` in µs: each defaults to the other; grace must not exceed expires.

    ``what`` ("window", "session") names the thing in the error.
    """
    expires_us = _expires_us(expires)
    grace_us = None if grace is None else _duration_us(grace, f"{what} grace", zero=True)
    if grace_us is None:
        return expires_us, expires_us
    if expires_us is None:
        return grace_us, grace_us
    if grace_us > expires_us:
        raise ConfigurationError(
            f"{what} grace ({from_us(grace_us)}s) must not exceed expires "
            f"({from_us(expires_us)}s): a {what} is kept at least until it is final"
        )
    return grace_us, expires_us


class Window(ABC):
    """The ranges a timestamp belongs to, and when a range closes.

    Attributes:
        expires: seconds a window is kept after its end (stream time), or
            ``None`` to keep windows forever (they never close).
        grace: seconds after its end (stream time) a window still accepts
            events; then it is final: ``on_window_close`` reports it and later
            events for it are dropped. Defaults to ``expires``; at most ``expires``.
    """

    #: Sliding windows store one bucket per event time and sum buckets on read.
    _aggregates: bool = False

    def __init__(self, expires: Duration | None, grace: Duration | None = None) -> None:
        self._grace, self._expires = _grace_and_expires(grace, expires, "window")

    @property
    def expires(self) -> float | None:
        return None if self._expires is None else from_us(self._expires)

    @property
    def grace(self) -> float | None:
        return None if self._grace is None else from_us(self._grace)

    # -- the public (Faust) API, in seconds ------------------------------------------

    def ranges(self, timestamp: float) -> list[WindowRange]:
        """The ranges containing ``timestamp``, oldest first."""
        return [(from_us(s), from_us(e)) for s, e in self._ranges(to_us(timestamp))]

    def current(self, timestamp: float) -> WindowRange:
        """The most recent range containing ``timestamp``."""
        s, e = self._current(to_us(timestamp))
        return from_us(s), from_us(e)

    def earliest(self, timestamp: float) -> WindowRange:
        """The oldest range containing ``timestamp``."""
        s, e = self._earliest(to_us(timestamp))
        return from_us(s), from_us(e)

    def delta(self, timestamp: float, d: Duration) -> WindowRange:
        """The current range ``d`` before ``timestamp``."""
        return self.current(timestamp - parse_duration(d, name="delta"))

    def stale(self, end: float, latest: float) -> bool:
        """Whether a range ending at ``end`` is closed when the stream time is ``latest``."""
        return self._closed(to_us(end), to_us(latest))

    # -- microseconds ---------------------------------------------------------------------

    @abstractmethod
    def _ranges(self, t: int) -> list[tuple[int, int]]: ...

    def _current(self, t: int) -> tuple[int, int]:
        return self._ranges(t)[-1]

    def _earliest(self, t: int) -> tuple[int, int]:
        return self._ranges(t)[0]

    def _closed(self, end: int, stream: int) -> bool:
        return self._expires is not None and end + self._expires <= stream

    @abstractmethod
    def _stored(self, t: int) -> list[tuple[int, int]]:
        """The stored ranges a write at ``t`` updates."""

    def _final(self, end: int, stream: int) -> bool:
        """Whether a range ending at ``end`` is final (past its grace) at stream time ``stream``."""
        return self._grace is not None and end + self._grace <= stream

    def _late(self, stored: tuple[int, int], stream: int) -> bool:
        """Whether a write to ``stored`` is late at stream time ``stream``."""
        return self._final(stored[1], stream)

    @abstractmethod
    def _describe(self) -> str: ...

    def __repr__(self) -> str:
        expires = "" if self._expires is None else f", expires={from_us(self._expires)!r}"
        if self._grace is not None and self._grace != self._expires:
            expires += f", grace={from_us(self._grace)!r}"
        return f"{type(self).__name__}({self._describe()}{expires})"


class HoppingWindow(Window):
    """Fixed-size windows starting every ``step`` seconds: ``[k*step, k*step + size)``.

    With ``step < size`` they overlap and a timestamp is in ``ceil(size/step)``
    or ``floor(size/step)`` of them; with ``step == size`` it is a tumbling window.

    Args:
        size: the window length (seconds, ``timedelta`` or ``"1m"``).
        step: the distance between window starts.
        expires: how long a window is kept after its end, in stream time.
    """

    def __init__(
        self, size: Duration, step: Duration, expires: Duration | None = None, grace: Duration | None = None
    ) -> None:
        super().__init__(expires, grace)
        self._size = _duration_us(size, "window size")
        self._step = _duration_us(step, "window step")

    @property
    def size(self) -> float:
        return from_us(self._size)

    @property
    def step(self) -> float:
        return from_us(self._step)

    def _ranges(self, t: int) -> list[tuple[int, int]]:
        size, step = self._size, self._step
        start = t - t % step  # the latest start <= t (floor, also for negative t)
        found: list[tuple[int, int]] = []
        while start + size > t:
            found.append((start, start + size))
            start -= step
        found.reverse()
        return found

    def _current(self, t: int) -> tuple[int, int]:
        start = t - t % self._step
        return start, start + self._size

    def _earliest(self, t: int) -> tuple[int, int]:
        found = self._ranges(t)
        return found[0] if found else self._current(t)

    def _stored(self, t: int) -> list[tuple[int, int]]:
        return self._ranges(t)

    def _describe(self) -> str:
        return f"size={self.size!r}, step={self.step!r}"


class TumblingWindow(HoppingWindow):
    """Back-to-back windows ``[k*size, k*size + size)``: each timestamp is in exactly one.

    Args:
        size: the window length (seconds, ``timedelta`` or ``"1m"``).
        expires: how long a window is kept after its end, in stream time.
    """

    def __init__(
        self, size: Duration, expires: Duration | None = None, grace: Duration | None = None
    ) -> None:
        super().__init__(size, size, expires, grace)

    def _describe(self) -> str:
        return f"size={self.size!r}"


class SlidingWindow(Window):
    """One window per event time ``t``: ``[t - before, t + after]``, both ends inclusive.

    The value of a sliding window is the sum (``+``) of every write made at a
    time inside it, whichever event's window it is: a write at ``t`` is stored
    once, in a bucket for ``t``, and reads add up the buckets in the range.
    So use in-place arithmetic (``windowed[k] += n``, ``-=``); a plain
    assignment sets the bucket of the current time.

    Args:
        before: how far the window reaches back from its event.
        after: how far it reaches forward.
        expires: how long a window is kept after its end, in stream time.
    """

    _aggregates = True

    def __init__(
        self,
        before: Duration,
        after: Duration,
        expires: Duration | None = None,
        grace: Duration | None = None,
    ) -> None:
        super().__init__(expires, grace)
        self._before = _duration_us(before, "sliding window before", zero=True)
        self._after = _duration_us(after, "sliding window after", zero=True)

    @property
    def before(self) -> float:
        return from_us(self._before)

    @property
    def after(self) -> float:
        return from_us(self._after)

    def _ranges(self, t: int) -> list[tuple[int, int]]:
        return [(t - self._before, t + self._after)]

    def _stored(self, t: int) -> list[tuple[int, int]]:
        return [(t, t)]

    def _late(self, stored: tuple[int, int], stream: int) -> bool:
        # A bucket at t is in windows ending at t at the earliest: once those can
        # have closed, adding to it would change a value already reported.
        return self._final(stored[0], stream)

    def _describe(self) -> str:
        return f"before={self.before!r}, after={self.after!r}"
