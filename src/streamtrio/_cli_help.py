"""Help pages that read like click's: ``Usage: streamtrio run [OPTIONS] APP``.

typer 0.29 writes a required argument as ``{APP}`` in the usage line and adds
its type guess (``<str>``, ``<int range>``, ``<path>``) beside every argument
and option. :class:`PlainCommand` (given as ``cls=`` to every command) writes
arguments by their metavar, optional ones in brackets, and options with the
metavar they declare (``--broker URL``), as click and Faust do.
"""

# No `from __future__ import annotations`: typer reads annotations at run time.

from typing import Any

from typer.core import TyperCommand

# typer 0.29 builds its commands on its own copy of click, so parameters are
# told apart by click's ``param_type_name``, not by isinstance.

__all__ = ["PlainCommand"]


def _argument_name(param: Any) -> str:
    return str(param.metavar or (param.name or "").upper())


class PlainCommand(TyperCommand):
    """A typer command whose help shows metavars, not typer's braces and type guesses."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _argument_name(param)
                if param.nargs != 1:
                    name += "..."
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments: list[tuple[str, str]] = []
        options: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((_argument_name(param), record[1]))
            elif param.param_type_name == "option":
                options.append((_option_names(param), record[1]))
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        if options:
            with formatter.section("Options"):
                formatter.write_dl(options)


def _option_names(param: Any) -> str:
    names = _join(param.opts)
    if param.secondary_opts:
        names += " / " + _join(param.secondary_opts)
    if not param.is_flag and not param.count:
        names += f" {param.metavar or _type_metavar(param)}"
    return names


def _join(opts: list[str]) -> str:
    """``-b, --broker``: short names first, as click writes them."""
    return ", ".join(sorted(opts, key=lambda opt: len(opt) - len(opt.lstrip("-"))))


def _type_metavar(param: Any) -> str:
    """A plain placeholder for an option declared without a metavar."""
    kind = str(getattr(param.type, "name", "")).lower()
    if kind.startswith(("integer", "float")):
        return "N"
    if kind in ("path", "file"):
        return "PATH"
    return "TEXT"
