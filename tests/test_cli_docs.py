"""docs/cli.md covers every command and option of the typer app (checked, so it cannot drift)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

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
