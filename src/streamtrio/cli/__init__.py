"""Faust's ``faust.cli`` names for app commands: ``option``, ``argument``, ``AppCommand``.

::

    from streamtrio.cli import argument, option

    @app.command(argument("name"), option("--count", type=int, default=1))
    async def greet(self, name: str, count: int) -> None:
        self.say(f"hello {name}" * count)
"""

from .._cli import CommandContext, argument, option

AppCommand = CommandContext

__all__ = ["AppCommand", "CommandContext", "argument", "option"]
