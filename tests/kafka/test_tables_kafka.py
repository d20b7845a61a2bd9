"""Tables against a real Kafka-protocol broker: the 100,000-event word count, restart, new machine."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import trio

import streamtrio
from streamtrio import TP

from ._util import lmdb_app

log = logging.getLogger(__name__)

PARTITIONS = 8
TOTAL = 100_000


def word_count_app(app_id: str, bootstrap: str, datadir: Path, **options: Any) -> tuple[streamtrio.App, Any]:
    app = lmdb_app(app_id, bootstrap, datadir, commit_interval=0.5, **options)
    words = app.topic(f"{app_id}-words", key_type=str, value_type=str, partitions=PARTITIONS)
    counts = app.Table("counts", default=int, key_type=str, value_type=int, partitions=PARTITIONS)
    processed = [0]

    @app.agent(words)
    async def count(stream: streamtrio.Stream[str]) -> None:
        async for word in stream:
            counts[word] += 1
            processed[0] += 1

    return app, (counts, processed, words)


async def wait_for(predicate: Any, timeout: float = 120.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def test_word_count_restart_and_new_machine(kafka_bootstrap: str, tmp_path: Path) -> None:
    app_id = f"wc-{uuid.uuid4().hex[:8]}"
    words = [f"word-{(i * 7919) % 1000}" for i in range(TOTAL)]
    expected = Counter(words)
    changelog = f"{app_id}-counts-changelog"

    app, (counts, processed, topic) = word_count_app(app_id, kafka_bootstrap, tmp_path / "one")
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        await app.tables.wait_until_recovery_completed()
        began = time.perf_counter()
        for word in words:
            topic.send_soon(key=word, value=word)
        await app.producer.flush()
        await wait_for(lambda: processed[0] >= TOTAL)
        elapsed = time.perf_counter() - began
        assert processed[0] == TOTAL
        assert dict(counts.items()) == expected
        worker.stop()
    log.info("kafka word count: %d events in %.2fs (%.0f/s)", TOTAL, elapsed, TOTAL / elapsed)

    # Graceful restart with the same data dir: nothing replayed beyond the persisted offsets.
    app2, (counts2, processed2, _) = word_count_app(app_id, kafka_bootstrap, tmp_path / "one")
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app2)
        await app2.tables.wait_until_recovery_completed()
        stats = app2.tables.statistics()
        assert stats.recovered == {TP(changelog, p): 0 for p in range(PARTITIONS)}
        assert dict(counts2.items()) == expected
        persisted = {p: counts2.persisted_offset(p) for p in range(PARTITIONS)}
        worker.stop()
    assert processed2[0] == 0

    # A new machine: the whole changelog is replayed and gives the same totals.
    app3, (counts3, _, _) = word_count_app(
        app_id, kafka_bootstrap, tmp_path / "new", table_standby_replicas=0
    )
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app3)
        began = time.perf_counter()
        await app3.tables.wait_until_recovery_completed()
        replay_seconds = time.perf_counter() - began
        replayed = app3.tables.statistics().recovered
        assert replayed == {TP(changelog, p): (persisted[p] or 0) + 1 for p in range(PARTITIONS)}
        assert dict(counts3.items()) == expected
        worker.stop()
    records = sum(replayed.values())
    log.info(
        "kafka replay: %d changelog records in %.2fs (%.0f/s); %d records for %d writes",
        records,
        replay_seconds,
        records / replay_seconds,
        records,
        TOTAL,
    )
    assert records < TOTAL / 5
