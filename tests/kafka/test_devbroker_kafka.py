"""``streamtrio dev broker``: a local Apache Kafka in the foreground, as a developer runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer

from streamtrio.testing._apache_kafka import kafka_unavailable_reason

from ._util import ROOT, unique

pytestmark = pytest.mark.skipif(
    kafka_unavailable_reason() is not None and os.environ.get("CI", "").lower() not in ("1", "true", "yes"),
    reason=f"needs Java and Maven: {kafka_unavailable_reason()}",
)


def read_lines(stream: object, into: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.append(line)


def test_dev_broker_prints_its_address_serves_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtrio", "dev", "broker", "--port", "0"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=read_lines, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=read_lines, args=(proc.stderr, err), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("bootstrap: ") for line in out):
            assert proc.poll() is None, f"dev broker exited ({proc.returncode}):\n{''.join(err)}"
            assert time.monotonic() < deadline, f"no address printed:\n{''.join(err)}"
            time.sleep(0.1)
        bootstrap = next(line for line in out if line.startswith("bootstrap: ")).split()[1]
        host, _, port = bootstrap.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0

        topic = unique("dev")
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(topic, key=b"k", value=b"hello")
        assert producer.flush(30) == 0
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": unique("dev"), "auto.offset.reset": "earliest"}
        )
        try:
            consumer.subscribe([topic])
            message = None
            deadline = time.monotonic() + 30
            while message is None or message.error() is not None:
                assert time.monotonic() < deadline, "the message did not come back"
                message = consumer.poll(0.5)
            assert (message.key(), message.value()) == (b"k", b"hello")
        finally:
            consumer.close()

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, "".join(err)
        with socket.socket() as sock, pytest.raises(OSError):
            sock.settimeout(2)
            sock.connect((host, int(port)))  # the broker is gone with the command
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for reader in readers:
            reader.join(timeout=5)
