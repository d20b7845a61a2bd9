"""Failed and raising deliveries on the real broker (docs/worker.md, "acks and commits").

Both were invisible on memory://: the broker refusing a 2 MiB sink message
(MSG_SIZE_TOO_LARGE) was committed past in silence, and a delivery callback
that raised ended the whole trio run with TrioInternalError.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import streamtrio

from ._util import FAST_GROUP, committed_async, create_topic, produce, unique

BIG = 2 * 1024 * 1024


def kafka_app(app_id: str, bootstrap: str) -> streamtrio.App:
    return streamtrio.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        commit_interval=0.2,
        broker_request_timeout=15.0,
        shutdown_timeout=10.0,
        **FAST_GROUP,
    )


async def test_a_refused_sink_message_stops_the_worker_before_its_offset(kafka_bootstrap: str) -> None:
    app_id, source, out = unique("acct"), unique("acct-src"), unique("acct-out")
    create_topic(kafka_bootstrap, source, 1)
    create_topic(kafka_bootstrap, out, 1)
    app = kafka_app(app_id, kafka_bootstrap)
    src = app.topic(source, value_type=int, partitions=1)
    sink = app.topic(out, value_serializer="raw", partitions=1)

    @app.agent(src, sink=[sink])
    async def blow_up(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield b"x" * (BIG if value == 5 else 10)

    produce(kafka_bootstrap, source, [(None, str(i).encode()) for i in range(10)])
    with trio.fail_after(60):
        with pytest.raises(streamtrio.AgentError) as info:
            await streamtrio.serve(app)
    text = str(info.value)
    assert f"topic={source!r} partition=0 offset=5" in text
    assert "MSG_SIZE_TOO_LARGE" in text
    assert await committed_async(kafka_bootstrap, app_id, source, 1) == {0: 5}


async def test_a_raising_delivery_callback_fails_its_event_not_the_run(kafka_bootstrap: str) -> None:
    app_id, source, out = unique("acct"), unique("acct-src"), unique("acct-out")
    create_topic(kafka_bootstrap, source, 1)
    create_topic(kafka_bootstrap, out, 1)
    app = kafka_app(app_id, kafka_bootstrap)
    src = app.topic(source, value_type=int, partitions=1)
    sink = app.topic(out, value_type=int, partitions=1)

    def callback(fut: streamtrio.FutureMessage) -> None:
        raise KeyError("callback bug")

    @app.agent(src)
    async def sends(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            sink.send_soon(value=value, callback=callback if value == 4 else None)

    produce(kafka_bootstrap, source, [(None, str(i).encode()) for i in range(8)])
    with trio.fail_after(60):
        with pytest.raises(streamtrio.AgentError, match=r"offset=4 failed: 'callback bug'"):
            await streamtrio.serve(app)
    assert await committed_async(kafka_bootstrap, app_id, source, 1) == {0: 4}
