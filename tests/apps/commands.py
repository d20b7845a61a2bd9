"""An app with a user command (used by the CLI tests)."""

import streamtrio

app = streamtrio.App("commands", broker="memory://", store="memory://", web_enabled=False)
greetings = app.topic("greetings", partitions=2)


@app.command()
async def greet() -> None:
    """Send a greeting and print where it landed."""
    md = await greetings.send(key="who", value={"hello": "world"})
    print(f"sent to {md.topic}[{md.partition}]@{md.offset}")


if __name__ == "__main__":
    app.main()
