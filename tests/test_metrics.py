"""``GET /metrics`` (Prometheus) and the consumer lag of ``/stats/``, scraped over real HTTP.

Each number is checked against what really happened on the memory broker:
events produced against events counted, lag 0 after draining, lag N while an
agent holds the partition.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import streamtrio
from streamtrio import TP
from streamtrio._transports.memory import MemoryBroker, MemoryReader

from .conftest import running, wait_for
from .test_web import KEYS, PARTITIONS, orders_app, produce, web_options

AppFactory = Callable[..., streamtrio.App]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as c:
        yield c


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    answer = await client.get(f"{url}/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(dict(ls).items())
    )


async def test_metrics_count_what_happened(
    app_factory: AppFactory, broker: MemoryBroker, client: httpx.AsyncClient
) -> None:
    app = orders_app(app_factory, table=True)
    async with running(app):
        await produce(app, [(key, 1) for key in KEYS])
        url = app.web.url
        assert url is not None
        ends = {p: broker.end_offset(TP("orders", p)) for p in range(PARTITIONS)}
        assert sum(ends.values()) == len(KEYS)

        async def drained() -> Samples:
            with trio.fail_after(10):
                while True:
                    samples = await scrape(client, url)
                    lags = [
                        samples.get(("streamtrio_consumer_lag", (("partition", str(p)), ("topic", "orders"))))
                        for p in range(PARTITIONS)
                    ]
                    if lags == [0.0] * PARTITIONS:
                        return samples
                    await trio.sleep(0.05)

        samples = await drained()
        for p in range(PARTITIONS):
            labels = {"topic": "orders", "partition": str(p), "agent": "remember"}
            assert value(samples, "streamtrio_events_total", **labels) == ends[p]
        assert total(samples, "streamtrio_events_total", agent="remember") == len(KEYS)
        stats = (await client.get(f"{url}/stats/")).json()
        assert value(samples, "streamtrio_commits_total") >= 1
        assert value(samples, "streamtrio_commits_total") <= stats["commit"]["commits"]
        assert value(samples, "streamtrio_commit_latency_seconds_count") >= 1
        assert value(samples, "streamtrio_commit_latency_seconds_bucket", le="+Inf") == value(
            samples, "streamtrio_commit_latency_seconds_count"
        )
        assert value(samples, "streamtrio_rebalances_total") == 1
        assert value(samples, "streamtrio_rebalance_duration_seconds_count") == 1
        # the source topic's and the table's writes topic's (docs/tables.md)
        assert value(samples, "streamtrio_assigned_partitions") == 2 * PARTITIONS
        assert value(samples, "streamtrio_table_keys", table="totals") == len(KEYS)
        assert value(samples, "streamtrio_recovery_remaining_records", table="totals") == 0
        assert value(samples, "streamtrio_recovery_remaining_partitions") == 0
        assert value(samples, "streamtrio_recovery_replayed_records_total", table="totals") == 0
        assert value(samples, "streamtrio_producer_queued_messages") == 0
        changelog = sum(broker.end_offset(TP("webapp-totals-changelog", p)) for p in range(PARTITIONS))
        assert changelog > 0
        # the changelog records, plus the worker's claims on the cluster-map topic
        assert value(samples, "streamtrio_producer_delivered_messages_total") >= changelog
        assert value(samples, "streamtrio_producer_failed_messages_total") == 0
        assert value(samples, "streamtrio_events_in_flight") == 0
        assert total(samples, "streamtrio_decode_errors_total") == 0
        assert total(samples, "streamtrio_agent_errors_total") == 0
        assert value(samples, "process_open_fds") > 0  # prometheus-client's process collector
        # /stats/ reports the same lag, with the end offsets it is measured against.
        for p in range(PARTITIONS):
            part = stats["partitions"][f"orders[{p}]"]
            assert part["end_offset"] == ends[p]
            assert part["consumer_lag"] == 0


async def test_lag_is_the_backlog_while_an_agent_holds_the_partition(
    app_factory: AppFactory, client: httpx.AsyncClient
) -> None:
    app = app_factory("held", **web_options())
    topic = app.topic("jobs", value_type=int, partitions=1)
    release = trio.Event()
    seen: list[int] = []

    @app.agent(topic)
    async def work(stream: streamtrio.Stream[int]) -> None:
        async for n in stream:
            await release.wait()
            seen.append(n)

    backlog = 7
    async with running(app):
        async with app.open_client():
            for n in range(backlog):
                topic.send_soon(value=n)
            await app.producer.flush()
        url = app.web.url
        assert url is not None
        labels = {"topic": "jobs", "partition": "0"}
        with trio.fail_after(10):
            while (samples := await scrape(client, url)).get(("streamtrio_events_in_flight", ())) != 1:
                await trio.sleep(0.02)
        assert value(samples, "streamtrio_consumer_lag", **labels) == backlog
        part = (await client.get(f"{url}/stats/")).json()["partitions"]["jobs[0]"]
        assert (part["end_offset"], part["consumer_lag"]) == (backlog, backlog)
        release.set()
        await wait_for(lambda: len(seen) == backlog)
        with trio.fail_after(10):
            while value(samples := await scrape(client, url), "streamtrio_consumer_lag", **labels) != 0:
                await trio.sleep(0.02)
        assert value(samples, "streamtrio_events_total", agent="work", **labels) == backlog


async def test_decode_and_agent_errors_are_counted(
    app_factory: AppFactory, client: httpx.AsyncClient
) -> None:
    app = app_factory("errs", value_decode_error="skip", agent_restart_backoff=0.01, **web_options())
    topic = app.topic("events", value_type=int, partitions=1)
    got: list[int] = []

    @app.agent(topic, on_error="restart")
    async def read(stream: streamtrio.Stream[int]) -> None:
        async for n in stream:
            if n == 2 and 2 not in got:
                got.append(n)
                raise ValueError("the first 2 fails")
            got.append(n)

    raw = app.topic("events", value_serializer="raw")
    async with running(app):
        for payload in (b"1", b"oops", b"2", b"3"):
            await raw.send(value=payload, partition=0)
        await wait_for(lambda: got == [1, 2, 2, 3])
        url = app.web.url
        assert url is not None
        samples = await scrape(client, url)
        assert value(samples, "streamtrio_decode_errors_total", topic="events", policy="skip") == 1
        assert value(samples, "streamtrio_agent_errors_total", agent="read") == 1


async def test_metrics_port_serves_metrics_without_the_web_server(
    app_factory: AppFactory, client: httpx.AsyncClient
) -> None:
    app = app_factory("noweb", web_enabled=False, metrics_port=0, web_bind="127.0.0.1")
    topic = app.topic("jobs", value_type=int, partitions=2)
    count = 0

    @app.agent(topic)
    async def work(stream: streamtrio.Stream[Any]) -> None:
        nonlocal count
        async for _ in stream:
            count += 1

    async with running(app):
        async with app.open_client():
            for n in range(5):
                topic.send_soon(value=n, partition=n % 2)
            await app.producer.flush()
        await wait_for(lambda: count == 5)
        assert app.web.url is None
        server = app.web.metrics_server
        assert server is not None and server.bound
        base = server.bound[0]
        with trio.fail_after(10):
            while total(await scrape(client, base), "streamtrio_events_total", agent="work") != 5:
                await trio.sleep(0.02)
        assert (await client.get(f"{base}/stats/")).status_code == 404


async def test_recovery_replayed_records_per_table(
    app_factory: AppFactory, broker: MemoryBroker, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    first = orders_app(app_factory, table=True)
    async with running(first):
        await produce(first, [(key, 1) for key in KEYS])
        await wait_for(lambda: len(first.latest) == len(KEYS))  # type: ignore[attr-defined]
    changelog = sum(broker.end_offset(TP("webapp-totals-changelog", p)) for p in range(PARTITIONS))
    assert changelog >= len(KEYS)
    # Another data dir: a fresh store, which replays the whole changelog.
    second = orders_app(app_factory, table=True, datadir=str(tmp_path / "second"), table_standby_replicas=0)
    async with running(second):
        await second.tables.wait_until_recovery_completed()
        url = second.web.url
        assert url is not None
        samples = await scrape(client, url)
    assert value(samples, "streamtrio_recovery_replayed_records_total", table="totals") == changelog
    assert value(samples, "streamtrio_standby_applied_records_total", table="totals") == 0
    assert value(samples, "streamtrio_table_keys", table="totals") == len(KEYS)
    assert value(samples, "streamtrio_recovery_remaining_records", table="totals") == 0


def two_table_app(app_factory: AppFactory, datadir: Path) -> streamtrio.App:
    app = app_factory(
        "recapp",
        **web_options(store="lmdb://", datadir=str(datadir), lmdb_sync=False, table_standby_replicas=0),
    )
    words = app.topic("words", key_type=str, value_type=int, partitions=2)
    counts = app.Table("counts", key_type=str, default=int, partitions=2)
    sums = app.Table("sums", key_type=str, default=int, partitions=2)

    @app.agent(words)
    async def tally(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            counts[event.key] += 1
            if event.value % 3 == 0:  # fewer keys, so fewer changelog records than counts
                sums[f"s{event.value % 7}"] += event.value

    return app


async def test_recovery_remaining_records_per_table(
    app_factory: AppFactory,
    broker: MemoryBroker,
    client: httpx.AsyncClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = two_table_app(app_factory, tmp_path / "first")
    async with first.open_client():
        words = first._topic_named("words")
        for i in range(600):
            words.send_soon(key=f"w{i % 150}", value=i)
        await first.producer.flush()
    ends = {TP("words", p): broker.end_offset(TP("words", p)) for p in range(2)}
    async with running(first):
        await wait_for(lambda: broker.committed(first.id) == ends, timeout=60)
    changelog = {
        name: sum(broker.end_offset(TP(f"recapp-{name}-changelog", p)) for p in range(2))
        for name in ("counts", "sums")
    }
    assert changelog["counts"] > changelog["sums"] > 0

    # The second worker has an empty store: it replays both changelogs. Its
    # recovery is held before its first read, then let go.
    gate = trio.Event()
    reading = trio.Event()
    real_getmany = MemoryReader.getmany

    async def held_getmany(self: MemoryReader) -> Any:
        reading.set()
        await gate.wait()
        return await real_getmany(self)

    monkeypatch.setattr(MemoryReader, "getmany", held_getmany)
    second = two_table_app(app_factory, tmp_path / "second")
    async with running(second):
        url = second.web.url
        assert url is not None
        await reading.wait()
        with trio.fail_after(10):
            while True:
                samples = await scrape(client, url)
                if ("streamtrio_recovery_remaining_records", (("table", "sums"),)) in samples:
                    break
                await trio.sleep(0.01)
        assert value(samples, "streamtrio_recovery_remaining_records", table="counts") == changelog["counts"]
        assert value(samples, "streamtrio_recovery_remaining_records", table="sums") == changelog["sums"]
        gate.set()
        await second.tables.wait_until_recovery_completed()
        samples = await scrape(client, url)
        assert value(samples, "streamtrio_recovery_remaining_records", table="counts") == 0
        assert value(samples, "streamtrio_recovery_remaining_records", table="sums") == 0
        replayed = "streamtrio_recovery_replayed_records_total"
        assert value(samples, replayed, table="counts") == changelog["counts"]
        assert value(samples, replayed, table="sums") == changelog["sums"]
