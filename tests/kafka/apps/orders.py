"""A worker app for the Kafka CLI tests: counts orders and prints each one.

Everything comes from the environment, as a deployment would give it:
``STREAMTRIO_BROKER`` (the ``send`` and ``topics`` commands take no
``--broker``), ``STREAMTRIO_COMMIT_INTERVAL``, ``STREAMTRIO_BROKER_REQUEST_TIMEOUT``
and ``ORDERS_APP_ID`` (the app id; its topic is ``<app id>-orders``).
"""

import os

import streamtrio

app = streamtrio.App(
    os.environ.get("ORDERS_APP_ID", "orders-app"),
    store="memory://",
    web_enabled=False,
    broker_session_timeout=2.0,
    broker_heartbeat_interval=0.2,
    shutdown_timeout=15.0,
)


class Order(streamtrio.Record):
    item: str
    amount: int


orders = app.topic(f"{app.id}-orders", key_type=str, value_type=Order, partitions=4)


@app.agent(orders)
async def count(stream: streamtrio.Stream[Order]) -> None:
    processed = 0
    async for event in stream.events():
        processed += 1
        print(
            f"processed {processed}: {event.key} {event.value} at "
            f"{event.message.topic}[{event.message.partition}]@{event.message.offset}",
            flush=True,
        )
