"""``python -m benchmarks.micro_messages``: the Kafka consumer's copy of confluent's messages.

The consumer thread turns each message ``consume()`` returns into a
streamtrio :class:`~streamtrio.Message`. This times, per message, over
``--messages`` messages like the benchmark's (a key, a small JSON value, a
timestamp, no headers), the best and the median of ``--rounds`` alternating
rounds:

- ``per message``: one conversion call per message, which calls ``Message(...)``
  (the code before issue 18's second round, kept here for the comparison);
- ``one loop``: :func:`streamtrio._transports.kafka_consumer._to_messages`, one
  loop with no call per message.

Both results are checked equal. The messages are produced to the benchmark's
broker and fetched back once, before the rounds.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer

from streamtrio._transports.kafka_consumer import _to_messages
from streamtrio._types import Message


def _copy(m: Any) -> Message:
    ts_type, ts = m.timestamp()
    headers = m.headers()
    if headers is not None:
        headers = [(k, v if v is not None else b"") for k, v in headers]
    return Message(
        m.topic(),
        m.partition(),
        m.offset(),
        m.key(),
        m.value(),
        ts / 1000.0 if ts_type != TIMESTAMP_NOT_AVAILABLE else 0.0,
        headers,
    )


def per_message(raw: list[Any]) -> list[Message]:
    batch = []
    for m in raw:
        if m.error() is None:
            batch.append(_copy(m))
    return batch


def one_loop(raw: list[Any]) -> list[Message]:
    return _to_messages(raw)[0]


def fetched_messages(count: int) -> list[Any]:
    """``count`` messages like the benchmark's, as confluent's consumer returns them.

    confluent-kafka 2.12 refuses to build a ``Message`` in Python ("cannot create
    'cimpl.Message' instances"), so they are produced to a test broker (the
    benchmark's, see :func:`benchmarks.runner.bench_broker`) and fetched back.
    """
    from .runner import bench_broker
    from .workload import create_topics, produce_events

    with bench_broker() as (bootstrap, _):
        topic = f"micro-messages-{uuid.uuid4().hex[:6]}"
        create_topics(bootstrap, [topic])
        produce_events(bootstrap, topic, count)
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": topic, "auto.offset.reset": "earliest"}
        )
        try:
            consumer.subscribe([topic])
            raw: list[Any] = []
            deadline = time.monotonic() + 60
            while len(raw) < count:
                if time.monotonic() > deadline:
                    raise SystemExit(f"fetched {len(raw)} of {count} messages from {topic} in 60 s")
                raw += [m for m in consumer.consume(count, 1.0) if m.error() is None]
        finally:
            consumer.close()
    return raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.micro_messages", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--messages", type=int, default=10_000, help="messages per round (10,000)")
    p.add_argument("--rounds", type=int, default=60, help="rounds per way (60)")
    args = p.parse_args(argv)
    raw = fetched_messages(args.messages)
    ways: dict[str, Callable[[list[Any]], list[Message]]] = {"per message": per_message, "one loop": one_loop}
    assert per_message(raw) == one_loop(raw)
    times: dict[str, list[float]] = {name: [] for name in ways}
    gc.disable()  # the lists of results would trigger collections at random points
    try:
        for _ in range(args.rounds):
            for name, way in ways.items():
                started = time.perf_counter()
                way(raw)
                times[name].append((time.perf_counter() - started) / args.messages * 1e6)
    finally:
        gc.enable()
    for name, values in times.items():
        print(f"{name:12} best {min(values):.3f} µs, median {statistics.median(values):.3f} µs per message")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
