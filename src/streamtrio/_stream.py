"""Events and streams.

An agent iterates a :class:`Stream`. Each actor has its own root stream over
the agent's shared source. The root stream *holds* the events it handed out
and acks them when the actor asks for the next one (or the stream ends), so
an event is acked only once the agent is done with it. Operators
(``filter``, ``take``, ``enumerate``...) are thin wrappers that pull from the
root, which keeps ack bookkeeping in one place.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

import trio

from ._exceptions import DecodeError
from ._lanes import Inbox, Lane
from ._types import TP, Headers, Message, RecordMetadata

if TYPE_CHECKING:
    from ._agent import Agent
    from ._app import App
    from ._codecs import Schema
    from ._tables.joins import JoinKey
    from ._tables.table import Table
    from ._topic import Channel

__all__ = ["Event", "Processor", "Stream", "current_event"]

log = logging.getLogger(__name__)

T = TypeVar("T")
U = TypeVar("U")

#: A root stream yields to the scheduler at least this often, even when its
#: lanes never run dry, so timers, the commit loop and the fetcher keep running.
_CHECKPOINT_EVERY = 128

_current_event: contextvars.ContextVar[Event[Any] | None] = contextvars.ContextVar(
    "streamtrio_current_event", default=None
)


def current_event() -> Event[Any] | None:
    """The event the calling actor is processing, if any."""
    return _current_event.get()


#: A function applied to each value of a stream, sync or async (Faust's processors).
Processor = Callable[[T], "T | Awaitable[T]"]

#: Called with the event whose delivery failed and the error (the agent's policy).
FailureHandler = Callable[["Event[Any]", BaseException], None]


class Event(Generic[T]):
    """One message as an agent sees it: decoded key and value plus the raw message.

    An event is *done* when its agent is done with it (:meth:`ack`) and every
    output produced on its behalf is delivered: messages queued with
    ``send_soon`` (sinks, ``echo``, ``group_by`` copies, RPC replies, dead
    letters) and values handed to channel agents, whose own processing is part
    of it. Only then is its offset acked in its lane, so the commit frontier
    never passes it. A failed output fails the event: the agent's ``on_error``
    policy applies, as to an exception raised in the agent.

    Attributes:
        app: the app.
        key: the decoded key.
        value: the decoded value.
        headers: the message headers.
        message: the raw message (topic, partition, offset, timestamp, bytes).
    """

    __slots__ = (
        "_acked",
        "_done",
        "_failed",
        "_lane",
        "_outputs",
        "_parent",
        "_retired",
        "_stream",
        "app",
        "headers",
        "key",
        "message",
        "value",
    )

    def __init__(
        self,
        app: App,
        key: Any,
        value: T,
        headers: Headers | None,
        message: Message,
        lane: Lane[Any] | None = None,
    ) -> None:
        self.app = app
        self.key = key
        self.value = value
        self.headers = headers
        self.message = message
        self._lane = lane
        self._acked = False
        self._done = False
        self._failed = False
        self._retired = False
        self._outputs = 0
        self._stream: Stream[Any] | None = None
        #: told when this event is done (a channel copy: its source event's output)
        self._parent: Callable[[BaseException | None], None] | None = None

    @property
    def acked(self) -> bool:
        """The agent is done with this event (its outputs may still be in flight)."""
        return self._acked

    @property
    def done(self) -> bool:
        """Acked and every output delivered: its offset may be committed."""
        return self._done

    def ack(self) -> bool:
        """Mark this event done. Returns ``False`` if it was acked already.

        Its offset becomes committable once every output produced on its
        behalf is delivered too.
        """
        if self._acked:
            return False
        self._acked = True
        if not self._outputs:
            self._complete()
        return True

    async def __aenter__(self) -> Event[T]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        """``async with event:`` acks the event when the block ends without an error.

        Acking is the agent's part only: the event is done (and committable)
        once every output it produced is delivered too. A block that raises
        leaves the event unacked, so the agent's ``on_error`` policy applies
        to it (Faust acks it anyway, which would commit past a failure).
        """
        if exc_type is None:
            self.ack()

    def _complete(self) -> None:
        if self._retired or self._failed:
            return
        self._done = True
        lane = self._lane
        if lane is not None:
            lane.ack(self.message.offset)
        parent = self._parent
        if parent is not None:
            self._parent = None
            parent(None)

    def _output_started(self) -> Callable[[BaseException | None], None]:
        """Count one more output of this event; call the result when it is delivered or failed."""
        self._outputs += 1
        return self._output_done

    def _output_done(self, error: BaseException | None) -> None:
        if self._retired:
            return  # a failed attempt, requeued: its leftovers do not count
        self._outputs -= 1
        if error is not None and not self._failed:
            handler = self._lane.inbox.on_failure if self._lane is not None else None
            if handler is None:
                self._failed = True
                log.error("an output of %s failed: %s", self._describe(), error)
            else:
                handler(self, error)
        if not self._outputs and self._acked:
            self._complete()

    def _describe(self) -> str:
        m = self.message
        return f"topic={m.topic!r} partition={m.partition} offset={m.offset}"

    def _fresh(self) -> Event[T]:
        """A copy to hand out again (a retry): this one is retired for good."""
        self._retired = True
        copy: Event[T] = Event(self.app, self.key, self.value, self.headers, self.message, self._lane)
        copy._parent = self._parent
        self._parent = None
        return copy

    async def send(
        self,
        channel: str | Channel[Any],
        key: Any = None,
        value: Any = None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> RecordMetadata:
        """Send a new message to ``channel`` and wait for its delivery."""
        return await self.app.send(channel, key=key, value=value, partition=partition, headers=headers)

    async def forward(self, channel: str | Channel[Any], *, headers: Headers | None = None) -> RecordMetadata:
        """Send this event's message on to ``channel`` unchanged and wait for its delivery.

        A topic gets the original key and value bytes, headers and timestamp
        (nothing is decoded and encoded again); an in-process channel gets
        the decoded key and value.
        """
        from ._topic import Topic

        target = self.app._topic_named(channel) if isinstance(channel, str) else channel
        m = self.message
        headers = headers if headers is not None else m.headers
        if not isinstance(target, Topic):
            return await target.send(key=self.key, value=self.value, headers=headers)
        return await self.app._require_producer().send(
            target.get_topic_name(), m.key, m.value, timestamp=m.timestamp, headers=headers
        )

    def __repr__(self) -> str:
        m = self.message
        return f"<Event {m.topic}[{m.partition}]@{m.offset} key={self.key!r} value={self.value!r}>"


def output_started(event: Event[Any] | None = None) -> Callable[[BaseException | None], None] | None:
    """Account for one output produced on behalf of ``event`` (default: the events the
    calling actor holds). Returns what to call with the delivery outcome, or ``None``
    when the caller is not processing an event (a timer, a web view, a task)."""
    if event is not None:
        return event._output_started() if not event._done else None
    current = _current_event.get()
    if current is None or current._done or current._retired:
        return None
    stream = current._stream
    if stream is None:
        return current._output_started()
    held = [e for e in stream._held if not e._done and not e._retired]
    if not held:
        return None
    if len(held) == 1:
        return held[0]._output_started()
    dones = [e._output_started() for e in held]

    def done(error: BaseException | None) -> None:
        for each in dones:
            each(error)

    return done


class Source(Protocol[T]):
    """Where a root stream takes events from."""

    def take_nowait(self) -> Event[T] | None:
        """The next event if one is ready (raises StopAsyncIteration at the end)."""
        ...

    async def take(self) -> Event[T]:
        """Wait for the next event (raises StopAsyncIteration at the end)."""
        ...

    def release(self, event: Event[T], error: BaseException, *, retry: bool) -> None:
        """The actor holding ``event`` died: requeue it (retry) or leave it unacked."""
        ...


class TopicSource(Generic[T]):
    """Events decoded from the raw messages of a topic inbox.

    A message that cannot be decoded is handled by the app's
    ``value_decode_error`` policy: ``raise`` (the agent gets the DecodeError;
    nothing after it is committed), ``skip`` (logged, counted, acked) or
    ``dead_letter`` (the raw message and the error go to the dead-letter
    topic, then it is acked).
    """

    def __init__(
        self, app: App, inbox: Inbox[Message], schema: Schema, *, agent: str, tp: TP | None = None
    ) -> None:
        self.app = app
        self.inbox = inbox
        self.tp = tp  # only this partition (isolated_partitions)
        self.schema = schema
        self.agent = agent
        self.policy: str = app.conf.value_decode_error
        self.skipped = 0
        self.dead_lettered = 0
        #: told of every event made (the test harness records them)
        self.on_event: Callable[[Event[T]], None] | None = None

    def _event(self, lane: Lane[Message], msg: Message) -> Event[T] | None:
        """The event of ``msg``, decoded with the error bookkeeping: a DecodeError names
        the topic, partition and offset, and the decode policy applies. The common
        case (no ``on_event`` hook, a message that decodes) is :meth:`take_nowait`'s."""
        schema = self.schema
        try:
            key = schema.loads_key(msg.key, topic=msg.topic, partition=msg.partition, offset=msg.offset)
            value = schema.loads_value(msg.value, topic=msg.topic, partition=msg.partition, offset=msg.offset)
        except DecodeError as exc:
            bad: Event[T] = Event(self.app, None, None, msg.headers, msg, lane)  # type: ignore[arg-type]
            if self.on_event is not None:
                self.on_event(bad)
            return self._bad_message(bad, exc)
        event: Event[T] = Event(self.app, key, value, msg.headers, msg, lane)
        if self.on_event is not None:
            self.on_event(event)
        return event

    def _bad_message(self, event: Event[T], exc: DecodeError) -> Event[T] | None:
        self.app.monitor.decode_error(event.message.topic, self.policy)
        if self.policy == "raise":
            _current_event.set(event)
            raise _HeldDecodeError(event, exc.with_policy_hint())
        if self.policy == "skip":
            self.skipped += 1
            log.warning("agent %s skipped a message: %s (skipped so far: %d)", self.agent, exc, self.skipped)
        else:
            self.dead_lettered += 1
            self.app._dead_letter(event.message, exc, reason="decode", event=event)
        event.ack()
        return None

    def take_nowait(self) -> Event[T] | None:
        inbox = self.inbox
        while True:
            got = inbox.take_nowait() if self.tp is None else inbox.take_from_nowait(self.tp)
            if got is None:
                return None
            lane, msg = got
            if self.on_event is None:
                # The hot path: the schema's loaders without the error bookkeeping
                # (keyword arguments cost more than the decode of a small value). A
                # failure is decoded again by _event, which raises the DecodeError.
                schema = self.schema
                try:
                    raw = msg.key
                    key = None if raw is None else schema._fast_load_key(raw)
                    raw = msg.value
                    value: Any = None if raw is None else schema._fast_load_value(raw)
                except Exception:
                    pass
                else:
                    return Event(self.app, key, value, msg.headers, msg, lane)
            event = self._event(lane, msg)
            if event is not None:
                return event

    async def take(self) -> Event[T]:
        if self.tp is not None:
            while True:
                event = self.take_nowait()
                if event is not None:
                    return event
                await self.inbox.wait()
        while True:
            lane, msg = await self.inbox.take()
            event = self._event(lane, msg)
            if event is not None:
                return event

    def release(self, event: Event[T], error: BaseException, *, retry: bool) -> None:
        lane = event._lane
        if lane is None or event._done:
            return
        if retry:
            event._retired = True
            lane.requeue(event.message, event.message.offset)
        else:
            lane.abandon(event.message.offset)


class _HeldDecodeError(Exception):
    """Carries the undecodable event to the root stream so it stays held (unacked)."""

    def __init__(self, event: Event[Any], error: DecodeError) -> None:
        super().__init__(str(error))
        self.event = event
        self.error = error


class ChannelSource(Generic[T]):
    """Events put on an in-process channel (already decoded)."""

    def __init__(self, inbox: Inbox[Event[T]]) -> None:
        self.inbox = inbox
        #: told of every event handed out (the test harness records them)
        self.on_event: Callable[[Event[T]], None] | None = None

    def take_nowait(self) -> Event[T] | None:
        got = self.inbox.take_nowait()
        if got is None:
            return None
        lane, event = got
        event._lane = lane
        if self.on_event is not None:
            self.on_event(event)
        return event

    async def take(self) -> Event[T]:
        lane, event = await self.inbox.take()
        event._lane = lane
        if self.on_event is not None:
            self.on_event(event)
        return event

    def release(self, event: Event[T], error: BaseException, *, retry: bool) -> None:
        lane = event._lane
        if lane is None or event._done:
            return
        if retry:
            lane.requeue(event._fresh(), event.message.offset)
        else:
            lane.abandon(event.message.offset)


class IterableSource(Generic[T]):
    """Events from a plain (async) iterable: ``app.stream([1, 2, 3])``."""

    def __init__(self, app: App, values: Iterable[T] | AsyncIterator[T]) -> None:
        self.app = app
        self._sync = iter(values) if isinstance(values, Iterable) else None
        self._async = values if not isinstance(values, Iterable) else None
        self._offset = 0

    def _wrap(self, value: T) -> Event[T]:
        msg = Message("<iterable>", 0, self._offset, None, None, trio.current_time())
        self._offset += 1
        return Event(self.app, None, value, None, msg)

    def take_nowait(self) -> Event[T] | None:
        if self._sync is None:
            return None
        try:
            return self._wrap(next(self._sync))
        except StopIteration:
            raise StopAsyncIteration from None

    async def take(self) -> Event[T]:
        if self._async is None:
            event = self.take_nowait()
            assert event is not None
            return event
        return self._wrap(await self._async.__anext__())

    def release(self, event: Event[T], error: BaseException, *, retry: bool) -> None:
        pass


class KeyedSource(Generic[T]):
    """Routes events by key so that one key is always processed by one actor, in order.

    Used for agents with ``concurrency > 1``. An actor takes events from the
    shared source; one whose key belongs to another actor is moved to that
    actor's queue (it stays in flight, so the commit frontier still holds
    behind it). Events without a key go to whichever actor takes them.
    """

    def __init__(self, inner: TopicSource[T] | ChannelSource[T], actors: int) -> None:
        self.inner = inner
        self.actors = actors
        self.queues: list[deque[Event[T]]] = [deque() for _ in range(actors)]

    def for_actor(self, index: int) -> _ActorSource[T]:
        return _ActorSource(self, index)

    def _route(self, event: Event[T]) -> int | None:
        key = event.message.key if isinstance(self.inner, TopicSource) else event.key
        if key is None:
            return None
        try:
            return hash(key) % self.actors
        except TypeError:
            return None


class _ActorSource(Generic[T]):
    """One actor's view of a :class:`KeyedSource`."""

    def __init__(self, keyed: KeyedSource[T], index: int) -> None:
        self.keyed = keyed
        self.index = index
        self.queue = keyed.queues[index]

    def take_nowait(self) -> Event[T] | None:
        if self.queue:
            return self.queue.popleft()
        keyed = self.keyed
        while True:
            event = keyed.inner.take_nowait()
            if event is None:
                return None
            target = keyed._route(event)
            if target is None or target == self.index:
                return event
            keyed.queues[target].append(event)
            keyed.inner.inbox.wake_all()

    async def take(self) -> Event[T]:
        while True:
            event = self.take_nowait()
            if event is not None:
                return event
            await self.keyed.inner.inbox.wait()

    def release(self, event: Event[T], error: BaseException, *, retry: bool) -> None:
        if retry and not event._done:
            # Back to the front of this actor's queue: the key's order holds.
            self.queue.appendleft(event._fresh())
        else:
            self.keyed.inner.release(event, error, retry=False)

    def abandon_pending(self, error: BaseException) -> None:
        """The actor died for good: its queued events stay unacked and are not waited for."""
        while self.queue:
            self.keyed.inner.release(self.queue.popleft(), error, retry=False)


class Stream(Generic[T]):
    """An async iterator of values; what an agent function receives.

    ``async for value in stream`` acks each event when the next is asked for.
    ``stream.events()`` yields the :class:`Event` objects, ``stream.items()``
    ``(key, value)`` pairs.
    """

    def __init__(
        self,
        source: Source[T],
        *,
        app: App,
        label: str = "",
        agent: Agent[Any] | None = None,
        actor: int = 0,
        processors: Iterable[Processor[Any]] | None = None,
    ) -> None:
        self.app = app
        self.label = label
        self._source = source
        #: applied to each value as it is taken (``add_processor``)
        self._processors: list[Processor[Any]] = list(processors or ())
        self._held: list[Event[T]] = []
        self._since_checkpoint = 0
        self._auto_ack = True
        self._agent = agent
        self._actor = actor
        #: streams derived from this one that the same actor iterates (group_by)
        self._children: list[Stream[Any]] = []
        #: the agent is executing a step: it has an event (or a batch) and has
        #: not asked for the next yet (``app._steps`` counts these streams)
        self._stepping = False

    # -- the root protocol --------------------------------------------------

    def _begin_step(self) -> None:
        if not self._stepping:
            self._stepping = True
            self.app._steps += 1

    def _end_step(self) -> None:
        if self._stepping:
            self._stepping = False
            self.app._steps -= 1

    def _ack_held(self) -> None:
        if self._stepping:
            self._stepping = False
            self.app._steps -= 1
        held = self._held
        if held:
            if not self._auto_ack:
                # noack(): the agent acks; keep the unacked ones for crash handling
                self._held = [event for event in held if not event.acked]
                return
            for event in held:
                # event.ack() and event._complete(), inlined for the common case
                # (nothing produced on its behalf, not failed or retired)
                if event._outputs or event._acked or event._retired or event._failed or event._parent:
                    event.ack()
                    continue
                event._acked = event._done = True
                lane = event._lane
                if lane is not None:
                    lane.ack(event.message.offset)
            held.clear()

    async def _take_event(self) -> Event[T]:
        """The next event, held (unacked) alongside those already held."""
        self._since_checkpoint += 1
        if self._since_checkpoint >= _CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            await trio.lowlevel.checkpoint()
        try:
            event = self._source.take_nowait()
            if event is None:
                event = await self._source.take()
        except _HeldDecodeError as exc:
            self._held.append(exc.event)
            exc.event._stream = self
            self._begin_step()
            raise exc.error from exc.error.__cause__
        self._held.append(event)
        event._stream = self
        _current_event.set(event)
        self._begin_step()
        if self._processors:
            # The event is held already: a processor that raises fails it
            # like the agent raising (its on_error policy applies).
            await self._process(event)
        return event

    async def _process(self, event: Event[T]) -> None:
        value: Any = event.value
        for processor in self._processors:
            value = processor(value)
            if inspect.isawaitable(value):
                value = await value
        event.value = value

    def _take_ready(self) -> Event[T] | None:
        """Like :meth:`_take_event` without awaiting: the next event if one is ready.

        ``None`` when nothing is ready or a checkpoint is due; the caller then
        awaits :meth:`_take_event`. This keeps the common case (the lane has
        events) free of an extra coroutine per event.
        """
        count = self._since_checkpoint + 1
        if count >= _CHECKPOINT_EVERY or self._processors:
            return None
        try:
            event = self._source.take_nowait()
        except _HeldDecodeError as exc:
            self._held.append(exc.event)
            exc.event._stream = self
            self._begin_step()
            raise exc.error from exc.error.__cause__
        if event is None:
            return None
        self._since_checkpoint = count
        self._held.append(event)
        event._stream = self
        _current_event.set(event)
        if not self._stepping:  # _begin_step(), inlined: this runs once per event
            self._stepping = True
            self.app._steps += 1
        return event

    async def next_event(self) -> Event[T]:
        """Ack what is held, then take the next event."""
        self._ack_held()
        event = self._take_ready()
        if event is None:
            event = await self._take_event()
        return event

    def release_held(self, error: BaseException, *, retry: bool) -> list[Event[Any]]:
        """The actor died: leave held events unacked (or requeue them to retry)."""
        released: list[Event[Any]] = []
        for child in self._children:
            released += child.release_held(error, retry=retry)
        self._end_step()
        held = [event for event in self._held if not event.acked]
        # Requeue in reverse so the oldest ends up first in its lane again.
        for event in reversed(held):
            self._source.release(event, error, retry=retry)
        self._held.clear()
        return released + held

    def close(self) -> None:
        """The agent finished normally: everything it was given is done."""
        for child in self._children:
            child.close()
        self._auto_ack = True
        self._ack_held()

    def add_processor(self, processor: Processor[T]) -> None:
        """Apply ``processor`` (sync or async, value in, value out) to every value taken from now on.

        Processors run in the order added, before the agent sees the value.
        An exception in one fails the event like an exception in the agent.
        """
        self._processors.append(processor)

    @property
    def current_event(self) -> Event[T] | None:
        """The event of the value being processed (the newest one held).

        For an agent iterating a ``group_by``/``through`` stream of this one,
        the derived stream's event. ``streamtrio.current_event()`` gives the
        same from anywhere in the actor.
        """
        if self._held:
            return self._held[-1]
        for child in self._children:
            event = child.current_event
            if event is not None:
                return event
        return None

    @property
    def active_partitions(self) -> set[TP] | None:
        """The partitions this stream is restricted to (``isolated_partitions``
        actors: their one partition), or ``None``: every partition its
        source is assigned, as in Faust."""
        tp = getattr(self._source, "tp", None)
        return None if tp is None else {tp}

    def through(self, channel: Channel[Any] | str) -> Stream[T]:
        """Send every event on to ``channel`` (a topic, topic name or channel) and
        continue with a stream that consumes from it.

        A source event is acked once its copy is delivered.
        """
        if self._agent is None:
            raise TypeError("through() works on an agent's stream (inside @app.agent)")
        target = self.app._topic_named(channel) if isinstance(channel, str) else channel
        child: Stream[T] = self._agent._through(self, target)
        self._children.append(child)
        return child

    def group_by(
        self,
        key: Any,
        *,
        name: str | None = None,
        partitions: int | None = None,
        key_serializer: str | None = None,
    ) -> Stream[T]:
        """Re-key the stream through a repartition topic.

        Every event is sent, with its new key, to the internal topic
        ``<app id>-<agent>-<name>-repartition`` and consumed back from it, so
        table writes made while processing it land on the partition that
        owns the new key. A source event is acked only once its copy is
        delivered.

        Args:
            key: a Record field (``Order.account_id``) or a callable on the value.
            name: names the repartition topic (default: the field's name;
                required for a callable without a ``__name__``).
            partitions: partitions of the repartition topic (default: the
                source topic's).
            key_serializer: how the new key is encoded (default: the app's
                ``key_serializer``, so the key lands on the partition a
                producer, a table and the router would choose for it).
        """
        if self._agent is None:
            raise TypeError("group_by() works on an agent's stream (inside @app.agent)")
        child: Stream[T] = self._agent._group_by(
            self, key, name=name, partitions=partitions, key_serializer=key_serializer
        )
        self._children.append(child)
        return child

    def noack(self) -> Stream[T]:
        """Stop acking events automatically: the agent calls ``event.ack()`` itself.

        Until it does, nothing from that event's offset on is committed.
        """
        self._auto_ack = False
        return self

    # -- iteration ----------------------------------------------------------

    def __aiter__(self) -> Stream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            # next_event(), inlined: this runs once per event.
            self._ack_held()
            event = self._take_ready()
            if event is None:
                event = await self._take_event()
            return event.value
        except StopAsyncIteration:
            self._ack_held()
            raise

    async def events(self) -> AsyncIterator[Event[T]]:
        """Yield events (key, value, headers, message) instead of values."""
        while True:
            try:
                event = await self.next_event()
            except StopAsyncIteration:
                self._ack_held()
                return
            yield event

    async def items(self) -> AsyncIterator[tuple[Any, T]]:
        """Yield ``(key, value)`` pairs."""
        async for event in self.events():
            yield event.key, event.value

    async def enumerate(self, start: int = 0) -> AsyncIterator[tuple[int, T]]:
        """Yield ``(index, value)`` pairs."""
        index = start
        async for event in self.events():
            yield index, event.value
            index += 1

    async def filter(self, fun: Callable[[T], bool | Awaitable[bool]]) -> AsyncIterator[T]:
        """Yield the values for which ``fun`` (sync or async) is true; others are acked."""
        is_async = inspect.iscoroutinefunction(fun)
        async for event in self.events():
            keep = await fun(event.value) if is_async else fun(event.value)  # type: ignore[misc]
            if keep:
                yield event.value

    async def echo(self, *channels: Channel[Any]) -> AsyncIterator[T]:
        """Yield every value, after queueing a copy (same key) on each channel/topic.

        Copies to topics are queued like sink messages: delivered before the
        event's offset is committed.
        """
        from ._topic import Topic

        async for event in self.events():
            for channel in channels:
                if isinstance(channel, Topic):
                    channel.send_soon(key=event.key, value=event.value, headers=event.headers)
                else:
                    await channel.send(key=event.key, value=event.value, headers=event.headers)
            yield event.value

    def join(
        self, table: Table, *, key: JoinKey = None, how: Literal["inner", "left"] = "inner"
    ) -> AsyncIterator[tuple[T, Any]]:
        """Yield ``(value, table[lookup key])`` per event: a stream-table join (``docs/joins.md``).

        ``key`` gives the lookup key (default: the event's key; a Record field or
        ``f(value)``); events without a match are skipped (``how="inner"``) or
        yielded with ``None`` (``how="left"``).
        """
        from ._tables.joins import join_table

        return join_table(self, table, key=key, how=how)

    def left_join(self, table: Table, *, key: JoinKey = None) -> AsyncIterator[tuple[T, Any]]:
        """``join(table, key=key, how="left")``: unmatched events come with ``None``."""
        return self.join(table, key=key, how="left")

    def window_join(
        self,
        buffer: Table,
        *,
        left: str | Channel[Any],
        right: str | Channel[Any],
        before: float,
        after: float,
        grace: float = 0,
        key: JoinKey = None,
        how: str = "inner",
        on_unmatched: Callable[[str, Any], Any] | None = None,
    ) -> AsyncIterator[tuple[Any, Any]]:
        """Yield ``(left value, right value)`` per pair of events of the two topics within the
        join window: a stream-stream join buffered in ``buffer`` (``docs/joins.md``); with
        ``how="left"``/``"outer"``, ``on_unmatched(side, value)`` gets the events that expire
        unmatched."""
        from ._tables.stream_join import window_join

        return window_join(
            self,
            buffer,
            left=left,
            right=right,
            before=before,
            after=after,
            grace=grace,
            key=key,
            how=how,
            on_unmatched=on_unmatched,
        )

    async def take(self, max_: int, within: float | None = None) -> AsyncIterator[list[T]]:
        """Yield lists of up to ``max_`` values, or fewer once ``within`` seconds pass.

        The window starts at the first value of each batch. Every event of a
        batch is acked when the next batch is asked for.
        """
        async for batch in self.take_events(max_, within):
            yield [event.value for event in batch]

    async def take_events(self, max_: int, within: float | None = None) -> AsyncIterator[list[Event[T]]]:
        """Like :meth:`take`, yielding the events."""
        if max_ < 1:
            raise ValueError(f"take: max_ must be at least 1, got {max_}")
        while True:
            self._ack_held()
            batch: list[Event[T]] = []
            # Collecting a batch is not a step: events held while waiting for
            # more hold back their offsets, never a commit (exactly_once).
            try:
                batch.append(await self._take_event())
                self._end_step()
                deadline = trio.current_time() + within if within is not None else float("inf")
                while len(batch) < max_:
                    with trio.move_on_at(deadline):
                        batch.append(await self._take_event())
                        self._end_step()
                        continue
                    break
            except StopAsyncIteration:
                if batch:
                    self._begin_step()
                    yield batch
                self._ack_held()
                return
            self._begin_step()
            yield batch

    def __repr__(self) -> str:
        return f"<Stream {self.label}>"
