"""Durable per-key timers of a table: ``table.schedule(key, when)`` and ``@table.on_timer``.

A timer is a reserved key of the table partition its key belongs to::

    b"\\x00~T" + clock (b"e" event time, b"w" wall clock) + when (8 bytes) + encoded key

with the timer's value (msgpack) as its value. So timers are written through
the table's dirty layer, produced to its changelog at each commit, persisted
in LMDB with the table's data and its changelog offsets, replayed by recovery
and followed by standbys: they move with their partition like any key.

Each partition has a *stream time*: the newest timestamp of the events that
used the table on that partition (a read, a write or ``schedule``). It is
stored under another reserved key whenever it advances, so a restarted or new
owner starts from it. An event-time timer fires once the stream time reaches
its ``when``; a wall-clock timer once the worker's clock (epoch seconds at the
start plus trio time since, so ``MockClock`` drives it) does, even if no event
arrives.

Firing one timer is a unit of work of its own, tied to no source offset:

1. wait until no commit holds the agents' inputs, then count as an executing
   agent step (``app._steps``): an exactly_once commit waits for it, so a
   firing is never split over two transactions;
2. call ``on_timer(timer)`` with the current event set to a *firing event*
   (on the timer's partition, so table writes go there and ``send_soon``
   outputs are counted for it; a failed output stops the worker);
3. delete the timer key (a tombstone in the changelog): under exactly_once at
   once, in the same step, so the callback's writes and outputs and the
   deletion are one transaction; under at_least_once once the firing's
   outputs are delivered, so the deletion never reaches the changelog before
   them.

The firing is not owed to the event that made it due: that event's writes
(including the stream time) and its offset commit together, as any event's;
a timer and a stream time that are committed are enough to fire it after a
restart. Holding the event's offset until the firing is done instead would,
under exactly_once, commit the event's table writes without its offset (a
crash would then apply them twice, and schedule fired timers again).
Hence: at_least_once fires each timer at least once; exactly_once makes each
firing visible exactly once.
"""

from __future__ import annotations

import heapq
import inspect
import logging
import math
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import msgpack
import trio

from .._exceptions import ConfigurationError, EncodeError, TableError
from .._stream import Event, _current_event
from .._types import Message
from .base import MAX_KEY_SIZE, StorePartition
from .windows import from_us, timestamp_of, to_us

if TYPE_CHECKING:
    from .._app import App
    from .._worker import Worker
    from .table import Table, TablePartition

__all__ = ["KeyTimer", "TimerService"]

log = logging.getLogger(__name__)

#: Every reserved key of a table partition starts with this (never a user key's
#: encoding in practice: msgpack, json and raw strings do not begin with it).
RESERVED = b"\x00~"
TIMER_PREFIX = RESERVED + b"T"
_TIMER_END = RESERVED + b"U"
#: The stored stream time of a partition with timers.
STREAM_KEY = RESERVED + b"clock"
#: "close" and "expire" timers are event-time timers of the windowing (a session is
#: final / is deleted) and of stream-stream joins: not the user's.
_CLOCKS = {"event": b"e", "wall": b"w", "close": b"c", "expire": b"x"}
_INTERNAL = ("close", "expire")
_CLOCK_NAMES = {v[0]: k for k, v in _CLOCKS.items()}
_OFFSET = 1 << 63
_WHEN = struct.Struct(">Q")
_STREAM = struct.Struct(">q")
_HEAD = len(TIMER_PREFIX) + 1 + _WHEN.size

Clock = Literal["event", "wall", "close", "expire"]
#: ``on_timer(timer)``, sync or async.
TimerCallback = Callable[["KeyTimer"], "Awaitable[None] | None"]


@dataclass(frozen=True, slots=True)
class KeyTimer:
    """A timer as ``on_timer`` sees it (and :meth:`Table.timers` lists it).

    Attributes:
        key: the table key it was scheduled for.
        when: when it fires, epoch seconds.
        clock: ``"event"`` (stream time) or ``"wall"`` (the worker's clock).
        value: the value given to ``schedule``.
        partition: the table partition it belongs to.
    """

    key: Any
    when: float
    clock: Clock
    value: Any
    partition: int


def timer_key(clock: Clock, when: int, kbytes: bytes) -> bytes:
    return TIMER_PREFIX + _CLOCKS[clock] + _WHEN.pack(when + _OFFSET) + kbytes


def split_timer_key(raw: bytes) -> tuple[Clock, int, bytes] | None:
    """``(clock, when µs, key bytes)`` of a stored timer key, else ``None``."""
    if not raw.startswith(TIMER_PREFIX) or len(raw) <= _HEAD:
        return None
    clock = _CLOCK_NAMES.get(raw[len(TIMER_PREFIX)])
    if clock is None:
        return None
    (when,) = _WHEN.unpack_from(raw, len(TIMER_PREFIX) + 1)
    return clock, when - _OFFSET, raw[_HEAD:]  # type: ignore[return-value]


@dataclass(eq=False)
class _PartState:
    view: StorePartition
    #: stream time (µs) or None before the first event
    stream: int | None = None
    #: (when, stored key) per clock
    event_heap: list[tuple[int, bytes]] = field(default_factory=list)
    wall_heap: list[tuple[int, bytes]] = field(default_factory=list)
    #: fired, deletion waiting for the outputs' delivery (at_least_once)
    firing: set[bytes] = field(default_factory=set)
    #: trio time of the last event that used the table here (or of the state's build)
    mark: float = field(default_factory=trio.current_time)
    #: events were in flight at the last idle check: look again soon
    busy: bool = False


@asynccontextmanager
async def firing_step(app: App, worker: Worker | None) -> AsyncIterator[None]:
    """Run the block as one agent step: started only while no commit holds the inputs,
    and waited for by an exactly_once commit, so its writes and outputs land in one
    transaction."""
    if worker is not None:
        while any(inbox.holds for _topic, inbox in worker._topic_inboxes):  # noqa: ASYNC110
            await trio.sleep(0.001)
    app._steps += 1
    try:
        yield
    finally:
        app._steps -= 1


class _FiringEvent(Event[Any]):
    """The current event while ``on_timer`` runs: counts its outputs; a failed one stops the worker."""

    __slots__ = ("_on_failure",)
    _on_failure: Callable[[BaseException], None]

    def _output_done(self, error: BaseException | None) -> None:
        self._outputs -= 1
        if error is not None and not self._failed:
            self._failed = True
            self._on_failure(error)
        if not self._outputs and self._acked:
            self._complete()


class TimerService:
    """The timers of one table (``table._timers``): index, stream time and the firing loop."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.callbacks: list[TimerCallback] = []
        #: fire the "close" and "expire" timers (session windows, stream-stream joins)
        self.closer: TimerCallback | None = None
        self.expirer: TimerCallback | None = None
        #: stream time follows the clock while a partition is idle (session windows)
        self.idle_advance = False
        self.fired = 0
        self.advanced = 0
        self._parts: dict[int, _PartState] = {}
        self._wakeup = trio.Event()
        self._base: tuple[float, float] | None = None
        self._poll = 1.0

    # -- clocks --------------------------------------------------------------------------

    def wall_time(self) -> float:
        """Epoch seconds: ``time.time()`` at the worker's start plus trio time since."""
        base = self._base
        if base is None:
            return time.time()
        return base[0] + (trio.current_time() - base[1])

    def _trio_time_of(self, when_us: int) -> float:
        base = self._base
        assert base is not None
        return base[1] + (from_us(when_us) - base[0])

    def stream_time(self, partition: int) -> float | None:
        state = self._parts.get(partition)
        return None if state is None or state.stream is None else from_us(state.stream)

    def reset(self) -> None:
        """Forget the in-memory index (rebuilt from the store): start, or a rolled-back transaction."""
        self._parts = {}
        self._wakeup.set()

    # -- the index -------------------------------------------------------------------------

    def state(self, n: int, part: TablePartition) -> _PartState | None:
        view = part.view
        if view is None:
            return None
        state = self._parts.get(n)
        if state is None or state.view is not view:
            state = self._parts[n] = self._build(part, view, list(view.range(TIMER_PREFIX, _TIMER_END)))
        return state

    def _build(
        self, part: TablePartition, view: StorePartition, rows: list[tuple[bytes, bytes]]
    ) -> _PartState:
        state = _PartState(view=view)
        raw_stream = view.get(STREAM_KEY)
        if raw_stream is not None:
            state.stream = _STREAM.unpack(raw_stream)[0]
        found = {raw for raw, _ in rows}
        overlay = part.merged_overlay()
        for raw, (_key, _value, vbytes) in overlay.items():
            if raw == STREAM_KEY and vbytes is not None:
                state.stream = _STREAM.unpack(vbytes)[0]
            elif raw.startswith(TIMER_PREFIX):
                if vbytes is None:
                    found.discard(raw)
                else:
                    found.add(raw)
        for raw in found:
            split = split_timer_key(raw)
            if split is not None:
                (state.wall_heap if split[0] == "wall" else state.event_heap).append((split[1], raw))
        heapq.heapify(state.event_heap)
        heapq.heapify(state.wall_heap)
        return state

    async def _prepare(self, n: int, part: TablePartition) -> None:
        """Build a partition's index with the store scan on the store's thread."""
        view = part.view
        if view is None or (n in self._parts and self._parts[n].view is view):
            return
        rows = await view.store.run(lambda: list(view.range(TIMER_PREFIX, _TIMER_END)))
        if part.view is view and not (n in self._parts and self._parts[n].view is view):
            self._parts[n] = self._build(part, view, rows)

    # -- from the table ----------------------------------------------------------------------

    def observe(self, n: int, part: TablePartition, event: Event[Any]) -> None:
        """An event of partition ``n`` used the table: advance its stream time."""
        if isinstance(event, _FiringEvent):
            return
        state = self.state(n, part)
        if state is None:
            return
        state.mark = trio.current_time()
        t = to_us(event.message.timestamp)
        if state.stream is not None and t <= state.stream:
            return
        state.stream = t
        self.table._put(part, STREAM_KEY, STREAM_KEY, t, _STREAM.pack(t))
        heap = state.event_heap
        if heap and heap[0][0] <= t:
            self._wakeup.set()

    def schedule(self, key: Any, when: float | datetime, value: Any, clock: Clock) -> None:
        table = self.table
        if clock not in ("event", "wall"):
            raise ConfigurationError(f"table {table.name!r}: clock must be 'event' or 'wall', got {clock!r}")
        raw, kbytes = self._key(key, to_us(timestamp_of(when)), clock)
        self.schedule_raw(raw, kbytes, value, clock)

    def schedule_raw(self, raw: bytes, kbytes: bytes, value: Any, clock: Clock) -> None:
        """Store the timer ``raw`` of ``kbytes`` (in the event's partition, else the key's)."""
        table = self.table
        try:
            vbytes = msgpack.packb(value)
        except Exception as exc:
            raise EncodeError(
                f"table {table.name!r}: a timer value must be msgpack-serialisable, got {value!r:.80}: {exc}"
            ) from exc
        n, part = table._timer_partition(kbytes)
        if n < 0:
            return  # the event's partition was lost meanwhile: nothing is written for it
        table._put(part, raw, raw, value, vbytes)
        state = self.state(n, part)
        if state is None:
            return
        split = split_timer_key(raw)
        assert split is not None
        when_us = split[1]
        if clock != "wall":
            heapq.heappush(state.event_heap, (when_us, raw))
            if state.stream is not None and when_us <= state.stream:
                self._wakeup.set()
        else:
            heapq.heappush(state.wall_heap, (when_us, raw))
            self._wakeup.set()

    def cancel(self, key: Any, when: float | datetime, clock: Clock) -> bool:
        raw, kbytes = self._key(key, to_us(timestamp_of(when)), clock)
        return self.cancel_raw(raw, kbytes)

    def cancel_raw(self, raw: bytes, kbytes: bytes) -> bool:
        from .table import _MISSING, DELETED

        table = self.table
        n, part = table._timer_partition(kbytes)
        if n < 0 or self._value(part, raw) is _MISSING:
            return False
        table._put(part, raw, raw, DELETED, None)
        return True  # its heap entry is skipped when it comes up

    @staticmethod
    def _value(part: TablePartition, raw: bytes) -> Any:
        """The value of a timer (msgpack, whatever the table's codec), or ``_MISSING``."""
        from .table import _MISSING, DELETED

        entry = part.overlay(raw)
        if entry is not None:
            return _MISSING if entry[1] is DELETED else entry[1]
        stored = None if part.view is None else part.view.get(raw)
        return _MISSING if stored is None else msgpack.unpackb(stored)

    def _key(self, key: Any, when: int, clock: Clock) -> tuple[bytes, bytes]:
        kbytes = self.table._encode_key(key)
        if len(kbytes) > MAX_KEY_SIZE - _HEAD:
            raise EncodeError(
                f"table {self.table.name!r}: key {key!r:.80} encodes to {len(kbytes)} bytes; "
                f"a key with timers must be at most {MAX_KEY_SIZE - _HEAD} bytes"
            )
        return timer_key(clock, when, kbytes), kbytes

    def pending(self, key: Any = None) -> list[KeyTimer]:
        """The timers not fired yet in the partitions this worker serves, earliest first."""
        from .table import DELETED

        table = self.table
        wanted = None if key is None else table._encode_key(key)
        found: list[KeyTimer] = []
        for n in table.served_partitions():
            part = table._parts[n]
            overlay = {raw: e for raw, e in part.merged_overlay().items() if raw.startswith(TIMER_PREFIX)}
            rows: dict[bytes, Any] = {raw: e[1] for raw, e in overlay.items() if e[1] is not DELETED}
            assert part.view is not None
            for raw, vbytes in part.view.range(TIMER_PREFIX, _TIMER_END):
                if raw not in overlay:
                    rows[raw] = msgpack.unpackb(vbytes)
            for raw, value in rows.items():
                split = split_timer_key(raw)
                if split is None or split[0] in _INTERNAL or (wanted is not None and split[2] != wanted):
                    continue
                found.append(KeyTimer(self._decode(split[2]), from_us(split[1]), split[0], value, n))
        found.sort(key=lambda t: (t.when, t.clock, t.partition))
        return found

    def _decode(self, kbytes: bytes) -> Any:
        return self.table.schema.loads_key(kbytes, topic=self.table.changelog_topic_name)

    # -- firing -------------------------------------------------------------------------------

    async def serve(self, worker: Worker) -> None:
        """Fire due timers until cancelled (started by the table manager)."""
        self._parts = {}
        self._base = (time.time(), trio.current_time())
        poll = self._poll = min(1.0, float(worker.app.conf.table_cleanup_interval))
        table = self.table
        while True:
            wakeup = self._wakeup = trio.Event()
            for n in table.served_partitions():
                await self._prepare(n, table._parts[n])
            for n in list(self._parts):
                part = table._parts.get(n)
                if part is None or part.view is not self._parts[n].view:
                    del self._parts[n]
            fired = await self._fire_due(worker)
            if fired is None:
                return
            if fired:
                continue
            deadline = trio.current_time() + poll
            for state in self._parts.values():
                if state.wall_heap:
                    deadline = min(deadline, self._trio_time_of(state.wall_heap[0][0]))
                if self.idle_advance:
                    deadline = min(deadline, self._idle_due(state))
            with trio.move_on_at(deadline):
                await wakeup.wait()

    async def _fire_due(self, worker: Worker) -> int | None:
        """Fire every due timer once; the count, or ``None`` if the worker was told to crash."""
        from .table import _MISSING

        table = self.table
        count = 0
        now = to_us(self.wall_time())
        for n, state in list(self._parts.items()):
            part = table._parts.get(n)
            if part is None or part.view is not state.view:
                continue
            if self.idle_advance and self._idle_due(state) <= trio.current_time():
                await self._advance_idle(worker, n, part, state)
            while True:
                if state.event_heap and state.stream is not None and state.event_heap[0][0] <= state.stream:
                    _when, raw = heapq.heappop(state.event_heap)
                elif state.wall_heap and state.wall_heap[0][0] <= now:
                    _when, raw = heapq.heappop(state.wall_heap)
                else:
                    break
                value = self._value(part, raw)
                if value is _MISSING or raw in state.firing:
                    continue  # cancelled, or fired already (a duplicate heap entry)
                ok = await self._fire(worker, n, part, state, raw, value)
                if not ok:
                    return None
                count += 1
                if table._parts.get(n) is not part or part.view is not state.view:
                    break  # revoked meanwhile: the new owner fires the rest
        return count

    async def _fire(
        self,
        worker: Worker,
        n: int,
        part: TablePartition,
        state: _PartState,
        raw: bytes,
        value: Any,
    ) -> bool:

        table = self.table
        app = table.app
        split = split_timer_key(raw)
        assert split is not None
        clock, when, kbytes = split
        # An internal timer belongs to the windowing or a join: its key is the raw stored key.
        internal = clock in _INTERNAL
        key = kbytes if internal else self._decode(kbytes)
        timer = KeyTimer(key, from_us(when), clock, value, n)
        source = next((tp for tp in sorted(table._manager.sources) if tp.partition == n), None)
        if source is None:
            return True  # no longer a source partition of this worker
        # Never inside a commit that holds the inputs (exactly_once: one transaction per firing).
        async with firing_step(app, worker):
            if table._parts.get(n) is not part or part.view is not state.view:
                return True
            message = Message(source.topic, n, -1, None, None, from_us(when))
            event = _FiringEvent(app, timer.key, value, None, message)

            def failed(error: BaseException) -> None:
                what = f"table {table.name!r}: an output of timer {timer!r:.160} failed: {error}"
                worker.crash(TableError(what))

            event._on_failure = failed
            exactly_once = app.conf.processing_guarantee == "exactly_once"
            if not exactly_once:
                state.firing.add(raw)

                def delivered(_error: BaseException | None) -> None:
                    self._delete(n, part, state, raw)

                event._parent = delivered
            token = _current_event.set(event)
            try:
                if internal:
                    callbacks = [self.closer if clock == "close" else self.expirer]
                else:
                    callbacks = list(self.callbacks)
                for callback in callbacks:
                    if callback is None:
                        continue
                    result = callback(timer)
                    if inspect.isawaitable(result):
                        await result
                if exactly_once:
                    self._delete(n, part, state, raw)
            except Exception as exc:
                error = TableError(f"table {table.name!r}: on_timer failed for {timer!r:.160}: {exc!r}")
                error.__cause__ = exc
                worker.crash(error)
                return False
            finally:
                _current_event.reset(token)
        event.ack()
        return True

    # -- idle partitions (session windows) ------------------------------------------------------

    def _idle_due(self, state: _PartState) -> float:
        """The trio time at which an idle partition's stream time reaches its next event-time timer."""
        if state.stream is None or not state.event_heap or state.event_heap[0][0] <= state.stream:
            return math.inf  # nothing to wait for, or due already (fired by event time)
        if state.busy:
            return state.mark + self._poll
        return state.mark + from_us(max(0, state.event_heap[0][0] - state.stream))

    async def _advance_idle(self, worker: Worker, n: int, part: TablePartition, state: _PartState) -> None:
        """Move an idle partition's stream time on by the trio time since its last event.

        As a windowed table's: with nothing buffered or in flight for the
        partition, stream time follows the clock from the last event, so
        sessions close on time when no event comes. The write is a step of
        its own (one transaction under exactly_once); the timers it makes due
        fire after it, each in its own step.
        """
        from .windowed import partition_idle

        async with firing_step(self.table.app, worker):
            if self.table._parts.get(n) is not part or part.view is not state.view or state.stream is None:
                return
            now = trio.current_time()
            idle = partition_idle(worker, n)
            if not idle or state.busy:
                # Events are in flight: they move stream time themselves. Idle time counts
                # from the first check that finds none (at most a poll after the last).
                state.busy = not idle
                state.mark = now
                return
            t = state.stream + to_us(now - state.mark)
            state.mark = now
            if t <= state.stream:
                return
            state.stream = t
            self.table._put(part, STREAM_KEY, STREAM_KEY, t, _STREAM.pack(t))
            self.advanced += 1

    def _delete(self, n: int, part: TablePartition, state: _PartState, raw: bytes) -> None:
        from .table import DELETED

        table = self.table
        state.firing.discard(raw)
        if table._parts.get(n) is part and part.view is state.view:
            table._put(part, raw, raw, DELETED, None)
            self.fired += 1

    def info(self) -> dict[str, Any]:
        return {
            "timers_fired": self.fired,
            "timer_stream_time": {
                n: from_us(s.stream) for n, s in sorted(self._parts.items()) if s.stream is not None
            },
        }
