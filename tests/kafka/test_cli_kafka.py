"""The command line against a real Kafka-protocol broker, run as a user would.

The app (``tests/kafka/apps/orders.py``) takes its broker from
``STREAMTRIO_BROKER``, as ``send`` and ``topics`` have no ``--broker`` option;
``run`` gets ``--broker``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from streamtrio._partitioner import partition_for_key

from ._util import (
    APPS,
    ROOT,
    WorkerProcess,
    committed,
    create_topic,
    partition_count,
    produce,
    read_topic,
    unique,
)

ORDERS = APPS / "orders.py"
PARTITIONS = 4


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamtrio", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def app_env(bootstrap: str, app_id: str, **settings: str) -> dict[str, str]:
    env = {"STREAMTRIO_BROKER": f"kafka://{bootstrap}", "ORDERS_APP_ID": app_id}
    env.update({f"STREAMTRIO_{name.upper()}": value for name, value in settings.items()})
    return env


def test_send_prints_where_the_message_landed_and_it_is_on_the_topic(kafka_bootstrap: str) -> None:
    app_id = unique("cli-send")
    topic = f"{app_id}-orders"
    env = app_env(kafka_bootstrap, app_id)
    landed = []
    for amount in (3, 4):
        result = cli(
            "send", str(ORDERS), topic, json.dumps({"item": "tea", "amount": amount}), "--key", "k1", env=env
        )
        assert result.returncode == 0, result.stderr
        landed.append(json.loads(result.stdout))

    # The topic was created as the app declares it; the key lands where any Kafka client puts it.
    assert partition_count(kafka_bootstrap, topic) == PARTITIONS
    partition = partition_for_key(b"k1", PARTITIONS)
    assert [(d["topic"], d["partition"], d["offset"]) for d in landed] == [
        (topic, partition, 0),
        (topic, partition, 1),
    ]
    assert all(d["timestamp"] > time.time() - 120 for d in landed)
    messages = read_topic(kafka_bootstrap, topic, PARTITIONS)
    assert [(m.partition(), m.offset(), m.key()) for m in messages] == [
        (partition, 0, b"k1"),
        (partition, 1, b"k1"),
    ]
    values = [json.loads(m.value()) for m in messages]
    assert [(v["item"], v["amount"]) for v in values] == [("tea", 3), ("tea", 4)]


def test_send_refuses_what_the_worker_would_refuse_and_sends_nothing(kafka_bootstrap: str) -> None:
    app_id = unique("cli-refuse")
    topic = f"{app_id}-orders"
    env = app_env(kafka_bootstrap, app_id)
    for args, says in (
        ([topic, "tea"], "is not JSON"),
        ([topic, json.dumps({"item": "tea"})], "amount"),
        ([topic], "no value to send"),
        ([f"{app_id}-elsewhere", "x"], "--topic-not-in-app"),
    ):
        result = cli("send", str(ORDERS), *args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert says in result.stderr
    assert partition_count(kafka_bootstrap, f"{app_id}-elsewhere") is None
    result = cli("send", str(ORDERS), topic, json.dumps({"item": "tea", "amount": 2}), env=env)
    assert result.returncode == 0, result.stderr
    [message] = read_topic(kafka_bootstrap, topic, PARTITIONS)
    assert json.loads(message.value())["amount"] == 2  # the refused ones never reached the topic


def test_topics_lists_the_apps_topics_with_partitions(kafka_bootstrap: str) -> None:
    app_id = unique("cli-topics")
    result = cli("topics", str(ORDERS), env=app_env(kafka_bootstrap, app_id))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"{app_id}-orders\t{PARTITIONS} partitions\tsource" in lines
    assert f"{app_id}-__assignor-__leader\t1 partition\tinternal" in lines


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens once the socket is closed


def test_run_against_a_closed_port_exits_non_zero_naming_the_servers(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{closed_port()}"
    env = app_env(address, unique("cli-closed"), broker_request_timeout="5")
    started = time.monotonic()
    worker = WorkerProcess("closed", ORDERS, address, tmp_path, env)
    code = worker.wait(timeout=60)
    elapsed = time.monotonic() - started
    log = worker.log()
    assert code == 1, log
    assert elapsed < 35, f"took {elapsed:.1f}s to give up"
    assert f"cannot reach the Kafka broker at {address} within 5s" in log
    assert "worker could not start" in log


def test_sigint_stops_a_kafka_worker_gracefully_with_offsets_committed(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    app_id = unique("cli-sigint")
    topic = f"{app_id}-orders"
    create_topic(kafka_bootstrap, topic, PARTITIONS)
    orders = [
        (f"customer-{i % 7}".encode(), json.dumps({"item": "tea", "amount": i}).encode()) for i in range(40)
    ]
    produced = produce(kafka_bootstrap, topic, orders)
    # Commits only at shutdown: what is committed below is the final commit's work.
    env = app_env(kafka_bootstrap, app_id, commit_interval="3600")
    worker = WorkerProcess("sigint", ORDERS, kafka_bootstrap, tmp_path, env)
    try:
        deadline = time.monotonic() + 60
        while "processed 40:" not in worker.log():
            assert worker.proc.poll() is None, worker.log()
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.1)
        assert committed(kafka_bootstrap, app_id, topic, PARTITIONS) == dict.fromkeys(range(PARTITIONS))
        started = time.monotonic()
        worker.signal(signal.SIGINT)
        code = worker.wait(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        worker.kill()
    log = worker.log()
    assert code == 0, log
    assert elapsed < 15, f"took {elapsed:.1f}s to stop (grace 15s)"
    assert "SIGINT received: shutting down gracefully" in log
    assert "final commit: " in log and "final commit failed" not in log
    assert "processed 41:" not in log
    ends = produced.ends()
    assert committed(kafka_bootstrap, app_id, topic, PARTITIONS) == {
        p: ends.get(p) for p in range(PARTITIONS)
    }
