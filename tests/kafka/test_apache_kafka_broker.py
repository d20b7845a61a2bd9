"""The Apache Kafka test broker itself: it starts quickly, and a failure says why instead of hanging."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from streamtrio.testing._apache_kafka import (
    KafkaBrokerError,
    fetch_kafka,
    kafka_unavailable_reason,
    run_apache_kafka,
)

pytestmark = pytest.mark.skipif(
    kafka_unavailable_reason() is not None and os.environ.get("CI", "").lower() not in ("1", "true", "yes"),
    reason=f"needs Java and Maven: {kafka_unavailable_reason()}",
)


def test_starts_answers_and_stops(tmp_path: Path) -> None:
    began = time.monotonic()
    with run_apache_kafka(work_dir=tmp_path) as kafka:
        ready = time.monotonic() - began
        metadata = AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10)
        assert [b.port for b in metadata.brokers.values()] == [int(kafka.bootstrap.rpartition(":")[2])]
        assert kafka.bootstrap.startswith("127.0.0.1:")
        process = kafka.process
    assert ready < 30, f"start to ready took {ready:.1f}s"
    assert process.poll() is not None, "the broker outlived its block"
    assert "Kafka Server started" in (tmp_path / "server.log").read_text()


def test_a_broker_that_cannot_start_raises_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        began = time.monotonic()
        with pytest.raises(KafkaBrokerError) as caught, run_apache_kafka(port=port, work_dir=tmp_path):
            pass
    assert time.monotonic() - began < 60
    message = str(caught.value)
    assert f"did not start on 127.0.0.1:{port}" in message
    assert "server.log" in message and "Address already in use" in message


def test_a_maven_failure_names_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTRIO_KAFKA_CACHE", str(tmp_path))
    with pytest.raises(KafkaBrokerError, match=r"Maven failed to fetch Apache Kafka 0\.0\.0-none"):
        fetch_kafka("0.0.0-none")
    assert not (tmp_path / "kafka-0.0.0-none" / "libs").exists()


def test_a_cluster_id_starting_with_a_dash_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in CI: about one random cluster id in 64 starts with '-', which the format tool
    took for an option ("argument --cluster-id/-t: expected one argument")."""
    from streamtrio.testing import _apache_kafka

    class DashFirst:
        bytes = b"\xf8" + bytes(15)  # base64: "-A..."

    monkeypatch.setattr(_apache_kafka.uuid, "uuid4", lambda: DashFirst())
    with run_apache_kafka(work_dir=tmp_path) as kafka:
        metadata = AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10)
        assert metadata.brokers
