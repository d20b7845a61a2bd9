"""Channels (in-process) and topics (named channels on the broker)."""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from ._codecs import Codec, Schema, default_serializer
from ._exceptions import ClosedError, ProducerError
from ._lanes import Inbox
from ._partitioner import PARTITIONERS, partitioner_named
from ._settings import parse_duration
from ._stream import Event, Stream, output_started
from ._types import Headers, Message, RecordMetadata, TopicSpec

if TYPE_CHECKING:
    from ._app import App
    from ._transports.base import Producer

__all__ = ["Channel", "FutureMessage", "Topic"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_channel_ids = itertools.count(1)


class DeliveredMetadata(RecordMetadata):
    """The :class:`RecordMetadata` ``send`` returns; awaiting it gives itself.

    Faust's ``send`` returns a ``FutureMessage`` that Faust apps await a
    second time (``await (await topic.send(...))``); here the first await
    already waited for delivery.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        return self
        yield  # a generator: the await completes at once


def _delivered(md: RecordMetadata) -> RecordMetadata:
    return DeliveredMetadata(*md)


def _reply_headers(
    headers: Headers | Mapping[str, bytes] | None, reply_to: Any, correlation_id: str | bytes | None
) -> Headers | Mapping[str, bytes] | None:
    """Add the RPC headers an agent answers to (Faust's ``send(reply_to=...)``)."""
    if reply_to is None:
        return headers
    import uuid

    from ._rpc import CORRELATION_ID, REPLY_TO

    if isinstance(reply_to, str):
        name = reply_to
    else:
        channel = getattr(reply_to, "channel", reply_to)  # an Agent: its topic
        name = channel.get_topic_name()
    if correlation_id is None:
        correlation_id = uuid.uuid4().hex
    correlation = correlation_id.encode() if isinstance(correlation_id, str) else correlation_id
    merged = _headers(headers) or []
    return [*merged, (REPLY_TO, name.encode()), (CORRELATION_ID, correlation)]


class FutureMessage:
    """A message handed to the producer; becomes done when delivered or failed.

    ``await fut`` (or ``await fut.wait()``) returns its :class:`RecordMetadata`
    or raises :class:`ProducerError`.
    """

    __slots__ = ("_callback", "_done", "_error", "_metadata", "_owner", "topic")

    def __init__(self, topic: str, callback: Callable[[FutureMessage], Any] | None = None) -> None:
        self.topic = topic
        self._metadata: RecordMetadata | None = None
        self._error: ProducerError | None = None
        self._done: trio.Event | None = None
        self._callback = callback
        #: the event this message was produced for (told when it is delivered or failed)
        self._owner: Callable[[BaseException | None], None] | None = None

    def _set(self, metadata: RecordMetadata | None, error: ProducerError | None) -> None:
        self._metadata = metadata
        self._error = error
        if self._done is None:
            self._done = trio.Event()
        self._done.set()
        failure: BaseException | None = error
        if self._callback is not None:
            # A user callback runs outside any task: it must never take the run down.
            try:
                self._callback(self)
            except Exception as exc:
                log.error("the delivery callback of a message to %r raised", self.topic, exc_info=exc)
                failure = failure or exc
        owner = self._owner
        if owner is not None:
            self._owner = None
            owner(failure)
        elif error is not None:
            log.warning("a message to %r produced outside any event failed: %s", self.topic, error)

    def done(self) -> bool:
        return self._done is not None and self._done.is_set()

    def result(self) -> RecordMetadata:
        """The delivery metadata. Raises the delivery error, or RuntimeError if not done."""
        if self._error is not None:
            raise self._error
        if self._metadata is None:
            raise RuntimeError(f"message to {self.topic!r} is not delivered yet")
        return self._metadata

    async def wait(self) -> RecordMetadata:
        if self._done is None:
            self._done = trio.Event()
        await self._done.wait()
        return self.result()

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        return self.wait().__await__()


class Channel(Generic[T]):
    """An in-process channel: agents iterate it, code sends to it.

    Every subscribed agent gets every event. ``send`` waits while a
    subscriber's buffer holds ``maxsize`` events.
    """

    def __init__(
        self,
        app: App,
        *,
        key_type: type | None = None,
        value_type: type | None = None,
        maxsize: int | None = None,
    ) -> None:
        self.app = app
        self.key_type = key_type
        self.value_type = value_type
        self.maxsize = maxsize or app.conf.stream_buffer_maxsize
        self.label = f"channel-{next(_channel_ids)}"
        self._subscribers: list[Inbox[Event[Any]]] = []
        self._space = trio.lowlevel.ParkingLot()
        self._seq = itertools.count()

    # flow control of the subscriber inboxes (see _lanes.FlowControl)
    def on_lane_full(self, tp: Any) -> None:
        pass

    def on_lane_drained(self, tp: Any) -> None:
        self._space.unpark_all()

    def _subscribe(self) -> Inbox[Event[Any]]:
        inbox: Inbox[Event[Any]] = Inbox(_event_offset, high_water=self.maxsize, flow=self)
        inbox.add_lane(None)
        self._subscribers.append(inbox)
        return inbox

    def _unsubscribe(self, inbox: Inbox[Event[Any]]) -> None:
        if inbox in self._subscribers:
            self._subscribers.remove(inbox)
        self._space.unpark_all()

    async def put(self, event: Event[Any]) -> None:
        """Put an event on every subscriber's buffer, waiting for room."""
        if not self._subscribers:
            raise ClosedError(
                f"{self.label} has no running subscriber: start the worker (or the test app) first"
            )
        for inbox in list(self._subscribers):
            lane = inbox.lanes.get(None)
            while lane is not None and len(lane.buffer) >= self.maxsize and not inbox.closed:
                await self._space.park()
                lane = inbox.lanes.get(None)
            if lane is None or inbox.closed:
                continue
            # Each subscriber acks its own copy; the event being processed (if
            # any) is done only once every copy is.
            copy = Event(event.app, event.key, event.value, event.headers, event.message)
            copy._parent = output_started()
            offset = copy.message.offset
            inbox.feed(None, [copy], offset, offset)

    async def send(
        self,
        *,
        key: Any = None,
        value: Any = None,
        partition: int | None = None,
        timestamp: float | None = None,
        headers: Headers | None = None,
        key_serializer: str | Codec | None = None,
        value_serializer: str | Codec | None = None,
        callback: Callable[[FutureMessage], Any] | None = None,
        force: bool = False,
    ) -> RecordMetadata:
        """Deliver a value to the channel's subscribers."""
        ts = timestamp if timestamp is not None else time.time()
        msg = Message(self.label, 0, next(self._seq), None, None, ts, headers)
        await self.put(Event(self.app, key, value, headers, msg))
        md = RecordMetadata(self.label, 0, msg.offset, ts)
        if callback is not None:
            fut = FutureMessage(self.label)
            fut._set(md, None)
            callback(fut)
        return _delivered(md)

    async def send_and_wait(self, **kwargs: Any) -> RecordMetadata:
        return await self.send(**kwargs)

    def stream(self, **kwargs: Any) -> Stream[T]:
        """A stream over this channel or topic: ``app.stream(self, **kwargs)``.

        Iterate it in a task (``@app.task``); see :meth:`App.stream`.
        """
        return self.app.stream(self, **kwargs)

    def derive(self, **kwargs: Any) -> Channel[T]:
        return Channel(
            self.app,
            key_type=kwargs.get("key_type", self.key_type),
            value_type=kwargs.get("value_type", self.value_type),
            maxsize=kwargs.get("maxsize", self.maxsize),
        )

    def __repr__(self) -> str:
        return f"<Channel {self.label}>"


def _event_offset(event: Event[Any]) -> int:
    return event.message.offset


class Topic(Channel[T]):
    """A named channel on the broker (Kafka, or the memory transport).

    Args mirror :meth:`App.topic`.
    """

    def __init__(
        self,
        app: App,
        *,
        topics: Sequence[str] | None = None,
        pattern: str | re.Pattern[str] | None = None,
        key_type: type | None = None,
        value_type: type | None = None,
        key_serializer: str | Codec | None = None,
        value_serializer: str | Codec | None = None,
        partitions: int | None = None,
        retention: float | timedelta | str | None = None,
        compacting: bool | None = None,
        deleting: bool | None = None,
        replicas: int | None = None,
        internal: bool = False,
        config: Mapping[str, Any] | None = None,
        maxsize: int | None = None,
        acks: bool = True,
        schema: Schema | None = None,
        partitioner: str | None = None,
    ) -> None:
        if partitioner is not None:
            partitioner_named(partitioner)  # a ValueError names the choices
        if schema is not None:
            # Faust's app.topic(schema=Schema(...)): explicit arguments still win
            key_type = key_type if key_type is not None else schema.key_type
            value_type = value_type if value_type is not None else schema.value_type
            key_serializer = key_serializer if key_serializer is not None else schema.key_serializer
            value_serializer = value_serializer if value_serializer is not None else schema.value_serializer
        super().__init__(app, key_type=key_type, value_type=value_type, maxsize=maxsize)
        if topics and pattern is not None:
            raise TypeError("a topic takes names or a pattern, not both")
        if not topics and pattern is None:
            raise TypeError("a topic needs at least one name, or a pattern")
        if partitions is not None and partitions < 1:
            raise ValueError(f"topic {topics!r}: partitions must be at least 1, got {partitions}")
        self.topics: tuple[str, ...] = tuple(topics or ())
        self._pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        self.key_serializer = (
            key_serializer
            if key_serializer is not None
            else default_serializer(key_type, app.conf.key_serializer)
        )
        self.value_serializer = (
            value_serializer
            if value_serializer is not None
            else default_serializer(value_type, app.conf.value_serializer)
        )
        self.schema = Schema(
            key_type=key_type,
            value_type=value_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
        )
        self._partitions = partitions
        self.retention = parse_duration(retention, name="topic retention") if retention is not None else None
        self.compacting = compacting
        self.deleting = deleting
        self.replicas = replicas
        self.internal = internal
        self.config = dict(config or {})
        self.acks = acks
        self._partitioner = partitioner
        #: partition counts asked of the broker by ``send`` (for a topic's own partitioner)
        self._counts: dict[str, int] = {}
        self.label = self.topics[0] if len(self.topics) == 1 else (",".join(self.topics) or str(pattern))

    # -- description --------------------------------------------------------

    @property
    def pattern(self) -> re.Pattern[str] | None:
        """The regular expression of a pattern subscription, if any."""
        return self._pattern

    @property
    def partitions(self) -> int | None:
        """The partition count the app creates this topic with (``None``: the app default)."""
        return self._partitions

    @property
    def partitioner(self) -> str:
        """How keys map to this topic's partitions: this topic's ``partitioner``, else the app's."""
        return self._partitioner or self.app.conf.partitioner

    def key_partition(self, raw_key: bytes | None, num_partitions: int) -> int:
        """The partition of ``num_partitions`` an encoded key goes to under :attr:`partitioner`."""
        return partitioner_named(self.partitioner)(raw_key, num_partitions)

    def get_topic_name(self) -> str:
        """The single topic name of this description.

        Raises:
            TypeError: the topic is a pattern subscription.
            ValueError: it names several topics.
        """
        if self._pattern is not None:
            raise TypeError(f"topic {self.label!r} is a pattern; it has no single name")
        if len(self.topics) != 1:
            raise ValueError(f"topic description names several topics: {self.topics!r}")
        return self.topics[0]

    def matches(self, name: str) -> bool:
        if self._pattern is not None:
            return self._pattern.fullmatch(name) is not None
        return name in self.topics

    def spec(self, name: str) -> TopicSpec:
        """How to create ``name`` if it does not exist."""
        conf = self.app.conf
        config: dict[str, str] = {}
        policies = [p for p, on in (("compact", self.compacting), ("delete", self.deleting)) if on]
        if policies:
            config["cleanup.policy"] = ",".join(policies)
        if self.retention is not None:
            config["retention.ms"] = str(int(self.retention * 1000))
        config.update({k: str(v) for k, v in self.config.items()})
        return TopicSpec(
            name=name,
            partitions=self._partitions or conf.topic_partitions,
            replication_factor=self.replicas if self.replicas is not None else conf.topic_replication_factor,
            config=config,
        )

    def derive(self, **kwargs: Any) -> Topic[T]:
        return self.derive_topic(**kwargs)

    def derive_topic(
        self,
        *,
        topics: Sequence[str] | None = None,
        prefix: str = "",
        suffix: str = "",
        **kwargs: Any,
    ) -> Topic[T]:
        """A new topic description from this one, with any argument overridden."""
        names = [f"{prefix}{name}{suffix}" for name in (topics or self.topics)]
        params: dict[str, Any] = {
            "key_type": self.key_type,
            "value_type": self.value_type,
            "key_serializer": self.key_serializer,
            "value_serializer": self.value_serializer,
            "partitions": self._partitions,
            "retention": self.retention,
            "compacting": self.compacting,
            "deleting": self.deleting,
            "replicas": self.replicas,
            "internal": self.internal,
            "config": self.config,
            "maxsize": self.maxsize,
            "partitioner": self._partitioner,
        }
        params.update(kwargs)
        return self.app.topic(*names, **params)

    async def declare(self) -> None:
        """Create this topic on the broker if it does not exist (never alters it)."""
        await self.app.transport.create_topics([self.spec(name) for name in self.topics])

    async def maybe_declare(self) -> None:
        await self.declare()

    # -- sending ------------------------------------------------------------

    def _schema_for(self, key_serializer: str | Codec | None, value_serializer: str | Codec | None) -> Schema:
        if key_serializer is None and value_serializer is None:
            return self.schema
        return Schema(
            key_type=self.key_type,
            value_type=self.value_type,
            key_serializer=key_serializer if key_serializer is not None else self.key_serializer,
            value_serializer=value_serializer if value_serializer is not None else self.value_serializer,
        )

    def send_soon(
        self,
        *,
        key: Any = None,
        value: Any = None,
        partition: int | None = None,
        timestamp: float | None = None,
        headers: Headers | Mapping[str, bytes] | None = None,
        key_serializer: str | Codec | None = None,
        value_serializer: str | Codec | None = None,
        callback: Callable[[FutureMessage], Any] | None = None,
        force: bool = False,
        reply_to: Any = None,
        correlation_id: str | bytes | None = None,
    ) -> FutureMessage:
        """Queue a message on the producer and return at once.

        ``reply_to`` (a topic name, topic or agent) makes an agent that
        processes the message send its return value there, with the
        ``correlation_id`` (default: a new one) in the reply's headers.

        Sent while an agent processes an event, the message is an output of
        that event: the event's offset is committed only once it is
        delivered, and a failed delivery fails the event (the agent's
        ``on_error`` policy applies). A ``callback`` that raises is logged
        and fails the event too.

        Raises:
            EncodeError: the key or value cannot be serialized (nothing is queued).
            ClosedError: no producer is running (see :meth:`App.open_client`).
        """
        headers = _reply_headers(headers, reply_to, correlation_id)
        return self._send_soon(
            key, value, partition, timestamp, headers, key_serializer, value_serializer, callback, True
        )

    def _send_soon(
        self,
        key: Any,
        value: Any,
        partition: int | None,
        timestamp: float | None,
        headers: Headers | Mapping[str, bytes] | None,
        key_serializer: str | Codec | None,
        value_serializer: str | Codec | None,
        callback: Callable[[FutureMessage], Any] | None,
        is_output: bool,
    ) -> FutureMessage:
        schema = self._schema_for(key_serializer, value_serializer)
        raw_key = schema.dumps_key(key)
        raw_value = schema.dumps_value(value)
        producer = self.app._require_producer()
        name = self.get_topic_name()
        if partition is None and raw_key is not None and self._places_keys():
            # The producer places keys by the app's partitioner; this topic
            # has its own, so the partition is chosen here.
            partition = self.key_partition(raw_key, self._partition_count(name, producer))
        fut = FutureMessage(name, callback)
        producer.send_nowait(
            name,
            raw_key,
            raw_value,
            partition=partition,
            timestamp=timestamp,
            headers=_headers(headers),
            on_delivery=fut._set,
        )
        fut._owner = output_started() if is_output else _raised_to_caller
        return fut

    def _places_keys(self) -> bool:
        """Whether this topic's partitioner differs from the app's (the producer's)."""
        own = self._partitioner
        return own is not None and PARTITIONERS[own] is not PARTITIONERS[self.app.conf.partitioner]

    def _known_count(self, name: str, producer: Producer) -> int | None:
        count = self._counts.get(name)
        if count is None:
            counts: Mapping[str, int] = getattr(self.app._worker, "_partition_counts", None) or {}
            count = counts.get(name)
        return count if count is not None else producer.partition_count(name)

    def _partition_count(self, name: str, producer: Producer) -> int:
        """The partition count of ``name``: known to the worker or the producer, else the declared one.

        ``send`` asks the broker first when neither knows it; ``send_soon``
        cannot wait, so its first messages to a topic nobody asked about yet
        are placed by the count this topic is declared with.
        """
        count = self._known_count(name, producer)
        return count if count is not None else self.spec(name).partitions

    async def send(
        self,
        *,
        key: Any = None,
        value: Any = None,
        partition: int | None = None,
        timestamp: float | None = None,
        headers: Headers | Mapping[str, bytes] | None = None,
        key_serializer: str | Codec | None = None,
        value_serializer: str | Codec | None = None,
        callback: Callable[[FutureMessage], Any] | None = None,
        force: bool = False,
        reply_to: Any = None,
        correlation_id: str | bytes | None = None,
    ) -> RecordMetadata:
        """Send a message and wait until the broker has it.

        The metadata returned may be awaited again (Faust's
        ``await (await topic.send(...))``). ``reply_to``: see :meth:`send_soon`.

        Returns:
            Where it landed: topic, partition, offset, timestamp.

        Raises:
            EncodeError: the key or value cannot be serialized.
            ProducerError: the broker did not take the message.
        """
        # Awaited: a failure raises here, in the caller, so it is not an
        # output the event waits for.
        producer = self.app._require_producer()
        await producer.bound.wait_for_room()
        if partition is None and self._places_keys():
            name = self.get_topic_name()
            if self._known_count(name, producer) is None:
                counts = await self.app.transport.partition_counts([name])
                if name in counts:
                    self._counts[name] = counts[name]
        headers = _reply_headers(headers, reply_to, correlation_id)
        fut = self._send_soon(
            key, value, partition, timestamp, headers, key_serializer, value_serializer, callback, False
        )
        return _delivered(await fut.wait())

    async def send_and_wait(self, **kwargs: Any) -> RecordMetadata:
        return await self.send(**kwargs)

    async def put(self, event: Event[Any]) -> None:
        """Put an event directly on this process's subscribers (bypassing the broker)."""
        await super().put(event)

    def __repr__(self) -> str:
        return f"<Topic {self.label}>"


def _raised_to_caller(error: BaseException | None) -> None:
    """The owner of an awaited send: its failure is raised where it is awaited."""


def _headers(headers: Headers | Mapping[str, bytes] | None) -> Headers | None:
    if headers is None:
        return None
    if isinstance(headers, Mapping):
        return [(k, v) for k, v in headers.items()]
    return list(headers)
