"""An RPC worker for the Kafka tests: replies with the square of each value.

The broker and app id come from the environment (STREAMTRIO_BROKER, SQUARES_APP_ID).
"""

import os
from typing import Any

import streamtrio

app = streamtrio.App(
    os.environ.get("SQUARES_APP_ID", "squares"),
    store="memory://",
    web_enabled=False,
    broker_session_timeout=2.0,
    broker_heartbeat_interval=0.2,
    commit_interval=0.2,
)
requests = app.topic(f"{app.id}-requests", partitions=4)


@app.agent(requests, concurrency=4)
async def square(stream: streamtrio.Stream[int]) -> Any:
    async for value in stream:
        yield {"square": value * value, "pid": os.getpid()}
