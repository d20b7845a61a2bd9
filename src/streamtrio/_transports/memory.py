"""The ``memory://`` transport: an in-process broker that behaves like Kafka.

Used by the embedded demo and most tests, so it is faithful where the rest of
streamtrio can tell the difference: append-only partitions with offsets from 0,
keyed messages placed by the ``partitioner`` setting's function (Kafka's murmur2
by default, exactly as librdkafka places them), auto-created topics,
consumer groups with the RANGE assignor and eager rebalancing, committed
offsets, pause/resume, and readers with end-of-partition events.

Brokers. ``memory://`` and ``memory://NAME`` name a process-global
:class:`MemoryBroker`; every transport opened with the same URL shares its
topics and groups. :meth:`MemoryBroker.reset_all` forgets every broker (test
isolation). A broker holds no trio object bound to a run: a waiting consumer
creates its wake-up ``trio.Event`` when it starts waiting and drops it when it
wakes, so sequential trio runs in one process share a broker safely. It is not
thread-safe: use a broker from one trio run at a time.

Where rebalance work runs. As in librdkafka, where rebalance callbacks fire
inside ``consume()``, a member's listener runs *inside its own*
:meth:`MemoryConsumer.getmany` call, in the task that called it. When a member
joins or leaves:

1. The group marks a rebalance pending and flags every member that holds
   partitions. ``open_consumer`` returns at once; nothing is awaited there.
2. Each flagged member, at its next ``getmany()``, awaits
   ``on_partitions_revoked(its partitions)``, commits the offsets the listener
   returned, and gives the partitions up.
3. When no member holds partitions any more, the group computes the RANGE
   assignment of the current members and wakes them; each member, in its next
   ``getmany()``, installs its partitions *paused* at the group's committed
   offsets (or ``consumer_auto_offset_reset``) and awaits
   ``on_partitions_assigned``, which resumes them.

So a joining member's ``getmany()`` waits until the others have revoked, every
callback runs in the task that owns the consumer (no callback ever runs in
another member's task or inside ``open_consumer`` of someone else), and the
order of events is deterministic. As with Kafka, a member that stops calling
``getmany()`` holds up a rebalance; a consumer whose fetch loop is not running
must leave the group. Leaving (exiting ``open_consumer``) revokes through the
listener and commits under a bounded shielded deadline, then removes the
member and rebalances the others.

Timestamps are kept at millisecond precision, as Kafka stores them.

Transactions (:mod:`.memory_txn`): ``open_producer(transactional_id=...)``
gives a transactional producer. Its messages are appended at once but stay
invisible to every consumer and reader (all ``read_committed``) until the
transaction commits, together with the group offsets it carries; aborted
ones are never visible. A newer producer with the same id fences the older.
:meth:`MemoryProducer.kill` and :meth:`MemoryConsumer.kill` simulate a
``kill -9`` of the process holding them.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .._exceptions import (
    ClosedError,
    CommitError,
    ProducerError,
    ProducerFencedError,
    TopicError,
    TransactionError,
    TransportError,
)
from .._partitioner import partitioner_named
from .._types import TP, Headers, Message, RecordMetadata, TopicSpec
from .base import (
    OFFSET_BEGINNING,
    OFFSET_END,
    BatchDeliveryCallback,
    Consumer,
    DeliveryCallback,
    Producer,
    ProducerStatistics,
    QueueBound,
    Reader,
    ReaderBatch,
    RebalanceListener,
    Transport,
)
from .memory_txn import MemoryGroupMetadata, MemoryTransaction, TransactionCoordinator

if TYPE_CHECKING:
    from .._settings import Settings

__all__ = [
    "MemoryBroker",
    "MemoryConsumer",
    "MemoryProducer",
    "MemoryReader",
    "MemoryTransport",
]

logger = logging.getLogger(__name__)


class _Waiter:
    """Something that sleeps until a partition it follows gets a message."""

    def __init__(self) -> None:
        self._event: trio.Event | None = None

    def _wake(self) -> None:
        event = self._event
        if event is not None:
            event.set()

    async def _sleep(self) -> None:
        # Created per wait, so no Event outlives the trio run that awaited it.
        self._event = event = trio.Event()
        try:
            await event.wait()
        finally:
            self._event = None


class _Partition:
    __slots__ = ("aborted", "log", "open_txns", "waiters")

    def __init__(self) -> None:
        self.log: list[Message] = []
        self.waiters: set[_Waiter] = set()
        #: open transactions with messages here -> their first offset
        self.open_txns: dict[MemoryTransaction, int] = {}
        #: offsets of messages of aborted transactions
        self.aborted: set[int] = set()

    def stable_end(self) -> int:
        """The last stable offset: ``read_committed`` readers stop before it."""
        open_txns = self.open_txns
        return min(open_txns.values()) if open_txns else len(self.log)

    def wake(self) -> None:
        for waiter in self.waiters:
            waiter._wake()


@dataclass(slots=True)
class _Topic:
    name: str
    partitions: list[_Partition]
    config: dict[str, str]
    #: while not None, messages sent to the topic wait here (a fault: see ``block_topic``)
    blocked: list[tuple[MemoryProducer, tuple[Any, ...]]] | None = None


class _Group:
    """A consumer group: members, the pending-rebalance flag, committed offsets."""

    def __init__(self, broker: MemoryBroker, group_id: str) -> None:
        self.broker = broker
        self.group_id = group_id
        self.members: dict[str, MemoryConsumer] = {}
        self.committed: dict[TP, int] = {}
        self.generation = 0
        self.rebalancing = False
        #: commits still to refuse, and whether as retriable (a fault: see ``fail_commits``)
        self.failing_commits: tuple[int, bool] = (0, True)

    def start_rebalance(self) -> None:
        self.rebalancing = True
        for member in self.members.values():
            member._incoming = None  # an assignment not yet installed is void
            if member._assignment:
                member._must_revoke = True
            member._wake()
        self.maybe_complete_rebalance()

    def maybe_complete_rebalance(self) -> None:
        if not self.rebalancing or any(m._assignment for m in self.members.values()):
            return
        self.rebalancing = False
        self.generation += 1
        assignment = self.range_assignment()
        for member_id, member in self.members.items():
            member._incoming = assignment[member_id]
            member._wake()

    def range_assignment(self) -> dict[str, frozenset[TP]]:
        """Kafka's RangeAssignor: per topic, partitions in order over sorted members."""
        result: dict[str, set[TP]] = {member_id: set() for member_id in self.members}
        # Topics not created yet are skipped: their creation triggers a rebalance.
        topics = sorted(t for t in self.broker._topics if any(m.subscribes(t) for m in self.members.values()))
        for name in topics:
            topic = self.broker._topics[name]
            subscribers = sorted(mid for mid, m in self.members.items() if m.subscribes(name))
            per_member, extra = divmod(len(topic.partitions), len(subscribers))
            start = 0
            for i, member_id in enumerate(subscribers):
                count = per_member + (1 if i < extra else 0)
                result[member_id].update(TP(name, p) for p in range(start, start + count))
                start += count
        return {member_id: frozenset(tps) for member_id, tps in result.items()}


class MemoryBroker:
    """One in-process broker: topics, partition logs and consumer groups.

    Obtain one with :meth:`get` (what ``memory://NAME`` does); the inspection
    methods (:meth:`messages`, :meth:`committed`, :meth:`assignments`) are for
    tests and the embedded demo.
    """

    _registry: dict[str, MemoryBroker] = {}

    def __init__(self, name: str, *, default_partitions: int = 8) -> None:
        self.name = name
        self.default_partitions = default_partitions
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, _Group] = {}
        self._member_seq = 0
        self._coordinator = TransactionCoordinator()
        #: Kafka's ``message.max.bytes`` (its default): a larger key + value fails delivery
        self.max_message_bytes = 1_048_588

    @classmethod
    def get(cls, name: str = "") -> MemoryBroker:
        """The process-global broker called ``name`` (created on first use)."""
        broker = cls._registry.get(name)
        if broker is None:
            broker = cls._registry[name] = cls(name)
        return broker

    @classmethod
    def reset_all(cls) -> None:
        """Forget every broker (their topics, messages, groups and offsets)."""
        cls._registry.clear()

    # -- topics ---------------------------------------------------------------

    def create_topic(self, name: str, partitions: int, config: Mapping[str, str] | None = None) -> bool:
        """Create ``name`` unless it exists. Returns whether it was created.

        Raises:
            TopicError: the name is empty or ``partitions`` is less than 1.
        """
        if name in self._topics:
            return False
        if not name or partitions < 1:
            raise TopicError(f"cannot create topic {name!r} with {partitions} partitions")
        self._topics[name] = _Topic(name, [_Partition() for _ in range(partitions)], dict(config or {}))
        for group in self._groups.values():
            if any(m.subscribes(name) for m in group.members.values()):
                group.start_rebalance()  # Kafka: a metadata change makes members rejoin
        return True

    def _append(
        self,
        topic: _Topic,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        timestamp: float | None,
        headers: Headers | None,
    ) -> Message:
        part = topic.partitions[partition]
        log = part.log
        # Kafka keeps millisecond timestamps.
        ts = math.floor((time.time() if timestamp is None else timestamp) * 1000) / 1000
        message = Message(
            topic.name,
            partition,
            len(log),
            key,
            value,
            ts,
            None if headers is None else list(headers),
        )
        log.append(message)
        if part.waiters:
            for waiter in part.waiters:
                waiter._wake()
        return message

    def _append_many(
        self, topic: _Topic, partition: int, records: Sequence[tuple[bytes | None, bytes | None]]
    ) -> int:
        """Append ``records`` to one partition (with one timestamp); returns the last offset."""
        part = topic.partitions[partition]
        log = part.log
        ts = math.floor(time.time() * 1000) / 1000
        name = topic.name
        offset = len(log)
        for key, value in records:
            log.append(Message(name, partition, offset, key, value, ts, None))
            offset += 1
        if part.waiters:
            for waiter in part.waiters:
                waiter._wake()
        return offset - 1

    # -- faults -----------------------------------------------------------------

    def block_topic(self, name: str) -> None:
        """Make ``name`` unwritable, as a stalled or unreachable leader would be:
        messages sent to it stay undelivered (producers hold them) until
        :meth:`unblock_topic`."""
        self._topics[name].blocked = self._topics[name].blocked or []

    def fail_commits(self, group_id: str, times: int, *, retriable: bool = True) -> None:
        """Refuse the next ``times`` offset commits of ``group_id``, as a moving group
        coordinator (``retriable``) or a broken group (not retriable) would."""
        self._group(group_id).failing_commits = (times, retriable)

    def unblock_topic(self, name: str) -> None:
        """Deliver what waited for ``name`` and accept writes again."""
        topic = self._topics[name]
        waiting, topic.blocked = topic.blocked or [], None
        for producer, args in waiting:
            producer._unblocked(*args)

    def partition_count(self, topic: str) -> int | None:
        """The number of partitions of ``topic``, or ``None`` if it does not exist."""
        t = self._topics.get(topic)
        return None if t is None else len(t.partitions)

    def topics(self) -> dict[str, int]:
        """Every topic with its partition count."""
        return {name: len(t.partitions) for name, t in self._topics.items()}

    def messages(self, topic: str, partition: int) -> list[Message]:
        """The messages stored in one partition, in offset order.

        These are the stored objects, the same ones consumers receive: read-only.
        """
        return list(self._partition(TP(topic, partition)).log)

    def committed_messages(self, topic: str, partition: int) -> list[Message]:
        """What a ``read_committed`` reader sees of one partition: the messages below
        the last stable offset, without those of aborted transactions."""
        part = self._partition(TP(topic, partition))
        aborted = part.aborted
        return [m for m in part.log[: part.stable_end()] if m.offset not in aborted]

    def open_transactions(self) -> list[str]:
        """The transactional ids that have a transaction open now."""
        return self._coordinator.open_transactions()

    def end_offset(self, tp: TP) -> int:
        """The offset the next message appended to ``tp`` will get."""
        return len(self._partition(tp).log)

    def _partition(self, tp: TP) -> _Partition:
        topic = self._topics.get(tp.topic)
        if topic is None or not 0 <= tp.partition < len(topic.partitions):
            raise TopicError(f"unknown topic partition {tp} on memory broker {self.name!r}")
        return topic.partitions[tp.partition]

    # -- groups ---------------------------------------------------------------

    def committed(self, group_id: str) -> dict[TP, int]:
        """The committed offsets of a group (empty for an unknown group)."""
        group = self._groups.get(group_id)
        return {} if group is None else dict(group.committed)

    def assignments(self, group_id: str) -> dict[str, frozenset[TP]]:
        """Member id -> installed assignment, for every member of the group."""
        group = self._groups.get(group_id)
        members = {} if group is None else group.members
        return {member_id: m._assignment for member_id, m in members.items()}

    def _group(self, group_id: str) -> _Group:
        group = self._groups.get(group_id)
        if group is None:
            group = self._groups[group_id] = _Group(self, group_id)
        return group

    def _next_member_id(self, client_id: str) -> str:
        # Zero-padded so that the RANGE assignor's sort order is join order.
        self._member_seq += 1
        return f"{client_id}-{self._member_seq:08d}"


def _broker_name(url: str) -> str:
    if not url.startswith("memory://"):
        raise TransportError(f"not a memory:// URL: {url!r}")
    return url[len("memory://") :].strip("/")


class MemoryTransport(Transport):
    """The ``memory://`` transport over the process-global broker the URL names."""

    def __init__(self, url: str, settings: Settings) -> None:
        super().__init__(url, settings)
        self.broker = MemoryBroker.get(_broker_name(url))

    @asynccontextmanager
    async def open_producer(self, *, transactional_id: str | None = None) -> AsyncIterator[MemoryProducer]:
        producer = MemoryProducer(self.broker, self.settings, trio.lowlevel.current_trio_token())
        if transactional_id is not None:
            producer._init_transactions(transactional_id)
        try:
            yield producer
            # Not on error exits: the messages are stored already, and a
            # delivery error must not mask the exception that ended the block.
            deadline = trio.current_time() + self.settings.shutdown_timeout
            if producer.close_by is not None:
                deadline = min(deadline, producer.close_by)
            with trio.move_on_at(deadline, shield=True) as scope:
                try:
                    if not producer._killed:
                        await producer.flush()
                except ProducerError as exc:
                    if transactional_id is None:
                        raise
                    # What is left belongs to a transaction that is aborted below.
                    logger.warning("transactional producer %r closed: %s", transactional_id, exc)
            if scope.cancelled_caught:
                producer.undelivered_at_close = producer.statistics().queued
                logger.warning(
                    "producer closing with %d message(s) undelivered before the deadline",
                    producer.undelivered_at_close,
                )
        finally:
            producer._close_transaction()
            producer._closed = True

    @asynccontextmanager
    async def open_consumer(
        self, *, group_id: str, topics: Sequence[str], listener: RebalanceListener
    ) -> AsyncIterator[MemoryConsumer]:
        if not topics:
            raise ValueError("open_consumer needs at least one topic")
        consumer = MemoryConsumer(self.broker, self.settings, group_id, topics, listener)
        consumer._join()
        try:
            yield consumer
        finally:
            await consumer._leave()

    @asynccontextmanager
    async def open_reader(self, *, prompt_end: bool = False) -> AsyncIterator[MemoryReader]:
        reader = MemoryReader(self.broker, self.settings)
        try:
            yield reader
        finally:
            reader.unassign_nowait(list(reader._positions))
            reader._closed = True

    async def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        await trio.lowlevel.checkpoint()
        return [s.name for s in specs if self.broker.create_topic(s.name, s.partitions, s.config)]

    async def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        counts = {t: self.broker.partition_count(t) for t in topics}
        return {t: n for t, n in counts.items() if n is not None}


class MemoryProducer(Producer):
    """Appends at once; delivery reports follow soon after in the trio run."""

    def __init__(self, broker: MemoryBroker, settings: Settings, token: trio.lowlevel.TrioToken):
        self._broker = broker
        self._settings = settings
        self._partitioner = partitioner_named(settings.partitioner)
        self._token = token
        self._closed = False
        # Pending reports as two parallel queues: no tuple per message.
        self._report_callbacks: deque[DeliveryCallback | None] = deque()
        self._report_outcomes: deque[Message | ProducerError] = deque()
        # (callback, messages, last offset) of whole batches appended.
        self._batch_reports: list[tuple[BatchDeliveryCallback, int, int]] = []
        self._report_scheduled = False
        self.bound = QueueBound(settings.producer_max_queued_bytes, settings.producer_max_queued_messages)
        self._reportable_bytes = 0  # of messages appended or failed, not yet reported
        self._held = 0  # messages waiting for a blocked topic
        self._queued_total = 0
        self._reported_total = 0
        self._delivered = 0
        self._failed = 0
        self._flush_waiters: list[tuple[int, trio.Event]] = []
        self._unreported: BaseException | None = None
        # Transactions, and kill(): ``_special`` keeps both off the hot path.
        self._special = False
        self._killed = False
        self._txn_id: str | None = None
        self._epoch = -1
        self._txn: MemoryTransaction | None = None
        self._failed_at_begin = 0

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
        if self._closed:
            raise ClosedError("send_nowait() on a closed memory producer")
        size = (len(key) if key else 0) + (len(value) if value else 0)
        self.bound.add(size)
        self._reportable_bytes += size
        if self._special and self._refuse(on_delivery):
            return
        broker = self._broker
        t = broker._topics.get(topic)
        if t is None:
            broker.create_topic(topic, self._settings.topic_partitions)  # auto.create.topics
            t = broker._topics[topic]
        partitions = t.partitions
        error: ProducerError | None = None
        if partition is not None and not 0 <= partition < len(partitions):
            error = ProducerError(f"unknown partition {topic}[{partition}] ({len(partitions)} exist)")
        elif size > broker.max_message_bytes:
            error = ProducerError(
                f"cannot deliver a message to topic {topic!r}: {size} bytes is larger than the broker's "
                f"message.max.bytes ({broker.max_message_bytes}) (MSG_SIZE_TOO_LARGE)"
            )
        elif t.blocked is not None:
            t.blocked.append((self, (t, partition, key, value, timestamp, headers, on_delivery, size)))
            self._queued_total += 1
            self._held += 1
            self._reportable_bytes -= size
            return
        if error is not None:
            self._queued_total += 1
            self._report_callbacks.append(on_delivery)
            self._report_outcomes.append(error)
            self._schedule_reports()
            return
        self._append(t, partition, key, value, timestamp, headers, on_delivery)

    def send_batch_nowait(
        self,
        topic: str,
        partition: int,
        records: Sequence[tuple[bytes | None, bytes | None]],
        *,
        on_delivery: BatchDeliveryCallback | None = None,
    ) -> None:
        if self._closed:
            raise ClosedError("send_batch_nowait() on a closed memory producer")
        broker = self._broker
        t = broker._topics.get(topic)
        sizes = [(len(k) if k else 0) + (len(v) if v else 0) for k, v in records]
        if (
            self._special  # transactions, kill()
            or not records
            or t is None
            or t.blocked is not None
            or not 0 <= partition < len(t.partitions)
            or max(sizes) > broker.max_message_bytes
        ):
            # What can fail or wait goes record by record.
            super().send_batch_nowait(topic, partition, records, on_delivery=on_delivery)
            return
        size = sum(sizes)
        count = len(records)
        self.bound.add(size, count)
        self._reportable_bytes += size
        last = broker._append_many(t, partition, records)
        self._queued_total += count
        if on_delivery is not None:
            self._batch_reports.append((on_delivery, count, last))
        if not self._report_scheduled:
            self._schedule_reports()

    def _append(
        self,
        t: _Topic,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        timestamp: float | None,
        headers: Headers | None,
        on_delivery: DeliveryCallback | None,
    ) -> None:
        partitions = t.partitions
        if partition is None:
            partition = self._partitioner(key, len(partitions))
        message = self._broker._append(t, partition, key, value, timestamp, headers)
        if self._txn is not None:
            self._txn.add(partitions[partition], message.offset)
        self._queued_total += 1
        if on_delivery is not None:
            # Successes without a callback are only counted: no per-message
            # object, which matters to the collector with millions of messages.
            self._report_callbacks.append(on_delivery)
            self._report_outcomes.append(message)
        if not self._report_scheduled:
            self._schedule_reports()

    def _unblocked(
        self,
        t: _Topic,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        timestamp: float | None,
        headers: Headers | None,
        on_delivery: DeliveryCallback | None,
        size: int,
    ) -> None:
        self._held -= 1
        self._queued_total -= 1  # counted again by _append
        self._reportable_bytes += size
        if self._closed or self._killed:
            self._queued_total += 1
            self._report_callbacks.append(on_delivery)
            self._report_outcomes.append(ProducerError(f"the producer closed before {t.name!r} was writable"))
            self._schedule_reports()
            return
        self._append(t, partition, key, value, timestamp, headers, on_delivery)

    def _schedule_reports(self) -> None:
        if not self._report_scheduled:
            self._report_scheduled = True
            self._token.run_sync_soon(self._run_reports)

    def _run_reports(self) -> None:
        # Runs in the trio run, outside any task: a raising callback must not
        # crash the run, so it is logged and re-raised from the next flush().
        # Messages sent by the callbacks themselves schedule the next round.
        self._report_scheduled = False
        callbacks, outcomes = self._report_callbacks, self._report_outcomes
        count = len(callbacks)
        batches = self._batch_reports
        batched = 0
        if batches:
            self._batch_reports = []
            batched = sum(n for _, n, _ in batches)
        uncounted = self._queued_total - self._reported_total - count - self._held - batched
        self.bound.remove(self._reportable_bytes, count + uncounted + batched)
        self._reportable_bytes = 0
        self._delivered += uncounted + batched
        self._reported_total += uncounted + count + batched
        for _ in range(count):
            callback = callbacks.popleft()
            outcome = outcomes.popleft()
            if isinstance(outcome, ProducerError):
                self._failed += 1
                if callback is None:
                    if self._unreported is None:
                        self._unreported = outcome
                    continue
                md, err = None, outcome
            else:
                self._delivered += 1
                if callback is None:
                    continue
                md = RecordMetadata(outcome.topic, outcome.partition, outcome.offset, outcome.timestamp)
                err = None
            try:
                callback(md, err)
            except Exception as exc:
                logger.exception("on_delivery callback %r raised", callback)
                if self._unreported is None:
                    self._unreported = exc
        for batch_callback, n, last in batches:
            try:
                batch_callback(n, last, None)
            except Exception as exc:
                logger.exception("on_delivery callback %r raised", batch_callback)
                if self._unreported is None:
                    self._unreported = exc
        if self._flush_waiters:
            done = self._reported_total
            for target, event in self._flush_waiters:
                if target <= done:
                    event.set()
            self._flush_waiters = [(t, e) for t, e in self._flush_waiters if t > done]

    async def flush(self) -> None:
        target = self._queued_total
        if self._reported_total < target:
            event = trio.Event()
            self._flush_waiters.append((target, event))
            await event.wait()
        else:
            await trio.lowlevel.checkpoint()
        error, self._unreported = self._unreported, None
        if isinstance(error, ProducerError):
            raise error
        if error is not None:
            raise ProducerError(f"an on_delivery callback raised: {error!r}") from error

    def partition_count(self, topic: str) -> int | None:
        return self._broker.partition_count(topic)

    def statistics(self) -> ProducerStatistics:
        return ProducerStatistics(
            queued=self._queued_total - self._reported_total,
            delivered=self._delivered,
            failed=self._failed,
        )

    # -- kill -9 ------------------------------------------------------------

    def kill(self) -> None:
        """Simulate the death of the process holding this producer (``kill -9``).

        From now on nothing it sends reaches the broker and its transaction
        calls do nothing: an open transaction stays open (its partitions'
        last stable offset stuck) until a producer with the same
        transactional id is opened, which aborts it, as with Kafka.
        """
        self._killed = True
        self._special = True

    # -- transactions (see memory_txn) -------------------------------------

    @property
    def transactional_id(self) -> str | None:
        return self._txn_id

    def _init_transactions(self, transactional_id: str) -> None:
        self._txn_id = transactional_id
        self._epoch = self._broker._coordinator.init(transactional_id)
        self._special = True

    def _refuse(self, on_delivery: DeliveryCallback | None) -> bool:
        """Whether ``send_nowait`` must not append (killed or fenced); begins a transaction."""
        if self._killed:
            # Reported as failed so that nobody waits forever on a dead process.
            if on_delivery is not None:
                self._queued_total += 1
                self._report_callbacks.append(on_delivery)
                self._report_outcomes.append(ProducerError("the producer was killed"))
                self._schedule_reports()
            return True
        if self._txn_id is None:
            return False
        if self._fenced():
            self._queued_total += 1
            self._report_callbacks.append(on_delivery)
            self._report_outcomes.append(self._fenced_error())
            self._schedule_reports()
            return True
        if self._txn is None:
            self._begin()
        return False

    def _fenced(self) -> bool:
        assert self._txn_id is not None
        return self._broker._coordinator.epoch(self._txn_id) != self._epoch

    def _fenced_error(self) -> ProducerFencedError:
        return ProducerFencedError(
            f"transactional id {self._txn_id!r} was taken over by a newer producer: this one is "
            "fenced and can no longer send or commit"
        )

    def _check(self, what: str) -> bool:
        """Raise if ``what`` cannot run now; ``False`` when the producer was killed."""
        if self._txn_id is None:
            raise TransportError(f"{what}: this memory producer is not transactional")
        if self._closed:
            raise ClosedError(f"{what} on a closed memory producer")
        if self._killed:
            return False
        if self._fenced():
            raise self._fenced_error()
        return True

    def _begin(self) -> None:
        assert self._txn_id is not None
        self._txn = self._broker._coordinator.begin(self._txn_id)
        self._failed_at_begin = self._failed

    def _abort_now(self) -> None:
        txn, self._txn = self._txn, None
        if txn is not None:
            self._broker._coordinator.end(txn)
            txn.abort()

    def _close_transaction(self) -> None:
        if self._txn is not None and not self._killed and not self._fenced():
            self._abort_now()

    async def begin_transaction(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._check("begin_transaction()") and self._txn is None:
            self._begin()

    async def send_offsets_to_transaction(self, offsets: Mapping[TP, int], group_metadata: object) -> None:
        await trio.lowlevel.checkpoint()
        if not self._check("send_offsets_to_transaction()") or not offsets:
            return
        if not isinstance(group_metadata, MemoryGroupMetadata):
            raise TransportError(f"not the group metadata of a memory consumer: {group_metadata!r}")
        group = self._broker._groups.get(group_metadata.group_id)
        member = None if group is None else group.members.get(group_metadata.member_id)
        for tp, offset in offsets.items():
            if member is None or tp not in member._assignment:
                raise TransactionError(
                    f"cannot commit {tp} in a transaction: not assigned to member "
                    f"{group_metadata.member_id} of group {group_metadata.group_id!r} any more"
                )
            if offset < 0:
                raise TransactionError(f"cannot commit negative offset {offset} for {tp}")
        assert group is not None
        if self._txn is None:
            self._begin()
        assert self._txn is not None
        self._txn.offsets.setdefault(group, {}).update(offsets)

    async def commit_transaction(self) -> None:
        if not self._check("commit_transaction()"):
            await trio.lowlevel.checkpoint()
            return
        try:
            await self.flush()
        except ProducerFencedError:
            raise
        except ProducerError as exc:
            if not self._fenced():
                self._abort_now()
            raise TransactionError(f"transaction aborted: a message was not delivered: {exc}") from exc
        if self._fenced():
            raise self._fenced_error()
        txn = self._txn
        if txn is None:
            return
        if self._failed > self._failed_at_begin:
            self._abort_now()
            raise TransactionError(
                f"transaction aborted: {self._failed - self._failed_at_begin} message(s) of it "
                "were not delivered"
            )
        self._txn = None
        self._broker._coordinator.end(txn)
        txn.commit()

    async def abort_transaction(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._check("abort_transaction()"):
            self._abort_now()


def _fair_take(
    sources: Sequence[tuple[TP, _Partition, int, int]], limit: int, start: int
) -> tuple[list[Message], dict[TP, int]]:
    """Up to ``limit`` messages from partitions with data (below their last
    stable offset, skipping aborted ones), an equal share each, starting at
    ``sources[start]``; returns them and the new positions."""
    share = max(1, -(-limit // len(sources)))
    taken: list[Message] = []
    positions: dict[TP, int] = {}
    n = len(sources)
    for i in range(n):
        tp, part, position, end = sources[(start + i) % n]
        want = min(share, limit - len(taken))
        if want <= 0:
            break
        log = part.log
        aborted = part.aborted
        while want > 0 and position < end:
            chunk = log[position : min(position + want, end)]
            position += len(chunk)
            if aborted:
                chunk = [m for m in chunk if m.offset not in aborted]
            taken.extend(chunk)
            want -= len(chunk)
        positions[tp] = position
    return taken, positions


class MemoryConsumer(_Waiter, Consumer):
    """A member of a consumer group on a :class:`MemoryBroker`.

    Attributes:
        member_id: the member id; the RANGE assignor sorts members by it, and
            ids grow with join order.
    """

    def __init__(
        self,
        broker: MemoryBroker,
        settings: Settings,
        group_id: str,
        topics: Sequence[str],
        listener: RebalanceListener,
    ) -> None:
        super().__init__()
        self._broker = broker
        self._settings = settings
        self._group = broker._group(group_id)
        self._set_subscription(topics)
        self._listener = listener
        self.member_id = broker._next_member_id(settings.broker_client_id)
        self._assignment: frozenset[TP] = frozenset()
        self._incoming: frozenset[TP] | None = None
        self._must_revoke = False
        self._positions: dict[TP, int] = {}
        self._paused: set[TP] = set()
        self._rotation = 0
        self._closed = False
        self._in_getmany = False
        self._killed = False

    # -- membership (see the module docstring) ---------------------------------

    def _set_subscription(self, topics: Sequence[str]) -> None:
        self._topics = frozenset(t for t in topics if not t.startswith("^"))
        self._patterns = [re.compile(t) for t in topics if t.startswith("^")]

    def subscribes(self, topic: str) -> bool:
        """Whether this member's subscription (names or ``^regex``) covers ``topic``."""
        return topic in self._topics or any(p.match(topic) for p in self._patterns)

    async def subscribe(self, topics: Sequence[str]) -> None:
        """Replace the subscription; the group rebalances (in the members' getmany)."""
        if self._closed:
            raise ClosedError("subscribe() on a closed consumer")
        self._set_subscription(topics)
        self._group.start_rebalance()

    def _join(self) -> None:
        self._group.members[self.member_id] = self
        self._group.start_rebalance()

    def kill(self) -> None:
        """Simulate the death of the process holding this consumer (``kill -9``).

        The member drops out of its group as when its session times out: no
        revoke callback, no commit; the others rebalance. ``getmany()`` never
        returns again and leaving the group does nothing.
        """
        self._killed = True
        self._closed = True
        self._set_assignment(frozenset())
        group = self._group
        if group.members.get(self.member_id) is self:
            del group.members[self.member_id]
            group.start_rebalance()

    async def group_metadata(self) -> MemoryGroupMetadata:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise ClosedError("group_metadata() on a consumer that left its group")
        return MemoryGroupMetadata(self._group.group_id, self.member_id, self._group.generation)

    async def _leave(self) -> None:
        if self._killed:
            return
        group = self._group
        try:
            deadline = trio.current_time() + self._settings.rebalance_drain_timeout
            if self.close_by is not None:
                deadline = min(deadline, self.close_by)
            with trio.move_on_at(deadline, shield=True):
                if self._assignment:
                    await self._revoke()
        finally:
            self._set_assignment(frozenset())
            self._closed = True
            if group.members.get(self.member_id) is self:
                del group.members[self.member_id]
                group.start_rebalance()

    async def _revoke(self) -> None:
        revoked = self._assignment
        offsets = await self._listener.on_partitions_revoked(revoked)
        self._commit_now(offsets, allowed=revoked)
        self._must_revoke = False
        self._set_assignment(frozenset())
        self._group.maybe_complete_rebalance()

    async def _install(self, assigned: frozenset[TP]) -> None:
        self._incoming = None
        committed = self._group.committed
        latest = self._settings.consumer_auto_offset_reset == "latest"
        self._positions = {}
        for tp in assigned:
            end = self._broker.end_offset(tp)
            offset = committed.get(tp)
            if offset is None or offset > end:
                offset = end if latest else 0
            self._positions[tp] = offset
        self._paused = set(assigned)
        self._set_assignment(assigned)
        # If cancelled inside the listener, the partitions stay installed and paused.
        await self._listener.on_partitions_assigned(assigned)

    def _set_assignment(self, tps: frozenset[TP]) -> None:
        for tp in self._assignment - tps:
            self._broker._partition(tp).waiters.discard(self)
            self._positions.pop(tp, None)
        self._paused &= tps
        self._assignment = tps
        self._watch()

    def _watch(self) -> None:
        for tp in self._assignment:
            waiters = self._broker._partition(tp).waiters
            if tp in self._paused:
                waiters.discard(self)
            else:
                waiters.add(self)

    # -- the Consumer interface ----------------------------------------------

    async def getmany(self) -> list[Message]:
        """Wait for messages; runs this member's rebalance callbacks when due.

        Raises:
            ClosedError: the consumer left its group.
            trio.BusyResourceError: another task is in ``getmany()`` already.
        """
        if self._in_getmany:
            raise trio.BusyResourceError("another task is already in getmany()")
        self._in_getmany = True
        try:
            await trio.lowlevel.checkpoint()
            if self._killed:
                await trio.sleep_forever()
            while True:
                if self._closed:
                    raise ClosedError("getmany() on a consumer that left its group")
                if self._must_revoke:
                    await self._revoke()
                    continue
                incoming = self._incoming
                if incoming is not None:
                    await self._install(incoming)
                    continue
                batch = self._take()
                if batch:
                    return batch  # no checkpoint after taking: cancellation loses nothing
                await self._sleep()
        finally:
            self._in_getmany = False

    def _take(self) -> list[Message]:
        positions = self._positions
        sources = []
        for tp, position in positions.items():
            if tp in self._paused:
                continue
            part = self._broker._topics[tp.topic].partitions[tp.partition]
            end = min(part.open_txns.values()) if part.open_txns else len(part.log)
            if position < end:
                sources.append((tp, part, position, end))
        if not sources:
            return []
        self._rotation += 1
        taken, moved = _fair_take(sources, self._settings.consumer_max_batch, self._rotation % len(sources))
        positions.update(moved)
        if not taken:
            return self._take()  # only aborted messages: look past them
        return taken

    def pause_nowait(self, tps: Collection[TP]) -> None:
        """Stop returning messages from these partitions, from now on.

        Partitions not assigned to this member are ignored.
        """
        self._paused.update(tp for tp in tps if tp in self._assignment)
        self._watch()

    def resume_nowait(self, tps: Collection[TP]) -> None:
        self._paused.difference_update(tps)
        self._watch()
        self._wake()

    async def commit(
        self, offsets: Mapping[TP, int], *, answer_within: float | None = None, token: object = None
    ) -> None:
        """Commit offsets of partitions assigned to this member.

        Offsets of partitions not assigned to this member (revoked since, or
        never assigned) are not committed: they belong to their owner.

        Raises:
            CommitError: an offset is negative.
            ClosedError: the consumer left its group.
        """
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise ClosedError("commit() on a consumer that left its group")
        failing, retriable = self._group.failing_commits
        if failing > 0:
            self._group.failing_commits = (failing - 1, retriable)
            reason = (
                "NOT_COORDINATOR: the group coordinator moved" if retriable else "GROUP_AUTHORIZATION_FAILED"
            )
            raise CommitError(
                f"cannot commit {', '.join(f'{tp}@{off}' for tp, off in sorted(offsets.items()))} "
                f"for group {self._group.group_id!r}: {reason}",
                retriable=retriable,
            )
        self._commit_now(offsets, allowed=self._assignment)

    def _commit_now(self, offsets: Mapping[TP, int], *, allowed: frozenset[TP]) -> None:
        owned: dict[TP, int] = {}
        for tp, offset in offsets.items():
            if offset < 0:
                raise CommitError(f"cannot commit negative offset {offset} for {tp}")
            if tp in allowed:
                owned[tp] = offset
            else:
                logger.info(
                    "not committing %s@%d: not assigned to member %s of group %r",
                    tp,
                    offset,
                    self.member_id,
                    self._group.group_id,
                )
        self._group.committed.update(owned)

    async def committed(self, tps: Collection[TP]) -> dict[TP, int | None]:
        await trio.lowlevel.checkpoint()
        committed = self._group.committed
        return {tp: committed.get(tp) for tp in tps}

    def high_watermarks(self) -> dict[TP, int]:
        return {tp: self._broker.end_offset(tp) for tp in self._assignment}

    def assignment(self) -> frozenset[TP]:
        return self._assignment

    def position(self, tp: TP) -> int | None:
        """The offset of the next message ``getmany()`` returns for ``tp``."""
        return self._positions.get(tp)


class MemoryReader(_Waiter, Reader):
    """A manually assigned reader with end-of-partition events."""

    def __init__(self, broker: MemoryBroker, settings: Settings) -> None:
        super().__init__()
        self._broker = broker
        self._settings = settings
        self._positions: dict[TP, int] = {}
        self._eof_reported: set[TP] = set()
        self._rotation = 0
        self._closed = False

    async def end_offsets(self, tps: Collection[TP]) -> dict[TP, int]:
        await trio.lowlevel.checkpoint()
        return {tp: self._broker.end_offset(tp) for tp in tps}

    def assign_nowait(self, offsets: Mapping[TP, int]) -> None:
        """Start reading each partition at an offset, OFFSET_BEGINNING or OFFSET_END.

        An offset past the end starts by ``consumer_auto_offset_reset``.

        Raises:
            TopicError: the topic or partition does not exist.
            ValueError: an offset is negative and not one of the two constants.
        """
        if self._closed:
            raise ClosedError("assign_nowait() on a closed reader")
        for tp, offset in offsets.items():
            part = self._broker._partition(tp)
            end = part.stable_end()
            if offset == OFFSET_BEGINNING:
                offset = 0
            elif offset == OFFSET_END:
                offset = end
            elif offset < 0:
                raise ValueError(f"bad start offset {offset} for {tp}")
            elif offset > len(part.log):
                offset = end if self._settings.consumer_auto_offset_reset == "latest" else 0
            self._positions[tp] = offset
            self._eof_reported.discard(tp)
            part.waiters.add(self)
        self._wake()

    def unassign_nowait(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            if self._positions.pop(tp, None) is not None:
                self._eof_reported.discard(tp)
                self._broker._partition(tp).waiters.discard(self)

    async def getmany(self) -> ReaderBatch:
        await trio.lowlevel.checkpoint()
        while True:
            if self._closed:
                raise ClosedError("getmany() on a closed reader")
            batch = self._take()
            if batch is not None:
                return batch
            await self._sleep()

    def _take(self) -> ReaderBatch | None:
        topics = self._broker._topics
        sources = []
        for tp, position in self._positions.items():
            part = topics[tp.topic].partitions[tp.partition]
            end = part.stable_end()
            if position < end:
                sources.append((tp, part, position, end))
        messages: list[Message] = []
        if sources:
            self._rotation += 1
            messages, moved = _fair_take(
                sources, self._settings.consumer_max_batch, self._rotation % len(sources)
            )
            self._positions.update(moved)
            self._eof_reported.difference_update(moved)
        eof = set()
        for tp, position in self._positions.items():
            part = topics[tp.topic].partitions[tp.partition]
            if tp not in self._eof_reported and position == part.stable_end():
                eof.add(tp)
        self._eof_reported |= eof
        if not messages and not eof:
            return None
        return ReaderBatch(messages, frozenset(eof))
