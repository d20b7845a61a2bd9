"""Agent RPC: ``ask``, ``map``, ``kvmap`` and ``join`` over a reply topic.

A request is an ordinary message on the agent's topic carrying two headers:
``streamtrio-reply-to`` (the asking worker's reply topic) and
``streamtrio-correlation-id``. Consumers that are not agents see a plain
value. When the agent yields a value while processing such an event, the
value is sent to the reply topic with the same correlation id (queued like a
sink message, so it is delivered before the request's offset is committed).

Each worker (or client opened with :meth:`App.open_client`) has its own
reply topic, ``<app id>-reply-<random>``, created on the first ask and read
from the beginning by a reader outside the group. Replies are decoded as
plain data (JSON): a Record comes back as a dict.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from ._codecs import Schema
from ._exceptions import AskTimeoutError, ClosedError, ProducerError
from ._stream import Event, output_started
from ._transports.base import OFFSET_BEGINNING
from ._types import TP, Headers, Message, TopicSpec

if TYPE_CHECKING:
    from ._agent import Agent
    from ._app import App
    from ._worker import Worker

__all__ = ["CORRELATION_ID", "REPLY_TO", "ReplyConsumer"]

REPLY_TO = "streamtrio-reply-to"
CORRELATION_ID = "streamtrio-correlation-id"

#: Asks in flight at once for ``map``/``kvmap``/``join``.
MAX_IN_FLIGHT = 1000

_REPLY_SCHEMA = Schema(key_serializer="raw", value_serializer="json")
#: Hex digits of the random part of a reply topic's name.
_REPLY_ID_LENGTH = 12
_HEX = frozenset("0123456789abcdef")


def request_headers(event: Event[Any]) -> tuple[str, bytes] | None:
    """The (reply topic, correlation id) of an RPC request event, if it is one."""
    headers = event.headers
    if not headers:
        return None
    reply_to = correlation = None
    for name, value in headers:
        if name == REPLY_TO:
            reply_to = value.decode()
        elif name == CORRELATION_ID:
            correlation = value
    if reply_to is None or correlation is None:
        return None
    return reply_to, correlation


def send_reply(app: App, event: Event[Any], value: Any) -> None:
    """Queue ``value`` as the reply to ``event`` if it is an RPC request.

    The reply is an output of the event (delivered before its offset is
    committed). Only reply topics of this app's RPC (``<app id>-reply-...``)
    are answered: a request naming any other topic is a bad event.

    Raises:
        ProducerError: the request names a topic that is not a reply topic of this app.
    """
    request = request_headers(event)
    if request is None:
        return
    reply_to, correlation = request
    if not is_reply_topic(app, reply_to):
        m = event.message
        raise ProducerError(
            f"the event at topic={m.topic!r} partition={m.partition} offset={m.offset} asks for a "
            f"reply on {reply_to!r} ({REPLY_TO} header), which is not a reply topic of app "
            f"{app.id!r} ({app.id}-reply-...) nor a topic it declares: not answered"
        )
    done = output_started()
    app._require_producer().send_nowait(
        reply_to,
        None,
        _REPLY_SCHEMA.dumps_value(value),
        partition=0,
        headers=[(CORRELATION_ID, correlation)],
        on_delivery=None if done is None else (lambda _md, err: done(err)),
    )


def is_reply_topic(app: App, topic: str) -> bool:
    """Whether ``topic`` is an RPC reply topic of ``app`` (made by :class:`ReplyConsumer`)
    or a topic the app declares (Faust's ``send(reply_to=topic)``)."""
    if any(t.matches(topic) for t in app._topics):
        return True
    suffix = topic.removeprefix(f"{app.id}-reply-")
    return suffix != topic and len(suffix) == _REPLY_ID_LENGTH and all(c in _HEX for c in suffix)


class _Pending:
    __slots__ = ("done", "message")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.message: Message | None = None


class ReplyConsumer:
    """The worker component that owns the reply topic and matches replies to asks."""

    name = "rpc"

    def __init__(self, app: App) -> None:
        self.app = app
        self.topic_name = f"{app.id}-reply-{uuid.uuid4().hex[:_REPLY_ID_LENGTH]}"
        self._waiting: dict[bytes, _Pending] = {}
        self._nursery: trio.Nursery | None = None
        self._ready: trio.Event | None = None

    def attach(self, worker: Worker) -> None:
        pass

    async def serve(self, worker: Worker | None, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._ready = None
            for pending in self._waiting.values():
                pending.done.set()

    async def _ensure_reading(self) -> None:
        if self._nursery is None:
            raise ClosedError(
                f"app {self.app.id!r}: ask() needs a running worker or `async with app.open_client():`"
            )
        if self._ready is None:
            self._ready = trio.Event()
            transport = self.app.transport
            await transport.create_topics(
                [
                    TopicSpec(
                        self.topic_name,
                        1,
                        self.app.conf.topic_replication_factor,
                        {"retention.ms": "86400000"},
                    )
                ]
            )
            await self._nursery.start(self._read)
        await self._ready.wait()

    async def _read(self, *, task_status: trio.TaskStatus[None]) -> None:
        async with self.app.transport.open_reader() as reader:
            reader.assign_nowait({TP(self.topic_name, 0): OFFSET_BEGINNING})
            task_status.started()
            assert self._ready is not None
            self._ready.set()
            while True:
                batch = await reader.getmany()
                for message in batch.messages:
                    for name, value in message.headers or ():
                        if name == CORRELATION_ID:
                            pending = self._waiting.pop(value, None)
                            if pending is not None:
                                pending.message = message
                                pending.done.set()
                            break

    async def ask(
        self,
        agent: Agent[Any],
        value: Any,
        *,
        key: Any,
        partition: int | None,
        headers: Headers | None,
        deadline: float,
    ) -> Any:
        await self._ensure_reading()
        correlation = uuid.uuid4().hex.encode()
        pending = _Pending()
        self._waiting[correlation] = pending
        request = [*(headers or []), (REPLY_TO, self.topic_name.encode()), (CORRELATION_ID, correlation)]
        try:
            with trio.move_on_after(deadline):
                await agent.channel.send(key=key, value=value, partition=partition, headers=request)
                await pending.done.wait()
        finally:
            self._waiting.pop(correlation, None)
        message = pending.message
        if message is None:
            if self._nursery is None:
                raise ClosedError(f"agent {agent.name!r}: the worker stopped before the reply came")
            raise AskTimeoutError(f"agent {agent.name!r} did not reply within {deadline:g}s")
        return _REPLY_SCHEMA.loads_value(
            message.value, topic=message.topic, partition=message.partition, offset=message.offset
        )

    async def gather(
        self,
        agent: Agent[Any],
        items: Sequence[tuple[Any, Any]],
        *,
        deadline: float,
    ) -> list[Any]:
        """Ask for every (key, value) concurrently; replies in input order."""
        results: list[Any] = [None] * len(items)
        limiter = trio.CapacityLimiter(MAX_IN_FLIGHT)

        async def one(index: int, key: Any, value: Any) -> None:
            async with limiter:
                results[index] = await self.ask(
                    agent, value, key=key, partition=None, headers=None, deadline=deadline
                )

        async with trio.open_nursery() as nursery:
            for index, (key, value) in enumerate(items):
                nursery.start_soon(one, index, key, value)
        return results


async def collect(values: Iterable[Any] | AsyncIterable[Any]) -> list[Any]:
    if isinstance(values, AsyncIterable):
        return [value async for value in values]
    return list(values)


async def chunked_replies(
    rpc: ReplyConsumer, agent: Agent[Any], items: list[tuple[Any, Any]], deadline: float
) -> AsyncIterator[Any]:
    for start in range(0, len(items), MAX_IN_FLIGHT):
        for reply in await rpc.gather(agent, items[start : start + MAX_IN_FLIGHT], deadline=deadline):
            yield reply
