"""``topics`` and ``tables`` say what they list in plain words; ``--help`` reads as plain text."""

from __future__ import annotations

import uuid

from typer.testing import CliRunner

import streamtrio
from streamtrio._cli import build_cli


def make_app() -> streamtrio.App:
    app = streamtrio.App(
        f"listing-{uuid.uuid4().hex[:6]}", broker="memory://", store="memory://", web_enabled=False
    )
    app.topic("single", value_type=int, partitions=1)
    app.topic("many", value_type=int, partitions=3)
    return app


def test_topics_counts_partitions_in_plain_words() -> None:
    result = CliRunner().invoke(build_cli(make_app()), ["topics"])
    assert result.exit_code == 0
    lines = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert lines["single"].startswith("1 partition\t")
    assert lines["many"].startswith("3 partitions\t")


def test_tables_says_when_there_are_none() -> None:
    app = make_app()
    result = CliRunner().invoke(build_cli(app), ["tables"])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr.strip() == f"app {app.id!r} has no tables"


def test_help_has_no_type_noise_beside_flags() -> None:
    result = CliRunner().invoke(build_cli(make_app()), ["send", "--help"])
    assert result.exit_code == 0
    [raw] = [line for line in result.stdout.splitlines() if line.strip().startswith("--raw")]
    assert "<bool>" not in raw
