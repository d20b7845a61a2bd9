"""A stream-table join against a real Kafka broker.

Customers are loaded into a table by one agent; orders keyed by customer are
joined (left) and the results produced to a topic, read back with a plain
consumer. A new machine (empty data dir) recovers the table from its
changelog before it joins more orders, so the join sees every customer.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import trio

import streamtrio

from ._util import lmdb_app, read_topic, wait_for

PARTITIONS = 2


def make_app(app_id: str, bootstrap: str, datadir: Path, **options: Any) -> Any:
    app = lmdb_app(app_id, bootstrap, datadir, commit_interval=0.3, **options)
    customers_topic = app.topic(f"{app_id}-customers", key_type=str, value_type=str, partitions=PARTITIONS)
    orders = app.topic(f"{app_id}-orders", key_type=str, value_type=int, partitions=PARTITIONS)
    enriched = app.topic(f"{app_id}-enriched", key_type=str, value_type=str, partitions=PARTITIONS)
    customers = app.Table("customers", key_type=str, value_type=str, partitions=PARTITIONS)
    counts = {"loaded": 0, "joined": 0}

    @app.agent(customers_topic)
    async def load(stream: streamtrio.Stream[str]) -> None:
        async for event in stream.events():
            customers[event.key] = event.value
            counts["loaded"] += 1

    @app.agent(orders)
    async def enrich(stream: streamtrio.Stream[int]) -> None:
        async for amount, name in stream.left_join(customers):
            current = streamtrio.current_event()
            assert current is not None
            enriched.send_soon(key=current.key, value=f"{amount}:{name}")
            counts["joined"] += 1

    return app, customers_topic, orders, enriched, counts


async def test_stream_table_join_and_a_new_machine(kafka_bootstrap: str, tmp_path: Path) -> None:
    app_id = f"join-{uuid.uuid4().hex[:8]}"
    names = {f"c{i}": f"name-{i}" for i in range(0, 20, 2)}

    app, customers_topic, orders, enriched, counts = make_app(app_id, kafka_bootstrap, tmp_path / "a")
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        async with app.open_client():
            for key, name in names.items():
                customers_topic.send_soon(key=key, value=name)
            await app.producer.flush()
        await wait_for(lambda: counts["loaded"] == len(names), timeout=60, what="the customers")
        async with app.open_client():
            for i in range(100):
                orders.send_soon(key=f"c{i % 20}", value=i)
            await app.producer.flush()
        await wait_for(lambda: counts["joined"] == 100, timeout=60, what="the first orders")
        worker.stop()

    app2, _, orders2, _, counts2 = make_app(app_id, kafka_bootstrap, tmp_path / "b", table_standby_replicas=0)
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app2)
        await app2.tables.wait_until_recovery_completed()
        async with app2.open_client():
            for i in range(100, 160):
                orders2.send_soon(key=f"c{i % 20}", value=i)
            await app2.producer.flush()
        await wait_for(lambda: counts2["joined"] == 60, timeout=60, what="the orders after the move")
        await trio.sleep(1.0)
        worker.stop()

    messages = await trio.to_thread.run_sync(
        read_topic, kafka_bootstrap, enriched.get_topic_name(), PARTITIONS
    )
    got = sorted(json.loads(m.value()) for m in messages)
    expected = sorted(f"{i}:{names.get(f'c{i % 20}')}" for i in range(160))
    assert got == expected
