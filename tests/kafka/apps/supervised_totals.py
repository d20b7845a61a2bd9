"""Totals per key, exactly once, for ``streamtrio run --workers 2`` (tests/kafka/test_supervisor_kafka.py).

Configured through the environment: ``TOTALS_APP_ID`` (app id, group, topic
``<id>-amounts``), ``TOTALS_DATADIR`` (each worker process uses
``worker-<i>`` below it: its worker id, so its transactional id, lives there)
and ``TOTALS_WEB_PORT`` (worker ``i`` serves on it plus ``i``).
"""

import os

import streamtrio

app = streamtrio.App(
    os.environ["TOTALS_APP_ID"],
    processing_guarantee="exactly_once",
    store="lmdb://",
    datadir=os.environ["TOTALS_DATADIR"],
    lmdb_sync=False,
    web_bind="127.0.0.1",
    web_host="127.0.0.1",
    web_port=int(os.environ["TOTALS_WEB_PORT"]),
    commit_interval=0.3,
    broker_session_timeout=2.0,
    broker_heartbeat_interval=0.2,
    broker_request_timeout=15.0,
    shutdown_timeout=10.0,
    rebalance_drain_timeout=5.0,
)
amounts = app.topic(f"{app.id}-amounts", key_type=str, value_type=int, partitions=4)
totals = app.Table("totals", key_type=str, value_type=int, default=int, partitions=4, key_serializer="raw")


@app.agent(amounts)
async def add(stream: streamtrio.Stream[int]) -> None:
    async for event in stream.events():
        totals[event.key] += event.value
