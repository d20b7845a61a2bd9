"""Kafka's murmur2 partitioner: the hash and the partition must match the Java client."""

from __future__ import annotations

import pytest

from streamtrio._partitioner import murmur2, partition_for_key

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
