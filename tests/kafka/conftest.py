"""Tests against a real Kafka-protocol broker: Apache Kafka, Tansu, or STREAMTRIO_TEST_BROKER.

Every test in this directory is marked ``kafka``. They are never skipped: if
the broker cannot start, the fixture fails with the broker's log. Tests marked
``real_kafka`` run only when the broker is Apache Kafka
(``STREAMTRIO_TEST_BROKER_KIND`` chooses; see docs/testing.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streamtrio.testing import KafkaTestBroker
from streamtrio.testing._broker import open_test_broker

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaTestBroker]:
    """The plugin's fixture, except that here a broker that cannot start fails the tests."""
    with open_test_broker() as broker:
        yield KafkaTestBroker(broker.bootstrap, kind=broker.kind, pid=broker.pid)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaTestBroker) -> str:
    """The bootstrap address ``host:port`` of the session's test broker."""
    return kafka_broker.bootstrap
