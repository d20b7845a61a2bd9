"""Recovery reports its progress: records done/total, rate and ETA, in logs and statistics()."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

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


async def filled_datadir(app_factory: AppFactory, broker: MemoryBroker, datadir: Path) -> int:
    """Count 2,000 words into a table with a first worker; the changelog's length."""
    app, _ = count_app(app_factory, datadir)
    async with app.open_client():
        topic = app._topic_named("words")
        for i in range(4000):
            topic.send_soon(key=f"w{i % 2000}", value=f"w{i % 2000}")
        await app.producer.flush()
    ends = {TP("words", p): broker.end_offset(TP("words", p)) for p in range(PARTITIONS)}
    async with running(app):
        await wait_for(lambda: broker.committed(app.id) == ends, timeout=60)
    return sum(broker.end_offset(TP("testapp-counts-changelog", p)) for p in range(PARTITIONS))


@pytest.mark.parametrize("ends_known", [True, False])
async def test_recovery_logs_done_total_rate_eta_and_exposes_progress(
    app_factory: AppFactory,
    broker: MemoryBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    ends_known: bool,
) -> None:
    changelog = await filled_datadir(app_factory, broker, tmp_path / "first")

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


async def test_recovery_does_not_wait_for_a_broker_that_never_tells_the_end_offsets(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen on Apache Kafka after the broker was frozen: the end-offset requests
    # (for the progress total only) held the recovery, and the partitions, up.
    changelog = await filled_datadir(app_factory, broker, tmp_path / "first")

    async def end_offsets(self: MemoryReader, tps: Collection[TP]) -> dict[TP, int]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr(MemoryReader, "end_offsets", end_offsets)
    app2, counts2 = count_app(app_factory, tmp_path / "second")
    async with running(app2):
        with trio.fail_after(30):
            await app2.tables.wait_until_recovery_completed()
        assert len(counts2) == 2000 and counts2["w7"] == 2
        progress = app2.tables.statistics().recovery
    assert progress is not None and progress.finished and progress.done == changelog
    assert progress.total is None


async def test_a_recovery_that_reads_nothing_says_so_every_ten_seconds_then_gives_up(
    app_factory: AppFactory,
    broker: MemoryBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    await filled_datadir(app_factory, broker, tmp_path / "first")
    monkeypatch.setattr(MemoryReader, "_take", lambda self: None)  # the changelog never answers
    app2, _ = count_app(app_factory, tmp_path / "second", table_recovery_timeout=25.0)
    with pytest.raises(streamtrio.RecoveryTimeoutError):
        await streamtrio.serve(app2)
    waits = [r.getMessage() for r in caplog.records if "nothing read from the changelogs" in r.getMessage()]
    assert [re.search(r"for (\d+)s", line)[1] for line in waits] == ["10", "20"], waits  # type: ignore[index]
    assert (
        "table 'counts' partition 0 (changelog testapp-counts-changelog[0], 0 records replayed)" in waits[0]
    )
    assert "table_recovery_timeout=25s" in waits[0]


async def test_a_worker_whose_recovery_stalls_names_the_recovery_not_a_missing_assignment(
    app_factory: AppFactory,
    broker: MemoryBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Seen on Apache Kafka after a frozen broker: a worker whose recovery was
    # stuck said "no partition assigned to this worker" for two minutes.
    await filled_datadir(app_factory, broker, tmp_path / "first")
    monkeypatch.setattr(MemoryReader, "_take", lambda self: None)  # the changelog never answers
    caplog.set_level(logging.WARNING)
    app2, _ = count_app(app_factory, tmp_path / "second", broker_session_timeout=2.0)
    async with running(app2) as worker:
        await trio.sleep(30.0)
        assert {tp for tp in worker.source_partitions() if tp.topic == "words"} == {
            TP("words", p) for p in range(PARTITIONS)
        }
        assert app2.monitor.stats()["membership"]["unassigned_for_seconds"] is None
    assert "no partition assigned" not in caplog.text
    assert "recovering tables: nothing read from the changelogs for 30s" in caplog.text


async def test_a_recovery_whose_reader_is_stuck_goes_on_with_a_new_one(
    app_factory: AppFactory,
    broker: MemoryBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Seen on Apache Kafka after the broker was frozen past its controller
    # session: the recovery reader's client never fetched the changelog
    # partitions again (librdkafka kept them leaderless), for minutes.
    changelog = await filled_datadir(app_factory, broker, tmp_path / "first")
    stuck: set[int] = set()
    assign, take = MemoryReader.assign_nowait, MemoryReader._take

    def assign_first_stuck(self: MemoryReader, offsets: Mapping[TP, int]) -> None:
        if not stuck and any(tp.topic.endswith("-changelog") for tp in offsets):
            stuck.add(id(self))
        assign(self, offsets)

    monkeypatch.setattr(MemoryReader, "assign_nowait", assign_first_stuck)
    monkeypatch.setattr(MemoryReader, "_take", lambda self: None if id(self) in stuck else take(self))
    caplog.set_level(logging.WARNING)
    app2, counts2 = count_app(app_factory, tmp_path / "second", consumer_max_batch=100)
    async with running(app2):
        with trio.fail_after(60):
            await app2.tables.wait_until_recovery_completed()
        assert len(counts2) == 2000 and counts2["w7"] == 2
        progress = app2.tables.statistics().recovery
    assert progress is not None and progress.finished and progress.done == changelog
    assert "nothing read from the changelogs for 10s" in caplog.text
    assert "reading them again with a new client" in caplog.text
