"""Recovery reports its progress: records done/total, rate and ETA, in logs and statistics()."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection
from pathlib import Path

import pytest

import streamtrio
from streamtrio import TP
from streamtrio._exceptions import TransportError
from streamtrio._tables import recovery
from streamtrio._transports.memory import MemoryBroker, MemoryReader

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

PARTITIONS = 4


def count_app(
    app_factory: AppFactory, datadir: Path, **options: object
) -> tuple[streamtrio.App, streamtrio.Table]:
    app = app_factory(
        **options,
        store="lmdb://",
        datadir=str(datadir),
        lmdb_sync=False,
        commit_interval=0.05,
        table_standby_replicas=0,
    )
    words = app.topic("words", key_type=str, value_type=str, partitions=PARTITIONS)
    counts = app.Table(
        "counts", default=int, key_type=str, value_type=int, partitions=PARTITIONS, recovery_buffer_size=100
    )

    @app.agent(words)
    async def count(stream: streamtrio.Stream[str]) -> None:
        async for word in stream:
            counts[word] += 1

    return app, counts


@pytest.mark.parametrize("ends_known", [True, False])
async def test_recovery_logs_done_total_rate_eta_and_exposes_progress(
    app_factory: AppFactory,
    broker: MemoryBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    ends_known: bool,
) -> None:
    app, _ = count_app(app_factory, tmp_path / "first")
    async with app.open_client():
        topic = app._topic_named("words")
        for i in range(4000):
            topic.send_soon(key=f"w{i % 2000}", value=f"w{i % 2000}")
        await app.producer.flush()
    ends = {TP("words", p): broker.end_offset(TP("words", p)) for p in range(PARTITIONS)}
    async with running(app):
        await wait_for(lambda: broker.committed(app.id) == ends, timeout=60)
    changelog = sum(broker.end_offset(TP("testapp-counts-changelog", p)) for p in range(PARTITIONS))

    if not ends_known:
        # A broker that does not say where its partitions end: the progress
        # goes on without a total.

        async def end_offsets(self: MemoryReader, tps: Collection[TP]) -> dict[TP, int]:
            raise TransportError("no answer")

        monkeypatch.setattr(MemoryReader, "end_offsets", end_offsets)
    monkeypatch.setattr(recovery, "PROGRESS_EVERY", 0.0)  # a line per batch
    caplog.set_level(logging.INFO, logger="streamtrio._tables")
    app2, counts2 = count_app(app_factory, tmp_path / "second", consumer_max_batch=100)  # replay it all
    async with running(app2):
        await app2.tables.wait_until_recovery_completed()
        progress = app2.tables.statistics().recovery
        assert len(counts2) == 2000
    assert progress is not None and progress.finished
    assert progress.done == changelog and progress.partitions == PARTITIONS and progress.remaining == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recovering tables: ")]
    assert lines, caplog.text
    if ends_known:
        assert progress.total == changelog and progress.eta == 0.0
        first = re.match(
            r"recovering tables: (\d+)/(\d+) records \(\d+%\), \d+ records/s, ETA [\d.]+s", lines[0]
        )
        assert first is not None, lines[0]
        assert 0 < int(first[1]) < int(first[2]) == changelog
    else:
        assert progress.total is None and progress.eta is None
        assert re.match(r"recovering tables: \d+ records \(total unknown\), \d+ records/s", lines[0])
    assert f"tables recovered: {changelog}" in caplog.text
