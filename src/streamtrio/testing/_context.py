"""``agent.test_context()``: one agent, run for real, fed one event at a time.

The agent runs in the app's real worker on a fresh ``memory://`` broker (see
:mod:`._harness`): ``put`` sends to the agent's real topic, the consumer
fetches it into the real per-partition lane, the topic's schema decodes it,
the agent's stream acks it, and its sinks, tables and sends do what they do
in production. Only this agent runs (no other agents, timers, tasks or
services); in-process channels it sinks into are captured instead of read.

``put`` returns once the event is acked, which the lanes report (no polling,
no sleeps), so it works the same under trio's ``MockClock``.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._exceptions import DecodeError
from .._stream import Event, _current_event
from .._topic import Topic
from .._types import TP, Headers, RecordMetadata
from ._harness import Harness
from ._time import advance_time
from ._tracking import EventKey, SentMessage, event_key

if TYPE_CHECKING:
    from .._agent import Agent
    from .._app import App
    from .._transports.memory import MemoryBroker
    from .._worker import Worker

__all__ = ["AgentTestContext", "open_agent_test_context"]

T = TypeVar("T")


class AgentTestContext(Generic[T]):
    """A running agent under test. Obtained from ``async with agent.test_context() as ctx``.

    Attributes:
        agent: the agent under test.
        app: its app.
    """

    def __init__(self, agent: Agent[T], harness: Harness) -> None:
        self.agent = agent
        self.app: App = agent.app
        self._harness = harness
        self._sent_keys: list[EventKey] = []

    # -- feeding the agent ---------------------------------------------------------------

    async def put(
        self,
        value: Any = None,
        *,
        key: Any = None,
        partition: int | None = None,
        headers: Headers | dict[str, bytes] | None = None,
        timestamp: float | None = None,
        topic: str | None = None,
    ) -> Event[T]:
        """Send one event to the agent and wait until it has processed (acked) it.

        Args:
            value: the value, encoded with the topic's schema (and decoded again
                before the agent sees it).
            key: the key.
            partition: the partition (default: Kafka's partitioner on the key).
            headers: message headers.
            timestamp: the record timestamp, seconds since the epoch.
            topic: which topic name, for an agent on several topics or a pattern.

        Returns:
            The event as the agent received it (``event.message`` has the
            partition and offset). A message the decode-error policy skipped
            or dead-lettered never reaches the agent: it comes back as an
            event with ``key`` and ``value`` ``None`` and the raw message.

        Raises:
            Exception: whatever the agent raised on this (or an earlier) event,
                the original exception, with a note naming the event.
            ClosedError: the agent's worker has stopped.
        """
        metadata = await self.send(
            value, key=key, partition=partition, headers=headers, timestamp=timestamp, topic=topic
        )
        where = (metadata.topic, metadata.partition, metadata.offset)
        harness = self._harness
        await harness.wait_until(lambda: harness.settled(where))
        return self._event_at(where)

    async def send(
        self,
        value: Any = None,
        *,
        key: Any = None,
        partition: int | None = None,
        headers: Headers | dict[str, bytes] | None = None,
        timestamp: float | None = None,
        topic: str | None = None,
    ) -> RecordMetadata:
        """Send one event to the agent without waiting for it to be processed.

        Use it to hand the agent several events at once (``stream.take``
        batches), then :meth:`drain`. Arguments are those of :meth:`put`.

        Returns:
            Where the message landed (for a channel agent, the channel's label
            and the event's sequence number).
        """
        self._harness.check()
        channel = self.agent.channel
        # The test task is not processing an event: keep it out of `sent`.
        token = _current_event.set(None)
        try:
            if isinstance(channel, Topic):
                target: Topic[Any] = channel
                if topic is not None or len(channel.topics) != 1:
                    name = topic if topic is not None else channel.get_topic_name()
                    if not channel.matches(name):
                        raise ValueError(f"agent {self.agent.name!r} does not consume topic {name!r}")
                    target = Topic(
                        self.app,
                        topics=[name],
                        key_type=channel.key_type,
                        value_type=channel.value_type,
                        key_serializer=channel.key_serializer,
                        value_serializer=channel.value_serializer,
                    )
                metadata = await target.send(
                    key=key, value=value, partition=partition, timestamp=timestamp, headers=headers
                )
            else:
                if isinstance(headers, dict):
                    headers = list(headers.items())
                metadata = await channel.send(
                    key=key, value=value, partition=partition, timestamp=timestamp, headers=headers
                )
        finally:
            _current_event.reset(token)
        self._sent_keys.append((metadata.topic, metadata.partition, metadata.offset))
        return metadata

    async def drain(self) -> None:
        """Wait until every event given to the agent so far is processed.

        Raises:
            Exception: what the agent raised, as :meth:`put` does.
        """
        harness = self._harness
        pending_at_start = list(self._sent_keys)
        pending = collections.deque(pending_at_start)

        def all_settled() -> bool:
            # Checks from the oldest and drops what is settled, so a long drain
            # costs about one check per ack rather than one per event per ack.
            while pending and harness.settled(pending[0]):
                pending.popleft()
            return not pending

        await harness.wait_until(all_settled)
        del self._sent_keys[: len(pending_at_start)]

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of trio time pass (needs trio's MockClock; see :func:`advance_time`)."""
        await advance_time(seconds)

    # -- what happened ------------------------------------------------------------------------

    @property
    def results(self) -> list[Any]:
        """What the agent yielded, in order, as its sinks received it."""
        return list(self._harness.results[self.agent.name].values)

    def results_for(self, event: Event[Any]) -> list[Any]:
        """What the agent yielded while it processed ``event`` (or its group_by copy)."""
        by_event = self._harness.results[self.agent.name].by_event
        keys = self._harness.descendants(event_key(event))
        return [value for key in keys for value in by_event.get(key, [])]

    @property
    def events(self) -> list[Event[T]]:
        """The events the agent's stream handed out, in order."""
        return list(self._harness.tracker.events.values())

    @property
    def sent(self) -> list[SentMessage]:
        """What the agent produced while processing events, in send order.

        Topic messages (sinks, ``topic.send``, ``event.forward``, dead
        letters) are read back from the memory broker and decoded with the
        topic's schema; events sent to in-process channel sinks that no
        running agent reads are included with the channel's label as topic.
        Table changelogs are not included.
        """
        return self._harness.recorder.read(self.app, self.broker)

    def sent_to(self, topic: str | Topic[Any]) -> list[SentMessage]:
        """The messages of :attr:`sent` that went to one topic (or channel label)."""
        name = topic if isinstance(topic, str) else topic.label
        return [m for m in self.sent if m.topic == name]

    def sent_for(self, event: Event[Any]) -> list[SentMessage]:
        """What the agent produced while it processed ``event`` (or its group_by copy)."""
        sources = self._harness.descendants(event_key(event))
        return self._harness.recorder.read(self.app, self.broker, sources=set(sources))

    def committed(self) -> dict[TP, int]:
        """The offsets the worker committed for the app's group."""
        return self.broker.committed(self.app.id)

    async def commit(self) -> dict[TP, int]:
        """Run the worker's commit now (tables persist, offsets commit); returns what it committed."""
        self._harness.check()
        worker = self.worker
        if worker.committer is None:
            return {}
        return await worker.committer.commit()

    @property
    def broker(self) -> MemoryBroker:
        """The memory broker the agent runs on (readable after the block, too)."""
        return self._harness.broker

    @property
    def worker(self) -> Worker:
        worker = self._harness.worker
        assert worker is not None
        return worker

    def _event_at(self, where: EventKey) -> Event[T]:
        event = self._harness.tracker.events.get(where)
        if event is not None:
            return event
        # Not recorded: an isolated-partitions actor's own source made it, or a
        # decode-error policy skipped it. Decode it as the agent's source does.
        topic, partition, offset = where
        message = self.broker.messages(topic, partition)[offset]
        channel = self.agent.channel
        key: Any = None
        value: Any = None
        if isinstance(channel, Topic):
            with contextlib.suppress(DecodeError):
                key = channel.schema.loads_key(message.key, topic=topic, partition=partition, offset=offset)
                value = channel.schema.loads_value(
                    message.value, topic=topic, partition=partition, offset=offset
                )
        stand_in: Event[T] = Event(self.app, key, value, message.headers, message)
        stand_in.ack()
        return stand_in

    def __repr__(self) -> str:
        return f"<AgentTestContext {self.agent.name} on {self._harness.broker_url}>"


@asynccontextmanager
async def open_agent_test_context(
    agent: Agent[T],
    *,
    broker: str | None = None,
    store: str | None = None,
    datadir: str | None = None,
    **settings: Any,
) -> AsyncIterator[AgentTestContext[T]]:
    """Run ``agent`` alone in its app's real worker for the block. Also ``agent.test_context()``.

    Args:
        agent: the agent.
        broker: a ``memory://`` URL (default: a fresh broker, or the app's own
            if it already runs on a test broker, as apps from
            ``streamtrio_app_factory`` do).
        store: the store URL (default ``memory://``, or the test app's own).
        datadir: the data directory (default: a temporary one, or the test app's own).
        **settings: app settings to override for the test (e.g. ``commit_interval=0.1``).

    The app is borrowed: its settings, agents and sinks are changed for the
    block and restored after; it cannot run elsewhere meanwhile.

    Raises:
        WorkerError: the app is already running.
        Exception: what the agent raised, if no :meth:`~AgentTestContext.put`
            or :meth:`~AgentTestContext.drain` raised it already.
    """
    app = agent.app
    if app.agents.get(agent.name) is not agent:
        raise ValueError(f"agent {agent.name!r} is not registered with app {app.id!r}")
    harness = Harness(
        app,
        agents=[agent],
        background=False,
        capture_channel_sinks=True,
        broker=broker,
        store=store,
        datadir=datadir,
        settings=settings,
    )
    async with harness.running():
        yield AgentTestContext(agent, harness)
