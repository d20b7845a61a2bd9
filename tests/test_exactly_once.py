"""processing_guarantee="exactly_once" on the memory transport: transactions, kill -9, fencing."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import trio

import streamtrio
from streamtrio import TP
from streamtrio._settings import Settings
from streamtrio._transports.base import OFFSET_BEGINNING, RebalanceListener
from streamtrio._transports.memory import MemoryBroker, MemoryConsumer, MemoryProducer, MemoryTransport

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

PARTITIONS = 4
log = logging.getLogger(__name__)


# -- the memory transport's transactions ------------------------------------------------


class _Listener:
    def __init__(self) -> None:
        self.assigned: set[TP] = set()
        self.consumer: MemoryConsumer | None = None

    async def on_partitions_revoked(self, revoked: frozenset[TP]) -> dict[TP, int]:
        await trio.lowlevel.checkpoint()
        self.assigned -= revoked
        return {}

    async def on_partitions_assigned(self, assigned: frozenset[TP]) -> None:
        await trio.lowlevel.checkpoint()
        self.assigned |= assigned
        if self.consumer is not None:
            self.consumer.resume_nowait(assigned)


def _transport(name: str) -> MemoryTransport:
    MemoryBroker._registry.pop(name, None)
    return MemoryTransport(f"memory://{name}", Settings("txn-test", topic_partitions=1))


async def _read_all(transport: MemoryTransport, tp: TP) -> list[bytes | None]:
    """What a reader sees of ``tp`` from the beginning up to its (stable) end."""
    seen: list[bytes | None] = []
    async with transport.open_reader() as reader:
        reader.assign_nowait({tp: OFFSET_BEGINNING})
        with trio.fail_after(5):
            while True:
                batch = await reader.getmany()
                seen += [m.value for m in batch.messages]
                if tp in batch.eof:
                    return seen


async def test_open_transactions_are_invisible_and_aborted_ones_never_visible() -> None:
    transport = _transport("txn-visibility")
    broker = transport.broker
    tp = TP("t", 0)
    async with transport.open_producer(transactional_id="app-w1") as producer:
        producer.send_nowait("t", None, b"aborted-1", partition=0)
        await producer.flush()  # delivered (it has an offset) but not committed
        assert [m.value for m in broker.messages("t", 0)] == [b"aborted-1"]
        assert await _read_all(transport, tp) == []
        assert broker.open_transactions() == ["app-w1"]
        await producer.abort_transaction()
        assert broker.open_transactions() == []

        producer.send_nowait("t", None, b"kept-1", partition=0)
        producer.send_nowait("t", None, b"kept-2", partition=0)
        await producer.flush()
        assert await _read_all(transport, tp) == []
        await producer.commit_transaction()
        assert await _read_all(transport, tp) == [b"kept-1", b"kept-2"]

        producer.send_nowait("t", None, b"aborted-2", partition=0)
        await producer.abort_transaction()
    assert await _read_all(transport, tp) == [b"kept-1", b"kept-2"]
    assert [m.value for m in broker.committed_messages("t", 0)] == [b"kept-1", b"kept-2"]
    assert len(broker.messages("t", 0)) == 4  # aborted ones keep their offsets, hidden


async def test_a_consumer_waits_at_the_last_stable_offset() -> None:
    transport = _transport("txn-lso")
    broker = transport.broker
    broker.create_topic("t", 1)
    listener = _Listener()
    async with (
        transport.open_producer(transactional_id="app-w1") as txn,
        transport.open_producer() as plain,
        transport.open_consumer(group_id="g", topics=["t"], listener=cast(RebalanceListener, listener)) as c,
    ):
        listener.consumer = c
        txn.send_nowait("t", None, b"in-txn", partition=0)
        plain.send_nowait("t", None, b"plain", partition=0)  # after the open transaction's first offset
        await plain.flush()
        with trio.move_on_after(0.2):
            await c.getmany()
            pytest.fail("read past an open transaction")
        await txn.commit_transaction()
        with trio.fail_after(5):
            got = await c.getmany()
        assert [m.value for m in got] == [b"in-txn", b"plain"]


async def test_offsets_are_committed_only_with_the_transaction() -> None:
    transport = _transport("txn-offsets")
    broker = transport.broker
    broker.create_topic("src", 1)
    tp = TP("src", 0)
    listener = _Listener()
    async with (
        transport.open_producer(transactional_id="app-w1") as producer,
        transport.open_consumer(
            group_id="g", topics=["src"], listener=cast(RebalanceListener, listener)
        ) as c,
    ):
        with trio.move_on_after(0.05):
            await c.getmany()  # runs the assignment
        assert listener.assigned == {tp}
        metadata = await c.group_metadata()

        await producer.send_offsets_to_transaction({tp: 5}, metadata)
        producer.send_nowait("out", None, b"x", partition=0)
        assert broker.committed("g") == {}
        await producer.abort_transaction()
        assert broker.committed("g") == {}

        await producer.send_offsets_to_transaction({tp: 7}, metadata)
        assert broker.committed("g") == {}
        await producer.commit_transaction()
        assert broker.committed("g") == {tp: 7}
        assert [m.value for m in broker.committed_messages("out", 0)] == []

        # offsets of partitions the member does not own are refused
        with pytest.raises(streamtrio.TransactionError, match="not assigned"):
            await producer.send_offsets_to_transaction({TP("src", 3): 1}, metadata)


async def test_a_new_producer_with_the_same_transactional_id_fences_the_old_one() -> None:
    transport = _transport("txn-fencing")
    broker = transport.broker
    async with transport.open_producer(transactional_id="app-w1") as old:
        old.send_nowait("t", None, b"zombie", partition=0)
        await old.flush()
        async with transport.open_producer(transactional_id="app-w1") as new:
            # init aborted the old producer's open transaction
            assert broker.committed_messages("t", 0) == []
            with pytest.raises(streamtrio.ProducerFencedError, match="app-w1"):
                await old.commit_transaction()
            with pytest.raises(streamtrio.ProducerFencedError):
                await old.send("t", None, b"late", partition=0)
            new.send_nowait("t", None, b"new", partition=0)
            await new.commit_transaction()
            # a different id is not fenced
            async with transport.open_producer(transactional_id="app-w2") as other:
                other.send_nowait("t", None, b"other", partition=0)
                await other.commit_transaction()
    assert [m.value for m in broker.committed_messages("t", 0)] == [b"new", b"other"]


async def test_a_plain_producer_refuses_transaction_calls() -> None:
    transport = _transport("txn-plain")
    async with transport.open_producer() as producer:
        assert producer.transactional_id is None
        with pytest.raises(streamtrio.TransportError, match="not transactional"):
            await producer.commit_transaction()


# -- the worker ---------------------------------------------------------------------------


def corpus(n: int, vocabulary: int = 300, start: int = 0) -> list[str]:
    return [f"word-{(i * 7919) % vocabulary}" for i in range(start, start + n)]


def eos_word_count(
    app_factory: AppFactory, after: Callable[[str], None] | None = None, **options: Any
) -> tuple[streamtrio.App, streamtrio.Table]:
    """Counts words and sends one output per input, naming the input's partition and offset."""
    options.setdefault("commit_interval", 0.02)
    options.setdefault("processing_guarantee", "exactly_once")
    app = app_factory(**options)
    words = app.topic("words", key_type=str, value_type=str, partitions=PARTITIONS)
    out = app.topic("out", key_type=str, value_type=str, partitions=PARTITIONS)
    counts = app.Table("counts", default=int, key_type=str, value_type=int, partitions=PARTITIONS)

    @app.agent(words)
    async def count(stream: streamtrio.Stream[str]) -> None:
        async for word in stream:
            counts[word] += 1
            event = streamtrio.current_event()
            assert event is not None
            # awaited: a commit may come while this event is half done
            await out.send(key=word, value=f"{event.message.partition}:{event.message.offset}")
            if after is not None:
                after(word)

    return app, counts


async def produce(app: streamtrio.App, words: list[str]) -> None:
    """Send the words from outside (a plain producer: inside a running exactly_once
    worker, ``app.open_client()`` would reuse its transactional producer)."""
    feeder = streamtrio.App(
        "feeder", broker=app.conf.broker, store="memory://", web_enabled=False, datadir=app.conf.datadir
    )
    topic = feeder.topic("words", key_type=str, value_type=str, partitions=PARTITIONS)
    async with feeder.open_client():
        for word in words:
            topic.send_soon(key=word, value=word)
        await feeder.producer.flush()


def source_ends(broker: MemoryBroker) -> dict[TP, int]:
    ends = {TP("words", p): broker.end_offset(TP("words", p)) for p in range(PARTITIONS)}
    return {tp: end for tp, end in ends.items() if end}


def committed_outputs(broker: MemoryBroker) -> list[str]:
    """The sink as a read_committed consumer sees it."""
    return [
        cast(bytes, m.value).decode().strip('"')
        for p in range(PARTITIONS)
        for m in broker.committed_messages("out", p)
    ]


def raw_outputs(broker: MemoryBroker) -> int:
    return sum(len(broker.messages("out", p)) for p in range(PARTITIONS))


def kill(worker: streamtrio.Worker, scope: trio.CancelScope) -> None:
    """kill -9 of the worker's process: its clients go silent, nothing is committed or cleaned up."""
    cast(MemoryProducer, worker.producer).kill()
    if worker.consumer is not None:
        cast(MemoryConsumer, worker.consumer).kill()
    scope.cancel()


def assert_exact(broker: MemoryBroker, counts: dict[str, int], words: list[str]) -> None:
    assert counts == Counter(words)
    outputs = committed_outputs(broker)
    inputs = {f"{tp.partition}:{offset}" for tp, end in source_ends(broker).items() for offset in range(end)}
    assert len(outputs) == len(words)  # no duplicate...
    assert set(outputs) == inputs  # ...and none missing


@pytest.mark.parametrize("when", ["mid-transaction", "after-commit-before-lmdb"])
async def test_kill_9_mid_transaction_then_takeover_is_exact(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path, when: str
) -> None:
    total = 20_000
    words = corpus(total)
    datadir = str(tmp_path / "worker-1")
    scope = trio.CancelScope()
    processed = 0
    killed: dict[str, Any] = {}

    def after(_word: str) -> None:
        nonlocal processed
        processed += 1
        if when == "mid-transaction" and processed == total // 2:
            worker = app._worker
            assert worker is not None
            killed["open"] = broker.open_transactions()
            killed["stats"] = worker.committer.statistics() if worker.committer else None
            kill(worker, scope)

    app, _ = eos_word_count(app_factory, after, store="lmdb://", datadir=datadir, lmdb_sync=False)
    if when == "after-commit-before-lmdb":
        complete = app.tables.complete_commit

        async def die_before_lmdb(offsets: Any) -> None:
            if processed >= total // 2:
                worker = app._worker
                assert worker is not None
                killed["stats"] = worker.committer.statistics() if worker.committer else None
                kill(worker, scope)
                await trio.sleep_forever()
            await complete(offsets)

        app.tables.complete_commit = die_before_lmdb  # type: ignore[method-assign]

    with scope:
        async with running(app):
            await produce(app, words)
            await trio.sleep_forever()
    assert killed["stats"].transactions > 0  # some transactions committed before the kill
    if when == "mid-transaction":
        assert killed["open"], "the kill must land inside an open transaction"
    committed_before = dict(broker.committed(app.id))
    assert committed_before != source_ends(broker)

    # The same worker restarts (same data dir, so same transactional id): it
    # fences its zombie, whose open transaction is aborted.
    app2, counts2 = eos_word_count(app_factory, store="lmdb://", datadir=datadir, lmdb_sync=False)
    async with running(app2):
        await wait_for(lambda: broker.committed(app2.id) == source_ends(broker), timeout=60)
        got = dict(counts2.items())
    assert_exact(broker, got, words)
    if when == "mid-transaction":
        assert raw_outputs(broker) > total  # the aborted work was really there, and hidden

    # A new machine (fresh data dir) rebuilds the same totals from the changelog.
    app3, counts3 = eos_word_count(
        app_factory, store="lmdb://", datadir=str(tmp_path / "worker-new"), table_standby_replicas=0
    )
    async with running(app3):
        await app3.tables.wait_until_recovery_completed()
        assert dict(counts3.items()) == Counter(words)


async def test_agent_crash_aborts_the_transaction_and_a_restart_is_exact(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path
) -> None:
    words = corpus(5_000)
    poison = {"armed": True}

    def after(word: str) -> None:
        if poison["armed"] and word == words[2500]:
            raise RuntimeError("poison")

    datadir = str(tmp_path / "w")
    app, _ = eos_word_count(app_factory, after, store="lmdb://", datadir=datadir, commit_interval=3600)
    with pytest.raises(ExceptionGroup) as crashed:
        async with running(app):
            await produce(app, words)
            await trio.sleep_forever()
    assert crashed.group_contains(streamtrio.AgentError, match="poison")
    # nothing of the failed run's transaction is visible or committed
    assert committed_outputs(broker) == []
    assert broker.committed(app.id) == {}
    assert broker.open_transactions() == []

    poison["armed"] = False
    app2, counts2 = eos_word_count(app_factory, after, store="lmdb://", datadir=datadir)
    async with running(app2):
        await wait_for(lambda: broker.committed(app2.id) == source_ends(broker), timeout=60)
        got = dict(counts2.items())
        stats = app2._worker.committer.statistics()  # type: ignore[union-attr]
    assert_exact(broker, got, words)
    assert stats.transactions > 0 and stats.aborted == 0


async def test_a_zombie_is_fenced_and_stops_with_producer_fenced_error(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path
) -> None:
    words = corpus(4_000)
    first, _ = eos_word_count(app_factory, worker_id="w1", datadir=str(tmp_path / "a"))
    second, counts2 = eos_word_count(app_factory, worker_id="w1", datadir=str(tmp_path / "b"))
    errors: list[BaseException] = []

    async def run_first(task_status: trio.TaskStatus[None]) -> None:
        try:
            await streamtrio.serve(first, task_status=task_status)
        except streamtrio.ProducerFencedError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_first)
        await produce(first, words[:2000])
        await wait_for(lambda: sum(broker.committed(first.id).values()) == 2000, timeout=30)
        # the same worker id comes back elsewhere while the first still runs
        async with running(second):
            await wait_for(lambda: bool(errors), timeout=30)
            assert first._worker is None  # stopped cleanly
            await produce(second, words[2000:])
            await wait_for(lambda: broker.committed(second.id) == source_ends(broker), timeout=30)
            assert sum(counts2.values()) == len(words)
    assert "taken over" in str(errors[0]) or "fenced" in str(errors[0])
    outputs = committed_outputs(broker)
    assert len(outputs) == len(set(outputs)) == len(words)


async def test_a_rebalance_commits_the_transaction_before_partitions_move(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path
) -> None:
    words = corpus(12_000)
    a, counts_a = eos_word_count(
        app_factory, worker_id="a", datadir=str(tmp_path / "a"), commit_interval=3600
    )
    b, counts_b = eos_word_count(
        app_factory, worker_id="b", datadir=str(tmp_path / "b"), commit_interval=0.02
    )
    async with running(a):
        await produce(a, words[:6000])
        await wait_for(lambda: sum(counts_a.values()) == 6000)
        assert broker.committed(a.id) == {}  # no periodic commit yet
        async with running(b):
            # a's revoke committed its whole transaction, offsets included
            await wait_for(lambda: broker.committed(a.id) == source_ends(broker), timeout=30)
            assert len(committed_outputs(broker)) == 6000
            await produce(b, words[6000:])
            await wait_for(lambda: sum(counts_a.values()) + sum(counts_b.values()) == len(words), timeout=30)
    assert broker.committed(a.id) == source_ends(broker)
    outputs = committed_outputs(broker)
    assert len(outputs) == len(set(outputs)) == len(words)


async def test_transactional_id_is_stable_per_data_dir(tmp_path: Path) -> None:
    from streamtrio._transactions import transactional_id

    await trio.lowlevel.checkpoint()
    one = transactional_id(Settings("app", datadir=str(tmp_path / "one")))
    assert one == transactional_id(Settings("app", datadir=str(tmp_path / "one")))
    assert one != transactional_id(Settings("app", datadir=str(tmp_path / "two")))
    assert transactional_id(Settings("app", worker_id="w7")) == "app-w7"


async def test_two_workers_on_one_data_dir_are_refused_at_start(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path
) -> None:
    """The data dir keeps the worker id, so the transactional id: two workers on
    one would fence each other in turn. The second is refused at start, by name."""
    shared = tmp_path / "shared"
    first, counts = eos_word_count(app_factory, datadir=str(shared))
    second, _ = eos_word_count(app_factory, datadir=str(shared))
    async with running(first):
        with pytest.raises(streamtrio.WorkerError) as refused:
            with trio.fail_after(10):
                await streamtrio.serve(second)
        message = str(refused.value)
        assert f"data dir {shared} is in use by another worker (pid {os.getpid()})" in message
        assert "worker_id" in message and "datadir" in message
        await produce(first, corpus(100))
        await wait_for(lambda: sum(counts.values()) == 100)  # the first carries on
    # once the first has stopped, the data dir is free again
    async with running(second):
        pass


# -- the cost ---------------------------------------------------------------------------


async def test_measure_exactly_once_cost_on_memory(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path
) -> None:
    """Same word count, with and without exactly_once; logged (docs/guarantees.md)."""
    words = corpus(20_000)
    rates: dict[str, float] = {}
    for guarantee in ("at_least_once", "exactly_once"):
        app, counts = eos_word_count(
            app_factory,
            id=f"cost-{guarantee}".replace("_", "-"),
            processing_guarantee=guarantee,
            commit_interval=0.1,
            store="lmdb://",
            datadir=str(tmp_path / guarantee),
            lmdb_sync=False,
        )
        if not rates:
            await produce(app, words)
        async with running(app):
            began = time.perf_counter()
            await wait_for(lambda counts=counts: sum(counts.values()) == len(words), timeout=120)  # type: ignore[misc]
            rates[guarantee] = len(words) / (time.perf_counter() - began)
    log.warning("exactly_once cost on memory://: %s", {k: round(v) for k, v in rates.items()})
