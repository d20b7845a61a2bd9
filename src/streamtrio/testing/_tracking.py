"""What the test harness watches while the real code runs.

Nothing here replaces a code path; each piece only *observes* one:

- :class:`AckTracker` is told by the lanes (the real ack bookkeeping of
  :mod:`streamtrio._lanes`) whenever an event is acked or abandoned, and
  records the events the real sources hand to the actors. A test waits on it
  for "the lane's frontier has passed this offset" without polling, so it
  works the same under trio's ``MockClock``.
- :class:`RecordingTransport` wraps the memory transport; its producer notes
  every message sent *while an agent processes an event* (the agent's sinks,
  ``topic.send``, ``event.forward``, dead letters), in send order, and where
  it landed. The messages themselves are read back from the memory broker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from .._codecs import Schema
from .._exceptions import DecodeError, ProducerError
from .._lanes import Inbox, Lane
from .._stream import ChannelSource, Event, Source, TopicSource, current_event
from .._topic import Channel, Topic
from .._transports.base import (
    Consumer,
    DeliveryCallback,
    Producer,
    ProducerStatistics,
    Reader,
    RebalanceListener,
    Transport,
)
from .._types import TP, Headers, Message, RecordMetadata, TopicSpec

if TYPE_CHECKING:
    from .._app import App
    from .._transports.memory import MemoryBroker

__all__ = ["AckTracker", "RecordingTransport", "SentMessage", "SentRecorder", "schema_for"]

T = TypeVar("T")

#: Where one event came from: (topic or channel label, partition, offset).
EventKey = tuple[str, int, int]


def event_key(event: Event[Any]) -> EventKey:
    m = event.message
    return (m.topic, m.partition, m.offset)


# -- acks ------------------------------------------------------------------------------


class AckTracker:
    """The subscriptions of the agents under test, and a way to wait for their acks.

    ``subscriptions`` pairs each running agent's channel with its inbox (the
    real :class:`~streamtrio._lanes.Inbox` the worker made, now traced).
    """

    def __init__(self) -> None:
        self.subscriptions: list[tuple[Channel[Any], Inbox[Any]]] = []
        self.events: dict[EventKey, Event[Any]] = {}
        self._lot = trio.lowlevel.ParkingLot()

    def adopt(self, channel: Channel[Any], source: Source[T]) -> Source[T]:
        """Record the events ``source`` hands out and trace the acks of its inbox.

        Both through the core's observer hooks (``on_event`` on sources,
        ``observer`` on inboxes): the real objects, unchanged.
        """
        if isinstance(source, TopicSource | ChannelSource):
            source.on_event = self.record
            self.adopt_inbox(channel, source.inbox)
        return source

    def adopt_inbox(self, channel: Channel[Any], inbox: Inbox[Any]) -> None:
        """Trace an inbox's lanes: every ack and abandon wakes the waiting test."""
        inbox.observer = self._observe
        self.subscriptions.append((channel, inbox))

    def _observe(self, lane: Lane[Any], offset: int | None) -> None:
        self.changed()

    def record(self, event: Event[Any]) -> None:
        self.events[event_key(event)] = event

    def changed(self) -> None:
        """Wake everyone waiting (an ack, an abandoned event, a crash, the end)."""
        if self._lot:
            self._lot.unpark_all()

    async def wait(self) -> None:
        """Sleep until the next :meth:`changed`."""
        await self._lot.park()

    def subscribed(self, topic: str) -> bool:
        """Whether a running agent reads ``topic`` (a topic name or a channel label)."""
        return self._lanes_for(topic, 0) is not None

    def _lanes_for(self, topic: str, partition: int) -> list[Lane[Any] | None] | None:
        """The lanes of every subscriber of ``topic`` (``None``: nobody subscribes)."""
        found: list[Lane[Any] | None] = []
        matched = False
        for channel, inbox in self.subscriptions:
            if isinstance(channel, Topic):
                if channel.matches(topic):
                    matched = True
                    found.append(inbox.lanes.get(TP(topic, partition)))
            elif channel.label == topic:
                matched = True
                found.append(inbox.lanes.get(None))
        return found if matched else None

    def processed(self, key: EventKey) -> bool:
        """Whether every subscriber is done with the message at ``key``.

        Done means: the event handed out for it is acked, or the lane's
        frontier (every offset below it acked) has passed it; the latter also
        covers messages a decode-error policy skipped or dead-lettered.
        """
        event = self.events.get(key)
        if event is not None and event.done:
            return True
        topic, partition, offset = key
        lanes = self._lanes_for(topic, partition)
        if lanes is None:
            return True  # no running agent reads it: nothing to wait for
        for lane in lanes:
            if lane is None:
                return False
            frontier = lane.frontier()
            if frontier is None or frontier <= offset:
                return False
        return True

    def caught_up(self, broker: MemoryBroker, group_id: str) -> bool:
        """Whether every subscriber has acked everything on the broker (and every channel event).

        A partition whose lane saw nothing yet counts as caught up when the
        group's committed offset is at its end (processed by an earlier run).
        """
        topics = broker.topics()
        committed = broker.committed(group_id)
        for channel, inbox in self.subscriptions:
            if not isinstance(channel, Topic):
                lane = inbox.lanes.get(None)
                if lane is not None and (lane.buffer or lane.unacked() > 0):
                    return False
                continue
            for name, count in topics.items():
                if not channel.matches(name):
                    continue
                for partition in range(count):
                    tp = TP(name, partition)
                    end = broker.end_offset(tp)
                    if end == 0:
                        continue
                    lane = inbox.lanes.get(tp)
                    frontier = None if lane is None else lane.frontier()
                    if frontier is None:
                        frontier = committed.get(tp)
                    if frontier is None or frontier < end:
                        return False
        return True


# -- what the agents sent ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A message produced by an agent (or read from a topic), decoded.

    Attributes:
        topic: the topic (or, for an in-process channel sink, the channel's label).
        partition: the partition it landed in.
        offset: its offset.
        key: the decoded key (raw bytes if the topic's codec cannot decode it).
        value: the decoded value (raw bytes if the topic's codec cannot decode it).
        headers: the headers, as (name, bytes) pairs.
        timestamp: the record timestamp, seconds since the epoch.
        message: the raw message as stored on the memory broker (``None`` for a channel).
    """

    topic: str
    partition: int
    offset: int
    key: Any
    value: Any
    headers: Headers
    timestamp: float
    message: Message | None = None


def schema_for(app: App, topic: str | Topic[Any]) -> Schema:
    """The schema to decode ``topic`` with: its description in the app, else the app defaults."""
    if isinstance(topic, Topic):
        return topic.schema
    for described in app._topics:
        if described.pattern is None and topic in described.topics:
            return described.schema
    for described in app._topics:
        if described.matches(topic):
            return described.schema
    conf = app.conf
    return Schema(key_serializer=conf.key_serializer, value_serializer=conf.value_serializer)


def decode(schema: Schema, message: Message) -> SentMessage:
    """A stored message, decoded with ``schema`` (raw bytes where it does not decode)."""
    topic, partition, offset = message.topic, message.partition, message.offset
    key: Any
    value: Any
    try:
        key = schema.loads_key(message.key, topic=topic, partition=partition, offset=offset)
    except DecodeError:
        key = message.key
    try:
        value = schema.loads_value(message.value, topic=topic, partition=partition, offset=offset)
    except DecodeError:
        value = message.value
    return SentMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=key,
        value=value,
        headers=list(message.headers or []),
        timestamp=message.timestamp,
        message=message,
    )


@dataclass(slots=True)
class _Sent:
    topic: str
    source: EventKey | None
    where: RecordMetadata | None = None
    failed: bool = False
    channel: Event[Any] | None = None


class SentRecorder:
    """Every message produced while an agent processed an event, in send order.

    Attributes:
        excluded: topics left out of :meth:`read` (plumbing such as a
            group_by's repartition topic, and table changelogs); they are
            still recorded, so an event's effects can be followed through them.
    """

    def __init__(self) -> None:
        self.entries: list[_Sent] = []
        self.by_source: dict[EventKey, list[_Sent]] = {}
        self.excluded: Callable[[str], bool] = lambda topic: False
        self.tracker: AckTracker | None = None

    def _add(self, entry: _Sent) -> None:
        self.entries.append(entry)
        if entry.source is not None:
            self.by_source.setdefault(entry.source, []).append(entry)

    def note(self, topic: str) -> _Sent | None:
        event = current_event()
        if event is None:
            return None
        entry = _Sent(topic, event_key(event))
        self._add(entry)
        return entry

    def note_channel(self, channel: Channel[Any], event: Event[Any]) -> None:
        source = current_event()
        self._add(_Sent(channel.label, None if source is None else event_key(source), channel=event))

    def pending(self) -> int:
        return sum(1 for e in self.entries if e.where is None and not e.failed and e.channel is None)

    def delivered(self, entry: _Sent, metadata: RecordMetadata | None, error: ProducerError | None) -> None:
        if error is not None or metadata is None:
            entry.failed = True
        else:
            entry.where = metadata
        if self.tracker is not None:
            self.tracker.changed()

    def read(
        self, app: App, broker: MemoryBroker, sources: Collection[EventKey] | None = None
    ) -> list[SentMessage]:
        """The delivered messages (optionally only those sent while processing ``sources``)."""
        logs: dict[TP, list[Message]] = {}
        schemas: dict[str, Schema] = {}
        result: list[SentMessage] = []
        excluded = self.excluded
        for entry in self.entries:
            if sources is not None and entry.source not in sources:
                continue
            if excluded(entry.topic):
                continue
            if entry.channel is not None:
                ev = entry.channel
                m = ev.message
                result.append(
                    SentMessage(
                        topic=entry.topic,
                        partition=m.partition,
                        offset=m.offset,
                        key=ev.key,
                        value=ev.value,
                        headers=list(ev.headers or []),
                        timestamp=m.timestamp,
                    )
                )
                continue
            where = entry.where
            if where is None:
                continue
            tp = where.tp
            log = logs.get(tp)
            if log is None:
                log = logs[tp] = broker.messages(tp.topic, tp.partition)
            schema = schemas.get(tp.topic)
            if schema is None:
                schema = schemas[tp.topic] = schema_for(app, tp.topic)
            result.append(decode(schema, log[where.offset]))
        return result


class CaptureInbox(Inbox[Event[Any]]):
    """Subscribes to a channel sink in place of the agent that would read it.

    :meth:`Channel.put` feeds it in the sending task, so each event is noted
    at once, with the event being processed, and nothing is buffered.
    """

    def __init__(self, channel: Channel[Any], recorder: SentRecorder) -> None:
        super().__init__(lambda event: event.message.offset, high_water=channel.maxsize)
        self.channel = channel
        self.recorder = recorder
        self.add_lane(None)

    def feed(self, tp: TP | None, items: list[Event[Any]], first_offset: int, last_offset: int) -> None:
        for event in items:
            self.recorder.note_channel(self.channel, event)
            event.ack()  # captured is delivered: the sending event need not wait for it


class _RecordingProducer(Producer):
    """The real producer, noting what agents send through it."""

    def __init__(self, inner: Producer, recorder: SentRecorder) -> None:
        self._inner = inner
        self._recorder = recorder

    def send_nowait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        timestamp: float | None = None,
        headers: Headers | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        entry = self._recorder.note(topic)
        callback = on_delivery
        if entry is not None:
            recorder = self._recorder

            def callback(metadata: RecordMetadata | None, error: ProducerError | None) -> None:
                recorder.delivered(entry, metadata, error)
                if on_delivery is not None:
                    on_delivery(metadata, error)
                elif error is not None:
                    # Without a callback the producer keeps the error for flush();
                    # re-raising here keeps it that way.
                    raise error

        self._inner.send_nowait(
            topic,
            key,
            value,
            partition=partition,
            timestamp=timestamp,
            headers=headers,
            on_delivery=callback,
        )

    async def flush(self) -> None:
        await self._inner.flush()

    def partition_count(self, topic: str) -> int | None:
        return self._inner.partition_count(topic)

    def statistics(self) -> ProducerStatistics:
        return self._inner.statistics()

    # exactly_once apps: the transactions are the real producer's
    @property
    def transactional_id(self) -> str | None:
        return self._inner.transactional_id

    async def begin_transaction(self) -> None:
        await self._inner.begin_transaction()

    async def send_offsets_to_transaction(self, offsets: Mapping[TP, int], group_metadata: object) -> None:
        await self._inner.send_offsets_to_transaction(offsets, group_metadata)

    async def commit_transaction(self) -> None:
        await self._inner.commit_transaction()

    async def abort_transaction(self) -> None:
        await self._inner.abort_transaction()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RecordingTransport(Transport):
    """The app's real (memory) transport; its producers record what agents send."""

    def __init__(self, inner: Transport, recorder: SentRecorder) -> None:
        super().__init__(inner.url, inner.settings)
        self.inner = inner
        self.recorder = recorder

    @asynccontextmanager
    async def open_producer(self, *, transactional_id: str | None = None) -> AsyncIterator[Producer]:
        async with self.inner.open_producer(transactional_id=transactional_id) as producer:
            yield _RecordingProducer(producer, self.recorder)

    def open_consumer(
        self, *, group_id: str, topics: Sequence[str], listener: RebalanceListener
    ) -> AbstractAsyncContextManager[Consumer]:
        return self.inner.open_consumer(group_id=group_id, topics=topics, listener=listener)

    def open_reader(self, *, prompt_end: bool = False) -> AbstractAsyncContextManager[Reader]:
        return self.inner.open_reader(prompt_end=prompt_end)

    async def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        return await self.inner.create_topics(specs)

    async def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        return await self.inner.partition_counts(topics)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

