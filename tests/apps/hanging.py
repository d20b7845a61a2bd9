"""An agent that never returns from its first event (awaiting forever): for the shutdown-deadline test."""

import trio

import streamtrio

app = streamtrio.App(
    "hanging", broker="memory://", store="memory://", web_enabled=False, shutdown_timeout=2.0
)
numbers = app.topic("numbers", value_type=int, partitions=1)


@app.agent(numbers)
async def stuck(stream: streamtrio.Stream[int]) -> None:
    async for _value in stream:
        print("stuck on the first event", flush=True)
        await trio.sleep_forever()


@app.task
async def feed() -> None:
    await numbers.send(value=1)
