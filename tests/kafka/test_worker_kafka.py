"""The worker on a real Kafka-protocol broker, end to end.

What a user would check: every event processed (in order, once, or at least
once after a crash), the offsets the group committed (read with a plain
confluent consumer of the same group), messages on topics, exit codes and log
lines. Events are produced with a plain confluent producer and counted from
its delivery reports, never from the broker's watermarks (Tansu's are low).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from confluent_kafka import Consumer, TopicPartition

import streamtrio
from streamtrio import TP
from streamtrio.testing import KafkaTestBroker
from streamtrio.testing._broker import TEST_BROKER_ENV

from ._util import (
    APPS,
    FAST_GROUP,
    BackgroundProducer,
    Produced,
    WorkerProcess,
    committed_async,
    create_topic,
    duplicates,
    last_assignment,
    partition_count,
    produce,
    read_records,
    read_topic,
    spread_keys,
    unique,
    wait_for,
)

RECORDER = APPS / "recorder.py"


def kafka_app(app_id: str, bootstrap: str, **options: Any) -> streamtrio.App:
    settings: dict[str, Any] = {
        "store": "memory://",
        "web_enabled": False,
        "commit_interval": 0.3,
        "broker_request_timeout": 15.0,
        "shutdown_timeout": 20.0,
        "rebalance_drain_timeout": 5.0,
        **FAST_GROUP,
    }
    settings.update(options)
    return streamtrio.App(app_id, broker=f"kafka://{bootstrap}", **settings)


class Recorded:
    """What an in-process agent saw: per partition, ``(offset, raw value)`` in processing order."""

    def __init__(self) -> None:
        self.by_partition: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        #: seconds the agent sleeps per event
        self.delay = 0.0

    def total(self) -> int:
        return sum(len(v) for v in self.by_partition.values())

    def add(self, event: streamtrio.Event[bytes]) -> None:
        self.by_partition[event.message.partition].append((event.message.offset, event.value))


def recording_app(
    app_id: str, topic: str, partitions: int, bootstrap: str, *, delay: float = 0.0, **options: Any
) -> tuple[streamtrio.App, Recorded]:
    app = kafka_app(app_id, bootstrap, **options)
    source = app.topic(topic, value_type=bytes, value_serializer="raw", partitions=partitions)
    recorded = Recorded()
    recorded.delay = delay

    @app.agent(source)
    async def record(stream: streamtrio.Stream[bytes]) -> None:
        async for event in stream.events():
            if recorded.delay:
                await trio.sleep(recorded.delay)
            recorded.add(event)

    return app, recorded


@asynccontextmanager
async def running(app: streamtrio.App) -> AsyncIterator[streamtrio.Worker]:
    """Serve ``app`` for the block, then stop it gracefully (drain, final commit, leave)."""
    async with trio.open_nursery() as nursery:
        worker: streamtrio.Worker = await nursery.start(streamtrio.serve, app)
        try:
            yield worker
        finally:
            worker.stop()


async def new_topic(bootstrap: str, prefix: str, partitions: int) -> str:
    name = unique(prefix)
    await trio.to_thread.run_sync(create_topic, bootstrap, name, partitions)
    return name


async def produce_async(
    bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]], **kw: Any
) -> Produced:
    return await trio.to_thread.run_sync(lambda: produce(bootstrap, topic, items, **kw))


def all_tps(topic: str, partitions: int) -> set[TP]:
    return {TP(topic, p) for p in range(partitions)}


# -- 1. a clean run, then a restart after a graceful stop --------------------------------------

TOTAL = 100_000
PARTITIONS = 8


@pytest.mark.slow
async def test_hundred_thousand_events_once_in_order_then_restart_processes_nothing(
    kafka_bootstrap: str,
) -> None:
    app_id = unique("exactly")
    topic = await new_topic(kafka_bootstrap, "events", PARTITIONS)
    produced = await produce_async(kafka_bootstrap, topic, spread_keys(TOTAL))
    ends = produced.ends()
    assert produced.total() == TOTAL and set(ends) == set(range(PARTITIONS))

    app, recorded = recording_app(app_id, topic, PARTITIONS, kafka_bootstrap)
    started = trio.current_time()
    async with running(app):
        await wait_for(lambda: recorded.total() >= TOTAL, timeout=120, what=f"{TOTAL} events")
    elapsed = trio.current_time() - started
    logging.getLogger(__name__).info("%d events on kafka in %.1fs", TOTAL, elapsed)

    # Exactly once, in per-partition offset order, with the bytes that were produced.
    assert recorded.total() == TOTAL
    for p in range(PARTITIONS):
        assert recorded.by_partition[p] == sorted(produced.values[p].items()), f"partition {p}"
    # The graceful stop committed everything: the group resumes at the end.
    assert await committed_async(kafka_bootstrap, app_id, topic, PARTITIONS) == ends

    # Restart: nothing is processed again. One new event per partition proves
    # the partitions were fetched (and from where).
    app2, again = recording_app(app_id, topic, PARTITIONS, kafka_bootstrap)
    async with running(app2) as worker:
        await wait_for(
            lambda: all_tps(topic, PARTITIONS) <= worker.assigned, timeout=30, what="the assignment"
        )
        markers = Produced()
        for p in range(PARTITIONS):
            await produce_async(
                kafka_bootstrap, topic, [(None, f"marker-{p}".encode())], partition=p, produced=markers
            )
        await wait_for(lambda: again.total() >= PARTITIONS, timeout=30, what="the markers")
    assert dict(again.by_partition) == {p: [(ends[p], f"marker-{p}".encode())] for p in range(PARTITIONS)}
    assert await committed_async(kafka_bootstrap, app_id, topic, PARTITIONS) == {
        p: ends[p] + 1 for p in range(PARTITIONS)
    }


# -- 2. kill -9 of a worker process, then a restart ------------------------------------------------


def recorder_env(app_id: str, topic: str, partitions: int, out: Path, **extra: str) -> dict[str, str]:
    env = {
        "RECORDER_APP_ID": app_id,
        "RECORDER_TOPIC": topic,
        "RECORDER_PARTITIONS": str(partitions),
        "RECORDER_OUT": str(out),
    }
    env.update({f"RECORDER_{k.upper()}": v for k, v in extra.items()})
    return env


def by_partition(pairs: list[tuple[int, int]]) -> dict[int, list[int]]:
    result: dict[int, list[int]] = defaultdict(list)
    for partition, offset in pairs:
        result[partition].append(offset)
    return result


@pytest.mark.slow
async def test_kill_9_then_restart_reprocesses_after_the_last_commit_and_loses_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    partitions = 4
    app_id = unique("killed")
    topic = await new_topic(kafka_bootstrap, "events", partitions)
    produced = await produce_async(kafka_bootstrap, topic, spread_keys(3000))
    ends = produced.ends()
    first_out, second_out = tmp_path / "first.txt", tmp_path / "second.txt"

    # ~1 ms per event: the kill lands mid-stream, between two commits.
    first = WorkerProcess(
        "first",
        RECORDER,
        kafka_bootstrap,
        tmp_path,
        recorder_env(app_id, topic, partitions, first_out, delay="0.001"),
    )
    try:
        await wait_for(
            lambda: len(read_records([first_out])) >= 1000, timeout=60, what="1000 events processed"
        )
        seen_committed = await committed_async(kafka_bootstrap, app_id, topic, partitions)
        assert any(seen_committed.values()), "nothing committed while processing"
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.kill()
    assert first.proc.returncode == -signal.SIGKILL
    # A dead process commits nothing more: this is the last commit.
    last_commit = await committed_async(kafka_bootstrap, app_id, topic, partitions)
    before = by_partition(read_records([first_out]))
    for p in range(partitions):
        assert (last_commit[p] or 0) >= (seen_committed[p] or 0)
        # Every committed event had been processed, each once, in order.
        assert before[p] == list(range(len(before[p]))), f"partition {p}"
        assert len(before[p]) >= (last_commit[p] or 0)
    reprocessed = sum(len(before[p]) - (last_commit[p] or 0) for p in range(partitions))
    assert reprocessed > 0, "the kill landed exactly on a commit; nothing to reprocess"

    second = WorkerProcess(
        "second", RECORDER, kafka_bootstrap, tmp_path, recorder_env(app_id, topic, partitions, second_out)
    )
    try:
        # Everything from the last commit to the end (some of it processed before the kill too).
        rest = sum(ends[p] - (last_commit[p] or 0) for p in range(partitions))
        await wait_for(
            lambda: len(read_records([second_out])) >= rest,
            timeout=60,
            what="the events after the last commit",
        )
    finally:
        assert await trio.to_thread.run_sync(second.terminate) == 0, second.log()[-4000:]
    after = by_partition(read_records([second_out]))
    for p in range(partitions):
        # The restart resumes exactly at the last commit and processes the rest once.
        assert after[p] == list(range(last_commit[p] or 0, ends[p])), f"partition {p}"
    # So the only events processed twice are those after the last commit.
    twice = duplicates(read_records([first_out, second_out]))
    assert len(twice) == reprocessed
    assert all(offset >= (last_commit[p] or 0) for p, offset in twice)
    assert set(read_records([first_out, second_out])) == produced.pairs()
    assert await committed_async(kafka_bootstrap, app_id, topic, partitions) == ends


# -- 3. workers joining and leaving ----------------------------------------------------------------


@pytest.mark.slow
async def test_workers_join_and_leave_while_producing_nothing_lost_nothing_twice(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    partitions = 6
    app_id = unique("members")
    topic = await new_topic(kafka_bootstrap, "events", partitions)
    outs = [tmp_path / f"worker-{i}.txt" for i in range(3)]
    workers: list[WorkerProcess] = []

    def start(i: int) -> WorkerProcess:
        env = recorder_env(app_id, topic, partitions, outs[i], delay="0.002")
        worker = WorkerProcess(f"worker-{i}", RECORDER, kafka_bootstrap, tmp_path, env)
        workers.append(worker)
        return worker

    async def split_between(members: list[WorkerProcess]) -> None:
        def split() -> bool:
            owned: list[set[int]] = []
            for worker in members:
                current = last_assignment(worker.log(), topic)
                if not current:
                    return False
                owned.append(current)
            return set().union(*owned) == set(range(partitions)) and sum(map(len, owned)) == partitions

        names = ", ".join(w.name for w in members)
        await wait_for(split, timeout=60, what=f"the partitions split between {names}", poll=0.1)

    producer = BackgroundProducer(kafka_bootstrap, topic, batch=50, interval=0.1)
    try:
        a, b = start(0), start(1)
        producer.start()
        await split_between([a, b])
        await trio.sleep(1.0)
        c = start(2)
        await split_between([a, b, c])
        await trio.sleep(1.0)
        a.signal(signal.SIGTERM)
        assert await a.wait_async(30) == 0, a.log()[-4000:]
        await split_between([b, c])
        await trio.sleep(1.0)
    finally:
        produced = await trio.to_thread.run_sync(producer.stop)
        try:
            await wait_for(
                lambda: set(read_records(outs)) >= produced.pairs(), timeout=60, what="every event processed"
            )
        finally:
            for worker in workers:
                worker.signal(signal.SIGTERM)
            codes = [await worker.wait_async(30) for worker in workers]
    assert codes == [0, 0, 0], [w.log()[-3000:] for w in workers]
    assert produced.total() > 1000
    records = read_records(outs)
    assert set(records) == produced.pairs()
    assert duplicates(records) == {}, "graceful rebalances processed events twice"
    # Each worker's share was processed in offset order.
    for out in outs:
        for p, offsets in by_partition(read_records([out])).items():
            assert offsets == sorted(offsets), f"{out.name} partition {p}"
    assert await committed_async(kafka_bootstrap, app_id, topic, partitions) == produced.ends()


@pytest.mark.slow
@pytest.mark.real_kafka  # Tansu needs the short session timeouts of FAST_GROUP to rebalance promptly
async def test_default_group_timings_share_and_hand_back_partitions_within_seconds(
    kafka_bootstrap: str,
) -> None:
    """No Tansu workarounds: the library's default session and heartbeat, watermarks read back."""
    partitions = 4
    defaults = {"broker_session_timeout": 45.0, "broker_heartbeat_interval": 3.0}
    app_id = unique("defaults")
    topic = await new_topic(kafka_bootstrap, "events", partitions)
    produced = await produce_async(kafka_bootstrap, topic, spread_keys(2000))
    first, seen_first = recording_app(app_id, topic, partitions, kafka_bootstrap, **defaults)
    second, seen_second = recording_app(app_id, topic, partitions, kafka_bootstrap, **defaults)
    everything = all_tps(topic, partitions)

    def mine(worker: streamtrio.Worker) -> set[TP]:
        return {tp for tp in worker.assigned if tp.topic == topic}

    async with running(first) as one:
        await wait_for(lambda: mine(one) == everything, timeout=15, what="the first assignment")
        async with running(second) as two:
            await wait_for(
                lambda: bool(mine(one) and mine(two)) and mine(one) | mine(two) == everything,
                timeout=15,
                what="the partitions split between two workers",
            )
            assert not mine(one) & mine(two)
            await produce_async(kafka_bootstrap, topic, spread_keys(1000, start=2000), produced=produced)
        # The second left the group on its way out: no wait for its 45 s session to expire.
        await wait_for(lambda: mine(one) == everything, timeout=15, what="the partitions handed back")
        await produce_async(kafka_bootstrap, topic, spread_keys(1000, start=3000), produced=produced)
        pairs = produced.pairs()

        def processed() -> list[tuple[int, int]]:
            return [
                (p, off)
                for recorded in (seen_first, seen_second)
                for p, items in recorded.by_partition.items()
                for off, _ in items
            ]

        await wait_for(lambda: set(processed()) >= pairs, timeout=30, what="every event")
    assert set(processed()) == pairs and duplicates(processed()) == {}
    assert await committed_async(kafka_bootstrap, app_id, topic, partitions) == produced.ends()
    # Apache Kafka's high watermarks are the ends the delivery reports gave.
    marks = await trio.to_thread.run_sync(high_watermarks, kafka_bootstrap, topic, partitions)
    assert marks == produced.ends()


def high_watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("marks")})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: consumer.get_watermark_offsets(tp, timeout=15)[1] for tp in tps}
    finally:
        consumer.close()


# -- 4. a slow agent keeps its membership --------------------------------------------------------


@pytest.mark.slow
async def test_agent_slower_than_max_poll_interval_keeps_its_membership(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamtrio")
    partitions, total, delay = 2, 400, 0.025  # 10 s of work against a 4 s max.poll.interval.ms
    app_id = unique("slow")
    topic = await new_topic(kafka_bootstrap, "events", partitions)
    produced = await produce_async(kafka_bootstrap, topic, spread_keys(total))
    app = kafka_app(app_id, kafka_bootstrap, broker_max_poll_interval=4.0, stream_buffer_maxsize=8)
    source = app.topic(topic, value_type=bytes, value_serializer="raw", partitions=partitions)
    seen: list[tuple[int, int]] = []

    @app.agent(source)
    async def crawl(stream: streamtrio.Stream[bytes]) -> None:
        async for event in stream.events():
            await trio.sleep(delay)
            seen.append((event.message.partition, event.message.offset))

    started = trio.current_time()
    async with running(app) as worker:
        await wait_for(lambda: bool(seen), timeout=30, what="the first event")
        generation = worker.generation
        await wait_for(lambda: len(seen) >= total, timeout=60, what=f"{total} slow events")
        assert trio.current_time() - started > 2 * 4.0
        # One assignment, never revoked or lost while the agent crawled.
        assert worker.generation == generation, "the worker was rebalanced while its agent was slow"
        assert all_tps(topic, partitions) <= worker.assigned
        rebalances = [
            r.getMessage().split(" ")[0]
            for r in caplog.records
            if r.name.startswith("streamtrio") and r.getMessage().startswith(("assigned", "revoked", "lost"))
        ]
        assert rebalances == ["assigned"]  # the worker's line (the consumer's is at debug level)
        assert not [r for r in caplog.records if "MAX_POLL" in r.getMessage()]
    assert sorted(seen) == sorted(produced.pairs()) and len(seen) == total
    for p in range(partitions):
        assert [off for part, off in seen if part == p] == list(range(produced.count(p))), f"partition {p}"
    assert await committed_async(kafka_bootstrap, app_id, topic, partitions) == produced.ends()


# -- 5. undecodable values ------------------------------------------------------------------------------


async def test_undecodable_value_stops_the_worker_naming_where_and_commits_nothing_past_it(
    kafka_bootstrap: str,
) -> None:
    app_id = unique("badvalue")
    topic = await new_topic(kafka_bootstrap, "json", 1)
    await produce_async(
        kafka_bootstrap, topic, [(None, b"1"), (None, b"2"), (None, b"{not json"), (None, b"4")]
    )
    app = kafka_app(app_id, kafka_bootstrap)
    source = app.topic(topic, value_type=int, partitions=1)
    got: list[int] = []

    @app.agent(source)
    async def read(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            got.append(value)

    with trio.fail_after(60), pytest.raises(streamtrio.AgentError) as info:
        await streamtrio.serve(app)
    cause = info.value.__cause__
    assert isinstance(cause, streamtrio.DecodeError)
    assert (cause.topic, cause.partition, cause.offset) == (topic, 0, 2)
    assert f"topic={topic!r} partition=0 offset=2" in str(cause)
    assert got == [1, 2]
    assert await committed_async(kafka_bootstrap, app_id, topic, 1) == {0: 2}


@pytest.mark.parametrize("policy", ["skip", "dead_letter"])
async def test_undecodable_value_policies_move_on(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    caplog.set_level(logging.INFO, logger="streamtrio")
    app_id = unique(f"bad-{policy}")
    topic = await new_topic(kafka_bootstrap, "json", 1)
    await produce_async(
        kafka_bootstrap, topic, [(b"k1", b"1"), (b"k2", b"oops"), (b"k3", b"3"), (b"k4", b"[4")], partition=0
    )
    app = kafka_app(app_id, kafka_bootstrap, value_decode_error=policy)
    source = app.topic(topic, value_type=int, partitions=1)
    got: list[int] = []

    @app.agent(source)
    async def read(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            got.append(value)

    async with running(app):
        await wait_for(lambda: got == [1, 3], timeout=30, what="the good values")
        await wait_for(
            lambda: bool(app._worker and app._worker.committer and app._worker.committer.committed),
            timeout=10,
            what="a commit",
        )
    assert got == [1, 3]
    assert await committed_async(kafka_bootstrap, app_id, topic, 1) == {0: 4}
    dlq = f"{topic}-dlq"
    messages = [r.getMessage() for r in caplog.records]
    if policy == "skip":
        skips = [m for m in messages if "skipped a message" in m]
        assert len(skips) == 2
        assert f"topic={topic!r} partition=0 offset=1" in skips[0] and "(skipped so far: 1)" in skips[0]
        assert f"topic={topic!r} partition=0 offset=3" in skips[1] and "(skipped so far: 2)" in skips[1]
        assert await trio.to_thread.run_sync(partition_count, kafka_bootstrap, dlq) is None
    else:
        count = await trio.to_thread.run_sync(partition_count, kafka_bootstrap, dlq)
        assert count is not None
        dead = await trio.to_thread.run_sync(read_topic, kafka_bootstrap, dlq, count)
        assert sorted((m.key(), m.value()) for m in dead) == [(b"k2", b"oops"), (b"k4", b"[4")]
        for m in dead:
            headers = dict(m.headers())
            offset = b"1" if m.key() == b"k2" else b"3"
            assert headers["streamtrio-reason"] == b"decode"
            assert headers["streamtrio-topic"] == topic.encode()
            assert headers["streamtrio-partition"] == b"0"
            assert headers["streamtrio-offset"] == offset
            assert b"DecodeError" in headers["streamtrio-error"]
        assert sum("dead-lettered" in m for m in messages) == 2


# -- 7. the broker goes away for a while --------------------------------------------------------------


@pytest.mark.slow
async def test_broker_frozen_for_seconds_then_back_nothing_lost(kafka_broker: KafkaTestBroker) -> None:
    pid = kafka_broker.pid
    if pid is None:
        pytest.skip(f"{TEST_BROKER_ENV} names an external broker; this test freezes the session's own")
    kafka_bootstrap = kafka_broker.bootstrap
    partitions = 4
    app_id = unique("frozen")
    topic = await new_topic(kafka_bootstrap, "events", partitions)
    produced = await produce_async(kafka_bootstrap, topic, spread_keys(1000))
    # 2 ms per event: the freeze lands while events are in flight and commits are due.
    app, recorded = recording_app(app_id, topic, partitions, kafka_bootstrap, delay=0.002)

    def processed() -> set[tuple[int, int]]:
        return {(p, off) for p, items in recorded.by_partition.items() for off, _ in items}

    async with running(app):
        await wait_for(lambda: recorded.total() >= 300, timeout=30, what="the first 300 events")
        os.kill(pid, signal.SIGSTOP)
        try:
            # Produced while the broker is frozen: librdkafka holds them and retries.
            later = threading.Thread(
                target=produce, args=(kafka_bootstrap, topic, spread_keys(1000, start=1000), produced)
            )
            later.start()
            await trio.sleep(4.0)
            # What was fetched before the freeze kept being processed.
            assert recorded.total() > 400
        finally:
            os.kill(pid, signal.SIGCONT)
        recorded.delay = 0.0
        await trio.to_thread.run_sync(later.join, 60)
        assert produced.total() == 2000
        await wait_for(
            lambda: processed() >= produced.pairs(), timeout=60, what="every event after the freeze"
        )
    assert processed() == produced.pairs()
    for p, items in recorded.by_partition.items():
        offsets = [off for off, _ in items]
        # A lost membership may replay what was not committed, but never skips.
        assert set(offsets) == set(range(len(produced.values[p]))), f"partition {p}"
    assert await committed_async(kafka_bootstrap, app_id, topic, partitions) == produced.ends()
