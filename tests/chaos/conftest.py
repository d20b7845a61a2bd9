"""The chaos suite: verified workloads under faults (see docs/guarantees.md).

Each scenario runs a short version by default; ``STREAMTRIO_CHAOS_LONG=1``
runs the long one. The scenarios need Apache Kafka (they start their own
broker, with a second listener behind a TCP proxy they can cut).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamtrio.testing._apache_kafka import ApacheKafka, kafka_unavailable_reason, run_apache_kafka
from streamtrio.testing._broker import TEST_BROKER_ENV, choose_broker_kind

from ._verify import RESULTS

_HERE = Path(__file__).parent

LONG = os.environ.get("STREAMTRIO_CHAOS_LONG", "") not in ("", "0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.kafka)
            item.add_marker(pytest.mark.slow)
            if not LONG and item.get_closest_marker("chaos_long_only") is not None:
                # CI keeps under its time budget with one variant of a family;
                # `nox -s chaos` runs them all.
                item.add_marker(pytest.mark.skip(reason="a long-only chaos variant: nox -s chaos"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def proxied_kafka() -> Iterator[ApacheKafka]:
    """An Apache Kafka of the suite's own, with a second listener a proxy can cut.

    One broker for every scenario (they run one after the other; each uses
    topics and a group of its own): a start costs about ten seconds of CI.
    """
    if os.environ.get(TEST_BROKER_ENV, "").strip():
        pytest.skip(f"{TEST_BROKER_ENV} names an external broker; the chaos suite runs its own")
    kind, _notice = choose_broker_kind()
    if kind != "kafka":
        pytest.skip(f"the chaos suite needs Apache Kafka ({kafka_unavailable_reason()})")
    with run_apache_kafka(proxied_port=_free_port()) as kafka:
        yield kafka


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Each scenario's figures, then "N passed, M failed" for the chaos suite."""

    def count(*outcomes: str) -> int:
        return sum(
            1
            for outcome in outcomes
            for report in terminalreporter.stats.get(outcome, [])
            if "tests/chaos/" in getattr(report, "nodeid", "")
        )

    passed, failed = count("passed", "xpassed"), count("failed", "error")
    known = count("xfailed")  # known bugs, marked xfail with the reason
    if not (passed or failed or known or RESULTS):
        return
    terminalreporter.section("chaos suite")
    for result in RESULTS:
        terminalreporter.write_line(("ok    " if result.ok() else "FAIL  ") + result.line())
    also = f" ({known} more failed as known bugs, marked xfail)" if known else ""
    terminalreporter.write_line(f"chaos: {passed} passed, {failed} failed{also}")
