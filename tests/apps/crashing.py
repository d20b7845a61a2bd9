"""An app whose agent crashes on the value 5 (used by the CLI tests)."""

import streamtrio

app = streamtrio.App("crashing", broker="memory://", store="memory://", web_enabled=False)
numbers = app.topic("numbers", value_type=int, partitions=1)


@app.agent(numbers)
async def fragile(stream: streamtrio.Stream[int]) -> None:
    async for value in stream:
        print(f"processed {value}", flush=True)
        if value == 5:
            raise RuntimeError("five is not allowed")


@app.task
async def feed() -> None:
    for value in range(10):
        await numbers.send(value=value)
