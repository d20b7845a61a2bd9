"""Kafka's default key partitioner: murmur2, exactly as the Java client computes it.

A keyed message must land on the same partition whichever client produced it
(the Java producer, librdkafka with ``partitioner=murmur2_random``, or the
``memory://`` transport), otherwise co-partitioned topics and tables disagree
about where a key lives. :func:`partition_for_key` is librdkafka's
``murmur2_random``: murmur2 of the key for a key, a random partition for no key.

This runs once per produced message, so it is a tight loop over ints.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

__all__ = ["murmur2", "partition_for_key"]

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
