"""Tests against a real Kafka-protocol broker (Tansu, or STREAMTRIO_TEST_BROKER).

Every test in this directory is marked ``kafka``. They are never skipped: if
the broker cannot start, the fixture fails with the broker's log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streamtrio.testing._broker import start_test_broker

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap address ``host:port`` of the session's test broker."""
    with start_test_broker() as address:
        yield address
