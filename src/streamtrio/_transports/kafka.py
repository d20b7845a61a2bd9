"""The ``kafka://`` transport, on confluent-kafka (librdkafka).

Threads, per the architecture: each group consumer and each reader is owned
by one thread that makes every call on its confluent ``Consumer``
(:mod:`.kafka_consumer`); the producer is owned by its poll thread
(:mod:`.kafka_producer`). Each thread runs in a nursery owned by the
``open_*`` context manager that created it and ends, after closing its
client, when the context manager exits. Topic administration
(:mod:`.kafka_admin`) waits for the admin client's futures in worker threads.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import trio

from .._types import TopicSpec
from .base import BrokerWait, Consumer, Producer, QueueBound, Reader, RebalanceListener, Transport
from .kafka_admin import (
    KafkaAdmin,
    consumer_config,
    parse_bootstrap,
    producer_config,
    reader_config,
    reraise_unwrapped,
)
from .kafka_consumer import KafkaConsumer, KafkaReader
from .kafka_producer import KafkaProducer
from .watermarks import Watermarks

if TYPE_CHECKING:
    from .._settings import Settings

__all__ = ["KafkaTransport"]

log = logging.getLogger("streamtrio.kafka")

#: How long a closing consumer may spend handing its partitions back.
_MIN_LEAVE_TIMEOUT = 5.0
#: The least time librdkafka's close() is given, even past the deadline.
_MIN_CLOSE_TIME = 0.05


class KafkaTransport(Transport):
    """Producers, consumers and readers for ``kafka://host:port[;host2:port]``.

    Args:
        url: the broker URL.
        settings: the app settings; the ``broker_*``, ``consumer_*`` and
            ``producer_*`` settings become librdkafka options.

    Raises:
        ConfigurationError: the URL is not a ``kafka://`` URL.
    """

    def __init__(self, url: str, settings: Settings) -> None:
        super().__init__(url, settings)
        self.bootstrap_servers = parse_bootstrap(url)
        self._admin = KafkaAdmin(settings, self.bootstrap_servers)

    @property
    def connecting(self) -> BrokerWait | None:
        return self._admin.connecting

    @contextlib.asynccontextmanager
    async def open_producer(self, *, transactional_id: str | None = None) -> AsyncIterator[Producer]:
        """Open a producer; on exit it is flushed (within ``shutdown_timeout``) and closed.

        With ``transactional_id``, ``init_transactions`` has run when it is
        returned (fencing older producers with that id); on exit a transaction
        still open is aborted.

        Raises:
            TransactionError: ``init_transactions`` failed.
            BrokerUnavailableError: no answer within ``broker_request_timeout``.
            ConfigurationError: an unknown or invalid librdkafka option.
        """
        producer = KafkaProducer(
            producer_config(self.settings, self.bootstrap_servers, transactional_id=transactional_id),
            bootstrap=self.bootstrap_servers,
            request_timeout=self.settings.broker_request_timeout,
            close_timeout=self.settings.shutdown_timeout,
            bound=QueueBound(
                self.settings.producer_max_queued_bytes, self.settings.producer_max_queued_messages
            ),
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(producer._serve)
                try:
                    yield producer
                finally:
                    await producer._close()
        except BaseExceptionGroup as group:
            reraise_unwrapped(group)

    @contextlib.asynccontextmanager
    async def open_consumer(
        self,
        *,
        group_id: str,
        topics: Sequence[str],
        listener: RebalanceListener,
    ) -> AsyncIterator[Consumer]:
        """Join ``group_id``, subscribed to ``topics`` with range assignment.

        Returns once subscribed; partitions arrive later, through the
        listener, paused. On exit the listener's revoke is awaited and the
        offsets it returns committed (within ``rebalance_drain_timeout``),
        then the consumer leaves the group and closes.

        Raises:
            BrokerUnavailableError: no answer within ``broker_request_timeout``.
            ConfigurationError: an unknown or invalid librdkafka option.
        """
        config = consumer_config(self.settings, self.bootstrap_servers, group_id)
        watermarks = Watermarks()
        watermarks.install(config)
        consumer = KafkaConsumer(
            config,
            topics=list(topics),
            listener=listener,
            bootstrap=self.bootstrap_servers,
            request_timeout=self.settings.broker_request_timeout,
            max_batch=self.settings.consumer_max_batch,
        )
        consumer._watermarks = watermarks.get
        leave_timeout = max(_MIN_LEAVE_TIMEOUT, self.settings.rebalance_drain_timeout)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(consumer._serve, nursery)
                try:
                    yield consumer
                finally:
                    deadline = trio.current_time() + leave_timeout
                    close_by = consumer.close_by if consumer.close_by is not None else self.close_by
                    if close_by is not None:
                        deadline = min(deadline, close_by)
                    try:
                        with trio.move_on_at(deadline, shield=True) as scope:
                            await consumer._leave(deadline)
                        if scope.cancelled_caught:
                            log.warning(
                                "leaving group %r: the partitions were not handed back before the "
                                "deadline; their last offsets may not be committed",
                                group_id,
                            )
                    finally:
                        # Closing gets what is left until the deadline (at least a moment).
                        consumer._stop_soon(max(deadline - trio.current_time(), _MIN_CLOSE_TIME))
                        # Cancels a listener handler still running; the
                        # consumer thread itself is never abandoned.
                        nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            reraise_unwrapped(group)

    @contextlib.asynccontextmanager
    async def open_reader(self, *, prompt_end: bool = False) -> AsyncIterator[Reader]:
        """Open a manually assigned reader outside any group (never commits).

        Raises:
            BrokerUnavailableError: no answer within ``broker_request_timeout``.
            ConfigurationError: an unknown or invalid librdkafka option.
        """
        reader = KafkaReader(
            reader_config(self.settings, self.bootstrap_servers, prompt_end=prompt_end),
            bootstrap=self.bootstrap_servers,
            request_timeout=self.settings.broker_request_timeout,
            max_batch=self.settings.consumer_max_batch,
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(reader._serve, nursery)
                try:
                    yield reader
                finally:
                    reader._stop_soon(self.close_time_left(self.settings.broker_request_timeout))
        except BaseExceptionGroup as group:
            reraise_unwrapped(group)

    async def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        return await self._admin.create_topics(specs)

    async def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        return await self._admin.partition_counts(topics)

    async def probe(self, within: float) -> str | None:
        return await self._admin.probe(within)
