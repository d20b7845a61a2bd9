"""Windowed tables: WindowWrapper, WindowSet, stream time and window expiry.

A windowed table is an ordinary :class:`~streamtrio.Table` whose keys are
``(key, window range)``. They are stored in the table's own store partitions
and changelog, encoded as the table key's bytes followed by the window start
and end as big-endian offset microseconds (8 bytes each), so the store's byte
order keeps a key's windows together and in time order, and recovery,
standbys and failover treat them like any other key.

Stream time, per table partition, is the newest timestamp a window of that
partition was updated at. While nothing is buffered or in flight for the
partition's source lanes it advances with trio's clock (so ``MockClock``
drives it in tests); events themselves never move it backwards, so a
replayed backlog is judged by its own timestamps. Every
``table_cleanup_interval`` a timer closes the windows whose end is
``expires`` or more behind stream time: ``on_window_close(key, value)`` is
called once per window, oldest first, then the window is deleted through the
normal dirty-map/changelog path (a tombstone). After the callbacks of a pass
the stream time it used is stored under a reserved key of the partition, so
a restart neither reports those windows again nor accepts late events for them.
"""

from __future__ import annotations

import heapq
import inspect
import logging
import operator
import struct
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import trio

from .._exceptions import ConfigurationError, EncodeError, TableError
from .._records import FieldDescriptor
from .._settings import parse_duration
from .._stream import current_event
from .base import MAX_KEY_SIZE, StorePartition
from .table import _LOST, _MISSING, DELETED, Table, TablePartition
from .timers import TIMER_PREFIX, firing_step
from .windows import STREAM_TIME_KEY, Duration, Window, WindowRange, from_us, timestamp_of, to_us

if TYPE_CHECKING:
    from .._stream import Event
    from .._worker import Worker

__all__ = ["WindowSet", "WindowWrapper"]

log = logging.getLogger(__name__)

#: ``relative_to`` accepts a field, ``f(event) -> float | datetime``, a datetime or epoch seconds.
RelativeTo = FieldDescriptor | Callable[[Any], float | datetime] | datetime | float | None

#: When a windowed table's ``on_window_close`` callback sees a window: once, when it is
#: final (Kafka Streams' ``suppress(untilWindowCloses)`` / ``EmitStrategy.onWindowClose``),
#: or at every update (Kafka Streams' default, ``EmitStrategy.onWindowUpdate``).
Emit = Literal["final", "update"]
EMITS = ("final", "update")

_OFFSET = 1 << 63
_BOUNDS = struct.Struct(">QQ")
_SUFFIX = _BOUNDS.size
_STREAM_TIME = struct.Struct(">q")


def window_key(kbytes: bytes, start: int, end: int) -> bytes:
    """The stored key of window ``[start, end)`` (microseconds) of the encoded key ``kbytes``."""
    return kbytes + _BOUNDS.pack(start + _OFFSET, end + _OFFSET)


def split_window_key(raw: bytes) -> tuple[bytes, int, int] | None:
    """``(key bytes, start, end)`` of a stored window key, or ``None`` for another key."""
    if len(raw) <= _SUFFIX or raw.startswith(TIMER_PREFIX):
        return None
    start, end = _BOUNDS.unpack_from(raw, len(raw) - _SUFFIX)
    return raw[:-_SUFFIX], start - _OFFSET, end - _OFFSET


def partition_idle(worker: Worker | None, n: int) -> bool:
    """Nothing buffered or in flight on the source lanes of partition ``n``."""
    if worker is None:
        return True
    for _topic, inbox in worker._topic_inboxes:
        for tp, lane in inbox.lanes.items():
            if tp is not None and tp.partition == n and (lane.buffer or lane.unacked() > 0):
                return False
    return True


@dataclass(eq=False)
class _PartitionState:
    """What the windowing keeps in memory for one served table partition."""

    view: StorePartition | None
    #: stream time (µs), or None before the first timestamp
    stream: int | None = None
    #: trio time stream time was last brought up to date
    mark: float = 0.0
    #: windows closing at or before this stream time were reported (persisted)
    fired: int | None = None
    #: (due, kind, start, end, stored key): kind 0 = a window is final (reported), 1 = a
    #: sliding bucket goes, 2 = a reported window goes (expires > grace)
    heap: list[tuple[int, int, int, int, bytes]] = field(default_factory=list)
    #: sliding windows: the bucket times of each key, sorted
    buckets: dict[bytes, list[int]] = field(default_factory=dict)
    #: key_index: live windows per key
    keys: dict[bytes, int] | None = None


class Windowing:
    """The windowed state of one table, shared by its WindowWrappers."""

    def __init__(self, table: Table, window: Window, emit: Emit = "final") -> None:
        self.table = table
        self.window = window
        self.emit = emit
        self.key_index = False
        self.late_dropped = 0
        self.closed = 0
        self._late_logged = 0
        self._parts: dict[int, _PartitionState] = {}
        #: states built on the store's thread at assignment, taken on first use
        self._prepared: dict[int, _PartitionState] = {}
        self._base: tuple[float, float] | None = None

    # -- clocks -----------------------------------------------------------------------

    def wall_time(self) -> float:
        """Epoch seconds: ``time.time()`` when the worker started plus trio time since."""
        base = self._base
        if base is None:
            return time.time()
        return base[0] + (trio.current_time() - base[1])

    def stream_time(self, partition: int) -> float | None:
        state = self._parts.get(partition)
        return None if state is None or state.stream is None else from_us(state.stream)

    # -- keys -------------------------------------------------------------------------

    def encode_key(self, key: Any) -> bytes:
        kbytes = self.table._encode_key(key)
        if len(kbytes) > MAX_KEY_SIZE - _SUFFIX:
            raise EncodeError(
                f"windowed table {self.table.name!r}: key {key!r:.80} encodes to {len(kbytes)} bytes; "
                f"a windowed key must be at most {MAX_KEY_SIZE - _SUFFIX} bytes"
            )
        return kbytes

    def decode_key(self, raw: bytes) -> Any:
        """``(key, (start, end))`` of a stored window key (the reserved key decodes to itself)."""
        split = split_window_key(raw)
        if split is None:
            return raw if raw == STREAM_TIME_KEY else self.table.schema.loads_key(raw)
        kbytes, start, end = split
        return self._plain_key(kbytes), (from_us(start), from_us(end))

    def _plain_key(self, kbytes: bytes) -> Any:
        return self.table.schema.loads_key(kbytes, topic=self.table.changelog_topic_name)

    # -- partitions and their in-memory index -------------------------------------------

    def reset(self) -> None:
        self._parts = {}
        self._prepared = {}
        self._base = (time.time(), trio.current_time())

    def state(self, n: int, part: TablePartition) -> _PartitionState | None:
        """The state of a served partition, built from the store on first use after an assignment."""
        view = part.view
        if view is None:
            return None
        state = self._parts.get(n)
        if state is None or state.view is not view:
            state = self._prepared.pop(n, None)
            if state is not None and state.view is view:
                # Built at assignment: its stream time starts moving at first use, as a lazy build's.
                state.mark = trio.current_time()
            else:
                state = self._build(part, view)
            self._parts[n] = state
        return state

    async def prepare(self, n: int, part: TablePartition) -> None:
        """Build a newly served partition's state on the store's thread (it scans the partition)."""
        view = part.view
        if view is None:
            return
        state = await view.store.run(self._build, part, view, trio.current_time())
        if part.view is view:
            self._prepared[n] = state

    def _build(
        self, part: TablePartition, view: StorePartition, mark: float | None = None
    ) -> _PartitionState:
        """Index a partition's live windows; may run on the store's thread (``mark`` given)."""
        state = _PartitionState(view=view, mark=trio.current_time() if mark is None else mark)
        if self.key_index:
            state.keys = {}
        overlay = part.merged_overlay()
        latest: int | None = None
        fired: int | None = None
        for raw, value in view.items():
            if raw in overlay:
                continue
            if raw == STREAM_TIME_KEY:
                fired = _STREAM_TIME.unpack(value)[0]
            elif (split := split_window_key(raw)) is not None:
                self._index(state, raw, *split)
                latest = split[1] if latest is None else max(latest, split[1])
        for raw, (_key, value, _vbytes) in overlay.items():
            if value is DELETED:
                continue
            if raw == STREAM_TIME_KEY:
                fired = int(value)
            elif (split := split_window_key(raw)) is not None:
                self._index(state, raw, *split)
                latest = split[1] if latest is None else max(latest, split[1])
        heapq.heapify(state.heap)
        state.fired = fired
        # A window exists only once an event at or after its start was seen.
        candidates = [t for t in (fired, latest) if t is not None]
        state.stream = max(candidates) if candidates else None
        return state

    def _index(
        self, state: _PartitionState, raw: bytes, kbytes: bytes, start: int, end: int, *, push: bool = False
    ) -> None:
        """Add a live window (or sliding bucket) to the partition's index.

        With ``push=False`` (a bulk build) the caller heapifies afterwards.
        """
        window = self.window
        add = partial(heapq.heappush, state.heap) if push else state.heap.append
        if window._aggregates:
            insort(state.buckets.setdefault(kbytes, []), start)
        if state.keys is not None:
            state.keys[kbytes] = state.keys.get(kbytes, 0) + 1
        expires, grace = window._expires, window._grace
        if expires is not None and grace is not None:
            if window._aggregates:
                before, after = window._before, window._after  # type: ignore[attr-defined]
                add((start + after + grace, 0, start - before, start + after, raw))
                add((start + before + after + expires, 1, start, start, raw))
            else:
                add((end + grace, 0, start, end, raw))
                if expires > grace:
                    add((end + expires, 2, start, end, raw))

    def _unindex(self, state: _PartitionState, kbytes: bytes, start: int) -> None:
        if self.window._aggregates:
            times = state.buckets.get(kbytes)
            if times is not None:
                i = bisect_left(times, start)
                if i < len(times) and times[i] == start:
                    del times[i]
                if not times:
                    del state.buckets[kbytes]
        if state.keys is not None:
            left = state.keys.get(kbytes, 0) - 1
            if left > 0:
                state.keys[kbytes] = left
            else:
                state.keys.pop(kbytes, None)

    def _added(self, state: _PartitionState | None, raw: bytes, kbytes: bytes, start: int, end: int) -> None:
        if state is not None:
            self._index(state, raw, kbytes, start, end, push=True)

    # -- locating -----------------------------------------------------------------------

    def write_partition(self, kbytes: bytes) -> tuple[int, TablePartition]:
        table = self.table
        table._check_running()
        n = table._event_partition()
        if n == _LOST:
            table._manager.discarded_writes += 1
            return n, TablePartition(n)  # written to, then dropped
        outside = n is None
        if n is None:
            n = table._home(kbytes)
        else:
            table._check_placement(n, kbytes=kbytes)
        part = table._parts.get(n)
        if part is None:
            part = table._parts[n] = TablePartition(n)
        if outside and part.view is None and not table.is_global:
            table._note_foreign_write(n, kbytes)
        return n, part

    def read_partitions(self, kbytes: bytes) -> Iterator[tuple[int, TablePartition]]:
        """Where the windows of ``kbytes`` may be: the event's partition, else its home then the others."""
        table = self.table
        table._check_running()
        n = table._event_partition()
        if n is not None:
            part = table._parts.get(n)
            if part is not None:
                yield n, part
            return
        home = table._home(kbytes)
        part = table._parts.get(home)
        if part is not None:
            yield home, part
        for number in table.served_partitions():
            if number != home:
                yield number, table._parts[number]

    def observe(self, state: _PartitionState | None, t: int) -> None:
        if state is None:
            return
        if state.stream is None or t > state.stream:
            state.stream = t
        state.mark = trio.current_time()

    def buckets_in(self, n: int, part: TablePartition, kbytes: bytes, lo: int, hi: int) -> list[int]:
        """The times of the sliding buckets of ``kbytes`` in ``[lo, hi]``."""
        state = self.state(n, part)
        if state is not None:
            times = state.buckets.get(kbytes, [])
            return times[bisect_left(times, lo) : bisect_right(times, hi)]
        found = []
        for raw, (_key, value, _vbytes) in part.merged_overlay().items():
            split = split_window_key(raw)
            if value is not DELETED and split is not None and split[0] == kbytes and lo <= split[1] <= hi:
                found.append(split[1])
        return sorted(found)

    def keys_in(self, n: int, part: TablePartition) -> Iterator[bytes]:
        """The encoded keys with at least one live window in a partition."""
        state = self.state(n, part)
        if state is not None and state.keys is not None:
            yield from list(state.keys)
            return
        seen: set[bytes] = set()
        overlay = part.merged_overlay()
        if part.view is not None:
            for raw in part.view:
                split = split_window_key(raw)
                if split is not None and split[0] not in seen:
                    entry = overlay.get(raw)
                    if entry is None or entry[1] is not DELETED:
                        seen.add(split[0])
                        yield split[0]
        for raw, (_key, value, _vbytes) in overlay.items():
            split = split_window_key(raw)
            if value is not DELETED and split is not None and split[0] not in seen:
                seen.add(split[0])
                yield split[0]

    # -- expiry -----------------------------------------------------------------------------

    async def serve(self, worker: Worker, interval: float) -> None:
        """Close expired windows every ``interval`` seconds until cancelled."""
        self.reset()
        while True:
            await trio.sleep(interval)
            if not await self.expire(worker):
                return

    async def expire(self, worker: Worker | None) -> bool:
        """Advance idle partitions' stream time and close the windows it expired.

        Returns ``False`` if a close callback failed (the worker was told to crash).
        """
        table = self.table
        window = self.window
        now = trio.current_time()
        expires = window._expires
        due: list[tuple[int, int, int, int, int, bytes]] = []
        reached: dict[int, int] = {}
        for n in table.served_partitions():
            part = table._parts[n]
            state = self.state(n, part)
            if state is None:
                continue
            if state.stream is not None and partition_idle(worker, n):
                state.stream += to_us(now - state.mark)
            state.mark = now
            if expires is None or state.stream is None:
                continue
            limit = state.stream
            heap = state.heap
            if heap and heap[0][0] <= limit:
                reached[n] = state.stream
            while heap and heap[0][0] <= limit:
                when, kind, start, end, raw = heapq.heappop(heap)
                due.append((when, kind, start, end, n, raw))
        self._log_late()
        if not due:
            return True
        due.sort()
        # Read every final value before anything is written or awaited.
        closing: list[tuple[int, int, int, bytes, bytes, Any, bool]] = []
        dropping: list[tuple[int, bytes, int]] = []
        seen: set[tuple[int, int, bytes]] = set()
        for when, kind, start, end, n, raw in due:
            if (kind, n, raw) in seen:
                continue
            seen.add((kind, n, raw))
            part = table._parts[n]
            split = split_window_key(raw)
            assert split is not None
            kbytes = split[0]
            if table._get_in(part, raw) is _MISSING:
                continue
            if kind != 0:
                dropping.append((n, raw, split[1]))
                continue
            if window._aggregates:
                value = self._sum(part, kbytes, self.buckets_in(n, part, kbytes, start, end))
            else:
                value = table._get_in(part, raw)
            fired = self._parts[n].fired
            report = (fired is None or when > fired) and self.emit == "final"
            if not report and window._grace != expires:
                continue  # reported before a restart; deleted at end + expires
            closing.append((n, start, end, kbytes, raw, value, report))
        views = {n: table._parts[n].view for n in reached}
        for n, start, end, kbytes, raw, value, report in closing:
            # One window's callback and deletion form one step: never split over two
            # transactions (exactly_once), so a crash cannot report a window twice.
            async with firing_step(table.app, worker):
                if report:
                    key = (self._plain_key(kbytes), (from_us(start), from_us(end)))
                    try:
                        await table.on_window_close(key, value)
                    except Exception as exc:
                        error = TableError(
                            f"table {table.name!r}: on_window_close failed for window {key!r:.120}: {exc!r}"
                        )
                        error.__cause__ = exc
                        if worker is not None:
                            worker.crash(error)
                            return False
                        raise error from exc
                owner = table._parts.get(n)
                if owner is None or owner.view is not views[n]:
                    continue  # revoked while a callback ran: the new owner closes it
                self.closed += 1
                if not window._aggregates and window._grace == expires:
                    self._delete(n, owner, raw, kbytes, start)
        for n, raw, start in dropping:
            owner = table._parts.get(n)
            if owner is not None and owner.view is views[n]:
                self._delete(n, owner, raw, raw[:-_SUFFIX], start)
        for n, stream in reached.items():
            owner = table._parts.get(n)
            if owner is not None and owner.view is views[n]:
                self._reported(owner, stream)
                self._parts[n].fired = stream
        return True

    def emit_updates(
        self, n: int, part: TablePartition, key: Any, kbytes: bytes, start: int, end: int, value: Any
    ) -> None:
        """emit="update": report the windows a write changed (a sliding bucket is in several)."""
        window = self.window
        table = self.table
        if not window._aggregates:
            emit_update(table, (key, (from_us(start), from_us(end))), value)
            return
        before, after = window._before, window._after  # type: ignore[attr-defined]
        # The window of event time u, [u - before, u + after], contains the bucket at t = start.
        for u in self.buckets_in(n, part, kbytes, start - after, start + before):
            total = self._sum(part, kbytes, self.buckets_in(n, part, kbytes, u - before, u + after))
            if total is not _MISSING:
                emit_update(table, (key, (from_us(u - before), from_us(u + after))), total)

    def _sum(self, part: TablePartition, kbytes: bytes, times: list[int]) -> Any:
        table = self.table
        total: Any = _MISSING
        for t in times:
            value = table._get_in(part, window_key(kbytes, t, t))
            if value is _MISSING:
                continue
            total = value if total is _MISSING else total + value
        return total

    def _delete(self, n: int, part: TablePartition, raw: bytes, kbytes: bytes, start: int) -> None:
        self.table._put(part, raw, self.decode_key(raw), DELETED, None)
        state = self._parts.get(n)
        if state is not None:
            self._unindex(state, kbytes, start)

    def _reported(self, part: TablePartition, stream: int) -> None:
        """Store the stream time a close pass reported through, ahead of this commit's other writes."""
        table = self.table
        vbytes = _STREAM_TIME.pack(stream)
        if table._manager.eager:
            table._put(part, STREAM_TIME_KEY, STREAM_TIME_KEY, stream, vbytes)
            return
        layer = part.dirty
        rest = layer.data
        rest.pop(STREAM_TIME_KEY, None)
        layer.data = {STREAM_TIME_KEY: (STREAM_TIME_KEY, stream, vbytes), **rest}

    def _log_late(self) -> None:
        new = self.late_dropped - self._late_logged
        if new:
            self._late_logged = self.late_dropped
            log.warning(
                "table %r: dropped %d late event(s) whose window had closed (%d so far); "
                "raise the window's expires to keep windows open longer",
                self.table.name,
                new,
                self.late_dropped,
            )

    def info(self) -> dict[str, Any]:
        return {
            "window": repr(self.window),
            "key_index": self.key_index,
            "windows_closed": self.closed,
            "late_events_dropped": self.late_dropped,
            "stream_time": {
                n: from_us(s.stream) for n, s in sorted(self._parts.items()) if s.stream is not None
            },
        }


_IN_PLACE = {
    "__iadd__": operator.add,
    "__isub__": operator.sub,
    "__imul__": operator.mul,
    "__itruediv__": operator.truediv,
    "__ifloordiv__": operator.floordiv,
    "__imod__": operator.mod,
    "__ipow__": operator.pow,
    "__ilshift__": operator.lshift,
    "__irshift__": operator.rshift,
    "__iand__": operator.and_,
    "__ixor__": operator.xor,
    "__ior__": operator.or_,
}


class WindowSet:
    """The windows of one key of a windowed table (what ``windowed[key]`` returns).

    In-place operators update every window containing the wrapper's timestamp
    (``windowed[key] += 1``); the readers pick one window:

    * :meth:`value` - the window at the wrapper's time (its ``relative_to``);
    * :meth:`current` - the window at the event's own timestamp;
    * :meth:`now` - the window at the wall clock;
    * :meth:`delta` - the window ``d`` seconds before the wrapper's time;
    * ``ws[timestamp]`` - the window at a timestamp (epoch seconds or datetime).

    A missing window reads as the table's ``default()``, or raises ``KeyError``.
    """

    __slots__ = ("event", "key", "table", "wrapper")

    def __init__(
        self, key: Any, table: Table, wrapper: WindowWrapper, event: Event[Any] | None = None
    ) -> None:
        self.key = key
        self.table = table
        self.wrapper = wrapper
        self.event = event

    def apply(self, op: Callable[[Any, Any], Any], value: Any, event: Event[Any] | None = None) -> WindowSet:
        """Set every window containing the wrapper's time to ``op(window value, value)``."""
        wrapper = self.wrapper
        wrapper._apply(self.key, op, value, wrapper.get_timestamp(event or self.event))
        return self

    def value(self, event: Event[Any] | None = None) -> Any:
        return self.wrapper._value(self.key, self.wrapper.get_timestamp(event or self.event))

    def current(self, event: Event[Any] | None = None) -> Any:
        event = event or self.event or current_event()
        if event is None:
            raise TableError(
                f"windowed table {self.table.name!r}: current() needs an event (call it in an agent, "
                "or pass event=); use now() or value() outside a stream"
            )
        return self.wrapper._value(self.key, event.message.timestamp)

    def now(self) -> Any:
        return self.wrapper._value(self.key, self.wrapper.wall_time())

    def delta(self, d: Duration, event: Event[Any] | None = None) -> Any:
        seconds = parse_duration(d, name="delta")
        return self.wrapper._value(self.key, self.wrapper.get_timestamp(event or self.event) - seconds)

    def __getitem__(self, when: float | datetime) -> Any:
        return self.wrapper._value(self.key, timestamp_of(when))

    def __repr__(self) -> str:
        return f"<WindowSet {self.table.name}[{self.key!r}] {self.wrapper.window!r}>"


def _in_place(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def method(self: Any, other: Any) -> Any:
        return self.apply(op, other)

    return method


def add_in_place_operators(cls: type) -> None:
    """Give ``cls`` (with ``apply(op, other)``) ``+=``, ``-=``, ... on the current value."""
    for name, op in _IN_PLACE.items():
        setattr(cls, name, _in_place(op))


add_in_place_operators(WindowSet)


def _replace(_old: Any, new: Any) -> Any:
    return new


class WindowWrapper:
    """A windowed view of a table (``table.tumbling(...)``, ``.hopping(...)``, ``.using_window(...)``).

    ``wrapper[key]`` is a :class:`WindowSet`. Which time a write or a read
    uses is the wrapper's *relativity*: by default the timestamp of the event
    being processed (the wall clock outside an event); change it with
    :meth:`relative_to_now`, :meth:`relative_to_stream`,
    :meth:`relative_to_field` or :meth:`relative_to`, which return a new
    wrapper over the same table.
    """

    def __init__(self, table: Table, *, relative_to: RelativeTo = None, key_index: bool = False) -> None:
        windowing = table._windowing
        if windowing is None:
            raise ConfigurationError(f"table {table.name!r} has no window: use table.tumbling(...) and co")
        self.table = table
        self.key_index = key_index
        self._windowing: Windowing = windowing
        self._relative_to = relative_to
        self._timestamp = self._resolve(relative_to)

    # -- relativity -----------------------------------------------------------------

    @property
    def window(self) -> Window:
        return self._windowing.window

    @property
    def name(self) -> str:
        return self.table.name

    def _resolve(self, relative_to: RelativeTo) -> Callable[[Event[Any] | None], float]:
        name = self.table.name

        def need(event: Event[Any] | None, what: str) -> Event[Any]:
            event = event or current_event()
            if event is None:
                raise TableError(
                    f"windowed table {name!r} is relative to {what}, but no event is being processed: "
                    "pass event=, or use relative_to_now()"
                )
            return event

        if relative_to is None:

            def default(event: Event[Any] | None) -> float:
                event = event or current_event()
                return self.wall_time() if event is None else event.message.timestamp

            return default
        if relative_to == "stream":
            return lambda event: need(event, "the stream").message.timestamp
        if relative_to == "now":
            return lambda event: self.wall_time()
        if isinstance(relative_to, FieldDescriptor):
            descriptor = relative_to
            return lambda event: timestamp_of(descriptor.getattr(need(event, str(descriptor)).value))
        if isinstance(relative_to, datetime | int | float) and not isinstance(relative_to, bool):
            fixed = timestamp_of(relative_to)
            return lambda event: fixed
        if callable(relative_to):
            fun = relative_to
            return lambda event: timestamp_of(fun(event or current_event()))
        raise ConfigurationError(
            f"relative_to: expected a field, a callable, a datetime or seconds, got {relative_to!r}"
        )

    def clone(self, relative_to: RelativeTo) -> WindowWrapper:
        """The same table with another time relativity."""
        return WindowWrapper(self.table, relative_to=relative_to, key_index=self.key_index)

    def relative_to(self, ts: RelativeTo) -> WindowWrapper:
        """Windows relative to a field, ``f(event)``, a datetime or epoch seconds."""
        return self.clone(ts)

    def relative_to_now(self) -> WindowWrapper:
        """Windows relative to the wall clock (see :meth:`wall_time`)."""
        return self.clone("now")  # type: ignore[arg-type]

    def relative_to_stream(self) -> WindowWrapper:
        """Windows relative to the timestamp of the event being processed (required)."""
        return self.clone("stream")  # type: ignore[arg-type]

    def relative_to_field(self, field: FieldDescriptor) -> WindowWrapper:
        """Windows relative to a field of the event's value (epoch seconds or datetime)."""
        if not isinstance(field, FieldDescriptor):
            raise ConfigurationError(
                f"relative_to_field: expected a Record field such as Order.ts, got {field!r}"
            )
        return self.clone(field)

    def get_timestamp(self, event: Event[Any] | None = None) -> float:
        """The time (epoch seconds) this wrapper reads and writes at."""
        return self._timestamp(event)

    def wall_time(self) -> float:
        """The wall clock of ``relative_to_now`` and ``now()``: epoch seconds at the worker's
        start plus the trio time elapsed since (``MockClock`` moves it in tests)."""
        return self._windowing.wall_time()

    # -- reads and writes ---------------------------------------------------------------

    def _apply(self, key: Any, op: Callable[[Any, Any], Any], value: Any, timestamp: float) -> None:
        w = self._windowing
        table = self.table
        window = w.window
        kbytes = w.encode_key(key)
        n, part = w.write_partition(kbytes)
        state = w.state(n, part)
        t = to_us(timestamp)
        w.observe(state, t)
        late = False
        for start, end in window._stored(t):
            if state is not None and state.stream is not None and window._late((start, end), state.stream):
                late = True
                continue
            raw = window_key(kbytes, start, end)
            current = table._get_in(part, raw)
            new = current is _MISSING
            if op is _replace:
                result = value
            else:
                if new:
                    if table.default is None:
                        raise KeyError(key)
                    current = table.default()
                result = op(current, value)
            range_ = (from_us(start), from_us(end))
            table._put(part, raw, (key, range_), result, table._encode_value(key, result))
            if new:
                w._added(state, raw, kbytes, start, end)
            if w.emit == "update" and n != _LOST:
                w.emit_updates(n, part, key, kbytes, start, end, result)
        if late:
            w.late_dropped += 1
            log.debug(
                "table %r: late write for key %r at %s (stream time %s) dropped",
                table.name,
                key,
                timestamp,
                None if state is None or state.stream is None else from_us(state.stream),
            )

    def _value(self, key: Any, timestamp: float) -> Any:
        w = self._windowing
        table = self.table
        window = w.window
        kbytes = w.encode_key(key)
        t = to_us(timestamp)
        for n, part in w.read_partitions(kbytes):
            if window._aggregates:
                lo, hi = window._ranges(t)[0]
                total = w._sum(part, kbytes, w.buckets_in(n, part, kbytes, lo, hi))
                if total is not _MISSING:
                    return total
            else:
                start, end = window._current(t)
                value = table._get_in(part, window_key(kbytes, start, end))
                if value is not _MISSING:
                    return value
        if table.default is not None:
            return table.default()
        raise KeyError(key)

    def __getitem__(self, key: Any) -> WindowSet:
        return WindowSet(key, self.table, self, current_event())

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, WindowSet):
            return  # ``windowed[k] += n``: the in-place operator already wrote
        self._apply(key, _replace, value, self.get_timestamp())

    def __delitem__(self, key: Any) -> None:
        """Delete the windows of ``key`` containing the wrapper's time."""
        w = self._windowing
        kbytes = w.encode_key(key)
        t = to_us(self.get_timestamp())
        n, part = w.write_partition(kbytes)
        for start, end in w.window._stored(t):
            raw = window_key(kbytes, start, end)
            if self.table._get_in(part, raw) is not _MISSING:
                w._delete(n, part, raw, kbytes, start)

    def __contains__(self, key: object) -> bool:
        try:
            kbytes = self._windowing.encode_key(key)
        except EncodeError:
            return False
        w = self._windowing
        table = self.table
        return any(kbytes in set(w.keys_in(n, table._parts[n])) for n in table.served_partitions())

    # -- iteration ----------------------------------------------------------------------

    def keys(self) -> Iterator[Any]:
        """Every key with a live window, in the partitions this worker serves."""
        w = self._windowing
        table = self.table
        for n in table.served_partitions():
            for kbytes in w.keys_in(n, table._parts[n]):
                yield w._plain_key(kbytes)

    def items(self, event: Event[Any] | None = None) -> Iterator[tuple[Any, Any]]:
        """``(key, value)`` of the window at the wrapper's time, for every key that has one there."""
        timestamp = self.get_timestamp(event)
        w = self._windowing
        table = self.table
        window = w.window
        t = to_us(timestamp)
        for n in table.served_partitions():
            part = table._parts[n]
            for kbytes in w.keys_in(n, part):
                if window._aggregates:
                    lo, hi = window._ranges(t)[0]
                    value = w._sum(part, kbytes, w.buckets_in(n, part, kbytes, lo, hi))
                else:
                    start, end = window._current(t)
                    value = table._get_in(part, window_key(kbytes, start, end))
                if value is not _MISSING:
                    yield w._plain_key(kbytes), value

    def values(self, event: Event[Any] | None = None) -> Iterator[Any]:
        return (value for _, value in self.items(event))

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def windows(self, key: Any) -> list[tuple[WindowRange, Any]]:
        """Every live stored window of ``key`` as ``((start, end), value)``, oldest first.

        For a sliding window these are its per-time buckets ``((t, t), value)``.
        """
        w = self._windowing
        kbytes = w.encode_key(key)
        found: dict[bytes, Any] = {}
        for _n, part in w.read_partitions(kbytes):
            for raw, (_key, value, _vbytes) in part.merged_overlay().items():
                if split_window_key(raw) is not None and raw[:-_SUFFIX] == kbytes:
                    found.setdefault(raw, value)
            view = part.view
            if view is not None:
                lo = window_key(kbytes, -_OFFSET, -_OFFSET)
                hi = kbytes + b"\xff" * (_SUFFIX + 1)
                for raw, vbytes in view.range(lo, hi):
                    if len(raw) == len(kbytes) + _SUFFIX and raw not in found:
                        found[raw] = self.table._decode_value(vbytes)
        result = []
        for raw in sorted(found):
            value = found[raw]
            if value is DELETED:
                continue
            split = split_window_key(raw)
            assert split is not None
            result.append(((from_us(split[1]), from_us(split[2])), value))
        return result

    # -- description ----------------------------------------------------------------------

    def on_recover(self, fun: Callable[[], Any]) -> Callable[[], Any]:
        return self.table.on_recover(fun)

    def info(self) -> dict[str, Any]:
        return self.table.info()

    @property
    def late_dropped(self) -> int:
        """Events dropped because a window they belong to had closed."""
        return self._windowing.late_dropped

    def as_ansitable(self, title: str = "{table.name}", **kwargs: Any) -> str:
        return self.table.as_ansitable(title, **kwargs)

    def __repr__(self) -> str:
        return f"<WindowWrapper {self.table.name!r} {self.window!r}>"


def emit_update(table: Table, key: Any, value: Any) -> None:
    """Call the ``on_window_close`` callback of an ``emit="update"`` table with a window's new value.

    It runs inside the write, so it must be a plain function (its ``send_soon``
    outputs belong to the event being processed).

    Raises:
        TableError: the callback returned an awaitable.
    """
    callback = table._on_window_close
    if callback is None:
        return
    result = callback(key, value)
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()
        raise TableError(
            f"table {table.name!r}: with emit='update' on_window_close runs inside each write and "
            "must be a plain function, not async (use topic.send_soon inside it)"
        )


def check_emit(table: Table, emit: Any) -> Emit:
    """Validate ``emit=`` of a windowed table (and its callback for ``"update"``)."""
    if emit not in EMITS:
        raise ConfigurationError(f"table {table.name!r}: emit must be 'final' or 'update', got {emit!r}")
    callback = table._on_window_close
    if emit == "update" and callback is not None and inspect.iscoroutinefunction(callback):
        raise ConfigurationError(
            f"table {table.name!r}: with emit='update' on_window_close runs inside each write and "
            "must be a plain function, not async (use topic.send_soon inside it)"
        )
    return emit  # type: ignore[no-any-return]


async def call_window_close(callback: Callable[[Any, Any], Any] | None, key: Any, value: Any) -> None:
    """Call a sync or async ``on_window_close`` callback."""
    if callback is None:
        return
    result = callback(key, value)
    if inspect.isawaitable(result):
        await result
