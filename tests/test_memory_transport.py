"""The memory:// transport behaves like a one-process Kafka."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from streamtrio._exceptions import ClosedError, CommitError, ProducerError, TopicError
from streamtrio._partitioner import partition_for_key
from streamtrio._settings import Settings
from streamtrio._transports.base import OFFSET_BEGINNING, OFFSET_END
from streamtrio._transports.memory import MemoryBroker, MemoryConsumer, MemoryTransport
from streamtrio._types import TP, Message, RecordMetadata, TopicSpec


@pytest.fixture(autouse=True)
def _fresh_brokers() -> Iterator[None]:
    MemoryBroker.reset_all()
    yield
    MemoryBroker.reset_all()


def make_transport(url: str = "memory://", **options: Any) -> MemoryTransport:
    return MemoryTransport(url, Settings("test-app", broker=url, **options))


class Listener:
    """Records rebalance callbacks; revoke returns the consumer's positions."""

    def __init__(self, name: str, log: list[tuple[str, str, frozenset[TP]]]) -> None:
        self.name = name
        self.log = log
        self.consumer: MemoryConsumer | None = None
        self.resume = True
        self.to_commit: Callable[[frozenset[TP]], Mapping[TP, int]] = self._positions

    def _positions(self, revoked: frozenset[TP]) -> Mapping[TP, int]:
        assert self.consumer is not None
        return {tp: pos for tp in revoked if (pos := self.consumer.position(tp)) is not None}

    async def on_partitions_revoked(self, revoked: frozenset[TP]) -> Mapping[TP, int]:
        self.log.append((self.name, "revoked", revoked))
        await trio.lowlevel.checkpoint()
        return self.to_commit(revoked)

    async def on_partitions_assigned(self, assigned: frozenset[TP]) -> None:
        self.log.append((self.name, "assigned", assigned))
        await trio.lowlevel.checkpoint()
        if self.resume:
            assert self.consumer is not None
            self.consumer.resume_nowait(assigned)


async def pump(consumer: MemoryConsumer, sink: list[Message]) -> None:
    while True:
        sink.extend(await consumer.getmany())


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)


def tps(topic: str, *partitions: int) -> frozenset[TP]:
    return frozenset(TP(topic, p) for p in partitions)


class Member:
    """A group member whose fetch loop runs in the background until stopped."""

    def __init__(self, transport: MemoryTransport, name: str, log: list[Any], **kw: Any) -> None:
        self.transport = transport
        self.listener = Listener(name, log)
        self.received: list[Message] = []
        self.stop = trio.Event()
        self.left = trio.Event()
        self.kw = kw
        self.consumer: MemoryConsumer | None = None

    async def run(self, *, task_status: trio.TaskStatus[MemoryConsumer]) -> None:
        async with self.transport.open_consumer(listener=self.listener, **self.kw) as consumer:
            self.consumer = self.listener.consumer = consumer
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, consumer, self.received)
                task_status.started(consumer)
                await self.stop.wait()
                nursery.cancel_scope.cancel()
        self.left.set()


async def start(nursery: trio.Nursery, member: Member) -> MemoryConsumer:
    consumer: MemoryConsumer = await nursery.start(member.run)
    return consumer


# -- topics and producing ----------------------------------------------------


async def test_round_trip_keeps_key_value_headers_timestamp_and_offsets() -> None:
    transport = make_transport()
    assert await transport.create_topics([TopicSpec("orders", 2)]) == ["orders"]
    async with transport.open_producer() as producer:
        md = await producer.send(
            "orders", b"k1", b"v1", partition=1, timestamp=1700000000.1234, headers=[("h", b"x")]
        )
        before = time.time()
        md2 = await producer.send("orders", None, None, partition=1)
    assert md == RecordMetadata("orders", 1, 0, 1700000000.123)
    assert md2.offset == 1

    log: list[Any] = []
    listener = Listener("a", log)
    async with transport.open_consumer(group_id="g", topics=["orders"], listener=listener) as c:
        listener.consumer = c
        batch = await c.getmany()
    assert batch[0] == Message("orders", 1, 0, b"k1", b"v1", 1700000000.123, [("h", b"x")])
    assert (batch[1].offset, batch[1].key, batch[1].value, batch[1].headers) == (1, None, None, None)
    assert before - 0.001 <= batch[1].timestamp <= time.time()
    assert len(batch) == 2


async def test_keyed_messages_land_where_kafkas_partitioner_puts_them() -> None:
    transport = make_transport()
    await transport.create_topics([TopicSpec("t", 8), TopicSpec("wide", 1000)])
    keys = [f"account-{i}".encode() for i in range(50)]
    async with transport.open_producer() as producer:
        for key in keys:
            producer.send_nowait("t", key, b"v")
        # The Java client puts b"123456789" on partition 566 of 1000.
        md = await producer.send("wide", b"123456789", b"v")
    assert md.partition == 566
    for p in range(8):
        stored = transport.broker.messages("t", p)
        assert [m.offset for m in stored] == list(range(len(stored)))
        assert all(partition_for_key(m.key, 8) == p for m in stored)
    assert sum(len(transport.broker.messages("t", p)) for p in range(8)) == 50


async def test_create_topics_never_alters_and_producing_auto_creates() -> None:
    transport = make_transport(topic_partitions=3)
    assert await transport.create_topics([TopicSpec("a", 4), TopicSpec("b", 2)]) == ["a", "b"]
    assert await transport.create_topics([TopicSpec("a", 9), TopicSpec("c", 1)]) == ["c"]
    async with transport.open_producer() as producer:
        assert producer.partition_count("new") is None
        await producer.send("new", b"k", b"v")
        assert producer.partition_count("new") == 3
    counts = await transport.partition_counts(["a", "b", "c", "new", "missing"])
    assert counts == {"a": 4, "b": 2, "c": 1, "new": 3}
    with pytest.raises(TopicError):
        await transport.create_topics([TopicSpec("zero", 0)])


async def test_named_brokers_are_shared_and_separate() -> None:
    one, same, other = make_transport("memory://x"), make_transport("memory://x/"), make_transport()
    await one.create_topics([TopicSpec("t", 1)])
    assert await same.partition_counts(["t"]) == {"t": 1}
    assert await other.partition_counts(["t"]) == {}


async def test_delivery_is_reported_after_send_nowait_and_flush_waits_for_it() -> None:
    transport = make_transport()
    reports: list[RecordMetadata | None] = []
    async with transport.open_producer() as producer:
        for i in range(3):
            producer.send_nowait("t", b"k", str(i).encode(), on_delivery=lambda md, err: reports.append(md))
        assert reports == []  # never called synchronously
        assert producer.statistics().queued == 3
        await producer.flush()
        assert [md.offset for md in reports if md is not None] == [0, 1, 2]
        stats = producer.statistics()
        assert (stats.queued, stats.delivered, stats.failed) == (0, 3, 0)


async def test_unknown_partition_fails_delivery_and_flush_raises_once() -> None:
    transport = make_transport()
    await transport.create_topics([TopicSpec("t", 2)])
    errors: list[ProducerError | None] = []
    async with transport.open_producer() as producer:
        producer.send_nowait("t", b"k", b"v", partition=5, on_delivery=lambda md, e: errors.append(e))
        await producer.flush()  # reported to the callback: flush does not raise
        assert isinstance(errors[0], ProducerError)
        producer.send_nowait("t", b"k", b"v", partition=2)
        with pytest.raises(ProducerError, match=r"t\[2\]"):
            await producer.flush()
        await producer.flush()
        assert producer.statistics().failed == 2
    assert transport.broker.messages("t", 0) == transport.broker.messages("t", 1) == []


async def test_a_batch_lands_in_order_and_is_reported_once() -> None:
    transport = make_transport()
    await transport.create_topics([TopicSpec("t", 2)])
    reports: list[tuple[int, int, ProducerError | None]] = []
    records = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(5)] + [(b"gone", None)]
    async with transport.open_producer() as producer:
        producer.send_nowait("t", b"first", b"x", partition=1)
        producer.send_batch_nowait("t", 1, records, on_delivery=lambda *report: reports.append(report))
        producer.send_batch_nowait("t", 1, [])  # nothing to send: never reported
        assert reports == []  # never called synchronously
        await producer.flush()
        assert reports == [(6, 6, None)]
        stats = producer.statistics()
        assert (stats.queued, stats.delivered, stats.failed) == (0, 7, 0)
    stored = transport.broker.messages("t", 1)
    assert [(m.offset, m.key, m.value) for m in stored] == [(0, b"first", b"x")] + [
        (i + 1, k, v) for i, (k, v) in enumerate(records)
    ]
    assert transport.broker.messages("t", 0) == []
    with pytest.raises(ClosedError):
        producer.send_batch_nowait("t", 0, records)


async def test_a_failed_batch_reports_its_error_once_and_flush_raises_without_a_callback() -> None:
    transport = make_transport()
    await transport.create_topics([TopicSpec("t", 2)])
    reports: list[tuple[int, int, ProducerError | None]] = []
    async with transport.open_producer() as producer:
        producer.send_batch_nowait(
            "t", 5, [(b"a", b"1"), (b"b", b"2")], on_delivery=lambda *r: reports.append(r)
        )
        await producer.flush()  # reported to the callback: flush does not raise
        [(count, offset, error)] = reports
        assert (count, offset) == (2, -1) and isinstance(error, ProducerError)
        producer.send_batch_nowait("t", 2, [(b"a", b"1")])
        with pytest.raises(ProducerError, match=r"t\[2\]"):
            await producer.flush()
        assert producer.statistics().failed == 3
    assert transport.broker.messages("t", 0) == transport.broker.messages("t", 1) == []


async def test_closed_producer_raises() -> None:
    transport = make_transport()
    async with transport.open_producer() as producer:
        pass
    with pytest.raises(ClosedError):
        producer.send_nowait("t", b"k", b"v")


# -- consumer groups -----------------------------------------------------------


async def test_range_assignment_over_two_members_is_co_partitioned() -> None:
    transport = make_transport()
    await transport.create_topics([TopicSpec("orders", 3), TopicSpec("orders-changelog", 3)])
    log: list[Any] = []
    kw = {"group_id": "g", "topics": ["orders", "orders-changelog"]}
    async with trio.open_nursery() as nursery:
        a, b = Member(transport, "a", log, **kw), Member(transport, "b", log, **kw)
        ca, cb = await start(nursery, a), await start(nursery, b)
        await wait_until(lambda: bool(ca.assignment()) and bool(cb.assignment()))
        assert ca.assignment() == tps("orders", 0, 1) | tps("orders-changelog", 0, 1)
        assert cb.assignment() == tps("orders", 2) | tps("orders-changelog", 2)
        a.stop.set()
        b.stop.set()


async def test_range_assignment_over_three_members_gives_extras_to_the_first() -> None:
    transport = make_transport()
    await transport.create_topics([TopicSpec("t", 8), TopicSpec("u", 2)])
    log: list[Any] = []
    async with trio.open_nursery() as nursery:
        members = [Member(transport, n, log, group_id="g", topics=["t", "u"]) for n in "abc"]
        consumers = [await start(nursery, m) for m in members]
        await wait_until(lambda: all(c.assignment() for c in consumers))
        assert [c.assignment() for c in consumers] == [
            tps("t", 0, 1, 2) | tps("u", 0),
            tps("t", 3, 4, 5) | tps("u", 1),
            tps("t", 6, 7),
        ]
        assert transport.broker.assignments("g") == {c.member_id: c.assignment() for c in consumers}
        for m in members:
            m.stop.set()


async def test_join_revokes_commits_then_assigns_and_new_member_resumes() -> None:
    transport = make_transport()
    await transport.create_topics([TopicSpec("t", 2)])
    async with transport.open_producer() as producer:
        for i in range(10):
            producer.send_nowait("t", None, str(i).encode(), partition=i % 2)
    log: list[Any] = []
    kw = {"group_id": "g", "topics": ["t"]}
    async with trio.open_nursery() as nursery:
        a = Member(transport, "a", log, **kw)
        await start(nursery, a)
        await wait_until(lambda: len(a.received) == 10)
        # Commit less than was read, so the new owner visibly starts there.
        a.listener.to_commit = lambda revoked: {TP("t", 0): 3, TP("t", 1): 4}
        b = Member(transport, "b", log, **kw)
        await start(nursery, b)
        await wait_until(lambda: len(log) == 4)
        assert log[:2] == [("a", "assigned", tps("t", 0, 1)), ("a", "revoked", tps("t", 0, 1))]
        assert set(log[2:]) == {("a", "assigned", tps("t", 0)), ("b", "assigned", tps("t", 1))}
        assert transport.broker.committed("g") == {TP("t", 0): 3, TP("t", 1): 4}
        # Each owner starts at the committed offset, not where a had read to.
        await wait_until(lambda: len(b.received) == 1 and len(a.received) == 12)
        assert [(m.partition, m.offset) for m in b.received] == [(1, 4)]
        assert [(m.partition, m.offset) for m in a.received[10:]] == [(0, 3), (0, 4)]
        a.listener.to_commit = a.listener._positions
        a.stop.set()
        b.stop.set()


async def test_leaving_member_commits_via_revoke_and_the_rest_take_over() -> None:
    transport = make_transport()
    await transport.create_topics([TopicSpec("t", 4)])
    async with transport.open_producer() as producer:
        for p in range(4):
            producer.send_nowait("t", None, b"v", partition=p)
    log: list[Any] = []
    kw = {"group_id": "g", "topics": ["t"]}
    async with trio.open_nursery() as nursery:
        a, b = Member(transport, "a", log, **kw), Member(transport, "b", log, **kw)
        await start(nursery, a)
        await start(nursery, b)
        await wait_until(lambda: len(a.received) + len(b.received) == 4)
        log.clear()
        b.stop.set()
        await b.left.wait()
        await wait_until(lambda: len(log) == 3)
        assert log == [
            ("b", "revoked", tps("t", 2, 3)),
            ("a", "revoked", tps("t", 0, 1)),
            ("a", "assigned", tps("t", 0, 1, 2, 3)),
        ]
        assert transport.broker.committed("g") == {TP(t, p): 1 for t, p in tps("t", 0, 1, 2, 3)}
        assert list(transport.broker.assignments("g").values()) == [tps("t", 0, 1, 2, 3)]
        # Nothing is read twice: b's committed offsets are where a continues.
        async with transport.open_producer() as producer:
            producer.send_nowait("t", None, b"new", partition=3)
        await wait_until(lambda: len(a.received) == 3)
        assert [(m.partition, m.offset) for m in a.received[2:]] == [(3, 1)]
        a.stop.set()


async def test_joining_member_waits_until_the_others_have_revoked() -> None:
    transport = make_transport()
    await transport.create_topics([TopicSpec("t", 2)])
    log: list[Any] = []
    a_listener, b_listener = Listener("a", log), Listener("b", log)
    kw: dict[str, Any] = {"group_id": "g", "topics": ["t"]}
    async with transport.open_consumer(listener=a_listener, **kw) as a:
        a_listener.consumer = a
        with trio.move_on_after(0.05):
            await a.getmany()
        assert a.assignment() == tps("t", 0, 1)
        async with transport.open_consumer(listener=b_listener, **kw) as b:
            b_listener.consumer = b
            # a has not polled since b joined: b's getmany gets no partitions yet.
            with trio.move_on_after(0.05) as scope:
                await b.getmany()
            assert scope.cancelled_caught
            assert b.assignment() == frozenset()
            assert a.assignment() == tps("t", 0, 1)
            with trio.move_on_after(0.05):
                await a.getmany()  # runs a's revoke, then its new assignment
            assert log == [
                ("a", "assigned", tps("t", 0, 1)),
                ("a", "revoked", tps("t", 0, 1)),
                ("a", "assigned", tps("t", 0)),
            ]
            with trio.move_on_after(0.05):
                await b.getmany()
            assert log[-1] == ("b", "assigned", tps("t", 1))
            assert b.assignment() == tps("t", 1)


async def test_commit_skips_partitions_not_owned_and_closed_consumer_raises() -> None:
    transport = make_transport()
    await transport.create_topics([TopicSpec("t", 1)])
    listener = Listener("a", [])
    async with transport.open_consumer(group_id="g", topics=["t"], listener=listener) as c:
        listener.consumer = c
        with trio.move_on_after(0.05):
            await c.getmany()
        await c.commit({TP("t", 0): 0})
        # Not this member's partition: not committed (its owner commits it).
        await c.commit({TP("t", 1): 5})
        with pytest.raises(CommitError, match=r"negative offset -2 for t\[0\]"):
            await c.commit({TP("t", 0): -2})
        assert await c.committed([TP("t", 0), TP("t", 1)]) == {TP("t", 0): 0, TP("t", 1): None}
    with pytest.raises(ClosedError):
        await c.commit({TP("t", 0): 1})
    with pytest.raises(ClosedError):
        await c.getmany()
    assert transport.broker.assignments("g") == {}


async def test_topic_created_after_subscribing_is_assigned(autojump_clock: Any) -> None:
    transport = make_transport(topic_partitions=2)
    log: list[Any] = []
    async with trio.open_nursery() as nursery:
        a = Member(transport, "a", log, group_id="g", topics=["later"])
        consumer = await start(nursery, a)
        async with transport.open_producer() as producer:
            await producer.send("later", b"k", b"v")
        await wait_until(lambda: len(a.received) == 1)
        assert consumer.assignment() == tps("later", 0, 1)
        a.stop.set()


async def test_assigned_partitions_start_paused_and_pause_is_immediate(
    autojump_clock: Any,
) -> None:
    transport = make_transport()
    await transport.create_topics([TopicSpec("t", 2)])
    async with transport.open_producer() as producer:
        for p in (0, 1):
            producer.send_nowait("t", None, b"old", partition=p)
    listener = Listener("a", [])
    listener.resume = False
    async with transport.open_consumer(group_id="g", topics=["t"], listener=listener) as c:
        listener.consumer = c
        with trio.move_on_after(5) as scope:
            await c.getmany()
        assert scope.cancelled_caught  # assigned but paused: nothing is returned
        c.resume_nowait([TP("t", 0), TP("t", 1)])
        c.pause_nowait([TP("t", 1)])
        assert [(m.partition, m.offset) for m in await c.getmany()] == [(0, 0)]
        async with transport.open_producer() as producer:
            producer.send_nowait("t", None, b"new", partition=1)
            producer.send_nowait("t", None, b"new", partition=0)
        assert [(m.partition, m.offset) for m in await c.getmany()] == [(0, 1)]
        c.resume_nowait([TP("t", 1)])
        assert [(m.partition, m.offset) for m in await c.getmany()] == [(1, 0), (1, 1)]


async def test_batches_are_bounded_and_fair_across_partitions() -> None:
    transport = make_transport(consumer_max_batch=4)
    await transport.create_topics([TopicSpec("t", 2)])
    async with transport.open_producer() as producer:
        for i in range(10):
            producer.send_nowait("t", None, str(i).encode(), partition=0)
            producer.send_nowait("t", None, str(i).encode(), partition=1)
    listener = Listener("a", [])
    async with transport.open_consumer(group_id="g", topics=["t"], listener=listener) as c:
        listener.consumer = c
        batches = [await c.getmany() for _ in range(5)]
    assert all(len(batch) == 4 for batch in batches)
    assert all(sorted(m.partition for m in batch) == [0, 0, 1, 1] for batch in batches)
    for p in (0, 1):
        assert [m.offset for batch in batches for m in batch if m.partition == p] == list(range(10))


async def test_getmany_waits_for_messages_and_cancelling_loses_none(autojump_clock: Any) -> None:
    transport = make_transport()
    await transport.create_topics([TopicSpec("t", 1)])
    listener = Listener("a", [])
    async with transport.open_consumer(group_id="g", topics=["t"], listener=listener) as c:
        listener.consumer = c
        with trio.move_on_after(1) as scope:
            await c.getmany()
        assert scope.cancelled_caught
        async with transport.open_producer() as producer:
            producer.send_nowait("t", None, b"1")
            with trio.CancelScope() as cancelled:
                cancelled.cancel()
                await c.getmany()
            producer.send_nowait("t", None, b"2")
        assert [m.value for m in await c.getmany()] == [b"1", b"2"]

        async def produce_later() -> None:
            await trio.sleep(3)
            async with transport.open_producer() as producer:
                producer.send_nowait("t", None, b"3")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce_later)
            start_time = trio.current_time()
            assert [m.value for m in await c.getmany()] == [b"3"]
            assert trio.current_time() - start_time == pytest.approx(3)


async def test_new_group_starts_by_auto_offset_reset(autojump_clock: Any) -> None:
    for reset, expected in (("earliest", [b"old", b"new"]), ("latest", [b"new"])):
        transport = make_transport(consumer_auto_offset_reset=reset)
        await transport.create_topics([TopicSpec(f"t-{reset}", 1)])
        async with transport.open_producer() as producer:
            await producer.send(f"t-{reset}", None, b"old")
        listener = Listener("a", [])
        async with transport.open_consumer(group_id="g", topics=[f"t-{reset}"], listener=listener) as c:
            listener.consumer = c
            got: list[bytes | None] = []
            with trio.move_on_after(1):
                # Installs the assignment; "latest" then has nothing to read.
                got += [m.value for m in await c.getmany()]
            async with transport.open_producer() as producer:
                await producer.send(f"t-{reset}", None, b"new")
            with trio.fail_after(1):
                while len(got) < len(expected):
                    got += [m.value for m in await c.getmany()]
        assert got == expected


async def test_delivery_callback_errors_are_raised_by_flush() -> None:
    transport = make_transport()

    def broken(md: RecordMetadata | None, err: ProducerError | None) -> None:
        raise RuntimeError("boom")

    async with transport.open_producer() as producer:
        producer.send_nowait("t", b"k", b"v", on_delivery=broken)
        with pytest.raises(ProducerError, match="boom"):
            await producer.flush()
        assert producer.statistics().delivered == 1


# -- readers -------------------------------------------------------------------


async def test_reader_reports_end_of_partition(autojump_clock: Any) -> None:
    transport = make_transport()
    await transport.create_topics([TopicSpec("log", 2)])
    t0, t1 = TP("log", 0), TP("log", 1)
    async with transport.open_producer() as producer:
        for i in range(3):
            producer.send_nowait("log", None, str(i).encode(), partition=1)
    async with transport.open_reader() as reader:
        reader.assign_nowait({t0: OFFSET_BEGINNING, t1: OFFSET_BEGINNING})
        first = await reader.getmany()
        assert [m.value for m in first.messages] == [b"0", b"1", b"2"]
        assert first.eof == {t0, t1}  # empty t0 at once; t1 after its last message
        with trio.move_on_after(5) as scope:
            await reader.getmany()
        assert scope.cancelled_caught  # no repeated end-of-partition events
        async with transport.open_producer() as producer:
            await producer.send("log", None, b"3", partition=0)
        again = await reader.getmany()
        assert [(m.partition, m.offset) for m in again.messages] == [(0, 0)]
        assert again.eof == {t0}
        reader.assign_nowait({t1: OFFSET_END})
        assert await reader.getmany() == type(again)([], frozenset({t1}))
        reader.assign_nowait({t1: 1})
        batch = await reader.getmany()
        assert [m.offset for m in batch.messages] == [1, 2] and batch.eof == {t1}
        reader.unassign_nowait([t0, t1])
        async with transport.open_producer() as producer:
            await producer.send("log", None, b"4", partition=0)
        with trio.move_on_after(5) as scope:
            await reader.getmany()
        assert scope.cancelled_caught
        with pytest.raises(TopicError):
            reader.assign_nowait({TP("missing", 0): OFFSET_BEGINNING})


# -- several trio runs -----------------------------------------------------------


def test_named_broker_survives_across_trio_runs() -> None:
    transport = make_transport("memory://shared")
    log: list[Any] = []

    async def produce(values: list[bytes]) -> list[int]:
        offsets = []
        async with transport.open_producer() as producer:
            for v in values:
                offsets.append((await producer.send("t", None, v, partition=0)).offset)
        return offsets

    async def consume_some(n: int) -> list[bytes | None]:
        listener = Listener("x", log)
        got: list[bytes | None] = []
        async with transport.open_consumer(group_id="g", topics=["t"], listener=listener) as c:
            listener.consumer = c
            while len(got) < n:
                batch = await c.getmany()
                got += [m.value for m in batch]
            # leaving commits the position through the listener
        return got

    async def wait_with_reader() -> bool:
        async with transport.open_reader() as reader:
            reader.assign_nowait({TP("t", 0): OFFSET_END})
            await reader.getmany()  # end-of-partition
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce, [b"late"])
                batch = await reader.getmany()
            return [m.value for m in batch.messages] == [b"late"]

    run: Callable[..., Any] = trio.run
    assert run(produce, [b"a", b"b", b"c"]) == [0, 1, 2]
    assert run(consume_some, 2) == [b"a", b"b", b"c"]
    assert run(produce, [b"d"]) == [3]
    assert run(consume_some, 1) == [b"d"]  # resumed at the committed offset 3
    assert run(wait_with_reader)
    assert MemoryBroker.get("shared").committed("g")[TP("t", 0)] == 4
