"""Produces latency-workload events at a fixed rate, each stamped with its produce time.

Started by ``sys_streamtrio.py --workload latency`` once its partitions are
assigned, as a process of its own so that producing never competes with the
worker for the GIL. Every millisecond it produces the events that are due, so
the rate holds on average and bursts stay small.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).parent))

from workload import KEYS, amount_of


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--rate", type=int, required=True)
    args = p.parse_args()
    producer = Producer(
        {"bootstrap.servers": args.bootstrap, "linger.ms": 1, "partitioner": "murmur2_random"}
    )
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    began = time.perf_counter()
    i = 0
    while i < args.events:
        due = min(args.events, int((time.perf_counter() - began) * args.rate) + 1)
        while i < due:
            user = f"k{i % KEYS}"
            value = dumps({"user": user, "amount": amount_of(i), "ts": time.time()}).encode()
            try:
                producer.produce(args.topic, value, user.encode())
            except BufferError:
                producer.poll(0.01)
                continue
            i += 1
        producer.poll(0)
        time.sleep(0.001)
    producer.flush(60)


if __name__ == "__main__":
    main()
