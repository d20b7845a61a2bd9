"""The small interface every transport implements (Kafka and memory).

The rest of streamtrio talks only to these classes. Everything here is called
from trio, in the worker's trio run; an implementation that needs threads
(confluent-kafka) keeps them private and bridges with ``trio.from_thread`` and
the run's trio token.

Offsets follow Kafka's convention: a committed offset is the offset of the
*next* message to read, so committing ``n`` means "everything below ``n`` is done".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from .._exceptions import ProducerError, TransportError
from .._types import TP, Headers, Message, RecordMetadata, TopicSpec

if TYPE_CHECKING:
    from .._settings import Settings

__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "BatchDeliveryCallback",
    "Consumer",
    "DeliveryCallback",
    "Producer",
    "ProducerStatistics",
    "QueueBound",
    "Reader",
    "ReaderBatch",
    "RebalanceListener",
    "Transport",
]

#: Start reading a partition at its first available offset.
OFFSET_BEGINNING = -2
#: Start reading a partition at its end (only new messages).
OFFSET_END = -1

#: Called in the trio run when a message is delivered (metadata) or failed (error).
DeliveryCallback = Callable[[RecordMetadata | None, ProducerError | None], None]

#: Called once in the trio run when every message of a batch
#: (:meth:`Producer.send_batch_nowait`) is delivered or failed, with the number
#: of messages, the highest offset delivered (-1: none) and the first error
#: (``None``: every message was delivered).
BatchDeliveryCallback = Callable[[int, int, ProducerError | None], None]


class _BatchCount:
    """Turns one-message delivery reports into one report for a whole batch."""

    __slots__ = ("count", "error", "left", "offset", "on_delivery")

    def __init__(self, count: int, on_delivery: BatchDeliveryCallback) -> None:
        self.count = count
        self.left = count
        self.offset = -1
        self.error: ProducerError | None = None
        self.on_delivery = on_delivery

    def delivered(self, metadata: RecordMetadata | None, error: ProducerError | None) -> None:
        if error is not None:
            if self.error is None:
                self.error = error
        elif metadata is not None and metadata.offset > self.offset:
            self.offset = metadata.offset
        self.left -= 1
        if not self.left:
            self.on_delivery(self.count, self.offset, self.error)


@dataclass(frozen=True, slots=True)
class ProducerStatistics:
    """A snapshot of a producer's queues.

    Attributes:
        queued: messages handed to the producer and not yet delivered or failed.
        delivered: messages delivered since the producer opened.
        failed: messages that failed since the producer opened.
    """

    queued: int
    delivered: int
    failed: int


class QueueBound:
    """Bounds the bytes and messages a producer holds undelivered (backpressure).

    The producer adds each message when it is queued and removes it when its
    delivery is reported. Past ``max_bytes`` or ``max_messages`` the bound is
    *full*: ``on_full`` is called at once (the worker stops handing out
    events, so agents stop producing) and an awaited send waits; once the
    queue has drained to half the bound, ``on_room`` is called. A single
    message larger than the bound is still accepted.
    """

    __slots__ = ("_lot", "bytes", "is_full", "max_bytes", "max_messages", "messages", "on_full", "on_room")

    def __init__(self, max_bytes: int, max_messages: int) -> None:
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.bytes = 0
        self.messages = 0
        self.is_full = False
        self.on_full: Callable[[], None] | None = None
        self.on_room: Callable[[], None] | None = None
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def full(self) -> bool:
        return self.is_full

    def add(self, size: int, count: int = 1) -> None:
        self.bytes += size
        self.messages += count
        if not self.is_full and (self.bytes > self.max_bytes or self.messages > self.max_messages):
            self.is_full = True
            if self.on_full is not None:
                self.on_full()

    def remove(self, size: int, count: int) -> None:
        self.bytes -= size
        self.messages -= count
        if self.is_full and self.bytes <= self.max_bytes // 2 and self.messages <= self.max_messages // 2:
            self.is_full = False
            self._lot.unpark_all()
            if self.on_room is not None:
                self.on_room()

    async def wait_for_room(self) -> None:
        """Return at once unless the bound is full; then wait until it drained to half."""
        while self.is_full:
            await self._lot.park()


class Producer(ABC):
    """Sends messages. Obtained from :meth:`Transport.open_producer`.

    Attributes:
        bound: the bytes and messages held undelivered, and their limits.
        close_by: trio time by which closing must be over (set by a stopping
            worker; ``None``: the transport's own close timeout applies).
            What is not delivered by then is failed and counted.
        undelivered_at_close: messages still undelivered when closing ran out
            of time (they were failed).
    """

    bound: QueueBound
    close_by: float | None = None
    undelivered_at_close: int = 0

    @abstractmethod
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
        """Queue one message; never blocks and never drops.

        When ``partition`` is ``None`` the partition is chosen from the key
        by the ``partitioner`` setting (Kafka's murmur2 by default; random
        for a ``None`` key), exactly where a client with that partitioner
        would put it. ``on_delivery`` is called later, in
        the trio run, with the metadata or the error.

        Raises:
            ClosedError: the producer is closed.
        """

    def send_batch_nowait(
        self,
        topic: str,
        partition: int,
        records: Sequence[tuple[bytes | None, bytes | None]],
        *,
        on_delivery: BatchDeliveryCallback | None = None,
    ) -> None:
        """Queue ``(key, value)`` records for one partition; never blocks and never drops.

        For many records at once (a table's changelog at a commit): one call
        and, with ``on_delivery``, one report for the whole batch, called once
        in the trio run when every record is delivered or failed. The records
        get the time of sending as their timestamp and no headers. Batches and
        single messages are sent in the order they were queued; *within* a
        batch, records may land out of order when the client's queue
        overflows, so give a batch distinct keys. An empty batch sends
        nothing and is never reported.

        This default sends each record with :meth:`send_nowait`; a transport
        overrides it when it has something cheaper.

        Raises:
            ClosedError: the producer is closed.
        """
        if not records:
            return
        callback = _BatchCount(len(records), on_delivery).delivered if on_delivery is not None else None
        send = self.send_nowait
        for key, value in records:
            send(topic, key, value, partition=partition, on_delivery=callback)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        timestamp: float | None = None,
        headers: Headers | None = None,
    ) -> RecordMetadata:
        """Send one message and wait for its delivery report.

        Raises:
            ProducerError: the message could not be delivered.
        """
        done = trio.Event()
        outcome: list[RecordMetadata | ProducerError | None] = [None]

        def _delivered(md: RecordMetadata | None, err: ProducerError | None) -> None:
            outcome[0] = err if err is not None else md
            done.set()

        self.send_nowait(
            topic,
            key,
            value,
            partition=partition,
            timestamp=timestamp,
            headers=headers,
            on_delivery=_delivered,
        )
        await done.wait()
        result = outcome[0]
        if isinstance(result, ProducerError):
            raise result
        assert result is not None
        return result

    async def discard_queued(self, tps: Collection[TP]) -> int:
        """Drop the messages for these partitions that are not delivered yet; every
        other message is sent as usual. Returns how many were dropped.

        A worker that lost partitions calls this for their changelog, so that
        nothing it wrote for them lands after their new owner's writes.
        """
        return 0

    @abstractmethod
    async def flush(self) -> None:
        """Wait until every message queued so far is delivered or failed.

        Raises:
            ProducerError: a message queued before the call failed and was not
                reported to an ``on_delivery`` callback (it is raised once).
        """

    @abstractmethod
    def partition_count(self, topic: str) -> int | None:
        """The number of partitions of ``topic`` as known to the producer, if known."""

    @abstractmethod
    def statistics(self) -> ProducerStatistics:
        """A snapshot of the producer's queues."""

    # -- transactions (producers opened with a transactional id) -------------
    #
    # A transactional producer is always in a transaction from its caller's
    # point of view: ``open_producer(transactional_id=...)`` initialises it
    # (fencing any older producer with the same id and aborting its open
    # transaction), and the first send or ``send_offsets_to_transaction``
    # after the open, a commit or an abort begins the next one. So a message
    # sent while a commit is in progress is never "outside a transaction": it
    # lands in the next one. The default implementations refuse.

    @property
    def transactional_id(self) -> str | None:
        """The transactional id, or ``None`` for a plain producer."""
        return None

    async def begin_transaction(self) -> None:
        """Begin a transaction now (optional: sends begin one when none is open).

        Raises:
            ProducerFencedError: a newer producer with the same transactional id exists.
            TransportError: this is not a transactional producer.
        """
        raise TransportError(f"{type(self).__name__} is not transactional")

    async def send_offsets_to_transaction(self, offsets: Mapping[TP, int], group_metadata: object) -> None:
        """Add group offsets to the transaction: they are committed if and only if it commits.

        Args:
            offsets: next offset to read, per source partition.
            group_metadata: :meth:`Consumer.group_metadata` of the consumer that read them.

        Raises:
            ProducerFencedError: a newer producer with the same transactional id exists.
            TransactionError: the group refused the offsets (the transaction must be aborted).
        """
        raise TransportError(f"{type(self).__name__} is not transactional")

    async def commit_transaction(self) -> None:
        """Deliver every message of the open transaction, then commit it (no-op if none is open).

        Raises:
            ProducerFencedError: a newer producer with the same transactional id
                exists; nothing was committed.
            TransactionError: the transaction could not be committed; abort it.
        """
        raise TransportError(f"{type(self).__name__} is not transactional")

    async def abort_transaction(self) -> None:
        """Abort the open transaction (no-op if none is open): its messages are
        never visible to ``read_committed`` readers and its offsets are dropped.

        Raises:
            ProducerFencedError: a newer producer with the same transactional id exists.
            TransactionError: the producer is unusable (a fatal error).
        """
        raise TransportError(f"{type(self).__name__} is not transactional")


class RebalanceListener(Protocol):
    """What the worker does when the group moves partitions.

    The transport awaits these before the rebalance completes.
    """

    async def on_partitions_revoked(self, revoked: frozenset[TP]) -> Mapping[TP, int]:
        """Partitions are about to be taken away.

        The listener stops feeding them, lets in-flight events finish, and
        returns the offsets to commit for them; the transport commits those
        before giving the partitions up.
        """
        ...

    async def on_partitions_assigned(self, assigned: frozenset[TP]) -> None:
        """Partitions were assigned. They start *paused*: the listener resumes
        them (:meth:`Consumer.resume_nowait`) once their tables are recovered."""
        ...


def lost_handler(listener: RebalanceListener) -> Callable[[frozenset[TP]], Awaitable[object]]:
    """What to await when partitions are *lost* (taken away without a handover).

    A listener with ``on_partitions_lost`` (the worker) writes nothing more for
    them; a plain listener gets ``on_partitions_revoked``, and the transport
    commits nothing it returns.
    """
    handler: Callable[[frozenset[TP]], Awaitable[object]] | None = getattr(
        listener, "on_partitions_lost", None
    )
    return handler if handler is not None else listener.on_partitions_revoked


class Consumer(ABC):
    """A group member reading the app's source topics.

    Obtained from :meth:`Transport.open_consumer`, already subscribed.

    Attributes:
        close_by: trio time by which leaving the group and closing must be
            over (set by a stopping worker; ``None``: the transport's own
            leave timeout applies).
    """

    close_by: float | None = None

    #: Gives the high watermarks the client last saw (set by a transport that
    #: learns them from its client's statistics).
    _watermarks: Callable[[], Mapping[TP, int]] | None = None

    def high_watermarks(self) -> dict[TP, int]:
        """The end offset (high watermark) of each assigned partition, as last seen.

        Never a request to the broker: a transport reports what its client
        already knows (librdkafka's statistics for ``kafka://``). A partition
        whose end is not known yet is missing.
        """
        source = self._watermarks
        return dict(source()) if source is not None else {}

    @abstractmethod
    async def getmany(self) -> list[Message]:
        """Wait for the next batch of messages.

        Rebalance callbacks are awaited while ``getmany()`` is in progress; a
        rebalance only advances while the member keeps calling it, and a
        listener must not call it.

        Returns a non-empty list of messages from assigned, unpaused
        partitions, in offset order within each partition. Bound the wait
        with a cancel scope; cancelling loses no message.
        """

    @abstractmethod
    async def subscribe(self, topics: Sequence[str]) -> None:
        """Replace the subscription (topic names, or regexes starting with ``^``).

        The group rebalances; the listener is called as for any rebalance.
        """

    @abstractmethod
    def pause_nowait(self, tps: Collection[TP]) -> None:
        """Stop fetching from these partitions (takes effect shortly)."""

    @abstractmethod
    def resume_nowait(self, tps: Collection[TP]) -> None:
        """Fetch from these partitions again."""

    def commit_token(self) -> object:
        """An opaque mark of the partitions' ownership now: read it before reading the
        offsets to commit, and pass it to :meth:`commit`, which then refuses to
        commit if partitions were revoked or lost in between (``None``: no check)."""
        return None

    @abstractmethod
    async def commit(
        self, offsets: Mapping[TP, int], *, answer_within: float | None = None, token: object = None
    ) -> None:
        """Commit these offsets for the group and wait for the broker's answer.

        Offsets of partitions no longer assigned to this member are not
        committed (they belong to whoever owns them now).

        Args:
            offsets: the next offset to read, per partition.
            answer_within: seconds to wait for the answer (default: the
                transport's request timeout). A thread waits for it, so a
                cancel scope cannot bound it.
            token: from :meth:`commit_token` when the offsets were read.

        Raises:
            CommitError: the broker refused, or did not answer in time
                (``retriable`` says whether trying again may help).
        """

    @abstractmethod
    async def committed(self, tps: Collection[TP]) -> dict[TP, int | None]:
        """The group's committed offsets for these partitions (``None``: none yet)."""

    @abstractmethod
    def assignment(self) -> frozenset[TP]:
        """The partitions currently assigned to this member."""

    async def group_metadata(self) -> object:
        """The consumer's group metadata (group, member, generation), an opaque value
        for :meth:`Producer.send_offsets_to_transaction`.

        Raises:
            TransportError: the transport has no transactions.
        """
        raise TransportError(f"{type(self).__name__} has no group metadata for transactions")


@dataclass(frozen=True, slots=True)
class ReaderBatch:
    """What a :class:`Reader` returns.

    Attributes:
        messages: the fetched messages, in offset order within each partition.
        eof: partitions whose end was reached after these messages.
    """

    messages: list[Message]
    eof: frozenset[TP]


class Reader(ABC):
    """A consumer outside any group, assigned partitions by hand.

    Used to replay changelogs, keep standbys and global tables warm, and
    follow internal topics. Nothing is committed.
    """

    @abstractmethod
    async def end_offsets(self, tps: Collection[TP]) -> dict[TP, int]:
        """The end offset (high watermark) of each partition, asked of the broker now.

        Raises:
            TransportError: the broker did not answer in time.
        """

    @abstractmethod
    def assign_nowait(self, offsets: Mapping[TP, int]) -> None:
        """Start reading each partition at the given offset (or OFFSET_BEGINNING/END)."""

    @abstractmethod
    def unassign_nowait(self, tps: Iterable[TP]) -> None:
        """Stop reading these partitions."""

    @abstractmethod
    async def getmany(self) -> ReaderBatch:
        """Wait for messages or end-of-partition events (never an empty batch).

        Bound the wait with a cancel scope; cancelling loses no message.

        An end-of-partition event is reported each time a partition's end is
        reached (again after new messages arrived).
        """


@dataclass(frozen=True, slots=True)
class BrokerWait:
    """A wait for a broker that does not answer yet (shown by the start-up display).

    Attributes:
        url: the broker URL waited for (``kafka://host:port``).
        attempt: the attempt running now (1 for the first).
        since: ``time.monotonic()`` when the wait began.
    """

    url: str
    attempt: int
    since: float


class Transport(ABC):
    """Creates producers, consumers and readers for one broker URL.

    Attributes:
        close_by: trio time by which every client opened here must be closed
            (set by a stopping worker; ``None``: each uses its own timeout).
    """

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.close_by: float | None = None

    @property
    def connecting(self) -> BrokerWait | None:
        """The wait for the broker while the first request has no answer yet (else ``None``)."""
        return None

    def close_time_left(self, default: float) -> float:
        """Seconds a closing client may take: ``default``, or less before ``close_by``."""
        if self.close_by is None:
            return default
        return max(min(default, self.close_by - trio.current_time()), 0.0)

    @abstractmethod
    def open_producer(self, *, transactional_id: str | None = None) -> AbstractAsyncContextManager[Producer]:
        """Open a producer; on exit it is flushed (bounded) and closed.

        With a ``transactional_id`` the producer is transactional and already
        initialised (an older producer with the same id is fenced and its open
        transaction aborted); on exit a transaction still open is aborted.
        """

    @abstractmethod
    def open_consumer(
        self,
        *,
        group_id: str,
        topics: Sequence[str],
        listener: RebalanceListener,
    ) -> AbstractAsyncContextManager[Consumer]:
        """Join ``group_id`` subscribed to ``topics`` with range assignment.

        On exit the consumer leaves the group (calling the listener's revoke
        first, so that offsets are committed) and is closed.
        """

    @abstractmethod
    def open_reader(self, *, prompt_end: bool = False) -> AbstractAsyncContextManager[Reader]:
        """Open a manually assigned reader outside any group.

        ``prompt_end``: for a reader that stops at the end of its partitions
        (table recovery), report each end within milliseconds instead of after
        the broker's long-poll wait, at the cost of more fetches while idle.
        """

    @abstractmethod
    async def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        """Create the topics that do not exist yet; never alter existing ones.

        Returns:
            The names of the topics that were created.

        Raises:
            TopicError: a topic could not be created.
            BrokerUnavailableError: the broker could not be reached in time.
        """

    async def probe(self, within: float) -> str | None:
        """Ask the broker a cheap question; ``None`` if it answered within ``within``
        seconds, else what went wrong (the broker watch reports it). An in-process
        broker always answers."""
        await trio.lowlevel.checkpoint()
        return None

    @abstractmethod
    async def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        """Partition counts of the existing topics among ``topics`` (missing ones absent).

        Raises:
            BrokerUnavailableError: the broker could not be reached in time.
        """
