"""Partitioners against the real broker: librdkafka's placement, and the issue's word count.

librdkafka (confluent-kafka, kcat) defaults to ``consistent_random`` (CRC32),
the Java client to murmur2. The first test produces keys with a plain
confluent-kafka Producer under every ``partitioner`` and checks each lands
where :mod:`streamtrio._partitioner` says. The others are the scenario of
issue 14: a confluent-kafka producer with its defaults writes words, a
streamtrio app counts them and serves the counts over HTTP.
"""

from __future__ import annotations

import textwrap
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import trio
from confluent_kafka import Producer

import streamtrio
from streamtrio._partitioner import PARTITIONERS, partitioner_named

from ._util import create_topic, unique
from .test_web_kafka import Workers, get_json

PARTITIONS = 7
KEYS = [b""] + [f"key-{i}".encode() for i in range(150)] + [bytes(range(i, i + 9)) for i in range(0, 240, 8)]


def delivered_partitions(bootstrap: str, topic: str, config: dict[str, Any], keys: list[bytes]) -> list[int]:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **config})
    partitions: list[int] = [-1] * len(keys)
    errors: list[Any] = []

    def report(i: int) -> Any:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(err)
            else:
                partitions[i] = msg.partition()

        return on_delivery

    for i, key in enumerate(keys):
        producer.produce(topic, key=key, value=b"v", on_delivery=report(i))
        producer.poll(0)
    assert producer.flush(30) == 0 and not errors, errors[:3]
    return partitions


def test_every_partitioner_places_keys_as_librdkafka_does(kafka_bootstrap: str) -> None:
    topic = unique("placement")
    create_topic(kafka_bootstrap, topic, PARTITIONS)
    # librdkafka's default, as a confluent-kafka user gets it.
    defaults = delivered_partitions(kafka_bootstrap, topic, {}, KEYS[1:])
    assert defaults == [PARTITIONERS["consistent_random"](k, PARTITIONS) for k in KEYS[1:]]
    for name in PARTITIONERS:
        # consistent_random (and so crc32's alias) sends an empty key anywhere
        keys = KEYS[1:] if name == "consistent_random" else KEYS
        config = {"partitioner": "consistent" if name == "crc32" else name}
        got = delivered_partitions(kafka_bootstrap, topic, config, keys)
        expected = [partitioner_named(name)(k, PARTITIONS) for k in keys]
        assert got == expected, name


async def test_app_producer_and_per_topic_partitioner_place_keys_like_librdkafka(
    kafka_bootstrap: str,
) -> None:
    broker = f"kafka://{kafka_bootstrap}"
    app_topic, own_topic = unique("app-crc"), unique("own-fnv")
    create_topic(kafka_bootstrap, app_topic, PARTITIONS)
    create_topic(kafka_bootstrap, own_topic, PARTITIONS)
    app = streamtrio.App(unique("placer"), broker=broker, web_enabled=False, partitioner="consistent_random")
    by_app = app.topic(app_topic, key_type=bytes, value_type=bytes)
    by_topic = app.topic(own_topic, key_type=bytes, value_type=bytes, partitioner="fnv1a")
    keys = KEYS[1:60]
    async with app.open_client():
        for key in keys:
            meta = await by_app.send(key=key, value=b"v")
            assert meta.partition == PARTITIONERS["consistent_random"](key, PARTITIONS), key
            meta = await by_topic.send(key=key, value=b"v")
            assert meta.partition == PARTITIONERS["fnv1a"](key, PARTITIONS), key


WORDS = [f"word-{i}" for i in range(40)]
COUNTS = {word: 1 + i % 3 for i, word in enumerate(WORDS)}

APP_FILE = textwrap.dedent(
    """
    import os
    import streamtrio

    options = {}
    if os.environ.get("WORDS_PARTITIONER"):
        options["partitioner"] = os.environ["WORDS_PARTITIONER"]
    app = streamtrio.App(
        os.environ["WEBTEST_APP_ID"],
        store="memory://",
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=0,
        commit_interval=0.2,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=0.5,
        broker_request_timeout=15.0,
        shutdown_timeout=10.0,
        **options,
    )
    words = app.topic(
        "%(topic)s", key_type=str, value_type=str, value_serializer="raw", partitions=%(partitions)d
    )
    counts = app.Table("counts", key_type=str, default=int, partitions=%(partitions)d)

    @app.agent(words)
    async def count(stream):
        async for event in stream.events():
            counts[event.key] += 1

    @app.task
    async def announce():
        print("WEBURL", app.web.url, app.cluster.worker_id, flush=True)
    """
)


def start_workers(tmp_path: Path, bootstrap: str, n: int, partitioner: str | None) -> tuple[Workers, str]:
    import os

    topic = unique("words")
    create_topic(bootstrap, topic, 4)
    app_file = tmp_path / "words.py"
    app_file.write_text(APP_FILE % {"topic": topic, "partitions": 4})
    workers = Workers(app_file, f"words-{uuid.uuid4().hex[:8]}", bootstrap, tmp_path)
    if partitioner is not None:
        os.environ["WORDS_PARTITIONER"] = partitioner
    try:
        workers.start(n)
    finally:
        os.environ.pop("WORDS_PARTITIONER", None)
    return workers, topic


def produce_words_like_a_confluent_user(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})  # librdkafka's defaults
    for word, n in COUNTS.items():
        for _ in range(n):
            producer.produce(topic, key=word.encode(), value=word.encode())
    assert producer.flush(30) == 0


async def test_confluent_producer_counts_served_by_the_right_worker(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    workers, topic = start_workers(tmp_path, kafka_bootstrap, 2, "consistent_random")
    try:
        produce_words_like_a_confluent_user(kafka_bootstrap, topic)
        async with httpx.AsyncClient(timeout=10.0) as client:

            async def answers() -> Counter[int]:
                seen: Counter[int] = Counter()
                for word, n in COUNTS.items():
                    for url in workers.urls:
                        status, doc = await get_json(
                            client, f"{url}/table/counts/{word}/", follow_redirects=True
                        )
                        seen[status] += 1
                        if status == 200 and doc["value"] != n:
                            seen[-1] += 1
                return seen

            seen: Counter[int] = Counter()
            with trio.move_on_after(60):
                while (seen := await answers()) != Counter({200: 2 * len(COUNTS)}):
                    # 404 only until every word is counted; for good once every key
                    # is served (a key looked for on another partition never is).
                    await trio.sleep(0.3)
            logs = "\n".join(workers.log(i)[-2000:] for i in range(2))
            assert seen == Counter({200: 2 * len(COUNTS)}), f"{seen}\n{logs}"
            for url in workers.urls:
                status, doc = await get_json(client, f"{url}/stats/")
                assert status == 200
                assert doc["tables"]["counts"]["partitioner"] == "consistent_random"
                assert doc["tables"]["counts"]["misrouted_writes"] == 0
    finally:
        workers.stop_all()
    for i in range(2):
        assert "misrouted" not in workers.log(i) and "partitioner places the key" not in workers.log(i)


async def test_with_the_default_murmur2_the_misrouting_is_loud(kafka_bootstrap: str, tmp_path: Path) -> None:
    workers, topic = start_workers(tmp_path, kafka_bootstrap, 1, None)
    try:
        produce_words_like_a_confluent_user(kafka_bootstrap, topic)
        url = workers.urls[0]
        async with httpx.AsyncClient(timeout=10.0) as client:
            with trio.fail_after(60):
                while True:
                    status, doc = await get_json(client, f"{url}/stats/")
                    if status == 200 and doc["tables"]["counts"]["event_writes"] == sum(COUNTS.values()):
                        break
                    await trio.sleep(0.3)
            table = doc["tables"]["counts"]
            assert table["partitioner"] == "murmur2"
            misplaced = [
                w
                for w in WORDS
                if PARTITIONERS["consistent"](w.encode(), 4) != PARTITIONERS["murmur2"](w.encode(), 4)
            ]
            assert table["misrouted_writes"] == sum(COUNTS[w] for w in misplaced) > 0
    finally:
        workers.stop_all()
    log = workers.log(0)
    assert log.count("partitioner places the key") == 1, log[-3000:]
    assert "table 'counts'" in log and topic in log and "group_by" in log and "consistent_random" in log
