"""On Apache Kafka: a recovery whose reader's client stops fetching goes on with a new client.

Seen in the frozen-broker chaos scenario: after the broker was frozen past its
controller session, the recovery reader's librdkafka client never fetched the
changelog partitions again (librdkafka issues 5430 and 5593: a partition left
without a usable leader), and the worker stayed paused for minutes. Here the
first reader given the changelog partitions fetches nothing, as that client
did; the recovery says so and goes on with a new client, from where it was.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

import streamtrio
from streamtrio import TP
from streamtrio._tables import recovery
from streamtrio._transports.kafka_consumer import KafkaReader

from .test_tables_kafka import wait_for, word_count_app

pytestmark = pytest.mark.slow

WORDS = [f"word-{(i * 7919) % 300}" for i in range(3000)]


async def test_a_stuck_recovery_reader_is_replaced_on_kafka(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app_id = f"stall-{uuid.uuid4().hex[:8]}"
    app, (_, processed, topic) = word_count_app(app_id, kafka_bootstrap, tmp_path / "one")
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        await app.tables.wait_until_recovery_completed()
        for word in WORDS:
            topic.send_soon(key=word, value=word)
        await app.producer.flush()
        await wait_for(lambda: processed[0] >= len(WORDS))
        worker.stop()

    stuck: set[int] = set()
    assign, fetch = KafkaReader.assign_nowait, KafkaReader._fetch

    def assign_first_stuck(self: KafkaReader, offsets: Mapping[TP, int]) -> None:
        if not stuck and any(tp.topic.endswith("-changelog") for tp in offsets):
            stuck.add(id(self))
        assign(self, offsets)

    def fetch_unless_stuck(self: KafkaReader, client: Any) -> Any:
        if id(self) in stuck:
            client.consume(num_messages=1, timeout=0.05)  # keeps the client served, hands nothing over
            return None
        return fetch(self, client)

    monkeypatch.setattr(KafkaReader, "assign_nowait", assign_first_stuck)
    monkeypatch.setattr(KafkaReader, "_fetch", fetch_unless_stuck)
    monkeypatch.setattr(recovery, "WAIT_REPORT_EVERY", 2.0, raising=False)
    caplog.set_level(logging.WARNING, logger="streamtrio._tables")
    # A new machine: everything comes from the changelog.
    app2, (counts2, _, _) = word_count_app(
        app_id, kafka_bootstrap, tmp_path / "two", table_standby_replicas=0
    )
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app2)
        with trio.fail_after(60):
            await app2.tables.wait_until_recovery_completed()
        assert dict(counts2.items()) == Counter(WORDS)
        worker.stop()
    assert stuck, "no reader was given the changelog partitions"
    assert "nothing read from the changelogs for 2s" in caplog.text
    assert "reading them again with a new client" in caplog.text
