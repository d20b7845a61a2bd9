"""An agent that blocks the trio loop (time.sleep) on its first event: for the second-signal test."""

import sys
import time

import streamtrio

app = streamtrio.App("blocking", broker="memory://", store="memory://", web_enabled=False)
numbers = app.topic("numbers", value_type=int, partitions=1)


@app.agent(numbers)
async def stuck(stream: streamtrio.Stream[int]) -> None:
    async for _value in stream:
        print("blocking the loop", flush=True)
        time.sleep(60)  # noqa: ASYNC251 - the point: user code that blocks the loop


@app.task
async def feed() -> None:
    await numbers.send(value=1)
    sys.stdout.flush()
