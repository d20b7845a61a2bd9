"""The Kafka producer: one thread owns the confluent ``Producer``.

``send_nowait`` appends the message to a ``queue.SimpleQueue`` (no thread hop
per message). The poll thread drains that queue into ``produce()`` (on
``BufferError`` it polls and retries: nothing is dropped), calls ``poll()``
to serve delivery reports, and hands the reports of one round to trio at
once with ``TrioToken.run_sync_soon``. In trio the batch updates the counters,
wakes ``flush()`` waiters and calls the ``on_delivery`` callbacks.

``flush()`` is exact: every message carries the number of the flush *epoch*
it was sent in; ``flush()`` closes the current epoch and waits until no
message of it or an older epoch is outstanding.

Per message, the trio side does one tuple and one queue put; the thread does
one ``produce()`` and one small Python callback (a counter per epoch for
messages without ``on_delivery``, so no allocation per delivery).

A batch (``send_batch_nowait``: records for one partition, a table's
changelog at a commit) is one queue item and one ``produce_batch()`` call;
each delivery report is one small Python call that counts it and keeps the
highest offset, and the batch's ``on_delivery`` is called once, in trio, when
its last record is reported. librdkafka refuses the records that do not fit
in its queue one by one (``_QUEUE_FULL``): those are sent again after a poll.

Transactions (a producer opened with a transactional id): the thread calls
``init_transactions`` before the producer is handed out. Transaction
operations are commands on the same queue as the messages, so they run on
the poll thread in the order they were asked, after every message queued
before them. The thread begins a transaction by itself before the first
message or offsets after an init, commit or abort: a message sent while a
commit is in progress lands in the next transaction, never outside one.
librdkafka's errors become :class:`~streamtrio.ProducerFencedError` (fenced:
``_FENCED``, ``PRODUCER_FENCED``, ``INVALID_PRODUCER_EPOCH``) or
:class:`~streamtrio.TransactionError` (abortable or fatal); a retriable
commit is retried until ``broker_request_timeout``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka import Producer as _RdProducer

from .._exceptions import (
    ClosedError,
    ProducerError,
    ProducerFencedError,
    TransactionError,
    TransportError,
)
from .._types import TP, Headers, RecordMetadata
from .base import BatchDeliveryCallback, DeliveryCallback, Producer, ProducerStatistics, QueueBound
from .kafka_admin import broker_unavailable, new_client

__all__ = ["KafkaProducer"]

log = logging.getLogger("streamtrio.kafka")

#: Messages produced between two polls when the queue is busy.
_PRODUCE_CHUNK = 2000
#: How long the thread polls for delivery reports while messages are in flight.
_POLL_BUSY = 0.002
#: How long the thread waits for new messages when nothing is in flight.
_POLL_IDLE = 0.1
#: Time the poll thread is given past the close deadline for its last steps.
_THREAD_CLOSE_TIME = 0.1
#: How often partition counts are refreshed for topics the producer does not know.
_METADATA_REFRESH = 1.0

_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})

_STOP = object()


@dataclass(frozen=True, slots=True)
class _WantMetadata:
    topic: str


@dataclass(slots=True, eq=False)
class _Discard:
    """Drop what is queued for ``tps``; trio waits on ``done``."""

    tps: frozenset[TP]
    done: trio.Event = field(default_factory=trio.Event)
    count: int = 0


_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


@dataclass(slots=True, eq=False)
class _TxnCommand:
    """A transaction operation for the poll thread; trio waits on ``done``."""

    kind: str  # begin | offsets | commit | abort
    arg: Any = None
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


def transaction_error(err: KafkaError, transactional_id: str, what: str) -> TransportError:
    """The streamtrio error for a librdkafka error of a transaction operation."""
    text = f"transactional id {transactional_id!r}: {what} failed: {err.str()} ({err.name()})"
    exc: TransportError
    if err.code() in _FENCED:
        exc = ProducerFencedError(
            f"{text}; a newer producer with the same transactional id took over: this one is fenced"
        )
    elif err.txn_requires_abort():
        exc = TransactionError(f"{text}; the transaction must be aborted", abortable=True)
    elif err.fatal():
        exc = TransactionError(f"{text}; the producer is unusable (fatal error)", abortable=False)
    else:
        exc = TransactionError(text, abortable=True)
    exc.__cause__ = KafkaException(err)
    return exc


# One queued message: topic, key, value, partition, timestamp_ms, headers,
# on_delivery, epoch, size (key and value bytes).
_Item = tuple[
    str,
    bytes | None,
    bytes | None,
    int | None,
    int,
    Headers | None,
    DeliveryCallback | None,
    int,
    int,
]


@dataclass(slots=True, eq=False)
class _Batch:
    """One queued batch: records for one partition, reported once."""

    topic: str
    partition: int
    records: Sequence[tuple[bytes | None, bytes | None]]
    on_delivery: BatchDeliveryCallback | None
    epoch: int
    size: int  # keys and values, bytes


class _BatchSink:
    """Counts the delivery reports of one batch on the thread; reports it when all are in."""

    __slots__ = ("batch", "error", "failed", "left", "offset", "owner")

    def __init__(self, owner: KafkaProducer, batch: _Batch) -> None:
        self.owner = owner
        self.batch = batch
        self.left = len(batch.records)
        self.failed = 0
        self.offset = -1
        self.error: ProducerError | None = None

    def report(self, err: KafkaError | None, msg: Any) -> None:
        # On the poll thread, inside poll()/flush(): once per record.
        if err is None:
            offset = msg.offset()
            if offset > self.offset:
                self.offset = offset
        else:
            handled = self.owner._intercept(err, msg, self.report)
            if handled == "resend":
                return
            if handled != "dropped" or self.batch.on_delivery is not None:
                self.fail(1, self.owner._failure(err, msg.topic(), msg.partition()))
                return
            # dropped, and nobody waits for it: done
        self.left -= 1
        if not self.left:
            self.owner._batch_done(self)

    def fail(self, count: int, error: ProducerError) -> None:
        self.failed += count
        if self.error is None:
            self.error = error
        self.left -= count
        if not self.left:
            self.owner._batch_done(self)


def _is_fatal(err: KafkaError) -> bool:
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


def _purged(error: BaseException | None) -> bool:
    cause = None if error is None else error.__cause__
    return isinstance(cause, KafkaException) and cause.args[0].code() in _PURGED


def _blame_fatal(reports: _Reports, fatal: ProducerError) -> None:
    """Report the producer's fatal error (fenced) for the messages it purged.

    librdkafka may report the purge of a fenced producer's queue in the
    same poll as the fatal error, before it: the worker then stopped with
    "Purged in queue" instead of the fence.
    """
    reports.callbacks = [(cb, md, fatal if _purged(e) else e) for cb, md, e in reports.callbacks]
    reports.batches = [(cb, n, off, fatal if _purged(e) else e) for cb, n, off, e in reports.batches]
    reports.unreported = [(epoch, fatal if _purged(e) else e) for epoch, e in reports.unreported]


def producer_error(err: KafkaError, topic: str, partition: int | None = None) -> ProducerError:
    """A ``ProducerError`` (or ``ProducerFencedError``) for a librdkafka error."""
    where = f"topic {topic!r}" + (f" partition {partition}" if partition is not None else "")
    cls = ProducerFencedError if err.code() in _FENCED else ProducerError
    exc = cls(f"cannot deliver a message to {where}: {err.str()} ({err.name()})")
    exc.__cause__ = KafkaException(err)
    return exc


class _EpochSink:
    """Counts the deliveries of one epoch's messages that have no callback (thread side)."""

    __slots__ = ("epoch", "ok", "owner", "produced", "reported")

    def __init__(self, owner: KafkaProducer, epoch: int) -> None:
        self.owner = owner
        self.epoch = epoch
        self.ok = 0
        self.produced = 0
        self.reported = 0

    def report(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            handled = self.owner._intercept(err, msg, self.report)
            if handled == "resend":
                return
            if handled == "dropped":
                err = None  # nobody waits for it: done
        key = msg.key()
        size = len(msg) + (len(key) if key else 0)
        if err is None:
            self.ok += 1
            self.owner._reports.bytes += size
        else:
            self.reported += 1
            self.owner._record_failure(
                None, self.epoch, size, producer_error(err, msg.topic(), msg.partition())
            )


@dataclass(slots=True)
class _Reports:
    """The delivery reports of one poll round, built on the thread."""

    done: Counter[int] = field(default_factory=Counter)  # epoch -> messages finished
    bytes: int = 0  # of the messages finished (keys and values)
    delivered: int = 0
    failed: int = 0
    callbacks: list[tuple[DeliveryCallback, RecordMetadata | None, ProducerError | None]] = field(
        default_factory=list
    )
    # (callback, count, highest offset, first error) of finished batches.
    batches: list[tuple[BatchDeliveryCallback, int, int, ProducerError | None]] = field(default_factory=list)
    # (epoch, error) of failed messages nobody has a callback for.
    unreported: list[tuple[int, ProducerError]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.done)


class KafkaProducer(Producer):
    """See the module docstring."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        bootstrap: str,
        request_timeout: float,
        close_timeout: float,
        bound: QueueBound,
    ) -> None:
        self.bound = bound
        self._txn_id: str | None = config.get("transactional.id")
        # Owned by the thread: a transaction is begun; the fatal error (fenced) if any.
        self._in_txn = False
        self._fatal: TransportError | None = None
        self._config = config
        self._bootstrap = bootstrap
        self._request_timeout = request_timeout
        self._close_timeout = close_timeout
        # time.monotonic() by which the thread must be done closing (set by _close).
        self._thread_deadline = float("inf")
        # Owned by the thread, during _discard: the partitions whose messages go,
        # the purged messages of other partitions to send again.
        self._discarding: frozenset[TP] | None = None
        self._discarded = 0
        self._resend: list[tuple[Any, Any]] = []
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = False
        # trio side
        # Messages not yet reported, per closed epoch; the open epoch's are
        # ``_open_sent`` minus its (negative) entry in ``_outstanding``.
        self._epoch = 0
        self._open_sent = 0
        self._outstanding: dict[int, int] = {}
        self._sent = 0
        self._delivered = 0
        self._failed = 0
        self._progress = trio.Event()
        self._unreported: list[tuple[int, ProducerError]] = []
        # Written by the thread, read by trio (one dict assignment at a time).
        self._partitions: dict[str, int] = {}
        self._metadata_asked: dict[str, float] = {}
        # thread side
        self._reports = _Reports()
        self._sinks: dict[int, _EpochSink] = {}
        self._wanted_topics: set[str] = set()
        self._last_refresh = 0.0

    # -- Producer interface ------------------------------------------------

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
            raise ClosedError("the Kafka producer is closed")
        self._open_sent += 1
        size = (len(key) if key else 0) + (len(value) if value else 0)
        self.bound.add(size)
        self._queue.put(
            (
                topic,
                key,
                value,
                partition,
                round(timestamp * 1000) if timestamp is not None else 0,
                headers,
                on_delivery,
                self._epoch,
                size,
            )
        )

    def send_batch_nowait(
        self,
        topic: str,
        partition: int,
        records: Sequence[tuple[bytes | None, bytes | None]],
        *,
        on_delivery: BatchDeliveryCallback | None = None,
    ) -> None:
        if self._closed:
            raise ClosedError("the Kafka producer is closed")
        count = len(records)
        if not count:
            return
        self._open_sent += count
        size = sum([(len(k) if k else 0) + (len(v) if v else 0) for k, v in records])
        self.bound.add(size, count)
        self._queue.put(_Batch(topic, partition, records, on_delivery, self._epoch, size))

    async def flush(self) -> None:
        epoch = self._close_epoch()
        while any(e <= epoch for e in self._outstanding):
            await self._progress.wait()
        mine = [err for e, err in self._unreported if e <= epoch]
        if mine:
            self._unreported = [(e, err) for e, err in self._unreported if e > epoch]
            first = mine[0]
            if len(mine) > 1:
                first.add_note(f"{len(mine) - 1} more message(s) failed before this flush")
            raise first

    def _close_epoch(self) -> int:
        epoch = self._epoch
        self._epoch += 1
        self._sent += self._open_sent
        left = self._outstanding.get(epoch, 0) + self._open_sent
        self._open_sent = 0
        if left:
            self._outstanding[epoch] = left
        else:
            self._outstanding.pop(epoch, None)
        return epoch

    def partition_count(self, topic: str) -> int | None:
        count = self._partitions.get(topic)
        if count is None and not self._closed:
            # Learnt in the background by the poll thread; a later call will know.
            now = time.monotonic()
            if now - self._metadata_asked.get(topic, -_METADATA_REFRESH) >= _METADATA_REFRESH:
                self._metadata_asked[topic] = now
                self._queue.put(_WantMetadata(topic))
        return count

    def statistics(self) -> ProducerStatistics:
        return ProducerStatistics(
            queued=self._sent + self._open_sent - self._delivered - self._failed,
            delivered=self._delivered,
            failed=self._failed,
        )

    # -- transactions --------------------------------------------------------

    @property
    def transactional_id(self) -> str | None:
        return self._txn_id

    async def _txn_call(self, kind: str, arg: Any = None) -> None:
        if self._txn_id is None:
            raise TransportError(f"{kind}: this Kafka producer is not transactional")
        if self._closed:
            raise ClosedError(f"{kind}: the Kafka producer is closed")
        command = _TxnCommand(kind, arg)
        self._queue.put(command)
        await command.done.wait()
        if command.error is not None:
            raise command.error

    async def discard_queued(self, tps: Collection[TP]) -> int:
        """Drop the messages for ``tps`` not delivered yet (queued or in flight);
        every other message is sent as if nothing happened. Returns how many
        were dropped. A message dropped with a delivery callback fails; one
        without is counted done (nothing waits for it)."""
        if self._closed or not tps:
            return 0
        command = _Discard(frozenset(tps))
        self._queue.put(command)
        await command.done.wait()
        return command.count

    async def begin_transaction(self) -> None:
        await self._txn_call("begin")

    async def send_offsets_to_transaction(self, offsets: Mapping[TP, int], group_metadata: object) -> None:
        if offsets:
            await self._txn_call("offsets", (dict(offsets), group_metadata))

    async def commit_transaction(self) -> None:
        await self._txn_call("commit")

    async def abort_transaction(self) -> None:
        await self._txn_call("abort")

    # -- lifecycle (called by KafkaTransport.open_producer) ----------------

    async def _serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        await trio.to_thread.run_sync(self._thread_main, task_status, thread_name="streamtrio-kafka-producer")

    async def _close(self) -> None:
        """Flush (bounded by the close timeout and ``close_by``), then stop the thread."""
        deadline = trio.current_time() + self._close_timeout
        if self.close_by is not None:
            deadline = min(deadline, self.close_by)
        # The thread's last steps (a short final flush, an abort) get what is left.
        left = max(deadline - trio.current_time(), 0.0)
        self._thread_deadline = time.monotonic() + left + _THREAD_CLOSE_TIME
        try:
            with trio.move_on_at(deadline, shield=True) as scope:
                try:
                    if self._fatal is not None:
                        # Fenced or fatal: nothing will be delivered; the
                        # thread purges what is left.
                        raise self._fatal
                    await self.flush()
                except (ProducerError, TransactionError) as exc:
                    if self._txn_id is None:
                        raise
                    # It belongs to a transaction that is aborted on the thread.
                    log.warning("transactional producer %r closed: %s", self._txn_id, exc)
            if scope.cancelled_caught:
                self.undelivered_at_close = self.statistics().queued
                log.warning(
                    "producer closing with %d message(s) undelivered: not delivered before the "
                    "deadline (is the broker at %s reachable?); they are failed",
                    self.undelivered_at_close,
                    self._bootstrap,
                )
        finally:
            self._closed = True
            self._queue.put(_STOP)

    def _on_reports(self, reports: _Reports) -> None:
        """In trio: account for one batch of delivery reports."""
        outstanding = self._outstanding
        for epoch, n in reports.done.items():
            left = outstanding.get(epoch, 0) - n
            if left or epoch == self._epoch:
                outstanding[epoch] = left
            else:
                del outstanding[epoch]
        self._delivered += reports.delivered
        self._failed += reports.failed
        self.bound.remove(reports.bytes, reports.delivered + reports.failed)
        if reports.unreported:
            for _, err in reports.unreported:
                log.error("%s", err)
            self._unreported.extend(reports.unreported)
        self._progress.set()
        self._progress = trio.Event()
        for callback, metadata, error in reports.callbacks:
            # This runs outside any task (run_sync_soon): an exception here
            # would end the whole trio run.
            try:
                callback(metadata, error)
            except Exception as exc:
                log.error("a delivery callback raised", exc_info=exc)
        for batch_callback, count, offset, first in reports.batches:
            try:
                batch_callback(count, offset, first)
            except Exception as exc:
                log.error("a delivery callback raised", exc_info=exc)

    # -- thread side -------------------------------------------------------

    def _thread_main(self, task_status: trio.TaskStatus[None]) -> None:
        producer = new_client(_RdProducer, self._config, "producer")
        try:
            metadata = producer.list_topics(timeout=self._request_timeout)
        except KafkaException as exc:
            raise broker_unavailable(self._bootstrap, self._request_timeout, exc) from exc
        self._store_metadata(metadata)
        if self._txn_id is not None:
            try:
                producer.init_transactions(self._request_timeout)
            except KafkaException as exc:
                raise transaction_error(exc.args[0], self._txn_id, "init_transactions") from exc
        trio.from_thread.run_sync(task_status.started, trio_token=self._token)
        try:
            self._loop(producer)
        finally:
            self._closed = True
            held = [producer]
            del producer
            try:
                self._final_flush(held[0])
            finally:
                self._destroy(held)

    def _destroy(self, held: list[Any]) -> None:
        """Drop the client (the only reference, in ``held``) on a daemon thread, waiting
        at most until the thread deadline.

        librdkafka's destroy waits for its broker threads, which can hang
        while a broker does not answer; past the deadline this thread returns
        anyway and the process may exit.
        """

        def destroy() -> None:
            held.clear()

        destroyer = threading.Thread(target=destroy, name="streamtrio-kafka-producer-close", daemon=True)
        destroyer.start()
        destroyer.join(max(self._thread_deadline - time.monotonic(), 0.05))
        if destroyer.is_alive():
            log.warning("the Kafka producer did not close in time: not waiting for it")

    def _loop(self, producer: Any) -> None:
        get_nowait = self._queue.get_nowait
        while True:
            in_flight = len(producer) > 0
            try:
                item = self._queue.get(timeout=_POLL_IDLE) if not in_flight else get_nowait()
            except queue.Empty:
                item = None
            produced = 0
            while item is not None:
                if item is _STOP:
                    return
                if type(item) is tuple:
                    self._produce(producer, item)
                    produced += 1
                elif type(item) is _Batch:
                    self._produce_batch(producer, item)
                    produced += len(item.records)
                elif isinstance(item, _TxnCommand):
                    self._run_txn(producer, item)
                elif isinstance(item, _WantMetadata):
                    self._wanted_topics.add(item.topic)
                elif isinstance(item, _Discard):
                    self._discard(producer, item)
                if produced >= _PRODUCE_CHUNK:
                    break
                try:
                    item = get_nowait()
                except queue.Empty:
                    item = None
            self._poll(producer, 0 if produced else _POLL_BUSY)
            self._send_reports()
            if self._wanted_topics:
                self._refresh_metadata(producer)

    def _discard(self, producer: Any, command: _Discard) -> None:
        """Drop every queued or in-flight message of ``command.tps``; send the others again.

        librdkafka purges all or nothing: everything not yet delivered is
        purged, and the purge reports of messages of other partitions are
        turned back into sends (:meth:`_intercept`), in the order they come.
        """
        self._discarding = command.tps
        self._discarded = 0
        try:
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.poll(0)
        finally:
            self._discarding = None
        resend, self._resend = self._resend, []
        for callback, msg in resend:
            partition = msg.partition()
            _, timestamp = msg.timestamp()
            headers = msg.headers()
            while True:
                try:
                    if partition >= 0:
                        producer.produce(
                            msg.topic(), msg.value(), msg.key(), partition,
                            on_delivery=callback, timestamp=timestamp, headers=headers,
                        )  # fmt: skip
                    else:
                        producer.produce(
                            msg.topic(), msg.value(), msg.key(),
                            on_delivery=callback, timestamp=timestamp, headers=headers,
                        )  # fmt: skip
                    break
                except BufferError:
                    producer.poll(0.05)
        command.count = self._discarded
        self._send_reports()
        assert self._token is not None
        try:
            self._token.run_sync_soon(command.done.set)
        except trio.RunFinishedError:
            pass

    def _intercept(self, err: KafkaError, msg: Any, callback: Any) -> str | None:
        """A purge report during :meth:`_discard`: ``"resend"`` (it is sent again
        later), ``"dropped"`` (one of the discarded partitions': it fails, or
        is counted done when nobody waits for it), or ``None`` (not a purge)."""
        if self._discarding is None or err.code() not in _PURGED:
            return None
        if TP(msg.topic(), msg.partition()) in self._discarding:
            self._discarded += 1
            return "dropped"
        self._resend.append((callback, msg))
        return "resend"

    def _poll(self, producer: Any, timeout: float) -> None:
        try:
            producer.poll(timeout)
        except KafkaException as exc:
            # A transactional producer in a fatal state (fenced) raises from
            # poll(); the transaction calls report it, deliveries fail.
            err = exc.args[0]
            if self._txn_id is None or not err.fatal():
                raise
            if self._fatal is None:
                self._fatal = transaction_error(err, self._txn_id, "the producer")
                log.error("%s", self._fatal)
            time.sleep(timeout)

    def _begin(self, producer: Any) -> None:
        if self._fatal is not None:
            raise self._fatal
        if not self._in_txn:
            assert self._txn_id is not None
            try:
                producer.begin_transaction()
            except KafkaException as exc:
                raise transaction_error(exc.args[0], self._txn_id, "begin_transaction") from exc
            self._in_txn = True

    def _run_txn(self, producer: Any, command: _TxnCommand) -> None:
        assert self._txn_id is not None
        try:
            if command.kind == "begin":
                self._begin(producer)
            elif command.kind == "offsets":
                self._begin(producer)
                offsets, metadata = command.arg
                positions = [TopicPartition(tp.topic, tp.partition, off) for tp, off in offsets.items()]
                try:
                    producer.send_offsets_to_transaction(positions, metadata, self._request_timeout)
                except KafkaException as exc:
                    raise transaction_error(exc.args[0], self._txn_id, "send_offsets_to_transaction") from exc
            elif self._fatal is not None:
                raise self._fatal
            elif command.kind == "commit":
                self._commit(producer)
            elif command.kind == "abort" and self._in_txn:
                try:
                    producer.abort_transaction(self._request_timeout)
                except KafkaException as exc:
                    raise transaction_error(exc.args[0], self._txn_id, "abort_transaction") from exc
                self._in_txn = False
        except TransportError as exc:
            command.error = exc
        self._send_reports()
        assert self._token is not None
        try:
            self._token.run_sync_soon(command.done.set)
        except trio.RunFinishedError:
            pass

    def _commit(self, producer: Any) -> None:
        assert self._txn_id is not None
        if not self._in_txn:
            return
        deadline = time.monotonic() + self._request_timeout
        while True:
            try:
                producer.commit_transaction(max(0.1, deadline - time.monotonic()))
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and not err.txn_requires_abort() and time.monotonic() < deadline:
                    log.warning("commit_transaction: %s (retrying)", err.str())
                    continue
                raise transaction_error(err, self._txn_id, "commit_transaction") from exc
            self._in_txn = False
            return

    def _begin_for_message(self, producer: Any) -> ProducerError | None:
        """Begin the transaction a message (or batch) goes into; the error to report
        for it if that failed."""
        try:
            self._begin(producer)
        except TransportError as exc:
            failure = exc if isinstance(exc, ProducerError) else ProducerError(str(exc))
            failure.__cause__ = exc.__cause__
            return failure
        return None

    def _produce(self, producer: Any, item: _Item) -> None:
        topic, key, value, partition, timestamp, headers, on_delivery, epoch, size = item
        if self._txn_id is not None and not self._in_txn:
            failure = self._begin_for_message(producer)
            if failure is not None:
                self._record_failure(on_delivery, epoch, size, failure)
                return
        sink: _EpochSink | None = None
        callback: Any
        if on_delivery is None:
            sink = self._sinks.get(epoch)
            if sink is None:
                sink = self._sinks[epoch] = _EpochSink(self, epoch)
            sink.produced += 1
            callback = sink.report
        else:
            callback = partial(self._on_delivery, on_delivery, epoch, size)
        while True:
            try:
                if partition is None:
                    producer.produce(
                        topic,
                        value,
                        key,
                        on_delivery=callback,
                        timestamp=timestamp,
                        headers=headers,
                    )
                else:
                    producer.produce(
                        topic,
                        value,
                        key,
                        partition,
                        on_delivery=callback,
                        timestamp=timestamp,
                        headers=headers,
                    )
                return
            except BufferError:
                # librdkafka's queue is full: serve reports to make room.
                self._poll(producer, 0.05)
                self._send_reports()
            except KafkaException as exc:
                err = exc.args[0] if exc.args else KafkaError(KafkaError._FAIL)
                if sink is not None:
                    sink.reported += 1
                if self._txn_id is not None and self._fatal is None and _is_fatal(err):
                    self._poll(producer, 0)  # learns the cause (fenced?) into self._fatal
                self._record_failure(on_delivery, epoch, size, self._failure(err, topic, partition))
                return

    def _produce_batch(self, producer: Any, batch: _Batch) -> None:
        sink = _BatchSink(self, batch)
        topic, partition = batch.topic, batch.partition
        if self._txn_id is not None and not self._in_txn:
            failure = self._begin_for_message(producer)
            if failure is not None:
                sink.fail(sink.left, failure)
                return
        messages: list[dict[str, Any]] = [{"key": k, "value": v} for k, v in batch.records]
        while messages:
            try:
                queued = producer.produce_batch(topic, messages, partition, on_delivery=sink.report)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else KafkaError(KafkaError._FAIL)
                sink.fail(len(messages), self._failure(err, topic, partition))
                return
            if queued == len(messages):
                return
            # Refused records carry their error; the ones librdkafka had no room for go again.
            again: list[dict[str, Any]] = []
            for message in messages:
                err = message.pop("_error", None)
                if err is None:
                    continue
                if err.code() == KafkaError._QUEUE_FULL:
                    again.append(message)
                    continue
                if self._txn_id is not None and self._fatal is None and _is_fatal(err):
                    self._poll(producer, 0)  # learns the cause (fenced?) into self._fatal
                sink.fail(1, self._failure(err, topic, partition))
            messages = again
            if messages:
                self._poll(producer, 0.05)
                self._send_reports()

    def _batch_done(self, sink: _BatchSink) -> None:
        batch = sink.batch
        count = len(batch.records)
        reports = self._reports
        reports.bytes += batch.size
        reports.done[batch.epoch] += count
        reports.delivered += count - sink.failed
        reports.failed += sink.failed
        if batch.on_delivery is not None:
            reports.batches.append((batch.on_delivery, count, sink.offset, sink.error))
        elif sink.error is not None:
            reports.unreported.append((batch.epoch, sink.error))

    def _failure(self, err: KafkaError, topic: str, partition: int | None) -> ProducerError:
        """The error of a failed message: a transactional producer's fatal error (fenced)
        when that is what failed it, so the worker stops for the right reason."""
        fatal = self._fatal
        if isinstance(fatal, ProducerError) and (_is_fatal(err) or err.code() in _PURGED):
            # A fenced producer purges what it had queued: the purge is not the cause.
            return fatal
        return producer_error(err, topic, partition)

    def _on_delivery(
        self, on_delivery: DeliveryCallback | None, epoch: int, size: int, err: KafkaError | None, msg: Any
    ) -> None:
        # On the poll thread, inside poll()/flush().
        if err is not None:
            if self._intercept(err, msg, partial(self._on_delivery, on_delivery, epoch, size)) == "resend":
                return
            self._record_failure(on_delivery, epoch, size, self._failure(err, msg.topic(), msg.partition()))
            return
        reports = self._reports
        reports.bytes += size
        reports.done[epoch] += 1
        reports.delivered += 1
        if on_delivery is not None:
            _, ts = msg.timestamp()
            metadata = RecordMetadata(msg.topic(), msg.partition(), msg.offset(), ts / 1000.0)
            reports.callbacks.append((on_delivery, metadata, None))

    def _record_failure(
        self, on_delivery: DeliveryCallback | None, epoch: int, size: int, error: ProducerError
    ) -> None:
        reports = self._reports
        reports.bytes += size
        reports.done[epoch] += 1
        reports.failed += 1
        if on_delivery is not None:
            reports.callbacks.append((on_delivery, None, error))
        else:
            reports.unreported.append((epoch, error))

    def _send_reports(self) -> None:
        reports = self._reports
        if self._sinks:
            finished = []
            latest = max(self._sinks)
            for epoch, sink in self._sinks.items():
                if sink.ok:
                    reports.done[epoch] += sink.ok
                    reports.delivered += sink.ok
                    sink.reported += sink.ok
                    sink.ok = 0
                if sink.reported >= sink.produced and epoch != latest:
                    finished.append(epoch)
            for epoch in finished:
                del self._sinks[epoch]
        if not reports:
            return
        if isinstance(self._fatal, ProducerError):
            _blame_fatal(reports, self._fatal)
        self._reports = _Reports()
        assert self._token is not None
        try:
            self._token.run_sync_soon(self._on_reports, reports)
        except trio.RunFinishedError:
            pass

    def _store_metadata(self, metadata: Any) -> None:
        for name, topic in metadata.topics.items():
            if topic.error is None and topic.partitions:
                self._partitions[name] = len(topic.partitions)

    def _refresh_metadata(self, producer: Any) -> None:
        now = time.monotonic()
        if now - self._last_refresh < _METADATA_REFRESH:
            return
        self._last_refresh = now
        self._wanted_topics.clear()
        try:
            self._store_metadata(producer.list_topics(timeout=self._request_timeout))
        except KafkaException as exc:
            log.warning("cannot refresh topic metadata: %s", exc)

    def _thread_time_left(self) -> float:
        return max(self._thread_deadline - time.monotonic(), 0.1)

    def _final_flush(self, producer: Any) -> None:
        # Produce what is still queued, give it a last chance, fail the rest.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if type(item) is tuple:
                self._produce(producer, item)
            elif type(item) is _Batch:
                self._produce_batch(producer, item)
            elif isinstance(item, _TxnCommand):
                item.error = ClosedError(f"{item.kind}: the Kafka producer is closed")
                if self._token is not None:
                    try:
                        self._token.run_sync_soon(item.done.set)
                    except trio.RunFinishedError:
                        pass
        try:
            remaining = producer.flush(min(0.5, self._close_timeout, self._thread_time_left()))
        except KafkaException as exc:
            if self._txn_id is None:
                raise
            log.warning("closing the transactional producer: %s", exc.args[0].str())
            remaining = len(producer)
        if remaining:
            producer.purge()
            self._poll(producer, 0)
        if self._in_txn and self._fatal is None:
            # What the worker did not commit is aborted (a newer producer with
            # the same id would abort it anyway, after the transaction timeout).
            try:
                producer.abort_transaction(
                    min(self._close_timeout, self._request_timeout, self._thread_time_left()) or 0.1
                )
            except KafkaException as exc:
                log.warning("aborting the open transaction on close: %s", exc.args[0].str())
            self._in_txn = False
        self._send_reports()
