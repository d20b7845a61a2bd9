"""Faust-style apps (tests/faust_apps/, `import streamtrio as faust`) run on the memory broker."""

from __future__ import annotations

import json
import warnings
from datetime import datetime
from typing import Any

import pytest
import trio
import trio.testing

import streamtrio
from streamtrio._settings import FaustCompatibilityWarning
from streamtrio.testing import open_test_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FaustCompatibilityWarning)
    from .faust_apps import orders, page_views


async def test_orders_app_runs_unchanged(autojump_clock: trio.testing.MockClock) -> None:
    app = orders.app
    assert app.conf.store == "lmdb://"  # rocksdb:// on LMDB
    assert orders.audit.channel.label == "faust-orders-audit"
    async with open_test_app(app) as test_app:
        for n, account in enumerate(["a", "b", "a"]):
            await test_app.send(
                orders.orders_topic,
                orders.Order(
                    id=str(n),
                    account=account,
                    items=[orders.Item("x", 2), {"sku": "y", "qty": 1}],
                    created="2024-05-01T10:00:00+00:00",
                ),
                key=account,
            )
        await test_app.drain()
        assert dict(orders.totals.items()) == {"a": 6, "b": 3}
        last = orders.last_order["a"]
        assert isinstance(last, orders.Order)  # not a dict, though the table declares no type
        assert isinstance(last.items[0], orders.Item)
        assert [o.id for o in orders.audited] == ["0", "1", "2"]
        assert all(isinstance(o.created, datetime) for o in orders.audited)
        assert orders.rebalances and orders.rebalances[-1] is False
        assert any(tp.topic == "faust-orders-in" for tps in orders.assigned for tp in tps)
        await test_app.advance(3600)
        assert 5 <= len(orders.ticks) <= 7
        assert orders.service_events[0] == "start"
        assert orders.service_events.count("beat") >= 59
        assert orders.service_events.count("loop") >= 11
    assert orders.service_events[-1] == "stop"


async def test_page_views_app_runs_unchanged() -> None:
    app = page_views.app
    async with open_test_app(app) as test_app:
        worker = test_app.worker
        await wait_until(lambda: len(worker._dynamic_topics) == 2)  # both task streams subscribed
        # keyed by page: a table key lives in the partition of the events that write it
        views = [
            ("home", "Home", " ann"),
            ("home", "HOME", "bob "),
            ("about", "About", "ann"),
            ("home", "home", "ann"),
        ]
        for key, page, user in views:
            await test_app.send(page_views.views_topic, page_views.PageView(page=page, user=user), key=key)
        md = await page_views.like("ann", "home")
        assert md.topic == "faust-page-likes"
        await page_views.like("ann", "about")
        await page_views.like("bob", "home")
        await test_app.send(page_views.audit_topic, page_views.PageView(page="Contact", user="cy"))
        await test_app.drain()
        await wait_until(lambda: len(page_views.tapped) == 4 and len(page_views.audited) == 1)

        assert dict(page_views.visitors.items()) == {"home": {"ann", "bob"}, "about": {"ann"}}
        assert dict(page_views.liked.items()) == {"ann": {"home", "about"}, "bob": {"home"}}
        assert sorted(k for k, *_ in page_views.where) == ["about", "home", "home", "home"]
        assert all(topic == "faust-page-views-in" for _, topic, _, _ in page_views.where)
        by_partition: dict[int, list[int]] = {}
        for _, _, partition, offset in page_views.where:
            by_partition.setdefault(partition, []).append(offset)
        assert all(offsets == list(range(len(offsets))) for offsets in by_partition.values())
        # None for a plain agent; its one partition for an isolated one (the two
        # agents run concurrently: their entries interleave in any order)
        seen = page_views.partitions_seen
        assert [tps for agent, tps in seen if agent == "views"] == [None] * 4
        isolated = [tps for agent, tps in seen if agent == "likes"]
        assert len(isolated) == 3 and all(len(tps) == 1 for tps in isolated)
        assert sorted(page_views.tapped) == ["About", "HOME", "Home", "home"]  # no processors there
        assert page_views.audited == [("contact", "faust-page-audit")]
        counts = [n async for n in page_views.page_count.kvmap({p: p for p in ("home", "about", "none")})]
        assert counts == [2, 1, 0]
        await test_app.commit()
        committed = test_app.committed()
        assert sum(off for tp, off in committed.items() if tp.topic == "faust-page-views-in") == 4
        assert sum(off for tp, off in committed.items() if tp.topic == "faust-page-audit") == 1


async def wait_until(predicate: Any) -> None:
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.01)


def test_faust_type_aliases_and_uuid() -> None:
    assert streamtrio.StreamT is streamtrio.Stream
    assert streamtrio.EventT is streamtrio.Event
    assert streamtrio.ChannelT is streamtrio.Channel
    ids: set[Any] = {streamtrio.uuid() for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == 36 for i in ids)


def test_faust_agent_topic_names(app_factory: Any) -> None:
    app = app_factory("named", faust_agent_topic_names=True)

    @app.agent(value_type=int)
    async def counter(stream: Any) -> None:
        async for _ in stream:
            pass

    assert counter.channel.label == f"named-{__name__}.test_faust_agent_topic_names.<locals>.counter"
    assert counter.channel.value_type is int


async def test_asyncio_in_a_task_names_the_trio_replacement(app_factory: Any) -> None:
    import asyncio

    app = app_factory("asyncio-task")

    @app.task
    async def uses_asyncio() -> None:
        await asyncio.sleep(1)

    with pytest.raises(streamtrio.WorkerError, match=r"no running event loop.*trio\.sleep"):
        await streamtrio.serve(app)


async def test_changelog_as_json_with_faust_metadata(app_factory: Any) -> None:
    from .faust_apps.orders import Item

    app = app_factory("json-changelog", changelog_serializer="json", commit_interval=0.05)
    items = app.topic("items", key_type=str, value_type=Item, partitions=1)
    latest = app.Table("latest", partitions=1, key_serializer="raw")

    @app.agent(items)
    async def keep(stream: Any) -> None:
        async for item in stream:
            latest[item.sku] = item

    async with open_test_app(app) as test_app:
        await test_app.send(items, Item("x", 2), key="x")
        await test_app.drain()
        await test_app.commit()
        raw = test_app.broker.messages("json-changelog-latest-changelog", 0)
        assert [(m.key, json.loads(m.value)) for m in raw] == [
            (b"x", {"sku": "x", "qty": 2, "__faust": {"ns": "tests.faust_apps.orders.Item"}})
        ]
    # a Faust-written changelog record is read back as the class
    assert latest.schema.loads_value(raw[0].value) == Item("x", 2)


async def test_send_returns_an_awaitable_and_reply_to_reaches_the_reply_topic(app_factory: Any) -> None:
    app = app_factory("reply", commit_interval=0.05)
    requests = app.topic("requests", value_type=int, partitions=1)
    replies = app.topic("replies", value_type=int, partitions=1)

    @app.agent(requests)
    async def double(stream: Any) -> Any:
        async for value in stream:
            yield value * 2

    async with open_test_app(app) as test_app:
        md = await (await requests.send(value=21, reply_to=replies, correlation_id="c1"))
        assert md.topic == "requests" and md.offset == 0
        await test_app.drain()
        sent = test_app.messages(replies)
        assert [m.value for m in sent] == [42]
        assert b"c1" in dict(sent[0].headers or []).values()
