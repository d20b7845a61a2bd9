"""What a rebalance costs, per group protocol, on Apache Kafka (figures in docs/worker.md).

Worker A processes a steady stream; worker B joins, then leaves. Measured and
printed: B's join-to-first-event, the longest processing gap of the
partitions A keeps while B joins and leaves, and a graceful restart of A.
Asserted (not timed): with the incremental protocols (KIP-848,
cooperative-sticky) the partitions A keeps are never revoked, with eager
``range`` they are; a static member restarting within its session gets its
partitions back without the other member being rebalanced at all.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from itertools import pairwise
from typing import Any

import pytest
import trio

import streamtrio

from ._util import BackgroundProducer, unique, wait_for
from .test_worker_kafka import kafka_app, new_topic, running

pytestmark = [pytest.mark.real_kafka, pytest.mark.slow]

PARTITIONS = 4
MODES: dict[str, dict[str, Any]] = {
    "kip848": {"consumer_group_protocol": "consumer"},
    "cooperative-sticky": {"consumer_partition_assignment_strategy": "cooperative-sticky"},
    "range": {},
}


class Timeline:
    """When each partition's events were processed (trio time), per worker."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = defaultdict(list)

    def first(self) -> float | None:
        starts = [t[0] for t in self.times.values() if t]
        return min(starts) if starts else None

    def longest_gap(self, partitions: set[int], start: float, end: float) -> float:
        """The longest time without an event on any of ``partitions`` within [start, end]."""
        gap = 0.0
        for p in partitions:
            moments = [start, *[t for t in self.times[p] if start <= t <= end], end]
            gap = max(gap, *(b - a for a, b in pairwise(moments)))
        return gap


def timed_app(app_id: str, topic: str, bootstrap: str, **options: Any) -> tuple[streamtrio.App, Timeline]:
    app = kafka_app(app_id, bootstrap, **options)
    source = app.topic(topic, value_type=bytes, value_serializer="raw", partitions=PARTITIONS)
    timeline = Timeline()

    @app.agent(source)
    async def record(stream: streamtrio.Stream[bytes]) -> None:
        async for event in stream.events():
            timeline.times[event.message.partition].append(trio.current_time())

    return app, timeline


def mine(worker: streamtrio.Worker, topic: str) -> set[int]:
    return {tp.partition for tp in worker.assigned if tp.topic == topic}


@pytest.mark.parametrize("mode", list(MODES))
async def test_a_join_and_a_leave_revoke_only_what_moves_with_incremental_protocols(
    kafka_bootstrap: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamtrio._worker")
    app_id = unique(f"timing-{mode}")
    topic = await new_topic(kafka_bootstrap, "steady", PARTITIONS)
    producer = BackgroundProducer(kafka_bootstrap, topic, batch=20, interval=0.02).start()
    try:
        a_app, a_seen = timed_app(app_id, topic, kafka_bootstrap, **MODES[mode])
        b_app, b_seen = timed_app(app_id, topic, kafka_bootstrap, **MODES[mode])
        async with running(a_app) as a:
            everything = set(range(PARTITIONS))
            await wait_for(lambda: mine(a, topic) == everything, timeout=30, what="A's assignment")
            await trio.sleep(1.0)
            joined_at = trio.current_time()
            async with running(b_app) as b:
                await wait_for(lambda: b_seen.first() is not None, timeout=30, what="B's first event")
                first_event = (b_seen.first() or joined_at) - joined_at
                await wait_for(lambda: bool(mine(b, topic)), timeout=30, what="B's share")
                kept = mine(a, topic)
                await trio.sleep(1.0)
                join_gap = a_seen.longest_gap(kept, joined_at, trio.current_time())
                left_at = trio.current_time()
            await wait_for(lambda: mine(a, topic) == set(range(PARTITIONS)), timeout=30, what="all back")
            await trio.sleep(1.0)
            leave_gap = a_seen.longest_gap(kept, left_at, trio.current_time())
            revoked_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("revoked")]
    finally:
        await trio.to_thread.run_sync(producer.stop)
    print(
        f"{mode}: B's join to first event {first_event:.2f}s; longest gap of A's kept partitions "
        f"{sorted(kept)} while B joined {join_gap:.2f}s, while B left {leave_gap:.2f}s"
    )
    # A worker's "revoked" line names the partitions taken away from it.
    kept_revoked = [line for line in revoked_lines if _revoked_partitions(line, topic) & kept]
    if mode == "range":
        assert kept_revoked, "the eager protocol revokes everything: the test did not see it"
    else:
        assert kept_revoked == [], (sorted(kept), revoked_lines)


def _revoked_partitions(line: str, topic: str) -> set[int]:
    """The partitions of ``topic`` a worker's ``revoked topic[0, 1]...`` line names."""
    start = line.find(f"{topic}[")
    if start < 0:
        return set()
    inside = line[start + len(topic) + 1 : line.index("]", start)]
    return {int(p) for p in inside.split(",") if p.strip()}


async def test_a_static_member_restarting_within_its_session_does_not_rebalance_the_other(
    kafka_bootstrap: str,
) -> None:
    app_id = unique("static-timing")
    topic = await new_topic(kafka_bootstrap, "steady", PARTITIONS)
    producer = BackgroundProducer(kafka_bootstrap, topic, batch=20, interval=0.02).start()
    options = {"broker_session_timeout": 10.0, "broker_heartbeat_interval": 1.0}
    try:
        b_app, b_seen = timed_app(app_id, topic, kafka_bootstrap, consumer_group_instance_id="b", **options)
        async with running(b_app) as b:
            a_app, _ = timed_app(app_id, topic, kafka_bootstrap, consumer_group_instance_id="a", **options)
            async with running(a_app) as a:
                await wait_for(
                    lambda: bool(mine(a, topic) and mine(b, topic)), timeout=30, what="two members"
                )
                held_by_b, generation = mine(b, topic), b.generation
                await trio.sleep(1.0)
            restart_at = trio.current_time()
            again, again_seen = timed_app(
                app_id, topic, kafka_bootstrap, consumer_group_instance_id="a", **options
            )
            async with running(again) as a2:
                await wait_for(lambda: again_seen.first() is not None, timeout=30, what="A's events again")
                restarted = (again_seen.first() or restart_at) - restart_at
                await trio.sleep(1.0)
                gap = b_seen.longest_gap(held_by_b, restart_at, trio.current_time())
                assert b.generation == generation, "B was rebalanced while A restarted"
                assert mine(b, topic) == held_by_b
                assert mine(a2, topic) | held_by_b == set(range(PARTITIONS))
    finally:
        await trio.to_thread.run_sync(producer.stop)
    print(f"static: A's restart to first event {restarted:.2f}s; B's longest gap meanwhile {gap:.2f}s")
