"""The raw ceiling: a confluent-kafka ``consume(10000)`` loop with ``json.loads`` and a dict update.

``--workload latency`` is the same loop measuring produce-to-loop latency at
a fixed rate (events from ``paced_producer.py``): the broker's share of the
latency streamtrio reports.

No framework: one thread, no commits beyond librdkafka's auto-commit, the
per-event work reduced to decoding the value and adding its amount to a dict
keyed by user. ``fetch.queue.backoff.ms=10`` as streamtrio uses it (on Tansu
it about doubles the rate; see ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

sys.path.insert(0, str(Path(__file__).parent))

from _protocol import Meter, parser, percentiles, report


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rate", type=int, default=20_000, help="events/s of the latency workload")
    args = p.parse_args()
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 200,
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.subscribe([args.topic])
    if args.workload == "latency":
        latency(consumer, args)
        return
    meter = Meter(args.events)
    sums: dict[str, int] = {}
    loads = json.loads
    error = None
    while meter.count < args.events:
        batch = consumer.consume(10000, 1.0)
        for m in batch:
            if m.error() is not None:
                error = str(m.error())
                continue
            value = loads(m.value())
            user = value["user"]
            sums[user] = sums.get(user, 0) + value["amount"]
            if meter.tick():
                break
    consumer.close()
    report(meter, sum(sums.values()), error=error)


def latency(consumer: Consumer, args: Any) -> None:
    while not consumer.assignment():
        consumer.poll(0.05)
    producer = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("paced_producer.py")),
            *("--bootstrap", args.bootstrap, "--topic", args.topic),
            *("--events", str(args.events), "--rate", str(args.rate)),
        ]
    )
    meter = Meter(args.events)
    delays: list[float] = []
    total = 0
    now = time.time
    while meter.count < args.events:
        for m in consumer.consume(10000, 0.05):
            if m.error() is not None:
                continue
            value = json.loads(m.value())
            delays.append(now() - value["ts"])
            total += value["amount"]
            meter.tick()
    producer.wait()
    consumer.close()
    report(meter, total, rate=args.rate, **percentiles(delays))


if __name__ == "__main__":
    main()
