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

Both results are checked equal. No broker: confluent-kafka builds the messages.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE
from confluent_kafka import Message as RdMessage

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.micro_messages", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--messages", type=int, default=10_000, help="messages per round (10,000)")
    p.add_argument("--rounds", type=int, default=60, help="rounds per way (60)")
    args = p.parse_args(argv)
    raw = [
        RdMessage(
            topic="events",
            partition=i % 8,
            offset=i,
            key=f"k{i % 10_000}".encode(),
            value=b'{"user": "k123", "amount": 5}',
            timestamp=(1, 1_700_000_000_000 + i),
            headers=None,
        )
        for i in range(args.messages)
    ]
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
