"""A worker's log says each fact once, at the right level (memory transport)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest

import streamtrio

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level and r.name.startswith("streamtrio")]


def logged_app(app_factory: AppFactory) -> tuple[streamtrio.App, list[int]]:
    app = app_factory(
        "logs", web_enabled=True, web_port=0, web_bind="127.0.0.1", web_host="127.0.0.1", commit_interval=0.05
    )
    orders = app.topic("orders", key_type=str, value_type=int, partitions=3)
    totals = app.Table("totals", key_type=str, default=int, partitions=3)
    seen: list[int] = []

    @app.agent(orders)
    async def add(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            totals[event.key] += event.value
            seen.append(event.value)

    return app, seen


async def test_each_fact_once_and_no_empty_details(
    app_factory: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app, seen = logged_app(app_factory)
    caplog.set_level(logging.INFO, logger="streamtrio")
    async with running(app):
        await app._topic_named("orders").send(key="k", value=1)
        await wait_for(lambda: seen == [1])
    lines = messages(caplog)
    assert len([m for m in lines if m.startswith("web server on")]) == 1
    assert not [m for m in lines if "Running on" in m]  # Hypercorn's own start-up line
    assert not [m for m in lines if re.search(r"partition \d+ recovered: 0 records", m)]  # debug
    [created] = [m for m in lines if m.startswith("created topics")]
    assert created == "created topics: orders"  # internal ones at debug level
    [assigned] = [m for m in lines if m.startswith("assigned")]
    assert assigned == "assigned orders[0, 1, 2]"  # not the internal leader topic's partition
    [revoked] = [m for m in lines if m.startswith("revoked")]
    assert revoked == "revoked orders[0, 1, 2]"  # nothing to commit: the final commit did it
    assert not [m for m in lines if m.startswith("tables recovered: 0 records")]  # nothing to say
    [banner] = [m for m in lines if m.startswith("streamtrio ")]
    [topics] = [line for line in banner.splitlines() if line.strip().startswith("topics")]
    assert topics.split() == ["topics", "orders"]  # no -__assignor-__leader, -__cluster, changelogs


async def test_the_banner_lists_internal_topics_at_debug_level(
    app_factory: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app, _seen = logged_app(app_factory)
    caplog.set_level(logging.DEBUG, logger="streamtrio")
    async with running(app):
        await app.tables.wait_until_recovery_completed()
    [banner] = [m for m in messages(caplog) if m.startswith("streamtrio ")]
    assert "logs-__cluster" in banner
    assert "logs-__assignor-__leader" in banner
    assert [m for m in messages(caplog, logging.DEBUG) if "partition 2 recovered: 0 records" in m]
