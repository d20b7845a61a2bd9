"""The workload: topics, the pre-produced events, the changelog for the replay test.

Events are keyed by user (``k0`` .. ``k9999``) with values like
``{"user": "k123", "amount": 5}``. Event ``i`` has key ``k{i % keys}``,
amount ``i % 10 + 1`` and a timestamp spread evenly over ``SPAN_SECONDS``
of event time, so the windowed workload fills several 10-second windows.
"""

from __future__ import annotations

import json
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

# The windowed workload sees SPAN_SECONDS / 10 windows per key.
try:
    from ._protocol import SPAN_SECONDS
except ImportError:  # imported as a plain module beside paced_producer.py
    from _protocol import SPAN_SECONDS  # type: ignore[no-redef]

PARTITIONS = 8
KEYS = 10_000

__all__ = [
    "KEYS",
    "PARTITIONS",
    "amount_of",
    "create_topics",
    "expected_total",
    "produce_changelog",
    "produce_events",
]


def amount_of(i: int) -> int:
    return i % 10 + 1


def expected_total(events: int) -> int:
    """The sum of the amounts of events ``0 .. events - 1``."""
    full, rest = divmod(events, 10)
    return full * 55 + rest * (rest + 1) // 2


def create_topics(bootstrap: str, names: list[str], partitions: int = PARTITIONS) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # Explicit retention: Tansu describes no configs of a topic created
    # without any, and Quix Streams reads these two to set up its changelogs.
    config = {"retention.ms": "604800000", "retention.bytes": "-1"}
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1, config=config) for n in names]
    )
    for name, future in futures.items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create topic {name}: {exc}") from exc


def _producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            # The Java client's partitioner, as streamtrio's producer uses.
            "partitioner": "murmur2_random",
        }
    )


def _produce_all(producer: Producer, records: object) -> None:
    failures: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    for topic, key, value, extra in records:  # type: ignore[attr-defined]
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered, **extra)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(120)
    if remaining or failures:
        raise RuntimeError(f"producing failed: {remaining} undelivered, errors: {failures[:3]}")


def produce_events(bootstrap: str, topic: str, events: int, *, keys: int = KEYS) -> float:
    """Produce ``events`` workload events to ``topic``; returns the seconds it took."""
    began = time.perf_counter()
    base_ms = int(time.time() * 1000) - SPAN_SECONDS * 1000
    span_ms = SPAN_SECONDS * 1000

    def records() -> object:
        for i in range(events):
            user = f"k{i % keys}"
            value = json.dumps({"user": user, "amount": amount_of(i)}, separators=(",", ":")).encode()
            yield topic, user.encode(), value, {"timestamp": base_ms + i * span_ms // events}

    _produce_all(_producer(bootstrap), records())
    return time.perf_counter() - began


def produce_changelog(bootstrap: str, topic: str, records: int, *, keys: int = KEYS) -> int:
    """Write ``records`` changelog records of a ``default=int`` streamtrio table.

    Each record is the running sum of a key after one more event (what an
    eager changelog holds), keys and values msgpack-encoded, each key on the
    partition a producer puts it. Returns the sum of the final values.
    """
    import msgpack

    from streamtrio._partitioner import partition_for_key

    sums = [0] * keys
    partition_of = [partition_for_key(f"k{k}".encode(), PARTITIONS) for k in range(keys)]
    packed_keys = [msgpack.packb(f"k{k}") for k in range(keys)]

    def gen() -> object:
        for i in range(records):
            k = i % keys
            sums[k] += amount_of(i)
            yield topic, packed_keys[k], msgpack.packb(sums[k]), {"partition": partition_of[k]}

    _produce_all(_producer(bootstrap), gen())
    return sum(sums)
