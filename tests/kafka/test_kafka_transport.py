"""The kafka:// transport against a real Kafka-protocol broker."""

from __future__ import annotations

import functools
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest
import trio
from confluent_kafka import Consumer as RdConsumer
from confluent_kafka import KafkaError
from confluent_kafka import TopicPartition as RdTopicPartition

from streamtrio._exceptions import (
    BrokerUnavailableError,
    ClosedError,
    CommitError,
    ConfigurationError,
    ProducerError,
)
from streamtrio._partitioner import partition_for_key
from streamtrio._settings import Settings
from streamtrio._transports.base import OFFSET_BEGINNING, Consumer, Reader
from streamtrio._transports.kafka import KafkaTransport
from streamtrio._types import TP, Message, TopicSpec
from streamtrio.testing import KafkaTestBroker

TopicFactory = Callable[..., Awaitable[str]]


def make_settings(**overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "broker_session_timeout": 2.0,
        "broker_heartbeat_interval": 0.2,
        "broker_request_timeout": 10.0,
        "shutdown_timeout": 10.0,
        "rebalance_drain_timeout": 5.0,
    }
    options.update(overrides)
    return Settings("streamtrio-tests", **options)


@pytest.fixture
def transport(kafka_bootstrap: str) -> KafkaTransport:
    return KafkaTransport(f"kafka://{kafka_bootstrap}", make_settings())


@pytest.fixture
def new_topic(transport: KafkaTransport) -> TopicFactory:
    async def create(partitions: int = 8, **config: str) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        created = await transport.create_topics([TopicSpec(name, partitions, config=config)])
        assert created == [name]
        return name

    return create


def group_name() -> str:
    return f"g-{uuid.uuid4().hex[:12]}"


class Listener:
    """Records rebalances, resumes what it is given, returns ``to_commit`` on revoke."""

    def __init__(self, *, resume: bool = True) -> None:
        self.consumer: Consumer | None = None
        self.ready = trio.Event()
        self.resume = resume
        self.events: list[tuple[str, frozenset[TP]]] = []
        self.to_commit: dict[TP, int] = {}
        self.changed = trio.Event()

    def attach(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.ready.set()

    async def on_partitions_revoked(self, revoked: frozenset[TP]) -> Mapping[TP, int]:
        self.events.append(("revoked", revoked))
        self._notify()
        return {tp: off for tp, off in self.to_commit.items() if tp in revoked}

    async def on_partitions_assigned(self, assigned: frozenset[TP]) -> None:
        self.events.append(("assigned", assigned))
        if self.resume:
            await self.ready.wait()
            assert self.consumer is not None
            self.consumer.resume_nowait(assigned)
        self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


async def wait_for(predicate: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    with trio.move_on_after(limit):
        # Polled: assignments change on the consumer thread, no event to wait on.
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {limit}s waiting for {what}")


async def consume_n(
    consumer: Consumer, n: int, *, limit: float = 15.0, into: list[Message] | None = None
) -> list[Message]:
    got: list[Message] = [] if into is None else into
    with trio.move_on_after(limit):
        while len(got) < n:
            got.extend(await consumer.getmany())
    assert len(got) >= n, f"got {len(got)} of {n} messages in {limit}s"
    return got


async def consume_for(consumer: Consumer, seconds: float) -> list[Message]:
    got: list[Message] = []
    with trio.move_on_after(seconds):
        while True:
            got.extend(await consumer.getmany())
    return got


def our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("streamtrio-kafka")]


# -- producing and consuming ------------------------------------------------


async def test_round_trip_keys_headers_timestamps(transport: KafkaTransport, new_topic: TopicFactory) -> None:
    topic = await new_topic(8)
    sent = []
    async with transport.open_producer() as producer:
        for i in range(200):
            key = f"key-{i % 37}".encode()
            value = f"value-{i}".encode()
            headers = [("n", str(i).encode()), ("kind", b"test")]
            ts = 1_700_000_000.0 + i + 0.125
            producer.send_nowait(topic, key, value, timestamp=ts, headers=headers)
            sent.append((key, value, headers, ts))
        await producer.flush()
        assert producer.statistics().delivered == 200
        assert producer.statistics().queued == 0

    group = group_name()
    listener = Listener()
    async with transport.open_consumer(group_id=group, topics=[topic], listener=listener) as consumer:
        listener.attach(consumer)
        got = await consume_n(consumer, 200)
        await trio.sleep(0.3)
        assert consumer.assignment() == frozenset(TP(topic, p) for p in range(8))
        # Offsets to commit when the consumer closes: next offset per partition.
        listener.to_commit = {}
        for m in got:
            listener.to_commit[m.tp] = max(listener.to_commit.get(m.tp, 0), m.offset + 1)

    assert len(got) == 200
    received = sorted((m.key, m.value, m.headers, m.timestamp) for m in got if m.key is not None)
    assert received == sorted(sent)
    partitions_used = set()
    for m in got:
        assert m.topic == topic
        assert m.key is not None
        assert m.partition == partition_for_key(m.key, 8)
        partitions_used.add(m.partition)
    assert len(partitions_used) > 4
    for p in partitions_used:
        offsets = [m.offset for m in got if m.partition == p]
        assert offsets == list(range(len(offsets)))
    # Closing handed the partitions back through the listener ...
    assert listener.events[-1] == ("revoked", frozenset(TP(topic, p) for p in range(8)))
    # ... and committed what it returned.
    async with transport.open_consumer(
        group_id=group, topics=[topic], listener=Listener(resume=False)
    ) as again:
        committed = await again.committed([TP(topic, p) for p in range(8)])
    expected = {TP(topic, p): listener.to_commit.get(TP(topic, p)) for p in range(8)}
    assert committed == expected


async def test_send_returns_metadata(transport: KafkaTransport, new_topic: TopicFactory) -> None:
    topic = await new_topic(8)
    before = time.time()
    async with transport.open_producer() as producer:
        first = await producer.send(topic, b"k", b"v1", partition=3)
        second = await producer.send(topic, None, b"v2", partition=3)
        stamped = await producer.send(topic, b"k", b"v3", partition=5, timestamp=1234.5)
    assert (first.topic, first.partition, first.offset) == (topic, 3, 0)
    assert (second.topic, second.partition, second.offset) == (topic, 3, 1)
    assert before - 1 <= first.timestamp <= time.time() + 1
    assert (stamped.partition, stamped.offset, stamped.timestamp) == (5, 0, 1234.5)


async def test_keyed_partition_matches_partition_for_key(
    transport: KafkaTransport, new_topic: TopicFactory
) -> None:
    topic = await new_topic(8)
    keys = [f"account-{i}".encode() for i in range(64)] + [b"", b"\xff\x00\x01", b"x" * 100]
    results: dict[bytes, int] = {}

    def recorder(key: bytes) -> Callable[[Any, Any], None]:
        def on_delivery(md: Any, err: Any) -> None:
            assert err is None
            results[key] = md.partition

        return on_delivery

    async with transport.open_producer() as producer:
        for key in keys:
            producer.send_nowait(topic, key, b"v", on_delivery=recorder(key))
        await producer.flush()
        assert producer.partition_count(topic) in (None, 8)
        await wait_for(lambda: producer.partition_count(topic) == 8, "partition count")
    assert results == {key: partition_for_key(key, 8) for key in keys}
    assert len(set(results.values())) == 8


async def test_flush_raises_an_unreported_failure(transport: KafkaTransport, new_topic: TopicFactory) -> None:
    topic = await new_topic(2)
    failures: list[ProducerError | None] = []
    async with transport.open_producer() as producer:
        # Partition 7 does not exist: librdkafka fails the message.
        producer.send_nowait(topic, b"k", b"v", partition=7, on_delivery=lambda m, e: failures.append(e))
        producer.send_nowait(topic, b"k", b"v", partition=7)
        with pytest.raises(ProducerError, match=topic):
            await producer.flush()
        await producer.flush()  # raised once only
        assert producer.statistics().failed == 2
    assert len(failures) == 1 and isinstance(failures[0], ProducerError)
    with pytest.raises(ClosedError):
        producer.send_nowait(topic, b"k", b"v")


def read_partition(bootstrap: str, topic: str, partition: int, *, isolation: str) -> list[Any]:
    """Every message of ``topic[partition]`` a plain reader with ``isolation`` sees."""
    reader = RdConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_name(),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
        }
    )
    reader.assign([RdTopicPartition(topic, partition, 0)])
    got: list[Any] = []
    deadline = time.monotonic() + 30
    try:
        while True:
            assert time.monotonic() < deadline, f"could not read {topic}[{partition}] to its end"
            for m in reader.consume(num_messages=1000, timeout=0.2):
                if m.error() is None:
                    got.append(m)
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    return got
    finally:
        reader.close()


async def test_a_batch_lands_in_order_and_is_reported_once(
    transport: KafkaTransport, new_topic: TopicFactory
) -> None:
    topic = await new_topic(4)
    reports: list[tuple[int, int, ProducerError | None]] = []
    records = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(500)] + [(b"gone", None)]
    async with transport.open_producer() as producer:
        producer.send_nowait(topic, b"first", b"x", partition=2)
        producer.send_batch_nowait(topic, 2, records, on_delivery=lambda *report: reports.append(report))
        producer.send_nowait(topic, b"last", b"y", partition=2)
        producer.send_batch_nowait(topic, 2, [])  # nothing to send: never reported
        await producer.flush()
        assert reports == [(501, 501, None)]
        stats = producer.statistics()
        assert (stats.queued, stats.delivered, stats.failed) == (0, 503, 0)
    got = await trio.to_thread.run_sync(
        functools.partial(read_partition, transport.bootstrap_servers, topic, 2, isolation="read_uncommitted")
    )
    assert [(m.offset(), m.key(), m.value()) for m in got] == (
        [(0, b"first", b"x")] + [(i + 1, k, v) for i, (k, v) in enumerate(records)] + [(502, b"last", b"y")]
    )
    with pytest.raises(ClosedError):
        producer.send_batch_nowait(topic, 0, records)


async def test_a_batch_larger_than_the_client_queue_is_sent_whole(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic(1)
    # librdkafka takes at most 100 messages at a time: the rest of the batch waits for room.
    small = KafkaTransport(
        f"kafka://{kafka_bootstrap}", make_settings(producer_config={"queue.buffering.max.messages": 100})
    )
    reports: list[tuple[int, int, ProducerError | None]] = []
    records = [(f"k{i}".encode(), b"v") for i in range(1000)]
    async with small.open_producer() as producer:
        producer.send_batch_nowait(topic, 0, records, on_delivery=lambda *report: reports.append(report))
        await producer.flush()
    assert reports == [(1000, 999, None)]
    got = await trio.to_thread.run_sync(
        functools.partial(read_partition, kafka_bootstrap, topic, 0, isolation="read_uncommitted")
    )
    assert sorted(m.key() for m in got) == sorted(k for k, _ in records)


async def test_a_failed_batch_is_reported_once_and_flush_raises_without_a_callback(
    transport: KafkaTransport, new_topic: TopicFactory
) -> None:
    topic = await new_topic(2)
    reports: list[tuple[int, int, ProducerError | None]] = []
    async with transport.open_producer() as producer:
        # Partition 7 does not exist: librdkafka fails the records.
        producer.send_batch_nowait(
            topic, 7, [(b"a", b"1"), (b"b", b"2")], on_delivery=lambda *r: reports.append(r)
        )
        await producer.flush()  # reported to the callback: flush does not raise
        [(count, offset, error)] = reports
        assert (count, offset) == (2, -1)
        assert isinstance(error, ProducerError) and topic in str(error)
        producer.send_batch_nowait(topic, 7, [(b"a", b"1")])
        with pytest.raises(ProducerError, match=topic):
            await producer.flush()
        assert producer.statistics().failed == 3


async def test_a_batch_in_a_transaction_is_visible_only_once_committed(
    transport: KafkaTransport, new_topic: TopicFactory
) -> None:
    topic = await new_topic(2)
    reports: list[tuple[int, int, ProducerError | None]] = []
    committed = [(f"c{i}".encode(), b"1") for i in range(50)]
    aborted = [(f"a{i}".encode(), b"2") for i in range(50)]
    async with transport.open_producer(transactional_id=f"txn-{uuid.uuid4().hex[:8]}") as producer:
        producer.send_batch_nowait(topic, 1, aborted, on_delivery=lambda *r: reports.append(r))
        await producer.flush()
        await producer.abort_transaction()
        producer.send_batch_nowait(topic, 1, committed, on_delivery=lambda *r: reports.append(r))
        await producer.commit_transaction()
    assert [(count, error) for count, _, error in reports] == [(50, None), (50, None)]
    seen = await trio.to_thread.run_sync(
        functools.partial(read_partition, transport.bootstrap_servers, topic, 1, isolation="read_committed")
    )
    assert [(m.key(), m.value()) for m in seen] == committed


# -- groups and rebalances --------------------------------------------------


async def test_two_consumers_split_range_and_commit_on_revoke(
    transport: KafkaTransport, new_topic: TopicFactory
) -> None:
    topic = await new_topic(8)
    all_tps = frozenset(TP(topic, p) for p in range(8))
    async with transport.open_producer() as producer:
        for p in range(8):
            for i in range(10):
                producer.send_nowait(topic, None, f"a-{p}-{i}".encode(), partition=p)
        await producer.flush()

        group = group_name()
        first_listener, second_listener = Listener(), Listener()
        async with transport.open_consumer(group_id=group, topics=[topic], listener=first_listener) as first:
            first_listener.attach(first)
            got = await consume_n(first, 80)
            assert {m.tp for m in got} == all_tps
            first_listener.to_commit = dict.fromkeys(all_tps, 10)

            async with transport.open_consumer(
                group_id=group, topics=[topic], listener=second_listener
            ) as second:
                second_listener.attach(second)
                await wait_for(
                    lambda: len(first.assignment()) == 4 and len(second.assignment()) == 4,
                    "the group to split the partitions",
                )
                # The first member gave everything back and committed what its
                # listener returned before the partitions moved.
                assert ("revoked", all_tps) in first_listener.events
                assert await first.committed(all_tps) == dict.fromkeys(all_tps, 10)
                # Range assignment: each member owns one contiguous half.
                halves = {
                    frozenset(p.partition for p in first.assignment()),
                    frozenset(p.partition for p in second.assignment()),
                }
                assert halves == {frozenset(range(4)), frozenset(range(4, 8))}

                # New messages go to their owner only, and the newcomer starts
                # at the committed offsets (nothing read twice).
                for p in range(8):
                    for i in range(5):
                        producer.send_nowait(topic, None, f"b-{p}-{i}".encode(), partition=p)
                await producer.flush()
                got_first: list[Message] = []
                got_second: list[Message] = []
                await consume_n(first, 20, into=got_first)
                await consume_n(second, 20, into=got_second)
                assert {m.tp for m in got_first} == first.assignment()
                assert {m.tp for m in got_second} == second.assignment()
                values = sorted(m.value or b"" for m in got_first + got_second)
                assert values == sorted(f"b-{p}-{i}".encode() for p in range(8) for i in range(5))
                assert all(m.offset >= 10 for m in got_first + got_second)


async def test_assigned_partitions_start_paused_and_pause_resume(
    transport: KafkaTransport, new_topic: TopicFactory
) -> None:
    topic = await new_topic(2)
    p0, p1 = TP(topic, 0), TP(topic, 1)
    async with transport.open_producer() as producer:
        for i in range(3):
            producer.send_nowait(topic, None, f"early-{i}".encode(), partition=0)
        await producer.flush()

        listener = Listener(resume=False)
        async with transport.open_consumer(
            group_id=group_name(), topics=[topic], listener=listener
        ) as consumer:
            listener.attach(consumer)
            await wait_for(lambda: consumer.assignment() == {p0, p1}, "assignment")
            # Assigned partitions stay paused until the listener resumes them.
            assert await consume_for(consumer, 1.0) == []
            consumer.resume_nowait([p0, p1])
            got = await consume_n(consumer, 3)
            assert [m.value for m in got] == [b"early-0", b"early-1", b"early-2"]

            consumer.pause_nowait([p0])
            await trio.sleep(0.3)
            for i in range(5):
                producer.send_nowait(topic, None, f"p0-{i}".encode(), partition=0)
                producer.send_nowait(topic, None, f"p1-{i}".encode(), partition=1)
            await producer.flush()
            got = await consume_n(consumer, 5)
            got += await consume_for(consumer, 1.0)
            assert sorted(m.value or b"" for m in got) == [f"p1-{i}".encode() for i in range(5)]

            consumer.resume_nowait([p0])
            got = await consume_n(consumer, 5)
            assert [m.value for m in got] == [f"p0-{i}".encode() for i in range(5)]


async def test_subscribe_replaces_the_subscription(transport: KafkaTransport) -> None:
    prefix = f"sub-{uuid.uuid4().hex[:10]}"
    first, second = f"{prefix}-a", f"{prefix}-b"
    await transport.create_topics([TopicSpec(first, 1), TopicSpec(second, 2)])
    async with transport.open_producer() as producer:
        await producer.send(first, None, b"from-a")
        await producer.send(second, None, b"from-b", partition=1)
        listener = Listener()
        async with transport.open_consumer(
            group_id=group_name(), topics=[first], listener=listener
        ) as consumer:
            listener.attach(consumer)
            assert [m.value for m in await consume_n(consumer, 1)] == [b"from-a"]
            listener.to_commit = {TP(first, 0): 1}
            # A librdkafka regex: both topics.
            await consumer.subscribe([f"^{prefix}-.*"])
            got: list[Message] = []
            with trio.move_on_after(15):
                while not any(m.topic == second for m in got):
                    got.extend(await consumer.getmany())
            # Only the new topic's message (a redelivered "from-a" would mean the
            # offset returned on revoke was not committed).
            assert [(m.topic, m.partition, m.value) for m in got] == [(second, 1, b"from-b")]
            assert consumer.assignment() == {TP(first, 0), TP(second, 0), TP(second, 1)}
            assert ("revoked", frozenset({TP(first, 0)})) in listener.events


# -- reader -------------------------------------------------------------------


async def read_until_eof(reader: Reader, tps: set[TP], limit: float = 15.0) -> list[Message]:
    got: list[Message] = []
    waiting = set(tps)
    with trio.move_on_after(limit):
        while waiting:
            batch = await reader.getmany()
            got.extend(batch.messages)
            waiting -= batch.eof
    assert not waiting, f"no end-of-partition for {sorted(waiting)}"
    return got


async def test_reader_reads_to_eof_exactly(transport: KafkaTransport, new_topic: TopicFactory) -> None:
    topic = await new_topic(4)
    tps = {TP(topic, p) for p in range(4)}
    counts = {0: 7, 1: 0, 2: 1, 3: 25}
    async with transport.open_producer() as producer:
        for p, n in counts.items():
            for i in range(n):
                producer.send_nowait(topic, f"{i}".encode(), f"{p}:{i}".encode(), partition=p)
        await producer.flush()

        async with transport.open_reader() as reader:
            reader.assign_nowait(dict.fromkeys(tps, OFFSET_BEGINNING))
            got = await read_until_eof(reader, tps)
            for p, n in counts.items():
                values = [m.value for m in got if m.partition == p]
                assert values == [f"{p}:{i}".encode() for i in range(n)]
            assert len(got) == sum(counts.values())

            # New messages are read, then the end is reported again.
            producer.send_nowait(topic, None, b"late", partition=1)
            await producer.flush()
            again = await read_until_eof(reader, {TP(topic, 1)})
            assert [(m.partition, m.offset, m.value) for m in again] == [(1, 0, b"late")]

            # Re-assigning at an offset restarts the partition there.
            reader.assign_nowait({TP(topic, 3): 20})
            tail = await read_until_eof(reader, {TP(topic, 3)})
            assert [m.offset for m in tail] == [20, 21, 22, 23, 24]

        # Nothing was committed for the reader, and the group consumer of a
        # fresh group still starts at the beginning.
        listener = Listener()
        async with transport.open_consumer(
            group_id=group_name(), topics=[topic], listener=listener
        ) as consumer:
            listener.attach(consumer)
            assert len(await consume_n(consumer, 34)) == 34


# -- admin ----------------------------------------------------------------------


async def test_create_topics_is_idempotent(transport: KafkaTransport) -> None:
    a, b, c = (f"adm-{uuid.uuid4().hex[:10]}-{n}" for n in "abc")
    created = await transport.create_topics(
        [TopicSpec(a, 2), TopicSpec(b, 3, config={"retention.ms": "600000"})]
    )
    assert sorted(created) == sorted([a, b])
    # Existing topics are left alone, even with another layout.
    created = await transport.create_topics([TopicSpec(a, 5), TopicSpec(b, 3), TopicSpec(c, 1)])
    assert created == [c]
    assert await transport.create_topics([TopicSpec(c, 1)]) == []
    counts = await transport.partition_counts([a, b, c, "no-such-topic-" + a])
    assert counts == {a: 2, b: 3, c: 1}


# -- failures and configuration --------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_broker_raises_within_the_timeout() -> None:
    port = closed_port()
    transport = KafkaTransport(f"kafka://127.0.0.1:{port}", make_settings(broker_request_timeout=1.0))
    openers: list[Callable[[], Any]] = [
        transport.open_producer,
        transport.open_reader,
        lambda: transport.open_consumer(group_id="g", topics=["t"], listener=Listener()),
    ]
    for open_client in openers:
        start = time.monotonic()
        with pytest.raises(BrokerUnavailableError, match=f"127.0.0.1:{port}"):
            async with open_client():
                pytest.fail("opened a client on a closed port")
        assert time.monotonic() - start < 3.0
    start = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=f"127.0.0.1:{port}"):
        await transport.create_topics([TopicSpec("t", 1)])
    assert time.monotonic() - start < 3.0
    assert our_threads() == []


@pytest.mark.parametrize(
    ("setting", "option"),
    [("consumer_config", "no.such.option"), ("broker_config", "fetch.bogus.ms")],
)
async def test_unknown_librdkafka_option_is_a_configuration_error(
    kafka_bootstrap: str, setting: str, option: str
) -> None:
    transport = KafkaTransport(f"kafka://{kafka_bootstrap}", make_settings(**{setting: {option: "1"}}))
    with pytest.raises(ConfigurationError, match=option.replace(".", r"\.")):
        async with transport.open_consumer(group_id="g", topics=["t"], listener=Listener()):
            pass


async def test_managed_option_and_bad_url_are_configuration_errors(kafka_bootstrap: str) -> None:
    transport = KafkaTransport(
        f"kafka://{kafka_bootstrap}",
        make_settings(consumer_config={"enable.auto.commit": True}),
    )
    with pytest.raises(ConfigurationError, match=r"enable\.auto\.commit"):
        async with transport.open_consumer(group_id="g", topics=["t"], listener=Listener()):
            pass
    with pytest.raises(ConfigurationError, match="kafka://"):
        KafkaTransport("redis://localhost", make_settings())
    assert KafkaTransport("kafka://a:1;b", make_settings()).bootstrap_servers == "a:1,b:9092"


async def test_clean_close_leaves_no_thread_behind(
    transport: KafkaTransport, new_topic: TopicFactory
) -> None:
    topic = await new_topic(1)
    listener = Listener()
    async with (
        transport.open_producer() as producer,
        transport.open_reader() as reader,
        transport.open_consumer(group_id=group_name(), topics=[topic], listener=listener) as consumer,
    ):
        listener.attach(consumer)
        assert sorted(our_threads()) == [
            "streamtrio-kafka-consumer",
            "streamtrio-kafka-producer",
            "streamtrio-kafka-reader",
        ]
        await producer.send(topic, None, b"x")
        reader.assign_nowait({TP(topic, 0): OFFSET_BEGINNING})
        assert [m.value for m in await read_until_eof(reader, {TP(topic, 0)})] == [b"x"]
        assert [m.value for m in await consume_n(consumer, 1)] == [b"x"]
    assert our_threads() == []
    with pytest.raises(ClosedError):
        await consumer.getmany()
    with pytest.raises(ClosedError):
        await consumer.commit({TP(topic, 0): 1})


async def test_cancelled_consumer_still_hands_partitions_back(
    transport: KafkaTransport, new_topic: TopicFactory
) -> None:
    topic = await new_topic(2)
    tps = frozenset({TP(topic, 0), TP(topic, 1)})
    async with transport.open_producer() as producer:
        await producer.send(topic, None, b"x", partition=1)
    group = group_name()
    listener = Listener()
    with trio.move_on_after(2.5) as scope:
        async with transport.open_consumer(group_id=group, topics=[topic], listener=listener) as consumer:
            listener.attach(consumer)
            [message] = await consume_n(consumer, 1)
            listener.to_commit = {message.tp: message.offset + 1}
            await consumer.getmany()  # nothing more: cancelled here
    assert scope.cancelled_caught
    assert listener.events[-1] == ("revoked", tps)
    assert our_threads() == []
    async with transport.open_consumer(
        group_id=group, topics=[topic], listener=Listener(resume=False)
    ) as again:
        assert await again.committed(tps) == {TP(topic, 0): None, TP(topic, 1): 1}


async def test_listener_error_stops_the_consumer_loudly(
    transport: KafkaTransport, new_topic: TopicFactory
) -> None:
    topic = await new_topic(1)

    class Failing(Listener):
        async def on_partitions_assigned(self, assigned: frozenset[TP]) -> None:
            raise RuntimeError("tables could not be recovered")

    with pytest.raises(RuntimeError, match="tables could not be recovered"):
        async with transport.open_consumer(
            group_id=group_name(), topics=[topic], listener=Failing()
        ) as consumer:
            await consume_for(consumer, 15.0)
    assert our_threads() == []


async def test_error_in_body_propagates_unwrapped(transport: KafkaTransport, new_topic: TopicFactory) -> None:
    topic = await new_topic(1)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with transport.open_consumer(group_id=group_name(), topics=[topic], listener=Listener()):
            raise Boom
    assert our_threads() == []


async def test_a_commit_refused_for_a_lost_session_hands_the_partitions_back_first(
    kafka_broker: KafkaTestBroker, transport: KafkaTransport, new_topic: TopicFactory
) -> None:
    """The committer tells "partitions moved" from a failed commit by the revoke it saw first.

    A commit that blocks while the broker is frozen outlives the 2 s session;
    the broker then refuses it (unknown member). By the time the error
    reaches the caller, the listener has been told the partitions are gone.
    """
    if kafka_broker.pid is None:
        pytest.skip("freezes the session's own broker; STREAMTRIO_TEST_BROKER names an external one")
    topic = await new_topic(2)
    tps = frozenset(TP(topic, p) for p in range(2))
    async with transport.open_producer() as producer:
        for p in range(2):
            producer.send_nowait(topic, None, b"x", partition=p)
        await producer.flush()
    listener = Listener()
    async with transport.open_consumer(group_id=group_name(), topics=[topic], listener=listener) as consumer:
        listener.attach(consumer)
        await consume_n(consumer, 2)
        # Whether the broker refuses the commit is a race (a request already
        # in flight when it froze may be accepted): a few tries.
        for _ in range(3):
            outcome = await commit_while_frozen(kafka_broker.pid, consumer, listener, tps)
            if "error" in outcome:
                break
            await wait_for(lambda: consumer.assignment() == tps, "the partitions back", limit=30)
        else:
            pytest.skip("the broker accepted every commit after a freeze: nothing to check this time")
        assert ("revoked", tps) in outcome["events"], outcome
        # The member rejoins, gets its partitions back and commits again.
        await wait_for(lambda: consumer.assignment() == tps, "the partitions back", limit=30)
        await consumer.commit(dict.fromkeys(tps, 1))
        assert await consumer.committed(tps) == dict.fromkeys(tps, 1)


async def commit_while_frozen(
    pid: int, consumer: Consumer, listener: Listener, tps: frozenset[TP]
) -> dict[str, Any]:
    """Commit while the broker is frozen for twice the session timeout; what came of it."""
    outcome: dict[str, Any] = {}

    async def commit() -> None:
        try:
            await consumer.commit(dict.fromkeys(tps, 1))
        except CommitError as exc:
            outcome["error"] = exc
            outcome["events"] = list(listener.events)
        else:
            outcome["ok"] = True

    os.kill(pid, signal.SIGSTOP)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit)
            await trio.sleep(4.0)
            os.kill(pid, signal.SIGCONT)
    finally:
        os.kill(pid, signal.SIGCONT)
    return outcome


async def test_a_commit_never_includes_a_partition_this_member_no_longer_owns(
    transport: KafkaTransport, new_topic: TopicFactory
) -> None:
    # A periodic commit read its offsets before a rebalance took half the
    # partitions away; landing after the revoke's commit it would move the
    # new owner's offsets back. The transport drops what is not owned.
    topic = await new_topic(4)
    all_tps = frozenset(TP(topic, p) for p in range(4))
    group = group_name()
    first_listener, second_listener = Listener(), Listener()
    async with transport.open_consumer(group_id=group, topics=[topic], listener=first_listener) as first:
        first_listener.attach(first)
        await wait_for(lambda: first.assignment() == all_tps, "the whole topic")
        async with transport.open_consumer(
            group_id=group, topics=[topic], listener=second_listener
        ) as second:
            second_listener.attach(second)
            await wait_for(
                lambda: len(first.assignment()) == 2 and len(second.assignment()) == 2,
                "the group to split the partitions",
            )
            mine, theirs = first.assignment(), second.assignment()
            await second.commit(dict.fromkeys(theirs, 7))
            # The stale snapshot: every partition, older offsets.
            await first.commit(dict.fromkeys(all_tps, 3))
            assert await first.committed(all_tps) == {
                **dict.fromkeys(mine, 3),
                **dict.fromkeys(theirs, 7),
            }


async def test_reader_reports_end_offsets_for_recovery_totals(
    transport: KafkaTransport, new_topic: TopicFactory
) -> None:
    topic = await new_topic(3)
    counts = {0: 4, 1: 0, 2: 9}
    async with transport.open_producer() as producer:
        for p, n in counts.items():
            for i in range(n):
                producer.send_nowait(topic, None, f"{p}:{i}".encode(), partition=p)
        await producer.flush()
    async with transport.open_reader() as reader:
        # Not assigned: the ends are asked of the broker.
        assert await reader.end_offsets([TP(topic, p) for p in counts]) == {
            TP(topic, p): n for p, n in counts.items()
        }
