"""The chaos suite: verified workloads under faults (see docs/guarantees.md).

Each scenario runs a short version by default; ``STREAMTRIO_CHAOS_LONG=1``
runs the long one. The scenarios need Apache Kafka (they start their own
broker, with a second listener behind a TCP proxy they can cut).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamtrio.testing._broker import TEST_BROKER_ENV

from ._broker import ChaosBroker, chaos_broker_kind, run_chaos_broker, unavailable_reason
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


@pytest.fixture(scope="session")
def proxied_kafka() -> Iterator[ChaosBroker]:
    """The suite's broker (see ``_broker.py``): Apache Kafka with a second listener a
    proxy can cut, or Tansu with ``STREAMTRIO_CHAOS_BROKER=tansu``.

    One broker for every scenario (they run one after the other; each uses
    topics and a group of its own): a start costs about ten seconds of CI.
    """
    if os.environ.get(TEST_BROKER_ENV, "").strip():
        pytest.skip(f"{TEST_BROKER_ENV} names an external broker; the chaos suite runs its own")
    kind = chaos_broker_kind()
    reason = unavailable_reason(kind)
    if reason is not None:
        pytest.skip(reason)
    with run_chaos_broker(kind) as broker:
        yield broker


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
