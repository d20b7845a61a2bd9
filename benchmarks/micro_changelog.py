"""``python -m benchmarks.micro_changelog``: a table's changelog at a commit, record by record or in batches.

What a commit with every key new hands the producer: one layer of
``--keys`` distinct keys per partition of an 8-partition topic (the table
manager's ``prepare_commit``), then a flush. Two ways, alternating round by
round on one producer:

- ``per-record``: one ``send_nowait`` per record with the layer's delivery
  callback (``Layer.delivered``: one call per record);
- ``batch``: one ``send_batch_nowait`` per layer with one callback per layer
  (called once, with the count, the highest offset and the first error).

Reported per record, as the median over the rounds: the process's CPU time
(``time.process_time()``: every thread, librdkafka's included) and the wall
time, from the first send to the end of the flush. Every round checks that
each layer was reported complete, without an error, with an offset.

The broker is the test suite's (``STREAMTRIO_TEST_BROKER`` names one you run;
else Apache Kafka or Tansu as for the tests; ``--memory``: memory://).
``--transactional`` runs each round in a transaction (``exactly_once``'s
producer), committed after the flush.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import trio

from streamtrio._settings import Settings
from streamtrio._tables.table import Layer
from streamtrio._transports.base import Producer, Transport
from streamtrio._transports.kafka import KafkaTransport
from streamtrio._transports.memory import MemoryTransport
from streamtrio._types import TopicSpec

PARTITIONS = 8


def layers(keys: int, round_no: int) -> list[Layer]:
    out = []
    for p in range(PARTITIONS):
        data: dict[bytes, tuple[Any, Any, bytes | None]] = {}
        for i in range(keys):
            kbytes = f"r{round_no}-p{p}-k{i}".encode()
            data[kbytes] = (kbytes, i, b"\x92\xcd\x04\xd2\x05")
        layer = Layer()
        layer.data = data
        out.append(layer)
    return out


def per_record(producer: Producer, topic: str, parts: list[Layer]) -> None:
    send = producer.send_nowait
    for number, layer in enumerate(parts):
        delivered = layer.delivered
        layer.outstanding += len(layer.data)
        for kbytes, entry in layer.data.items():
            send(topic, kbytes, entry[2], partition=number, on_delivery=delivered)


def batched(producer: Producer, topic: str, parts: list[Layer]) -> None:
    for number, layer in enumerate(parts):
        layer.outstanding += len(layer.data)
        records = [(kbytes, entry[2]) for kbytes, entry in layer.data.items()]
        producer.send_batch_nowait(topic, number, records, on_delivery=layer.delivered_batch)


MODES: dict[str, Callable[[Producer, str, list[Layer]], None]] = {"per-record": per_record, "batch": batched}


async def measure(url: str, keys: int, rounds: int, transactional: bool) -> dict[str, list[float]]:
    settings = Settings("micro-changelog", broker=url)
    transport: Transport = (
        MemoryTransport(url, settings) if url.startswith("memory://") else KafkaTransport(url, settings)
    )
    topic = f"micro-changelog-{uuid.uuid4().hex[:8]}"
    await transport.create_topics([TopicSpec(topic, PARTITIONS)])
    results: dict[str, list[float]] = {f"{m} {w}": [] for m in MODES for w in ("cpu", "wall")}
    txn_id = f"micro-{uuid.uuid4().hex[:8]}" if transactional else None
    async with transport.open_producer(transactional_id=txn_id) as producer:
        for round_no in range(rounds + 1):  # round 0 warms up
            for name, run in MODES.items() if round_no % 2 else reversed(MODES.items()):
                parts = layers(keys, round_no * 2 + (name == "batch"))
                cpu, wall = time.process_time(), time.perf_counter()
                run(producer, topic, parts)
                await producer.flush()
                if transactional:
                    await producer.commit_transaction()
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                for layer in parts:
                    assert layer.outstanding == 0 and layer.error is None and layer.offset >= 0, name
                if round_no:
                    records = keys * PARTITIONS
                    results[f"{name} cpu"].append(cpu / records * 1e6)
                    results[f"{name} wall"].append(wall / records * 1e6)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.micro_changelog", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--keys", type=int, default=5000, help="distinct keys per partition per round (5,000)")
    p.add_argument("--rounds", type=int, default=10, help="measured rounds per mode (10)")
    p.add_argument("--transactional", action="store_true", help="each round in a transaction")
    p.add_argument("--memory", action="store_true", help="on memory:// instead of a broker")
    args = p.parse_args(argv)
    from streamtrio.testing._broker import start_test_broker

    if args.memory:
        results = trio.run(measure, "memory://", args.keys, args.rounds, args.transactional)
    else:
        with start_test_broker() as bootstrap:
            results = trio.run(measure, f"kafka://{bootstrap}", args.keys, args.rounds, args.transactional)
    print(
        f"{args.keys * PARTITIONS:,} records per round, {args.rounds} rounds, median (min-max), µs per record"
    )
    for name, values in results.items():
        print(f"  {name:16} {statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
