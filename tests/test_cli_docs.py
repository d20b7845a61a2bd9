"""docs/cli.md covers every command and option of the typer app (checked, so it cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner

from streamtrio._cli import build_click

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def walk(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command: Any = group.get_command(ctx, name)
        path = f"{prefix} {name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found.extend(walk(command, path))
    return found


def test_every_command_and_option_is_in_docs_cli_md() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing: list[str] = []
    for path, command in walk(build_click(), "streamtrio"):
        if path not in text:
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option):
                longest = max(param.opts, key=len)
                if longest != "--help" and f"`{longest}" not in text and f" {longest}" not in text:
                    missing.append(f"{path} {longest}")
    assert not missing, f"docs/cli.md does not mention: {', '.join(missing)}"


def help_page(group: click.Group, path: str) -> str:
    """What ``streamtrio PATH --help`` prints."""
    words = path.split()[1:]
    runner = CliRunner()
    result = runner.invoke(group, [*words, "--help"], prog_name="streamtrio", terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_help_page_reads_cleanly() -> None:
    # typer 0.29 wrote `{APP}` in usage lines and `<str>`, `<int range>` beside options.
    from tests.apps.commands import app as bound

    for group in (build_click(), build_click(bound)):
        for path, _command in [("streamtrio", group), *walk(group, "streamtrio")]:
            page = help_page(group, path)
            assert not re.search(r"[{}]", page), f"{path} --help:\n{page}"
            assert not re.search(r"<[a-z][a-z ]*>", page), f"{path} --help:\n{page}"
            assert "..." not in page.replace("COMMAND [ARGS]...", ""), f"{path} --help:\n{page}"


def test_usage_lines_and_options_use_metavars() -> None:
    group = build_click()
    run = help_page(group, "streamtrio run")
    assert run.startswith("Usage: streamtrio run [OPTIONS] APP\n"), run
    assert "-b, --broker URL " in run
    assert "-l, --loglevel LEVEL " in run
    send = help_page(group, "streamtrio send")
    assert send.startswith("Usage: streamtrio send [OPTIONS] APP TOPIC [VALUE]\n"), send
    assert "-n, --count N " in send
    assert "-f, --file PATH " in send
    assert "  --raw " in send
    broker = help_page(group, "streamtrio dev broker")
    assert "--port PORT " in broker
