"""The ``streamtrio`` command line (typer): run, send, topics, agents, tables.

``streamtrio COMMAND APP ...`` loads the app from ``path/to/file.py[:NAME]``
or ``package.module[:NAME]``; ``app.main()`` gives the same commands with the
app already chosen (``python myapp.py run``), plus the app's own
``@app.command`` sub-commands.
"""

# No `from __future__ import annotations`: typer reads these annotations at run time.

import functools
import importlib
import importlib.util
import inspect
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import trio
import typer

from ._app import App
from ._cli_help import PlainCommand
from ._devbroker import dev_cli
from ._exceptions import AppLoadError, ConfigurationError, StreamtrioError
from ._run import EXIT_ERROR, run_beside
from ._supervisor import (
    OnExit,
    check_can_span,
    child_overrides,
    parse_workers,
    stop_with_parent,
    supervise,
    supervised,
)

__all__ = ["CommandContext", "argument", "build_cli", "build_click", "load_app", "main", "option"]

log = logging.getLogger(__name__)

EXIT_USAGE = 2


def option(*param_decls: str, **attrs: Any) -> Callable[[Any], Any]:
    """A command-line option of an ``@app.command`` (Faust's ``faust.cli.option``: click's)."""
    import click

    return click.option(*param_decls, **attrs)


def argument(*param_decls: str, **attrs: Any) -> Callable[[Any], Any]:
    """A positional argument of an ``@app.command`` (Faust's ``faust.cli.argument``: click's)."""
    import click

    return click.argument(*param_decls, **attrs)


AppSpec = Annotated[
    str, typer.Argument(metavar="APP", help="The app: path/to/file.py[:NAME] or package.module[:NAME].")
]


def load_app(spec: str) -> App:
    """Import the module named by ``spec`` and return its App.

    Raises:
        AppLoadError: the file or module is missing, fails to import, or has
            no (or several) App objects and none was named.
    """
    target, _, attr = spec.partition(":")
    if not target:
        raise AppLoadError(f"app {spec!r}: expected path/to/file.py[:NAME] or package.module[:NAME]")
    path = Path(target)
    try:
        if target.endswith(".py") or path.is_file() or "/" in target:
            if not path.is_file():
                raise AppLoadError(f"app {spec!r}: no such file {str(path)!r}")
            name = path.stem
            sys.path.insert(0, str(path.resolve().parent))
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise AppLoadError(f"app {spec!r}: cannot load {str(path)!r} as a Python module")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except AppLoadError:
        raise
    except ModuleNotFoundError as exc:
        raise AppLoadError(f"app {spec!r}: cannot import {target!r}: {exc}") from exc
    except Exception as exc:
        raise AppLoadError(f"app {spec!r}: importing {target!r} raised {type(exc).__name__}: {exc}") from exc
    if attr:
        if not hasattr(module, attr):
            found = _apps_in(module)
            hint = f" (it has: {', '.join(found)})" if found else " (it defines no App)"
            raise AppLoadError(f"app {spec!r}: {target!r} has no attribute {attr!r}{hint}")
        obj = getattr(module, attr)
        if not isinstance(obj, App):
            raise AppLoadError(f"app {spec!r}: {attr!r} is a {type(obj).__name__}, not a streamtrio.App")
        return obj
    found = _apps_in(module)
    if not found:
        raise AppLoadError(f"app {spec!r}: {target!r} defines no streamtrio.App")
    if len(found) > 1:
        if "app" in found:
            return module.app  # type: ignore[no-any-return]
        raise AppLoadError(
            f"app {spec!r}: {target!r} defines several apps ({', '.join(found)}); name one with :NAME"
        )
    return getattr(module, found[0])  # type: ignore[no-any-return]


def _apps_in(module: Any) -> list[str]:
    return [name for name, value in vars(module).items() if isinstance(value, App)]


def _setup_logging(level: str, console: Any = None, place: tuple[int, int] | None = None) -> None:
    """Log to standard error (through ``console``, a rich Console showing live progress, if given);
    a worker process of a supervisor (``place``: index, count) names itself on each line."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigurationError(f"--loglevel: unknown level {level!r} (debug, info, warning, error)")
    fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    if place is not None:
        fmt = f"%(asctime)s %(levelname)-7s [worker-{place[0]}] %(name)s: %(message)s"
    if console is None:
        logging.basicConfig(level=numeric, format=fmt, stream=sys.stderr, force=True)
        return
    from ._progress import ConsoleLogHandler

    handler = ConsoleLogHandler(console)
    handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=numeric, handlers=[handler], force=True)


# -- commands (each takes the App first; build_cli binds or loads it) ------------


def run_command(
    app: App,
    broker: Annotated[
        str | None,
        typer.Option("--broker", "-b", metavar="URL", help="Broker URL (kafka://host:port or memory://)."),
    ] = None,
    loglevel: Annotated[
        str, typer.Option("--loglevel", "-l", metavar="LEVEL", help="Log level: debug, info, warning, error.")
    ] = "info",
    datadir: Annotated[
        str | None, typer.Option("--datadir", metavar="DIR", help="Worker data directory.")
    ] = None,
    web_port: Annotated[
        int | None, typer.Option("--web-port", "-p", metavar="PORT", help="Web server port.")
    ] = None,
    web_host: Annotated[
        str | None,
        typer.Option(
            "--web-host", "-h", metavar="HOST", help="Host name other workers use to reach this one."
        ),
    ] = None,
    without_web: Annotated[bool, typer.Option("--without-web", help="Serve no web views.")] = False,
    no_progress: Annotated[
        bool,
        typer.Option(
            "--no-progress", help="No live progress display in a terminal (plain log lines instead)."
        ),
    ] = False,
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            "-w",
            metavar="N",
            help="Worker processes to run under one supervisor (auto: one per core).",
        ),
    ] = "1",
    on_worker_exit: Annotated[
        str,
        typer.Option(
            "--on-worker-exit",
            metavar="POLICY",
            help="With --workers: restart (with backoff) a worker process that exits, or stop all.",
        ),
    ] = "restart",
) -> None:
    """Start a worker: consume, run agents, commit. Ctrl-C stops it gracefully."""
    from ._progress import StartupProgress

    try:
        count = parse_workers(workers)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--workers'") from None
    if on_worker_exit not in ("restart", "stop"):
        raise typer.BadParameter(
            f"expected restart or stop, got {on_worker_exit!r}", param_hint="'--on-worker-exit'"
        )
    place = supervised()
    if place is not None:
        count = 1  # a worker process of a supervisor: never a supervisor itself
    progress = StartupProgress(app, live=False if no_progress or place is not None or count > 1 else None)
    _setup_logging(loglevel, progress.console if progress.live else None, place)
    overrides: dict[str, Any] = {}
    if broker is not None:
        overrides["broker"] = broker
    if datadir is not None:
        overrides["datadir"] = datadir
    if web_port is not None:
        overrides["web_port"] = web_port
    if web_host is not None:
        overrides["web_host"] = web_host
    if without_web:
        overrides["web_enabled"] = False
    if overrides:
        app.conf.update(overrides, source="command line")
        app._transport_obj = None
    if count > 1:
        check_can_span(app.conf, count)
        policy: OnExit = "stop" if on_worker_exit == "stop" else "restart"
        raise typer.Exit(supervise(app.conf, app.id, count, policy))
    if place is not None:
        index, of = place
        app.conf.update(child_overrides(app.conf, index), source=f"worker process {index} of {of}")
        app._transport_obj = None
        stop_with_parent()
    raise typer.Exit(run_beside(app, progress.serve, end_process=True))


def send_command(
    app: App,
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="Topic name.")],
    value: Annotated[
        str | None,
        typer.Argument(metavar="VALUE", help="The value (JSON when the topic's values are JSON)."),
    ] = None,
    value_opt: Annotated[
        str | None,
        typer.Option("--value", "-v", metavar="VALUE", help="The value, as an option instead of VALUE."),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", "-k", metavar="KEY", help="The key (JSON when the topic's keys are JSON)."),
    ] = None,
    partition: Annotated[int | None, typer.Option(metavar="N", help="Partition (default: by key).")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", metavar="PATH", help="Send one message per non-empty line of this file."
        ),
    ] = None,
    count: Annotated[
        int, typer.Option("--count", "-n", min=1, metavar="N", help="Send the message(s) this many times.")
    ] = 1,
    raw: Annotated[
        bool, typer.Option("--raw", help="Send the key and value text as bytes, without the topic's schema.")
    ] = False,
    topic_not_in_app: Annotated[
        bool,
        typer.Option("--topic-not-in-app", help="Send to a topic the app does not declare (as raw bytes)."),
    ] = False,
) -> None:
    """Send messages encoded with the topic's schema.

    Prints where each message landed. What a worker would refuse (not JSON, a Record with a missing field, a
    value its codec cannot read) is refused before anything is sent.
    """
    from ._cli_send import Refused, declared_topic, encode_messages, raw_topic

    declared = declared_topic(app, topic)
    if declared is None and not topic_not_in_app:
        names = sorted({n for t in app._declared_topics() if not t.internal for n in t.topics})
        raise Refused(
            f"app {app.id!r} declares no topic {topic!r} (its topics: {', '.join(names) or 'none'}); "
            "pass --topic-not-in-app to send raw bytes to it anyway"
        )
    given = [v for v in (value, value_opt) if v is not None]
    if len(given) > 1:
        raise Refused("give the value once: as VALUE or as --value, not both")
    values: list[str | None]
    if file is not None:
        if given:
            raise Refused("give the values with --file or on the command line, not both")
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise Refused(f"--file {str(file)!r}: {exc.strerror or exc}") from exc
        values = [line for line in lines if line.strip()]
        if not values:
            raise Refused(f"--file {str(file)!r} has no message (every line is empty)")
    else:
        values = [given[0] if given else None]
    messages = encode_messages(declared, topic, key=key, values=values, raw=raw) * count
    if app.conf.broker.startswith("memory://"):
        typer.echo(
            "warning: memory:// lives inside one process; these messages end with this command",
            err=True,
        )
    partitions = declared.partitions if declared is not None else None
    target = raw_topic(app, topic, partitions)

    async def go() -> list[dict[str, Any]]:
        landed = []
        async with app.open_client():
            for message in messages:
                md = await target.send(key=message.key, value=message.value, partition=partition)
                landed.append(
                    {
                        "topic": md.topic,
                        "partition": md.partition,
                        "offset": md.offset,
                        "timestamp": md.timestamp,
                    }
                )
        return landed

    for where in trio.run(go):
        typer.echo(json.dumps(where))


def topics_command(app: App) -> None:
    """List the app's topics with their partitions."""
    sources = {n for a in app.agents.values() for n in getattr(a.channel, "topics", ())}
    for topic in app._declared_topics():
        for name in topic.topics:
            spec = topic.spec(name)
            role = "source" if name in sources else ("internal" if topic.internal else "topic")
            typer.echo(f"{name}\t{_partitions(spec.partitions)}\t{role}")


def _partitions(count: int) -> str:
    return f"{count} partition" if count == 1 else f"{count} partitions"


def agents_command(app: App) -> None:
    """List the app's agents."""
    for agent in app.agents.values():
        info = agent.info()
        sinks = ", ".join(info["sinks"]) or "-"
        typer.echo(f"{info['name']}\t<- {info['channel']}\tconcurrency {info['concurrency']}\tsinks {sinks}")


def tables_command(app: App) -> None:
    """List the app's tables with their changelog topics and partitions."""
    if not app.tables:
        typer.echo(f"app {app.id!r} has no tables", err=True)
        return
    for table in app.tables.values():
        info = table.info()
        line = f"{info['name']}\t{info['type']}\t-> {info['changelog_topic']}"
        line += f"\t{_partitions(info['partitions'])}"
        if info["help"]:
            line += f"\t{info['help']}"
        typer.echo(line)


#: (name, command, help; ``None``: the docstring). ``worker`` is ``run`` under Faust's
#: name, as Faust apps start: ``python app.py worker -l info``.
_COMMANDS: list[tuple[str, Callable[..., None], str | None]] = [
    ("run", run_command, None),
    ("worker", run_command, "Start a worker: `run` under Faust's name (`python app.py worker`)."),
    ("send", send_command, None),
    ("topics", topics_command, None),
    ("agents", agents_command, None),
    ("tables", tables_command, None),
]


def _bind(fun: Callable[..., None], bound: App | None) -> Callable[..., None]:
    """Give ``fun`` (whose first parameter is the App) a CLI signature."""
    sig = inspect.signature(fun)
    rest = list(sig.parameters.values())[1:]

    if bound is not None:

        def wrapper(**kwargs: Any) -> None:
            _guarded(lambda: fun(bound, **kwargs))

        wrapper.__signature__ = sig.replace(parameters=rest)  # type: ignore[attr-defined]
    else:

        def wrapper(**kwargs: Any) -> None:
            spec = kwargs.pop("app")
            _guarded(lambda: fun(load_app(spec), **kwargs))

        app_param = inspect.Parameter("app", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=AppSpec)
        wrapper.__signature__ = sig.replace(parameters=[app_param, *rest])  # type: ignore[attr-defined]
    wrapper.__doc__ = fun.__doc__
    wrapper.__name__ = fun.__name__
    return wrapper


def _guarded(call: Callable[[], None]) -> None:
    try:
        call()
    except (AppLoadError, ConfigurationError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except StreamtrioError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None


class CommandContext:
    """The ``self`` of a Faust-style command (``async def cmd(self, ...)``).

    Attributes:
        app: the app.
    """

    def __init__(self, app: App) -> None:
        self.app = app

    def say(self, *args: Any, sep: str = " ", end: str = "\n", err: bool = False) -> None:
        """Print to standard output (Faust's ``self.say``)."""
        typer.echo(sep.join(str(a) for a in args), nl=False, err=err)
        typer.echo(end, nl=False, err=err)

    def carp(self, message: Any) -> None:
        """Print to standard error."""
        typer.echo(str(message), err=True)

    def dumps(self, obj: Any) -> str:
        return json.dumps(obj, default=str)


def _takes_self(fun: Callable[..., Any]) -> bool:
    params = list(inspect.signature(fun).parameters)
    return bool(params) and params[0] == "self"


def _user_command(app: App, fun: Callable[..., Any]) -> Callable[..., Any]:
    with_self = _takes_self(fun)

    def call(*args: Any, **kwargs: Any) -> Any:
        if with_self:
            args = (CommandContext(app), *args)
        if not inspect.iscoroutinefunction(fun):
            return fun(*args, **kwargs)

        async def go() -> Any:
            async with app.open_client():
                return await fun(*args, **kwargs)

        return trio.run(go)

    wrapper = functools.wraps(fun)(call)
    if with_self:
        sig = inspect.signature(fun)
        wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=list(sig.parameters.values())[1:]
        )
    return wrapper


def _click_command(app: App, fun: Callable[..., Any], options: dict[str, Any]) -> Any:
    """A click command for ``@app.command(option(...), argument(...))`` (Faust's faust.cli style)."""
    import click

    run = _user_command(app, fun)

    def callback(**kwargs: Any) -> Any:
        return run(**kwargs)

    # click applies decorators bottom-up; Faust lists them top-down
    for decorate in reversed(options["params"]):
        callback = decorate(callback)
    return click.command(name=options["name"], help=options["help"] or fun.__doc__)(callback)


def build_cli(bound: App | None = None) -> typer.Typer:
    """The typer application; with ``bound`` the app argument is omitted."""
    cli = typer.Typer(
        name="streamtrio",
        help="streamtrio: stream processing for Kafka on trio.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        # click's plain help: no "<bool>" beside flags, no boxes in a pipe
        rich_markup_mode=None,
    )
    for name, fun, help_text in _COMMANDS:
        cli.command(name=name, help=help_text, cls=PlainCommand)(_bind(fun, bound))
    cli.add_typer(dev_cli)
    if bound is not None:
        for fun, options in bound._commands:
            if options.get("params"):
                continue  # click-style: added by build_click
            cli.command(name=options["name"], help=options["help"], cls=PlainCommand)(
                _user_command(bound, fun)
            )
    return cli


def build_click(bound: App | None = None) -> Any:
    """The click group of :func:`build_cli`, with Faust-style (click-decorated) commands added."""
    group = typer.main.get_command(build_cli(bound))
    if bound is not None:
        for fun, options in bound._commands:
            if options.get("params"):
                group.add_command(_click_command(bound, fun, options))  # type: ignore[attr-defined]
    return group


def main() -> None:
    """The ``streamtrio`` console script."""
    build_cli()(prog_name="streamtrio")
