"""Agents: async functions that process a stream, run as children of the worker.

An agent runs ``concurrency`` actors; each actor calls the agent function with
its own :class:`~streamtrio.Stream` over the agent's shared source. What the
function yields goes to its sinks.

When the function raises, ``on_error`` decides:

- ``"stop"`` (default): the worker stops with the traceback and a non-zero
  exit; the failing event stays unacked, so no offset is committed past it.
- ``"restart"``: the actor restarts with exponential backoff and is handed the
  failing event again (a transient error heals; a poison message keeps
  failing, loudly, and its partition's commits stay behind it).
- ``"dead_letter"``: the failing event's raw message and the error go to the
  dead-letter topic, the event is acked, and the actor restarts at once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Union

import trio

from ._exceptions import AgentError, ConfigurationError, DeadLetterError, ProducerFencedError
from ._records import FieldDescriptor
from ._rpc import chunked_replies, collect, send_reply
from ._stream import (
    ChannelSource,
    Event,
    KeyedSource,
    Source,
    Stream,
    TopicSource,
    _ActorSource,
    current_event,
)
from ._timers import asyncio_hint
from ._topic import Channel, Topic
from ._types import TP, Headers, RecordMetadata

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from ._app import App
    from ._worker import Worker
    from .testing import AgentTestContext

__all__ = ["Agent", "AgentFun", "SinkT"]

log = logging.getLogger(__name__)

T = TypeVar("T")

AgentFun = Callable[[Stream[Any]], Awaitable[Any] | AsyncIterator[Any]]
SinkT = Union["Agent[Any]", Channel[Any], Callable[[Any], Any]]

_ON_ERROR = ("stop", "restart", "dead_letter")


class Agent(Generic[T]):
    """A stream processor registered with ``@app.agent``.

    Attributes:
        name: the agent's name (the function name unless given).
        channel: the topic or channel it consumes.
        concurrency: how many actors run it.
        sinks: where its yielded values go.
    """

    def __init__(
        self,
        fun: AgentFun,
        *,
        app: App,
        name: str,
        channel: Channel[T],
        concurrency: int = 1,
        sink: Iterable[SinkT] | None = None,
        isolated_partitions: bool = False,
        on_error: str = "stop",
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError(f"agent {name!r}: concurrency must be at least 1, got {concurrency}")
        if on_error not in _ON_ERROR:
            raise ConfigurationError(
                f"agent {name!r}: on_error must be one of {', '.join(_ON_ERROR)}, got {on_error!r}"
            )
        if on_error == "dead_letter" and not isinstance(channel, Topic):
            raise ConfigurationError(
                f"agent {name!r}: on_error='dead_letter' needs a topic (channel events have no raw message)"
            )
        if isolated_partitions and not isinstance(channel, Topic):
            raise ConfigurationError(f"agent {name!r}: isolated_partitions=True needs a topic")
        if isolated_partitions and concurrency != 1:
            raise ConfigurationError(
                f"agent {name!r}: isolated_partitions=True runs one actor per partition; "
                f"concurrency must be 1, got {concurrency}"
            )
        self.fun = fun
        self.app = app
        self.name = name
        self.channel = channel
        self.concurrency = concurrency
        self.sinks: list[SinkT] = list(sink or [])
        self.on_error = on_error
        self.isolated_partitions = isolated_partitions
        self.__doc__ = fun.__doc__
        self.__wrapped__ = fun
        self._worker: Worker | None = None
        self._nursery: trio.Nursery | None = None
        self._repartitions: dict[str, _Repartition] = {}

    # -- sending to the agent -------------------------------------------------

    async def send(
        self,
        *,
        key: Any = None,
        value: Any = None,
        partition: int | None = None,
        timestamp: float | None = None,
        headers: Headers | None = None,
    ) -> RecordMetadata:
        """Send a value to the agent's channel and wait for its delivery."""
        return await self.channel.send(
            key=key, value=value, partition=partition, timestamp=timestamp, headers=headers
        )

    async def cast(self, value: Any = None, *, key: Any = None, partition: int | None = None) -> None:
        """Send a value to the agent without waiting for a reply (like ``send``)."""
        await self.send(key=key, value=value, partition=partition)

    # -- RPC ----------------------------------------------------------------

    async def ask(
        self,
        value: Any = None,
        *,
        key: Any = None,
        partition: int | None = None,
        headers: Headers | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - Faust's signature; the error names the agent
    ) -> Any:
        """Send ``value`` to the agent and wait for the value it yields for it.

        Raises:
            AskTimeoutError: no reply within ``timeout`` (default ``ask_timeout``).
        """
        return await self.app._rpc.ask(
            self,
            value,
            key=key,
            partition=partition,
            headers=headers,
            deadline=self._timeout(timeout),
        )

    async def map(
        self,
        values: Iterable[Any] | AsyncIterable[Any],
        *,
        key: Any = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncIterator[Any]:
        """Ask for every value concurrently; yield the replies in input order."""
        items = [(key, value) for value in await collect(values)]
        async for reply in chunked_replies(self.app._rpc, self, items, self._timeout(timeout)):
            yield reply

    async def kvmap(
        self,
        items: Mapping[Any, Any] | Iterable[tuple[Any, Any]] | AsyncIterable[tuple[Any, Any]],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncIterator[Any]:
        """Ask for every (key, value) concurrently; yield the replies in input order.

        As in Faust, the replies alone are yielded (pair them with the input
        with ``zip`` if needed); Faust yields them as they arrive, here in the
        order of ``items``.
        """
        pairs: list[tuple[Any, Any]] = await collect(items.items() if isinstance(items, Mapping) else items)
        async for reply in chunked_replies(self.app._rpc, self, pairs, self._timeout(timeout)):
            yield reply

    async def join(
        self,
        values: Iterable[Any] | AsyncIterable[Any],
        *,
        key: Any = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[Any]:
        """Ask for every value concurrently; return the replies in input order."""
        items = [(key, value) for value in await collect(values)]
        return await self.app._rpc.gather(self, items, deadline=self._timeout(timeout))

    def _group_by(
        self,
        parent: Stream[Any],
        key: Any,
        *,
        name: str | None,
        partitions: int | None,
        key_serializer: str | None,
    ) -> Stream[Any]:
        keyfn: Callable[[Any], Any]
        if isinstance(key, FieldDescriptor):
            keyfn = key.getattr
            label = name or str(key.field)
        elif callable(key):
            keyfn = key
            label = name or str(getattr(key, "__name__", ""))
            if not label or label == "<lambda>":
                raise ConfigurationError(
                    f"agent {self.name!r}: group_by with a lambda needs name= "
                    "(it names the repartition topic)"
                )
        else:
            raise TypeError(f"group_by key must be a Record field or a callable, got {key!r}")
        topic_name = f"{self.app.id}-{self.name}-{label}-repartition"
        repartition = self._repartitions.get(topic_name)
        if repartition is None:
            source = self.channel
            if not isinstance(source, Topic):
                raise ConfigurationError(
                    f"agent {self.name!r}: group_by needs a topic, not an in-process channel"
                )
            topic = source.derive_topic(
                topics=[topic_name],
                key_type=None,
                key_serializer=key_serializer or self.app.conf.key_serializer,
                partitions=partitions or source.partitions,
                internal=True,
            )
            repartition = self._repartitions[topic_name] = _Repartition(self, topic, keyfn)
        return Stream(
            _LazySource(repartition, parent._actor, parent),
            app=self.app,
            label=f"{parent.label}.group_by({label})",
            agent=self,
            actor=parent._actor,
        )

    def _through(self, parent: Stream[Any], channel: Channel[Any]) -> Stream[Any]:
        label = channel.label
        repartition = self._repartitions.get(label)
        if repartition is None:
            repartition = self._repartitions[label] = _Repartition(self, channel, None)
        return Stream(
            _LazySource(repartition, parent._actor, parent),
            app=self.app,
            label=f"{parent.label}.through({label})",
            agent=self,
            actor=parent._actor,
        )

    def _timeout(self, timeout: float | None) -> float:
        return self.app.conf.ask_timeout if timeout is None else timeout

    def add_sink(self, sink: SinkT) -> None:
        if sink not in self.sinks:
            self.sinks.append(sink)

    def test_context(self, **options: Any) -> AbstractAsyncContextManager[AgentTestContext[T]]:
        """Run this agent alone, for real, in a test: ``async with agent.test_context() as ctx``.

        See :func:`streamtrio.testing.open_agent_test_context` for ``options``
        and :class:`streamtrio.testing.AgentTestContext` for ``put``,
        ``results``, ``sent`` and ``drain``.
        """
        from .testing import open_agent_test_context

        return open_agent_test_context(self, **options)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "channel": getattr(self.channel, "label", repr(self.channel)),
            "concurrency": self.concurrency,
            "sinks": [getattr(s, "name", getattr(s, "label", repr(s))) for s in self.sinks],
            "on_error": self.on_error,
        }

    # -- running --------------------------------------------------------------

    async def _deliver(self, value: Any) -> None:
        for sink in self.sinks:
            if isinstance(sink, Agent):
                target = sink.channel
                if isinstance(target, Topic):
                    target.send_soon(value=value)
                else:
                    await target.send(value=value)
            elif isinstance(sink, Topic):
                sink.send_soon(value=value)
            elif isinstance(sink, Channel):
                await sink.send(value=value)
            else:
                result = sink(value)
                if inspect.isawaitable(result):
                    await result

    async def _execute(self, stream: Stream[T]) -> None:
        result = self.fun(stream)
        if inspect.isasyncgen(result):
            app = self.app
            async with aclosing(result) as gen:
                async for value in gen:
                    event = current_event()
                    if event is not None and event.headers:
                        send_reply(app, event, value)
                    if self.sinks:
                        await self._deliver(value)
        elif inspect.isawaitable(result):
            await result
        else:
            raise TypeError(f"agent {self.name!r} must be an async def function or async generator")

    def _output_failed(self, event: Event[Any], error: BaseException) -> None:
        """An output of ``event`` (a send, a sink message, a copy, a reply, a value
        handed to a channel agent) failed: the ``on_error`` policy applies."""
        worker = self._worker
        where = event._describe()
        self.app.monitor.agent_error(self.name)
        if isinstance(error, ProducerFencedError):
            # The worker's producer is fenced (exactly_once): no event of this
            # worker can finish any more; it stops for that reason.
            event._failed = True
            if worker is not None:
                worker.crash(error)
            return
        if self.on_error == "restart" and worker is not None and not isinstance(error, DeadLetterError):
            delay = self.app.conf.agent_restart_backoff
            log.error(
                "agent %s: an output of the event at %s failed (%s); processing it again in %.1fs",
                self.name,
                where,
                error,
                delay,
            )
            event._retired = True
            if event._lane is not None:
                # Not waited for by a drain; the frontier stays below it.
                event._lane.abandon(event.message.offset)
            if self._nursery is not None:
                self._nursery.start_soon(self._requeue_later, event, delay)
            return
        if self.on_error == "dead_letter" and not isinstance(error, DeadLetterError):
            self.app._dead_letter(event.message, error, reason=f"agent {self.name} output", event=event)
            return
        event._failed = True
        if event._lane is not None:
            event._lane.abandon(event.message.offset)  # never done: a drain does not wait for it
        failure = AgentError(f"agent {self.name}: an output of the event at {where} failed: {error}")
        failure.__cause__ = error
        if worker is not None:
            worker.crash(failure)
        else:
            log.error("%s", failure)

    async def _requeue_later(self, event: Event[Any], delay: float) -> None:
        await trio.sleep(delay)
        lane = event._lane
        if lane is None or lane.revoked:
            return  # revoked meanwhile: the new owner processes it from the committed offset
        # A topic lane holds raw messages (decoded again); a channel lane holds events.
        item: Any = event.message if lane.tp is not None else event._fresh()
        lane.requeue(item, event.message.offset)

    async def _serve(
        self, worker: Worker, source: Source[T], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the actors until cancelled (or, with on_error='stop', until one crashes)."""
        self._worker = worker
        self._repartitions.clear()
        inbox = getattr(source, "inbox", None)
        if inbox is not None:
            inbox.on_failure = self._output_failed
        if self.isolated_partitions and isinstance(source, TopicSource):
            await self._serve_isolated(worker, source, task_status=task_status)
            return
        keyed = None
        if self.concurrency > 1 and isinstance(source, TopicSource | ChannelSource):
            keyed = KeyedSource(source, self.concurrency)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for index in range(self.concurrency):
                actor_source: Source[T] = keyed.for_actor(index) if keyed is not None else source
                nursery.start_soon(self._run_actor, worker, actor_source, index)
            task_status.started()

    async def _serve_isolated(self, worker: Worker, source: TopicSource[T], *, task_status: Any) -> None:
        """One actor per assigned partition: started on assign, cancelled after its revoke.

        The worker drains a revoked partition's in-flight events and commits
        them before the revoke hook cancels its actor.
        """
        channel = self.channel
        assert isinstance(channel, Topic)
        scopes: dict[TP, trio.CancelScope] = {}
        source.inbox.wake_all_on_feed = True

        async with trio.open_nursery() as nursery:
            self._nursery = nursery

            async def actor(tp: TP, *, task_status: trio.TaskStatus[None]) -> None:
                with trio.CancelScope() as scope:
                    scopes[tp] = scope
                    task_status.started()
                    own: TopicSource[T] = TopicSource(
                        self.app, source.inbox, source.schema, agent=self.name, tp=tp
                    )
                    await self._run_actor(worker, own, tp.partition)
                if scopes.get(tp) is scope:
                    del scopes[tp]

            async def on_assign(tps: frozenset[TP]) -> None:
                for tp in sorted(tps):
                    if channel.matches(tp.topic) and tp not in scopes:
                        await nursery.start(actor, tp)

            async def on_revoke(tps: frozenset[TP]) -> None:
                for tp in tps:
                    scope = scopes.pop(tp, None)
                    if scope is not None:
                        scope.cancel()

            worker.on_assign_hooks.append(on_assign)
            worker.on_revoke_hooks.append(on_revoke)
            try:
                await on_assign(frozenset(worker.assigned))
                task_status.started()
                await trio.sleep_forever()
            finally:
                worker.on_assign_hooks.remove(on_assign)
                worker.on_revoke_hooks.remove(on_revoke)

    def actors(self) -> int:
        """How many actors run now (isolated partitions: one per assigned partition)."""
        if self.isolated_partitions and self._nursery is not None:
            return len(self._nursery.child_tasks)
        return self.concurrency

    async def _run_actor(self, worker: Worker, source: Source[T], index: int) -> None:
        conf = self.app.conf
        backoff = conf.agent_restart_backoff
        label = self.name if self.concurrency == 1 else f"{self.name}[{index}]"
        while True:
            stream: Stream[T] = Stream(source, app=self.app, label=label, agent=self, actor=index)
            try:
                await self._execute(stream)
            except trio.Cancelled:
                stream._end_step()
                raise
            except Exception as exc:
                self.app.monitor.agent_error(self.name)
                if self.on_error == "restart":
                    held = stream.release_held(exc, retry=True)
                    log.error(
                        "agent %s raised on %s; restarting in %.1fs%s",
                        label,
                        _describe(held),
                        backoff,
                        asyncio_hint(exc),
                        exc_info=exc,
                    )
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, conf.agent_restart_backoff_max)
                    continue
                if self.on_error == "dead_letter":
                    for event in stream.release_held(exc, retry=False):
                        self.app._dead_letter(event.message, exc, reason=f"agent {self.name}", event=event)
                        event.ack()
                    log.error("agent %s raised; event sent to the dead-letter topic", label, exc_info=exc)
                    continue
                held = stream.release_held(exc, retry=False)
                if isinstance(source, _ActorSource):
                    source.abandon_pending(exc)
                error = AgentError(
                    f"agent {label} raised {type(exc).__name__}: {exc} "
                    f"(on {_describe(held)}){asyncio_hint(exc)}"
                )
                error.__cause__ = exc
                worker.crash(error)
                return
            else:
                stream.close()
                log.info("agent %s finished", label)
                return


class _Repartition:
    """One group_by's repartition topic: subscribed once, fed by one forwarder per actor."""

    def __init__(self, agent: Agent[Any], topic: Channel[Any], keyfn: Callable[[Any], Any] | None) -> None:
        self.agent = agent
        self.topic = topic
        self.keyfn = keyfn
        self.source: TopicSource[Any] | ChannelSource[Any] | KeyedSource[Any] | None = None
        self.forwarding: set[int] = set()
        self._lock = trio.Lock()

    async def source_for(self, actor: int, parent: Stream[Any]) -> Source[Any]:
        agent = self.agent
        worker = agent._worker
        nursery = agent._nursery
        if worker is None or nursery is None:
            raise RuntimeError(f"agent {agent.name!r} is not running")
        async with self._lock:
            if self.source is None:
                plain: TopicSource[Any] | ChannelSource[Any]
                if isinstance(self.topic, Topic):
                    inbox = await worker.add_subscription(self.topic)
                    plain = TopicSource(agent.app, inbox, self.topic.schema, agent=agent.name)
                else:
                    plain = ChannelSource(self.topic._subscribe())
                plain.inbox.on_failure = agent._output_failed
                self.source = KeyedSource(plain, agent.concurrency) if agent.concurrency > 1 else plain
        if actor not in self.forwarding:
            self.forwarding.add(actor)
            nursery.start_soon(
                self._forward, worker, Stream(parent._source, app=agent.app, label=parent.label)
            )
        source = self.source
        return source.for_actor(actor) if isinstance(source, KeyedSource) else source

    async def _forward(self, worker: Worker, stream: Stream[Any]) -> None:
        """Send each event of the actor's source on with its new key.

        The copy is an output of its source event: the source is done once
        the copy is delivered (a topic) or processed (a channel), and a failed
        copy fails it (the agent's ``on_error`` policy applies).
        """
        topic = self.topic
        keyfn = self.keyfn
        try:
            async for event in stream.events():
                key = keyfn(event.value) if keyfn is not None else event.key
                if isinstance(topic, Topic):
                    topic.send_soon(
                        key=key, value=event.value, headers=event.headers, timestamp=event.message.timestamp
                    )
                else:
                    await topic.send(key=key, value=event.value, headers=event.headers)
        except Exception as exc:
            held = stream.release_held(exc, retry=False)
            error = AgentError(
                f"forwarding of agent {self.agent.name} raised {type(exc).__name__}: {exc} "
                f"(on {_describe(held)})"
            )
            error.__cause__ = exc
            worker.crash(error)


class _LazySource(Generic[T]):
    """Defers a group_by's setup (declare, subscribe, start forwarding) to the first take."""

    def __init__(self, repartition: _Repartition, actor: int, parent: Stream[Any]) -> None:
        self._repartition = repartition
        self._actor = actor
        self._parent = parent
        self._inner: Source[T] | None = None

    def take_nowait(self) -> Any:
        return self._inner.take_nowait() if self._inner is not None else None

    async def take(self) -> Any:
        if self._inner is None:
            self._inner = await self._repartition.source_for(self._actor, self._parent)
        return await self._inner.take()

    def release(self, event: Any, error: BaseException, *, retry: bool) -> None:
        if self._inner is not None:
            self._inner.release(event, error, retry=retry)


def _describe(events: list[Any]) -> str:
    if not events:
        return "no event"
    m = events[0].message
    return f"topic={m.topic!r} partition={m.partition} offset={m.offset}"
