"""Key partitioners: the Java client's murmur2 and librdkafka's others, bit for bit.

A keyed message must land on the same partition whichever client produced it
(the Java producer, librdkafka, or the ``memory://`` transport), otherwise
co-partitioned topics and tables disagree about where a key lives, and the
web router asks the wrong worker. Kafka clients do not agree on a default:
the Java client (and Kafka Streams, and Faust through aiokafka) uses murmur2,
librdkafka (confluent-kafka, kcat, most non-Java clients) uses
``consistent_random``, a CRC32 of the key. :data:`PARTITIONERS` has every
name librdkafka's ``partitioner`` option takes, computed as librdkafka does:

``murmur2`` / ``murmur2_random``
    ``(murmur2(key) & 0x7fffffff) % n``, the Java client's.
``consistent`` / ``crc32``
    ``crc32(key) % n``; an empty key is hashed (to partition 0).
``consistent_random``
    ``crc32(key) % n``; an empty key gets a random partition. librdkafka's default.
``fnv1a`` / ``fnv1a_random``
    ``abs(fnv1a_32(key) as int32) % n``, Sarama's (the Go client's) default.

A ``None`` key gets a random partition under every one of them, as in
librdkafka (which sends keyless messages to a "sticky" partition, random
per batch); the ``_random`` variants differ from the plain ones only in
librdkafka's past releases and, for ``consistent_random``, for an empty key.

This runs once per produced message, so it is a tight loop over ints.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable

__all__ = [
    "DEFAULT_PARTITIONER",
    "PARTITIONERS",
    "Partitioner",
    "crc32",
    "fnv1a",
    "key_placement",
    "murmur2",
    "partition_for_key",
    "partitioner_named",
]

#: ``partitioner(key, num_partitions) -> partition``.
Partitioner = Callable[[bytes | None, int], int]

# Kafka's constants, written inline below as literals (LOAD_CONST beats a
# global lookup in this loop): seed 0x9747B28C, multiplier m = 0x5BD1E995, r = 24;
# every product is masked back to 32 bits, as Java int arithmetic wraps.

# One compiled little-endian "n unsigned 32-bit words" unpacker per word count.
_unpackers: dict[int, Callable[[bytes], tuple[int, ...]]] = {}


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash of ``data`` as Kafka's ``Utils.murmur2`` returns it.

    The result is signed (``-2**31 <= h < 2**31``), like the Java ``int``.
    """
    length = len(data)
    h = 0x9747B28C ^ length
    nwords = length >> 2
    if nwords:
        unpack = _unpackers.get(nwords)
        if unpack is None:
            unpack = _unpackers[nwords] = struct.Struct(f"<{nwords}I").unpack_from
        for word in unpack(data):
            k = (word * 0x5BD1E995) & 0xFFFFFFFF
            h = ((h * 0x5BD1E995) ^ ((k ^ (k >> 24)) * 0x5BD1E995)) & 0xFFFFFFFF
    tail = length & 3
    if tail:
        end = length - tail
        if tail == 3:
            h ^= data[end + 2] << 16 | data[end + 1] << 8 | data[end]
        elif tail == 2:
            h ^= data[end + 1] << 8 | data[end]
        else:
            h ^= data[end]
        h = (h * 0x5BD1E995) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 15
    return h - 0x100000000 if h & 0x80000000 else h


def partition_for_key(key: bytes | None, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``.

    ``(murmur2(key) & 0x7fffffff) % num_partitions``; a ``None`` key gets a
    random partition (librdkafka's ``murmur2_random``). An empty key is a key.

    Raises:
        ValueError: ``num_partitions`` is less than 1.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be at least 1, got {num_partitions}")
    if key is None:
        return random.randrange(num_partitions)
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


def crc32(data: bytes) -> int:
    """librdkafka's ``rd_crc32``: the standard (zlib, ISO-HDLC) CRC-32, unsigned."""
    return zlib.crc32(data)


def fnv1a(data: bytes) -> int:
    """librdkafka's ``rd_fnv1a``: 32-bit FNV-1a, made non-negative as Sarama does.

    The hash is taken as a signed 32-bit int and negated when negative
    (``-2**31`` stays ``2**31``, as the C negation wraps); the result is unsigned.
    """
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    if h & 0x80000000:
        h = (-h) & 0xFFFFFFFF
    return h


def _check(num_partitions: int) -> None:
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be at least 1, got {num_partitions}")


def partition_consistent(key: bytes | None, num_partitions: int) -> int:
    """librdkafka's ``consistent``: ``crc32(key) % n``; ``None`` is random."""
    _check(num_partitions)
    if key is None:
        return random.randrange(num_partitions)
    return zlib.crc32(key) % num_partitions


def partition_consistent_random(key: bytes | None, num_partitions: int) -> int:
    """librdkafka's default ``consistent_random``: ``crc32(key) % n``; no or empty key is random."""
    _check(num_partitions)
    if not key:
        return random.randrange(num_partitions)
    return zlib.crc32(key) % num_partitions


def partition_fnv1a(key: bytes | None, num_partitions: int) -> int:
    """librdkafka's ``fnv1a`` (Sarama's default hash partitioner); ``None`` is random."""
    _check(num_partitions)
    if key is None:
        return random.randrange(num_partitions)
    return fnv1a(key) % num_partitions


#: The default ``partitioner`` setting: the Java client's.
DEFAULT_PARTITIONER = "murmur2"

#: librdkafka's ``partitioner`` names (and ``crc32``, an alias of ``consistent``).
PARTITIONERS: dict[str, Partitioner] = {
    "murmur2": partition_for_key,
    "murmur2_random": partition_for_key,
    "consistent": partition_consistent,
    "crc32": partition_consistent,
    "consistent_random": partition_consistent_random,
    "fnv1a": partition_fnv1a,
    "fnv1a_random": partition_fnv1a,
}

#: The value of librdkafka's ``partitioner`` option for each name.
LIBRDKAFKA_NAMES: dict[str, str] = {
    # murmur2 is murmur2_random in librdkafka for None keys too (both
    # "sticky"); the explicit name keeps what the project always configured.
    "murmur2": "murmur2_random",
    "murmur2_random": "murmur2_random",
    "consistent": "consistent",
    "crc32": "consistent",
    "consistent_random": "consistent_random",
    "fnv1a": "fnv1a",
    "fnv1a_random": "fnv1a_random",
}


def key_placement(name: str) -> Callable[[bytes, int], int]:
    """Where a stored key lives under the partitioner ``name``: never at random.

    The same as :func:`partitioner_named` for every key a producer hashes;
    an empty key, which ``consistent_random`` sends to a random partition,
    is placed where ``consistent`` puts it (partition 0).

    Raises:
        ValueError: not one of :data:`PARTITIONERS`.
    """
    function = partitioner_named(name)
    return partition_consistent if function is partition_consistent_random else function


def partitioner_named(name: str) -> Partitioner:
    """The partition function of a ``partitioner`` setting value.

    Raises:
        ValueError: not one of :data:`PARTITIONERS`.
    """
    try:
        return PARTITIONERS[name]
    except KeyError:
        raise ValueError(
            f"unknown partitioner {name!r}: use one of {', '.join(sorted(PARTITIONERS))}"
        ) from None
