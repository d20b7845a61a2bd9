"""Faust's command line: `python app.py worker -l info`, faust.cli option/argument commands."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from streamtrio import _cli
from streamtrio._cli import build_click

from .faust_apps import cli_app


def test_faust_style_commands_take_options_arguments_and_self() -> None:
    group = build_click(cli_app.app)
    result = CliRunner().invoke(group, ["greet", "ann", "--count", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["sent ann to faust-greetings@0", "sent ann to faust-greetings@1"]
    result = CliRunner().invoke(group, ["hello"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello from faust-cli\n"


def test_worker_command_with_loglevel(monkeypatch: Any) -> None:
    started: list[tuple[Any, Any]] = []

    def fake_run(app: Any, beside: Any, *, end_process: bool = False) -> int:
        started.append((app.conf.web_port, app.conf.web_enabled))
        return 0

    monkeypatch.setattr(_cli, "run_beside", fake_run)
    group = build_click(cli_app.app)
    result = CliRunner().invoke(group, ["worker", "-l", "info", "-p", "6067"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(group, ["worker", "--loglevel", "warning", "--without-web"])
    assert result.exit_code == 0, result.output
    assert started == [(6067, False), (6067, False)]
