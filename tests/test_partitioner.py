"""Partitioners: murmur2 must match the Java client, the others librdkafka.

The memory transport, the tables and the router place keys with them (tests
at the end); tests/kafka/test_partitioner_kafka.py checks them against a real
confluent-kafka producer.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import streamtrio
from streamtrio import TP, ConfigurationError
from streamtrio._partitioner import (
    PARTITIONERS,
    crc32,
    fnv1a,
    key_placement,
    murmur2,
    partition_for_key,
    partitioner_named,
)

from .conftest import running, wait_for
from .test_web import web_options

AppFactory = Callable[..., streamtrio.App]

# Apache Kafka, clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java
# (testMurmur2): Utils.murmur2 as a signed Java int.
KAFKA_UTILS_TEST = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]

# librdkafka, src/rdmurmur2.c (unittest_murmur2), checked there against the
# Java client; unsigned 32-bit patterns. Covers every tail length 0..3.
_SHORT = b"1234"
_LONG = b"PreAmbleWillBeRemoved,ThePrePartThatIs"
LIBRDKAFKA_UNITTEST = [
    (b"kafka", 0xD067CF64),
    (b"giberish123456789", 0x8F552B0C),
    (_SHORT, 0x9FC97B14),
    (_SHORT[1:], 0xE7C009CA),
    (_SHORT[2:], 0x873930DA),
    (_SHORT[3:], 0x5A4B5CA1),
    (_LONG, 0x78424F1C),
    (_LONG[1:], 0x4A62B377),
    (_LONG[2:], 0xE0E4E09E),
    (_LONG[3:], 0x62B8B43F),
    (b"", 0x106E08D9),
]

# kafka-python, test/test_partitioner.py (test_murmur2_java_compatibility):
# partitions chosen by the Java client's partitioner over 1000 partitions.
JAVA_PARTITIONS_OF_1000 = [
    (b"", 681),
    (b"a", 524),
    (b"ab", 434),
    (b"abc", 107),
    (b"123456789", 566),
    (b"\x00 ", 742),
]


@pytest.mark.parametrize(("data", "expected"), KAFKA_UTILS_TEST)
def test_murmur2_matches_kafka_utils_test(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


@pytest.mark.parametrize(("data", "expected"), LIBRDKAFKA_UNITTEST)
def test_murmur2_matches_librdkafka_unittest(data: bytes, expected: int) -> None:
    signed = expected - (1 << 32) if expected >= 1 << 31 else expected
    assert murmur2(data) == signed


@pytest.mark.parametrize(("key", "expected"), JAVA_PARTITIONS_OF_1000)
def test_partition_for_key_matches_java_partitioner(key: bytes, expected: int) -> None:
    assert partition_for_key(key, 1000) == expected


def test_partition_uses_the_positive_hash_of_negative_hashes() -> None:
    # murmur2(b"foobar") is negative: Kafka masks the sign bit, it does not abs().
    assert murmur2(b"foobar") < 0
    assert partition_for_key(b"foobar", 7) == (-790332482 & 0x7FFFFFFF) % 7 == 0
    assert partition_for_key(b"foobar", 7) != abs(-790332482) % 7


def test_hash_is_a_signed_32_bit_int_for_any_length() -> None:
    for n in range(64):
        h = murmur2(bytes(range(200, 200 - n, -1)) if n else b"")
        assert -(1 << 31) <= h < 1 << 31


def test_none_key_is_spread_at_random_and_empty_key_is_hashed() -> None:
    seen = {partition_for_key(None, 4) for _ in range(400)}
    assert seen == {0, 1, 2, 3}
    assert {partition_for_key(b"", 1000) for _ in range(20)} == {681}


def test_partition_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_partitions"):
        partition_for_key(b"k", 0)


# -- librdkafka's other partitioners ---------------------------------------------------

# librdkafka, tests/0048-partitioner.c: the hash of each key under each
# partitioner (crc32 from the crc32 tool, murmur2 from the Java client, fnv1a
# from Go's hash/fnv); librdkafka asserts partition = hash % partition count.
_KEYS_0048 = [b"", b"23456", b"this is another string with more length to it perhaps", b"hejsan"]
HASHES_0048 = {
    "consistent": [0x0, 0xB1B451D7, 0xB0150DF7, 0xD077037E],
    "murmur2": [0x106E08D9, 0x058D780F, 0x4F7703DA, 0x5EC19395],
    "fnv1a": [0x7EE3623B, 0x27E6F469, 0x155E3E5F, 0x17B1E27A],
}

# librdkafka, src/rdfnv1a.c (unittest_fnv1a), from Go's hash/fnv made positive as Sarama does.
FNV1A_UNITTEST = [
    (b"kafka", 0x0D33C4E1),
    (b"giberish123456789", 0x77A58295),
    (_SHORT, 0x023BDD03),
    (_SHORT[1:], 0x2DEA3CD2),
    (_SHORT[2:], 0x740FA83E),
    (_SHORT[3:], 0x310CA263),
    (_LONG, 0x65CBD69C),
    (_LONG[1:], 0x6E49C79A),
    (_LONG[2:], 0x69EED356),
    (_LONG[3:], 0x6ABCC023),
    (b"", 0x7EE3623B),
]


@pytest.mark.parametrize(
    "name", ["consistent", "crc32", "consistent_random", "murmur2", "murmur2_random", "fnv1a", "fnv1a_random"]
)
@pytest.mark.parametrize("count", [7, 17])
def test_every_partitioner_matches_librdkafka_0048(name: str, count: int) -> None:
    family = {"crc32": "consistent", "consistent_random": "consistent"}.get(
        name, name.removesuffix("_random")
    )
    partition = partitioner_named(name)
    for key, h in zip(_KEYS_0048, HASHES_0048[family], strict=True):
        if key == b"" and name == "consistent_random":
            continue  # random: below
        assert partition(key, count) == h % count, (name, key)


@pytest.mark.parametrize(("data", "expected"), FNV1A_UNITTEST)
def test_fnv1a_matches_librdkafka_unittest(data: bytes, expected: int) -> None:
    assert fnv1a(data) == expected


def test_crc32_is_the_standard_crc() -> None:
    assert crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value
    assert crc32(b"hejsan") == 0xD077037E


def test_none_key_is_random_under_every_partitioner_empty_key_only_under_consistent_random() -> None:
    for name in PARTITIONERS:
        assert {partitioner_named(name)(None, 4) for _ in range(400)} == {0, 1, 2, 3}, name
        seen = {partitioner_named(name)(b"", 4) for _ in range(400)}
        assert len(seen) == (4 if name == "consistent_random" else 1), name
    # Tables and the router place a stored empty key somewhere fixed.
    assert {key_placement("consistent_random")(b"", 4) for _ in range(50)} == {0}


def test_unknown_partitioner_names_the_choices() -> None:
    with pytest.raises(ValueError, match="consistent_random"):
        partitioner_named("crc64")


def test_the_setting_takes_librdkafka_names_and_rejects_others() -> None:
    assert streamtrio.App("p", broker="memory://").conf.partitioner == "murmur2"
    assert streamtrio.App("p", broker="memory://", partitioner="crc32").conf.partitioner == "crc32"
    with pytest.raises(ConfigurationError, match="partitioner"):
        streamtrio.App("p", broker="memory://", partitioner="crc64")
    app = streamtrio.App("p", broker="memory://")
    with pytest.raises(ValueError, match="unknown partitioner"):
        app.topic("t", partitioner="crc64")
    with pytest.raises(ConfigurationError, match="unknown partitioner"):
        app.Table("t", partitioner="crc64")


# -- what a user sees on the memory transport ------------------------------------------

WORDS = [f"word-{i}" for i in range(40)]
N = 4


def misplaced_under_murmur2(words: list[str]) -> list[str]:
    crc = partitioner_named("consistent_random")
    return [w for w in words if crc(w.encode(), N) != partition_for_key(w.encode(), N)]


async def test_memory_producer_places_keys_by_the_app_and_topic_partitioner(app_factory: AppFactory) -> None:
    app = app_factory("placer", partitioner="consistent_random")
    by_app = app.topic("by-app", key_type=str, value_type=str, partitions=N)
    by_topic = app.topic("by-topic", key_type=str, value_type=str, partitions=N, partitioner="fnv1a")
    by_murmur = app.topic("by-murmur", key_type=str, value_type=str, partitions=N, partitioner="murmur2")
    async with app.open_client():
        for word in WORDS:
            key = word.encode()
            assert (await by_app.send(key=word, value="v")).partition == zlib.crc32(key) % N
            assert (await by_topic.send(key=word, value="v")).partition == fnv1a(key) % N
            assert (await by_murmur.send(key=word, value="v")).partition == partition_for_key(key, N)
    assert misplaced_under_murmur2(WORDS)  # the test means something


def words_app(app_factory: AppFactory, **options: Any) -> tuple[streamtrio.App, streamtrio.Table]:
    app = app_factory("words", **web_options(**options))
    words = app.topic("words", key_type=str, value_type=str, partitions=N)
    counts = app.Table("counts", default=int, key_type=str, partitions=N)

    @app.agent(words)
    async def count(stream: streamtrio.Stream[str]) -> None:
        async for event in stream.events():
            counts[event.key] += 1

    return app, counts


async def produce_like_librdkafka(app: streamtrio.App, words: list[str]) -> None:
    """What a confluent-kafka producer with its defaults does: CRC32 of the key."""
    topic = app._topic_named("words")
    async with app.open_client():
        for word in words:
            partition = zlib.crc32(word.encode()) % N
            await topic.send(key=word, value=word, partition=partition)


async def test_with_the_producers_partitioner_every_key_is_where_the_router_looks(
    app_factory: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app, counts = words_app(app_factory, partitioner="consistent_random")
    async with running(app), httpx.AsyncClient(timeout=10.0) as client:
        await produce_like_librdkafka(app, WORDS)
        await wait_for(lambda: counts.event_writes == len(WORDS))
        for word in WORDS:
            assert app.router.table_partition("counts", word) == TP(
                "words-counts-changelog", zlib.crc32(word.encode()) % N
            )
            answer = await client.get(f"{app.web.url}/table/counts/{word}/")
            assert answer.status_code == 200 and answer.json()["value"] == 1
        stats = (await client.get(f"{app.web.url}/stats/")).json()
        assert stats["tables"]["counts"] == {
            "partitioner": "consistent_random",
            "misrouted_writes": 0,
            "event_writes": len(WORDS),
            "foreign_writes": 0,
        }
    assert "partitioner places the key" not in caplog.text


async def test_a_key_written_on_another_partition_is_counted_and_logged_once(
    app_factory: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app, counts = words_app(app_factory)  # murmur2, while the producer used CRC32
    misplaced = misplaced_under_murmur2(WORDS)
    async with running(app), httpx.AsyncClient(timeout=10.0) as client:
        await produce_like_librdkafka(app, WORDS + WORDS)
        await wait_for(lambda: counts.event_writes == 2 * len(WORDS))
        stats = (await client.get(f"{app.web.url}/stats/")).json()
        assert stats["tables"]["counts"]["misrouted_writes"] == 2 * len(misplaced)
        # What the warning is about: the router sends it to the owner of another partition.
        crc = zlib.crc32(misplaced[0].encode()) % N
        assert app.router.table_partition("counts", misplaced[0]).partition != crc
        metrics = (await client.get(f"{app.web.url}/metrics")).text
        assert f'streamtrio_table_misrouted_writes_total{{table="counts"}} {2 * len(misplaced)}.0' in metrics
    warnings = [r for r in caplog.records if "partitioner places the key" in r.getMessage()]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "table 'counts'" in text and "from words[" in text and "murmur2" in text
    assert "consistent_random" in text and "group_by" in text and "/stats" in text


async def test_a_key_that_is_not_the_message_key_is_flagged_group_by_is_not(
    app_factory: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_factory("rekey", commit_interval=0.05)
    orders = app.topic("orders", key_type=str, value_type=str, partitions=N)
    wrong = app.Table("wrong", default=int, key_type=str, partitions=N)
    right = app.Table("right", default=int, key_type=str, partitions=N)

    @app.agent(orders)
    async def by_value(stream: streamtrio.Stream[str]) -> None:
        async for account in stream:
            wrong[account] += 1  # keyed by the value: another partition than the event's

    @app.agent(orders)
    async def regrouped(stream: streamtrio.Stream[str]) -> None:
        async for account in stream.group_by(lambda v: v, name="by-account"):
            right[account] += 1

    accounts = [f"account-{i}" for i in range(20)]
    async with running(app):
        async with app.open_client():
            for i, account in enumerate(accounts):
                await orders.send(key=f"order-{i}", value=account)
        await wait_for(lambda: wrong.event_writes == len(accounts) and right.event_writes == len(accounts))
        assert wrong.misrouted_writes > 0
        assert right.misrouted_writes == 0
    text = caplog.text
    assert "table 'wrong'" in text and "table 'right'" not in text


async def test_windowed_table_writes_are_checked_too(app_factory: AppFactory) -> None:
    app = app_factory("windows", commit_interval=0.05)
    orders = app.topic("orders", key_type=str, value_type=str, partitions=N)
    by_key = app.Table("by-key", default=int, key_type=str, partitions=N).tumbling(60, expires=600)
    by_value = app.Table("by-value", default=int, key_type=str, partitions=N).tumbling(60, expires=600)

    @app.agent(orders)
    async def count(stream: streamtrio.Stream[str]) -> None:
        async for event in stream.events():
            by_key[event.key] += 1
            by_value[event.value] += 1

    async with running(app):
        async with app.open_client():
            for i in range(20):
                await orders.send(key=f"order-{i}", value=f"account-{i}")
        await wait_for(lambda: by_value.table.event_writes == 20)
        assert by_key.table.event_writes == 20 and by_key.table.misrouted_writes == 0
        assert by_value.table.misrouted_writes > 0
