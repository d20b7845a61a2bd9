"""Per-partition lanes: the bounded buffers between the fetcher and the agents.

Every subscriber of a topic (an agent, or a stream) owns an :class:`Inbox`;
the inbox holds one :class:`Lane` per assigned topic partition. The fetcher
appends whole batches to lanes; actors take items one at a time.

A lane also keeps the ack bookkeeping of its partition. Items taken from it
are *in flight* until acked; the lane's :meth:`Lane.frontier` is the offset
below which every item has been acked — the only offset the commit loop may
commit. Out-of-order acks (``concurrency > 1``) are held back until the
items before them are acked too, so a commit never skips an event in flight.

Backpressure: when a lane holds ``high_water`` items or more the inbox asks
its flow controller to pause the partition; when it falls to ``low_water``
it asks for a resume. The consumer thread never blocks on a full lane.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import trio

from ._types import TP

__all__ = ["FlowControl", "Inbox", "Lane", "LaneStatistics"]

T = TypeVar("T")

#: Items a lane hands out before the inbox moves on to the next ready lane,
#: so that one busy partition cannot starve the others.
_BURST = 64


class FlowControl(Protocol):
    """Told when a lane crosses its water marks (``tp`` is None for channels)."""

    def on_lane_full(self, tp: TP | None) -> None: ...

    def on_lane_drained(self, tp: TP | None) -> None: ...


class _NoFlowControl:
    def on_lane_full(self, tp: TP | None) -> None:
        pass

    def on_lane_drained(self, tp: TP | None) -> None:
        pass


@dataclass(frozen=True, slots=True)
class LaneStatistics:
    """A snapshot of one lane.

    Attributes:
        tp: the topic partition (``None`` for an in-process channel).
        buffered: items waiting to be taken.
        in_flight: items taken and not yet acked.
        frontier: the committable offset (every item below it is acked).
        high_water: the pause threshold.
    """

    tp: TP | None
    buffered: int
    in_flight: int
    frontier: int | None
    high_water: int


class Lane(Generic[T]):
    """The buffer and ack bookkeeping of one partition for one subscriber.

    ``offset_of(item)`` gives an item's offset; items of in-process channels
    have none and are tracked by a local sequence number instead.
    """

    __slots__ = (
        "_abandoned",
        "_cap",
        "_done",
        "_high",
        "_inflight",
        "_position",
        "buffer",
        "burst",
        "first_offset",
        "high_water",
        "inbox",
        "low_water",
        "queued",
        "revoked",
        "tp",
    )

    def __init__(self, inbox: Inbox[T], tp: TP | None, high_water: int) -> None:
        self.inbox = inbox
        self.tp = tp
        self.buffer: deque[T] = deque()
        self.high_water = high_water
        self.low_water = high_water // 2
        self.queued = False  # on the inbox's ready queue
        self.burst = 0
        self.revoked = False
        self._inflight: deque[int] = deque()
        self._done: set[int] = set()
        self._abandoned: set[int] = set()
        self._position = -1  # next offset expected; older ones are duplicates
        self._high: int | None = None  # one past the highest offset ever taken
        self._cap: int | None = None  # the first buffered offset dropped by a revoke
        #: the offset of the first item fed (the monitor counts progress from it)
        self.first_offset: int | None = None

    # -- filling ------------------------------------------------------------

    def extend(self, items: list[T], first_offset: int, last_offset: int) -> int:
        """Append a run of items with offsets ``first_offset..last_offset``.

        Items below the lane's position (re-delivered after a rebalance or a
        seek) are dropped. Returns how many were appended.
        """
        if self.revoked:
            return 0
        if first_offset < self._position:
            offset_of = self.inbox.offset_of
            items = [item for item in items if offset_of(item) >= self._position]
            if not items:
                return 0
        if self.first_offset is None:
            self.first_offset = self.inbox.offset_of(items[0])
        self.buffer.extend(items)
        self._position = last_offset + 1
        return len(items)

    # -- acks ---------------------------------------------------------------

    def taken(self, offset: int) -> None:
        inflight = self._inflight
        if inflight and offset < inflight[-1]:
            # A requeued item taken again: keep the in-flight list in offset order.
            index = len(inflight)
            while index and inflight[index - 1] > offset:
                index -= 1
            inflight.insert(index, offset)
        else:
            inflight.append(offset)
        high = self._high
        if high is None or offset >= high:
            self._high = offset + 1

    def ack(self, offset: int) -> None:
        """Mark the item at ``offset`` (in flight) done; advances the frontier when it can."""
        observer = self.inbox.observer
        if observer is not None:
            observer(self, offset)
        if self._abandoned:
            self._abandoned.discard(offset)
        inflight = self._inflight
        if inflight and inflight[0] == offset:
            inflight.popleft()
            done = self._done
            if done:
                while inflight and inflight[0] in done:
                    done.discard(inflight.popleft())
        else:
            self._done.add(offset)

    def abandon(self, offset: int) -> None:
        """The actor holding this item died: it stays unacked, but is not waited for."""
        self._abandoned.add(offset)
        observer = self.inbox.observer
        if observer is not None:
            observer(self, None)

    def requeue(self, item: T, offset: int) -> None:
        """Put an unacked item back, in offset order, to be taken again (agent restart,
        a failed delivery). The frontier stays at or below it until it is acked."""
        try:
            self._inflight.remove(offset)
        except ValueError:
            return
        self._done.discard(offset)
        self._abandoned.discard(offset)
        if self.revoked:
            cap = self._cap
            self._cap = offset if cap is None or offset < cap else cap
            return
        buffer = self.buffer
        offset_of = self.inbox.offset_of
        # Requeued items sit before the fetched ones (all of which are newer).
        index = 0
        while index < len(buffer) and offset_of(buffer[index]) < offset:
            index += 1
        buffer.insert(index, item)
        self.inbox._mark_ready(self)

    def drop_buffer(self) -> None:
        """Forget the buffered items (revoke); the frontier never passes the first of them."""
        buffer = self.buffer
        if buffer:
            first = self.inbox.offset_of(buffer[0])
            cap = self._cap
            self._cap = first if cap is None or first < cap else cap
            buffer.clear()

    def frontier(self) -> int | None:
        """The offset below which every item is acked, or ``None`` if nothing was seen."""
        inflight = self._inflight
        buffer = self.buffer
        frontier: int | None
        if inflight:
            frontier = inflight[0]
            if buffer:
                first = self.inbox.offset_of(buffer[0])
                if first < frontier:  # a requeued item
                    frontier = first
        elif buffer:
            frontier = self.inbox.offset_of(buffer[0])
        else:
            frontier = self._high
        cap = self._cap
        if cap is not None and (frontier is None or cap < frontier):
            return cap
        return frontier

    def unacked(self) -> int:
        """Items in flight that a live actor is still working on."""
        return len(self._inflight) - len(self._done) - len(self._abandoned)

    def statistics(self) -> LaneStatistics:
        return LaneStatistics(
            tp=self.tp,
            buffered=len(self.buffer),
            in_flight=len(self._inflight) - len(self._done),
            frontier=self.frontier(),
            high_water=self.high_water,
        )


class Inbox(Generic[T]):
    """The lanes of one subscriber and the actors waiting on them.

    Args:
        offset_of: gives an item's offset.
        high_water: lane size at which a partition is paused.
        flow: told when a lane crosses its high or low water mark.
    """

    def __init__(
        self,
        offset_of: Callable[[T], int],
        *,
        high_water: int,
        flow: FlowControl | None = None,
    ) -> None:
        self.offset_of = offset_of
        self.high_water = high_water
        self.flow: FlowControl = flow or _NoFlowControl()
        self.lanes: dict[TP | None, Lane[T]] = {}
        self._ready: deque[Lane[T]] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self.closed = False
        #: while positive nothing is handed out (feeding goes on): exactly_once
        #: commits and a full producer queue hold the inbox
        self.holds = 0
        #: told of every ack (``offset``) and abandon (``None``): the test harness
        self.observer: Callable[[Lane[T], int | None], None] | None = None
        #: called with an event and the error when an output of the event failed
        #: (the subscribing agent's ``on_error`` policy)
        self.on_failure: Callable[[Any, BaseException], None] | None = None
        #: wake every waiting actor on a feed (isolated partitions: each waits for its own lane)
        self.wake_all_on_feed = False

    # -- lanes --------------------------------------------------------------

    def add_lane(self, tp: TP | None) -> Lane[T]:
        lane = self.lanes.get(tp)
        if lane is None or lane.revoked:
            lane = self.lanes[tp] = Lane(self, tp, self.high_water)
        return lane

    def revoke_lane(self, tp: TP | None) -> Lane[T] | None:
        """Stop feeding and handing out ``tp``; buffered items are dropped.

        The lane is returned so in-flight items can still be acked and waited for.
        """
        lane = self.lanes.pop(tp, None)
        if lane is not None:
            lane.revoked = True
            lane.drop_buffer()
            if lane.queued:
                self._ready.remove(lane)
                lane.queued = False
        return lane

    def feed(self, tp: TP | None, items: list[T], first_offset: int, last_offset: int) -> None:
        """Append a run of items of one partition (called by the fetcher)."""
        lane = self.lanes.get(tp)
        if lane is None or self.closed:
            return
        if lane.extend(items, first_offset, last_offset):
            self._mark_ready(lane)
            if self._lot:  # wake an idle actor even when the lane was already queued
                if self.wake_all_on_feed:
                    self._lot.unpark_all()
                else:
                    self._lot.unpark()
            if len(lane.buffer) >= lane.high_water:
                self.flow.on_lane_full(tp)

    def _mark_ready(self, lane: Lane[T]) -> None:
        if not lane.queued and not lane.revoked:
            lane.queued = True
            self._ready.append(lane)
            self._lot.unpark()

    def close(self) -> None:
        """Stop handing out items (shutdown): waiting actors stay parked."""
        self.closed = True

    def hold(self) -> None:
        """Stop handing out items until a matching :meth:`release` (feeding goes on)."""
        self.holds += 1

    def release(self) -> None:
        self.holds -= 1
        if not self.holds:
            self.wake_all()

    # -- taking -------------------------------------------------------------

    def take_nowait(self) -> tuple[Lane[T], T] | None:
        """The next item and its lane, or ``None`` when nothing is ready."""
        ready = self._ready
        if self.holds:
            return None
        while ready and not self.closed:
            lane = ready[0]
            buffer = lane.buffer
            if not buffer:
                ready.popleft()
                lane.queued = False
                continue
            item = buffer.popleft()
            offset = self.offset_of(item)
            # lane.taken(offset), inlined for the common case (the next offset in order)
            inflight = lane._inflight
            high = lane._high
            if high is not None and offset >= high and (not inflight or offset > inflight[-1]):
                inflight.append(offset)
                lane._high = offset + 1
            else:
                lane.taken(offset)
            remaining = len(buffer)
            if remaining == lane.low_water:
                self.flow.on_lane_drained(lane.tp)
            if not remaining:
                ready.popleft()
                lane.queued = False
                lane.burst = 0
            else:
                lane.burst += 1
                if lane.burst >= _BURST and len(ready) > 1:
                    lane.burst = 0
                    ready.rotate(-1)
            return lane, item
        return None

    def take_from_nowait(self, tp: TP | None) -> tuple[Lane[T], T] | None:
        """The next item of one partition's lane (isolated partitions), if ready."""
        lane = self.lanes.get(tp)
        if lane is None or self.closed or self.holds or not lane.buffer:
            return None
        item = lane.buffer.popleft()
        lane.taken(self.offset_of(item))
        if len(lane.buffer) == lane.low_water:
            self.flow.on_lane_drained(lane.tp)
        return lane, item

    async def take(self) -> tuple[Lane[T], T]:
        """Wait for the next item. Cancelling loses nothing."""
        while True:
            got = self.take_nowait()
            if got is not None:
                if self._ready and self._lot:
                    self._lot.unpark()  # more is ready: let another actor help
                return got
            await self._lot.park()

    async def wait(self) -> None:
        """Park until something is fed or :meth:`wake_all` is called (may wake spuriously)."""
        await self._lot.park()

    def wake_all(self) -> None:
        self._lot.unpark_all()

    def unacked(self) -> int:
        return sum(lane.unacked() for lane in self.lanes.values())

    def buffered(self) -> int:
        return sum(len(lane.buffer) for lane in self.lanes.values())

    def statistics(self) -> list[LaneStatistics]:
        return [lane.statistics() for lane in self.lanes.values()]

    def frontiers(self, tps: Iterable[TP] | None = None) -> dict[TP, int]:
        """Committable offset per partition of this inbox."""
        result: dict[TP, int] = {}
        for tp, lane in self.lanes.items():
            if tp is None or (tps is not None and tp not in tps):
                continue
            frontier = lane.frontier()
            if frontier is not None:
                result[tp] = frontier
        return result
