"""``streamtrio send``: what the worker would refuse is refused before anything is sent.

The commands run in-process through the real typer app (``app.main()``'s
CLI), so the memory broker the message lands on can be read afterwards; one
test runs the console command as a process for its exit code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import streamtrio
from streamtrio._cli import build_cli
from streamtrio._transports.memory import MemoryBroker

ROOT = Path(__file__).resolve().parent.parent


class Order(streamtrio.Record):
    account: str
    amount: int


@pytest.fixture
def app() -> Any:
    name = f"send-{uuid.uuid4().hex[:8]}"
    app = streamtrio.App("sendtest", broker=f"memory://{name}", store="memory://", web_enabled=False)
    app.orders = app.topic("orders", key_type=str, value_type=Order, partitions=2)  # type: ignore[attr-defined]
    app.topic("counts", value_type=int, partitions=1)
    app.topic("lines", value_type=str, partitions=1)
    yield app
    MemoryBroker._registry.pop(name, None)


def send(app: streamtrio.App, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_cli(app), ["send", *args])
    return result.exit_code, result.stdout, result.stderr


def on_broker(app: streamtrio.App, topic: str) -> list[Any]:
    broker = MemoryBroker.get(app.conf.broker[len("memory://") :])
    count = broker.partition_count(topic) or 0
    return [m for p in range(count) for m in broker.messages(topic, p)]


def test_a_record_value_is_sent_as_json_and_decodes_as_the_worker_does(app: streamtrio.App) -> None:
    code, out, err = send(app, "orders", '{"account": "a1", "amount": 5}', "--key", "a1")
    assert code == 0, err
    landed = json.loads(out)
    assert landed["topic"] == "orders"
    [message] = on_broker(app, "orders")
    assert message.key == b"a1"
    assert app.orders.schema.loads_value(message.value) == Order(account="a1", amount=5)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["orders", "hello"], ["'hello' is not JSON", "Order values", "--raw"]),
        (["orders"], ["no value to send to topic 'orders'", "--raw"]),
        (["orders", '{"account": "a1"}'], ["not a valid Order", "amount"]),
        (["counts", '"many"'], ["would not accept the value", "int"]),
        (["orders", "[1, 2]"], ["is a JSON list", "Order"]),
        (["counts", "abc"], ["'abc' is not JSON", "int values"]),
        (["nosuch", "x"], ["declares no topic 'nosuch'", "counts, lines, orders", "--topic-not-in-app"]),
        (["counts", "1", "--value", "2"], ["give the value once"]),
    ],
)
def test_refused_with_exit_2_naming_the_problem_and_nothing_sent(
    app: streamtrio.App, args: list[str], says: list[str]
) -> None:
    code, out, err = send(app, *args)
    assert code == 2, (out, err)
    assert err.startswith("error: ")
    for text in says:
        assert text in err
    assert on_broker(app, "orders") == []
    assert on_broker(app, "counts") == []


def test_str_values_need_no_quotes_and_raw_sends_bytes_as_given(app: streamtrio.App) -> None:
    assert send(app, "lines", "hello there")[0] == 0
    assert send(app, "orders", "not json at all", "--raw")[0] == 0
    assert send(app, "orders", "--raw", "--key", "k")[0] == 0  # a tombstone
    assert [m.value for m in on_broker(app, "lines")] == [b'"hello there"']
    sent = {(m.key, m.value) for m in on_broker(app, "orders")}
    assert sent == {(None, b"not json at all"), (b"k", None)}


def test_an_untyped_json_topic_takes_text_as_a_string(app: streamtrio.App) -> None:
    topic = app.topic("anything", partitions=1)  # value_type=None, json values
    assert send(app, "anything", "plain words")[0] == 0
    assert send(app, "anything", '{"a": 1}')[0] == 0
    values = [topic.schema.loads_value(m.value) for m in on_broker(app, "anything")]
    assert values == ["plain words", {"a": 1}]


def test_undeclared_topic_with_the_flag_gets_raw_bytes(app: streamtrio.App) -> None:
    code, _out, err = send(app, "elsewhere", "payload", "--topic-not-in-app")
    assert code == 0, err
    assert [m.value for m in on_broker(app, "elsewhere")] == [b"payload"]


def test_file_sends_one_message_per_line_count_repeats(app: streamtrio.App, tmp_path: Path) -> None:
    lines = tmp_path / "orders.jsonl"
    lines.write_text('{"account": "a", "amount": 1}\n\n{"account": "b", "amount": 2}\n')
    code, out, err = send(app, "orders", "--file", str(lines), "--count", "2", "--key", "k")
    assert code == 0, err
    assert len(out.splitlines()) == 4
    decoded = [app.orders.schema.loads_value(m.value) for m in on_broker(app, "orders")]  # type: ignore[attr-defined]
    assert [o.amount for o in decoded] == [1, 2, 1, 2]


def test_a_bad_line_in_a_file_sends_nothing(app: streamtrio.App, tmp_path: Path) -> None:
    lines = tmp_path / "orders.jsonl"
    lines.write_text('{"account": "a", "amount": 1}\n{"account": "b"}\n')
    code, _out, err = send(app, "orders", "--file", str(lines))
    assert code == 2
    assert "message 2:" in err and "amount" in err
    assert on_broker(app, "orders") == []


def test_json_key_is_read_as_json(app: streamtrio.App) -> None:
    topic = app.topic("keyed", key_type=int, key_serializer="json", value_type=int)
    assert send(app, "keyed", "1", "--key", "42")[0] == 0
    [message] = on_broker(app, "keyed")
    assert topic.schema.loads_key(message.key) == 42
    code, _out, err = send(app, "keyed", "1", "--key", "forty-two")
    assert code == 2
    assert "the key 'forty-two' is not JSON" in err


def test_the_console_command_exits_2_on_a_refused_value(tmp_path: Path) -> None:
    app_file = tmp_path / "orders_app.py"
    app_file.write_text(
        "import streamtrio\n"
        "app = streamtrio.App('cli-send', broker='memory://', store='memory://', web_enabled=False)\n"
        "class Order(streamtrio.Record):\n"
        "    account: str\n"
        "    amount: int\n"
        "orders = app.topic('orders', value_type=Order, partitions=1)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "streamtrio", "send", str(app_file), "orders", "hello"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "is not JSON" in result.stderr
    assert result.stdout == ""
