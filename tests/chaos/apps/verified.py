"""The chaos suite's verified workload (see tests/chaos/_verify.py).

Run as ``streamtrio run tests/chaos/apps/verified.py --broker kafka://...``;
configured through the environment:

- ``CHAOS_APP_ID``: the app id (and consumer group);
- ``CHAOS_SOURCE``, ``CHAOS_SINK``, ``CHAOS_PARTITIONS``: the topics;
- ``CHAOS_GUARANTEE``: ``at_least_once`` or ``exactly_once``;
- ``CHAOS_DATADIR``: this worker's data dir (LMDB, and the worker id);
- ``CHAOS_WEB_PORT`` (optional): serve the web on this port, else no web;
- ``CHAOS_SHUTDOWN_TIMEOUT``: the app's ``shutdown_timeout``;
- ``CHAOS_DELAY`` (optional): seconds the agent sleeps per event;
- ``CHAOS_STANDBYS`` (optional): ``table_standby_replicas`` (default 1);
- ``CHAOS_MAX_MAP_SIZE`` (optional): ``lmdb_max_map_size`` (and
  ``lmdb_map_size``, its 1 MiB minimum, when below 1 GiB);
- ``CHAOS_PAD`` (optional): also keep ``pads[key]``, a string of this many
  bytes (to fill a small LMDB map; the verifier ignores it);
- ``CHAOS_DECODE_ERROR``, ``CHAOS_ON_ERROR`` (optional): the app's
  ``value_decode_error`` and the agent's ``on_error``;
- ``CHAOS_HOLD_EXIT`` (optional): seconds an exit hook (``atexit``, run after
  the worker has stopped, as an app's own hooks are) holds the process, after
  writing ``holding the exit`` to stderr: a signal sent then lands in the
  process's tail for certain.

Values are JSON integers. A value that is not JSON (a *decode poison*) goes
to the ``value_decode_error`` policy; a negative one (an *agent poison*)
makes the agent raise before it writes anything, and its ``on_error``
policy applies.

For each event ``key -> value`` the agent adds one to ``counts[key]``, adds
the value to ``sums[key] = [last offset, sum]`` unless the event's offset is
at or below the last one (so processing an event again changes nothing), and
echoes ``"partition:offset:value"`` to the sink.
"""

import atexit
import os
import time

import trio

import streamtrio

web_port = os.environ.get("CHAOS_WEB_PORT", "")
max_map_size = int(os.environ.get("CHAOS_MAX_MAP_SIZE", str(1 << 40)))
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
    table_standby_replicas=int(os.environ.get("CHAOS_STANDBYS", "1")),
    lmdb_max_map_size=max_map_size,
    lmdb_map_size=min(max_map_size, 1 << 30),
    value_decode_error=os.environ.get("CHAOS_DECODE_ERROR", "raise"),
)
hold_exit = float(os.environ.get("CHAOS_HOLD_EXIT", "0"))
if hold_exit:

    def hold() -> None:
        os.write(2, b"holding the exit\n")
        time.sleep(hold_exit)

    atexit.register(hold)
partitions = int(os.environ["CHAOS_PARTITIONS"])
source = app.topic(
    os.environ["CHAOS_SOURCE"], key_type=str, value_type=int, value_serializer="json", partitions=partitions
)
sink = app.topic(
    os.environ["CHAOS_SINK"], key_type=str, value_type=str, value_serializer="raw", partitions=partitions
)
# raw keys, as the source topic's: the web routes a key to the worker holding its partition
counts = app.Table("counts", default=int, key_type=str, key_serializer="raw", partitions=partitions)
sums = app.Table("sums", default=lambda: [-1, 0], key_type=str, key_serializer="raw", partitions=partitions)
delay = float(os.environ.get("CHAOS_DELAY", "0"))
pad = int(os.environ.get("CHAOS_PAD", "0"))
pads = (
    app.Table("pads", default=str, key_type=str, key_serializer="raw", partitions=partitions) if pad else None
)


class Poison(Exception):
    """The agent's failure on a negative value."""


@app.agent(source, on_error=os.environ.get("CHAOS_ON_ERROR", "stop"))
async def count(stream: streamtrio.Stream[int]) -> None:
    async for event in stream.events():
        key, value, offset = event.key, event.value, event.message.offset
        if value < 0:
            raise Poison(f"poison value {value} at {event.message.partition}:{offset}")
        counts[key] += 1
        if pads is not None:
            pads[key] = f"{offset}".ljust(pad, ".")
        last, total = sums[key]
        if offset > last:
            sums[key] = [offset, total + value]
        sink.send_soon(key=key, value=f"{event.message.partition}:{offset}:{value}")
        if delay:
            await trio.sleep(delay)
