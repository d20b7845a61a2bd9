"""Writes made outside events (timers, tasks, web views) to keys another worker owns.

docs/tables.md ("Writes outside events"): the write goes to the table's writes
topic and the owner applies it as its own write; it survives the owner's restart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import streamtrio
from streamtrio._transports.memory import MemoryBroker
from streamtrio.testing import AppFactory

from .conftest import running, wait_for
from .test_tables import CHANGELOG, PARTITIONS, corpus, produce, word_count_app


def owned_by(worker: streamtrio.Worker) -> set[int]:
    return {tp.partition for tp in worker.source_partitions()}


def key_of(table: streamtrio.Table, partitions: set[int], prefix: str = "k") -> str:
    return next(f"{prefix}{i}" for i in range(1000) if table.key_partition(f"{prefix}{i}") in partitions)


@asynccontextmanager
async def two_workers(
    app_factory: AppFactory,
) -> AsyncIterator[tuple[streamtrio.Worker, streamtrio.Worker, streamtrio.Table, streamtrio.Table]]:
    """Two word-count workers sharing the partitions, the second's tables recovered."""
    first, counts_a = word_count_app(app_factory, table_standby_replicas=0)
    second, counts_b = word_count_app(app_factory, table_standby_replicas=0)
    async with running(first) as a, running(second) as b:
        await wait_for(lambda: bool(owned_by(a)) and bool(owned_by(b)))
        await second.tables.wait_until_recovery_completed()
        yield a, b, counts_a, counts_b


def changelog_values(broker: MemoryBroker, table: streamtrio.Table, key: str) -> list[Any]:
    codec = streamtrio.get_codec("msgpack")
    kbytes = codec.dumps(key)
    return [
        None if m.value is None else codec.loads(m.value)
        for m in broker.messages(CHANGELOG, table.key_partition(key))
        if m.key == kbytes
    ]


async def test_a_write_outside_an_event_reaches_the_owner_and_survives_its_stop(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    """Failed before: the write went to the changelog only; the owner never saw it, and its
    own recovery skipped it (its later commits recorded higher changelog offsets)."""
    first, counts_a = word_count_app(app_factory, table_standby_replicas=0)
    second, counts_b = word_count_app(app_factory, table_standby_replicas=0)
    async with running(first) as a:
        async with running(second) as b:
            await wait_for(lambda: bool(owned_by(a)) and bool(owned_by(b)))
            await first.tables.wait_until_recovery_completed()
            await second.tables.wait_until_recovery_completed()
            key = key_of(counts_a, owned_by(b))
            counts_a[key] = 7  # a timer or web view on worker A
            counts_a[key] = 8
            await wait_for(lambda: counts_b.get(key) == 8)
            assert counts_a.get(key) is None  # not applied where it was written
            assert first.monitor.stats()["tables"]["counts"]["foreign_writes"] == 2
            await wait_for(lambda: changelog_values(broker, counts_b, key) == [8])
        # B stopped: A owns every partition and recovered the owner's write
        await wait_for(lambda: len(owned_by(a)) == PARTITIONS)
        await first.tables.wait_until_recovery_completed()
        assert counts_a[key] == 8


async def test_an_owner_applies_a_foreign_write_between_its_events(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    """The owner applies the write as its own: its next events count on from it."""
    first, counts_a = word_count_app(app_factory, table_standby_replicas=0)
    second, counts_b = word_count_app(app_factory, table_standby_replicas=0)
    async with running(first) as a, running(second) as b:
        await wait_for(lambda: bool(owned_by(a)) and bool(owned_by(b)))
        await second.tables.wait_until_recovery_completed()
        word = next(w for w in corpus(1000) if counts_a.key_partition(w) in owned_by(b))
        await produce(first, [word] * 3)
        await wait_for(lambda: counts_b.get(word) == 3)
        counts_a[word] = 100  # e.g. a correction made through a web view on A
        await wait_for(lambda: counts_b.get(word) == 100)
        await produce(first, [word] * 2)
        await wait_for(lambda: counts_b.get(word) == 102)
        await wait_for(lambda: changelog_values(broker, counts_b, word)[-1:] == [102])
        assert counts_a.get(word) is None


async def test_a_delete_outside_an_event_reaches_the_owner(app_factory: AppFactory) -> None:
    """A worker cannot see another's keys: its delete is sent, not refused with KeyError."""
    async with two_workers(app_factory) as (_, b, counts_a, counts_b):
        key = key_of(counts_a, owned_by(b))
        counts_a[key] = 5
        await wait_for(lambda: counts_b.get(key) == 5)
        del counts_a[key]
        await wait_for(lambda: key not in counts_b)
        with pytest.raises(KeyError):
            del counts_b[key_of(counts_b, owned_by(b), "never-")]  # the owner still says KeyError


async def test_setdefault_and_pop_of_a_key_served_elsewhere_are_refused(app_factory: AppFactory) -> None:
    """Failed before: setdefault() saw no value and overwrote the owner's (5 became 0); pop()
    returned its default and deleted nothing. Neither can be answered where the key is not served."""
    async with two_workers(app_factory) as (a, b, counts_a, counts_b):
        key = key_of(counts_a, owned_by(b))
        counts_a[key] = 5
        await wait_for(lambda: counts_b.get(key) == 5)
        n = counts_a.key_partition(key)
        with pytest.raises(streamtrio.TableError) as refused:
            counts_a.setdefault(key, 0)
        assert f"table 'counts': setdefault() of key {key!r} outside an event" in str(refused.value)
        assert f"does not serve its partition {n}" in str(refused.value)
        with pytest.raises(streamtrio.TableError, match=r"pop\(\) .*use `del table\[key\]`"):
            counts_a.pop(key, None)
        # a later write to the same partition: once applied, any earlier one would have been
        marker = key_of(counts_a, {n}, "marker-")
        counts_a[marker] = 1
        await wait_for(lambda: counts_b.get(marker) == 1)
        assert counts_b.get(key) == 5  # neither overwritten nor deleted
        # where the key is served, both behave as a mapping's
        assert counts_b.setdefault(key, 0) == 5
        own = key_of(counts_a, owned_by(a), "own-")
        assert counts_a.setdefault(own, 3) == 3 and counts_a.pop(own) == 3
        assert counts_a.pop(own, "gone") == "gone"


async def test_a_foreign_write_not_delivered_stops_the_commit(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    """No commit passes a write outside an event that did not reach the writes topic."""
    first, counts_a = word_count_app(app_factory, table_standby_replicas=0)
    second, _ = word_count_app(app_factory, table_standby_replicas=0)

    async with running(second) as b:

        @first.task
        async def write_a_key_of_b() -> None:  # a task writing outside events, on A
            await wait_for(lambda: bool(first.tables.sources) and bool(owned_by(b)))
            broker.max_message_bytes = 1000
            counts_a[key_of(counts_a, owned_by(b))] = "x" * 2000

        with pytest.raises(streamtrio.TableError) as info:
            await streamtrio.serve(first)
    assert "a write made outside an event to testapp-counts-writes[" in str(info.value)
    assert "was not delivered" in str(info.value) and "MSG_SIZE_TOO_LARGE" in str(info.value)


def test_windowed_tables_have_no_writes_topic(app_factory: AppFactory) -> None:
    app = app_factory()
    plain = app.Table("plain", default=int)
    windowed = app.Table("hits", default=int).tumbling(60).table
    app.tables.declare_writes_topics()
    assert plain.writes_topic is not None and windowed.writes_topic is None
    names = {n for t in app._declared_topics() for n in t.topics}
    assert plain.writes_topic_name in names and windowed.writes_topic_name not in names


async def test_writes_topic_partitions_must_match_the_changelog(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app, counts = word_count_app(app_factory)
    broker.create_topic(counts.writes_topic_name, PARTITIONS * 2)
    with pytest.raises(streamtrio.TableError, match=r"its writes topic .* has 16 partitions"):
        await streamtrio.serve(app)


async def test_a_windowed_write_on_another_workers_partition_is_said(
    app_factory: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Windowed tables have no writes topic: such a write is never silent (failed before:
    no warning, no count)."""
    apps = []
    for _ in range(2):
        app, _counts = word_count_app(app_factory, table_standby_replicas=0)
        apps.append((app, app.Table("hits", default=int, key_type=str, partitions=PARTITIONS).tumbling(60)))
    (first, hits_a), (second, _) = apps
    async with running(first) as a, running(second) as b:
        await wait_for(lambda: bool(owned_by(a)) and bool(owned_by(b)))
        await first.tables.wait_until_recovery_completed()
        key = key_of(hits_a.table, owned_by(b))
        hits_a[key] += 1  # a timer or web view on A
        hits_a[key] += 1
        assert first.monitor.stats()["tables"]["hits"]["foreign_writes"] == 2
    warnings = [r.getMessage() for r in caplog.records if "written outside an event" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"table 'hits': key {key!r} was written outside an event" in warnings[0]
    assert "windowed tables, sessions and timers have no writes topic" in warnings[0]


async def test_the_writes_agent_runs_after_a_test_context_replaced_the_agents(
    app_factory: AppFactory,
) -> None:
    """A test context runs the app with its agents swapped for the block; the writes agent
    registered meanwhile must still run in the app's next worker."""
    from streamtrio.testing import open_test_app

    app, counts = word_count_app(app_factory, table_standby_replicas=0)
    async with open_test_app(app):
        pass
    async with running(app) as worker:
        await wait_for(lambda: bool(owned_by(worker)) and not worker._assigning)
        assert f"{counts.name}.writes" in app.agents
        assert any(tp.topic == counts.writes_topic_name for tp in worker.assigned)
