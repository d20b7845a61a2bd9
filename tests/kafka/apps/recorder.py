"""A worker app for the Kafka worker tests: records every event it processes.

Run as ``streamtrio run tests/kafka/apps/recorder.py --broker kafka://...``;
configured through the environment:

- ``RECORDER_APP_ID``: the app id (and consumer group);
- ``RECORDER_TOPIC``, ``RECORDER_PARTITIONS``: the source topic;
- ``RECORDER_OUT``: a file the agent appends ``partition offset`` lines to,
  one per event, flushed before the event is acked (so a line exists for
  every event whose offset was ever committed);
- ``RECORDER_DELAY`` (optional): seconds the agent sleeps per event;
- ``RECORDER_CONCURRENCY`` (optional): the agent's concurrency.

The broker comes from ``--broker`` (or ``STREAMTRIO_BROKER``).
"""

import os

import trio

import streamtrio

app = streamtrio.App(
    os.environ["RECORDER_APP_ID"],
    store="memory://",
    web_enabled=False,
    commit_interval=0.3,
    broker_session_timeout=2.0,
    broker_heartbeat_interval=0.2,
    broker_request_timeout=15.0,
    shutdown_timeout=15.0,
    rebalance_drain_timeout=5.0,
)
events = app.topic(
    os.environ["RECORDER_TOPIC"],
    value_type=bytes,
    value_serializer="raw",
    partitions=int(os.environ["RECORDER_PARTITIONS"]),
)
delay = float(os.environ.get("RECORDER_DELAY", "0"))
concurrency = int(os.environ.get("RECORDER_CONCURRENCY", "1"))
# Line-buffered: each record reaches the file before the agent asks for the
# next event (its ack), so it survives a kill -9.
out = open(os.environ["RECORDER_OUT"], "a", buffering=1)  # noqa: SIM115 - lives as long as the process


@app.agent(events, concurrency=concurrency)
async def record(stream: streamtrio.Stream[bytes]) -> None:
    async for event in stream.events():
        if delay:
            await trio.sleep(delay)
        out.write(f"{event.message.partition} {event.message.offset}\n")
