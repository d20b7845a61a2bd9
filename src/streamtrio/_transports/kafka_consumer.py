"""The Kafka group consumer and the manually assigned reader.

Each owns one confluent ``Consumer`` and exactly one thread that makes every
call on it (Tansu and librdkafka misbehave when a second thread calls in while
the first polls). The trio side talks to that thread through a
``queue.SimpleQueue`` of commands; the thread serves them between
``consume()`` calls, answers through a :class:`trio.Event` set with the run's
trio token, and hands fetched messages to trio as whole batches through a
small bounded memory channel.

Rebalance callbacks fire on the thread inside ``consume()``. The thread starts
the listener's handler as a task in the consumer's nursery and keeps serving
commands (commit, committed, pause, resume) until the handler returns, so a
handler may await the consumer without deadlocking it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import trio
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Consumer as _RdConsumer

from .._exceptions import (
    ClosedError,
    CommitError,
    StreamtrioError,
    TopicError,
    TransportError,
)
from .._types import TP, Message
from .base import Consumer, Reader, ReaderBatch, RebalanceListener, lost_handler
from .kafka_admin import broker_unavailable, new_client

__all__ = ["KafkaConsumer", "KafkaReader"]

log = logging.getLogger("streamtrio.kafka")

B = TypeVar("B")

#: How long ``consume()`` waits; commands are served at least this often.
_POLL_TIMEOUT = 0.05
#: How long the thread waits for room in the batch channel before serving commands again.
_OFFER_TIMEOUT = 0.05
#: seconds a reader's thread may spend asking where its partitions end (progress totals)
_END_OFFSETS_BUDGET = 2.0
#: seconds of one ask within that budget (a close is noticed between two)
_END_OFFSETS_SLICE = 0.25
#: Batches waiting in the channel (beyond the one being handed over).
_CHANNEL_SIZE = 2
#: Revocation records kept to filter batches fetched before a revocation.
_RETIRED_KEEP = 256
#: How long a commit refused for a lost membership waits for librdkafka's revoke.
_LOST_MEMBERSHIP_WAIT = 2.0

# A commit refused with these means the member lost (or is losing) its
# partitions: librdkafka has queued the revoke, served at the next consume().
_MEMBERSHIP_LOST = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
    }
)

# A commit refused with these may succeed if tried again.
_RETRIABLE_COMMIT = frozenset(
    {
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._WAIT_COORD,
        KafkaError._ALL_BROKERS_DOWN,
    }
)

# Errors a consumer sees while the cluster moves or the network blips;
# librdkafka retries them by itself.
_TRANSIENT = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        # a request that waited too long for an answer, e.g. the committed offsets
        # of a new assignment while the broker is frozen: librdkafka asks again
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._MAX_POLL_EXCEEDED,
        KafkaError._RESOLVE,
    }
)
_TOPIC_ERRORS = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
    }
)


def _error_code(exc: BaseException) -> int | None:
    """The librdkafka error code behind ``exc`` (raised ``from`` a KafkaException), if any."""
    cause = exc.__cause__
    if isinstance(cause, KafkaException) and cause.args and isinstance(cause.args[0], KafkaError):
        code: int = cause.args[0].code()
        return code
    return None


class _Stop(Exception):
    """Raised on the thread to leave its loop (the trio run is gone)."""


@dataclass(slots=True, eq=False)
class _Reply:
    """Where the thread puts the answer to a command; trio waits on ``event``."""

    event: trio.Event = field(default_factory=trio.Event)
    value: Any = None
    error: BaseException | None = None


@dataclass(slots=True, eq=False)
class _Command:
    kind: str
    arg: Any = None
    reply: _Reply | None = None


def _to_messages(raw: list[Any]) -> tuple[list[Message], bool]:
    """The messages among confluent's ``raw``, copied into :class:`Message`; and whether
    ``raw`` held nothing else (no error, no end-of-partition event), which were skipped.

    One loop with everything inline: no function call and no ``__init__`` per
    message (27% less than calling a conversion that calls the constructor).
    """
    batch: list[Message] = []
    append = batch.append
    new = Message.__new__
    clean = True
    for m in raw:
        if m.error() is not None:
            clean = False
            continue
        msg = new(Message)
        msg.topic = m.topic()
        msg.partition = m.partition()
        msg.offset = m.offset()
        msg.key = m.key()
        msg.value = m.value()
        ts_type, ts = m.timestamp()
        msg.timestamp = ts / 1000.0 if ts_type != TIMESTAMP_NOT_AVAILABLE else 0.0
        headers = m.headers()
        if headers is not None:
            headers = [(k, v if v is not None else b"") for k, v in headers]
        msg.headers = headers
        append(msg)
    return batch, clean


def _to_message(m: Any) -> Message:
    ts_type, ts = m.timestamp()
    headers = m.headers()
    if headers is not None:
        headers = [(k, v if v is not None else b"") for k, v in headers]
    return Message(
        m.topic(),
        m.partition(),
        m.offset(),
        m.key(),
        m.value(),
        ts / 1000.0 if ts_type != TIMESTAMP_NOT_AVAILABLE else 0.0,
        headers,
    )


def _rd_partitions(tps: Iterable[TP], offsets: Mapping[TP, int] | None = None) -> list[Any]:
    if offsets is None:
        return [TopicPartition(tp.topic, tp.partition) for tp in tps]
    return [TopicPartition(tp.topic, tp.partition, offsets[tp]) for tp in tps]


def _tps(partitions: Iterable[Any]) -> frozenset[TP]:
    return frozenset(TP(p.topic, p.partition) for p in partitions)


def _message_error(err: KafkaError, m: Any) -> StreamtrioError | None:
    """The exception for an error delivered as a message, or ``None`` to only log it."""
    where = f"topic {m.topic()!r} partition {m.partition()}" if m.topic() else "the consumer"
    if err.code() in _TRANSIENT or (err.retriable() and not err.fatal()):
        log.warning("Kafka consumer error on %s (retrying): %s", where, err.str())
        return None
    exc_type: type[StreamtrioError] = TopicError if err.code() in _TOPIC_ERRORS else TransportError
    exc = exc_type(f"Kafka consumer error on {where}: {err.str()} ({err.name()})")
    exc.__cause__ = KafkaException(err)
    return exc


class _ThreadOwnedClient(Generic[B]):
    """A confluent Consumer owned by one thread, served through a command queue.

    Subclasses say how to set the client up and what a batch is; this class
    runs the thread, the command queue and the batch channel.
    """

    _kind = "consumer"

    def __init__(self, config: dict[str, Any], *, bootstrap: str, request_timeout: float) -> None:
        self._config = config
        self._bootstrap = bootstrap
        self._request_timeout = request_timeout
        self._max_batch = 10000
        self._queue: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        send, receive = trio.open_memory_channel[tuple[int, B]](_CHANNEL_SIZE)
        self._send_channel = send
        self._receive_channel = receive
        # Partitions taken away, as (generation, partitions). A batch is tagged
        # with the generation it was fetched in; trio drops its messages of
        # partitions retired in a later generation.
        self._generation = 0
        self._retired: list[tuple[int, frozenset[TP]]] = []
        # Owned by the thread.
        self._client: Any = None
        self._pending: tuple[int, B] | None = None
        self._frozen = False
        self._stopping = False
        # time.monotonic() by which the thread must have closed the client and
        # returned; set from trio when closing (a plain float: atomic).
        self._close_deadline: float | None = None

    # -- trio side ---------------------------------------------------------

    async def _serve(
        self,
        nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._nursery = nursery
        await trio.to_thread.run_sync(
            self._thread_main,
            task_status,
            thread_name=f"streamtrio-kafka-{self._kind}",
        )

    def _put(self, command: _Command) -> None:
        with self._lock:
            if self._closed:
                raise ClosedError(f"the Kafka {self._kind} is closed")
            self._queue.put(command)

    async def _call(self, kind: str, arg: Any = None) -> Any:
        reply = _Reply()
        self._put(_Command(kind, arg, reply))
        await reply.event.wait()
        if reply.error is not None:
            raise reply.error
        return reply.value

    def _stop_soon(self, timeout: float | None = None) -> None:
        """Ask the thread to close the client and exit within ``timeout`` seconds (idempotent).

        Without a timeout, closing may take up to the request timeout.
        """
        limit = time.monotonic() + (self._request_timeout if timeout is None else max(timeout, 0.0))
        if self._close_deadline is None or limit < self._close_deadline:
            self._close_deadline = limit
        try:
            self._put(_Command("stop"))
        except ClosedError:
            pass

    def _retire(self, tps: frozenset[TP]) -> int:
        self._generation += 1
        self._retired.append((self._generation, tps))
        del self._retired[:-_RETIRED_KEEP]
        return self._generation

    def _retired_since(self, generation: int) -> frozenset[TP]:
        if generation >= self._generation:
            return frozenset()
        out: set[TP] = set()
        for gen, tps in reversed(self._retired):
            if gen <= generation:
                break
            out |= tps
        return frozenset(out)

    async def _receive(self) -> tuple[int, B]:
        try:
            return await self._receive_channel.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ClosedError(f"the Kafka {self._kind} is closed") from None

    # -- thread side -------------------------------------------------------

    def _setup(self, client: Any) -> None:
        """Called on the thread once the broker answered (subscribe, ...)."""

    def _fetch(self, client: Any) -> tuple[int, B] | None:
        """One ``consume()`` call; the batch to hand to trio, if any."""
        raise NotImplementedError

    def _filter_pending(self, tps: frozenset[TP]) -> None:
        """Drop the not yet handed-over messages of ``tps``."""

    def _handle(self, client: Any, command: _Command) -> Any:
        """Serve one subclass-specific command; return its answer."""
        raise NotImplementedError(command.kind)

    def _thread_main(self, task_status: trio.TaskStatus[None]) -> None:
        client = new_client(_RdConsumer, self._config, self._kind)
        self._client = client
        try:
            try:
                client.list_topics(timeout=self._request_timeout)
            except KafkaException as exc:
                raise broker_unavailable(self._bootstrap, self._request_timeout, exc) from exc
            self._setup(client)
            self._to_trio(task_status.started)
            self._loop(client)
        except _Stop:
            pass
        finally:
            self._stopping = True
            with self._lock:
                self._closed = True
            self._fail_commands()
            self._close_client(client)
            try:
                self._to_trio(self._send_channel.close)
            except _Stop:
                pass

    def _close_client(self, client: Any) -> None:
        """Close the client, waiting at most until the close deadline.

        librdkafka's ``close()`` has no timeout and can block for minutes while
        the group coordinator is unreachable. It runs on a daemon thread that
        takes the client over (this thread makes no call on it any more); past
        the deadline this thread returns anyway and the process may exit.
        """
        deadline = self._close_deadline
        timeout = self._request_timeout if deadline is None else max(deadline - time.monotonic(), 0.05)

        def close() -> None:
            try:
                client.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the Kafka %s: %s", self._kind, exc)

        closer = threading.Thread(target=close, name=f"streamtrio-kafka-{self._kind}-close", daemon=True)
        closer.start()
        closer.join(timeout)
        if closer.is_alive():
            log.warning(
                "the Kafka %s did not close within %.1fs (is the broker at %s reachable?): "
                "not waiting for it",
                self._kind,
                timeout,
                self._bootstrap,
            )

    def _to_trio(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            trio.from_thread.run_sync(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise _Stop from None

    def _loop(self, client: Any) -> None:
        while True:
            self._serve_commands(client)
            if self._stopping:
                return
            if self._pending is not None:
                if self._offer(self._pending):
                    self._pending = None
                continue
            if self._frozen:
                self._serve_commands(client, timeout=_POLL_TIMEOUT)
                continue
            batch = self._fetch(client)
            if batch is not None:
                self._pending = batch

    def _offer(self, batch: tuple[int, B]) -> bool:
        """Hand ``batch`` to trio; ``False`` if the channel stayed full for a while."""
        try:
            return trio.from_thread.run(self._offer_in_trio, batch, trio_token=self._token)
        except trio.RunFinishedError:
            raise _Stop from None

    async def _offer_in_trio(self, batch: tuple[int, B]) -> bool:
        with trio.move_on_after(_OFFER_TIMEOUT):
            try:
                await self._send_channel.send(batch)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # nobody reads any more: the consumer is closing
            return True
        return False

    def _serve_commands(self, client: Any, timeout: float | None = None) -> None:
        """Serve every queued command; wait up to ``timeout`` for the first one."""
        try:
            command = self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            self._dispatch(client, command)
            try:
                command = self._queue.get_nowait()
            except queue.Empty:
                return

    def _dispatch(self, client: Any, command: _Command) -> None:
        try:
            if command.kind == "stop":
                self._stopping = True
                value: Any = None
            elif command.kind == "freeze":
                self._frozen = True
                value = None
            elif command.kind == "pause":
                self._pause_resume(client.pause, command.arg, "pause")
                value = None
            elif command.kind == "resume":
                self._pause_resume(client.resume, command.arg, "resume")
                value = None
            else:
                value = self._handle(client, command)
        except Exception as exc:
            if command.reply is None:
                raise
            self._answer(command.reply, error=exc)
        else:
            if command.reply is not None:
                self._answer(command.reply, value=value)

    def _pause_resume(self, method: Callable[[list[Any]], None], tps: frozenset[TP], what: str) -> None:
        try:
            method(_rd_partitions(tps))
        except KafkaException as exc:
            log.warning("cannot %s %s: %s", what, ", ".join(map(str, sorted(tps))), exc)

    def _answer(self, reply: _Reply, *, value: Any = None, error: BaseException | None = None) -> None:
        reply.value = value
        reply.error = error
        try:
            trio.from_thread.run_sync(reply.event.set, trio_token=self._token)
        except trio.RunFinishedError:
            pass

    def _fail_commands(self) -> None:
        while True:
            try:
                command = self._queue.get_nowait()
            except queue.Empty:
                return
            if command.reply is not None:
                self._answer(command.reply, error=ClosedError(f"the Kafka {self._kind} is closed"))

    def _run_in_trio(self, fn: Callable[[Any], Any], arg: Any) -> tuple[bool, Any]:
        """Run ``await fn(arg)`` as a task in the nursery; serve commands until it ends.

        Returns ``(True, result)``, or ``(False, exception)`` if it raised (the
        task re-raises it in the nursery, which takes the consumer down).
        """
        reply = _Reply()
        done = _Command("done", reply=reply)
        assert self._nursery is not None

        async def task() -> None:
            try:
                reply.value = await fn(arg)
            except BaseException as exc:
                reply.error = exc
                raise
            finally:
                self._queue.put(done)

        self._to_trio(self._nursery.start_soon, task)
        while True:
            command = self._queue.get()
            if command is done:
                break
            if command.kind == "stop":
                self._stopping = True  # leave once the handler is finished
                continue
            self._dispatch(self._client, command)
        if reply.error is not None:
            self._stopping = True
            return False, reply.error
        return True, reply.value


class KafkaConsumer(_ThreadOwnedClient[list[Message]], Consumer):
    """A group member on one confluent Consumer; see the module docstring."""

    _kind = "consumer"

    def __init__(
        self,
        config: dict[str, Any],
        *,
        topics: list[str],
        listener: RebalanceListener,
        bootstrap: str,
        request_timeout: float,
        max_batch: int,
    ) -> None:
        super().__init__(config, bootstrap=bootstrap, request_timeout=request_timeout)
        self._topics = topics
        self._listener = listener
        self._group_id = str(config["group.id"])
        self._max_batch = max_batch
        self._assignment: frozenset[TP] = frozenset()
        # Incremental (cooperative) rebalances: cooperative-sticky, or the
        # KIP-848 consumer protocol, which is always incremental; range
        # (eager) is the default.
        strategy = str(config.get("partition.assignment.strategy", "range"))
        self._cooperative = "cooperative" in strategy or config.get("group.protocol") == "consumer"
        # Commits are asynchronous and awaited with a deadline: a synchronous
        # commit has no timeout and blocks the thread while the coordinator is
        # unreachable. Owned by the thread.
        config["on_commit"] = self._on_commit
        # Rebalance callbacks running (they run inside consume()).
        self._in_callback = 0
        self._commits_waiting: set[frozenset[tuple[str, int, int]]] = set()
        self._commit_results: dict[frozenset[tuple[str, int, int]], tuple[Any, list[Any]]] = {}

    # -- Consumer interface ------------------------------------------------

    async def getmany(self) -> list[Message]:
        while True:
            generation, batch = await self._receive()
            retired = self._retired_since(generation)
            if retired:
                batch = [m for m in batch if (m.topic, m.partition) not in retired]
            if batch:
                return batch

    async def subscribe(self, topics: Sequence[str]) -> None:
        """Replace the subscription (names, or librdkafka regexes starting with ``^``).

        Returns once the consumer thread has subscribed; the rebalance that
        follows reaches the listener as usual.
        """
        await self._call("subscribe", list(topics))

    def pause_nowait(self, tps: Collection[TP]) -> None:
        self._put(_Command("pause", frozenset(tps)))

    def resume_nowait(self, tps: Collection[TP]) -> None:
        self._put(_Command("resume", frozenset(tps)))

    def commit_token(self) -> object:
        # Bumped (on the thread) each time partitions are revoked or lost.
        return self._generation

    async def commit(
        self, offsets: Mapping[TP, int], *, answer_within: float | None = None, token: object = None
    ) -> None:
        if offsets:
            wait = self._request_timeout if answer_within is None else answer_within
            await self._call("commit", (dict(offsets), wait, token))

    async def committed(self, tps: Collection[TP]) -> dict[TP, int | None]:
        if not tps:
            return {}
        result: dict[TP, int | None] = await self._call("committed", frozenset(tps))
        return result

    def assignment(self) -> frozenset[TP]:
        return self._assignment

    async def group_metadata(self) -> object:
        """The confluent ``ConsumerGroupMetadata``, read on the consumer thread."""
        return await self._call("group_metadata")

    # -- lifecycle (called by KafkaTransport.open_consumer) ----------------

    async def _leave(self, deadline: float) -> None:
        """Give every partition back through the listener, committing what it returns
        (the commit waits at most until ``deadline``, a trio time)."""
        try:
            await self._call("freeze")
        except ClosedError:
            return
        assigned = self._assignment
        if not assigned:
            return
        offsets = await self._listener.on_partitions_revoked(assigned)
        await self.commit(offsets, answer_within=max(deadline - trio.current_time(), 0.1))

    # -- thread side -------------------------------------------------------

    def _setup(self, client: Any) -> None:
        self._subscribe(client, self._topics)

    def _subscribe(self, client: Any, topics: list[str]) -> None:
        self._topics = topics
        if not topics:
            client.unsubscribe()
            return
        try:
            client.subscribe(
                topics,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        except KafkaException as exc:
            raise TopicError(f"cannot subscribe to {', '.join(topics)}: {exc.args[0]}") from exc

    def _fetch(self, client: Any) -> tuple[int, list[Message]] | None:
        raw = client.consume(num_messages=self._max_batch, timeout=_POLL_TIMEOUT)
        if not raw:
            return None
        batch, clean = _to_messages(raw)
        if not clean:
            for m in raw:
                err = m.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    exc = _message_error(err, m)
                    if exc is not None:
                        raise exc
        return (self._generation, batch) if batch else None

    def _handle(self, client: Any, command: _Command) -> Any:
        if command.kind == "commit":
            offsets, timeout, token = command.arg
            if token is not None and token != self._generation:
                # Read before a revoke or a loss: some of these offsets may be
                # past events whose outputs were discarded since.
                described = ", ".join(f"{tp}@{off}" for tp, off in sorted(offsets.items()))
                raise CommitError(
                    f"not committing {described} for group {self._group_id!r}: partitions were "
                    "revoked or lost since these offsets were read",
                    retriable=True,
                )
            try:
                self._commit(client, offsets, timeout)
            except CommitError as exc:
                if _error_code(exc) in _MEMBERSHIP_LOST and not self._in_callback:
                    self._serve_revoke(client)
                raise
            return None
        if command.kind == "committed":
            return self._committed(client, command.arg)
        if command.kind == "subscribe":
            self._subscribe(client, command.arg)
            return None
        if command.kind == "group_metadata":
            try:
                return client.consumer_group_metadata()
            except KafkaException as exc:
                raise TransportError(
                    f"cannot read the group metadata of group {self._group_id!r}: {exc.args[0]}"
                ) from exc
        raise NotImplementedError(command.kind)

    def _commit(self, client: Any, offsets: Mapping[TP, int], timeout: float) -> None:
        """Commit the offsets of partitions this member still owns; wait at most ``timeout``.

        The others were revoked or lost since the offsets were read: their new
        owner commits them, and an older offset landing after its commits
        would move the group backwards.
        """
        owned = {tp: off for tp, off in offsets.items() if tp in self._assignment}
        if len(owned) < len(offsets):
            gone = ", ".join(f"{tp}@{off}" for tp, off in sorted(offsets.items()) if tp not in owned)
            log.info("not committing %s: no longer assigned to this member", gone)
        if not owned:
            return
        described = ", ".join(f"{tp}@{off}" for tp, off in sorted(owned.items()))
        if self._in_callback:
            # Inside a rebalance callback, itself inside consume(): consume()
            # must not be called again here, so wait the only other way. (The
            # broker answers a rebalancing member; shutdown never gets here.)
            try:
                result = client.commit(offsets=_rd_partitions(owned, owned), asynchronous=False)
            except KafkaException as exc:
                raise self._commit_error(described, exc.args[0]) from exc
            self._check_committed(described, None, list(result or ()))
            return
        key = frozenset((tp.topic, tp.partition, off) for tp, off in owned.items())
        self._commits_waiting.add(key)
        try:
            try:
                client.commit(offsets=_rd_partitions(owned, owned), asynchronous=True)
            except KafkaException as exc:
                raise self._commit_error(described, exc.args[0]) from exc
            started = time.monotonic()
            deadline = started + timeout
            while key not in self._commit_results:
                limit = deadline if self._close_deadline is None else min(deadline, self._close_deadline)
                if time.monotonic() >= limit:
                    raise CommitError(
                        f"cannot commit {described} for group {self._group_id!r}: no answer from the "
                        f"group coordinator within {time.monotonic() - started:.1f}s "
                        f"(is the broker at {self._bootstrap} reachable?)",
                        retriable=True,
                    )
                self._poll_keeping(client)
            error, partitions = self._commit_results.pop(key)
        finally:
            self._commits_waiting.discard(key)
        self._check_committed(described, error, partitions)

    def _check_committed(self, described: str, error: Any, partitions: list[Any]) -> None:
        if error is not None:
            raise self._commit_error(described, error) from KafkaException(error)
        for p in partitions:
            if p.error is not None:
                raise self._commit_error(f"{p.topic}[{p.partition}]@{p.offset}", p.error) from KafkaException(
                    p.error
                )

    def _commit_error(self, described: str, error: Any) -> CommitError:
        retriable = isinstance(error, KafkaError) and (
            error.code() in _RETRIABLE_COMMIT or (error.retriable() and not error.fatal())
        )
        return CommitError(
            f"cannot commit {described} for group {self._group_id!r}: {error}", retriable=retriable
        )

    def _on_commit(self, error: Any, partitions: list[Any]) -> None:
        # On this thread, inside consume(): the answer to an asynchronous commit.
        key = frozenset((p.topic, p.partition, p.offset) for p in partitions or ())
        if key in self._commits_waiting:
            self._commit_results[key] = (error, list(partitions or ()))
        elif len(self._commits_waiting) == 1 and not partitions:
            # A commit refused as a whole may come back without its partitions.
            (only,) = self._commits_waiting
            self._commit_results[only] = (error, [])

    def _poll_keeping(self, client: Any) -> None:
        """One ``consume()`` call (it serves callbacks); keep what it fetched for trio."""
        batch = self._fetch(client)
        if batch is None:
            return
        if self._pending is None:
            self._pending = batch
        else:  # what was fetched before, then this; both of the current generation
            self._pending = (batch[0], [*self._pending[1], *batch[1]])

    def _serve_revoke(self, client: Any) -> None:
        """Let librdkafka deliver the revoke it queued when the membership was lost.

        A commit that blocked across a session timeout comes back refused
        before this thread polled again, so the listener would learn of the
        rebalance only after the error: the committer would take a rebalance
        for a broken group. Polling here (keeping what is fetched) runs the
        revoke first. Gives up after a short wait; the error is raised anyway.
        """
        generation = self._generation
        deadline = time.monotonic() + _LOST_MEMBERSHIP_WAIT
        while self._generation == generation and time.monotonic() < deadline:
            self._poll_keeping(client)

    def _committed(self, client: Any, tps: frozenset[TP]) -> dict[TP, int | None]:
        try:
            result = client.committed(_rd_partitions(tps), timeout=self._request_timeout)
        except KafkaException as exc:
            raise TransportError(
                f"cannot read the committed offsets of group {self._group_id!r}: {exc.args[0]}"
            ) from exc
        return {TP(p.topic, p.partition): (p.offset if p.offset >= 0 else None) for p in result}

    def _on_assign(self, client: Any, partitions: list[Any]) -> None:
        self._in_callback += 1
        try:
            self._assign(client, partitions)
        finally:
            self._in_callback -= 1

    def _assign(self, client: Any, partitions: list[Any]) -> None:
        if self._stopping:
            return
        tps = _tps(partitions)
        if self._cooperative:
            client.incremental_assign(partitions)
            self._assignment = self._assignment | tps
        else:
            client.assign(partitions)
            self._assignment = tps
        # Paused before any fetch: the listener resumes them when their
        # tables are ready.
        if partitions:
            client.pause(partitions)
        log.debug("assigned %s", ", ".join(map(str, sorted(tps))) or "nothing")
        self._run_in_trio(self._listener.on_partitions_assigned, tps)

    def _on_revoke(self, client: Any, partitions: list[Any]) -> None:
        self._in_callback += 1
        try:
            self._give_up(client, partitions, commit=True)
        finally:
            self._in_callback -= 1

    def _on_lost(self, client: Any, partitions: list[Any]) -> None:
        self._in_callback += 1
        try:
            self._give_up(client, partitions, commit=False)
        finally:
            self._in_callback -= 1

    def _give_up(self, client: Any, partitions: list[Any], *, commit: bool) -> None:
        tps = _tps(partitions)
        self._retire(tps)
        self._filter_pending(tps)
        if not commit:
            # Lost: another member may own them already. No commit for them
            # from now on, including one queued before this callback.
            self._assignment = self._assignment - tps
        if tps and not self._stopping:
            if commit:
                log.debug("revoked %s", ", ".join(map(str, sorted(tps))))
                ok, offsets = self._run_in_trio(self._listener.on_partitions_revoked, tps)
                offsets = {tp: off for tp, off in offsets.items() if tp in tps} if ok else {}
                if offsets:
                    try:
                        self._commit(client, offsets, self._request_timeout)
                    except CommitError as exc:
                        log.error("commit on revoke failed: %s", exc)
            else:
                log.debug("lost %s", ", ".join(map(str, sorted(tps))))
                self._run_in_trio(lost_handler(self._listener), tps)
        if self._cooperative:
            client.incremental_unassign(partitions)
        else:
            client.unassign()
        self._assignment = self._assignment - tps

    def _filter_pending(self, tps: frozenset[TP]) -> None:
        if self._pending is not None:
            _, batch = self._pending
            kept = [m for m in batch if (m.topic, m.partition) not in tps]
            self._pending = (self._generation, kept) if kept else None


class KafkaReader(_ThreadOwnedClient[ReaderBatch], Reader):
    """A manually assigned consumer outside any group; never commits."""

    _kind = "reader"

    def __init__(
        self, config: dict[str, Any], *, bootstrap: str, request_timeout: float, max_batch: int
    ) -> None:
        super().__init__(config, bootstrap=bootstrap, request_timeout=request_timeout)
        self._max_batch = max_batch
        # Owned by the thread: what is assigned now.
        self._assigned: set[TP] = set()
        self._thread_generation = 0

    def assign_nowait(self, offsets: Mapping[TP, int]) -> None:
        if offsets:
            # Re-assigning restarts the partition: drop what was fetched before.
            generation = self._retire(frozenset(offsets))
            self._put(_Command("assign", (generation, dict(offsets))))

    def unassign_nowait(self, tps: Iterable[TP]) -> None:
        retired = frozenset(tps)
        if retired:
            generation = self._retire(retired)
            self._put(_Command("unassign", (generation, retired)))

    async def end_offsets(self, tps: Collection[TP]) -> dict[TP, int]:
        if not tps:
            return {}
        ends: dict[TP, int] = await self._call("end_offsets", frozenset(tps))
        return ends

    async def getmany(self) -> ReaderBatch:
        while True:
            generation, batch = await self._receive()
            retired = self._retired_since(generation)
            if retired:
                batch = ReaderBatch(
                    [m for m in batch.messages if (m.topic, m.partition) not in retired],
                    batch.eof - retired,
                )
            if batch.messages or batch.eof:
                return batch

    # -- thread side -------------------------------------------------------

    def _handle(self, client: Any, command: _Command) -> Any:
        if command.kind == "end_offsets":
            return self._end_offsets(client, command.arg)
        generation: int
        try:
            if command.kind == "assign":
                generation, offsets = command.arg
                again = [tp for tp in offsets if tp in self._assigned]
                if again:
                    client.incremental_unassign(_rd_partitions(again))
                client.incremental_assign(_rd_partitions(offsets, offsets))
                self._assigned.update(offsets)
            elif command.kind == "unassign":
                generation, tps = command.arg
                gone = [tp for tp in tps if tp in self._assigned]
                if gone:
                    client.incremental_unassign(_rd_partitions(gone))
                    self._assigned.difference_update(gone)
            else:
                raise NotImplementedError(command.kind)
        except KafkaException as exc:
            described = ", ".join(map(str, sorted(command.arg[1])))
            raise TransportError(
                f"the Kafka reader cannot {command.kind} {described}: {exc.args[0]}"
            ) from exc
        self._thread_generation = generation
        self._filter_pending(frozenset(command.arg[1]))
        return None

    def _end_offsets(self, client: Any, tps: frozenset[TP]) -> dict[TP, int]:
        # One budget for all of them, asked in short slices: this thread fetches
        # nothing meanwhile, and a close must not wait for the answers (seen:
        # seconds per partition during a rebalance, holding a stop up).
        budget = min(self._request_timeout, _END_OFFSETS_BUDGET)
        deadline = time.monotonic() + budget
        ends: dict[TP, int] = {}
        for tp in sorted(tps):
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or self._close_deadline is not None:
                    raise TransportError(f"the Kafka reader cannot read the end of {tp} within {budget:g}s")
                try:
                    marks = client.get_watermark_offsets(
                        TopicPartition(tp.topic, tp.partition),
                        timeout=min(left, _END_OFFSETS_SLICE),
                        cached=False,
                    )
                except KafkaException as exc:
                    err = exc.args[0] if exc.args else None
                    if isinstance(err, KafkaError) and err.code() == KafkaError._TIMED_OUT:
                        continue
                    raise TransportError(
                        f"the Kafka reader cannot read the end of {tp}: {exc.args[0]}"
                    ) from exc
                if marks is not None:  # None: this slice timed out
                    ends[tp] = marks[1]
                    break
        return ends

    def _filter_pending(self, tps: frozenset[TP]) -> None:
        if self._pending is not None:
            _, batch = self._pending
            kept = ReaderBatch(
                [m for m in batch.messages if (m.topic, m.partition) not in tps],
                batch.eof - tps,
            )
            self._pending = (self._thread_generation, kept) if kept.messages or kept.eof else None

    def _fetch(self, client: Any) -> tuple[int, ReaderBatch] | None:
        raw = client.consume(num_messages=self._max_batch, timeout=_POLL_TIMEOUT)
        if not raw:
            return None
        messages, clean = _to_messages(raw)
        if clean:
            return self._thread_generation, ReaderBatch(messages, frozenset())
        # End-of-partition events (or errors) among them: in order, as a message
        # after a partition's end means it is not at its end any more.
        messages = []
        eof: set[TP] = set()
        for m in raw:
            err = m.error()
            if err is None:
                msg = _to_message(m)
                messages.append(msg)
                if eof:
                    eof.discard(TP(msg.topic, msg.partition))
            elif err.code() == KafkaError._PARTITION_EOF:
                eof.add(TP(m.topic(), m.partition()))
            else:
                exc = _message_error(err, m)
                if exc is not None:
                    raise exc
        if not messages and not eof:
            return None
        return self._thread_generation, ReaderBatch(messages, frozenset(eof))
