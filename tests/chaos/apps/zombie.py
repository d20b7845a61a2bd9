"""The zombie scenario's app with a windowed table or a GlobalTable (see tests/chaos/test_zombie.py).

Configured through the environment: ``ZOMBIE_APP_ID``, ``ZOMBIE_TOPIC``,
``ZOMBIE_PARTITIONS``, ``ZOMBIE_KIND`` (``windowed``: ``counts`` is a tumbling
windowed table of one day, counted at the event's time; ``global``:
``counts`` is a GlobalTable), ``ZOMBIE_WEB_PORT``. The agent adds one to
``counts[key]`` per event.
"""

import os

import streamtrio

partitions = int(os.environ["ZOMBIE_PARTITIONS"])
kind = os.environ["ZOMBIE_KIND"]
app = streamtrio.App(
    os.environ["ZOMBIE_APP_ID"],
    store="memory://",
    web_enabled=True,
    web_port=int(os.environ["ZOMBIE_WEB_PORT"]),
    web_host="127.0.0.1",
    web_bind="127.0.0.1",
    commit_interval=0.3,
    broker_session_timeout=4.0,
    broker_heartbeat_interval=0.4,
    broker_request_timeout=15.0,
    shutdown_timeout=10.0,
    rebalance_drain_timeout=5.0,
    table_standby_replicas=0,
)
events = app.topic(
    os.environ["ZOMBIE_TOPIC"], key_type=str, value_type=bytes, value_serializer="raw", partitions=partitions
)
if kind == "global":
    counts = app.GlobalTable("counts", default=int, key_type=str, key_serializer="raw", partitions=partitions)
else:
    counts = app.Table(
        "counts", default=int, key_type=str, key_serializer="raw", partitions=partitions
    ).tumbling(86400)


@app.agent(events)
async def count(stream: streamtrio.Stream[bytes]) -> None:
    async for event in stream.events():
        counts[event.key] += 1
