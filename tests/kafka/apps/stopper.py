"""A worker app for the shutdown-deadline tests: counts keys into a table, slowly.

Run as ``streamtrio run tests/kafka/apps/stopper.py --broker kafka://...``;
configured through the environment:

- ``STOPPER_APP_ID``, ``STOPPER_TOPIC``, ``STOPPER_PARTITIONS``: the app id
  (and group) and the source topic;
- ``STOPPER_OUT``: a file the agent appends ``partition offset`` lines to;
- ``STOPPER_MODE``: ``count`` (2 ms per event) or ``hang`` (the agent never
  returns from its first event);
- ``STOPPER_SHUTDOWN_TIMEOUT``: the app's ``shutdown_timeout``;
- ``STOPPER_STANDBYS`` (optional): the app's ``table_standby_replicas``;
- ``STOPPER_GUARANTEE`` (optional): the app's ``processing_guarantee``.
"""

import os

import trio

import streamtrio

app = streamtrio.App(
    os.environ["STOPPER_APP_ID"],
    store="memory://",
    web_enabled=False,
    commit_interval=0.3,
    broker_session_timeout=6.0,
    broker_heartbeat_interval=0.5,
    broker_request_timeout=15.0,
    shutdown_timeout=float(os.environ["STOPPER_SHUTDOWN_TIMEOUT"]),
    rebalance_drain_timeout=5.0,
    table_standby_replicas=int(os.environ.get("STOPPER_STANDBYS", "0")),
    processing_guarantee=os.environ.get("STOPPER_GUARANTEE", "at_least_once"),
)
events = app.topic(
    os.environ["STOPPER_TOPIC"],
    key_type=str,
    value_type=bytes,
    value_serializer="raw",
    partitions=int(os.environ["STOPPER_PARTITIONS"]),
)
counts = app.Table("counts", default=int, partitions=int(os.environ["STOPPER_PARTITIONS"]))
hang = os.environ["STOPPER_MODE"] == "hang"
out = open(os.environ["STOPPER_OUT"], "a", buffering=1)  # noqa: SIM115 - lives as long as the process


@app.agent(events)
async def count(stream: streamtrio.Stream[bytes]) -> None:
    async for event in stream.events():
        counts[event.key] += 1
        out.write(f"{event.message.partition} {event.message.offset}\n")
        if hang:
            await trio.sleep_forever()
        await trio.sleep(0.002)
