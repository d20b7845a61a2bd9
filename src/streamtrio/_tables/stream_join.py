"""Stream-stream windowed joins (inner): ``stream.window_join(buffer, left=..., right=...)``.

An agent consumes two co-partitioned topics (one ``app.topic("left", "right")``);
each event is joined with the events of the other topic that have the same
key and a timestamp in the join window: a left event at ``tl`` and a right
event at ``tr`` join when ``tl - before <= tr <= tl + after`` (Kafka Streams'
``JoinWindows.ofTimeDifferenceAndGrace`` with ``before``/``after``). A pair
is yielded once, ``(left value, right value)``, while the later-arriving of
the two is processed.

Both sides are buffered in ``buffer``, a plain Table used for nothing else:
one key per event (the join key's length and bytes, the side, the
timestamp and the offset), holding the message's value bytes, so the buffer
is changelogged, recovered after a restart or a rebalance, and followed by
standbys like any table. Each buffered event has a durable close timer
(:mod:`._tables.timers`) that deletes it once no event that is not late can
join it any more: a left event when stream time passes ``tl + after + grace``,
a right one when it passes ``tr + before + grace``. An event older than
``stream time - grace`` is late: dropped and counted. So every pair of
events that are not late is yielded exactly once per processing (after a
crash, at_least_once processes the events after the last commit again, as
any operator).
"""

from __future__ import annotations

import inspect
import logging
import struct
from bisect import bisect_left, bisect_right, insort
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError
from .._settings import parse_duration
from .._topic import Topic
from .joins import JoinKey, _check_counts, _key_getter
from .timers import KeyTimer, timer_key
from .windows import Duration, to_us

if TYPE_CHECKING:
    from .._stream import Stream
    from .._topic import Channel
    from .base import StorePartition
    from .table import Table, TablePartition

__all__ = ["WindowJoin", "window_join"]

log = logging.getLogger(__name__)

_OFFSET = 1 << 63
_HEAD = struct.Struct(">H")
_TAIL = struct.Struct(">QQ")
_SIDES = (b"L", b"R")
_MATCHED, _UNMATCHED = b"\x01", b"\x00"

#: ``on_unmatched(side, value)``, sync or async: ``side`` is ``"left"`` or ``"right"``.
UnmatchedCallback = Callable[[str, Any], "Awaitable[None] | None"]


def _entry_key(kbytes: bytes, side: int, t: int, offset: int) -> bytes:
    return _HEAD.pack(len(kbytes)) + kbytes + _SIDES[side] + _TAIL.pack(t + _OFFSET, offset + _OFFSET)


class WindowJoin:
    """The state of one stream-stream join over its buffer table."""

    def __init__(self, buffer: Table, before: int, after: int, grace: int) -> None:
        timers = buffer._timer_service()
        if timers.closer is not None or buffer._windowing is not None or buffer.is_global:
            raise ConfigurationError(
                f"window_join: table {buffer.name!r} must be a plain Table used only as this join's buffer"
            )
        timers.closer = self._expire
        buffer._join_buffer = self
        self.buffer = buffer
        self.before, self.after, self.grace = before, after, grace
        self.late_dropped = 0
        self.expired = 0
        self.unmatched = 0
        #: the sides whose events are reported when they expire unmatched (0 left, 1 right)
        self.unmatched_sides: frozenset[int] = frozenset()
        self.on_unmatched: UnmatchedCallback | None = None
        #: per partition (its view): (key bytes, side) -> sorted [(t, offset)]
        self._index: dict[int, tuple[StorePartition, dict[tuple[bytes, int], list[tuple[int, int]]]]] = {}
        self._schema: Any = None

    def reset(self) -> None:
        self._index = {}

    def _times(self, n: int, part: TablePartition, kbytes: bytes, side: int) -> list[tuple[int, int]]:
        view = part.view
        assert view is not None
        entry = self._index.get(n)
        if entry is None or entry[0] is not view:
            entry = self._index[n] = (view, {})
        found = entry[1].get((kbytes, side))
        if found is None:
            prefix = _HEAD.pack(len(kbytes)) + kbytes + _SIDES[side]
            found = []
            for raw, _ in view.range(prefix, prefix + b"\xff" * (_TAIL.size + 1)):
                t, offset = _TAIL.unpack_from(raw, len(prefix))
                overlaid = part.overlay(raw)
                if overlaid is None or overlaid[2] is not None:
                    found.append((t - _OFFSET, offset - _OFFSET))
            found.sort()
            entry[1][(kbytes, side)] = found
        return found

    def _entry(self, part: TablePartition, raw: bytes) -> tuple[bool, Any, bytes] | None:
        """``(matched, value, value bytes)`` of a buffered event, or ``None`` if it is gone."""
        overlaid = part.overlay(raw)
        if overlaid is not None:
            stored = overlaid[2]
            if stored is None:
                return None
            return overlaid[1][0], overlaid[1][1], stored[1:]
        assert part.view is not None
        stored = part.view.get(raw)
        if stored is None:
            return None
        return stored[:1] == _MATCHED, self._schema.loads_value(stored[1:]), stored[1:]

    def _store(self, part: TablePartition, raw: bytes, matched: bool, value: Any, vbytes: bytes) -> None:
        """Buffer an event: its value bytes behind a flag saying whether it joined yet."""
        flag = _MATCHED if matched else _UNMATCHED
        self.buffer._put(part, raw, raw, (matched, value), flag + vbytes)

    async def _expire(self, timer: KeyTimer) -> None:
        from .table import DELETED

        table = self.buffer
        part = table._parts.get(timer.partition)
        if part is None or part.view is None:
            return
        side, t, offset = timer.value
        raw = timer.key  # the buffered event's stored key
        kbytes = raw[_HEAD.size : _HEAD.size + _HEAD.unpack_from(raw)[0]]
        entry_value = self._entry(part, raw)
        if entry_value is not None and not entry_value[0] and side in self.unmatched_sides:
            assert self.on_unmatched is not None
            # In the firing: under exactly_once in one transaction with the deletion.
            result = self.on_unmatched("left" if side == 0 else "right", entry_value[1])
            if inspect.isawaitable(result):
                await result
            self.unmatched += 1
            if table._parts.get(timer.partition) is not part:
                return
        table._put(part, raw, raw, DELETED, None)
        entry = self._index.get(timer.partition)
        if entry is not None and entry[0] is part.view:
            times = entry[1].get((kbytes, side))
            if times is not None and (t, offset) in times:
                times.remove((t, offset))
        self.expired += 1


async def window_join(
    stream: Stream[Any],
    buffer: Table,
    *,
    left: str | Channel[Any],
    right: str | Channel[Any],
    before: Duration,
    after: Duration,
    grace: Duration = 0,
    key: JoinKey = None,
    how: str = "inner",
    on_unmatched: UnmatchedCallback | None = None,
) -> AsyncIterator[tuple[Any, Any]]:
    """Yield ``(left value, right value)`` for each pair of events in the join window (inner join).

    Raises:
        ConfigurationError: bad arguments, or topics not co-partitioned with ``buffer``.
    """
    from .._stream import TopicSource

    if not isinstance(left, str | Topic) or not isinstance(right, str | Topic):
        raise ConfigurationError("window_join: left and right must be topics or topic names")
    left_name = left.get_topic_name() if isinstance(left, Topic) else left
    right_name = right.get_topic_name() if isinstance(right, Topic) else right
    if left_name == right_name:
        raise ConfigurationError("window_join: left and right must be different topics")
    sides = {left_name: 0, right_name: 1}
    join = buffer._join_buffer
    if join is None:
        join = WindowJoin(
            buffer,
            to_us(parse_duration(before, name="before")),
            to_us(parse_duration(after, name="after")),
            to_us(parse_duration(grace, name="grace")),
        )
    source = stream._source
    if not isinstance(source, TopicSource):
        raise ConfigurationError("window_join: the agent must consume the two topics directly")
    join._schema = source.schema
    if how not in ("inner", "left", "outer"):
        raise ConfigurationError(f"window_join: how must be 'inner', 'left' or 'outer', got {how!r}")
    if how != "inner" and on_unmatched is None:
        raise ConfigurationError(
            f"window_join(how={how!r}) needs on_unmatched=fn(side, value): unmatched events are "
            "reported when they leave the buffer, from a durable timer, not from this loop"
        )
    join.unmatched_sides = frozenset({"inner": (), "left": (0,), "outer": (0, 1)}[how])
    join.on_unmatched = on_unmatched
    await _check_counts(buffer, [left_name, right_name])
    get_key = _key_getter(key)
    timers = buffer._timers
    assert timers is not None
    async for event in stream.events():
        message = event.message
        side = sides.get(message.topic)
        if side is None or message.value is None:
            continue
        kbytes = buffer._encode_key(get_key(event))
        n = buffer._event_partition()  # moves the partition's stream time
        if n is not None and n < 0:
            continue  # the event's partition was lost meanwhile: nothing is joined for it
        if n is None:
            raise ConfigurationError(
                f"window_join: the event {event!r:.80} is not from a partition this worker owns"
            )
        part = buffer._parts[n]
        t = to_us(message.timestamp)
        state = timers.state(n, part)
        if state is not None and state.stream is not None and t < state.stream - join.grace:
            join.late_dropped += 1
            continue
        other = join._times(n, part, kbytes, 1 - side)
        if side == 0:
            lo, hi = t - join.before, t + join.after
        else:
            lo, hi = t - join.after, t + join.before
        matches = other[bisect_left(other, (lo, -_OFFSET)) : bisect_right(other, (hi, _OFFSET))]
        offset = message.offset
        raw = _entry_key(kbytes, side, t, offset)
        mine = join._times(n, part, kbytes, side)
        if (t, offset) not in mine:
            join._store(part, raw, bool(matches), event.value, message.value)
            insort(mine, (t, offset))
            until = t + (join.after if side == 0 else join.before) + join.grace + 1
            timers.schedule_raw(timer_key("close", until, raw), raw, [side, t, offset], "close")
        for t_other, o_other in matches:
            other_raw = _entry_key(kbytes, 1 - side, t_other, o_other)
            found = join._entry(part, other_raw)
            if found is None:
                continue
            was_matched, value, vbytes = found
            if not was_matched:
                join._store(part, other_raw, True, value, vbytes)
            yield (event.value, value) if side == 0 else (value, event.value)
