"""The chaos suite's verified workload (see tests/chaos/_verify.py).

Run as ``streamtrio run tests/chaos/apps/verified.py --broker kafka://...``;
configured through the environment:

- ``CHAOS_APP_ID``: the app id (and consumer group);
- ``CHAOS_SOURCE``, ``CHAOS_SINK``, ``CHAOS_PARTITIONS``: the topics;
- ``CHAOS_GUARANTEE``: ``at_least_once`` or ``exactly_once``;
- ``CHAOS_DATADIR``: this worker's data dir (LMDB, and the worker id);
- ``CHAOS_WEB_PORT`` (optional): serve the web on this port, else no web;
- ``CHAOS_SHUTDOWN_TIMEOUT``: the app's ``shutdown_timeout``;
- ``CHAOS_DELAY`` (optional): seconds the agent sleeps per event.

For each event ``key -> value`` the agent adds one to ``counts[key]``, adds
the value to ``sums[key] = [last offset, sum]`` unless the event's offset is
at or below the last one (so processing an event again changes nothing), and
echoes ``"partition:offset:value"`` to the sink.
"""

import os

import trio

import streamtrio

web_port = os.environ.get("CHAOS_WEB_PORT", "")
app = streamtrio.App(
    os.environ["CHAOS_APP_ID"],
    processing_guarantee=os.environ["CHAOS_GUARANTEE"],
    store="lmdb://",
    datadir=os.environ["CHAOS_DATADIR"],
    lmdb_sync=False,
    web_enabled=bool(web_port),
    web_port=int(web_port or 0),
    web_host="127.0.0.1",
    web_bind="127.0.0.1",
    commit_interval=0.5,
    broker_session_timeout=4.0,
    broker_heartbeat_interval=0.4,
    broker_request_timeout=15.0,
    shutdown_timeout=float(os.environ["CHAOS_SHUTDOWN_TIMEOUT"]),
    rebalance_drain_timeout=3.0,
)
partitions = int(os.environ["CHAOS_PARTITIONS"])
source = app.topic(
    os.environ["CHAOS_SOURCE"], key_type=str, value_type=bytes, value_serializer="raw", partitions=partitions
)
sink = app.topic(
    os.environ["CHAOS_SINK"], key_type=str, value_type=str, value_serializer="raw", partitions=partitions
)
# raw keys, as the source topic's: the web routes a key to the worker holding its partition
counts = app.Table("counts", default=int, key_type=str, key_serializer="raw", partitions=partitions)
sums = app.Table("sums", default=lambda: [-1, 0], key_type=str, key_serializer="raw", partitions=partitions)
delay = float(os.environ.get("CHAOS_DELAY", "0"))


@app.agent(source)
async def count(stream: streamtrio.Stream[bytes]) -> None:
    async for event in stream.events():
        key, value, offset = event.key, int(event.value), event.message.offset
        counts[key] += 1
        last, total = sums[key]
        if offset > last:
            sums[key] = [offset, total + value]
        sink.send_soon(key=key, value=f"{event.message.partition}:{offset}:{value}")
        if delay:
            await trio.sleep(delay)
