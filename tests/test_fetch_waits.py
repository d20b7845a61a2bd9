"""How long the broker may hold a fetch that finds nothing new, per client.

A partition's end is an empty fetch answer, which the broker holds for the
reader's ``fetch.wait.max.ms`` (librdkafka: 500 ms) when nothing new comes.
Table recovery waited that long after its last record for the last of its
partitions to end: a 300,000-record replay on Apache Kafka took 0.91 s, of
which 0.35 s was this wait (0.57 s with it; docs/benchmarks.md).

The group consumer: a partition resumed after a pause (its lane drained) has
lost its prefetched messages, and its next fetch could wait behind one the
broker held for 500 ms; every lane ran dry meanwhile (the stateful benchmark
at 150,000 events/s in five runs of six, 180,000-197,000 with a short wait).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import streamtrio
from streamtrio._settings import Settings
from streamtrio._transports.base import Reader
from streamtrio._transports.kafka_admin import (
    GROUP_FETCH_WAIT_MS,
    PROMPT_END_WAIT_MS,
    consumer_config,
    reader_config,
)

from .conftest import running


def test_a_prompt_end_reader_asks_the_broker_for_a_short_wait() -> None:
    settings = Settings("app")
    assert (
        reader_config(settings, "localhost:9092", prompt_end=True)["fetch.wait.max.ms"] == PROMPT_END_WAIT_MS
    )
    # readers that follow a topic for good (standbys, global tables, the cluster
    # map) keep librdkafka's long poll: no fetch every few milliseconds while idle
    assert "fetch.wait.max.ms" not in reader_config(settings, "localhost:9092")
    # an operator's own value wins, as for every librdkafka option
    tuned = Settings("app", consumer_config={"fetch.wait.max.ms": 100})
    assert reader_config(tuned, "localhost:9092", prompt_end=True)["fetch.wait.max.ms"] == 100


def test_the_group_consumer_asks_the_broker_for_a_short_wait() -> None:
    assert (
        consumer_config(Settings("app"), "localhost:9092", "group")["fetch.wait.max.ms"]
        == GROUP_FETCH_WAIT_MS
    )
    assert GROUP_FETCH_WAIT_MS <= 100
    tuned = Settings("app", consumer_config={"fetch.wait.max.ms": 500})
    assert consumer_config(tuned, "localhost:9092", "group")["fetch.wait.max.ms"] == 500


async def test_table_recovery_reads_with_a_prompt_end_reader_and_follows_with_a_long_poll(
    tmp_path: Any,
) -> None:
    app = streamtrio.App(
        "prompt-end", broker="memory://", datadir=str(tmp_path), web_enabled=False, table_standby_replicas=1
    )
    app.Table("totals", default=int, key_type=str, value_type=int, partitions=2)
    transport = app.transport
    opened: list[bool] = []
    open_reader = transport.open_reader

    def recording(*, prompt_end: bool = False) -> AbstractAsyncContextManager[Reader]:
        opened.append(prompt_end)
        return open_reader(prompt_end=prompt_end)

    transport.open_reader = recording  # type: ignore[method-assign]
    async with running(app):
        pass
    # one recovery reader (prompt end); the standby follower keeps the long poll
    assert opened.count(True) == 1 and False in opened, opened
