"""A Faust-style app with faust.cli commands (option/argument, self.say)."""

import streamtrio as faust
from streamtrio.cli import argument, option

app = faust.App("faust-cli", broker="memory://", store="memory://", web_enabled=False)
greetings = app.topic("faust-greetings", partitions=1)


@app.command(
    argument("name"),
    option("--count", type=int, default=1, help="How many greetings."),
)
async def greet(self: faust.cli.AppCommand, name: str, count: int) -> None:
    """Send greetings and say where they landed."""
    for _ in range(count):
        md = await greetings.send(value={"hello": name})
        self.say(f"sent {name} to {md.topic}@{md.offset}")


@app.command()
async def hello(self: faust.cli.AppCommand) -> None:
    """A command with only self."""
    self.say("hello from", self.app.id)


if __name__ == "__main__":
    app.main()
