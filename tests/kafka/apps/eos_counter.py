"""An exactly_once word count for the Kafka exactly-once tests.

Run as ``streamtrio run tests/kafka/apps/eos_counter.py --broker kafka://...``;
configured through the environment:

- ``EOS_APP_ID``: the app id (and consumer group);
- ``EOS_TOPIC``, ``EOS_OUT``, ``EOS_PARTITIONS``: the source and sink topics;
- ``EOS_DATADIR``: the data dir (the worker id, so the transactional id, lives there);
- ``EOS_DELAY`` (optional): seconds the agent sleeps per event.

For each word the agent adds one to ``counts`` and sends ``partition:offset``
of the input to the sink, all in the worker's transaction.
"""

import os

import trio

import streamtrio

app = streamtrio.App(
    os.environ["EOS_APP_ID"],
    processing_guarantee="exactly_once",
    store="lmdb://",
    datadir=os.environ["EOS_DATADIR"],
    lmdb_sync=False,
    web_enabled=False,
    commit_interval=0.3,
    broker_session_timeout=2.0,
    broker_heartbeat_interval=0.2,
    broker_request_timeout=15.0,
    shutdown_timeout=15.0,
    rebalance_drain_timeout=5.0,
)
partitions = int(os.environ["EOS_PARTITIONS"])
words = app.topic(os.environ["EOS_TOPIC"], key_type=str, value_type=str, partitions=partitions)
out = app.topic(os.environ["EOS_OUT"], key_type=str, value_type=str, partitions=partitions)
counts = app.Table("counts", default=int, key_type=str, value_type=int, partitions=partitions)
delay = float(os.environ.get("EOS_DELAY", "0"))


@app.agent(words)
async def count(stream: streamtrio.Stream[str]) -> None:
    async for event in stream.events():
        if delay:
            await trio.sleep(delay)
        counts[event.value] += 1
        out.send_soon(key=event.value, value=f"{event.message.partition}:{event.message.offset}")
