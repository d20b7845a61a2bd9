"""Dead letters: the raw message and its error, sent to ``<topic>-dlq`` (or ``dead_letter_topic``).

:class:`DeadLetters` is a worker component. A dead-letter topic is created
when the first letter for it is sent, not at start-up (an app whose agents
never fail makes none), with the partition count of the source topic the
broker reports, so a letter can keep its source partition's key placement.
Letters go through one task, in order; each is an output of its event (rule
5: the event is done once its letter is delivered; a failed letter stops the
worker with :class:`~streamtrio.DeadLetterError`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ._exceptions import DeadLetterError, ProducerError, StreamtrioError
from ._stream import Event, _current_event, current_event
from ._topic import Topic
from ._types import Headers, Message, RecordMetadata

if TYPE_CHECKING:
    from ._app import App
    from ._worker import Worker

__all__ = ["DeadLetters"]

log = logging.getLogger(__name__)

Delivered = Callable[[RecordMetadata | None, ProducerError | None], None]


@dataclass(frozen=True, slots=True)
class _Letter:
    topic: str
    message: Message
    headers: Headers
    delivered: Delivered
    #: the event the letter is sent for (the current event while it is produced)
    event: Event[Any] | None


class DeadLetters:
    """Worker component sending dead letters, creating each dead-letter topic when first needed."""

    name = "dead-letters"

    def __init__(self, app: App) -> None:
        self.app = app
        self._worker: Worker | None = None
        self._letters: trio.MemorySendChannel[_Letter] | None = None
        #: dead-letter topics known to exist (created, or declared by the app)
        self._ready: set[str] = set()

    def attach(self, worker: Worker) -> None:
        self._worker = worker
        self._ready = {n for t in self.app._topics if t.pattern is None for n in t.topics}

    async def serve(self, worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
        send, receive = trio.open_memory_channel[_Letter](math.inf)
        self._letters = send
        try:
            task_status.started()
            async with receive:
                async for letter in receive:
                    await self._deliver(letter)
        finally:
            self._letters = None

    def send_nowait(
        self,
        topic: str,
        message: Message,
        headers: Headers,
        delivered: Delivered,
        *,
        event: Event[Any] | None = None,
    ) -> None:
        """Queue a letter for ``event`` (default: the event being processed), sent in
        order once its topic exists."""
        letter = _Letter(topic, message, headers, delivered, event if event is not None else current_event())
        letters = self._letters
        if letters is None:
            self._produce(letter)  # no worker (a test helper's producer): the topic is auto-created
            return
        letters.send_nowait(letter)

    async def _deliver(self, letter: _Letter) -> None:
        if letter.topic not in self._ready:
            try:
                await self._create(letter.topic, letter.message.topic)
            except StreamtrioError as exc:
                failure = DeadLetterError(f"cannot create dead-letter topic {letter.topic!r}: {exc}")
                letter.delivered(None, failure)
                return
            self._ready.add(letter.topic)
        self._produce(letter)

    async def _create(self, name: str, source: str) -> None:
        transport = self.app._transport()
        counts = await transport.partition_counts([source])
        partitions = counts.get(source)
        topic: Topic[bytes] = Topic(
            self.app, topics=[name], key_serializer="raw", value_serializer="raw", partitions=partitions
        )
        created = await transport.create_topics([topic.spec(name)])
        if created:
            log.info("created dead-letter topic %s (%s partitions, as %s)", name, partitions, source)

    def _produce(self, letter: _Letter) -> None:
        message = letter.message
        # Produced on behalf of the letter's event, as if from its actor.
        token = _current_event.set(letter.event)
        try:
            self.app._require_producer().send_nowait(
                letter.topic,
                message.key,
                message.value,
                partition=None,
                timestamp=message.timestamp,
                headers=letter.headers,
                on_delivery=letter.delivered,
            )
        finally:
            _current_event.reset(token)

    def __repr__(self) -> str:
        return f"<DeadLetters ready={sorted(self._ready)}>"
